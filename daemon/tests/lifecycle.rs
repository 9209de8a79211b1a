//! `gate serve`'s stop, with the real binary on loopback under tokio and smol: SIGTERM lets a
//! stream in flight finish within the grace and the process exits 0; with a short grace a
//! longer stream ends with an error event in the client's protocol (OpenAI and Anthropic
//! shapes); new connections are refused once the signal is in; SIGINT stops a daemon whose
//! parent ignored SIGINT (a script's `gate serve &`). And through a relay: once the daemon
//! has said goodbye, a client of its name gets `unrecognized_name` at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    gate_bin, node_id, output, start_daemon_with_relay, start_local_daemon, start_relay, temp_dir,
    wait_until, Proc, RawResponse, StreamingMock,
};

/// How long each awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(30);

fn config(mock: &StreamingMock, server: &str) -> String {
    format!(
        "[auth]\nallow_loopback = true\n\n[server]\n{server}\n\n\
         [upstreams.mock]\nprovider = \"custom\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n",
        mock.base_url()
    )
}

const OPENAI_STREAM: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const ANTHROPIC_STREAM: &str =
    r#"{"model":"m","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn start_stream(addr: SocketAddr, anthropic: bool) -> RawResponse {
    if anthropic {
        RawResponse::send(
            addr,
            "/v1/messages",
            &[("anthropic-version", "2023-06-01")],
            ANTHROPIC_STREAM,
        )
    } else {
        RawResponse::send(addr, "/v1/chat/completions", &[], OPENAI_STREAM)
    }
}

fn wait_first_event(response: &RawResponse, gate: &Proc) {
    wait_until(
        "the first streamed event",
        DEADLINE,
        || response.text().contains("tok0"),
        || {
            format!(
                "response so far:\n{}\ngate log:\n{}",
                response.text(),
                gate.log()
            )
        },
    );
}

fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

/// SIGTERM while a 4-second stream is on: the stream completes normally, new connections are
/// refused meanwhile, the process exits 0 after it.
fn stream_finishes_within_grace(runtime: &str) {
    let dir = temp_dir(&format!("lifecycle-grace-{runtime}"));
    let mock = StreamingMock::start(16, Duration::from_millis(250));
    let (mut gate, addr) = start_local_daemon(&dir, runtime, &config(&mock, ""), None);
    let response = start_stream(addr, false);
    wait_first_event(&response, &gate);
    let signalled = Instant::now();
    gate.signal("TERM");
    wait_until(
        "new connections to be refused after SIGTERM",
        Duration::from_secs(5),
        || refuses_connections(addr),
        || gate.log(),
    );
    assert!(
        !response.is_done(),
        "the stream ended before the grace let it finish:\n{}",
        response.text()
    );
    let status = gate.wait_exit(DEADLINE);
    let log = gate.log();
    assert!(status.success(), "exit status {status}:\n{log}");
    let text = response.text();
    assert!(
        text.contains("tok15") && text.contains("[DONE]"),
        "the stream did not complete:\n{text}\ngate log:\n{log}"
    );
    assert!(!text.contains("shutting down"), "{text}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "stopping took {:?}",
        signalled.elapsed()
    );
    for step in [
        "stop requested",
        "no new connections",
        "every connection has finished",
        "gate stopped",
    ] {
        assert!(log.contains(step), "the log lacks {step:?}:\n{log}");
    }
    // A clean stop leaves no admin socket or address behind for the CLI to trip on.
    for leftover in ["admin.sock", "daemon.addr"] {
        assert!(
            !dir.join("state").join(leftover).exists(),
            "{leftover} is left after a clean stop"
        );
    }
}

#[test]
fn sigterm_lets_a_stream_finish_within_the_grace_tokio() {
    stream_finishes_within_grace("tokio");
}

#[test]
fn sigterm_lets_a_stream_finish_within_the_grace_smol() {
    stream_finishes_within_grace("smol");
}

/// With `shutdown_grace_secs = 1`, a stream of a minute ends with the client protocol's error
/// event soon after SIGTERM, and the process exits 0.
fn stream_ends_with_error_event_after_grace(runtime: &str, anthropic: bool) {
    let dir = temp_dir(&format!("lifecycle-cut-{runtime}-{anthropic}"));
    let mock = StreamingMock::start(300, Duration::from_millis(200));
    let (mut gate, addr) = start_local_daemon(
        &dir,
        runtime,
        &config(&mock, "shutdown_grace_secs = 1"),
        None,
    );
    let response = start_stream(addr, anthropic);
    wait_first_event(&response, &gate);
    let signalled = Instant::now();
    gate.signal("TERM");
    let status = gate.wait_exit(DEADLINE);
    let log = gate.log();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "stopping took {:?}:\n{log}",
        signalled.elapsed()
    );
    wait_until(
        "the client to see the end of the response",
        Duration::from_secs(5),
        || response.is_done(),
        || response.text(),
    );
    let text = response.text();
    assert!(
        text.contains("shutting down"),
        "no shutdown error event:\n{text}\ngate log:\n{log}"
    );
    if anthropic {
        assert!(
            text.contains("event: error"),
            "not an Anthropic error event:\n{text}"
        );
        assert!(!text.contains("message_stop"), "{text}");
    } else {
        assert!(
            text.contains(r#"data: {"error":"#),
            "not an OpenAI error event:\n{text}"
        );
        assert!(!text.contains("[DONE]"), "{text}");
    }
    assert!(
        log.contains("grace of 1s is over"),
        "the log lacks the grace step:\n{log}"
    );
}

#[test]
fn grace_over_ends_an_openai_stream_with_an_error_event_tokio() {
    stream_ends_with_error_event_after_grace("tokio", false);
}

#[test]
fn grace_over_ends_an_openai_stream_with_an_error_event_smol() {
    stream_ends_with_error_event_after_grace("smol", false);
}

#[test]
fn grace_over_ends_an_anthropic_stream_with_an_error_event_tokio() {
    stream_ends_with_error_event_after_grace("tokio", true);
}

#[test]
fn grace_over_ends_an_anthropic_stream_with_an_error_event_smol() {
    stream_ends_with_error_event_after_grace("smol", true);
}

/// A daemon started by a shell with SIGINT ignored (what `gate serve &` in a script does)
/// still stops on SIGINT, and exits 0.
fn sigint_with_sigint_ignored(runtime: &str) {
    let dir = temp_dir(&format!("lifecycle-sigint-{runtime}"));
    let mock = StreamingMock::start(1, Duration::from_millis(1));
    let (mut gate, _) = start_local_daemon(&dir, runtime, &config(&mock, ""), Some("trap '' INT;"));
    gate.signal("INT");
    let status = gate.wait_exit(DEADLINE);
    let log = gate.log();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(log.contains("signal=SIGINT"), "{log}");
    assert!(log.contains("gate stopped"), "{log}");
}

#[test]
fn sigint_stops_a_daemon_whose_parent_ignored_it_tokio() {
    sigint_with_sigint_ignored("tokio");
}

#[test]
fn sigint_stops_a_daemon_whose_parent_ignored_it_smol() {
    sigint_with_sigint_ignored("smol");
}

/// After SIGTERM the daemon leaves its relay, and a TLS client of its name through the relay
/// gets the `unrecognized_name` alert within ~2 s (not after the relay's tunnel timeout).
fn relayed_client_refused_after_goodbye(runtime: &str) {
    common::require_tools(&["openssl"]);
    let dir = temp_dir(&format!("lifecycle-goodbye-{runtime}"));
    let relay = start_relay(&dir, runtime, "gate.localhost", "", &[]);
    let state = dir.join("gate-state");
    // A long grace and a long stream on the local listener: the daemon is still running
    // (draining) while the client tries, so what the relay knows came from the goodbye.
    let mock = StreamingMock::start(300, Duration::from_millis(200));
    let (mut gate, addr) = start_daemon_with_relay(
        &dir,
        runtime,
        &state,
        &relay,
        &config(&mock, "shutdown_grace_secs = 60"),
        &[],
    );
    let name = format!("{}.gate.localhost", node_id(&gate_bin(), &state));
    let handshake = |name: &str| {
        output(
            Command::new("openssl")
                .args(["s_client", "-connect"])
                .arg(format!("127.0.0.1:{}", relay.https_port))
                .args(["-servername", name])
                .stdin(Stdio::null()),
        )
        .1
    };
    wait_until(
        "a TLS handshake with the daemon through the relay",
        DEADLINE,
        || handshake(&name).contains("BEGIN CERTIFICATE"),
        || format!("relay log:\n{}\ngate log:\n{}", relay.log(), gate.log()),
    );
    let response = start_stream(addr, false);
    wait_first_event(&response, &gate);
    gate.signal("TERM");
    let signalled = Instant::now();
    wait_until(
        "the relay to answer unrecognized_name for the daemon's name",
        Duration::from_secs(2),
        || handshake(&name).contains("unrecognized name"),
        || format!("relay log:\n{}\ngate log:\n{}", relay.log(), gate.log()),
    );
    assert!(signalled.elapsed() < Duration::from_secs(3));
    assert!(
        gate.exited().is_none() && !response.is_done(),
        "the daemon was not draining any more: the test proves nothing\n{}",
        gate.log()
    );
}

#[test]
fn relayed_client_gets_unrecognized_name_after_goodbye_tokio() {
    relayed_client_refused_after_goodbye("tokio");
}

#[test]
fn relayed_client_gets_unrecognized_name_after_goodbye_smol() {
    relayed_client_refused_after_goodbye("smol");
}
