//! Forwarding one HTTPS connection between the client's TCP stream and the daemon's QUIC
//! stream, both ways at once, with half-closes passed on (TCP EOF finishes the QUIC stream;
//! the QUIC stream's end shuts down the TCP write side).
//!
//! Built for many idle connections and one fast stream:
//! - No buffer of its own while idle. QUIC -> TCP takes quinn's received chunks (`Bytes`,
//!   zero-copy) and writes them to TCP with one vectored write; TCP -> QUIC reads into a
//!   buffer on the stack of the poll (not in the task) and hands quinn an exactly sized
//!   `Bytes`. The list of pending chunks is freed each time it drains.
//! - Each direction yields after [`BUDGET`] steps, so one busy connection cannot hold an
//!   executor thread (smol has no cooperative budget of its own).
//!
//! Must not: know about TLS, names or limits (the caller does), or depend on a runtime.

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest single read from the client's TCP stream (on the poll's stack).
const TCP_READ_BYTES: usize = 32 * 1024;

/// Most QUIC chunks taken in one read and written to TCP in one vectored write.
const MAX_CHUNKS: usize = 32;

/// Read/write steps of one direction before it yields to the executor.
const BUDGET: usize = 64;

/// Bytes moved each way by [`forward`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Copied {
    /// Client (TCP) -> daemon (QUIC).
    pub to_daemon: u64,
    /// Daemon (QUIC) -> client (TCP).
    pub to_client: u64,
}

/// TCP -> QUIC.
#[derive(Default)]
struct Upstream {
    /// Read from TCP, not yet taken by quinn.
    pending: Option<Bytes>,
    eof: bool,
    done: bool,
    bytes: u64,
}

impl Upstream {
    fn poll<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut S,
        send: &mut quinn::SendStream,
    ) -> Poll<io::Result<()>> {
        for _ in 0..BUDGET {
            if let Some(chunk) = self.pending.as_mut() {
                // Cancel-safe: a write that does not complete has taken nothing.
                let written = {
                    let mut writing = pin!(send.write_chunks(std::slice::from_mut(chunk)));
                    ready!(writing.as_mut().poll(cx)).map_err(io::Error::from)?
                };
                if written.bytes == 0 && !chunk.is_empty() {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                if chunk.is_empty() {
                    self.pending = None;
                }
                continue;
            }
            if self.eof {
                // Already finished or reset by the peer's STOP_SENDING: either way nothing
                // more is to be sent.
                let _ = send.finish();
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut buf = [MaybeUninit::<u8>::uninit(); TCP_READ_BYTES];
            let mut read = ReadBuf::uninit(&mut buf);
            ready!(Pin::new(&mut *tcp).poll_read(cx, &mut read))?;
            let filled = read.filled();
            if filled.is_empty() {
                self.eof = true;
            } else {
                self.bytes += filled.len() as u64;
                self.pending = Some(Bytes::copy_from_slice(filled));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// QUIC -> TCP.
#[derive(Default)]
struct Downstream {
    /// Received from quinn, not yet written to TCP (the first one possibly in part).
    chunks: Vec<Bytes>,
    eof: bool,
    done: bool,
    bytes: u64,
}

impl Downstream {
    fn poll<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        tcp: &mut S,
        recv: &mut quinn::RecvStream,
    ) -> Poll<io::Result<()>> {
        for _ in 0..BUDGET {
            if !self.chunks.is_empty() {
                let slices: [IoSlice<'_>; MAX_CHUNKS] = std::array::from_fn(|i| {
                    IoSlice::new(self.chunks.get(i).map_or(&[][..], |chunk| &chunk[..]))
                });
                let count = self.chunks.len().min(MAX_CHUNKS);
                let written = ready!(Pin::new(&mut *tcp)
                    .poll_write_vectored(cx, slices.get(..count).unwrap_or_default()))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.consume(written);
                continue;
            }
            if self.eof {
                ready!(Pin::new(&mut *tcp).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut slots: [Bytes; MAX_CHUNKS] = Default::default();
            // Cancel-safe: chunks are only taken when the read completes.
            let read = {
                let mut reading = pin!(recv.read_chunks(&mut slots));
                ready!(reading.as_mut().poll(cx))
            };
            match read {
                Ok(Some(count)) => {
                    let mut chunks = Vec::with_capacity(count);
                    for chunk in slots.into_iter().take(count) {
                        self.bytes += chunk.len() as u64;
                        chunks.push(chunk);
                    }
                    self.chunks = chunks;
                }
                Ok(None) => self.eof = true,
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Drops `written` bytes from the front of the pending chunks; frees the list once empty
    /// (an idle connection keeps no allocation here).
    fn consume(&mut self, mut written: usize) {
        let mut whole = 0;
        for chunk in &mut self.chunks {
            if written >= chunk.len() {
                written -= chunk.len();
                whole += 1;
            } else {
                chunk.advance(written);
                break;
            }
        }
        if whole >= self.chunks.len() {
            self.chunks = Vec::new();
        } else {
            self.chunks.drain(..whole);
        }
    }
}

/// Copies both ways until both directions have ended, each on its own: the client's TCP EOF
/// finishes the QUIC stream while the daemon's answer still flows, and the stream's finish
/// shuts down the TCP write side while the client may still send. The first error ends it
/// (the caller then resets the QUIC stream). `first`: bytes already read from `recv`, written
/// to the client before anything else. The bytes copied are reported either way (quotas count
/// them).
pub(crate) async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    first: Bytes,
) -> (Copied, io::Result<()>) {
    let mut up = Upstream::default();
    let mut down = Downstream::default();
    if !first.is_empty() {
        down.bytes = first.len() as u64;
        down.chunks.push(first);
    }
    let outcome = poll_fn(|cx| {
        if !up.done {
            if let Poll::Ready(Err(e)) = up.poll(cx, tcp, send) {
                return Poll::Ready(Err(e));
            }
        }
        if !down.done {
            if let Poll::Ready(Err(e)) = down.poll(cx, tcp, recv) {
                return Poll::Ready(Err(e));
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    let copied = Copied {
        to_daemon: up.bytes,
        to_client: down.bytes,
    };
    (copied, outcome)
}
