//! The floor of Gate's HTTP stack, for the throughput benchmark (`bench/throughput.sh`, issue
//! 16): a reverse proxy with nothing but the libraries and the structure Gate's request path is
//! built on — `gate-runtime-tokio`'s serving cores (one single-threaded tokio runtime per core;
//! connections accepted on the multi-threaded runtime and handed to the core with the fewest),
//! hyper's HTTP/1.1 server, one `gate_rt::pool::CorePool` per core (the gateway's upstream
//! pool on hyper's connection API) — that reads each request's
//! body and forwards it to one origin, and streams the answer back. No authentication,
//! routing, JSON, metrics, usage or timeouts. `--multi-thread` serves every connection on the
//! multi-threaded runtime with one shared client instead (how Gate ran before its serving cores).
//!
//! It answers "how close to nginx-as-proxy can a proxy on this stack come here", so the
//! benchmark can say how much of Gate's distance to the target is its own work and how much
//! is the stack's. It is a benchmark tool: it listens on loopback only and runs until killed.
//!
//! ```text
//! cargo run --release -p gate-daemon --example hyper_floor -- 127.0.0.1:PORT 127.0.0.1:ORIGIN_PORT [--multi-thread]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a tool reports failure

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;
use gate_daemon::server::{least_loaded, CoreLoad};
use gate_rt::client::ClientSettings;
use gate_rt::pool::CorePool;
use gate_rt::Runtime;
use gate_runtime_tokio::TokioRuntime;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Answer = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;
type FloorClient = CorePool<TokioRuntime, Full<Bytes>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN_ADDR ORIGIN_ADDR [--multi-thread] (both loopback, e.g. 127.0.0.1:8080)";
    let listen: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let origin: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let multi_thread = match args.next().as_deref() {
        None => false,
        Some("--multi-thread") => true,
        Some(_) => panic!("{usage}"),
    };
    assert!(
        listen.ip().is_loopback() && origin.ip().is_loopback(),
        "{usage}"
    );
    gate_runtime_tokio::block_on(|rt| async move {
        let listener = rt.bind_tcp(listen).expect("bind");
        let cores = if multi_thread {
            Vec::new()
        } else {
            rt.serving_cores()
        };
        // One client per core (index core + 1) and one for the multi-threaded runtime: a
        // request only ever uses pooled connections of its own thread.
        let clients: Arc<[FloorClient]> = std::iter::once(rt.clone())
            .chain(cores.iter().cloned())
            .map(|rt| CorePool::new(rt, &ClientSettings::default()))
            .collect();
        let loads: Arc<[AtomicUsize]> = cores.iter().map(|_| AtomicUsize::new(0)).collect();
        loop {
            let Ok((stream, _)) = TokioRuntime::accept(&listener).await else {
                continue;
            };
            let clients = clients.clone();
            let serve = move |stream: tokio::net::TcpStream| async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let clients = clients.clone();
                    async move {
                        let client = TokioRuntime::current_core()
                            .and_then(|core| clients.get(core + 1))
                            .unwrap_or(&clients[0]);
                        Ok::<_, Infallible>(forward(client, origin, req).await)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            };
            // The daemon's hand-off (`gate_daemon::server::serve`): the core serving the
            // fewest open connections.
            let Some(core) = least_loaded(&loads) else {
                rt.spawn(serve(stream));
                continue;
            };
            let Ok(stream) = cores[core].adopt(stream) else {
                continue;
            };
            let load = CoreLoad::new(&loads, core);
            cores[core].spawn(async move {
                serve(stream).await;
                drop(load);
            });
        }
    })
    .expect("start tokio");
}

async fn forward(
    client: &FloorClient,
    origin: SocketAddr,
    req: Request<Incoming>,
) -> Response<Answer> {
    let (parts, body) = req.into_parts();
    let failed = |status: StatusCode| {
        let mut response = Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = status;
        response
    };
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return failed(StatusCode::BAD_REQUEST);
    };
    let uri = format!("http://{origin}{}", parts.uri.path());
    let mut out = Request::builder().method(parts.method).uri(uri);
    if let Some(content_type) = parts.headers.get(http::header::CONTENT_TYPE) {
        out = out.header(http::header::CONTENT_TYPE, content_type);
    }
    let Ok(request) = out.body(Full::new(body)) else {
        return failed(StatusCode::BAD_REQUEST);
    };
    match client.request(request).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(_) => failed(StatusCode::BAD_GATEWAY),
    }
}
