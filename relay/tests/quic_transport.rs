//! The tunnel's QUIC transport settings (`gate_rt::quic`) over a real loopback connection
//! between a relay-side and a daemon-side endpoint: path MTU discovery grows the packets up to
//! `MAX_UDP_PAYLOAD` (loopback carries 65,536 bytes), and a bulk transfer keeps them there.
//!
//! The second part guards the send path: quinn sends up to 10 packets in one segmentation-
//! offload send, more than one UDP datagram holds at this packet size, and
//! `gate_rt::quic::SplitSocket` cuts such sends. Were a batch refused instead (`EMSGSIZE`,
//! dropped silently by quinn-udp), the losses would trip black-hole detection and the path
//! would fall back to 1,200 bytes (ARCHITECTURE.md, "QUIC transport settings"); this test
//! then fails instead of quietly costing throughput.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::BoxError;
use gate_relay::identity::{Identity, RelayTrust};
use gate_rt::quic::MAX_UDP_PAYLOAD;
use gate_rt::Runtime;

const MIB: usize = 1024 * 1024;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn large_packets_survive_bulk<R: Runtime>(rt: R) -> Result<(), BoxError> {
    let relay_id = Identity::generate()?;
    let daemon_id = Identity::generate()?;
    let relay = relay_id.quic_endpoint(&rt, loopback(), Some(relay_id.relay_server_config()?))?;
    let daemon = daemon_id.quic_endpoint(&rt, loopback(), None)?;
    let relay_addr = relay.local_addr()?;
    let (done_tx, done_rx) = async_channel::bounded::<Result<usize, String>>(1);
    let task_rt = rt.clone();
    rt.spawn(async move {
        let received = async {
            let incoming = relay.accept().await.ok_or("no connection")?;
            let connection = incoming.await.map_err(|e| e.to_string())?;
            let (_send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
            let mut total = 0usize;
            while let Some(chunk) = recv
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| e.to_string())?
            {
                total += chunk.bytes.len();
            }
            Ok::<usize, String>(total)
        }
        .await;
        let _ = done_tx.send(received).await;
        // Keep the endpoint until the test has read the statistics.
        task_rt.sleep(Duration::from_secs(5)).await;
    });
    let config = daemon_id.relay_client_config(&RelayTrust::Pinned(relay_id.node_id().clone()))?;
    let connection = daemon.connect_with(config, relay_addr, "relay")?.await?;

    // Discovery runs while the connection is idle, right after the handshake.
    let deadline = Instant::now() + Duration::from_secs(10);
    while connection.stats().path.current_mtu < MAX_UDP_PAYLOAD - 20 {
        assert!(
            Instant::now() < deadline,
            "path MTU discovery stopped at {} bytes (bound {MAX_UDP_PAYLOAD})",
            connection.stats().path.current_mtu
        );
        rt.sleep(Duration::from_millis(20)).await;
    }

    let total = 64 * MIB;
    let block = bytes::Bytes::from(vec![0x5a; MIB]);
    let (mut send, _recv) = connection.open_bi().await?;
    for _ in 0..total / MIB {
        send.write_chunk(block.clone()).await?;
    }
    send.finish()?;
    let received = done_rx.recv().await?.map_err(|e| e.to_string())?;
    assert_eq!(received, total);
    let stats = connection.stats();
    assert!(
        stats.path.current_mtu >= MAX_UDP_PAYLOAD - 20,
        "after the transfer the path is at {} bytes: batched sends of large packets failed \
         (black-hole detection fell back); stats: {stats:?}",
        stats.path.current_mtu
    );
    assert!(
        stats.path.black_holes_detected == 0,
        "black hole detected during the transfer: {stats:?}"
    );
    // Far fewer datagrams than the 1,200-1,452-byte packets would need.
    let small_packets = total / 1452;
    assert!(
        (stats.udp_tx.datagrams as usize) < small_packets / 3,
        "{} datagrams for {total} bytes",
        stats.udp_tx.datagrams
    );
    connection.close(0u32.into(), b"done");
    Ok(())
}

#[test]
fn large_packets_survive_bulk_tokio() {
    common::tokio_tokio(|rt, _| large_packets_survive_bulk(rt));
}

#[test]
fn large_packets_survive_bulk_smol() {
    common::smol_smol(|rt, _| large_packets_survive_bulk(rt));
}
