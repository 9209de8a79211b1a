//! The daemon's listeners: accepts TCP connections on the configured address and serves
//! HTTP on each with the shared router (any [`Handler`](crate::web::Handler); the daemon's is `app::App`), under the `[server]`
//! silence limits ([`ServerSettings`]) and a cap on open connections per listener
//! ([`ConnectionCap`], also used for connections through relays). Stops accepting when the
//! daemon's shutdown fires; connections then finish what is in flight. Written once over
//! [`gate_rt::Runtime`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gate_core::config::ListenLimits;
use gate_rt::hyper_glue::{serve_connection_until, ServerSettings};
use gate_rt::tunnel::support::{race, Either, Shutdown};
use gate_rt::Runtime;

use crate::web::{Handler, Peer};

/// Binds `addr` and serves `app` on it until the process ends.
///
/// Binding happens before this returns its future's first await point, so callers can
/// rely on "listening" being logged only once the port is open.
pub fn bind<R: Runtime>(rt: &R, addr: SocketAddr) -> anyhow::Result<R::TcpListener> {
    rt.bind_tcp(addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e} (is another process using the port? \
             change `port` / `host` in the config or GATE_PORT / GATE_HOST)"
        )
    })
}

/// The HTTP connection settings from the `[server]` limits.
///
/// The end of a client's input mid-request (HTTP/1) means different things per listener.
/// On the local listener it is the client going away (an agent cancelling a request, curl
/// stopped): the request is dropped, which frees its breaker slot and stops the upstream call
/// (nginx and uvicorn do the same). Through a relay it is only the end of what the client
/// sends: the relay forwards each direction's end on its own (a TCP FIN becomes a QUIC stream
/// finish and then a TLS close_notify), and a client that half-closes after its request
/// (`gnutls-cli` with its input closed, `shutdown(SHUT_WR)`) is answered.
pub fn server_settings(limits: &ListenLimits, relayed: bool) -> ServerSettings {
    ServerSettings {
        header_read_timeout: limits.header_read_timeout,
        keep_alive_timeout: limits.keep_alive_timeout,
        http2_keepalive_interval: limits.http2_keepalive_interval,
        http2_keepalive_timeout: limits.http2_keepalive_timeout,
        half_close: relayed,
    }
}

/// The open connections of one listener, at most `max` (`server.max_connections`). A
/// connection beyond it is closed at once, and the first refusal of a burst is logged.
/// Also how a stop waits for connections to end: [`ConnectionCap::closed`].
#[derive(Debug)]
pub struct ConnectionCap {
    name: &'static str,
    max: usize,
    open: AtomicUsize,
    refusing: AtomicBool,
    refused: AtomicU64,
    /// Cloned into every permit; `None` once the listener stops admitting.
    live: Mutex<Option<async_channel::Sender<()>>>,
    /// Ends (with an error) when the last permit is gone and admission has stopped.
    all_closed: async_channel::Receiver<()>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    cap: Arc<ConnectionCap>,
    _live: async_channel::Sender<()>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.cap.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCap {
    /// A cap of `max` open connections on the listener called `name` (in logs).
    pub fn new(name: &'static str, max: usize) -> Arc<Self> {
        let (live, all_closed) = async_channel::bounded(1);
        Arc::new(Self {
            name,
            max: max.max(1),
            open: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            live: Mutex::new(Some(live)),
            all_closed,
        })
    }

    /// A place for a new connection from `peer`, or `None` when the listener is full or
    /// stopping (the caller closes the connection).
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Permit> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            if !self.refusing.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    listener = self.name,
                    max_connections = self.max,
                    %peer,
                    "{} listener full: {} connections open (server.max_connections); closing new \
                     connections until some end",
                    self.name,
                    self.max
                );
            }
            return None;
        }
        if self.refusing.swap(false, Ordering::AcqRel) {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::info!(
                listener = self.name,
                refused,
                "{} listener accepts connections again ({refused} closed while it was full)",
                self.name
            );
        }
        Some(Permit {
            cap: self.clone(),
            _live: live,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Stops admitting connections (idempotent).
    pub fn stop_admitting(&self) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Stops admitting connections; completes once every admitted one has ended.
    pub async fn closed(&self) {
        self.stop_admitting();
        // Nothing is ever sent: recv() returns once every permit's sender is dropped.
        let _ = self.all_closed.recv().await;
    }
}

/// Serves one admitted connection `io` from `peer` with `app` until it ends, or closes it
/// gracefully once `stop` fires.
pub async fn serve_one<R: Runtime, IO: gate_rt::ByteStream>(
    rt: R,
    io: IO,
    peer: Peer,
    app: Arc<impl Handler>,
    settings: ServerSettings,
    stop: Shutdown,
) {
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(app.handle(req, peer).await) }
    });
    if let Err(e) =
        serve_connection_until(rt, io, settings, service, async move { stop.wait().await }).await
    {
        let error = error_chain(&*e);
        tracing::debug!(%peer.addr, remote = peer.remote, %error, "connection ended with an error");
    }
}

/// An error and its sources, `: `-separated (hyper's "http2 error" says why only in them).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Accepts connections until `stop` fires, serving each on its own task; then drops the
/// listener (new connections are refused by the kernel) and returns.
///
/// With serving cores ([`Runtime::serving_cores`]) each connection is handed to the core
/// serving the fewest open connections (the first of them on a tie) and lives there to its
/// end: its requests, their upstream connections and timers never wake another thread.
/// Balancing by open connections, not by a hash of the peer, keeps both cores busy with
/// the few long-lived connections agents open.
pub async fn serve<R: Runtime>(
    rt: R,
    listener: R::TcpListener,
    app: Arc<impl Handler>,
    settings: ServerSettings,
    cap: Arc<ConnectionCap>,
    stop: Shutdown,
) {
    let cores = rt.serving_cores();
    let loads: Arc<[AtomicUsize]> = cores.iter().map(|_| AtomicUsize::new(0)).collect();
    loop {
        let (stream, peer) = match race(stop.wait(), R::accept(&listener)).await {
            Either::Left(()) => break,
            Either::Right(Ok(conn)) => conn,
            Either::Right(Err(e)) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                rt.sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = cap.admit(peer) else {
            drop(stream);
            continue;
        };
        let (conn_rt, stream, load) = match least_loaded(&loads) {
            None => (rt.clone(), stream, None),
            Some(core) => match cores[core].adopt(stream) {
                Ok(stream) => (
                    cores[core].clone(),
                    stream,
                    Some(CoreLoad::new(&loads, core)),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, core, "cannot hand a connection to a serving core; closing it");
                    continue;
                }
            },
        };
        let app = app.clone();
        let settings = settings.clone();
        let stop = stop.clone();
        conn_rt.clone().spawn(async move {
            let peer = Peer {
                addr: peer,
                remote: false,
            };
            serve_one(conn_rt, stream, peer, app, settings, stop).await;
            drop((permit, load));
        });
    }
    drop(listener);
    tracing::info!("local listener closed: no new connections");
}

/// The serving core with the fewest open connections (the first on a tie); `None` without
/// serving cores. `loads` counts each core's open connections (see [`CoreLoad`]).
pub fn least_loaded(loads: &[AtomicUsize]) -> Option<usize> {
    (0..loads.len()).min_by_key(|&core| loads[core].load(Ordering::Relaxed))
}

/// One open connection counted against its serving core until dropped.
pub struct CoreLoad {
    loads: Arc<[AtomicUsize]>,
    core: usize,
}

impl CoreLoad {
    /// Counts one more open connection on `core` until the result is dropped.
    pub fn new(loads: &Arc<[AtomicUsize]>, core: usize) -> Self {
        loads[core].fetch_add(1, Ordering::Relaxed);
        Self {
            loads: loads.clone(),
            core,
        }
    }
}

impl Drop for CoreLoad {
    fn drop(&mut self) {
        self.loads[self.core].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A convenience for tests and callers that want the bound address.
pub fn local_addr<R: Runtime>(listener: &R::TcpListener) -> Option<SocketAddr> {
    R::listener_addr(listener).ok()
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    #[test]
    fn admits_up_to_the_cap_and_frees_places_on_drop() {
        let cap = ConnectionCap::new("test", 2);
        let first = cap.admit(peer()).expect("first");
        let second = cap.admit(peer()).expect("second");
        assert!(cap.admit(peer()).is_none(), "a third beyond a cap of 2");
        assert_eq!(cap.open(), 2);
        assert_eq!(cap.refused.load(Ordering::Relaxed), 1);
        drop(first);
        assert_eq!(cap.open(), 1);
        let third = cap.admit(peer()).expect("a place freed by a drop");
        // The burst of refusals is over: its count is reset.
        assert_eq!(cap.refused.load(Ordering::Relaxed), 0);
        drop((second, third));
        assert_eq!(cap.open(), 0);
    }

    #[test]
    fn connections_go_to_the_core_serving_the_fewest() {
        assert_eq!(least_loaded(&[]), None, "no serving cores");
        let loads: Arc<[AtomicUsize]> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let mut held = Vec::new();
        for expected in [0, 1, 2, 0, 1] {
            let core = least_loaded(&loads).expect("a core");
            assert_eq!(core, expected);
            held.push(CoreLoad::new(&loads, core));
        }
        // Core 1's first connection ends: the next goes there, then the round goes on.
        held.remove(1);
        assert_eq!(least_loaded(&loads), Some(1));
        held.push(CoreLoad::new(&loads, 1));
        assert_eq!(least_loaded(&loads), Some(2));
        drop(held);
        assert!(loads.iter().all(|l| l.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn closed_waits_for_every_permit_and_refuses_new_ones() {
        let cap = ConnectionCap::new("test", 8);
        let permit = cap.admit(peer()).expect("admitted");
        cap.stop_admitting();
        assert!(cap.admit(peer()).is_none(), "admitted after stop");
        let mut closed = Box::pin(cap.closed());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(
            closed.as_mut().poll(&mut cx).is_pending(),
            "closed before the last connection ended"
        );
        drop(permit);
        assert!(closed.as_mut().poll(&mut cx).is_ready());
    }
}
