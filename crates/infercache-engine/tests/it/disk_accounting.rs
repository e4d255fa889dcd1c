//! The disk tier's `index_bytes` against what its index really holds in memory.
//!
//! The child (this binary, re-executed on [`disk_index_child`], so no other test's
//! allocations reach its resident set) opens a disk tier with room for every entry, stores
//! 200,000 small values (the files take them; the process keeps only the index), then
//! overwrites a quarter of them, and reports its resident set growth and the tier's
//! `index_bytes` after each step. The parent asserts that the two agree within 5 %.

use std::process::Command;

use infercache_core::{Digest, ManualClock};
use infercache_engine::{Compression, DiskConfig, DiskTier};

const CHILD_ENV: &str = "INFERCACHE_DISK_INDEX_CHILD";
const ENTRIES: u64 = 200_000;

/// Resident set size of this process, in bytes (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn open(dir: &std::path::Path) -> DiskTier {
    let config = DiskConfig {
        compression: Compression::None,
        ..DiskConfig::new(dir, 1 << 30)
    };
    DiskTier::open(config, ManualClock::new(1)).unwrap()
}

fn store(tier: &DiskTier, range: std::ops::Range<u64>) {
    for i in range {
        tier.insert(Digest::of_u64(i), &i.to_le_bytes(), 1, None)
            .unwrap();
    }
}

/// Prints `step rss_growth index_bytes` per step; without the variable, checks what the
/// steps rely on.
#[test]
fn disk_index_child() {
    let dir = tempfile::tempdir().unwrap();
    let tier = open(dir.path());
    if std::env::var_os(CHILD_ENV).is_none() {
        assert_eq!(tier.stats().index_bytes, 0);
        store(&tier, 0..1);
        assert!(tier.stats().index_bytes > 0);
        return;
    }
    // The first insert opens a segment file and allocates the writer's buffers.
    store(&tier, 0..1);
    let before = rss_bytes() - tier.stats().index_bytes;
    store(&tier, 1..ENTRIES);
    assert_eq!(tier.entries(), ENTRIES);
    println!(
        "filled {} {}",
        rss_bytes() - before,
        tier.stats().index_bytes
    );
    store(&tier, 0..ENTRIES / 4);
    assert_eq!(tier.entries(), ENTRIES);
    println!(
        "overwritten {} {}",
        rss_bytes() - before,
        tier.stats().index_bytes
    );
}

#[test]
fn disk_index_bytes_match_resident_bytes() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args([
            "disk_accounting::disk_index_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for step in ["filled", "overwritten"] {
        let line = stdout
            .lines()
            // The test harness may print its own text ahead of ours on a line.
            .find_map(|l| l.split_once(&format!("{step} ")).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no {step:?} line in {stdout:?}"));
        let numbers: Vec<f64> = line
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        let (rss, accounted) = (numbers[0], numbers[1]);
        let ratio = accounted / rss;
        assert!(
            (0.95..=1.05).contains(&ratio),
            "{step}: index_bytes {accounted} for {rss} resident ({ratio:.3})"
        );
    }
}
