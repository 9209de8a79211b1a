//! The tunnel over TCP (issue 13, UDP blocked), with an in-process relay and daemon on tokio
//! and on smol:
//! - `relay.transport = "tcp"`: the daemon registers over TLS/TCP on the relay's HTTPS port
//!   and HTTPS clients reach it through that tunnel;
//! - `auto` with UDP to the relay dropped (a [`UdpGate`] in front of its QUIC port): the daemon
//!   falls back to TCP within 10 s; once UDP passes again it moves back to QUIC, and a
//!   connection opened over the TCP tunnel before keeps working;
//! - `quic` with UDP dropped never registers (the fallback is what makes the difference).
//!
//! The 1 GiB transfers over the TCP tunnel are in `relay_big.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use gate_relay::client::{RelayConnectionState, Transport, TransportPolicy};
use gate_relay::server::RunningRelay;
use gate_rt::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the daemon may take to register over the fallback (the bound).
const FALLBACK_DEADLINE: Duration = Duration::from_secs(10);

/// A relay on `relay_rt` whose QUIC port is reached only through a [`UdpGate`] that drops
/// everything (until it is opened), and a daemon on `rt` dialling it through the gate with
/// `transport` (TCP to the relay's HTTPS port).
async fn behind_blocked_udp<RR: Runtime, DR: Runtime>(
    relay_rt: &RR,
    rt: &DR,
    transport: TransportPolicy,
) -> Result<(tempfile::TempDir, RunningRelay<RR>, UdpGate, TestDaemon), BoxError> {
    let (dir, relay) = start_test_relay(relay_rt, test_settings()).await?;
    let gate = UdpGate::start(relay.quic_addrs()[0], true)?;
    let address = format!("{}@{}", relay.node_id(), gate.addr).parse()?;
    let daemon = start_daemon_via(rt, address, transport, relay.https_addr().port())?;
    Ok((dir, relay, gate, daemon))
}

async fn tcp_only<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    // The QUIC address is a gate that drops everything: only TCP can work.
    let (_dir, relay, _gate, daemon) =
        behind_blocked_udp(&relay_rt, &rt, TransportPolicy::Tcp).await?;
    wait_until(&rt, FALLBACK_DEADLINE, "registered over TCP", || {
        daemon.is_registered()
    })
    .await?;
    assert_eq!(daemon.status().transport, Some(Transport::Tcp));
    daemon_health(&rt, relay.https_addr(), &daemon).await?;
    assert!(relay.stats().forwarded >= 1, "forwarded through the relay");
    daemon.client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

#[test]
fn tcp_transport_registers_and_forwards_tokio() {
    tokio_tokio(tcp_only);
}

#[test]
fn tcp_transport_registers_and_forwards_smol() {
    smol_smol(tcp_only);
}

/// Sends `payload` on an `ECHO` connection and reads it back.
async fn echo_round<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    payload: &[u8],
) -> Result<(), BoxError> {
    tls.write_all(payload).await?;
    tls.flush().await?;
    let mut back = vec![0u8; payload.len()];
    tls.read_exact(&mut back).await?;
    if back != payload {
        return Err("the echo differs from what was sent".into());
    }
    Ok(())
}

async fn fallback_and_back<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    let started = Instant::now();
    let (_dir, relay, gate, daemon) =
        behind_blocked_udp(&relay_rt, &rt, TransportPolicy::Auto).await?;
    wait_until(
        &rt,
        FALLBACK_DEADLINE,
        "registered over the TCP fallback",
        || daemon.is_registered() && daemon.status().transport == Some(Transport::Tcp),
    )
    .await?;
    eprintln!("registered over TCP after {:.2?}", started.elapsed());
    daemon_health(&rt, relay.https_addr(), &daemon)
        .await
        .map_err(|e| format!("GET /health over the TCP tunnel: {e}"))?;

    // A long connection through the TCP tunnel, open across the move.
    let (mut long, _) = tls_to_daemon(&rt, relay.https_addr(), &daemon).await?;
    long.write_all(b"ECHO\n").await?;
    echo_round(&mut long, b"before the move")
        .await
        .map_err(|e| format!("echo before the move: {e}"))?;

    gate.set_blocked(false);
    wait_until(&rt, Duration::from_secs(30), "moved back to QUIC", || {
        daemon.is_registered() && daemon.status().transport == Some(Transport::Quic)
    })
    .await?;
    assert!(
        daemon.status().registrations >= 2,
        "registered again over QUIC"
    );
    daemon_health(&rt, relay.https_addr(), &daemon)
        .await
        .map_err(|e| format!("GET /health after the move back to QUIC: {e}"))?;
    // The connection opened over TCP is intact after the move.
    echo_round(&mut long, &vec![0x5a; 256 * 1024])
        .await
        .map_err(|e| format!("echo after the move on the connection opened over TCP: {e}"))?;
    long.shutdown()
        .await
        .map_err(|e| format!("closing the connection opened over TCP: {e}"))?;
    let mut rest = Vec::new();
    long.read_to_end(&mut rest)
        .await
        .map_err(|e| format!("reading the end of the connection opened over TCP: {e}"))?;
    assert!(rest.is_empty(), "nothing after the echo");

    daemon.client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

#[test]
fn auto_falls_back_to_tcp_and_moves_back_tokio() {
    tokio_tokio(fallback_and_back);
}

#[test]
fn auto_falls_back_to_tcp_and_moves_back_smol() {
    smol_smol(fallback_and_back);
}

async fn quic_only_blocked<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    let (_dir, relay, _gate, daemon) =
        behind_blocked_udp(&relay_rt, &rt, TransportPolicy::Quic).await?;
    // Past the QUIC fallback delay plus the TCP handshake: auto would have registered.
    let waited = wait_until(&rt, Duration::from_secs(6), "registered", || {
        daemon.is_registered()
    })
    .await;
    assert!(waited.is_err(), "registered with UDP blocked and quic only");
    assert_ne!(daemon.status().state, RelayConnectionState::Registered);
    daemon.client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

#[test]
fn quic_only_does_not_fall_back_tokio() {
    tokio_tokio(quic_only_blocked);
}

#[test]
fn quic_only_does_not_fall_back_smol() {
    smol_smol(quic_only_blocked);
}
