//! The journal: one line per finished window of records, appended after the window's
//! rows are in the cache and its output and errors are in the job's partial files.
//!
//! A line is `CRC32 JSON\n` (the CRC, 8 hex digits, over the JSON text), and each line
//! holds the totals so far ([`Entry`]), so only the last good line matters. Reading stops
//! at the first torn or damaged line, and the file is cut there: a kill during an append
//! loses that window's record, never an earlier one, and the window is done again (its
//! rows are hits, since the cache was written first).

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Counts of a job's rows (inputs), summed over every attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Inputs done.
    pub rows: u64,
    /// First occurrences served from the cache (or computed by another process).
    pub hits: u64,
    /// Repeats of an earlier input, which took its value.
    pub duplicates: u64,
    /// First occurrences computed by this job.
    pub computed: u64,
    /// Inputs that failed (unreadable records included).
    pub errors: u64,
    /// Successful model calls this job made.
    pub model_calls: u64,
}

/// The state after a window: where the next one starts and what the partial files hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Records done: the next window starts at this record.
    pub records: usize,
    /// Bytes of the partial output.
    pub output: u64,
    /// Bytes of the partial errors file.
    pub errors: u64,
    /// The totals.
    pub counts: Counts,
    /// The CSV output columns, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

/// An open journal, appending.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, cuts any torn or damaged tail, and returns
    /// it with its last entry.
    ///
    /// # Errors
    /// The file cannot be read, cut or opened.
    pub fn open(path: &Path) -> io::Result<(Self, Option<Entry>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        let (last, good) = parse(&text);
        if good < text.len() {
            tracing::warn!(
                path = %path.display(),
                dropped = text.len() - good,
                "cutting a torn journal tail"
            );
            file.set_len(good as u64)?;
        }
        Ok((
            Self {
                file,
                path: path.to_owned(),
            },
            last,
        ))
    }

    /// Appends `entry` (not synced: a kill of the process keeps what was written; a
    /// [`Journal::sync`] at the end keeps it through a power cut).
    ///
    /// # Errors
    /// The write failed.
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let json = serde_json::to_string(entry).expect("an entry always serializes");
        let line = format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()));
        self.file.write_all(line.as_bytes())
    }

    /// Syncs the journal to disk.
    ///
    /// # Errors
    /// The sync failed.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The last good entry of `text` and the length of its good prefix.
fn parse(text: &[u8]) -> (Option<Entry>, usize) {
    let mut last = None;
    let mut good = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let Some(body) = line.strip_suffix(b"\n") else {
            break;
        };
        let Some(entry) = entry_of(body) else {
            break;
        };
        last = Some(entry);
        good += line.len();
    }
    (last, good)
}

fn entry_of(line: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(line).ok()?;
    let (crc, json) = text.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32fast::hash(json.as_bytes()) == crc)
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(records: usize) -> Entry {
        Entry {
            records,
            output: records as u64 * 10,
            ..Entry::default()
        }
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_and_the_last_good_entry_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, last) = Journal::open(&path).unwrap();
        assert_eq!(last, None);
        j.append(&entry(1)).unwrap();
        j.append(&entry(2)).unwrap();
        drop(j);
        let good = std::fs::read(&path).unwrap();
        // A torn append.
        let mut torn = good.clone();
        torn.extend_from_slice(b"0000abcd {\"records\":");
        std::fs::write(&path, &torn).unwrap();
        let (mut j, last) = Journal::open(&path).unwrap();
        assert_eq!(last, Some(entry(2)));
        assert_eq!(std::fs::read(&path).unwrap(), good);
        j.append(&entry(3)).unwrap();
        drop(j);
        // A flipped byte in the last line.
        let mut damaged = std::fs::read(&path).unwrap();
        let n = damaged.len();
        damaged[n - 3] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let (_, last) = Journal::open(&path).unwrap();
        assert_eq!(last, Some(entry(2)));
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }
}
