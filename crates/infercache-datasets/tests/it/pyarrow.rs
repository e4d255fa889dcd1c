//! Real pyarrow reads the shards as they are (`INFERCACHE_TEST_PYTHON`, the pinned test
//! environment of `scripts/test-python`).

use std::process::Command;

use arrow_array::Array as _;

use infercache_datasets::StreamOptions;

use crate::{build, collect, jsonl, open};

#[test]
fn pyarrow_opens_every_shard_as_it_is() {
    let python = std::env::var_os("INFERCACHE_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .expect("INFERCACHE_TEST_PYTHON must name a python with pyarrow (scripts/test sets it)");
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 500, 0);
    let cache = open(&dir.path().join("cache"), 1 << 30);
    build(&cache, "a", &[src], &["tokenize:max_len=12"], 128).unwrap();
    let d = cache.get_dataset("a").unwrap().unwrap();
    let paths: Vec<String> = d
        .manifest
        .shards
        .iter()
        .map(|s| {
            cache
                .store()
                .root()
                .join("blobs")
                .join(s.digest.hex())
                .display()
                .to_string()
        })
        .collect();
    let script = r#"
import json, sys
import pyarrow as pa
import pyarrow.ipc as ipc
rows, ids, tokens, schema = 0, 0, 0, None
for path in sys.argv[1:]:
    with pa.memory_map(path) as source:
        table = ipc.open_file(source).read_all()
    rows += table.num_rows
    ids += sum(table.column("id").to_pylist())
    tokens += sum(len(t) for t in table.column("input_ids").to_pylist())
    schema = [f"{f.name}: {f.type}" for f in table.schema]
print(json.dumps({"rows": rows, "ids": ids, "tokens": tokens, "schema": schema}))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let batches = collect(&cache, "a", StreamOptions::default());
    let tokens: usize = batches
        .iter()
        .map(|b| {
            let list = b
                .column_by_name("input_ids")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::ListArray>()
                .unwrap()
                .clone();
            // Batches are slices of a shard: count each row's length, not the shared values.
            (0..list.len())
                .map(|i| usize::try_from(list.value_length(i)).unwrap())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(got["rows"], 500);
    assert_eq!(got["ids"], (0..500).sum::<i64>());
    assert_eq!(got["tokens"], tokens);
    assert_eq!(
        got["schema"],
        serde_json::json!(["id: int64", "text: string", "input_ids: list<item: uint32>"])
    );
}
