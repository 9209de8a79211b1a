//! The real `gate-relay` binary on loopback: `id`, `serve --config --state-dir --runtime`,
//! `status` (running, killed, stopped), the metrics listener (from the file and from
//! `RELAY_METRICS_PORT`), and a relay killed with SIGKILL in the middle of a transfer and started
//! again: the daemon's client notices, registers again, and new connections work.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;
#[path = "../../tests/support/retry_start.rs"]
mod retry_start;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use gate_relay::identity::Identity;
use gate_rt::Runtime;
use retry_start::{start_on_free_ports, Started};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BINARY: &str = env!("CARGO_BIN_EXE_gate-relay");

/// A child process killed (SIGKILL) when dropped, and the file it logs to.
struct Relay(Child, PathBuf);

impl Started for Relay {
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("relay status")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The ports a relay under test listens on: HTTPS (TCP and QUIC), the daemons' QUIC port and
/// the metrics listener (used only where the test's config or environment names it).
#[derive(Debug, Clone, Copy)]
struct Ports {
    https: u16,
    p2p: u16,
    metrics: u16,
}

/// Starts `gate-relay serve` on ports probed free, with `config(ports)` written to
/// `config_path` and `env(ports)` in its environment, and waits until it logs that it listens
/// (its log starts over at each start; see [`start_on_free_ports`]).
fn start_relay(
    runtime: &str,
    (config_path, state_dir, log): (&Path, &Path, &Path),
    config: impl Fn(Ports) -> String,
    env: impl Fn(Ports) -> Vec<(&'static str, String)>,
) -> (Relay, Ports) {
    start_on_free_ports(
        "gate-relay",
        Duration::from_secs(20),
        || {
            let (https, p2p) = free_ports();
            let ports = Ports {
                https,
                p2p,
                metrics: free_tcp_port(),
            };
            std::fs::write(config_path, config(ports)).expect("write the relay's config");
            let _ = std::fs::remove_file(log);
            let relay = spawn_relay_with_env(runtime, config_path, state_dir, log, &env(ports));
            (relay, ports)
        },
        |relay, _| relay.log_text().contains("relay listening"),
    )
}

/// `gate-relay status [--json]`: exit code and stdout (stderr appended).
fn relay_status(state_dir: &Path, config: &Path, json: bool) -> (Option<i32>, String) {
    let mut command = Command::new(BINARY);
    command
        .args(["status", "--state-dir"])
        .arg(state_dir)
        .arg("--config")
        .arg(config);
    if json {
        command.arg("--json");
    }
    let output = command.output().expect("gate-relay status");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Waits (off the executor) until `gate-relay status --json` exits with `code` and its JSON
/// satisfies `check`; returns that JSON.
async fn status_json_until<R: Runtime>(
    rt: &R,
    state_dir: &Path,
    config: &Path,
    code: i32,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, BoxError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (state_dir, config) = (state_dir.to_owned(), config.to_owned());
        let (exit, text) = blocking(move || relay_status(&state_dir, &config, true)).await;
        if exit == Some(code) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                if check(&value) {
                    return Ok(value);
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(
                format!("timed out waiting for status: {what}\nlast ({exit:?}): {text}").into(),
            );
        }
        rt.sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /metrics` from the relay's metrics listener.
async fn scrape(port: u16) -> Result<String, BoxError> {
    blocking(move || -> Result<String, BoxError> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if !response.starts_with("HTTP/1.1 200") {
            return Err(format!("metrics answered: {response}").into());
        }
        Ok(response)
    })
    .await
}

/// The value of metric `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn spawn_relay(runtime: &str, config: &Path, state_dir: &Path, log: &Path) -> Relay {
    spawn_relay_with_env(runtime, config, state_dir, log, &[])
}

fn spawn_relay_with_env(
    runtime: &str,
    config: &Path,
    state_dir: &Path,
    log: &Path,
    env: &[(&str, String)],
) -> Relay {
    let log_path = log.to_path_buf();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = Command::new(BINARY)
        .args(["serve", "--runtime", runtime, "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start gate-relay");
    Relay(child, log_path)
}

#[test]
fn id_prints_the_node_id_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BINARY)
        .args(["id", "--state-dir"])
        .arg(dir.path())
        .output()
        .expect("gate-relay id");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let identity = Identity::load_or_create(dir.path()).expect("same key");
    assert_eq!(printed, format!("{}\n", identity.node_id()));
    // Stable across runs.
    let again = Command::new(BINARY)
        .args(["id", "--state-dir"])
        .arg(dir.path())
        .output()
        .expect("gate-relay id");
    assert_eq!(again.stdout, printed.as_bytes());
}

#[test]
fn serve_rejects_an_unknown_key_before_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, "htps_port = 8443\n").expect("write");
    let output = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("gate-relay serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("htps_port"), "{stderr}");
}

/// `[tunnel]` keys from the file reach the server: a certificate file that does not exist stops
/// `serve` with a message naming it; `check-config` accepts the keys and rejects a certificate
/// without its key.
#[test]
fn tunnel_keys_from_the_file_reach_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (https_port, p2p_port) = free_ports();
    let config = dir.path().join("relay.toml");
    let missing = dir.path().join("missing-chain.pem");
    std::fs::write(
        &config,
        format!(
            "https_port = {https_port}\np2p_port = {p2p_port}\nbind_address = \"127.0.0.1\"\n\
             [tunnel]\nheartbeat_interval_ms = 5000\ncertificate_file = \"{}\"\n\
             key_file = \"{}\"\n",
            missing.display(),
            dir.path().join("missing-key.pem").display()
        ),
    )
    .expect("write");
    let check = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("check-config");
    assert!(check.status.success(), "{check:?}");
    let serve = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("serve");
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(
        stderr.contains("tunnel certificate") && stderr.contains("missing-chain.pem"),
        "{stderr}"
    );

    std::fs::write(&config, "[tunnel]\ncertificate_file = \"/c.pem\"\n").expect("write");
    let check = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("check-config");
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("tunnel.key_file"), "{stderr}");
}

async fn killed_and_restarted<R: Runtime>(rt: R, relay_runtime: &str) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let config = dir.path().join("relay.toml");
    let log = dir.path().join("relay.log");
    let relay_id = Identity::load_or_create(&state)?.node_id().clone();
    let (mut relay, ports) = start_relay(
        relay_runtime,
        (&config, &state, &log),
        |p| {
            format!(
                "https_port = {}\np2p_port = {}\nbind_address = \"127.0.0.1\"\n\
                 domain_suffix = \"{SUFFIX}\"\nlog_level = \"debug\"\nmetrics_port = {}\n\
                 claim_lapse_days = 7\n",
                p.https, p.p2p, p.metrics
            )
        },
        |_| Vec::new(),
    );
    let Ports {
        https: https_port,
        p2p: p2p_port,
        metrics: metrics_port,
    } = ports;
    let address = format!("{relay_id}@127.0.0.1:{p2p_port}").parse()?;
    let daemon = start_daemon(&rt, address, Some("kept"))?;
    let registered = wait_until(&rt, Duration::from_secs(20), "daemon registered", || {
        daemon.is_registered()
    })
    .await;
    if let Err(e) = registered {
        return Err(format!("{e}\nrelay log:\n{}", std::fs::read_to_string(&log)?).into());
    }
    let https = std::net::SocketAddr::from(([127, 0, 0, 1], https_port));
    daemon_health(&rt, https, &daemon).await?;
    // The daemon learned the relay's HTTPS port from the registration answer.
    assert_eq!(
        daemon.status().public_urls,
        vec![
            format!("https://{}:{https_port}/", daemon.node_name),
            format!("https://kept.{SUFFIX}:{https_port}/")
        ]
    );

    // The metrics listener (metrics_port in the file) counts what happened.
    let metrics = scrape(metrics_port).await?;
    assert!(
        metric(&metrics, "gate_relay_forwarded_total").is_some_and(|n| n >= 1),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "gate_relay_daemons_registered"),
        Some(1),
        "{metrics}"
    );

    // `gate-relay status` from another process: running, with the daemon and its claim.
    let daemon_id = daemon
        .node_name
        .strip_suffix(&format!(".{SUFFIX}"))
        .expect("node name")
        .to_owned();
    // (The snapshot is rewritten every 2 s; the forwarded connection may not be in it yet.)
    let json = status_json_until(&rt, &state, &config, 0, "the daemon listed", |v| {
        v["daemons"][0]["state"] == "registered"
            && v["counters"]["forwarded"].as_u64().is_some_and(|n| n >= 1)
    })
    .await?;
    assert_eq!(json["running"], true, "{json}");
    assert_eq!(json["pid"], relay.0.id(), "{json}");
    assert_eq!(json["runtime"], relay_runtime, "{json}");
    assert_eq!(json["node_id"], relay_id.as_str(), "{json}");
    assert_eq!(json["domain_suffix"], SUFFIX, "{json}");
    assert_eq!(
        json["listen"]["https"],
        format!("127.0.0.1:{https_port}"),
        "{json}"
    );
    assert_eq!(json["listen"]["public_https_port"], https_port, "{json}");
    assert_eq!(
        json["listen"]["metrics"],
        format!("127.0.0.1:{metrics_port}"),
        "{json}"
    );
    assert_eq!(
        json["listen"]["quic"],
        serde_json::json!([
            format!("127.0.0.1:{p2p_port}"),
            format!("127.0.0.1:{https_port}")
        ])
    );
    assert_eq!(json["daemons_total"], 1, "{json}");
    let listed = &json["daemons"][0];
    assert_eq!(listed["node_id"], daemon_id.as_str(), "{json}");
    assert_eq!(
        listed["names"],
        serde_json::json!([daemon.node_name, format!("kept.{SUFFIX}")])
    );
    assert!(
        listed["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{json}"
    );
    assert_eq!(json["claims"][0]["label"], "kept", "{json}");
    assert_eq!(json["claims"][0]["online"], true, "{json}");
    assert_eq!(
        json["connections"]["max_daemon_connections"], 10_000,
        "{json}"
    );
    assert!(
        json["counters"]["forwarded"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{json}"
    );
    assert_eq!(json["dns"]["enabled"], false, "{json}");
    let (code, text) = relay_status(&state, &config, false);
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        format!("running: pid {}, {relay_runtime} runtime", relay.0.id()),
        format!("node id: {relay_id}"),
        format!("{daemon_id}  registered  over quic from 127.0.0.1:"),
        format!("kept.{SUFFIX}  {daemon_id}  owner online"),
        format!("metrics: http://127.0.0.1:{metrics_port}/metrics"),
        "DNS (ACME records for daemons): off".to_owned(),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing:\n{text}");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("status.json"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A transfer in flight when the relay is killed ends (error or EOF), it does not hang.
    let (mut tls, _) = tls_to_daemon(&rt, https, &daemon).await?;
    tls.write_all(b"ECHO\n").await?;
    tls.write_all(&[7u8; 100_000]).await?;
    let mut echoed = vec![0u8; 100_000];
    tls.read_exact(&mut echoed).await?;
    let _ = relay.0.kill();
    let _ = relay.0.wait();
    let ended = gate_rt::timeout(&rt, Duration::from_secs(20), async {
        let mut buf = [0u8; 1024];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the client's connection hung after the relay was killed"
    );

    // Killed: `status` says so (exit code 3) and still shows the persisted claim.
    let (code, text) = relay_status(&state, &config, false);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("gate-relay is not running: pid"), "{text}");
    assert!(text.contains("did not stop cleanly"), "{text}");
    assert!(
        text.contains(&format!("kept.{SUFFIX}  {daemon_id}  owner last seen")),
        "{text}"
    );
    assert!(text.contains("a claim lapses after 7 days"), "{text}");
    let (code, json) = relay_status(&state, &config, true);
    assert_eq!(code, Some(3), "{json}");
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(json["running"], false, "{json}");
    assert_eq!(json["claims"][0]["label"], "kept", "{json}");
    let lapse = json["claims"][0]["lapses_at"].as_u64().unwrap_or(0)
        - json["claims"][0]["last_seen"].as_u64().unwrap_or(0);
    assert_eq!(lapse, 7 * 86_400, "{json}");

    // Back on the same ports: the daemon registers again by itself.
    let mut relay = spawn_relay(relay_runtime, &config, &state, &log);
    let again = wait_until(
        &rt,
        Duration::from_secs(30),
        "daemon registered again",
        || {
            let status = daemon.status();
            status.registrations >= 2
                && status.state == gate_relay::client::RelayConnectionState::Registered
        },
    )
    .await;
    if let Err(e) = again {
        return Err(format!(
            "{e}\nstatus: {:?}\nrelay log:\n{}",
            daemon.status(),
            std::fs::read_to_string(&log)?
        )
        .into());
    }
    assert_eq!(
        daemon.status().names,
        vec![daemon.node_name.clone(), format!("kept.{SUFFIX}")]
    );
    daemon_health(&rt, https, &daemon).await?;
    health_via_relay(&rt, https, &format!("kept.{SUFFIX}"), &daemon.certificate).await?;

    // SIGTERM: a clean exit, with the claims saved.
    let pid = relay.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(sent.success());
    let mut exit = None;
    wait_until(
        &rt,
        Duration::from_secs(20),
        "relay exits on SIGTERM",
        || {
            exit = relay.0.try_wait().ok().flatten();
            exit.is_some()
        },
    )
    .await?;
    assert!(exit.is_some_and(|s| s.success()), "exit status {exit:?}");
    let names = std::fs::read_to_string(state.join("names.json"))?;
    assert!(names.contains("\"kept\""), "{names}");
    // Stopped cleanly: the last snapshot says so; `status` exits with 3.
    let (code, text) = relay_status(&state, &config, false);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.starts_with("gate-relay is not running: it stopped cleanly at "),
        "{text}"
    );
    assert!(text.contains(&format!("kept.{SUFFIX}")), "{text}");
    daemon.client.shutdown().await;
    Ok(())
}

/// `RELAY_METRICS_PORT` in the environment turns the metrics listener on, and its counters
/// follow real traffic: an HTTPS client asking for a name nobody owns.
async fn metrics_from_the_environment<R: Runtime>(
    rt: R,
    relay_runtime: &str,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let config = dir.path().join("relay.toml");
    let log = dir.path().join("relay.log");
    let (_relay, ports) = start_relay(
        relay_runtime,
        (&config, &state, &log),
        |p| {
            format!(
                "https_port = {}\np2p_port = {}\nbind_address = \"127.0.0.1\"\n\
                 domain_suffix = \"{SUFFIX}\"\n",
                p.https, p.p2p
            )
        },
        |p| vec![("RELAY_METRICS_PORT", p.metrics.to_string())],
    );
    let Ports {
        https: https_port,
        metrics: metrics_port,
        ..
    } = ports;
    let up = wait_until(&rt, Duration::from_secs(20), "metrics listener up", || {
        std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok()
    })
    .await;
    if let Err(e) = up {
        return Err(format!("{e}\nrelay log:\n{}", std::fs::read_to_string(&log)?).into());
    }
    let before = scrape(metrics_port).await?;
    assert_eq!(
        metric(&before, "gate_relay_https_accepted_total"),
        Some(0),
        "{before}"
    );
    assert_eq!(
        metric(&before, "gate_relay_unknown_name_total"),
        Some(0),
        "{before}"
    );
    // The OpenMetrics exposition of prometheus-client: the TYPE line names the counter
    // without `_total`, the sample carries it.
    assert!(
        before.contains("# TYPE gate_relay_forwarded counter\n"),
        "{before}"
    );

    // A TLS client for an unknown name: accepted, then refused with unrecognized_name.
    let https = std::net::SocketAddr::from(([127, 0, 0, 1], https_port));
    let tcp = rt.connect_tcp(https).await?;
    let any_root = rcgen::generate_simple_self_signed(vec!["unused.test".to_owned()])?
        .cert
        .der()
        .clone();
    let refused = tls_connect(
        tcp,
        &format!("nobody.{SUFFIX}"),
        client_config(&any_root, Vec::new())?,
    )
    .await;
    assert!(refused.is_err(), "an unknown name was served");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(metrics_port).await?;
        if metric(&text, "gate_relay_https_accepted_total") == Some(1)
            && metric(&text, "gate_relay_unknown_name_total") == Some(1)
        {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("counters not updated; last scrape:\n{text}").into());
        }
        rt.sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A relay with the DNS provider configured: `status` shows it ready with its zone, and the API
/// token appears nowhere in the snapshot. Stopped with SIGSTOP, the relay is reported as not
/// responding (exit 1) once its snapshot is stale, and as running again after SIGCONT.
async fn dns_state_and_a_stuck_relay<R: Runtime>(
    rt: R,
    relay_runtime: &str,
) -> Result<(), BoxError> {
    const TOKEN: &str = "cf-token-that-must-not-leak-4711";
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let config = dir.path().join("relay.toml");
    let log = dir.path().join("relay.log");
    let (relay, _) = start_relay(
        relay_runtime,
        (&config, &state, &log),
        |p| {
            format!(
                "https_port = {}\np2p_port = {}\nbind_address = \"127.0.0.1\"\n\
                 domain_suffix = \"{SUFFIX}\"\n[dns]\nenabled = true\n[dns.cloudflare]\n\
                 zone_id = \"zone-42\"\napi_url = \"http://127.0.0.1:9/client/v4\"\n",
                p.https, p.p2p
            )
        },
        |_| vec![("RELAY__DNS__CLOUDFLARE__API_TOKEN", TOKEN.to_owned())],
    );
    let json = status_json_until(&rt, &state, &config, 0, "running", |v| v["running"] == true)
        .await
        .map_err(|e| {
            format!(
                "{e}\nrelay log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
    assert_eq!(json["dns"]["enabled"], true, "{json}");
    assert_eq!(json["dns"]["ready"], true, "{json}");
    assert_eq!(json["dns"]["zone_id"], "zone-42", "{json}");
    assert_eq!(
        json["dns"]["api_url"], "http://127.0.0.1:9/client/v4",
        "{json}"
    );
    let snapshot = std::fs::read_to_string(state.join("status.json"))?;
    assert!(
        !snapshot.contains(TOKEN),
        "the API token leaked into status.json"
    );
    let (code, text) = relay_status(&state, &config, false);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("DNS (ACME records for daemons): cloudflare ready, zone zone-42"),
        "{text}"
    );
    assert!(!text.contains(TOKEN));

    let pid = relay.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()?
        .success());
    let stuck = status_json_until(&rt, &state, &config, 1, "not responding", |v| {
        v["state"] == "not responding"
    })
    .await;
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()?
        .success());
    let stuck = stuck?;
    assert_eq!(stuck["running"], false, "{stuck}");
    assert_eq!(stuck["last_status"]["pid"], relay.0.id(), "{stuck}");
    status_json_until(&rt, &state, &config, 0, "running again", |v| {
        v["running"] == true
    })
    .await?;
    Ok(())
}

#[test]
fn dns_state_and_a_stuck_relay_on_smol() {
    smol_smol(|_, rt| dns_state_and_a_stuck_relay(rt, "smol"));
}

#[test]
fn dns_state_and_a_stuck_relay_on_tokio() {
    tokio_tokio(|_, rt| dns_state_and_a_stuck_relay(rt, "tokio"));
}

#[test]
fn metrics_port_from_the_environment_on_tokio() {
    tokio_tokio(|_, rt| metrics_from_the_environment(rt, "tokio"));
}

#[test]
fn metrics_port_from_the_environment_on_smol() {
    smol_smol(|_, rt| metrics_from_the_environment(rt, "smol"));
}

#[test]
fn killed_relay_on_tokio_comes_back() {
    tokio_tokio(|_, rt| killed_and_restarted(rt, "tokio"));
}

#[test]
fn killed_relay_on_smol_comes_back_daemon_on_smol() {
    smol_smol(|_, rt| killed_and_restarted(rt, "smol"));
}
