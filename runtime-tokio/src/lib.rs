//! [`gate_rt::Runtime`] on tokio: a multi-threaded tokio runtime with one worker per core.
//!
//! Glue only: every behaviour lives in `gate-rt` (shared) or `gate-core` (protocol).
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A handle to a running tokio runtime.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// A handle to the tokio runtime the caller is running on.
    ///
    /// Returns `None` outside a tokio runtime.
    pub fn current() -> Option<Self> {
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|handle| Self { handle })
    }
}

/// Starts a multi-threaded tokio runtime and runs `main` on it to completion.
pub fn block_on<F, Fut>(main: F) -> io::Result<Fut::Output>
where
    F: FnOnce(TokioRuntime) -> Fut,
    Fut: Future,
{
    // One worker per core, or `TOKIO_WORKER_THREADS` (tokio's own setting) when set: tokio
    // reads it only while the builder is not given a count.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        builder.worker_threads(threads);
    }
    let runtime = builder.thread_name("gate-tokio").enable_all().build()?;
    let rt = TokioRuntime {
        handle: runtime.handle().clone(),
    };
    let output = runtime.block_on(main(rt));
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(output)
}

impl gate_rt::Runtime for TokioRuntime {
    const NAME: &'static str = "tokio";
    type TcpStream = tokio::net::TcpStream;
    type TcpListener = tokio::net::TcpListener;
    type Sleep = tokio::time::Sleep;

    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }

    fn sleep(&self, duration: Duration) -> Self::Sleep {
        let _guard = self.handle.enter();
        tokio::time::sleep(duration)
    }

    fn bind_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpListener> {
        // std sets SO_REUSEADDR on Unix, as servers expect.
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let _guard = self.handle.enter();
        tokio::net::TcpListener::from_std(listener)
    }

    fn listener_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn accept(listener: &Self::TcpListener) -> io::Result<(Self::TcpStream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }

    fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::TokioRuntime)
    }

    // --- Unix domain sockets ---

    type UnixStream = tokio::net::UnixStream;
    type UnixListener = tokio::net::UnixListener;

    fn bind_unix(&self, path: &Path) -> io::Result<Self::UnixListener> {
        let _guard = self.handle.enter();
        tokio::net::UnixListener::bind(path)
    }

    async fn accept_unix(listener: &Self::UnixListener) -> io::Result<Self::UnixStream> {
        Ok(listener.accept().await?.0)
    }

    async fn connect_unix(&self, path: &Path) -> io::Result<Self::UnixStream> {
        tokio::net::UnixStream::connect(path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_runs_on_tokio() {
        let result = block_on(gate_rt::scenario::run).expect("start tokio");
        if let Err(e) = result {
            panic!("scenario failed on tokio: {e}");
        }
    }
}
