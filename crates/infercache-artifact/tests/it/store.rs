//! Inserts, reads, integrity, pins, single flight, partial downloads and recovery.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use infercache_artifact::{
    ArtifactError, Digest, Policy, Snapshot, SnapshotFile, Store, StoreConfig,
};
use infercache_core::{ManualClock, SystemClock};

use crate::{content, store_with};

#[test]
fn insert_then_read_back_by_either_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
    let bytes = b"model weights".to_vec();
    let sha = Digest::sha256_of(&bytes);
    let inserted = store.insert_bytes("models", &bytes, Some(&sha)).unwrap();
    assert!(inserted.new);
    assert_eq!(inserted.digest, Digest::blake3_of(&bytes));
    assert_eq!(inserted.sha256, sha);
    for d in [inserted.digest, sha] {
        let blob = store.open_blob(&d).unwrap().expect("present");
        assert_eq!(blob.read_all().unwrap(), bytes);
        assert_eq!(&blob.map().unwrap()[..], &bytes[..]);
        assert_eq!(blob.class(), "models");
    }
    // The same bytes again: nothing new.
    let again = store.insert_bytes("models", &bytes, None).unwrap();
    assert!(!again.new);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(
        store
            .open_blob(&Digest::blake3_of(b"other"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn wrong_bytes_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
    let expected = Digest::sha256_of(b"the real file");
    let err = store
        .insert_bytes("models", b"a tampered file", Some(&expected))
        .unwrap_err();
    match err {
        ArtifactError::DigestMismatch {
            expected: e,
            actual,
        } => {
            assert_eq!(e, expected);
            assert_eq!(actual, Digest::sha256_of(b"a tampered file"));
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    assert!(store.list().unwrap().is_empty());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let err = store
        .insert_bytes("nope", b"x", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("models"), "{err}");
}

#[test]
fn a_blob_larger_than_its_class_or_one_that_cannot_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1);
    let store = store_with(dir.path(), 10_000, Policy::Lru, 0.9, &clock);
    let err = store
        .insert_bytes("c", &content(1, 10_001), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ArtifactError::TooLarge {
                size: 10_001,
                cap: 10_000,
                ..
            }
        ),
        "{err}"
    );
    let a = store.insert_bytes("c", &content(2, 6_000), None).unwrap();
    store.pin(&a.digest, "kept").unwrap();
    let err = store
        .insert_bytes("c", &content(3, 6_000), None)
        .unwrap_err();
    assert!(
        matches!(err, ArtifactError::Full { used: 6_000, .. }),
        "{err}"
    );
    assert!(store.contains(&a.digest).unwrap());
}

#[test]
fn pinned_and_open_blobs_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1);
    let store = store_with(dir.path(), 10_000, Policy::Fifo, 1.0, &clock);
    let pinned = store
        .insert_bytes("c", &content(1, 3_000), None)
        .unwrap()
        .digest;
    store.pin(&pinned, "only copy").unwrap();
    let open = store
        .insert_bytes("c", &content(2, 3_000), None)
        .unwrap()
        .digest;
    let held = store.open_blob(&open).unwrap().unwrap();
    let free = store
        .insert_bytes("c", &content(3, 3_000), None)
        .unwrap()
        .digest;
    // 9,000 used: the next 3,000 must evict, and only `free` may go.
    let inserted = store.insert_bytes("c", &content(4, 3_000), None).unwrap();
    assert_eq!(
        inserted
            .evicted
            .iter()
            .map(|e| e.digest)
            .collect::<Vec<_>>(),
        [free]
    );
    assert!(store.contains(&pinned).unwrap());
    assert!(store.contains(&open).unwrap());
    // Removing them is refused without force.
    assert!(matches!(
        store.remove(&pinned, false),
        Err(ArtifactError::Pinned { .. })
    ));
    assert!(matches!(
        store.remove(&open, false),
        Err(ArtifactError::InUse { .. })
    ));
    // Once released, the held blob can go; its reader keeps its bytes meanwhile.
    let bytes = held.read_all().unwrap();
    store.remove(&open, true).unwrap();
    assert_eq!(held.read_all().unwrap(), bytes);
    drop(held);
    assert!(store.unpin(&pinned).unwrap());
    store.remove(&pinned, false).unwrap();
}

#[test]
fn eight_concurrent_misses_fetch_once() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap());
    let bytes: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let expected = Digest::sha256_of(&bytes);
    let fetches = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, bytes, fetches, barrier) = (
                store.clone(),
                bytes.clone(),
                fetches.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let got = store
                    .get_or_fetch("models", &expected, |partial| {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        // A slow download: the others must wait, not fetch too.
                        for chunk in bytes.chunks(100_000) {
                            std::thread::sleep(Duration::from_millis(20));
                            partial.write_all(chunk)?;
                        }
                        Ok::<_, std::io::Error>(())
                    })
                    .unwrap();
                got.blob.read_all().unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), bytes);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(store.stats().fetches, 1);
}

#[test]
fn a_partial_download_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = content(7, 300_000);
    let expected = Digest::blake3_of(&bytes);
    {
        let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
        let err = store
            .get_or_fetch("models", &expected, |partial| {
                partial.write_all(&bytes[..100_000])?;
                Err(std::io::Error::other("connection reset"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
    }
    // A new process: the first 100,000 bytes are still there.
    let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
    let fetched = store
        .get_or_fetch("models", &expected, |partial| {
            assert_eq!(partial.len(), 100_000);
            partial.write_all(&bytes[100_000..])?;
            Ok::<_, std::io::Error>(())
        })
        .unwrap();
    assert!(fetched.fetched);
    assert_eq!(fetched.blob.read_all().unwrap(), bytes);
    assert_eq!(fs::read_dir(dir.path().join("partial")).unwrap().count(), 0);

    // A partial whose bytes turn out wrong is dropped, so the next try starts from zero.
    let other = content(8, 1_000);
    let want = Digest::blake3_of(&other);
    let mut partial = store.partial("models", &want).unwrap().unwrap();
    partial.write_all(b"garbage").unwrap();
    assert!(matches!(
        partial.commit(),
        Err(ArtifactError::DigestMismatch { .. })
    ));
    let partial = store.partial("models", &want).unwrap().unwrap();
    assert!(partial.is_empty());
}

#[test]
fn a_corrupted_blob_is_detected_removed_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
    let bytes = content(9, 50_000);
    let digest = store.insert_bytes("models", &bytes, None).unwrap().digest;
    // Verified once: trusted by its stamp.
    assert!(store.open_verified(&digest).unwrap().is_some());
    let path = dir.path().join("blobs").join(digest.hex());
    let mut perms = fs::metadata(&path).unwrap().permissions();
    #[expect(
        clippy::permissions_set_readonly_false,
        reason = "the test corrupts a blob"
    )]
    perms.set_readonly(false);
    fs::set_permissions(&path, perms).unwrap();
    let mut damaged = fs::read(&path).unwrap();
    damaged[12_345] ^= 0x40;
    fs::write(&path, &damaged).unwrap();
    match store.open_verified(&digest) {
        Err(ArtifactError::Corrupt { digest: d, .. }) => assert_eq!(d, digest),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(!store.contains(&digest).unwrap());
    assert!(!path.exists());
}

#[test]
fn verify_reports_and_removes_corrupt_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
    let good = store
        .insert_bytes("models", &content(1, 5_000), None)
        .unwrap()
        .digest;
    let bad = store
        .insert_bytes("models", &content(2, 5_000), None)
        .unwrap()
        .digest;
    let path = dir.path().join("blobs").join(bad.hex());
    fs::remove_file(&path).unwrap();
    fs::write(&path, content(3, 5_000)).unwrap();
    let report = store.verify(true, |_| {}).unwrap();
    assert_eq!(report.ok, 1);
    assert_eq!(report.corrupt.len(), 1);
    assert!(store.contains(&bad).unwrap(), "a dry run removes nothing");
    let report = store.verify(false, |_| {}).unwrap();
    assert_eq!(report.corrupt[0].0, bad);
    assert!(!store.contains(&bad).unwrap());
    assert!(store.contains(&good).unwrap());
}

#[test]
fn leftovers_of_a_killed_insert_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let digest;
    {
        let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
        digest = store.insert_bytes("models", b"kept", None).unwrap().digest;
    }
    // What a kill can leave: an unlocked temporary file, a record without its blob, a
    // small file's temporary of a dead process.
    fs::write(dir.path().join("tmp/123-0-0.tmp"), b"half").unwrap();
    let orphan = Digest::blake3_of(b"never committed");
    fs::write(
        dir.path().join(format!("records/{}.json", orphan.hex())),
        b"{}",
    )
    .unwrap();
    fs::write(dir.path().join("records/.999999999-3.tmp"), b"{").unwrap();
    let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let records: Vec<_> = fs::read_dir(dir.path().join("records"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(records, [format!("{}.json", digest.hex())]);
    assert!(store.contains(&digest).unwrap());
}

#[test]
fn time_policy_expires_on_prune_and_dry_runs_remove_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let store = store_with(
        dir.path(),
        1 << 20,
        Policy::Time {
            max_age: Duration::from_secs(60),
        },
        0.9,
        &clock,
    );
    let old = store.insert_bytes("c", b"old", None).unwrap().digest;
    clock.advance(Duration::from_secs(30));
    let young = store.insert_bytes("c", b"young", None).unwrap().digest;
    clock.advance(Duration::from_secs(31));
    let dry = store.prune(true).unwrap();
    assert_eq!(dry.evicted.len(), 1);
    // Expired: no longer served, but a dry run leaves its file.
    assert!(!store.contains(&old).unwrap());
    let old_path = dir.path().join("blobs").join(old.hex());
    assert!(old_path.exists());
    let report = store.prune(false).unwrap();
    assert_eq!(report.evicted[0].digest, old);
    assert!(report.evicted[0].expired);
    assert!(!old_path.exists());
    assert!(store.contains(&young).unwrap());
}

#[test]
fn snapshots_name_sets_of_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default(), SystemClock::shared()).unwrap();
    let a = store.insert_bytes("models", b"config", None).unwrap();
    let snap = Snapshot {
        name: "sentence-transformers/all-MiniLM-L6-v2@main".to_owned(),
        files: BTreeMap::from([(
            "config.json".to_owned(),
            SnapshotFile {
                blob: a.digest,
                sha256: a.sha256,
                size: a.size,
            },
        )]),
    };
    store.put_snapshot(&snap).unwrap();
    assert_eq!(store.snapshot(&snap.name).unwrap().unwrap(), snap);
    assert_eq!(store.snapshots().unwrap(), std::slice::from_ref(&snap));
    assert_eq!(
        store.list().unwrap()[0].snapshots,
        [format!("{}/config.json", snap.name)]
    );
    assert!(store.snapshot("../etc").is_err());
    assert!(store.remove_snapshot(&snap.name).unwrap());
    assert!(store.snapshot(&snap.name).unwrap().is_none());
}

#[test]
fn a_blob_is_in_use_exactly_while_a_blob_or_reader_of_it_lives() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1);
    let store = store_with(dir.path(), 10_000, Policy::Fifo, 1.0, &clock);
    let bytes = content(1, 3_000);
    let d = store.insert_bytes("c", &bytes, None).unwrap().digest;
    let in_use = |store: &Store| store.list().unwrap()[0].in_use;
    // Just inserted: its writer's lock is gone.
    assert!(!in_use(&store));
    let blob = store.open_blob(&d).unwrap().unwrap();
    assert!(in_use(&store));
    // A copy of the descriptor (as a child process inherits it between fork and exec)
    // and a memory map (which keeps the open file description alive in the kernel) do
    // not keep the blob in use once the blob and its readers are dropped.
    let copy = blob.file().try_clone().unwrap();
    let view = blob.map().unwrap();
    let mut reader = blob.reader();
    drop(blob);
    assert!(in_use(&store), "a reader still holds it");
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut reader, &mut first).unwrap();
    assert_eq!(first, 1u64.to_le_bytes());
    drop(reader);
    assert!(
        !in_use(&store),
        "only a copied descriptor and a view are left"
    );
    // So eviction takes it, and the view still reads the bytes it mapped.
    store.remove(&d, false).unwrap();
    assert!(!store.contains(&d).unwrap());
    assert_eq!(&view[..], &bytes[..]);
    drop((view, copy));
}

#[test]
fn probes_of_in_use_never_make_a_read_miss_or_an_insert_fail() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1);
    // Room for the pinned blob and one other: every insert must evict the one before.
    let store = Arc::new(store_with(dir.path(), 6_000, Policy::Fifo, 1.0, &clock));
    let kept = store
        .insert_bytes("c", &content(0, 2_000), None)
        .unwrap()
        .digest;
    store.pin(&kept, "read throughout").unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                store.list().unwrap();
                n += 1;
            }
            n
        })
    };
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            for _ in 0..2_000 {
                assert!(
                    store.open_blob(&kept).unwrap().is_some(),
                    "a probe made a read miss"
                );
            }
        })
    };
    // Inserts that must evict: never refused as full because a probe held a blob.
    for id in 1..300 {
        store.insert_bytes("c", &content(id, 4_000), None).unwrap();
    }
    reader.join().unwrap();
    done.store(true, Ordering::Relaxed);
    assert!(lister.join().unwrap() > 0);
}

#[test]
fn an_expired_blob_is_a_miss_and_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let time = Policy::Time {
        max_age: Duration::from_secs(60),
    };
    let store = store_with(dir.path(), 1 << 20, time, 0.9, &clock);
    let bytes = content(1, 1_000);
    let d = store.insert_bytes("c", &bytes, None).unwrap().digest;
    let pinned = store
        .insert_bytes("c", &content(2, 1_000), None)
        .unwrap()
        .digest;
    store.pin(&pinned, "kept").unwrap();
    clock.advance(Duration::from_secs(59));
    assert!(store.open_blob(&d).unwrap().is_some());
    clock.advance(Duration::from_secs(1));
    // Expired: never served, though still on disk until the next cleanup.
    assert!(store.open_blob(&d).unwrap().is_none());
    assert!(store.open_verified(&d).unwrap().is_none());
    assert!(!store.contains(&d).unwrap());
    let listed = store.list().unwrap();
    let info = listed.iter().find(|b| b.digest == d).unwrap();
    assert!(info.expired);
    // A pinned blob does not expire.
    assert!(store.open_blob(&pinned).unwrap().is_some());
    assert!(!listed.iter().find(|b| b.digest == pinned).unwrap().expired);
    // A fetch of it runs again, and the bytes start a new life.
    let fetched = store
        .get_or_fetch("c", &d, |partial| partial.write_all(&bytes))
        .unwrap();
    assert!(fetched.fetched);
    drop(fetched);
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        store.open_blob(&d).unwrap().unwrap().read_all().unwrap(),
        bytes
    );
    // Inserting the same bytes again after expiry renews them too.
    clock.advance(Duration::from_secs(30));
    assert!(!store.contains(&d).unwrap());
    assert!(store.insert_bytes("c", &bytes, None).unwrap().new);
    assert!(store.contains(&d).unwrap());
    // The next open removes what has expired.
    clock.advance(Duration::from_secs(60));
    drop(store);
    let store = store_with(dir.path(), 1 << 20, time, 0.9, &clock);
    assert!(!dir.path().join("blobs").join(d.hex()).exists());
    assert!(store.contains(&pinned).unwrap());
}

#[test]
fn the_background_cleanup_removes_expired_blobs_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let time = Policy::Time {
        max_age: Duration::from_secs(60),
    };
    let store = Arc::new(store_with(dir.path(), 1 << 20, time, 0.9, &clock));
    let d = store
        .insert_bytes("c", &content(1, 1_000), None)
        .unwrap()
        .digest;
    let path = dir.path().join("blobs").join(d.hex());
    let cleaner = store.spawn_cleanup(Duration::from_millis(20)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(path.exists(), "removed before it expired");
    clock.advance(Duration::from_secs(61));
    let mut waited = 0;
    while path.exists() {
        assert!(waited < 500, "the cleanup never ran");
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    // Dropping the cleaner stops it; dropping the store stops it as well.
    drop(cleaner);
    let cleaner = store.spawn_cleanup(Duration::from_millis(10)).unwrap();
    drop(store);
    drop(cleaner);
}
