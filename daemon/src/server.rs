//! The daemon's listeners: accepts TCP connections on the configured address and serves
//! HTTP on each with the shared [`App`](crate::app::App) router. Written once over
//! [`gate_rt::Runtime`].

use std::net::SocketAddr;
use std::sync::Arc;

use gate_rt::hyper_glue::{serve_connection, ServerSettings};
use gate_rt::Runtime;

use crate::app::{App, Peer};

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

/// Accepts connections forever, serving each on its own task.
pub async fn serve<R: Runtime>(rt: R, listener: R::TcpListener, app: Arc<App<R>>) {
    let settings = ServerSettings::default();
    loop {
        let (stream, peer) = match R::accept(&listener).await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                rt.sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        let conn_rt = rt.clone();
        let settings = settings.clone();
        rt.spawn(async move {
            let peer = Peer {
                addr: peer,
                remote: false,
            };
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(app.handle(req, peer).await) }
            });
            if let Err(e) = serve_connection(conn_rt, stream, &settings, service).await {
                tracing::debug!(%peer.addr, error = %e, "connection ended with an error");
            }
        });
    }
}

/// A convenience for tests and callers that want the bound address.
pub fn local_addr<R: Runtime>(listener: &R::TcpListener) -> Option<SocketAddr> {
    R::listener_addr(listener).ok()
}
