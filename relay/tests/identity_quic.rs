//! Node identities over a real QUIC handshake on loopback: both sides learn the other's node
//! id from its certificate, a wrong pin is refused, and a client without a node certificate
//! never gets a working connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::BoxError;
use gate_core::tunnel::NodeId;
use gate_relay::identity::{peer_node_id, Identity, RelayTrust};
use gate_rt::Runtime;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A relay-style endpoint that reports the node id of every client it accepts.
fn server<R: Runtime>(
    rt: &R,
    identity: &Identity,
) -> Result<(SocketAddr, async_channel::Receiver<Option<NodeId>>), BoxError> {
    let endpoint = identity.quic_endpoint(rt, loopback(), Some(identity.relay_server_config()?))?;
    let addr = endpoint.local_addr()?;
    let (seen_tx, seen_rx) = async_channel::unbounded();
    let task_rt = rt.clone();
    rt.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let seen_tx = seen_tx.clone();
            task_rt.spawn(async move {
                let conn = match incoming.accept() {
                    Ok(connecting) => connecting.await.ok(),
                    Err(_) => None,
                };
                let _ = seen_tx.send(conn.as_ref().and_then(peer_node_id)).await;
                if let Some(conn) = conn {
                    // Keep the connection until the client closes it.
                    let _ = conn.closed().await;
                }
            });
        }
    });
    Ok((addr, seen_rx))
}

async fn scenario<R: Runtime>(rt: R) -> Result<(), BoxError> {
    let relay = Identity::generate()?;
    let daemon = Identity::generate()?;
    let (addr, seen) = server(&rt, &relay)?;
    let client = daemon.quic_endpoint(&rt, loopback(), None)?;

    // Pinned to the right id: both sides see each other's node id.
    let config = daemon.relay_client_config(&RelayTrust::Pinned(relay.node_id().clone()))?;
    let conn = client.connect_with(config, addr, "127.0.0.1")?.await?;
    assert_eq!(peer_node_id(&conn).as_ref(), Some(relay.node_id()));
    let seen_by_relay = gate_rt::timeout(&rt, Duration::from_secs(10), seen.recv()).await??;
    assert_eq!(seen_by_relay.as_ref(), Some(daemon.node_id()));
    conn.close(0u32.into(), b"done");

    // Pinned to another id: refused, with the reason.
    let other = Identity::generate()?;
    let config = daemon.relay_client_config(&RelayTrust::Pinned(other.node_id().clone()))?;
    let refused = client.connect_with(config, addr, "127.0.0.1")?.await;
    let error = refused.err().ok_or("a wrong pin was accepted")?;
    let message = error.to_string();
    assert!(
        message.contains(other.node_id().as_str()) && message.contains(relay.node_id().as_str()),
        "the error names neither id: {message}"
    );

    // Not pinned: the relay's self-signed certificate is not trusted by WebPKI roots.
    let config = daemon.relay_client_config(&RelayTrust::WebPki {
        extra_ca: Vec::new(),
    })?;
    assert!(client
        .connect_with(config, addr, "127.0.0.1")?
        .await
        .is_err());

    // A client without a certificate: the relay closes the connection.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(gate_relay::identity::NodeCertVerifier::new(
            &provider,
            Some(relay.node_id().clone()),
        )))
        .with_no_client_auth();
    tls.alpn_protocols = vec![gate_rt::quic::TUNNEL_ALPN.to_vec()];
    let config = gate_rt::quic::client_config(tls)?;
    let anonymous = async {
        let conn = client.connect_with(config, addr, "127.0.0.1")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"hello").await?;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await?;
        Ok::<_, BoxError>(())
    };
    let outcome = gate_rt::timeout(&rt, Duration::from_secs(10), anonymous).await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "a client without a certificate got a working connection"
    );
    Ok(())
}

#[test]
fn node_identities_over_quic_on_tokio() {
    let result = gate_runtime_tokio::block_on(scenario).expect("tokio");
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn node_identities_over_quic_on_smol() {
    let result = gate_runtime_smol::block_on(scenario).expect("smol");
    if let Err(e) = result {
        panic!("{e}");
    }
}
