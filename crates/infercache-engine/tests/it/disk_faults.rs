//! Fault injection for the disk tier: damaged and truncated segment files, directories that
//! are not ours, broken manifests, oversized values and a full file system.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use infercache_core::{Digest, ManualClock, SharedClock};
use infercache_engine::disk::{Compression, DiskConfig, DiskError, DiskTier};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

const T0: u64 = 1_700_000_000_000;

fn clock() -> SharedClock {
    ManualClock::new(T0)
}

fn config(dir: &Path, capacity: u64, segment_size: Option<u64>) -> DiskConfig {
    DiskConfig {
        dir: dir.to_path_buf(),
        capacity,
        segment_size,
        compression: Compression::Lz4,
    }
}

/// A value for key `k`: sometimes compressible, sometimes not, 1..4000 bytes.
fn value(k: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(k);
    let len = rng.random_range(1..4_000);
    if k.is_multiple_of(2) {
        (0..len).map(|_| rng.random()).collect()
    } else {
        format!("value of {k};")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(len)
            .collect()
    }
}

/// Writes keys `0..n` with [`value`] and closes the store.
fn fill(dir: &Path, n: u64, segment_size: u64) {
    let tier = DiskTier::open(config(dir, 64 << 20, Some(segment_size)), clock()).unwrap();
    for k in 0..n {
        tier.insert(Digest::of_u64(k), &value(k), T0, None).unwrap();
    }
    tier.flush().unwrap();
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Reopens the store and checks that every key is a miss or its exact value; returns hits.
fn check_exact_or_miss(tier: &DiskTier, n: u64) -> u64 {
    let mut hits = 0;
    for k in 0..n {
        if let Some(entry) = tier.get(&Digest::of_u64(k)).unwrap() {
            assert_eq!(&entry.value[..], &value(k)[..], "key {k} read back wrong");
            hits += 1;
        }
    }
    hits
}

#[test]
fn flipped_bytes_are_dropped_and_counted_never_served() {
    const N: u64 = 400;
    for seed in 0..8u64 {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), N, 128 << 10);
        let mut rng = StdRng::seed_from_u64(seed);
        let files = segment_files(dir.path());
        assert!(files.len() > 3);
        for _ in 0..1 + seed * 5 {
            let path = &files[rng.random_range(0..files.len())];
            let mut bytes = fs::read(path).unwrap();
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= rng.random_range(1..=255u8);
            fs::write(path, bytes).unwrap();
        }
        let tier = DiskTier::open(config(dir.path(), 64 << 20, Some(128 << 10)), clock()).unwrap();
        let hits = check_exact_or_miss(&tier, N);
        let stats = tier.stats();
        assert!(stats.corrupt > 0, "seed {seed}: damage went unnoticed");
        assert!(hits > 0, "seed {seed}: nothing survived");
        assert_eq!(stats.hits, hits);
        // Dropped entries stay dropped; the tier keeps working.
        assert_eq!(check_exact_or_miss(&tier, N), hits);
        tier.insert(Digest::of_u64(N), &value(N), T0, None).unwrap();
        assert_eq!(check_exact_or_miss(&tier, N + 1), hits + 1);
    }
}

#[test]
fn truncated_segments_lose_only_their_tails() {
    const N: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), N, 64 << 10);
    let files = segment_files(dir.path());
    let mut rng = StdRng::seed_from_u64(7);
    for (i, path) in files.iter().enumerate() {
        let len = fs::metadata(path).unwrap().len();
        let new_len = if i + 1 == files.len() {
            len - 10
        } else {
            rng.random_range(0..=len)
        };
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(new_len)
            .unwrap();
    }
    let tier = DiskTier::open(config(dir.path(), 64 << 20, Some(64 << 10)), clock()).unwrap();
    let hits = check_exact_or_miss(&tier, N);
    assert!(hits > 0 && hits < N, "{hits} hits");
    assert!(tier.stats().corrupt > 0);
    // New writes after the damage survive the next restart.
    let missing = (0..N)
        .find(|&k| tier.get(&Digest::of_u64(k)).unwrap().is_none())
        .unwrap();
    tier.insert(Digest::of_u64(missing), &value(missing), T0, None)
        .unwrap();
    drop(tier);
    let tier = DiskTier::open(config(dir.path(), 64 << 20, Some(64 << 10)), clock()).unwrap();
    assert_eq!(check_exact_or_miss(&tier, N), hits + 1);
}

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.insert(path.clone(), b"<dir>".to_vec());
                stack.push(path);
            } else {
                out.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_foreign_directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("thesis.tex"), b"precious").unwrap();
    fs::create_dir(dir.path().join("segments")).unwrap();
    fs::write(
        dir.path().join("segments/00000000000000000001.seg"),
        b"not ours",
    )
    .unwrap();
    let before = snapshot(dir.path());
    let err = DiskTier::open(config(dir.path(), 8 << 20, None), clock()).unwrap_err();
    assert!(matches!(err, DiskError::NotOurDirectory { .. }), "{err:?}");
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn unknown_files_beside_ours_are_ignored_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 64 << 10);
    fs::write(dir.path().join("epochs.json"), b"{}").unwrap();
    fs::write(dir.path().join("segments/notes.txt"), b"hello").unwrap();
    fs::write(dir.path().join("segments/1.seg"), b"garbage").unwrap();
    let tier = DiskTier::open(config(dir.path(), 64 << 20, Some(64 << 10)), clock()).unwrap();
    assert_eq!(check_exact_or_miss(&tier, 10), 10);
    assert_eq!(tier.stats().corrupt, 0);
    tier.clear().unwrap();
    assert_eq!(fs::read(dir.path().join("epochs.json")).unwrap(), b"{}");
    assert_eq!(
        fs::read(dir.path().join("segments/notes.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(
        fs::read(dir.path().join("segments/1.seg")).unwrap(),
        b"garbage"
    );
}

#[test]
fn a_broken_or_newer_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5, 64 << 10);
    let manifest = dir.path().join("MANIFEST");
    let open = || DiskTier::open(config(dir.path(), 64 << 20, Some(64 << 10)), clock());

    fs::write(&manifest, b"\x00\xffnot json").unwrap();
    assert!(matches!(open(), Err(DiskError::CorruptManifest { .. })));
    fs::write(
        &manifest,
        br#"{"magic":"someone-else","version":1,"created_at_ms":0}"#,
    )
    .unwrap();
    assert!(matches!(open(), Err(DiskError::CorruptManifest { .. })));
    fs::write(
        &manifest,
        br#"{"magic":"infercache-disk","version":2,"created_at_ms":0}"#,
    )
    .unwrap();
    assert!(matches!(
        open(),
        Err(DiskError::UnsupportedFormat { version: 2, .. })
    ));
    fs::write(
        &manifest,
        br#"{"magic":"infercache-disk","version":1,"created_at_ms":0}"#,
    )
    .unwrap();
    assert_eq!(check_exact_or_miss(&open().unwrap(), 5), 5);
}

#[test]
fn values_larger_than_a_segment_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskConfig {
        compression: Compression::None,
        ..config(dir.path(), 64 << 10, None)
    };
    let tier = DiskTier::open(cfg, clock()).unwrap();
    assert_eq!(tier.segment_size(), 32 << 10);
    let max = tier.max_value_len();
    let small = Digest::of(b"small");
    tier.insert(small, b"fits", T0, None).unwrap();
    let err = tier
        .insert(Digest::of(b"big"), &vec![1u8; 40 << 10], T0, None)
        .unwrap_err();
    assert!(
        matches!(err, DiskError::TooLarge { size: 40_960, max: m } if m == max),
        "{err:?}"
    );
    let err = tier
        .insert(
            Digest::of(b"big"),
            &vec![1u8; usize::try_from(max).unwrap() + 1],
            T0,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, DiskError::TooLarge { .. }));
    assert_eq!(tier.stats().write_errors, 2);
    // Exactly the limit fits, and the tier keeps serving.
    let exact = Digest::of(b"exact");
    tier.insert(exact, &vec![2u8; usize::try_from(max).unwrap()], T0, None)
        .unwrap();
    assert_eq!(
        tier.get(&exact).unwrap().unwrap().value.len(),
        usize::try_from(max).unwrap()
    );
    assert!(tier.bytes() <= tier.capacity());
    assert_eq!(tier.stats().write_errors, 2);
}

/// Mounts a tiny tmpfs and unmounts it when dropped.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mount -t tmpfs failed: this test needs root"
        );
        Self(dir)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
#[ignore = "needs root: mounts a 256 KiB tmpfs (run with --run-ignored only)"]
fn a_full_file_system_costs_old_entries_not_availability() {
    // The configured capacity (4 MiB) is far above what the file system holds (256 KiB),
    // so writes hit ENOSPC long before the tier's own eviction would start.
    let fs_dir = TinyFs::mount("256k");
    let dir = fs_dir.0.path().join("store");
    let config = DiskConfig {
        compression: Compression::None,
        ..config(&dir, 4 << 20, Some(64 << 10))
    };
    let tier = DiskTier::open(config.clone(), clock()).unwrap();
    let n = 1_000;
    for k in 0..n {
        // Each ENOSPC is counted, the oldest segment is evicted, and the write retried.
        tier.insert(Digest::of_u64(k), &value(k), T0, None)
            .unwrap_or_else(|e| panic!("insert {k} failed on a full file system: {e}"));
    }
    let stats = tier.stats();
    assert!(
        stats.write_errors > 0,
        "the file system never filled up: {stats:?}"
    );
    assert!(stats.evictions > 0, "{stats:?}");
    // Recent keys are served exactly, old ones are misses, nothing is half-written.
    let hits = check_exact_or_miss(&tier, n);
    assert!(hits > 20 && hits < n, "{hits} hits");
    assert!(tier.get(&Digest::of_u64(n - 1)).unwrap().is_some());
    assert!(tier.bytes() <= 256 << 10);
    drop(tier);
    let tier = DiskTier::open(config, clock()).unwrap();
    assert_eq!(check_exact_or_miss(&tier, n), hits);
    assert_eq!(tier.stats().corrupt, 0);
}

#[test]
fn a_refused_overwrite_does_not_leave_the_old_value_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1 << 20, Some(128 << 10));
    let tier = DiskTier::open(config.clone(), clock()).unwrap();
    let k = Digest::of_u64(7);
    tier.insert(k, b"old", T0, None).unwrap();
    let too_big = vec![0u8; 200 << 10];
    assert!(matches!(
        tier.insert(k, &too_big, T0, None),
        Err(DiskError::TooLarge { .. })
    ));
    assert!(
        tier.get(&k).unwrap().is_none(),
        "the old value survived a refused overwrite"
    );
    drop(tier);
    let tier = DiskTier::open(config, clock()).unwrap();
    assert!(
        tier.get(&k).unwrap().is_none(),
        "the old value came back after a restart"
    );
}

#[test]
fn a_damaged_overwrite_never_lets_the_older_value_through() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig {
        compression: Compression::None,
        ..config(dir.path(), 64 << 20, Some(1 << 20))
    };
    let k = Digest::of_u64(1);
    {
        let tier = DiskTier::open(config.clone(), clock()).unwrap();
        tier.insert(k, &[1u8; 100], T0, None).unwrap(); // offset 0, 172 bytes
        tier.insert(k, &[2u8; 100], T0, None).unwrap(); // offset 172: the overwrite
        for i in 10..20 {
            tier.insert(Digest::of_u64(i), &[3u8; 100], T0, None)
                .unwrap();
        }
        tier.flush().unwrap();
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[172 + 40] ^= 0xFF; // inside the overwrite's header (its key)
    fs::write(&files[0], &bytes).unwrap();

    let tier = DiskTier::open(config, clock()).unwrap();
    assert!(
        tier.get(&k).unwrap().is_none(),
        "the older value came back through a damaged overwrite"
    );
    assert!(tier.stats().corrupt > 0);
    // Records after the damage are still served.
    for i in 10..20 {
        assert_eq!(
            &tier.get(&Digest::of_u64(i)).unwrap().unwrap().value[..],
            &[3u8; 100][..]
        );
    }
}

/// EIO on reads and writes, through the seam on the tier's file layer
/// (`infercache_engine::testing::DiskFault`): this machine has no device-mapper (`dmsetup`
/// finds no `/dev/mapper/control`), so no `error` target can stand in for a failing disk.
/// The tier turns degraded at the first failure, stops touching its files (lookups miss,
/// writes are skipped, a key written meanwhile loses its older value), probes once per
/// `PROBE_EVERY_MS`, and is used again once the disk answers.
#[test]
fn eio_marks_the_tier_degraded_until_the_disk_answers_again() {
    use infercache_engine::disk::PROBE_EVERY_MS;
    use infercache_engine::testing::DiskFault;

    let dir = tempfile::tempdir().unwrap();
    let manual = ManualClock::new(T0);
    let clock: SharedClock = manual.clone();
    let tier = DiskTier::open(config(dir.path(), 64 << 20, None), clock).unwrap();
    let (a, b, c) = (Digest::of_u64(1), Digest::of_u64(2), Digest::of_u64(3));
    tier.insert(a, b"a, first", T0, None).unwrap();
    tier.insert(b, b"b", T0, None).unwrap();
    assert!(!tier.stats().degraded);

    let fault = DiskFault::eio(dir.path());
    let err = tier.get(&a).unwrap_err();
    assert!(
        matches!(&err, DiskError::Io { source, .. } if source.raw_os_error() == Some(5)),
        "{err:?}"
    );
    let stats = tier.stats();
    assert!(stats.degraded, "{stats:?}");
    assert_eq!(stats.io_errors, 1);
    // Degraded: no file is touched, so no further I/O error is counted.
    assert_eq!(tier.get(&b).unwrap(), None);
    assert!(matches!(
        tier.insert(a, b"a, second", T0, None),
        Err(DiskError::Degraded)
    ));
    assert!(matches!(
        tier.insert(c, b"c", T0, None),
        Err(DiskError::Degraded)
    ));
    assert_eq!(tier.stats().io_errors, 1);
    // A probe a second later still fails: still degraded.
    manual.advance(std::time::Duration::from_millis(PROBE_EVERY_MS));
    assert!(tier.get(&b).is_err());
    assert_eq!(tier.stats().io_errors, 2);
    assert!(tier.stats().degraded);

    drop(fault);
    // Within the probe interval the tier still skips its files...
    assert_eq!(tier.get(&b).unwrap(), None);
    // ...then the next probe succeeds and the tier is used again.
    manual.advance(std::time::Duration::from_millis(PROBE_EVERY_MS));
    assert_eq!(tier.get(&b).unwrap().unwrap().value.as_ref(), b"b");
    assert!(!tier.stats().degraded);
    // `a` was written while degraded: its first value is never served in the second's place.
    assert_eq!(tier.get(&a).unwrap(), None);
    tier.insert(c, b"c", T0, None).unwrap();
    assert_eq!(tier.get(&c).unwrap().unwrap().value.as_ref(), b"c");
    assert_eq!(tier.stats().io_errors, 2);
}
