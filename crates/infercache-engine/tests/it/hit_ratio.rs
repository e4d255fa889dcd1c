//! Hit-ratio regression tests on the ARC paper's traces (the repository's `traces/`): the
//! `lru` policy reproduces the published LRU column to the hundredth, and the default
//! policy reaches at least the published ARC column on every row.

use std::path::PathBuf;

use infercache_engine::Policy;
use infercache_engine::replay::{load_trace, replay};

/// (trace, capacity, published LRU %, published ARC %), ARC paper Tables VII/VIII.
const ROWS: [(&str, u64, f64, f64); 5] = [
    ("OLTP", 1_000, 32.83, 38.93),
    ("OLTP", 5_000, 53.65, 55.25),
    ("OLTP", 15_000, 64.63, 65.40),
    ("P2", 32_768, 18.47, 27.38),
    ("P3", 32_768, 3.57, 17.12),
];

fn trace(name: &str) -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../traces/{name}.lis.zst"));
    assert!(
        path.exists(),
        "trace {} is missing: it belongs to the repository (traces/)",
        path.display()
    );
    path
}

fn rounded(x: f64) -> String {
    format!("{x:.2}")
}

#[test]
fn lru_reproduces_the_published_lru_column_and_the_default_beats_arc() {
    let mut last = "";
    let mut keys = Vec::new();
    for (name, capacity, lru, arc) in ROWS {
        if name != last {
            keys = load_trace(&trace(name)).unwrap();
            last = name;
        }
        let got = replay(&keys, Policy::Lru, capacity).hit_ratio();
        assert_eq!(rounded(got), rounded(lru), "{name} at {capacity}: lru");
        let default = replay(&keys, Policy::default(), capacity).hit_ratio();
        assert!(
            rounded(default).parse::<f64>().unwrap() >= arc,
            "{name} at {capacity}: default {} below ARC {arc}",
            rounded(default)
        );
    }
}
