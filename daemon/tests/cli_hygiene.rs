//! Configuration hygiene of the `gate` binary: Kubernetes' service variables do not stop
//! it, secrets stay off the command line and out of errors, `--help` documents the listen
//! flags, dates are readable, config errors name the real file, and a `custom` base URL
//! without a version segment is refused or flagged. Daemon tests run under both runtimes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::net::TcpStream;
use std::time::Duration;

use common::{gate, gate_in, gate_serve, run, temp_dir, Proc, RUNTIMES};
use serde_json::Value;

mod common;

const DEADLINE: Duration = Duration::from_secs(30);

/// A loopback port nobody listens on a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

const KUBERNETES: [(&str, &str); 6] = [
    ("GATE_SERVICE_HOST", "10.0.0.1"),
    ("GATE_SERVICE_PORT", "3000"),
    ("GATE_PORT_3000_TCP", "tcp://10.0.0.1:3000"),
    ("GATE_PORT_3000_TCP_PROTO", "tcp"),
    ("GATE_PORT_3000_TCP_ADDR", "10.0.0.1"),
    ("GATE_PORT", "tcp://10.0.0.1:3000"),
];

#[test]
fn kubernetes_service_variables_do_not_stop_gate() {
    let dir = temp_dir("k8s");
    let state = dir.join("state");
    let (ok, out, err) = run(gate_in(&["check-config"], &state).envs(KUBERNETES), "");
    assert!(ok, "{err}");
    assert!(out.contains("listening on 127.0.0.1:3000"), "{out}");
    assert!(
        err.contains("GATE_SERVICE_HOST") && err.contains("service link"),
        "{err}"
    );
    // A misspelled key in a known section is still an error.
    let (ok, _, err) = run(
        gate_in(&["check-config"], &state).env("GATE_AUTH__JWT__SECERT", "x"),
        "",
    );
    assert!(!ok && err.contains("GATE_AUTH__JWT__SECERT"), "{err}");

    for runtime in RUNTIMES {
        let port = free_port();
        let mut cmd = gate_in(&["serve", "--runtime", runtime], &state.join(runtime));
        cmd.envs(KUBERNETES)
            .env("GATE_PORT_3000_TCP_PORT", "3000")
            // GATE_PORT as a number keeps working next to the service variables.
            .env("GATE_PORT", port.to_string());
        let log = dir.join(format!("{runtime}.log"));
        let mut daemon = Proc::spawn(cmd, log);
        daemon.wait_running(
            &format!("{runtime}: gate serve to listen on GATE_PORT"),
            DEADLINE,
            || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()),
        );
        assert!(
            daemon.log().contains("GATE_SERVICE_HOST"),
            "{}",
            daemon.log()
        );
    }
}

#[test]
fn secrets_are_read_from_stdin_and_never_echoed() {
    let dir = temp_dir("secrets");
    let state = dir.join("state");
    let secret = "0123456789abcdef-jwt-secret";
    let (ok, _, err) = run(
        &mut gate_in(&["config", "set", "auth.jwt.secret", secret], &state),
        "",
    );
    assert!(!ok, "a secret on the command line was accepted");
    assert!(
        err.contains("not taken from the command line") && err.contains(" -"),
        "{err}"
    );
    assert!(!err.contains(secret), "{err}");
    assert!(!state.join("config.toml").exists());
    let (ok, _, err) = run(
        &mut gate_in(&["config", "set", "auth.jwt.secret", "-"], &state),
        &format!("{secret}\n"),
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(state.join("config.toml")).unwrap();
    assert!(text.contains(&format!("secret = \"{secret}\"")), "{text}");
    // A non-secret value still goes on the command line.
    let (ok, _, err) = run(
        &mut gate_in(&["config", "set", "log_level", "debug"], &state),
        "",
    );
    assert!(ok, "{err}");

    // A wrong-typed secret in a --config file and in the environment is not quoted.
    let file = dir.join("gate.toml");
    std::fs::write(&file, "[upstreams.openai]\napi_key = 987654321\n").unwrap();
    let (ok, _, err) = run(
        gate_in(&["check-config"], &dir.join("other"))
            .arg("--config")
            .arg(&file),
        "",
    );
    assert!(!ok);
    assert!(!err.contains("987654321"), "{err}");
    assert!(
        err.contains(&format!("the config file {}", file.display())) && err.contains("line 2"),
        "{err}"
    );
    assert!(!err.contains("nix file"), "{err}");
    let (ok, _, err) = run(
        gate_in(&["check-config"], &dir.join("other")).env("GATE_AUTH__JWT__SECRET", "4242"),
        "",
    );
    assert!(!ok);
    assert!(!err.contains("4242"), "{err}");
}

#[test]
fn serve_help_shows_the_listen_flags_and_gate_port() {
    let (ok, out, _) = run(gate().args(["serve", "--help"]), "");
    assert!(ok);
    for needle in ["--port", "--host", "GATE_PORT", "GATE_HOST"] {
        assert!(
            out.contains(needle),
            "`gate serve --help` lacks {needle}:\n{out}"
        );
    }
    let (ok, out, _) = run(gate().args(["config", "set", "--help"]), "");
    assert!(ok);
    assert!(out.contains("standard input"), "{out}");
}

#[test]
fn token_list_prints_dates() {
    let dir = temp_dir("dates");
    let state = dir.join("state");
    let (ok, _, err) = run(
        &mut gate_in(
            &["token", "create", "--name", "d", "--expires", "30d"],
            &state,
        ),
        "",
    );
    assert!(ok, "{err}");
    assert!(err.contains(" UTC"), "{err}");
    let (ok, out, err) = run(&mut gate_in(&["token", "list"], &state), "");
    assert!(ok, "{err}");
    let line = out.lines().next().unwrap_or_default();
    let dates: Vec<&str> = line
        .split('\t')
        .filter_map(|f| {
            f.strip_prefix("created ")
                .or_else(|| f.strip_prefix("expires "))
        })
        .collect();
    assert_eq!(dates.len(), 2, "{line}");
    for date in dates {
        // YYYY-MM-DD HH:MM UTC
        let b = date.as_bytes();
        assert!(
            date.len() == 20 && b[4] == b'-' && b[7] == b'-' && date.ends_with(" UTC"),
            "{line}"
        );
    }
    let (ok, out, _) = run(&mut gate_in(&["token", "list", "--json"], &state), "");
    assert!(ok);
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert!(rows[0]["created_at"].is_u64(), "{rows}");
    assert!(
        rows[0]["expires"]
            .as_str()
            .is_some_and(|s| s.ends_with(" UTC")),
        "{rows}"
    );
}

#[test]
fn a_custom_base_url_without_v1_is_refused_or_flagged() {
    let dir = temp_dir("v1");
    let state = dir.join("state");
    let add = |url: &str, force: bool| {
        let mut cmd = gate_in(
            &[
                "upstream",
                "add",
                "local",
                "--provider",
                "custom",
                "--base-url",
                url,
            ],
            &state,
        );
        if force {
            cmd.arg("--force");
        }
        run(&mut cmd, "")
    };
    let (ok, _, err) = add("http://127.0.0.1:9/", false);
    assert!(!ok);
    assert!(err.contains("/v1") && err.contains("--force"), "{err}");
    assert!(!state.join("config.toml").exists());
    let (ok, _, err) = add("http://127.0.0.1:9", true);
    assert!(ok, "{err}");

    for runtime in RUNTIMES {
        let mut cmd = gate_serve(runtime, &state);
        cmd.env("RUST_LOG", "info");
        let log = dir.join(format!("{runtime}.log"));
        let mut daemon = Proc::spawn(cmd, log);
        let status: Value =
            daemon.wait_running(&format!("{runtime}: gate status"), DEADLINE, || {
                let (ok, out, _) = run(&mut gate_in(&["status", "--json"], &state), "");
                ok.then(|| serde_json::from_str(&out).ok()).flatten()
            });
        let problem = status["upstreams"][0]["misconfiguration"].as_str();
        assert!(
            problem.is_some_and(|p| p.contains("/v1")),
            "{runtime}: {status}"
        );
        let (ok, out, _) = run(&mut gate_in(&["status"], &state), "");
        assert!(ok && out.contains("misconfigured"), "{runtime}: {out}");
        drop(daemon);
    }
}
