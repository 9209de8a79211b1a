//! The tunnel over TCP, for networks that drop UDP: TLS 1.3 on the relay's HTTPS port with the
//! ALPN [`TCP_TUNNEL_ALPN`] and the same node certificates, verifiers and pinning as QUIC, then
//! HTTP/2 (the `h2` crate) as the stream multiplexer.
//!
//! Roles: the daemon dials and is the HTTP/2 *server*; the relay is the HTTP/2 *client*, so the
//! side that opens streams (the relay: the control stream first, then one per forwarded HTTPS
//! connection) is the one that sends requests. A stream is a `POST` whose request body carries
//! relay -> daemon bytes and whose response body carries daemon -> relay bytes; each is one
//! [`H2Stream`] byte stream (ends of stream are half-closes, a dropped stream is a reset).
//! The first stream of a connection is the control stream ([`CONTROL_PATH`]); every later one
//! is a forwarded connection ([`STREAM_PATH`]) that starts with its stream header, exactly as
//! on QUIC.
//!
//! Owns: the ALPN, the byte-stream adapter over an h2 stream, the daemon's dial (TCP, TLS,
//! HTTP/2 handshake, control stream) and the relay's side after its TLS accept (HTTP/2
//! handshake, control stream, an opener of new streams), the connection tasks, and a replaying
//! stream wrapper for the bytes the relay read before it knew the ALPN.
//!
//! Must not: make protocol decisions (frames are the driver's, `gate_core::tunnel`'s) or use
//! runtime-specific APIs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::support::{race, Either, Shutdown};
use crate::Runtime;

/// The ALPN of a daemon tunnel over TLS/TCP on the relay's HTTPS port.
pub const TCP_TUNNEL_ALPN: &[u8] = b"gate-relay-tcp/1";

/// The path of the first stream of a TCP tunnel: the control stream.
pub const CONTROL_PATH: &str = "/control";

/// The path of every later stream: one forwarded connection.
pub const STREAM_PATH: &str = "/stream";

/// HTTP/2 flow-control window of one stream (bytes in flight per direction).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// HTTP/2 flow-control window of the whole connection.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Largest DATA frame the adapter asks capacity for at once.
const MAX_WRITE: usize = 256 * 1024;

/// Concurrent streams the daemon accepts on one TCP tunnel (as on QUIC).
const MAX_STREAMS: u32 = 16_384;

fn h2_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        return error
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    io::Error::other(format!("tunnel stream over TCP: {error}"))
}

/// The receiving half's state: the relay waits for the daemon's response headers first.
enum Recv {
    Waiting(h2::client::ResponseFuture),
    Open(h2::RecvStream),
    Ended,
}

/// One HTTP/2 stream of a TCP tunnel as a byte stream: reads return the peer's DATA, writes
/// send DATA within the flow-control window, shutdown ends the send side (a half-close).
pub struct H2Stream {
    send: h2::SendStream<Bytes>,
    recv: Recv,
    /// Received, not read yet.
    pending: Bytes,
    finished: bool,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("pending", &self.pending.len())
            .field("finished", &self.finished)
            .finish()
    }
}

impl H2Stream {
    fn new(send: h2::SendStream<Bytes>, recv: Recv) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            finished: false,
        }
    }

    /// Ends the send side (the peer reads the end of the stream after what was written).
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }

    /// Resets the stream (both directions) with `CANCEL`.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let count = this.pending.len().min(buf.remaining());
                buf.put_slice(this.pending.split_to(count).as_ref());
                return Poll::Ready(Ok(()));
            }
            match &mut this.recv {
                Recv::Ended => return Poll::Ready(Ok(())),
                Recv::Waiting(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_io)?;
                    if !response.status().is_success() {
                        this.recv = Recv::Ended;
                        return Poll::Ready(Err(io::Error::other(format!(
                            "the daemon refused the tunnel stream: HTTP {}",
                            response.status()
                        ))));
                    }
                    this.recv = Recv::Open(response.into_body());
                }
                Recv::Open(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        this.pending = data;
                    }
                    Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                    None => {
                        this.recv = Recv::Ended;
                        return Poll::Ready(Ok(()));
                    }
                },
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.finished {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want = buf.len().min(MAX_WRITE);
        self.send.reserve_capacity(want);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let count = granted.min(want);
                    let data = Bytes::copy_from_slice(buf.get(..count).unwrap_or_default());
                    self.send.send_data(data, false).map_err(h2_io)?;
                    return Poll::Ready(Ok(count));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // DATA handed to h2 is written by the connection task.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Ending a send side the peer has already reset is not an error: an HTTP/2 peer that
        // finished its own side and dropped the stream resets it (NO_ERROR) before it reads
        // our end, while what it sent before (a TLS close_notify, say) is still to be read
        // here. Failing the shutdown would make a copy loop drop those bytes; a real reset
        // still shows on the read side once the data before it has been read.
        self.finish();
        Poll::Ready(Ok(()))
    }
}

/// A stream with bytes already read from it replayed first (the relay reads the ClientHello
/// before it hands the connection to TLS).
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Replay<S> {
    /// `inner`, whose reads return `prefix` first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix: Bytes::from(prefix),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let count = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(count);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The daemon's end of a TCP tunnel: the control stream, the streams the relay opens later,
/// and the way to close it.
pub struct DaemonTcpTunnel {
    /// The control stream (the relay's first stream).
    pub control: H2Stream,
    /// Every later stream, as the relay opens them; closed when the connection ends.
    pub streams: async_channel::Receiver<H2Stream>,
    /// Closes the connection when triggered.
    pub close: Shutdown,
}

impl std::fmt::Debug for DaemonTcpTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonTcpTunnel").finish_non_exhaustive()
    }
}

/// Answers a relay-opened request with `200` and joins its halves.
fn accept_request(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(String, H2Stream), h2::Error> {
    let path = request.uri().path().to_owned();
    let response = http::Response::builder()
        .status(200)
        .body(())
        .unwrap_or_default();
    let send = respond.send_response(response, false)?;
    Ok((path, H2Stream::new(send, Recv::Open(request.into_body()))))
}

/// Dials the relay's HTTPS port at `addr` over TCP, does the TLS handshake with `tls` (which
/// must offer [`TCP_TUNNEL_ALPN`] and present the daemon's node certificate) naming
/// `server_name`, runs the HTTP/2 server side and waits for the relay's control stream. The
/// connection is driven by a task of its own until [`DaemonTcpTunnel::close`] fires or the
/// relay goes away.
pub async fn dial<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<DaemonTcpTunnel, String> {
    let tcp = rt
        .connect_tcp(addr)
        .await
        .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("{server_name} is not a TLS server name: {e}"))?;
    let tls_stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS over TCP to {addr}: {e}"))?;
    if tls_stream.get_ref().1.alpn_protocol() != Some(TCP_TUNNEL_ALPN) {
        return Err(format!(
            "{addr} did not accept the TCP tunnel protocol (ALPN {}); is it a Gate relay's HTTPS port?",
            String::from_utf8_lossy(TCP_TUNNEL_ALPN)
        ));
    }
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Bytes>(tls_stream)
        .await
        .map_err(|e| format!("HTTP/2 handshake over TCP with {addr}: {e}"))?;
    let control = match connection.accept().await {
        Some(Ok((request, respond))) => {
            let (path, stream) =
                accept_request(request, respond).map_err(|e| format!("control stream: {e}"))?;
            if path != CONTROL_PATH {
                return Err(format!(
                    "the relay's first stream is {path}, not the control stream"
                ));
            }
            stream
        }
        Some(Err(e)) => return Err(format!("waiting for the control stream: {e}")),
        None => return Err("the relay closed the TCP tunnel before its control stream".into()),
    };
    let (streams_tx, streams) = async_channel::unbounded();
    let close = Shutdown::new();
    let closed = close.clone();
    rt.spawn(async move {
        let accept_all = async {
            while let Some(Ok((request, respond))) = connection.accept().await {
                match accept_request(request, respond) {
                    Ok((path, stream)) if path == STREAM_PATH => {
                        if streams_tx.send(stream).await.is_err() {
                            break;
                        }
                    }
                    Ok((path, mut stream)) => {
                        tracing::debug!(%path, "unknown stream on the TCP tunnel; reset");
                        stream.reset();
                    }
                    Err(e) => tracing::debug!("answering a tunnel stream failed: {e}"),
                }
            }
        };
        let _ = race(closed.wait(), accept_all).await;
    });
    Ok(DaemonTcpTunnel {
        control,
        streams,
        close,
    })
}

/// The relay's handle on one TCP tunnel: opens new streams to the daemon. Cloneable.
#[derive(Clone)]
pub struct TcpOpener {
    requests: h2::client::SendRequest<Bytes>,
    closed: Shutdown,
}

impl std::fmt::Debug for TcpOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpOpener").finish_non_exhaustive()
    }
}

impl TcpOpener {
    /// Opens a new stream to the daemon (a forwarded connection: its first bytes must be the
    /// stream header).
    pub async fn open(&self) -> io::Result<H2Stream> {
        if self.closed.is_triggered() {
            return Err(io::Error::other("the TCP tunnel is closed"));
        }
        open(self.requests.clone(), STREAM_PATH).await
    }

    /// Closes the connection (every stream with it).
    pub fn close(&self) {
        self.closed.trigger();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_triggered()
    }
}

async fn open(requests: h2::client::SendRequest<Bytes>, path: &str) -> io::Result<H2Stream> {
    let mut requests = requests.ready().await.map_err(h2_io)?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("https://tunnel{path}"))
        .body(())
        .map_err(io::Error::other)?;
    let (response, send) = requests.send_request(request, false).map_err(h2_io)?;
    Ok(H2Stream::new(send, Recv::Waiting(response)))
}

/// The relay's side of a TCP tunnel after its TLS accept: runs the HTTP/2 client side over
/// `io`, opens the control stream, and drives the connection in a task until
/// [`TcpOpener::close`] or the daemon goes away (the opener then reports closed).
pub async fn relay_handshake<R, S>(rt: &R, io: S) -> io::Result<(H2Stream, TcpOpener)>
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (requests, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(h2_io)?;
    let closed = Shutdown::new();
    let signal = closed.clone();
    rt.spawn(async move {
        match race(signal.wait(), connection).await {
            Either::Left(()) => {}
            Either::Right(Err(e)) => tracing::debug!("TCP tunnel connection ended: {e}"),
            Either::Right(Ok(())) => {}
        }
        signal.trigger();
    });
    let control = open(requests.clone(), CONTROL_PATH).await?;
    Ok((control, TcpOpener { requests, closed }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A daemon that answers, ends its side and drops the stream before it has read the
    /// relay's end makes h2 reset the stream (NO_ERROR). What it sent before must still reach
    /// the relay, and the relay's own end (shutdown) must not fail: a copy loop that failed
    /// there dropped the daemon's last bytes (its TLS close_notify) on the floor.
    #[test]
    fn shutdown_after_the_peer_finished_and_reset_keeps_what_it_sent() {
        futures_lite::future::block_on(async {
            let (relay_io, daemon_io) = tokio::io::duplex(64 * 1024);
            let daemon = async move {
                let mut connection = h2::server::handshake(daemon_io).await.unwrap();
                let (request, respond) = connection.accept().await.unwrap().unwrap();
                let (path, mut stream) = accept_request(request, respond).unwrap();
                assert_eq!(path, STREAM_PATH);
                stream.write_all(b"bye").await.unwrap();
                stream.shutdown().await.unwrap();
                drop(stream);
                // Keeps the connection going until the relay closes it.
                while let Some(Ok(_)) = connection.accept().await {}
            };
            let relay = async move {
                let (requests, connection) = h2::client::handshake(relay_io).await.unwrap();
                let drive = async move {
                    let _ = connection.await;
                };
                let forward = async move {
                    let mut stream = open(requests, STREAM_PATH).await.unwrap();
                    let reason = std::future::poll_fn(|cx| stream.send.poll_reset(cx))
                        .await
                        .unwrap();
                    assert_eq!(reason, h2::Reason::NO_ERROR);
                    let mut got = Vec::new();
                    stream.read_to_end(&mut got).await.unwrap();
                    assert_eq!(got, b"bye");
                    stream.shutdown().await.unwrap();
                };
                futures_lite::future::zip(drive, forward).await;
            };
            futures_lite::future::zip(daemon, relay).await;
        });
    }
}
