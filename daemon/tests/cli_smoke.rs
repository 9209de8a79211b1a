//! The `gate` binary answers `--help` and `--version` on every command, and refuses a bad
//! configuration before binding a port, naming the key and where it came from.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::process::Command;

fn gate() -> Command {
    Command::new(common::gate_bin())
}

#[test]
fn version_and_help() {
    let out = gate().arg("--version").output().expect("run gate");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("gate {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check-config", "--help"],
        vec!["config", "show", "--help"],
        vec!["upstream", "add", "--help"],
        vec!["token", "create", "--help"],
    ] {
        let out = gate().args(&args).output().expect("run gate");
        assert!(out.status.success(), "gate {args:?} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: gate"), "gate {args:?}: {text}");
    }
}

#[test]
fn bad_config_is_refused_before_binding() {
    let dir = common::temp_dir("cli-smoke");
    let file = dir.join("gate.toml");
    std::fs::write(&file, "port = 70000\n").unwrap();
    let out = gate()
        .args(["serve", "--config"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env_remove("GATE_PORT")
        .output()
        .expect("run gate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`port`"), "{err}");
    assert!(err.contains("gate.toml"), "{err}");
    assert!(err.contains("line 1"), "{err}");
    assert!(
        !dir.join("state").exists(),
        "state dir created despite the bad config"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
