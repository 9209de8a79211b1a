//! [`gate_rt::Runtime`] on tokio: a multi-threaded tokio runtime with one worker per core
//! for everything in the background, and one single-threaded runtime per core (its own
//! thread, reactor and timers) serving the local listener's connections: the serving cores
//! of [`gate_rt::Runtime::serving_cores`].
//!
//! Glue only: every behaviour lives in `gate-rt` (shared) or `gate-core` (protocol).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    /// The serving core this thread is, if it is one (set once, when the thread starts).
    static CORE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A handle to a running tokio runtime: the multi-threaded one, or one serving core.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
    /// Which serving core `handle` drives; `None` for the multi-threaded runtime.
    core: Option<usize>,
    /// Every serving core's runtime (empty for a runtime not started by [`block_on`]).
    cores: Arc<[tokio::runtime::Handle]>,
}

impl TokioRuntime {
    /// A handle to the tokio runtime the caller is running on, without serving cores.
    ///
    /// Returns `None` outside a tokio runtime.
    pub fn current() -> Option<Self> {
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|handle| Self {
                handle,
                core: None,
                cores: Arc::from(Vec::new()),
            })
    }

    /// Whether work for this handle, asked for on the calling thread, stays on the thread:
    /// it is a serving core, and this handle is its own or the multi-threaded runtime's.
    fn stays_on_this_core(&self) -> bool {
        CORE.with(|core| match (core.get(), self.core) {
            (Some(_), None) => true,
            (Some(here), Some(target)) => here == target,
            (None, _) => false,
        })
    }
}

/// How many threads: `TOKIO_WORKER_THREADS` (tokio's own setting) when set, else one per core.
fn thread_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
}

/// One serving core: a current-thread runtime on a thread of its own, running until its
/// stop sender is dropped.
struct Core {
    handle: tokio::runtime::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn start_core(index: usize) -> io::Result<Core> {
    let (ready, started) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("gate-core-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            CORE.with(|core| core.set(Some(index)));
            let _ = ready.send(Ok(runtime.handle().clone()));
            let _ = runtime.block_on(stopped);
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
    let handle = started
        .recv()
        .map_err(|_| io::Error::other("a serving core's thread ended as it started"))??;
    Ok(Core {
        handle,
        stop,
        thread,
    })
}

/// Starts a multi-threaded tokio runtime and the serving cores, and runs `main` on the
/// multi-threaded runtime to completion; then stops the cores.
pub fn block_on<F, Fut>(main: F) -> io::Result<Fut::Output>
where
    F: FnOnce(TokioRuntime) -> Fut,
    Fut: Future,
{
    run(main, true)
}

/// [`block_on`] without serving cores (`serving_cores()` is empty): for a program that
/// never hands connections to cores (the relay), which then starts no idle core threads.
pub fn block_on_without_cores<F, Fut>(main: F) -> io::Result<Fut::Output>
where
    F: FnOnce(TokioRuntime) -> Fut,
    Fut: Future,
{
    run(main, false)
}

fn run<F, Fut>(main: F, with_cores: bool) -> io::Result<Fut::Output>
where
    F: FnOnce(TokioRuntime) -> Fut,
    Fut: Future,
{
    let threads = thread_count();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("gate-tokio")
        .enable_all()
        .build()?;
    let cores = (0..if with_cores { threads } else { 0 })
        .map(start_core)
        .collect::<io::Result<Vec<_>>>()?;
    let rt = TokioRuntime {
        handle: runtime.handle().clone(),
        core: None,
        cores: cores.iter().map(|c| c.handle.clone()).collect(),
    };
    let output = runtime.block_on(main(rt));
    for core in cores {
        drop(core.stop);
        let _ = core.thread.join();
    }
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
        if self.stays_on_this_core() {
            drop(tokio::task::spawn(fut));
        } else {
            drop(self.handle.spawn(fut));
        }
    }

    fn sleep(&self, duration: Duration) -> Self::Sleep {
        if self.stays_on_this_core() {
            // The core's own timers: the thread is inside its runtime.
            return tokio::time::sleep(duration);
        }
        let _guard = self.handle.enter();
        tokio::time::sleep(duration)
    }

    fn serving_cores(&self) -> Vec<Self> {
        (0..self.cores.len())
            .map(|index| Self {
                handle: self.cores[index].clone(),
                core: Some(index),
                cores: self.cores.clone(),
            })
            .collect()
    }

    fn current_core() -> Option<usize> {
        CORE.with(Cell::get)
    }

    fn adopt(&self, stream: Self::TcpStream) -> io::Result<Self::TcpStream> {
        if self.core.is_none() {
            return Ok(stream);
        }
        // Off the accepting runtime's reactor, onto the core's.
        let stream = stream.into_std()?;
        let _guard = self.handle.enter();
        tokio::net::TcpStream::from_std(stream)
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
    use gate_rt::Runtime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Where a task ran: its serving core and its thread's name.
    fn here() -> (Option<usize>, String) {
        let thread = std::thread::current();
        (
            TokioRuntime::current_core(),
            thread.name().unwrap_or("").to_owned(),
        )
    }

    #[test]
    fn work_handed_to_a_serving_core_stays_on_its_thread() {
        let checked = block_on(|rt| async move {
            let cores = rt.serving_cores();
            assert_eq!(cores.len(), thread_count(), "one serving core per thread");
            assert_eq!(here().0, None, "main runs off the serving cores");
            for (index, core) in cores.iter().enumerate() {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let main = rt.clone();
                core.spawn(async move {
                    let on_core = here();
                    // The shared runtime's handle, used on a core (as the gateway does for
                    // its timers and tasks): the work stays on the core.
                    main.sleep(Duration::from_millis(5)).await;
                    let (spawned_tx, spawned_rx) = tokio::sync::oneshot::channel();
                    main.spawn(async move {
                        let _ = spawned_tx.send(here());
                    });
                    let spawned = spawned_rx.await.expect("spawned task ran");
                    let _ = tx.send((on_core, spawned, here()));
                });
                let (on_core, spawned, after_sleep) = rx.await.expect("core task ran");
                let expected = (Some(index), format!("gate-core-{index}"));
                assert_eq!(on_core, expected);
                assert_eq!(spawned, expected, "a task spawned on a core left it");
                assert_eq!(after_sleep, expected, "a timer's wake moved the task");
            }
            cores.len()
        })
        .expect("start tokio");
        assert!(checked >= 1);
    }

    #[test]
    fn without_cores_no_core_thread_is_started_and_work_runs_on_the_shared_runtime() {
        let (cores, ran) = block_on_without_cores(|rt| async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            rt.spawn(async move {
                let _ = tx.send(here());
            });
            (
                rt.serving_cores().len(),
                rx.await.expect("spawned task ran"),
            )
        })
        .expect("start tokio");
        assert_eq!(cores, 0);
        assert_eq!(ran.0, None);
        assert!(ran.1.starts_with("gate-tokio"), "ran on {:?}", ran.1);
    }

    #[test]
    fn an_accepted_connection_is_served_by_the_core_it_is_handed_to() {
        block_on(|rt| async move {
            let listener = rt
                .bind_tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
                .expect("bind");
            let addr = TokioRuntime::listener_addr(&listener).expect("addr");
            let client = rt.spawn_client(addr);
            let (stream, _) = TokioRuntime::accept(&listener).await.expect("accept");
            let cores = rt.serving_cores();
            let core = cores.last().expect("a serving core").clone();
            let mut stream = core.adopt(stream).expect("adopt");
            let (tx, rx) = tokio::sync::oneshot::channel();
            core.spawn(async move {
                let mut buf = [0u8; 4];
                stream.read_exact(&mut buf).await.expect("read on the core");
                stream.write_all(&buf).await.expect("write on the core");
                let _ = tx.send(here().0);
            });
            assert_eq!(rx.await.expect("served"), Some(cores.len() - 1));
            assert_eq!(client.await.expect("client"), *b"ping");
        })
        .expect("start tokio");
    }

    impl TokioRuntime {
        /// Connects to `addr`, sends `ping` and returns what comes back.
        fn spawn_client(&self, addr: SocketAddr) -> tokio::task::JoinHandle<[u8; 4]> {
            let rt = self.clone();
            self.handle.spawn(async move {
                let mut stream = rt.connect_tcp(addr).await.expect("connect");
                stream.write_all(b"ping").await.expect("send");
                let mut buf = [0u8; 4];
                stream.read_exact(&mut buf).await.expect("echo");
                buf
            })
        }
    }

    #[test]
    fn scenario_runs_on_tokio() {
        let result = block_on(gate_rt::scenario::run).expect("start tokio");
        if let Err(e) = result {
            panic!("scenario failed on tokio: {e}");
        }
    }
}
