//! Segment files: naming, listing and the header-only recovery scan.
//!
//! A segment is `segments/<seq>.seg`, `seq` written as 20 zero-padded digits so that names
//! sort like numbers. It is a plain concatenation of records (see [`super::record`]) with no
//! segment header and no padding, so every byte belongs to some record.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::record::{HEADER_LEN, HEADER_LEN_U64, Header};
use super::{DiskError, io_err};

/// The folder of segment files inside the store's directory.
pub(crate) const SEGMENTS_DIR: &str = "segments";
const SCAN_BUFFER: usize = 256 * 1024;

/// The file name of segment `seq`.
pub(crate) fn file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// The sequence number in a segment file name, or `None` for any other file.
fn parse_name(name: &OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The largest sequence number would leave no successor; no segment of ours has it.
    digits.parse().ok().filter(|&seq| seq < u64::MAX)
}

/// The segment files in `dir`, oldest first. Other files are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DiskError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(seq) = parse_name(&entry.file_name()) {
            found.push((seq, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(found)
}

/// How a segment's scan ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte was part of a valid record header and its payload's extent.
    Clean,
    /// The scan stopped at `offset` for `reason`; what follows is ignored.
    Corrupt { offset: u64, reason: &'static str },
}

/// Reads the headers of every record in `file` (of length `len`), calling `visit` with
/// each record's offset and header in file order, skipping payloads.
///
/// Payload checksums are not verified here (that would mean reading every byte); each read
/// verifies its record's payload instead. A bad header, or a record running past the end of
/// the file, ends the scan.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    len: u64,
    start: u64,
    mut visit: impl FnMut(u64, &Header),
) -> Result<ScanEnd, DiskError> {
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, file);
    reader.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
    let mut offset = start;
    while offset < len {
        if len - offset < HEADER_LEN_U64 {
            return Ok(ScanEnd::Corrupt {
                offset,
                reason: "truncated header",
            });
        }
        let mut head = [0u8; HEADER_LEN];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            // The file shrank under us: treat like a short tail.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Ok(ScanEnd::Corrupt {
                    offset,
                    reason: "truncated header",
                });
            }
            Err(e) => return Err(io_err(path)(e)),
        }
        let header = match Header::decode(&head) {
            Ok(h) => h,
            Err(_) => {
                return Ok(ScanEnd::Corrupt {
                    offset,
                    reason: "invalid record header",
                });
            }
        };
        if header.record_len() > len - offset {
            return Ok(ScanEnd::Corrupt {
                offset,
                reason: "truncated payload",
            });
        }
        visit(offset, &header);
        reader
            .seek_relative(i64::from(header.stored_len))
            .map_err(io_err(path))?;
        offset += header.record_len();
    }
    Ok(ScanEnd::Clean)
}

/// The offset of the first valid record header after `damaged` (a header that failed),
/// or `None` if none follows: the damage is then a torn tail.
///
/// A valid header is the magic, a header CRC that matches and a record that fits in the
/// file; a 32-bit CRC makes a false match on random bytes a one-in-four-billion event, and
/// even then the record's payload CRC and key are checked on every read.
pub(crate) fn resync(
    file: &File,
    path: &Path,
    len: u64,
    damaged: u64,
) -> Result<Option<u64>, DiskError> {
    const WINDOW: u64 = 1 << 20;
    let mut base = damaged + 1;
    let mut buf = Vec::new();
    while base + HEADER_LEN_U64 <= len {
        let end = (base + WINDOW + HEADER_LEN_U64).min(len);
        buf.resize(
            usize::try_from(end - base).expect("a window fits in memory"),
            0,
        );
        file.read_exact_at(&mut buf, base).map_err(io_err(path))?;
        for i in 0..=buf.len() - HEADER_LEN {
            let head: &[u8; HEADER_LEN] = buf[i..i + HEADER_LEN].try_into().expect("window slice");
            if let Ok(h) = Header::decode(head) {
                let at = base + i as u64;
                if h.record_len() <= len - at {
                    return Ok(Some(at));
                }
            }
        }
        base = end - HEADER_LEN_U64 + 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_numbers_and_foreign_names_are_ignored() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_name(OsStr::new(&file_name(42))), Some(42));
        assert_eq!(parse_name(OsStr::new("42.seg")), None);
        assert_eq!(parse_name(OsStr::new("0000000000000000004x.seg")), None);
        assert_eq!(parse_name(OsStr::new("00000000000000000042.seg.bak")), None);
    }
}
