//! UDP blocked for real (issue 13): a network namespace made by the test (`ip netns add`,
//! loopback only) where nftables drops every UDP datagram to the relay's ports. The real
//! `gate-relay serve` and `gate serve` (default `relay.transport = "auto"`) run inside it, under
//! tokio and under smol:
//! - the daemon registers over TLS/TCP on the relay's HTTPS port within 10 s, `gate status`
//!   and `gate-relay status` say `tcp`, and curl (inside the namespace) reaches `/health`
//!   through the relay;
//! - a TLS connection (openssl s_client, HTTP/1.1 keep-alive) is opened through the TCP
//!   tunnel, then the nftables rule is deleted: the daemon moves back to QUIC (both statuses
//!   say `quic`) and the connection opened before still answers a second request.
//!
//! 1 GiB each way over the TCP tunnel is proved in-process (relay/tests/relay_big.rs
//! `one_gib_each_way_over_tcp_*`): the daemon's HTTP API has no echo endpoint for it.
//!
//! Needs root (or CAP_SYS_ADMIN) for `ip netns`, and `nft`/`ip` (test.sh installs them); when
//! network namespaces cannot be made the test says so and skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{gate_bin, node_id, output, relay_bin, wait_until, Proc};

const SUFFIX: &str = "gate.localhost";
const HTTPS_PORT: u16 = 8443;
const P2P_PORT: u16 = 4433;
const DAEMON_P2P_PORT: u16 = 41147;
/// The bound on registering over the fallback.
const FALLBACK_DEADLINE: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(60);

/// A network namespace, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    /// Makes the namespace and brings its loopback up; `None` (with the reason) when network
    /// namespaces are unavailable here.
    fn create(tag: &str) -> Result<Netns, String> {
        let name = format!("gate-{tag}-{}", std::process::id());
        let (ok, out) = output(Command::new("ip").args(["netns", "add", &name]));
        if !ok {
            return Err(format!("ip netns add {name}: {}", out.trim()));
        }
        let ns = Netns { name };
        let (ok, out) = output(&mut ns.command(&["ip", "link", "set", "lo", "up"]));
        assert!(ok, "loopback up in {}: {out}", ns.name);
        Ok(ns)
    }

    /// `args` run inside the namespace.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    fn nft(&self, rules: &str) {
        let (ok, out) = output(&mut self.command(&["nft", rules]));
        assert!(ok, "nft {rules}: {out}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn tools_present() -> Result<(), String> {
    for tool in ["ip", "nft", "curl", "openssl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Err(format!("{tool} is required (test.sh installs it)"));
        }
    }
    Ok(())
}

fn gate_status(state: &Path) -> String {
    let (_, out) = output(
        Command::new(gate_bin())
            .args(["status", "--state-dir"])
            .arg(state),
    );
    out
}

fn relay_status(state: &Path) -> String {
    let (_, out) = output(
        Command::new(relay_bin())
            .args(["status", "--state-dir"])
            .arg(state),
    );
    out
}

/// An `openssl s_client` through the relay inside the namespace, its output read by a thread.
struct TlsClient {
    proc: std::process::Child,
    /// What the server sent, as it arrives.
    chunks: mpsc::Receiver<String>,
}

impl TlsClient {
    fn open(ns: &Netns, name: &str) -> TlsClient {
        let mut proc = ns
            .command(&[
                "openssl",
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{HTTPS_PORT}"),
                "-servername",
                name,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_client");
        let mut stdout = proc.stdout.take().expect("stdout");
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0
                    || tx
                        .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                        .is_err()
                {
                    break;
                }
            }
        });
        TlsClient { proc, chunks }
    }

    /// Sends `GET /health` on the open connection and waits for `200` and the body.
    fn get_health(&mut self, name: &str) -> Result<(), String> {
        let stdin = self.proc.stdin.as_mut().ok_or("no stdin")?;
        write!(stdin, "GET /health HTTP/1.1\r\nHost: {name}\r\n\r\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing the request: {e}"))?;
        let end = Instant::now() + Duration::from_secs(15);
        let mut seen = String::new();
        while Instant::now() < end {
            match self.chunks.recv_timeout(Duration::from_millis(200)) {
                Ok(chunk) => {
                    seen.push_str(&chunk);
                    // The body of /health is a JSON object: its closing brace ends it.
                    if seen.starts_with("HTTP/1.1 200") && seen.trim_end().ends_with('}') {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the connection closed; read {seen:?}"))
                }
            }
        }
        Err(format!("no complete 200 response in time; read {seen:?}"))
    }
}

impl Drop for TlsClient {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

fn curl_health(ns: &Netns, name: &str) -> String {
    let (_, out) = output(&mut ns.command(&[
        "curl",
        "-skS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &format!("{name}:{HTTPS_PORT}:127.0.0.1"),
        &format!("https://{name}:{HTTPS_PORT}/health"),
    ]));
    out
}

fn scenario(runtime: &str) {
    if let Err(why) = tools_present() {
        panic!("{why}");
    }
    let ns = match Netns::create(&format!("udp-{runtime}")) {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces are unavailable here ({why})");
            return;
        }
    };
    // UDP to the relay's QUIC ports is dropped, as on a network that blocks UDP.
    ns.nft("add table inet gate_udp_block");
    ns.nft("add chain inet gate_udp_block out { type filter hook output priority 0 ; }");
    ns.nft(&format!(
        "add rule inet gate_udp_block out udp dport {{ {HTTPS_PORT}, {P2P_PORT} }} drop"
    ));

    let dir = common::temp_dir(&format!("udp-blocked-{runtime}"));
    let relay_state = dir.join("relay-state");
    let relay_id = node_id(&relay_bin(), &relay_state);
    let relay_config = dir.join("relay.toml");
    std::fs::write(
        &relay_config,
        format!(
            "https_port = {HTTPS_PORT}\np2p_port = {P2P_PORT}\nbind_address = \"127.0.0.1\"\n\
             domain_suffix = \"{SUFFIX}\"\n"
        ),
    )
    .expect("write relay.toml");
    let mut cmd = ns.command(&[]);
    cmd.arg(relay_bin())
        .args(["serve", "--runtime", runtime, "--config"])
        .arg(&relay_config)
        .arg("--state-dir")
        .arg(&relay_state);
    let relay = Proc::spawn(cmd, dir.join("relay.log"));
    wait_until(
        "the relay to listen",
        DEADLINE,
        || relay.log().contains("relay listening"),
        || relay.log(),
    );

    let gate_state = dir.join("gate-state");
    let gate_config = dir.join("gate.toml");
    std::fs::write(
        &gate_config,
        format!(
            "host = \"127.0.0.1\"\np2p_port = {DAEMON_P2P_PORT}\n\n\
             [relay]\nenable = true\naddresses = [\"{relay_id}@127.0.0.1:{P2P_PORT}\"]\n\
             custom_domain = \"myserver\"\ntcp_port = {HTTPS_PORT}\n\n\
             [auth]\nallow_loopback = true\n\n[server]\nkeep_alive_timeout_secs = 300\n"
        ),
    )
    .expect("write gate.toml");
    let started = Instant::now();
    let mut cmd = ns.command(&[]);
    cmd.arg(gate_bin())
        .args(["serve", "--runtime", runtime, "--port", "0", "--config"])
        .arg(&gate_config)
        .arg("--state-dir")
        .arg(&gate_state);
    let gate = Proc::spawn(cmd, dir.join("gate.log"));
    let context = || format!("gate log:\n{}\nrelay log:\n{}", gate.log(), relay.log());
    wait_until(
        "the daemon to register over TCP",
        // The process start is included; the bound is the issue's.
        FALLBACK_DEADLINE,
        || gate.log().contains("registered with the relay"),
        context,
    );
    eprintln!("registered after {:.2?}", started.elapsed());
    wait_until(
        "gate status to say tcp",
        DEADLINE,
        || gate_status(&gate_state).contains("registered over tcp"),
        || format!("{}\n{}", gate_status(&gate_state), context()),
    );
    wait_until(
        "gate-relay status to say tcp",
        DEADLINE,
        || relay_status(&relay_state).contains("registered  over tcp"),
        || format!("{}\n{}", relay_status(&relay_state), context()),
    );
    let name = format!("myserver.{SUFFIX}");
    wait_until(
        "curl to reach /health through the relay over TCP",
        DEADLINE,
        || curl_health(&ns, &name) == "200",
        || format!("curl: {}\n{}", curl_health(&ns, &name), context()),
    );

    // A connection through the TCP tunnel, kept open across the move back to QUIC.
    let mut long = TlsClient::open(&ns, &name);
    if let Err(e) = long.get_health(&name) {
        panic!("first request on the long connection: {e}\n{}", context());
    }

    ns.nft("delete table inet gate_udp_block");
    wait_until(
        "gate status to say quic",
        DEADLINE,
        || gate_status(&gate_state).contains("registered over quic"),
        || format!("{}\n{}", gate_status(&gate_state), context()),
    );
    wait_until(
        "gate-relay status to say quic",
        DEADLINE,
        || relay_status(&relay_state).contains("registered  over quic"),
        || format!("{}\n{}", relay_status(&relay_state), context()),
    );
    assert_eq!(
        curl_health(&ns, &name),
        "200",
        "curl over QUIC\n{}",
        context()
    );
    if let Err(e) = long.get_health(&name) {
        panic!(
            "second request on the connection opened over TCP: {e}\n{}",
            context()
        );
    }
    drop(long);
    drop(gate);
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udp_blocked_falls_back_to_tcp_and_moves_back_tokio() {
    scenario("tokio");
}

#[test]
fn udp_blocked_falls_back_to_tcp_and_moves_back_smol() {
    scenario("smol");
}
