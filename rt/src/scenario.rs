//! The scenario every runtime crate runs as a test: a TCP echo, a Unix socket echo, a timer, an HTTP request
//! through hyper's server and pooled client, and a QUIC stream on loopback. One body of
//! code, so the two runtimes are held to exactly the same behaviour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{client, hyper_glue, pool, quic, Runtime};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs every step; returns a description of the first failure.
pub async fn run<R: Runtime>(rt: R) -> Result<(), BoxError> {
    tcp_echo(&rt).await?;
    unix_echo(&rt).await?;
    timer(&rt).await?;
    http_roundtrip(&rt).await?;
    pool_roundtrip(&rt).await?;
    quic_stream(&rt).await?;
    Ok(())
}

/// A TCP echo server and a client on loopback.
pub async fn tcp_echo<R: Runtime>(rt: &R) -> Result<(), BoxError> {
    let listener = rt.bind_tcp(loopback())?;
    let addr = R::listener_addr(&listener)?;
    rt.spawn(async move {
        while let Ok((stream, _peer)) = R::accept(&listener).await {
            let (mut rd, mut wr) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        }
    });
    let mut stream = rt.connect_tcp(addr).await?;
    let message = b"echo through the runtime";
    stream.write_all(message).await?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await?;
    if back != message {
        return Err("TCP echo returned different bytes".into());
    }
    Ok(())
}

/// A Unix socket echo server and a client, in a private temporary directory.
pub async fn unix_echo<R: Runtime>(rt: &R) -> Result<(), BoxError> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gate-rt-unix-{}-{}-{}",
        R::NAME,
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    crate::fs::ensure_private_dir(&dir)?;
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let listener = rt.bind_unix(&path)?;
    rt.spawn(async move {
        while let Ok(stream) = R::accept_unix(&listener).await {
            let (mut rd, mut wr) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        }
    });
    let mut stream = rt.connect_unix(&path).await?;
    let message = b"echo through a unix socket";
    stream.write_all(message).await?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await?;
    let _ = std::fs::remove_dir_all(&dir);
    if back != message {
        return Err("Unix socket echo returned different bytes".into());
    }
    Ok(())
}

/// A timer never fires early.
pub async fn timer<R: Runtime>(rt: &R) -> Result<(), BoxError> {
    let start = Instant::now();
    rt.sleep(Duration::from_millis(20)).await;
    if start.elapsed() < Duration::from_millis(20) {
        return Err("timer fired early".into());
    }
    let slow = rt.sleep(Duration::from_secs(3600));
    match crate::timeout(rt, Duration::from_millis(10), slow).await {
        Err(crate::Elapsed) => Ok(()),
        Ok(()) => Err("timeout did not fire".into()),
    }
}

/// hyper's server and the pooled client, over the runtime.
pub async fn http_roundtrip<R: Runtime>(rt: &R) -> Result<(), BoxError> {
    let listener = rt.bind_tcp(loopback())?;
    let addr = R::listener_addr(&listener)?;
    let server_rt = rt.clone();
    rt.spawn(async move {
        let settings = hyper_glue::ServerSettings::default();
        while let Ok((stream, _peer)) = R::accept(&listener).await {
            let conn_rt = server_rt.clone();
            let settings = settings.clone();
            server_rt.spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let body = format!("pong {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper_glue::serve_connection(conn_rt, stream, &settings, service).await;
            });
        }
    });
    let http: client::HttpClient<R, Empty<Bytes>> =
        client::http_client(rt.clone(), &client::ClientSettings::default());
    for i in 0..3 {
        let uri: http::Uri = format!("http://{addr}/ping/{i}").parse()?;
        let response = http.get(uri).await?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("unexpected status {}", response.status()).into());
        }
        let body = response.into_body().collect().await?.to_bytes();
        if body != format!("pong /ping/{i}").as_bytes() {
            return Err(format!("unexpected body {body:?}").into());
        }
    }
    // A refused connection is an error, not a hang.
    let closed = rt.bind_tcp(loopback())?;
    let closed_addr = R::listener_addr(&closed)?;
    drop(closed);
    let uri: http::Uri = format!("http://{closed_addr}/").parse()?;
    if http.get(uri).await.is_ok() {
        return Err("request to a closed port succeeded".into());
    }
    Ok(())
}

/// What [`raw_http_server`] shares with its test: its address, the connections it accepted
/// and the request heads it read.
type RawServer = (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
);

/// A raw HTTP/1.1 server for [`pool_roundtrip`]: counts connections, records request heads,
/// and answers `/big` with 1 MB, `/close` by closing the connection after the answer, and
/// anything else with `ok`.
fn raw_http_server<R: Runtime>(rt: &R) -> Result<RawServer, BoxError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = rt.bind_tcp(loopback())?;
    let addr = R::listener_addr(&listener)?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, seen, server_rt) = (accepted.clone(), heads.clone(), rt.clone());
    rt.spawn(async move {
        while let Ok((mut stream, _)) = R::accept(&listener).await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            server_rt.spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(head);
                    let body = if path == "/big" {
                        vec![b'x'; 1 << 20]
                    } else {
                        b"ok".to_vec()
                    };
                    let mut answer =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    answer.extend_from_slice(&body);
                    if stream.write_all(&answer).await.is_err() || path == "/close" {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, accepted, heads))
}

/// The gateway's per-core pool ([`pool::CorePool`]) against a raw server: HTTP/1.1 in origin
/// form with `Host`, a connection reused once its body was read, not reused when the body was
/// dropped unread, a connection the server closed replaced without an error, idle ones
/// dropped after the idle timeout, and a refused connection an error.
pub async fn pool_roundtrip<R: Runtime>(rt: &R) -> Result<(), BoxError> {
    use std::sync::atomic::Ordering;
    let (addr, accepted, heads) = raw_http_server(rt)?;
    let settings = client::ClientSettings {
        pool_idle_timeout: Duration::from_millis(300),
        ..client::ClientSettings::default()
    };
    let pool: pool::CorePool<R, Empty<Bytes>> = pool::CorePool::new(rt.clone(), &settings);
    let authority = addr.to_string();
    let get = |path: &str| -> Result<http::Request<Empty<Bytes>>, BoxError> {
        Ok(http::Request::get(format!("http://{addr}{path}")).body(Empty::new())?)
    };
    let read = |response: http::Response<pool::PooledBody<R, Empty<Bytes>>>| async move {
        Ok::<_, BoxError>(response.into_body().collect().await?.to_bytes())
    };
    let connections = || accepted.load(Ordering::SeqCst);

    for i in 0..3 {
        let body = read(pool.request(get(&format!("/keep/{i}?q=1"))?).await?).await?;
        if body != "ok" {
            return Err(format!("unexpected body {body:?}").into());
        }
        if pool.idle_connections(false, &authority) != 1 {
            return Err("a connection read to its end is not back in the pool".into());
        }
    }
    if connections() != 1 {
        return Err(format!("three requests took {} connections, not one", connections()).into());
    }
    let first = heads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .first()
        .map(|h| h.to_ascii_lowercase())
        .unwrap_or_default();
    if !first.starts_with("get /keep/0?q=1 http/1.1\r\n")
        || !first.contains(&format!("\r\nhost: {authority}"))
    {
        return Err(format!("not origin form with Host: {first:?}").into());
    }

    // Dropped before its end: that connection is closed, the next request opens another.
    let mut big = pool.request(get("/big")?).await?.into_body();
    let _ = big.frame().await;
    drop(big);
    if pool.idle_connections(false, &authority) != 0 {
        return Err("a connection with an unread body went back to the pool".into());
    }
    read(pool.request(get("/keep/after-big")?).await?).await?;
    if connections() != 2 {
        return Err(format!("{} connections after an unread body, not 2", connections()).into());
    }

    // The server closes the connection after answering: the next request still succeeds.
    read(pool.request(get("/close")?).await?).await?;
    rt.sleep(Duration::from_millis(50)).await;
    read(pool.request(get("/keep/after-close")?).await?).await?;
    if connections() != 3 {
        return Err(format!("{} connections after a close, not 3", connections()).into());
    }

    // Idle past the timeout: dropped, a new connection is made.
    rt.sleep(Duration::from_millis(400)).await;
    read(pool.request(get("/keep/after-idle")?).await?).await?;
    if connections() != 4 {
        return Err(format!(
            "{} connections after the idle timeout, not 4",
            connections()
        )
        .into());
    }

    // A refused connection is an error that says so.
    let closed = rt.bind_tcp(loopback())?;
    let closed_addr = R::listener_addr(&closed)?;
    drop(closed);
    match pool
        .request(http::Request::get(format!("http://{closed_addr}/")).body(Empty::new())?)
        .await
    {
        Ok(_) => return Err("request to a closed port succeeded".into()),
        Err(e) => {
            let text = format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            if !text.contains("could not connect") {
                return Err(format!("unclear connect error: {text}").into());
            }
        }
    }
    Ok(())
}

/// A bidirectional QUIC stream between two endpoints on loopback.
pub async fn quic_stream<R: Runtime>(rt: &R) -> Result<(), BoxError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert_der = cert.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()),
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)?;
    server_tls.alpn_protocols = vec![quic::TUNNEL_ALPN.to_vec()];
    let server = quic::endpoint(rt, loopback(), Some(quic::server_config(server_tls)?))?;
    let server_addr = server.local_addr()?;
    rt.spawn(async move {
        while let Some(incoming) = server.accept().await {
            let Ok(conn) = incoming.await else { continue };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let Ok(data) = recv.read_to_end(1 << 20).await else {
                    break;
                };
                let _ = send.write_all(&data).await;
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        }
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![quic::TUNNEL_ALPN.to_vec()];
    let mut client = quic::endpoint(rt, loopback(), None)?;
    client.set_default_client_config(quic::client_config(client_tls)?);
    let conn = client.connect(server_addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    send.write_all(&payload).await?;
    send.finish()?;
    let echoed = recv.read_to_end(1 << 20).await?;
    if echoed != payload {
        return Err("QUIC echo returned different bytes".into());
    }
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(())
}
