//! `infercache serve` reads each setting from its flag, its `INFERCACHE_*` variable or the
//! `--config` file, in that order of precedence, as the process really sees them.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{failed, infercache};

/// `infercache serve` with `args` and `env` and no other `INFERCACHE_*` variable.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = infercache();
    cmd.arg("serve").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("INFERCACHE_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// The "effective config" line a server logs at start; the server is then stopped.
fn effective_config(mut cmd: Command) -> String {
    let mut child = cmd
        .env("INFERCACHE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("effective config: ") => break Some(line),
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("the server logged no effective config:\n{log}"))
}

#[test]
fn serve_reads_each_setting_from_its_flag_its_variable_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("infercache.toml");
    // An upstream model only, so nothing is loaded or fetched; it is not called.
    std::fs::write(
        &config,
        r#"
        max_items = 10
        max_input_chars = 10
        ttl = 30
        max_wait = "2ms"
        body_budget = 8388608

        [[models]]
        name = "scorer"
        backend = "http-json"
        url = "http://127.0.0.1:9"
        "#,
    )
    .unwrap();
    let line = effective_config(serve(
        &[
            "--config",
            config.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--max-input-chars",
            "50",
        ],
        &[
            ("INFERCACHE_NO_DISK", "true"),
            ("INFERCACHE_MAX_ITEMS", "20"),
            ("INFERCACHE_MAX_INPUT_CHARS", "100"),
            ("INFERCACHE_REQUEST_TIMEOUT", "1m"),
            ("INFERCACHE_SHUTDOWN_TIMEOUT", "1500ms"),
        ],
    ));
    for shown in [
        // Only in the environment.
        " disk_dir=none",
        " request_timeout=60s",
        " shutdown_timeout=1.5s",
        // In the environment and the file: the environment wins.
        " max_items=20",
        // Flag, environment and file: the flag wins.
        " max_input_chars=50",
        // Only in the file (a TOML integer is seconds, or bytes).
        " ttl=Some(30s)",
        " max_wait=2ms",
        " body_budget=8388608",
        " model=scorer:http-json@http://127.0.0.1:9",
        // Given nowhere: the default.
        " max_concurrent_requests=256",
    ] {
        assert!(line.contains(shown), "{shown:?} in {line}");
    }
}

#[test]
fn a_bad_value_names_its_setting_whichever_layer_gave_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("infercache.toml");
    std::fs::write(&config, "max_wait = \"20s\"\n").unwrap();
    let cases = [
        serve(&["--ttl", "5 fortnights", "--no-disk"], &[]),
        serve(&["--no-disk"], &[("INFERCACHE_REDIS_TIMEOUT", "soon")]),
        serve(&["--no-disk", "--config", config.to_str().unwrap()], &[]),
    ];
    for (mut cmd, key) in cases.into_iter().zip(["ttl", "redis_timeout", "max_wait"]) {
        let stderr = failed(&cmd.output().unwrap());
        assert!(
            stderr.contains(&format!("invalid {key} ")),
            "{key}: {stderr}"
        );
    }
    std::fs::write(&config, "max_wiat = \"2ms\"\n").unwrap();
    let mut cmd = serve(&["--config", config.to_str().unwrap()], &[]);
    let stderr = failed(&cmd.output().unwrap());
    assert!(stderr.contains("unknown field `max_wiat`"), "{stderr}");
}
