//! `gate-rt`: the one capability set that Gate's daemon and relay are written against.
//!
//! The daemon and relay logic is written once, generic over [`Runtime`]. Two crates
//! implement it: `gate-runtime-tokio` and `gate-runtime-smol`. What a runtime must give:
//! spawning detached tasks, timers, TCP listen / accept / connect, name resolution, the
//! `quinn::Runtime` that drives a QUIC endpoint, and Unix socket listen / accept / connect. Everything built on top of those
//! capabilities (hyper server and client glue, QUIC endpoint construction) lives here once,
//! so that there is exactly one HTTP client path and one server path for both runtimes.
//! The stop signals (SIGTERM, SIGINT) are awaited the same way on both ([`signal`]).
//!
//! Byte streams use the `tokio::io::{AsyncRead, AsyncWrite}` traits as the common
//! vocabulary, because quinn's streams and tokio-rustls already speak them. Only the traits
//! are used: nothing in this crate starts or requires a tokio runtime.
//!
//! This crate must not contain protocol logic (that is `gate-core`) nor any
//! runtime-specific code (that is the runtime crates). The [`tunnel`] module tree is the
//! relay <-> daemon tunnel's I/O side, shared by both binaries: it moves frames between QUIC
//! and the `gate_core::tunnel` state machines, which make every protocol decision.
#![forbid(unsafe_code)]

pub mod client;
pub mod fs;
pub mod hyper_glue;
pub mod pool;
pub mod quic;
#[cfg(feature = "scenario")]
pub mod scenario;
pub mod signal;
pub mod store;
pub mod tunnel;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream usable by every part of Gate: TCP connections, TLS sessions on top of
/// them and QUIC streams.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// The capabilities an async runtime gives to Gate.
///
/// Implementations are cheap handles (`Clone`) to a running executor.
pub trait Runtime: Clone + Send + Sync + Unpin + 'static {
    /// The name used on the command line (`--runtime tokio|smol`) and in logs.
    const NAME: &'static str;

    /// A connected TCP stream.
    type TcpStream: ByteStream;
    /// A bound TCP listener.
    type TcpListener: Send + Sync + 'static;
    /// A timer future.
    type Sleep: Future<Output = ()> + Send + Sync + 'static;

    /// Runs `fut` to completion in the background. Dropping nothing cancels it: tasks that
    /// must stop are told so through their own channels.
    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> Self::Sleep;

    /// Binds a TCP listener (with `SO_REUSEADDR`, as servers expect).
    fn bind_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpListener>;

    /// The address a listener is bound to (useful with port 0).
    fn listener_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr>;

    /// Accepts the next connection.
    fn accept(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send;

    /// Opens a TCP connection (with `TCP_NODELAY` set).
    fn connect_tcp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;

    /// Resolves `host:port` to socket addresses without blocking the executor.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;

    /// The quinn runtime that drives QUIC endpoints on this executor.
    fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime>;

    // --- Serving cores (thread per core for the local listener) ---

    /// The serving cores: one handle per thread that serves connections start to end on
    /// its own (its own reactor, timers and tasks, nothing shared with the other threads
    /// but `Arc`ed state). A connection handed to a core ([`adopt`](Self::adopt), then
    /// [`spawn`](Self::spawn) on that handle) is read, forwarded upstream over that core's
    /// pooled connections and answered without a wake-up crossing threads. Empty when the
    /// runtime has none (connections are then served by `self`, on any of its threads).
    fn serving_cores(&self) -> Vec<Self> {
        Vec::new()
    }

    /// The index (into [`serving_cores`](Self::serving_cores)) of the serving core the
    /// calling thread is, or `None` off the serving cores. What per-core state (the upstream
    /// client's pool) is keyed by.
    fn current_core() -> Option<usize> {
        None
    }

    /// `stream`, driven from now on by this handle's core: an accepted connection is moved
    /// to the core that will serve it. The identity without serving cores.
    fn adopt(&self, stream: Self::TcpStream) -> io::Result<Self::TcpStream> {
        Ok(stream)
    }

    // --- Unix domain sockets (the daemon's admin socket in its state directory) ---

    /// A connected Unix domain stream socket.
    type UnixStream: ByteStream;
    /// A bound Unix domain socket listener.
    type UnixListener: Send + Sync + 'static;

    /// Binds a Unix socket listener at `path` (which must not exist). The socket's mode is
    /// the caller's business (see `gate-daemon`'s admin socket).
    fn bind_unix(&self, path: &Path) -> io::Result<Self::UnixListener>;

    /// Accepts the next connection on a Unix socket listener.
    fn accept_unix(
        listener: &Self::UnixListener,
    ) -> impl Future<Output = io::Result<Self::UnixStream>> + Send;

    /// Connects to the Unix socket at `path`.
    fn connect_unix(
        &self,
        path: &Path,
    ) -> impl Future<Output = io::Result<Self::UnixStream>> + Send;
}

/// Races `fut` against a timer: `Err(Elapsed)` when `duration` passes first.
///
/// The timer is made only when `fut` is not ready at its first poll (counted from then): a
/// future that is ready at once (a body chunk already read, a pooled connection) costs no
/// timer (making, registering and dropping one: ~500 instructions; issue 16).
///
/// A named future rather than an `async fn`: an `async fn` keeps its argument and the
/// pinned copy of it side by side in its state (twice the inner future's size, and a copy
/// of it at the first poll); on the request path the inner future is the upstream
/// request's (~1.7 KB), held in the request's own future, which hyper moves per request.
pub fn timeout<R: Runtime, F: Future>(rt: &R, duration: Duration, fut: F) -> Timeout<'_, R, F> {
    Timeout {
        rt,
        duration,
        fut,
        sleep: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<'a, R: Runtime, F> {
        rt: &'a R,
        duration: Duration,
        #[pin]
        fut: F,
        #[pin]
        sleep: Option<R::Sleep>,
    }
}

impl<R: Runtime, F: Future> Future for Timeout<'_, R, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let mut this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(this.rt.sleep(*this.duration)));
        }
        match this.sleep.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

/// The error of [`timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct Elapsed;
