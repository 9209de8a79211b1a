//! The real `gate-relay` binary on loopback: `id`, `serve --config --state-dir --runtime`, and a
//! relay killed with SIGKILL in the middle of a transfer and started again: the daemon's
//! client notices, registers again, and new connections work.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use gate_relay::identity::Identity;
use gate_rt::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BINARY: &str = env!("CARGO_BIN_EXE_gate-relay");

/// A child process killed (SIGKILL) when dropped.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two free ports: one free for TCP and UDP (https_port), one free for UDP (p2p_port).
fn free_ports() -> (u16, u16) {
    loop {
        let Ok(tcp) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(https) = tcp.local_addr().map(|a| a.port()) else {
            continue;
        };
        let Ok(udp) = UdpSocket::bind(("127.0.0.1", https)) else {
            continue;
        };
        let Ok(p2p) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(p2p_port) = p2p.local_addr().map(|a| a.port()) else {
            continue;
        };
        drop((tcp, udp, p2p));
        return (https, p2p_port);
    }
}

fn spawn_relay(runtime: &str, config: &Path, state_dir: &Path, log: &Path) -> Relay {
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
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start gate-relay");
    Relay(child)
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

async fn killed_and_restarted<R: Runtime>(rt: R, relay_runtime: &str) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let (https_port, p2p_port) = free_ports();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "https_port = {https_port}\np2p_port = {p2p_port}\nbind_address = \"127.0.0.1\"\n\
             domain_suffix = \"{SUFFIX}\"\nlog_level = \"debug\"\n"
        ),
    )?;
    let log = dir.path().join("relay.log");
    let relay_id = Identity::load_or_create(&state)?.node_id().clone();
    let mut relay = spawn_relay(relay_runtime, &config, &state, &log);
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
    health_via_relay(&rt, https, &daemon.node_name, &daemon.certificate).await?;

    // A transfer in flight when the relay is killed ends (error or EOF), it does not hang.
    let tcp = rt.connect_tcp(https).await?;
    let (mut tls, _) = tls_connect(
        tcp,
        &daemon.node_name,
        client_config(&daemon.certificate, Vec::new())?,
    )
    .await?;
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
    health_via_relay(&rt, https, &daemon.node_name, &daemon.certificate).await?;
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
    daemon.client.shutdown().await;
    Ok(())
}

#[test]
fn killed_relay_on_tokio_comes_back() {
    tokio_tokio(|_, rt| killed_and_restarted(rt, "tokio"));
}

#[test]
fn killed_relay_on_smol_comes_back_daemon_on_smol() {
    smol_smol(|_, rt| killed_and_restarted(rt, "smol"));
}
