//! Builds: results, resumption from the journal, and bad input answered with a clear
//! error that loses nothing already built.

use std::fs;

use infercache_datasets::{DatasetError, StreamOptions};

use crate::{build, collect, ids, jsonl, open};

#[test]
fn a_build_tokenizes_and_streams_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = jsonl(dir.path(), "a.jsonl", 250, 0);
    let b = jsonl(dir.path(), "b.jsonl", 120, 0);
    let cache = open(&dir.path().join("cache"), 1 << 30);
    let built = build(&cache, "ab", &[a, b], &["tokenize:max_len=8"], 100).unwrap();
    assert_eq!(
        (built.rows, built.shards, built.rows_computed),
        (370, 4, 370)
    );
    let d = cache.get_dataset("ab").unwrap().unwrap();
    assert_eq!(
        d.manifest.schema,
        ["id: Int64", "text: Utf8", "input_ids: List(UInt32)"]
    );
    let batches = collect(&cache, "ab", StreamOptions::default());
    let got = ids(&batches);
    let want: Vec<i64> = (0..250).chain(0..120).collect();
    assert_eq!(got, want);
    // Every row is truncated at 8 tokens, [CLS] first and [SEP] last.
    let col = batches[0]
        .column_by_name("input_ids")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::ListArray>()
        .unwrap();
    let first = col.value(0);
    let first = first
        .as_any()
        .downcast_ref::<arrow_array::UInt32Array>()
        .unwrap();
    assert_eq!(first.len(), 8);
    assert_eq!((first.value(0), first.value(7)), (101, 102));
    // By fingerprint as well as by name.
    assert_eq!(
        ids(&collect(
            &cache,
            &built.fingerprint.hex(),
            StreamOptions::default()
        )),
        want
    );
}

#[test]
fn a_failed_build_resumes_from_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 1_000, 0);
    let cache = open(&dir.path().join("cache"), 1 << 30);
    // A command that fails once it has seen row 650: shards 0 to 5 get done.
    let flag = dir.path().join("fail");
    fs::write(&flag, "").unwrap();
    let step = format!(
        "cmd:1:t=$(mktemp); cat > $t; if [ -e {} ] && grep -q '\"id\":650' $t; then exit 3; fi; cat $t",
        flag.display()
    );
    let err = build(&cache, "a", std::slice::from_ref(&src), &[&step], 100).unwrap_err();
    assert!(
        matches!(&err, DatasetError::Step { reason, .. } if reason.contains("exited")),
        "{err}"
    );
    assert!(cache.get_dataset("a").unwrap().is_none());
    fs::remove_file(&flag).unwrap();
    let built = build(&cache, "a", &[src], &[&step], 100).unwrap();
    assert_eq!((built.rows_computed, built.rows_reused), (400, 600));
    assert_eq!(
        ids(&collect(&cache, "a", StreamOptions::default())),
        (0..1_000).collect::<Vec<i64>>()
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = jsonl(dir.path(), "good.jsonl", 300, 0);
    let cache = open(&dir.path().join("cache"), 1 << 30);
    build(
        &cache,
        "good",
        std::slice::from_ref(&good),
        &["cmd:1:cat"],
        100,
    )
    .unwrap();
    let check_good = || {
        assert_eq!(
            ids(&collect(&cache, "good", StreamOptions::default())),
            (0..300).collect::<Vec<i64>>()
        );
    };
    let expect = |r: Result<_, DatasetError>, words: &[&str]| {
        let e = r.unwrap_err().to_string();
        for w in words {
            assert!(e.contains(w), "`{e}` does not say `{w}`");
        }
    };

    // A missing source.
    let missing = dir.path().join("missing.jsonl");
    expect(
        build(&cache, "x", &[missing], &[], 100),
        &["missing.jsonl", "cannot be read"],
    );
    // A malformed row.
    let bad = dir.path().join("bad.jsonl");
    fs::write(
        &bad,
        "{\"id\": 1, \"text\": \"a\"}\n{\"id\": 2, \"text\": \n",
    )
    .unwrap();
    expect(build(&cache, "x", &[bad], &[], 100), &["bad.jsonl", "JSON"]);
    // A step that exits non-zero, naming its stderr.
    expect(
        build(
            &cache,
            "x",
            std::slice::from_ref(&good),
            &["cmd:1:echo broken >&2; exit 4"],
            100,
        ),
        &["cmd:1:echo broken", "exit status: 4", "broken"],
    );
    // A step that prints the wrong number of rows.
    expect(
        build(
            &cache,
            "x",
            std::slice::from_ref(&good),
            &["cmd:1:head -n 3"],
            100,
        ),
        &["printed 3 rows for 100 input rows"],
    );
    // A step that prints something that is not JSON.
    expect(
        build(
            &cache,
            "x",
            std::slice::from_ref(&good),
            &["cmd:1:sed s/^/x/"],
            100,
        ),
        &["not JSON"],
    );
    // Steps without a version, or unknown.
    expect(
        build(&cache, "x", std::slice::from_ref(&good), &["cmd::cat"], 100),
        &["no version"],
    );
    expect(
        build(
            &cache,
            "x",
            std::slice::from_ref(&good),
            &["frobnicate"],
            100,
        ),
        &["unknown step `frobnicate`"],
    );
    expect(
        build(
            &cache,
            "x",
            std::slice::from_ref(&good),
            &["tokenize:column=nope"],
            100,
        ),
        &["no column `nope`"],
    );
    // A cap below two shards.
    let small = open(&dir.path().join("small"), 4_000);
    expect(
        build(&small, "x", std::slice::from_ref(&good), &[], 100),
        &["below two shards", "4000"],
    );
    // A name that cannot be a file name.
    expect(
        build(&cache, "../x", std::slice::from_ref(&good), &[], 100),
        &["invalid dataset name"],
    );
    check_good();

    // A corrupt manifest: a clear error naming the file; the other datasets still work.
    build(&cache, "other", &[good], &["cmd:2:cat"], 100).unwrap();
    let d = cache.get_dataset("other").unwrap().unwrap();
    let manifest = dir
        .path()
        .join("cache/manifests")
        .join(format!("{}.json", d.manifest.fingerprint));
    fs::write(&manifest, b"{ not json").unwrap();
    let e = cache.get_dataset("other").unwrap_err().to_string();
    assert!(
        e.contains("corrupt dataset record") && e.contains(".json"),
        "{e}"
    );
    check_good();
}

#[test]
fn audit_catches_a_step_changed_without_a_version_bump() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), "a.jsonl", 200, 0);
    let script = dir.path().join("step.sh");
    fs::write(&script, "cat\n").unwrap();
    let spec = format!("cmd:1:sh {}", script.display());
    let cache = open(&dir.path().join("cache"), 1 << 30);
    build(&cache, "a", &[src], &[&spec], 50).unwrap();
    let clean = cache.audit("a", 30, 1).unwrap();
    assert!(
        clean.checked > 20 && clean.mismatched.is_empty(),
        "{clean:?}"
    );
    // The step's code changes; its declared version does not.
    fs::write(&script, "sed 's/row/ROW/'\n").unwrap();
    let audit = cache.audit("a", 30, 1).unwrap();
    assert_eq!(audit.mismatched.len() as u64, audit.checked, "{audit:?}");
}
