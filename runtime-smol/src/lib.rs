//! [`gate_rt::Runtime`] on smol: one `smol::Executor` run by one thread per core.
//!
//! Glue only: every behaviour lives in `gate-rt` (shared) or `gate-core` (protocol).
//! smol's sockets speak the `futures-io` traits; they are adapted to the tokio I/O traits
//! that `gate-rt` uses with `tokio-util`'s compat layer (traits only, no tokio runtime).
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// A handle to a running smol executor.
#[derive(Clone)]
pub struct SmolRuntime {
    executor: Arc<smol::Executor<'static>>,
}

impl std::fmt::Debug for SmolRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmolRuntime").finish_non_exhaustive()
    }
}

/// Starts a smol executor on one thread per core and runs `main` on it to completion.
pub fn block_on<F, Fut>(main: F) -> io::Result<Fut::Output>
where
    F: FnOnce(SmolRuntime) -> Fut,
    Fut: Future,
{
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let executor = Arc::new(smol::Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let mut workers = Vec::new();
    for i in 1..threads {
        let executor = executor.clone();
        let stopped = stopped.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("gate-smol-{i}"))
                .spawn(move || smol::block_on(executor.run(stopped.recv())))?,
        );
    }
    let rt = SmolRuntime {
        executor: executor.clone(),
    };
    let output = smol::block_on(executor.run(main(rt)));
    drop(stop);
    for worker in workers {
        let _ = worker.join();
    }
    Ok(output)
}

/// smol's timer with the `()` output hyper and gate-rt expect.
pub struct SmolSleep(smol::Timer);

impl Future for SmolSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl gate_rt::Runtime for SmolRuntime {
    const NAME: &'static str = "smol";
    type TcpStream = Compat<smol::net::TcpStream>;
    type TcpListener = smol::net::TcpListener;
    type Sleep = SmolSleep;

    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.executor.spawn(fut).detach();
    }

    fn sleep(&self, duration: Duration) -> Self::Sleep {
        SmolSleep(smol::Timer::after(duration))
    }

    fn bind_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpListener> {
        // std sets SO_REUSEADDR on Unix, as servers expect.
        let listener = std::net::TcpListener::bind(addr)?;
        smol::net::TcpListener::try_from(listener)
    }

    fn listener_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn accept(listener: &Self::TcpListener) -> io::Result<(Self::TcpStream, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream.compat(), peer))
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpStream> {
        let stream = smol::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream.compat())
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        smol::net::resolve((host, port)).await
    }

    fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(quinn::SmolRuntime)
    }

    // --- Unix domain sockets ---

    type UnixStream = Compat<smol::net::unix::UnixStream>;
    type UnixListener = smol::net::unix::UnixListener;

    fn bind_unix(&self, path: &Path) -> io::Result<Self::UnixListener> {
        smol::net::unix::UnixListener::bind(path)
    }

    async fn accept_unix(listener: &Self::UnixListener) -> io::Result<Self::UnixStream> {
        Ok(listener.accept().await?.0.compat())
    }

    async fn connect_unix(&self, path: &Path) -> io::Result<Self::UnixStream> {
        Ok(smol::net::unix::UnixStream::connect(path).await?.compat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_runs_on_smol() {
        let result = block_on(gate_rt::scenario::run).expect("start smol");
        if let Err(e) = result {
            panic!("scenario failed on smol: {e}");
        }
    }
}
