//! The `infercache` binary, run as a user runs it.

use std::io::Write;
use std::process::Command;

fn infercache() -> Command {
    Command::new(env!("CARGO_BIN_EXE_infercache"))
}

fn trace(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn hit_ratio_prints_one_line_per_policy_and_capacity() {
    // Keys 0..4, then 0..4 again: a capacity of 4 hits every second pass under any policy.
    let t = trace("0 4 0 0\n0 4 0 1\n");
    let out = infercache()
        .args(["bench", "hit-ratio", "--trace"])
        .arg(t.path())
        .args(["--capacity", "4,2", "--policy", "all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 10, "{stdout}");
    assert!(
        lines.contains(&"policy=lru capacity=4 requests=8 hit_ratio=50.00"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"policy=lru capacity=2 requests=8 hit_ratio=0.00"),
        "{stdout}"
    );
    for line in lines {
        assert!(line.starts_with("policy="), "{line}");
    }
}

#[test]
fn bad_arguments_and_bad_traces_fail_with_a_message() {
    let t = trace("0 4 0 0\n");
    for (args, needle) in [
        (
            vec!["--capacity", "4", "--policy", "arc"],
            "unknown eviction policy",
        ),
        (vec!["--capacity", "0"], "--capacity must be positive"),
    ] {
        let out = infercache()
            .args(["bench", "hit-ratio", "--trace"])
            .arg(t.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
    let garbage = trace("this is not a trace\n");
    let out = infercache()
        .args(["bench", "hit-ratio", "--capacity", "4", "--trace"])
        .arg(garbage.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: bad START"));
}
