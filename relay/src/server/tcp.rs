//! The daemon path over TCP, for daemons whose network drops UDP: a connection on the HTTPS
//! port whose ClientHello offers the ALPN `gate-relay-tcp/1` is not routed by name but
//! terminated here with rustls (the relay's tunnel certificate, the daemon's node certificate
//! required and checked by the same verifier as on QUIC), then runs the HTTP/2 side of
//! `gate_rt::tunnel::tcp` and the same [`RelaySession`] driver as a QUIC daemon connection.
//! Also forwards an HTTPS client's connection over such a tunnel.
//!
//! Must not: look at other ALPNs (those stay on the `https` path, unterminated) or make
//! protocol decisions.

use super::*;
use gate_rt::tunnel::tcp::{self, H2Stream, Replay};

/// Whether the ClientHello in `hello` (complete, as read by the HTTPS path) asks for a daemon
/// tunnel over TCP.
pub(super) fn is_tunnel_hello(hello: &[u8]) -> bool {
    match sni::parse(hello) {
        Ok(Status::Found(info)) | Ok(Status::NoSni(info)) => {
            info.alpn().contains(tcp::TCP_TUNNEL_ALPN)
        }
        _ => false,
    }
}

/// A TCP connection the HTTPS path recognised as a daemon tunnel: the stream, the bytes read
/// from it (the ClientHello), the peer, and its place in the HTTPS limits.
pub(super) type TunnelHandoff = (Box<dyn gate_rt::ByteStream>, Vec<u8>, SocketAddr, HttpsSlot);

/// Serves the daemon tunnels the HTTPS path hands over, each in a task of its own, until
/// shutdown.
pub(super) async fn accept_tcp_daemons<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    dns: AcmeRecords<R>,
    handoffs: async_channel::Receiver<TunnelHandoff>,
    running: async_channel::Sender<()>,
) {
    loop {
        let (stream, hello, peer, slot) = match race(shared.shutdown.wait(), handoffs.recv()).await
        {
            Either::Left(()) | Either::Right(Err(_)) => break,
            Either::Right(Ok(handoff)) => handoff,
        };
        rt.spawn(serve_tcp_daemon(
            rt.clone(),
            shared.clone(),
            dns.clone(),
            stream,
            hello,
            peer,
            slot,
            running.clone(),
        ));
    }
    drop(running);
}

/// Serves one daemon tunnel over TCP: `hello` are the bytes already read from `stream`.
#[allow(clippy::too_many_arguments)]
async fn serve_tcp_daemon<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    dns: AcmeRecords<R>,
    stream: Box<dyn gate_rt::ByteStream>,
    hello: Vec<u8>,
    peer: SocketAddr,
    https_slot: HttpsSlot,
    _running: async_channel::Sender<()>,
) {
    // A daemon connection counts against the daemon limit, not the HTTPS one.
    drop(https_slot);
    let Some(refusal) = super::daemon::registration_throttle(&shared, peer) else {
        return;
    };
    let Some(_slot) = shared.take_daemon_slot() else {
        tracing::warn!("daemon connection limit reached; refusing the TCP tunnel from {peer}");
        return;
    };
    let deadline = shared.settings.limits.handshake_timeout();
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tcp_tls.clone());
    let tls =
        match gate_rt::timeout(&rt, deadline, acceptor.accept(Replay::new(hello, stream))).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "daemon TLS handshake over TCP failed: {e}");
                return;
            }
            Err(gate_rt::Elapsed) => {
                tracing::debug!(%peer, "daemon TLS handshake over TCP timed out");
                return;
            }
        };
    let node_id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| gate_rt::tunnel::identity::node_id_from_certificate(cert).ok());
    let Some(node_id) = node_id else {
        tracing::debug!(%peer, "TCP tunnel without a node certificate; closed");
        return;
    };
    let (control, opener) =
        match gate_rt::timeout(&rt, deadline, tcp::relay_handshake(&rt, tls)).await {
            Ok(Ok(handshake)) => handshake,
            Ok(Err(e)) => {
                tracing::debug!(%peer, node = %node_id, "HTTP/2 over the TCP tunnel failed: {e}");
                return;
            }
            Err(gate_rt::Elapsed) => {
                tracing::debug!(%peer, node = %node_id, "HTTP/2 over the TCP tunnel timed out");
                return;
            }
        };
    tracing::debug!(%peer, node = %node_id, "daemon connected over TCP");
    let id = shared.add_session(node_id.clone(), DaemonLink::Tcp(opener.clone()), peer);
    if let Some(reason) = refusal {
        shared.with_session(id, |session, _| session.refuse_registration(reason));
    }
    let owner = node_id.to_string();
    let outcome = drive_daemon(
        &rt,
        &shared,
        &dns,
        &owner,
        id,
        None,
        Some(ControlStream::tcp(control)),
    )
    .await;
    if shared.remove_session(id) && dns.enabled() {
        // The daemon's TXT records go with its last connection.
        rt.spawn(async move { dns.owner_disconnected(&owner).await });
    }
    match outcome {
        DaemonOutcome::Shutdown => opener.close(),
        DaemonOutcome::Closed(reason) => {
            // The connection ends once the forwarded streams still open on it have (the h2
            // client closes when its last handle is gone): a daemon moving to QUIC keeps them.
            tracing::info!(%peer, node = %node_id, "daemon tunnel over TCP closed: {reason}");
        }
    }
}

/// Forwards an HTTPS client's connection to a daemon over its TCP tunnel: opens a stream,
/// sends the stream header and the ClientHello, then copies both ways with half-closes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward_over_tcp<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    mut stream: R::TcpStream,
    peer: SocketAddr,
    server_name: String,
    hello: Vec<u8>,
    route: Route,
    slot: HttpsSlot,
    opener: tcp::TcpOpener,
) {
    let metrics = &shared.metrics;
    let deadline = shared.settings.limits.handshake_timeout();
    let opened = gate_rt::timeout(&rt, deadline, opener.open()).await;
    let mut tunnel: H2Stream = match opened {
        Ok(Ok(tunnel)) => tunnel,
        Ok(Err(e)) => {
            let why = Unopened::Gone(format!("over the TCP tunnel: {e}"));
            return refuse_unopened(&rt, &shared, &mut stream, peer, &server_name, &route, why)
                .await;
        }
        Err(gate_rt::Elapsed) => {
            let why = Unopened::Busy;
            return refuse_unopened(&rt, &shared, &mut stream, peer, &server_name, &route, why)
                .await;
        }
    };
    let Some(head) = stream_head(&route, hello) else {
        return;
    };
    if tunnel.write_all(&head).await.is_err() {
        let why = Unopened::Unwritable;
        return refuse_unopened(&rt, &shared, &mut stream, peer, &server_name, &route, why).await;
    }
    metrics.forwarded.inc();
    tracing::debug!(%peer, name = %server_name, "forwarding over TCP");
    let Route {
        _slot: node_slot, ..
    } = route;
    let shared = shared.clone();
    rt.spawn(async move {
        let mut slots = (slot, node_slot);
        match tokio::io::copy_bidirectional(&mut stream, &mut tunnel).await {
            Ok((to_daemon, to_client)) => {
                shared.metrics.bytes_to_daemons.inc_by(to_daemon);
                shared.metrics.bytes_to_clients.inc_by(to_client);
                slots.1.bytes = to_daemon.saturating_add(to_client);
            }
            Err(e) => {
                tracing::debug!(%peer, name = %server_name, "forwarded connection ended: {e}");
                tunnel.reset();
            }
        }
    });
}
