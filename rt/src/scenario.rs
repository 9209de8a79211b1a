//! The scenario every runtime crate runs as a test: a TCP echo, a Unix socket echo, a timer, an HTTP request
//! through hyper's server and pooled client, and a QUIC stream on loopback. One body of
//! code, so the two runtimes are held to exactly the same behaviour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{client, hyper_glue, quic, Runtime};

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
