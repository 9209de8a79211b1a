//! The floor of Gate's HTTP stack, for the throughput benchmark (`bench/throughput.sh`, issue
//! 16): a reverse proxy with nothing but the libraries Gate's request path is built on — tokio's
//! multi-threaded runtime with one worker per core, hyper's HTTP/1.1 server, hyper-util's pooled
//! client — that reads each request's body and forwards it to one origin, and streams the
//! answer back. No authentication, routing, JSON, metrics, usage or timeouts.
//!
//! It answers "how close to nginx-as-proxy can a proxy on this stack come here", so the
//! benchmark can say how much of Gate's distance to the target is its own work and how much
//! is the stack's. It is a benchmark tool: it listens on loopback only and runs until killed.
//!
//! ```text
//! cargo run --release -p gate-daemon --example hyper_floor -- 127.0.0.1:PORT 127.0.0.1:ORIGIN_PORT
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a tool reports failure

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Answer = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN_ADDR ORIGIN_ADDR (both loopback, e.g. 127.0.0.1:8080)";
    let listen: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let origin: SocketAddr = args.next().expect(usage).parse().expect(usage);
    assert!(
        listen.ip().is_loopback() && origin.ip().is_loopback(),
        "{usage}"
    );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("start tokio");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let client = client.clone();
                    async move { Ok::<_, Infallible>(forward(&client, origin, req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn forward(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
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
