//! `infercache datasets` and `infercache artifacts`, run as a user runs them: real
//! processes, killed with SIGKILL at random instants.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn infercache(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_infercache"));
    c.env("INFERCACHE_DATASETS_DIR", cache.join("datasets"))
        .env("INFERCACHE_ARTIFACTS_DIR", cache.join("artifacts"))
        .env("INFERCACHE_LOG", "warn");
    c
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn jsonl(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("rows.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..rows {
        writeln!(f, r#"{{"id": {i}, "text": "row {i}"}}"#).unwrap();
    }
    f.flush().unwrap();
    path
}

fn manifest_of(cache: &Path, name: &str) -> String {
    let (out, _) = run_ok(infercache(cache).args(["datasets", "show", name, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    serde_json::to_string(&v["manifest"]).unwrap()
}

#[test]
fn twenty_sigkills_during_a_build_lose_at_most_the_shard_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 2_000);
    let count = dir.path().join("invocations");
    // Each shard takes ~40 ms, and leaves a mark when its computation starts.
    let step = format!("cmd:1:echo x >> {}; sleep 0.04; cat", count.display());
    let build = |cache: &Path| {
        let mut c = infercache(cache);
        c.args([
            "datasets",
            "build",
            "d",
            "--shard-rows",
            "50",
            "--step",
            &step,
            "--source",
        ])
        .arg(&src);
        c
    };
    let reference = dir.path().join("reference");
    run_ok(&mut build(&reference));
    let shards = std::fs::read_to_string(&count).unwrap().lines().count();
    assert_eq!(shards, 40);
    std::fs::remove_file(&count).unwrap();

    let cache = dir.path().join("killed");
    let mut rng = StdRng::seed_from_u64(20);
    let mut kills = 0;
    for _ in 0..20 {
        let mut child = build(&cache)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 15,
        "only {kills} of the builds were still running when killed"
    );
    let (out, _) = run_ok(&mut build(&cache));
    assert!(out.contains("2000 rows in 40 shards"), "{out}");
    // Let the commands of killed builds (orphaned `sh`) finish writing their mark.
    std::thread::sleep(Duration::from_millis(200));
    let computed = std::fs::read_to_string(&count).unwrap().lines().count();
    assert!(
        computed <= shards + kills,
        "{computed} shard computations for {shards} shards and {kills} kills"
    );
    assert_eq!(manifest_of(&cache, "d"), manifest_of(&reference, "d"));
    // And what it streams is every row.
    let (rows, _) = run_ok(infercache(&cache).args(["datasets", "stream", "d", "--batch", "64"]));
    assert_eq!(rows.lines().count(), 2_000);
    assert!(rows.lines().nth(1999).unwrap().contains(r#""id":1999"#));
}

#[test]
fn stream_resumes_from_the_token_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 500);
    run_ok(
        infercache(dir.path())
            .args(["datasets", "build", "d", "--shard-rows", "64", "--source"])
            .arg(&src),
    );
    let stream = |extra: &[&str]| {
        let mut c = infercache(dir.path());
        c.args(["datasets", "stream", "d", "--shuffle", "9", "--batch", "10"])
            .args(extra);
        run_ok(&mut c)
    };
    let (full, _) = stream(&[]);
    let (head, err) = stream(&["--max-batches", "13"]);
    let token = err
        .lines()
        .find_map(|l| l.strip_prefix("resume: "))
        .unwrap_or_else(|| panic!("no token in {err}"))
        .to_owned();
    let (tail, _) = stream(&["--resume", &token]);
    // A batch never spans two shards: 13 batches of 10 are one shard of 64 rows (six
    // batches of 10 and one of 4) and six more batches of 10.
    assert_eq!(head.lines().count(), 64 + 60);
    assert_eq!(format!("{head}{tail}"), full);
}

#[test]
fn commands_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let src = jsonl(dir.path(), 10);
    let fails = |args: &[&str], words: &[&str]| {
        let out = infercache(dir.path()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        for w in words {
            assert!(err.contains(w), "{args:?}: `{err}` does not say `{w}`");
        }
    };
    let src = src.to_str().unwrap();
    fails(
        &["datasets", "build", "d", "--source", "/nonexistent/x.jsonl"],
        &["/nonexistent/x.jsonl"],
    );
    fails(
        &[
            "datasets",
            "build",
            "d",
            "--source",
            src,
            "--step",
            "cmd:1:exit 7",
        ],
        &["cmd:1:exit 7", "exit status: 7"],
    );
    fails(&["datasets", "stream", "nope"], &["no dataset `nope`"]);
    fails(
        &[
            "datasets",
            "build",
            "d",
            "--source",
            src,
            "--disk-size",
            "1KB",
        ],
        &["below two shards"],
    );
    fails(&["artifacts", "rm", "blake3:zz"], &["neither a digest"]);
    fails(
        &["artifacts", "ls", "--filter", "colour>3"],
        &["unknown filter field `colour`"],
    );
    // Nothing was lost: a good build still works after all that.
    run_ok(infercache(dir.path()).args(["datasets", "build", "d", "--source", src]));
}

fn random_file(path: &Path, bytes: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; bytes];
    rng.fill(&mut data[..]);
    std::fs::write(path, data).unwrap();
}

#[test]
fn twenty_sigkills_during_inserts_leave_no_corrupt_hit_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut kills = 0;
    // Kill instants are random; on a fast or a loaded machine some inserts finish before
    // their instant, so try until twenty were killed in flight (bounded).
    for i in 0..200 {
        let file = dir.path().join(format!("f{i}.bin"));
        random_file(&file, 16 << 20, i);
        let mut child = infercache(dir.path())
            .args(["artifacts", "add", "--class", "models"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..80)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        std::fs::remove_file(&file).unwrap();
        if kills == 20 {
            break;
        }
    }
    assert_eq!(kills, 20, "only {kills} inserts were killed in flight");
    // The next start cleans up; every blob there is whole and verified.
    let (ls, _) = run_ok(infercache(dir.path()).args(["artifacts", "ls", "--json"]));
    let tmp = dir.path().join("artifacts/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temporary files left"
    );
    run_ok(infercache(dir.path()).args(["artifacts", "verify"]));
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    for blob in v["blobs"].as_array().unwrap() {
        assert_eq!(blob["size"], 16 << 20, "a truncated blob: {blob}");
    }
}

#[test]
fn eight_processes_missing_one_blob_copy_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.bin");
    random_file(&file, 64 << 20, 8);
    let sha = infercache_artifact::Digest::sha256_of(&std::fs::read(&file).unwrap());
    let children: Vec<_> = (0..8)
        .map(|_| {
            infercache(dir.path())
                .args(["artifacts", "add", "--expect", &sha.to_string()])
                .arg(&file)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut added = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(" added") {
            added += 1;
        } else {
            assert!(text.contains("already there"), "{text}");
        }
    }
    assert_eq!(added, 1);
}
