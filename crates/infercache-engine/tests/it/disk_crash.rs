//! Kill -9 crash test of the disk tier.
//!
//! The parent re-runs this test binary as a child filtered to [`crash_child_writer`], with
//! `INFERCACHE_CRASH_CHILD` naming the store. The child writes forever: for each insert it
//! first appends `"k seq\n"` to a journal (one `write` call), then inserts a value derived
//! from `(k, seq)`. The parent kills it with SIGKILL at a random moment, reopens the store
//! and checks every key: a miss, or exactly the value of the latest journaled write of that
//! key. Only the very last journal line may not have reached the store (that insert was in
//! flight), in which case the key's previous value is also acceptable.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use infercache_core::{Digest, SharedClock, SystemClock};
use infercache_engine::disk::{Compression, DiskConfig, DiskTier};
use rand::{Rng as _, SeedableRng as _};

const CHILD_ENV: &str = "INFERCACHE_CRASH_CHILD";
const ROUND_ENV: &str = "INFERCACHE_CRASH_ROUND";
const KEYS: u32 = 2_000;
const MAGIC: &[u8; 4] = b"CRSH";
/// The child gives up on its own after this long, should the parent be gone.
const CHILD_LIFETIME: Duration = Duration::from_secs(20);

fn key(k: u32) -> Digest {
    Digest::of(format!("crash-key-{k}").as_bytes())
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The value written for `(k, seq)`: a self-describing header (magic, k, seq, body length)
/// and 0..8192 body bytes, all determined by `(k, seq)`. Half the bodies compress well.
fn make_value(k: u32, seq: u64) -> Vec<u8> {
    let mut state = u64::from(k) << 40 ^ seq;
    let body_len = usize::try_from(splitmix(&mut state) % 8192).unwrap();
    let compressible = splitmix(&mut state).is_multiple_of(2);
    let mut v = Vec::with_capacity(20 + body_len);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&k.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&u32::try_from(body_len).unwrap().to_le_bytes());
    while v.len() < 20 + body_len {
        let word = splitmix(&mut state);
        let bytes = if compressible {
            [word.to_le_bytes()[0]; 8]
        } else {
            word.to_le_bytes()
        };
        v.extend_from_slice(&bytes);
    }
    v.truncate(20 + body_len);
    v
}

/// Reads `(k, seq)` back from a value's header.
fn decode_value(v: &[u8]) -> Option<(u32, u64)> {
    if v.len() < 20 || &v[..4] != MAGIC {
        return None;
    }
    let k = u32::from_le_bytes(v[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(v[8..16].try_into().ok()?);
    Some((k, seq))
}

fn config(dir: &Path) -> DiskConfig {
    // Small enough to roll and evict segments during a run; eviction shows up as misses.
    DiskConfig {
        dir: dir.to_path_buf(),
        capacity: 48 << 20,
        segment_size: Some(4 << 20),
        compression: Compression::Lz4,
    }
}

fn clock() -> SharedClock {
    SystemClock::shared()
}

/// Writes until killed (as a child), or checks the value codec and one write (otherwise).
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        // Not a child: a sanity check of what the child relies on.
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(config(dir.path()), clock()).unwrap();
        for (k, seq) in [(0, 1), (7, 1 << 33), (KEYS - 1, 12_345)] {
            let value = make_value(k, seq);
            assert_eq!(decode_value(&value), Some((k, seq)));
            tier.insert(key(k), &value, 0, None).unwrap();
            assert_eq!(&tier.get(&key(k)).unwrap().unwrap().value[..], &value[..]);
        }
        assert_ne!(make_value(1, 2), make_value(2, 1));
        return;
    };
    let dir = Path::new(&dir);
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let tier = DiskTier::open(config(&dir.join("store")), clock()).unwrap();
    let mut journal = OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("journal"))
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(round);
    let started = Instant::now();
    let mut seq = round << 32;
    while started.elapsed() < CHILD_LIFETIME {
        let k = rng.random_range(0..KEYS);
        seq += 1;
        journal
            .write_all(format!("{k} {seq}\n").as_bytes())
            .unwrap();
        tier.insert(key(k), &make_value(k, seq), 0, None).unwrap();
    }
}

/// Journal lines `(k, seq)` in order; a torn last line (killed mid-write) is cut off.
fn read_journal(path: &Path) -> Vec<(u32, u64)> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(u64::try_from(complete).unwrap())
            .unwrap();
    }
    text[..complete]
        .lines()
        .map(|line| {
            let (k, seq) = line.split_once(' ').unwrap();
            (k.parse().unwrap(), seq.parse().unwrap())
        })
        .collect()
}

#[test]
fn killed_writer_never_leaves_a_wrong_value() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    // Which seqs each key may hold: the latest journaled one, plus the previous ones when
    // the latest was the in-flight write of a killed child.
    let mut allowed: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut journal_seen = 0;
    let (mut checks, mut hits, mut in_flight_lost, mut torn) = (0u64, 0u64, 0u64, 0u64);
    for round in 1..=24u64 {
        let mut child = Command::new(&exe)
            .args([
                "disk_crash::crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child finished before it was killed"
        );

        let journal = read_journal(&dir.path().join("journal"));
        let new = &journal[journal_seen..];
        journal_seen = journal.len();
        if let Some((&(last_k, last_seq), earlier)) = new.split_last() {
            for &(k, seq) in earlier {
                allowed.insert(k, vec![seq]);
            }
            allowed.entry(last_k).or_default().push(last_seq);
        }

        let tier = DiskTier::open(config(&dir.path().join("store")), clock()).unwrap();
        for k in 0..KEYS {
            checks += 1;
            let Some(entry) = tier.get(&key(k)).unwrap() else {
                continue;
            };
            hits += 1;
            let (got_k, got_seq) = decode_value(&entry.value)
                .unwrap_or_else(|| panic!("round {round}: key {k} holds an undecodable value"));
            assert_eq!(got_k, k, "round {round}: key {k} holds key {got_k}'s value");
            let ok = allowed.get(&k).is_some_and(|seqs| seqs.contains(&got_seq));
            assert!(
                ok,
                "round {round}: key {k} holds seq {got_seq}, allowed {:?}",
                allowed.get(&k)
            );
            assert_eq!(
                &entry.value[..],
                &make_value(k, got_seq)[..],
                "round {round}: key {k} bytes differ"
            );
            // Now we know which write of the key the store kept.
            let seqs = allowed.get_mut(&k).unwrap();
            if seqs.len() > 1 {
                if got_seq != *seqs.last().unwrap() {
                    in_flight_lost += 1;
                }
                *seqs = vec![got_seq];
            }
        }
        assert!(tier.bytes() <= tier.capacity());
        // A record torn by the kill is dropped and counted; that is allowed, not checked.
        torn += tier.stats().corrupt;
    }
    eprintln!(
        "{checks} checks, {hits} hits, {in_flight_lost} in-flight writes lost, {torn} torn records"
    );
    assert!(hits > 1_000, "only {hits} hits in {checks} checks");
}
