use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use infercache_core::{Clock as _, Digest, ManualClock, SharedClock};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::*;

const T0: u64 = 1_700_000_000_000;

fn config(
    dir: &Path,
    capacity: u64,
    segment_size: Option<u64>,
    compression: Compression,
) -> DiskConfig {
    DiskConfig {
        dir: dir.to_path_buf(),
        capacity,
        segment_size,
        compression,
    }
}

fn open_with(dir: &Path, clock: &Arc<ManualClock>, compression: Compression) -> DiskTier {
    let clock: SharedClock = clock.clone();
    DiskTier::open(config(dir, 8 * MIB, None, compression), clock).unwrap()
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> DiskTier {
    open_with(dir, clock, Compression::Lz4)
}

fn value_of(tier: &DiskTier, key: &Digest) -> Option<Vec<u8>> {
    tier.get(key).unwrap().map(|e| e.value.to_vec())
}

/// Sum of the sizes of the files in `segments/`, as the file system reports them.
fn bytes_on_disk(dir: &Path) -> u64 {
    fs::read_dir(dir.join(segment::SEGMENTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn round_trip_keeps_value_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    let key = Digest::of(b"a");
    tier.insert(key, b"value a", T0 - 5, Some(T0 + 1_000))
        .unwrap();
    let entry = tier.get(&key).unwrap().unwrap();
    assert_eq!(&entry.value[..], b"value a");
    assert_eq!(entry.created_ms, T0 - 5);
    assert_eq!(entry.expires_ms, Some(T0 + 1_000));
    assert_eq!(tier.get(&Digest::of(b"b")).unwrap(), None);
    let empty = Digest::of(b"empty");
    tier.insert(empty, b"", T0, None).unwrap();
    assert_eq!(value_of(&tier, &empty), Some(Vec::new()));
    let stats = tier.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.inserts, stats.entries),
        (2, 1, 2, 2)
    );
    assert_eq!(stats.bytes, bytes_on_disk(dir.path()));
    drop(tier);

    let tier = open(dir.path(), &clock);
    let entry = tier.get(&key).unwrap().unwrap();
    assert_eq!(
        (&entry.value[..], entry.created_ms, entry.expires_ms),
        (&b"value a"[..], T0 - 5, Some(T0 + 1_000))
    );
    assert_eq!(value_of(&tier, &empty), Some(Vec::new()));
}

#[test]
fn overwrite_serves_the_latest_value_before_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    let key = Digest::of(b"k");
    for i in 0..10u32 {
        tier.insert(key, format!("v{i}").as_bytes(), T0, None)
            .unwrap();
    }
    assert_eq!(value_of(&tier, &key).as_deref(), Some(&b"v9"[..]));
    assert_eq!(tier.entries(), 1);
    drop(tier);
    let tier = open(dir.path(), &clock);
    assert_eq!(value_of(&tier, &key).as_deref(), Some(&b"v9"[..]));
    // A write after a restart goes to a new segment and still wins after the next one.
    tier.insert(key, b"after", T0, None).unwrap();
    drop(tier);
    let tier = open(dir.path(), &clock);
    assert_eq!(value_of(&tier, &key).as_deref(), Some(&b"after"[..]));
}

#[test]
fn removed_entries_do_not_come_back_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    tier.insert(a, b"A", T0, None).unwrap();
    tier.insert(b, b"B", T0, None).unwrap();
    drop(tier);
    // The tombstone lands in a later segment than the value it deletes.
    let tier = open(dir.path(), &clock);
    assert!(tier.remove(&a).unwrap());
    assert!(!tier.remove(&a).unwrap());
    assert!(!tier.remove(&Digest::of(b"never")).unwrap());
    assert_eq!(tier.get(&a).unwrap(), None);
    assert_eq!(tier.stats().removals, 1);
    drop(tier);
    let tier = open(dir.path(), &clock);
    assert_eq!(tier.get(&a).unwrap(), None);
    assert_eq!(value_of(&tier, &b).as_deref(), Some(&b"B"[..]));
    // Re-inserting after a removal works and persists.
    tier.insert(a, b"A2", T0, None).unwrap();
    drop(tier);
    let tier = open(dir.path(), &clock);
    assert_eq!(value_of(&tier, &a).as_deref(), Some(&b"A2"[..]));
}

#[test]
fn ttl_is_honoured_before_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    let (short, long, forever) = (
        Digest::of(b"short"),
        Digest::of(b"long"),
        Digest::of(b"forever"),
    );
    tier.insert(short, b"s", T0, Some(T0 + 1_000)).unwrap();
    tier.insert(long, b"l", T0, Some(T0 + 10_000)).unwrap();
    tier.insert(forever, b"f", T0, None).unwrap();
    clock.advance(Duration::from_millis(999));
    assert!(value_of(&tier, &short).is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        tier.get(&short).unwrap(),
        None,
        "expires at exactly expires_ms"
    );
    assert_eq!(tier.stats().expirations, 1);
    assert_eq!(tier.entries(), 2);
    drop(tier);

    let tier = open(dir.path(), &clock);
    assert_eq!(tier.get(&short).unwrap(), None);
    assert_eq!(value_of(&tier, &long).as_deref(), Some(&b"l"[..]));
    drop(tier);
    clock.advance(Duration::from_secs(20));
    let tier = open(dir.path(), &clock);
    assert_eq!(
        tier.entries(),
        1,
        "expired records are not indexed on recovery"
    );
    assert_eq!(tier.get(&long).unwrap(), None);
    assert_eq!(value_of(&tier, &forever).as_deref(), Some(&b"f"[..]));

    // An expired record overrides an older live one instead of uncovering it.
    tier.insert(forever, b"gone", T0, Some(clock.now_ms() - 1))
        .unwrap();
    assert_eq!(tier.get(&forever).unwrap(), None);
    drop(tier);
    let tier = open(dir.path(), &clock);
    assert_eq!(tier.get(&forever).unwrap(), None);
}

#[test]
fn purge_expired_sweeps_the_index_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    for i in 0..10u64 {
        let expires = (i < 6).then_some(T0 + 100);
        tier.insert(Digest::of_u64(i), b"x", T0, expires).unwrap();
    }
    assert_eq!(tier.purge_expired(), 0);
    clock.advance(Duration::from_millis(100));
    assert_eq!(tier.purge_expired(), 6);
    assert_eq!(tier.purge_expired(), 0);
    let stats = tier.stats();
    assert_eq!((stats.entries, stats.expirations), (4, 6));
    assert_eq!(tier.get(&Digest::of_u64(0)).unwrap(), None);
    assert!(tier.get(&Digest::of_u64(9)).unwrap().is_some());
}

#[test]
fn compressed_values_round_trip_and_take_less_space() {
    let value: Vec<u8> = b"the same embedding again and again, "
        .iter()
        .copied()
        .cycle()
        .take(20_000)
        .collect();
    let mut sizes = HashMap::new();
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let tier = open_with(dir.path(), &clock, codec);
        let key = Digest::of(codec.as_str().as_bytes());
        tier.insert(key, &value, T0, None).unwrap();
        let random: Vec<u8> = (0..3_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        tier.insert(Digest::of(b"random"), &random, T0, None)
            .unwrap();
        assert_eq!(value_of(&tier, &key), Some(value.clone()));
        sizes.insert(codec, tier.bytes());
        drop(tier);
        // Another codec setting reads what this one wrote: the codec is per record.
        let tier = open_with(dir.path(), &clock, Compression::None);
        assert_eq!(value_of(&tier, &key), Some(value.clone()));
        assert_eq!(value_of(&tier, &Digest::of(b"random")), Some(random));
    }
    assert!(
        sizes[&Compression::Lz4] < sizes[&Compression::None] / 4,
        "{sizes:?}"
    );
    assert!(
        sizes[&Compression::Zstd] < sizes[&Compression::None] / 4,
        "{sizes:?}"
    );
}

#[test]
fn compression_names_parse_and_serialize_lowercase() {
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        assert_eq!(codec.as_str().parse::<Compression>().unwrap(), codec);
        let json = serde_json::to_string(&codec).unwrap();
        assert_eq!(json, format!("\"{codec}\""));
        assert_eq!(serde_json::from_str::<Compression>(&json).unwrap(), codec);
    }
    assert!("LZ4".parse::<Compression>().is_err());
}

#[test]
fn clear_drops_everything_durably() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    for i in 0..100u64 {
        tier.insert(Digest::of_u64(i), &[7u8; 500], T0, None)
            .unwrap();
    }
    tier.clear().unwrap();
    assert_eq!(
        (tier.entries(), tier.bytes(), bytes_on_disk(dir.path())),
        (0, 0, 0)
    );
    assert_eq!(tier.get(&Digest::of_u64(1)).unwrap(), None);
    tier.insert(Digest::of_u64(1), b"new", T0, None).unwrap();
    assert_eq!(
        value_of(&tier, &Digest::of_u64(1)).as_deref(),
        Some(&b"new"[..])
    );
    drop(tier);
    let tier = open(dir.path(), &clock);
    assert_eq!(tier.entries(), 1);
    assert_eq!(tier.get(&Digest::of_u64(2)).unwrap(), None);
    assert_eq!(
        value_of(&tier, &Digest::of_u64(1)).as_deref(),
        Some(&b"new"[..])
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    let shared: SharedClock = clock.clone();
    let err =
        DiskTier::open(config(dir.path(), 8 * MIB, None, Compression::Lz4), shared).unwrap_err();
    assert!(matches!(err, DiskError::Locked { .. }), "{err:?}");
    drop(tier);
    let _reopened = open(dir.path(), &clock);
}

#[test]
fn reopening_without_writes_leaves_no_empty_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    for _ in 0..5 {
        let tier = open(dir.path(), &clock);
        tier.flush().unwrap();
    }
    let tier = open(dir.path(), &clock);
    tier.insert(Digest::of(b"x"), b"y", T0, None).unwrap();
    tier.flush().unwrap();
    assert_eq!(
        segment::list(&dir.path().join(segment::SEGMENTS_DIR))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn segment_size_resolution() {
    let dir = PathBuf::from("/nonexistent");
    let cfg = |capacity, segment_size| config(&dir, capacity, segment_size, Compression::None);
    assert_eq!(cfg(8 * MIB, None).resolved_segment_size().unwrap(), MIB);
    assert_eq!(
        cfg(64 * KIB, None).resolved_segment_size().unwrap(),
        32 * KIB
    );
    assert_eq!(
        cfg(100 * 1024 * MIB, None).resolved_segment_size().unwrap(),
        256 * MIB
    );
    assert_eq!(
        cfg(MIB, Some(64 * KIB)).resolved_segment_size().unwrap(),
        64 * KIB
    );
    assert!(matches!(
        cfg(MIB, Some(MIB)).resolved_segment_size(),
        Err(DiskError::CapacityTooSmall { .. })
    ));
    assert!(matches!(
        cfg(4 * KIB, None).resolved_segment_size(),
        Err(DiskError::CapacityTooSmall { .. })
    ));
    assert!(matches!(
        cfg(MIB, Some(100)).resolved_segment_size(),
        Err(DiskError::InvalidSegmentSize { .. })
    ));
}

/// Random inserts, overwrites, removals, reads, restarts and clears against a model map,
/// with a capacity small enough to evict all the time. After every operation the segment
/// files stay within the capacity, and every read is a miss or the latest value.
#[test]
fn randomized_ops_never_exceed_capacity_or_return_a_wrong_value() {
    const CAPACITY: u64 = 48 * KIB;
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let codec = [Compression::None, Compression::Lz4, Compression::Zstd]
            [usize::try_from(seed % 3).unwrap()];
        let open_tier = || {
            let shared: SharedClock = clock.clone();
            DiskTier::open(config(dir.path(), CAPACITY, Some(8 * KIB), codec), shared).unwrap()
        };
        let mut tier = open_tier();
        let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
        let (mut hits, mut version, mut evictions) = (0u32, 0u32, 0u64);
        for op in 0..3_000 {
            let k = rng.random_range(0..150u64);
            let key = Digest::of_u64(k);
            match rng.random_range(0..100) {
                0..55 => {
                    version += 1;
                    let len = rng.random_range(0..1_500usize);
                    let mut value = format!("{k}:{version}:").into_bytes();
                    if rng.random_bool(0.5) {
                        value.extend((0..len).map(|_| rng.random::<u8>()));
                    } else {
                        value.resize(value.len() + len, b'z');
                    }
                    tier.insert(key, &value, T0, None).unwrap();
                    model.insert(k, value);
                }
                55..85 => {
                    if let Some(v) = value_of(&tier, &key) {
                        assert_eq!(
                            Some(&v),
                            model.get(&k),
                            "seed {seed} op {op}: wrong value for {k}"
                        );
                        hits += 1;
                    }
                }
                85..97 => {
                    let present = tier.remove(&key).unwrap();
                    let modelled = model.remove(&k).is_some();
                    assert!(
                        !present || modelled,
                        "seed {seed} op {op}: removed a key never written"
                    );
                }
                97..99 => {
                    evictions += tier.stats().evictions;
                    drop(tier);
                    tier = open_tier();
                }
                _ => {
                    tier.clear().unwrap();
                    model.clear();
                }
            }
            assert!(
                tier.bytes() <= CAPACITY,
                "seed {seed} op {op}: {} bytes",
                tier.bytes()
            );
            assert_eq!(
                tier.bytes(),
                bytes_on_disk(dir.path()),
                "seed {seed} op {op}"
            );
        }
        for (k, v) in &model {
            if let Some(got) = value_of(&tier, &Digest::of_u64(*k)) {
                assert_eq!(&got, v);
            }
        }
        let stats = tier.stats();
        assert!(hits > 100, "seed {seed}: only {hits} hits");
        assert!(
            evictions + stats.evictions > 0,
            "seed {seed}: nothing evicted"
        );
        assert_eq!(stats.corrupt, 0);
    }
}

#[test]
fn concurrent_readers_and_writer_see_only_written_values() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let shared: SharedClock = clock.clone();
    let tier = Arc::new(
        DiskTier::open(
            config(dir.path(), 256 * KIB, Some(16 * KIB), Compression::Lz4),
            shared,
        )
        .unwrap(),
    );
    let value = |k: u64, v: u64| {
        format!("{k}/{v}/")
            .repeat(usize::try_from(k % 50 + 1).unwrap())
            .into_bytes()
    };
    std::thread::scope(|s| {
        let writer = Arc::clone(&tier);
        s.spawn(move || {
            for v in 0..3_000u64 {
                let k = v % 64;
                writer
                    .insert(Digest::of_u64(k), &value(k, v), T0, None)
                    .unwrap();
            }
        });
        for _ in 0..2 {
            let reader = Arc::clone(&tier);
            s.spawn(move || {
                for i in 0..5_000u64 {
                    let k = i % 64;
                    if let Some(e) = reader.get(&Digest::of_u64(k)).unwrap() {
                        let text = std::str::from_utf8(&e.value).unwrap();
                        let v: u64 = text.split('/').nth(1).unwrap().parse().unwrap();
                        assert_eq!(&e.value[..], &value(k, v)[..]);
                    }
                }
            });
        }
    });
    assert_eq!(tier.stats().corrupt, 0);
    assert!(tier.bytes() <= tier.capacity());
}

#[test]
fn tier_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + std::fmt::Debug>() {}
    assert_send_sync::<DiskTier>();
    assert_send_sync::<DiskError>();
}

#[test]
fn many_records_written_at_once_read_back_after_a_reopen_and_a_later_repeat_wins() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    // The first write opens the active segment; the batch below then fits in it whole.
    tier.insert(Digest::of(b"first"), b"1", T0, None).unwrap();
    let keys: Vec<Digest> = (0..40u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
    let values: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("value {i} ").repeat(1 + i as usize).into_bytes())
        .collect();
    let too_large = vec![7u8; usize::try_from(tier.max_value_len()).unwrap() + 1];
    let mut entries: Vec<(Digest, &[u8], u64, Option<u64>)> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (*k, &v[..], T0 - 1, Some(T0 + 5_000)))
        .collect();
    entries.push((keys[3], b"again", T0, None));
    tier.insert_many(&entries).unwrap();
    // With a value too large among them, each is written in turn and that one refused.
    let (large, small) = (Digest::of(b"large"), Digest::of(b"small"));
    let refused = [
        (small, &b"s"[..], T0, None),
        (large, &too_large[..], T0, None),
    ];
    assert!(matches!(
        tier.insert_many(&refused),
        Err(DiskError::TooLarge { .. })
    ));
    assert_eq!(value_of(&tier, &small), Some(b"s".to_vec()));
    let check = |tier: &DiskTier| {
        for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
            let e = tier.get(k).unwrap().unwrap();
            if i == 3 {
                assert_eq!((&e.value[..], e.expires_ms), (&b"again"[..], None));
            } else {
                assert_eq!((&e.value[..], e.created_ms), (&v[..], T0 - 1));
                assert_eq!(e.expires_ms, Some(T0 + 5_000));
            }
        }
        assert_eq!(tier.get(&Digest::of(b"large")).unwrap(), None);
    };
    check(&tier);
    let stats = tier.stats();
    assert_eq!((stats.inserts, stats.entries), (43, 42));
    assert_eq!(stats.bytes, bytes_on_disk(dir.path()));
    drop(tier);
    check(&open(dir.path(), &clock));
}

#[test]
fn many_records_on_a_failing_disk_are_each_refused_and_none_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let tier = open(dir.path(), &clock);
    let keys: Vec<Digest> = (0..8u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
    for k in &keys {
        tier.insert(*k, b"old", T0, None).unwrap();
    }
    let entries: Vec<(Digest, &[u8], u64, Option<u64>)> =
        keys.iter().map(|k| (*k, &b"new"[..], T0, None)).collect();
    {
        let _fault = crate::testing::DiskFault::eio(dir.path());
        assert!(tier.insert_many(&entries).is_err());
    }
    // The older values are no longer served in the newer ones' place.
    for k in &keys {
        assert_eq!(tier.get(k).unwrap(), None);
    }
    assert_eq!(tier.stats().bytes, bytes_on_disk(dir.path()));
}
