//! The HTTPS path: accepting TCP clients within the limits, reading the ClientHello (bounded in
//! time and bytes) for its server name, refusing with a TLS alert when the name cannot be
//! routed (`unrecognized_name` for names no online daemon owns), and forwarding the rest to the
//! owner's QUIC connection on a new stream that starts with the stream header.
//!
//! Must not: terminate TLS or look past the ClientHello.

use super::*;

/// How long the relay keeps reading (and discarding) after sending an alert, so the client
/// reads the alert instead of a connection reset.
pub(super) const LINGER_AFTER_ALERT: Duration = Duration::from_secs(1);

pub(super) async fn accept_https<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    listener: R::TcpListener,
    running: async_channel::Sender<()>,
) {
    loop {
        let (stream, peer) = match race(shared.shutdown.wait(), R::accept(&listener)).await {
            Either::Left(()) => break,
            Either::Right(Ok(accepted)) => accepted,
            Either::Right(Err(e)) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!("accepting an HTTPS connection failed: {e}");
                rt.sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.metrics.https_accepted.inc();
        let Some(slot) = shared.take_https_slot(peer.ip()) else {
            shared.metrics.over_limit.inc();
            tracing::debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        rt.spawn(serve_https(rt.clone(), shared.clone(), stream, peer, slot));
    }
    drop(running);
}

/// Why no server name could be read.
#[derive(Debug)]
pub(super) enum HelloError {
    Closed,
    Io(std::io::Error),
    Invalid(sni::SniError),
}

/// Reads until the ClientHello is complete; `buf` keeps every byte read (to replay).
/// `Ok(None)`: a valid ClientHello without a server name.
pub(super) async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, HelloError> {
    let mut chunk = [0u8; 2048];
    loop {
        let room = sni::MAX_CLIENT_HELLO_BYTES.saturating_sub(buf.len());
        if room == 0 {
            return Err(HelloError::Invalid(sni::SniError::TooLarge));
        }
        let want = room.min(chunk.len());
        let read = stream
            .read(chunk.get_mut(..want).unwrap_or_default())
            .await
            .map_err(HelloError::Io)?;
        if read == 0 {
            return Err(HelloError::Closed);
        }
        buf.extend_from_slice(chunk.get(..read).unwrap_or_default());
        match sni::parse(buf) {
            Ok(Status::NeedMore) => continue,
            Ok(Status::Found(hello)) => {
                return Ok(hello.server_name().map(|name| name.as_str().to_owned()))
            }
            Ok(Status::NoSni(_)) => return Ok(None),
            Err(e) => return Err(HelloError::Invalid(e)),
        }
    }
}

/// Sends a fatal alert, closes the write side, and reads (bounded in time and bytes) until
/// the client closes, so the alert is not lost to a reset.
/// Why a stream to the daemon could not be started.
pub(super) enum Unopened {
    /// Its connection is closed (the error): the daemon is gone, and so are its names.
    Gone(String),
    /// Not opened in time: the daemon takes no more streams.
    Busy,
    /// Opened, but the stream header could not be written: the daemon is gone.
    Unwritable,
}

/// A forwarded connection whose stream to the daemon could not be started ([`Unopened`]):
/// counted, logged, the daemon's session forgotten when it is gone, and the client refused
/// with a TLS alert (`unrecognized_name` for a daemon that is gone, `internal_error` for one
/// that is busy). The same on both transports.
pub(super) async fn refuse_unopened<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    shared: &Shared,
    stream: &mut S,
    peer: SocketAddr,
    server_name: &str,
    route: &Route,
    why: Unopened,
) {
    shared.metrics.daemon_unreachable.inc();
    let alert = match why {
        Unopened::Gone(e) => {
            tracing::debug!(%peer, name = %server_name, "opening a stream to the daemon failed: {e}");
            shared.forget_session(route.session, "a stream could not be opened");
            sni::unrecognized_name_alert()
        }
        Unopened::Busy => {
            tracing::debug!(%peer, name = %server_name, "the daemon takes no more streams");
            sni::internal_error_alert()
        }
        Unopened::Unwritable => {
            tracing::debug!(%peer, name = %server_name, "writing the stream header to the daemon failed");
            shared.forget_session(route.session, "a stream could not be written");
            sni::unrecognized_name_alert()
        }
    };
    refuse(rt, stream, alert).await;
}

/// A forwarded stream's first bytes: the route's stream header, then the client's
/// ClientHello (`None` only if the header does not encode, which a server name of at most
/// 253 bytes never makes happen).
pub(super) fn stream_head(route: &Route, hello: Vec<u8>) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(route.header.encoded_len() + hello.len());
    route.header.encode(&mut head).ok()?;
    head.extend_from_slice(&hello);
    Some(head)
}

pub(super) async fn refuse<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    rt: &R,
    stream: &mut S,
    alert: &[u8],
) {
    if stream.write_all(alert).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let _ = gate_rt::timeout(rt, LINGER_AFTER_ALERT, async {
        let mut sink = [0u8; 1024];
        let mut total = 0usize;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

pub(super) async fn serve_https<R: Runtime>(
    rt: R,
    shared: Arc<Shared>,
    mut stream: R::TcpStream,
    peer: SocketAddr,
    slot: HttpsSlot,
) {
    let metrics = &shared.metrics;
    let mut hello = Vec::with_capacity(2048);
    let deadline = shared.settings.limits.handshake_timeout();
    let read = gate_rt::timeout(&rt, deadline, read_client_hello(&mut stream, &mut hello)).await;
    if matches!(read, Ok(Ok(_))) && is_tunnel_hello(&hello) {
        // A daemon's tunnel over TCP (UDP blocked on its side): the `tcp` module serves it.
        let handoff: TunnelHandoff = (Box::new(stream), hello, peer, slot);
        let _ = shared.tcp_daemons.send(handoff).await;
        return;
    }
    let server_name = match read {
        Ok(Ok(Some(name))) => name,
        Ok(Ok(None)) => {
            metrics.no_sni.inc();
            tracing::debug!(%peer, "ClientHello without a server name");
            refuse(&rt, &mut stream, sni::unrecognized_name_alert()).await;
            return;
        }
        Ok(Err(HelloError::Invalid(e))) => {
            metrics.invalid_hello.inc();
            tracing::debug!(%peer, "not a TLS ClientHello: {e}");
            return;
        }
        Ok(Err(HelloError::Closed)) => return,
        Ok(Err(HelloError::Io(e))) => {
            tracing::debug!(%peer, "reading the ClientHello failed: {e}");
            return;
        }
        Err(gate_rt::Elapsed) => {
            metrics.handshake_timeouts.inc();
            tracing::debug!(%peer, bytes = hello.len(), "no complete ClientHello in time");
            return;
        }
    };
    let route = match shared.route(&server_name, peer) {
        Ok(route) => route,
        Err(RouteError::Unknown) => {
            metrics.unknown_name.inc();
            tracing::debug!(%peer, name = %server_name, "no online daemon owns this name");
            refuse(&rt, &mut stream, sni::unrecognized_name_alert()).await;
            return;
        }
        Err(RouteError::NodeFull) => {
            metrics.over_limit.inc();
            tracing::debug!(%peer, name = %server_name, "daemon at its connection limit");
            refuse(&rt, &mut stream, sni::internal_error_alert()).await;
            return;
        }
        Err(RouteError::Quota(why)) => {
            metrics.over_limit.inc();
            tracing::info!(%peer, name = %server_name, "connection refused: {why}");
            refuse(&rt, &mut stream, sni::internal_error_alert()).await;
            return;
        }
    };
    let connection = match &route.connection {
        DaemonLink::Quic(connection) => connection.clone(),
        DaemonLink::Tcp(opener) => {
            let opener = opener.clone();
            forward_over_tcp(
                rt,
                shared,
                stream,
                peer,
                server_name,
                hello,
                route,
                slot,
                opener,
            )
            .await;
            return;
        }
    };
    let opened = gate_rt::timeout(&rt, deadline, connection.open_bi()).await;
    let (mut send, recv) = match opened {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            let why = Unopened::Gone(e.to_string());
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
    if send.write_chunk(bytes::Bytes::from(head)).await.is_err() {
        let why = Unopened::Unwritable;
        return refuse_unopened(&rt, &shared, &mut stream, peer, &server_name, &route, why).await;
    }
    let mut recv = recv;
    // Until the daemon's first bytes (its ServerHello or alert) arrive, the client has been
    // sent nothing, so a daemon that turns out to be gone (killed: its tunnel dies of the
    // QUIC idle timeout, a few seconds) or that refuses the stream can still be answered
    // with a TLS alert instead of a hang and an EOF.
    let answer = gate_rt::timeout(
        &rt,
        deadline,
        race(connection.closed(), recv.read_chunk(usize::MAX, true)),
    )
    .await;
    let first = match answer {
        Ok(Either::Right(Ok(Some(chunk)))) => chunk.bytes,
        Ok(Either::Left(_)) | Ok(Either::Right(Err(quinn::ReadError::ConnectionLost(_)))) => {
            metrics.daemon_unreachable.inc();
            tracing::debug!(%peer, name = %server_name, "the daemon's connection closed before it answered");
            shared.forget_session(route.session, "the connection closed");
            refuse(&rt, &mut stream, sni::unrecognized_name_alert()).await;
            return;
        }
        Ok(Either::Right(Ok(None))) | Ok(Either::Right(Err(_))) => {
            // Refused by the daemon (at its connection cap, stopping): the stream was reset
            // or finished empty.
            metrics.daemon_unreachable.inc();
            tracing::debug!(%peer, name = %server_name, "the daemon refused the connection");
            let _ = send.reset(0u32.into());
            refuse(&rt, &mut stream, sni::internal_error_alert()).await;
            return;
        }
        Err(gate_rt::Elapsed) => {
            metrics.daemon_unreachable.inc();
            tracing::debug!(%peer, name = %server_name, "the daemon did not answer the ClientHello in time");
            let _ = send.reset(0u32.into());
            let _ = recv.stop(0u32.into());
            refuse(&rt, &mut stream, sni::internal_error_alert()).await;
            return;
        }
    };
    metrics.forwarded.inc();
    tracing::debug!(%peer, name = %server_name, "forwarding");
    // The forwarding is a task of its own and this one ends: an open forwarded connection
    // then holds only the forwarding state, not this task's (ClientHello reading, refusals).
    let Route {
        _slot: node_slot, ..
    } = route;
    let forwarding = Forwarding {
        shared: shared.clone(),
        peer,
        server_name,
        _slots: (slot, node_slot),
    };
    rt.spawn(forwarding.run(stream, send, recv, first));
}

/// What one forwarded connection keeps while it is open.
pub(super) struct Forwarding {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    pub(super) server_name: String,
    /// Its places in the limits, released when the connection ends.
    pub(super) _slots: (HttpsSlot, NodeSlot),
}

impl Forwarding {
    pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut stream: S,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        first: bytes::Bytes,
    ) {
        let metrics = &self.shared.metrics;
        let (copied, outcome) =
            crate::forward::forward(&mut stream, &mut send, &mut recv, first).await;
        metrics.bytes_to_daemons.inc_by(copied.to_daemon);
        metrics.bytes_to_clients.inc_by(copied.to_client);
        self._slots.1.bytes = copied.to_daemon.saturating_add(copied.to_client);
        match outcome {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(peer = %self.peer, name = %self.server_name, "forwarded connection ended: {e}");
                let _ = send.reset(0u32.into());
                let _ = recv.stop(0u32.into());
            }
        }
    }
}
