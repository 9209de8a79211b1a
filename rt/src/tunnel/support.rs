//! Small runtime-independent pieces shared by the relay server and the daemon's relay client:
//! a shutdown signal, a two-way race, wall-clock seconds, the tunnel stream (QUIC or TCP) that
//! replays bytes already read, and the QUIC endpoint constructor with a stable stateless-reset key.
//!
//! Must not: depend on a particular async runtime (everything here is plain futures and the
//! tokio I/O traits, which need no tokio runtime).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A broadcast "stop now" signal: cloneable, and every waiter wakes once it is triggered.
#[derive(Clone, Debug)]
pub struct Shutdown {
    trigger: async_channel::Sender<()>,
    signal: async_channel::Receiver<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        let (trigger, signal) = async_channel::bounded(1);
        Self { trigger, signal }
    }

    /// Fires the signal (idempotent).
    pub fn trigger(&self) {
        self.trigger.close();
    }

    /// Whether it has fired.
    pub fn is_triggered(&self) -> bool {
        self.trigger.is_closed()
    }

    /// Completes once the signal has fired.
    pub async fn wait(&self) {
        // Nothing is ever sent: recv() only returns once the channel is closed.
        let _ = self.signal.recv().await;
    }
}

/// The outcome of [`race`].
pub enum Either<A, B> {
    /// The first future finished first.
    Left(A),
    /// The second future finished first.
    Right(B),
}

/// Polls both futures (the first one first) and returns the output of whichever completes
/// first; the other is dropped.
pub async fn race<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    futures_lite::future::or(async { Either::Left(a.await) }, async {
        Either::Right(b.await)
    })
    .await
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A bidirectional tunnel stream (QUIC, or HTTP/2 over TCP: [`super::tcp`]) as one byte
/// stream, with bytes that were read ahead (after a header) replayed first. Shutting down the
/// write side finishes the send stream.
pub struct TunnelStream {
    prefix: Vec<u8>,
    prefix_offset: usize,
    inner: Halves,
}

enum Halves {
    Quic {
        recv: quinn::RecvStream,
        send: quinn::SendStream,
    },
    Tcp(super::tcp::H2Stream),
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("TunnelStream");
        match &self.inner {
            Halves::Quic { send, .. } => out.field("quic_id", &send.id()),
            Halves::Tcp(_) => out.field("transport", &"tcp"),
        };
        out.field(
            "replay_pending",
            &self.prefix.len().saturating_sub(self.prefix_offset),
        )
        .finish()
    }
}

impl TunnelStream {
    /// Joins the two halves; `prefix` is returned by reads before anything from `recv`.
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            prefix_offset: 0,
            inner: Halves::Quic { recv, send },
        }
    }

    /// A stream of a TCP tunnel; `prefix` is returned by reads first.
    pub fn tcp(stream: super::tcp::H2Stream, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            prefix_offset: 0,
            inner: Halves::Tcp(stream),
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(pending) = this.prefix.get(this.prefix_offset..) {
            if !pending.is_empty() {
                let count = pending.len().min(buf.remaining());
                buf.put_slice(pending.get(..count).unwrap_or_default());
                this.prefix_offset += count;
                if this.prefix_offset >= this.prefix.len() {
                    this.prefix = Vec::new();
                    this.prefix_offset = 0;
                }
                return Poll::Ready(Ok(()));
            }
        }
        match &mut this.inner {
            Halves::Quic { recv, .. } => Pin::new(recv).poll_read(cx, buf),
            Halves::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Halves::Quic { send, .. } => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            Halves::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Halves::Quic { send, .. } => AsyncWrite::poll_flush(Pin::new(send), cx),
            Halves::Tcp(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Halves::Quic { send, .. } => AsyncWrite::poll_shutdown(Pin::new(send), cx),
            Halves::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// Starts a QUIC endpoint on `addr` whose stateless-reset key and connection-id key are
/// derived from `secret` (the node's private key), so that after a restart on the same address
/// the peers of the old connections are sent a stateless reset and learn at once that those
/// connections are gone.
pub fn quic_endpoint<R: crate::Runtime>(
    rt: &R,
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    secret: &[u8],
) -> io::Result<quinn::Endpoint> {
    let derive = |label: &[u8]| {
        let salt = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, label);
        ring::hmac::sign(&salt, secret)
    };
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derive(b"gate-relay stateless reset v1").as_ref(),
    );
    // Connection ids are validated with a keyed hash before a reset is sent for them, so the
    // key must also survive the restart.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(
        derive(b"gate-relay connection id v1")
            .as_ref()
            .get(..8)
            .unwrap_or(&[0u8; 8]),
    );
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    crate::quic::endpoint_with(rt, addr, config, server)
}
