//! The per-core upstream pool (`gate_rt::pool::CorePool`) against real TLS upstreams, as the
//! providers are reached: an upstream that negotiates HTTP/2 by ALPN gets one shared HTTP/2
//! connection for every request, concurrent or not; one that speaks only HTTP/1.1 gets its
//! connections reused once each answer is read. Both carry the right authority (`:authority`
//! or `Host`, with the port) and the request body. Also the timeout the gateway wraps pool
//! calls and body reads in. Under tokio and smol.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use gate_rt::client::ClientSettings;
use gate_rt::pool::CorePool;
use gate_rt::Runtime;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A TLS upstream on loopback answering `<version> <authority> <body length>`.
struct Upstream {
    port: u16,
    root: CertificateDer<'static>,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
}

/// Starts an upstream offering `alpn` on a thread of its own (it lives as long as the test
/// process). Its certificate is for the address 127.0.0.1.
fn start_upstream(alpn: &[&[u8]]) -> Upstream {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let root = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![root.clone()], key)
    .expect("server config");
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let service = hyper::service::service_fn(answer);
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, service)
                        .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                });
            }
        });
    });
    Upstream {
        port,
        root,
        connections,
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let version = format!("{:?}", req.version());
    // HTTP/2 carries the authority in the request target, HTTP/1.1 in `Host`.
    let authority = match req.uri().authority() {
        Some(authority) => authority.to_string(),
        None => req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("(none)")
            .to_owned(),
    };
    let body = req.into_body().collect().await?.to_bytes();
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{version} {authority} {}",
        body.len()
    )))))
}

/// Sends one POST through `pool` and returns the status and the body read to its end.
async fn post<R: Runtime>(pool: &CorePool<R, Full<Bytes>>, port: u16) -> (u16, String) {
    let req = Request::post(format!("https://127.0.0.1:{port}/v1/chat/completions"))
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .expect("request");
    let response = pool.request(req).await.expect("the pool sends the request");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body reads to its end")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn pool_trusting<R: Runtime>(rt: &R, upstream: &Upstream) -> CorePool<R, Full<Bytes>> {
    CorePool::new(
        rt.clone(),
        &ClientSettings {
            extra_roots: vec![upstream.root.clone()],
            ..ClientSettings::default()
        },
    )
}

async fn http2_upstream_shares_one_connection<R: Runtime>(rt: R) {
    let upstream = start_upstream(&[b"h2"]);
    let pool = pool_trusting(&rt, &upstream);
    let expected = format!("HTTP/2.0 127.0.0.1:{} 13", upstream.port);
    // Concurrent requests before any connection exists: each may open a connection before
    // the first is up (and serves its request on it); one of them becomes the shared one.
    let first = futures_util::future::join_all((0..8).map(|_| post(&pool, upstream.port))).await;
    for answer in first {
        assert_eq!(answer, (200, expected.clone()));
    }
    let opened = upstream.connections.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&opened),
        "{opened} connections for the first burst"
    );
    // Every later request, one at a time or many at once, rides the shared connection.
    for _ in 0..3 {
        assert_eq!(post(&pool, upstream.port).await, (200, expected.clone()));
    }
    let second = futures_util::future::join_all((0..8).map(|_| post(&pool, upstream.port))).await;
    for answer in second {
        assert_eq!(answer, (200, expected.clone()));
    }
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        opened,
        "requests after the first burst opened new HTTP/2 connections"
    );
}

async fn http1_upstream_reuses_its_connection<R: Runtime>(rt: R) {
    let upstream = start_upstream(&[b"http/1.1"]);
    let pool = pool_trusting(&rt, &upstream);
    let expected = format!("HTTP/1.1 127.0.0.1:{} 13", upstream.port);
    for _ in 0..5 {
        assert_eq!(post(&pool, upstream.port).await, (200, expected.clone()));
    }
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "sequential requests whose answers were read should share one connection"
    );
    // Concurrent requests each need a connection of their own; they all answer.
    let burst = futures_util::future::join_all((0..4).map(|_| post(&pool, upstream.port))).await;
    for answer in burst {
        assert_eq!(answer, (200, expected.clone()));
    }
    assert!(upstream.connections.load(Ordering::SeqCst) <= 4);
}

async fn untrusted_upstream_is_refused<R: Runtime>(rt: R) {
    let upstream = start_upstream(&[b"h2"]);
    let pool: CorePool<R, Full<Bytes>> = CorePool::new(rt, &ClientSettings::default());
    let req = Request::post(format!(
        "https://127.0.0.1:{}/v1/chat/completions",
        upstream.port
    ))
    .body(Full::new(Bytes::new()))
    .expect("request");
    let Err(error) = pool.request(req).await else {
        panic!("a self-signed upstream not in the trusted roots was trusted");
    };
    // The pool's error says "client error (Connect)"; its source says why.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    assert!(
        text.contains("TLS handshake with 127.0.0.1 failed"),
        "unexpected error: {text}"
    );
}

#[test]
fn http2_upstream_shares_one_connection_tokio() {
    gate_runtime_tokio::block_on(http2_upstream_shares_one_connection).expect("runtime");
}

#[test]
fn http2_upstream_shares_one_connection_smol() {
    gate_runtime_smol::block_on(http2_upstream_shares_one_connection).expect("runtime");
}

#[test]
fn http1_upstream_reuses_its_connection_tokio() {
    gate_runtime_tokio::block_on(http1_upstream_reuses_its_connection).expect("runtime");
}

#[test]
fn http1_upstream_reuses_its_connection_smol() {
    gate_runtime_smol::block_on(http1_upstream_reuses_its_connection).expect("runtime");
}

#[test]
fn untrusted_upstream_is_refused_tokio() {
    gate_runtime_tokio::block_on(untrusted_upstream_is_refused).expect("runtime");
}

#[test]
fn untrusted_upstream_is_refused_smol() {
    gate_runtime_smol::block_on(untrusted_upstream_is_refused).expect("runtime");
}

/// `gate_rt::timeout`: a future ready at once gives its value (no timer is made for it, even
/// with no time at all), one never ready gives `Elapsed` once the time has passed, one ready
/// later within the time gives its value.
async fn timeout_races_the_future_against_a_timer<R: Runtime>(rt: R) {
    use std::time::{Duration, Instant};
    assert_eq!(
        gate_rt::timeout(&rt, Duration::ZERO, async { 7 }).await,
        Ok(7)
    );
    let started = Instant::now();
    let never = std::future::pending::<()>();
    assert_eq!(
        gate_rt::timeout(&rt, Duration::from_millis(50), never).await,
        Err(gate_rt::Elapsed)
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    let later = rt.clone();
    let value = gate_rt::timeout(&rt, Duration::from_secs(30), async move {
        later.sleep(Duration::from_millis(20)).await;
        8
    });
    assert_eq!(value.await, Ok(8));
}

#[test]
fn timeout_races_the_future_against_a_timer_tokio() {
    gate_runtime_tokio::block_on(timeout_races_the_future_against_a_timer).expect("runtime");
}

#[test]
fn timeout_races_the_future_against_a_timer_smol() {
    gate_runtime_smol::block_on(timeout_races_the_future_against_a_timer).expect("runtime");
}
