//! The CLI and the state directory, against the real `gate` binary: the CLI authenticates
//! the daemon before it sends anything (it talks only to `<state_dir>/admin.sock`, never to
//! whatever holds the TCP port), concurrent edits without a daemon lose nothing (file
//! locks), and the state directory is kept private. Daemon tests run under both runtimes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cli, gate, gate_serve, temp_dir, Proc, RUNTIMES};
use serde_json::Value;

mod common;

const DEADLINE: Duration = Duration::from_secs(30);

/// An HTTP server that records every byte it receives and answers each request with a
/// JSON body of its choosing (a token and a login link), as an impostor on the daemon's
/// port would.
fn impostor() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let body = r#"{"token":"gk_chosen_by_impostor","id":"x","name":"x","url":"http://evil.example/ui/login?code=x","version":"evil","upstreams":[],"relay":{},"certificate":{}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn an_impostor_on_the_daemons_port_receives_nothing() {
    let dir = temp_dir("impostor");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (port, seen) = impostor();
    let admin_token = "gadm_bait_admin_token_value";
    std::fs::write(state.join("admin.token"), format!("{admin_token}\n")).unwrap();
    std::fs::write(state.join("config.toml"), format!("port = {port}\n")).unwrap();
    std::fs::write(state.join("daemon.addr"), format!("127.0.0.1:{port}\n")).unwrap();
    let provider_key = "sk-provider-key-bait-0123456789";

    let (ok, out, err) = cli(&["status"], &state, "");
    assert!(!ok, "status must fail without a daemon: {out}");
    assert!(err.contains("admin.sock"), "{err}");
    assert!(!out.contains("evil.example"), "{out}");

    let (ok, out, err) = cli(&["token", "create", "--name", "t"], &state, "");
    assert!(ok, "{err}");
    assert!(
        out.trim().starts_with("gk_") && !out.contains("impostor"),
        "{out}"
    );
    assert!(err.contains("editing the files in"), "{err}");

    let (ok, _, err) = cli(
        &[
            "upstream",
            "add",
            "u",
            "--provider",
            "openai",
            "--api-key-stdin",
        ],
        &state,
        provider_key,
    );
    assert!(ok, "{err}");
    assert!(err.contains("editing the files in"), "{err}");
    let (ok, _, err) = cli(&["config", "set", "log_level", "debug"], &state, "");
    assert!(ok, "{err}");
    let runtime = std::fs::read_to_string(state.join("config.toml")).unwrap();
    assert!(
        runtime.contains(provider_key) && runtime.contains("debug"),
        "{runtime}"
    );

    // The impostor records a request before it answers, and every command above has
    // ended, so anything sent is in the record by now.
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(seen.is_empty(), "the impostor received: {seen}");
}

/// A daemon on `state` with its stderr in a log file; returns once its admin socket answers.
fn start_daemon(runtime: &str, state: &Path, log: &Path) -> Proc {
    let cmd = gate_serve(runtime, state);
    let mut proc = Proc::spawn(cmd, log.to_path_buf());
    proc.wait_running(
        &format!("{runtime}: the admin socket to answer"),
        DEADLINE,
        || cli(&["status", "--json"], state, "").0.then_some(()),
    );
    proc
}

#[test]
fn with_a_daemon_the_cli_goes_through_its_socket() {
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("socket-{runtime}"));
        let state = dir.join("state");
        let daemon = start_daemon(runtime, &state, &dir.join("gate.log"));
        let socket = state.join("admin.sock");
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{runtime}: admin.sock mode");

        let (ok, out, err) = cli(&["token", "create", "--name", "live"], &state, "");
        assert!(ok, "{runtime}: {err}");
        assert!(out.trim().starts_with("gk_"), "{out}");
        assert!(
            err.contains("via the running daemon on") && err.contains("admin.sock"),
            "{runtime}: {err}"
        );
        let (ok, out, err) = cli(&["status", "--json"], &state, "");
        assert!(ok, "{runtime}: {err}");
        let status: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(status["runtime"], runtime);

        // A second daemon on the same state directory does not take the live socket (nor
        // overwrite the recorded address).
        let addr_before = std::fs::read_to_string(state.join("daemon.addr")).unwrap();
        let out = gate_serve(runtime, &state).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{runtime}: a second daemon started");
        assert_eq!(
            std::fs::read_to_string(state.join("daemon.addr")).unwrap(),
            addr_before,
            "{runtime}: the refused daemon overwrote daemon.addr"
        );
        assert!(
            err.contains("another gate daemon is already running"),
            "{err}"
        );
        let (ok, _, err) = cli(&["status"], &state, "");
        assert!(ok, "{runtime}: the first daemon lost its socket: {err}");

        // After a crash the stale socket is replaced by the next daemon.
        drop(daemon);
        assert!(socket.exists());
        let (ok, _, err) = cli(&["token", "list"], &state, "");
        assert!(ok, "{err}");
        let daemon = start_daemon(runtime, &state, &dir.join("gate2.log"));
        let (ok, _, err) = cli(&["status"], &state, "");
        assert!(ok, "{runtime}: {err}\n{}", daemon.log());
    }
}

/// Runs 20 copies of a command at once (each with its own arguments) and asserts they
/// all succeed.
fn run_parallel(state: &Path, args: impl Fn(usize) -> Vec<String>) {
    let children: Vec<_> = (0..20)
        .map(|i| {
            gate()
                .args(args(i))
                .arg("--state-dir")
                .arg(state)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run gate")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn parallel_edits_without_a_daemon_lose_nothing() {
    let dir = temp_dir("parallel");
    let state = dir.join("state");
    run_parallel(&state, |i| {
        vec![
            "token".into(),
            "create".into(),
            "--name".into(),
            format!("k{i}"),
        ]
    });
    let tokens: Value =
        serde_json::from_slice(&std::fs::read(state.join("tokens.json")).unwrap()).unwrap();
    assert_eq!(
        tokens["tokens"].as_array().map(Vec::len),
        Some(20),
        "{tokens}"
    );

    run_parallel(&state, |i| {
        vec![
            "config".into(),
            "set".into(),
            format!("upstreams.u{i}.provider"),
            "openai".into(),
        ]
    });
    let text = std::fs::read_to_string(state.join("config.toml")).unwrap();
    for i in 0..20 {
        assert!(
            text.contains(&format!("u{i}")),
            "upstream u{i} lost:\n{text}"
        );
    }
}

#[test]
fn an_open_state_directory_is_made_private() {
    let dir = temp_dir("mode");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, _, err) = cli(&["token", "create"], &state, "");
    assert!(ok, "{err}");
    assert!(err.contains("changed it to 0700"), "{err}");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_state_dir_too_long_for_a_socket_still_serves_and_the_cli_uses_the_files() {
    // A Unix socket address holds about 107 bytes; this path is longer.
    let dir = temp_dir("long");
    let state = dir.join("s".repeat(60)).join("t".repeat(60));
    for runtime in RUNTIMES {
        let log = dir.join(format!("{runtime}.log"));
        let cmd = gate_serve(runtime, &state);
        let mut daemon = Proc::spawn(cmd, log);
        daemon.wait_running(
            &format!("{runtime}: the daemon to listen"),
            DEADLINE,
            || state.join("daemon.addr").exists().then_some(()),
        );
        assert!(daemon.log().contains("cannot listen on the admin socket"));
        let (ok, out, err) = cli(&["token", "create", "--name", runtime], &state, "");
        assert!(ok, "{runtime}: {err}");
        assert!(
            out.trim().starts_with("gk_") && err.contains("editing the files in"),
            "{err}"
        );
        drop(daemon);
        let _ = std::fs::remove_file(state.join("daemon.addr"));
    }
}
