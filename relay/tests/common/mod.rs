//! Test harness: a relay and daemons (a `RelayClient` plus a small TLS responder) on loopback,
//! real TLS clients, and condition waits with deadlines. Generic over the runtimes, so every
//! scenario runs on tokio, on smol, and with the relay on smol and the daemon on tokio.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gate_relay::client::{
    RelayClient, RelayClientConfig, RelayConnectionState, RelayStatus, StreamHandler,
    TransportPolicy,
};
use gate_relay::identity::{Identity, RelayAddress};
use gate_relay::server::{self, RunningRelay};
use gate_relay::settings::RelaySettings;
use gate_rt::Runtime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const SUFFIX: &str = "gate.localhost";
pub const HANDSHAKE_TIMEOUT_MS: u64 = 1_000;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `scenario` with the relay on runtime A and the daemon side on runtime B.
pub fn tokio_tokio<F, Fut>(scenario: F)
where
    F: FnOnce(gate_runtime_tokio::TokioRuntime, gate_runtime_tokio::TokioRuntime) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let result = gate_runtime_tokio::block_on(|rt| {
        let watchdog = rt.clone();
        bounded(watchdog, scenario(rt.clone(), rt))
    })
    .expect("tokio");
    if let Err(e) = result {
        panic!("scenario failed: {e}");
    }
}

pub fn smol_smol<F, Fut>(scenario: F)
where
    F: FnOnce(gate_runtime_smol::SmolRuntime, gate_runtime_smol::SmolRuntime) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let result = gate_runtime_smol::block_on(|rt| {
        let watchdog = rt.clone();
        bounded(watchdog, scenario(rt.clone(), rt))
    })
    .expect("smol");
    if let Err(e) = result {
        panic!("scenario failed: {e}");
    }
}

/// The relay on a smol executor (its own threads), the daemon and the test body on tokio.
pub fn smol_relay_tokio_daemon<F, Fut>(scenario: F)
where
    F: FnOnce(gate_runtime_smol::SmolRuntime, gate_runtime_tokio::TokioRuntime) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let smol_thread = std::thread::spawn(move || {
        gate_runtime_smol::block_on(|rt| async move {
            let _ = handle_tx.send(rt);
            let _ = stop_rx.recv().await;
        })
    });
    let smol_rt = handle_rx.recv().expect("smol runtime handle");
    let result = gate_runtime_tokio::block_on(|rt| {
        let watchdog = rt.clone();
        bounded(watchdog, scenario(smol_rt, rt))
    })
    .expect("tokio");
    drop(stop_tx);
    let _ = smol_thread.join();
    if let Err(e) = result {
        panic!("scenario failed: {e}");
    }
}

/// Every scenario ends within this time, passing or failing, instead of hanging.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

async fn bounded<R: Runtime>(
    rt: R,
    scenario: impl Future<Output = Result<(), BoxError>>,
) -> Result<(), BoxError> {
    match gate_rt::timeout(&rt, SCENARIO_LIMIT, scenario).await {
        Ok(result) => result,
        Err(gate_rt::Elapsed) => {
            Err(format!("scenario did not finish within {SCENARIO_LIMIT:?}").into())
        }
    }
}

/// Waits until `condition` holds, checking every 20 ms, for at most `limit`.
pub async fn wait_until<R: Runtime>(
    rt: &R,
    limit: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for: {what}").into());
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub fn test_settings() -> RelaySettings {
    let mut settings = RelaySettings {
        https_port: 0,
        p2p_port: 0,
        bind_address: [127, 0, 0, 1].into(),
        domain_suffix: SUFFIX.to_owned(),
        ..RelaySettings::default()
    };
    settings.limits.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
    settings.tunnel.heartbeat_interval_ms = 1_000;
    settings
}

/// Starts a relay; with fixed ports (a restart) it retries binding until the old sockets are
/// released, for at most 10 s.
pub async fn start_relay<R: Runtime>(
    rt: &R,
    settings: RelaySettings,
    identity: &Identity,
    state_dir: &Path,
) -> Result<RunningRelay<R>, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match server::start(rt.clone(), settings.clone(), identity, state_dir).await {
            Ok(relay) => return Ok(relay),
            Err(server::ServeError::Bind { .. }) if Instant::now() < deadline => {
                rt.sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`start_relay`] with a new identity, its state in a new temporary directory that lives as
/// long as the returned handle.
pub async fn start_test_relay<R: Runtime>(
    rt: &R,
    settings: RelaySettings,
) -> Result<(tempfile::TempDir, RunningRelay<R>), BoxError> {
    let dir = tempfile::tempdir()?;
    let identity = Identity::load_or_create(dir.path())?;
    let relay = start_relay(rt, settings, &identity, dir.path()).await?;
    Ok((dir, relay))
}

/// A daemon: its identity, relay client, and the TLS certificate its responder serves.
pub struct TestDaemon {
    pub client: RelayClient,
    pub node_name: String,
    pub custom_name: Option<String>,
    pub certificate: CertificateDer<'static>,
    pub endpoint: quinn::Endpoint,
}

impl TestDaemon {
    pub fn status(&self) -> RelayStatus {
        self.client
            .status()
            .into_iter()
            .next()
            .expect("one relay configured")
    }

    pub fn is_registered(&self) -> bool {
        self.status().state == RelayConnectionState::Registered
    }
}

pub fn relay_address<R: Runtime>(relay: &RunningRelay<R>, quic_index: usize) -> RelayAddress {
    let addr = relay.quic_addrs()[quic_index];
    format!("{}@127.0.0.1:{}", relay.node_id(), addr.port())
        .parse()
        .expect("relay address")
}

/// Starts a daemon-side relay client whose forwarded streams are served by a small TLS
/// responder (rustls, self-signed certificate for the node name and the custom name).
pub fn start_daemon<R: Runtime>(
    rt: &R,
    relay: RelayAddress,
    custom_label: Option<&str>,
) -> Result<TestDaemon, BoxError> {
    start_daemon_full(rt, vec![relay], custom_label, Vec::new(), None, None)
}

/// [`start_daemon`] presenting the registration token `token`.
pub fn start_daemon_with_token<R: Runtime>(
    rt: &R,
    relay: RelayAddress,
    custom_label: Option<&str>,
    token: Option<&str>,
) -> Result<TestDaemon, BoxError> {
    start_daemon_full(rt, vec![relay], custom_label, Vec::new(), None, token)
}

/// [`start_daemon`] with the transport policy `transport`, dialling the tunnel over TCP on
/// `tcp_port`.
pub fn start_daemon_via<R: Runtime>(
    rt: &R,
    relay: RelayAddress,
    transport: TransportPolicy,
    tcp_port: u16,
) -> Result<TestDaemon, BoxError> {
    start_daemon_full(
        rt,
        vec![relay],
        None,
        Vec::new(),
        Some((transport, tcp_port)),
        None,
    )
}

/// [`start_daemon`] trusting `extra_ca` for relays that are not pinned.
pub fn start_daemon_with_ca<R: Runtime>(
    rt: &R,
    relay: RelayAddress,
    extra_ca: CertificateDer<'static>,
) -> Result<TestDaemon, BoxError> {
    start_daemon_full(rt, vec![relay], None, vec![extra_ca], None, None)
}

/// [`start_daemon`] registering with every relay of `relays` (as a daemon with several
/// `relay.addresses` does).
pub fn start_daemon_on_relays<R: Runtime>(
    rt: &R,
    relays: Vec<RelayAddress>,
    custom_label: Option<&str>,
) -> Result<TestDaemon, BoxError> {
    start_daemon_full(rt, relays, custom_label, Vec::new(), None, None)
}

fn start_daemon_full<R: Runtime>(
    rt: &R,
    relays: Vec<RelayAddress>,
    custom_label: Option<&str>,
    extra_ca: Vec<CertificateDer<'static>>,
    transport: Option<(TransportPolicy, u16)>,
    token: Option<&str>,
) -> Result<TestDaemon, BoxError> {
    let identity = Identity::generate()?;
    let node_name = format!("{}.{SUFFIX}", identity.node_id());
    let custom_name = custom_label.map(|label| format!("{label}.{SUFFIX}"));
    let mut names = vec![node_name.clone()];
    names.extend(custom_name.clone());
    let cert = rcgen::generate_simple_self_signed(names)?;
    let certificate = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certificate.clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let endpoint = identity.quic_endpoint(rt, SocketAddr::from(([127, 0, 0, 1], 0)), None)?;
    let handler_rt = rt.clone();
    let handler: StreamHandler = Arc::new(move |header, stream| {
        let acceptor = acceptor.clone();
        handler_rt.spawn(async move {
            if let Err(e) = respond(acceptor, stream, &header.server_name).await {
                eprintln!("responder: {e}");
            }
        });
    });
    let mut config = RelayClientConfig {
        relays,
        custom_label: custom_label.map(str::to_owned),
        token: token.map(gate_core::config::Secret::new),
        extra_ca,
        ..RelayClientConfig::default()
    };
    if let Some((policy, tcp_port)) = transport {
        config.transport = policy;
        config.tcp_port = tcp_port;
    }
    config.session.backoff_base = Duration::from_millis(100);
    config.session.backoff_cap = Duration::from_millis(500);
    config.session.min_heartbeat_interval = Duration::from_millis(100);
    let client = RelayClient::start(rt, endpoint.clone(), &identity, config, handler)?;
    Ok(TestDaemon {
        client,
        node_name,
        custom_name,
        certificate,
        endpoint,
    })
}

/// The responder: TLS, then either `GET /health` -> `ok`, or `ECHO` -> echoes everything
/// until the client half-closes.
async fn respond(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: gate_relay::support::TunnelStream,
    _server_name: &str,
) -> Result<(), BoxError> {
    let mut tls = acceptor.accept(stream).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"ECHO\n") {
        if head.len() > 8192 || tls.read(&mut byte).await? == 0 {
            return Err("no request".into());
        }
        head.push(byte[0]);
    }
    if head.starts_with(b"ECHO\n") {
        let (mut reader, mut writer) = tokio::io::split(tls);
        tokio::io::copy(&mut reader, &mut writer).await?;
        writer.shutdown().await?;
        return Ok(());
    }
    if head.starts_with(b"GET /health ") {
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await?;
    } else {
        tls.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
    }
    tls.shutdown().await?;
    Ok(())
}

pub fn client_config(
    trust: &CertificateDer<'static>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// A TLS connection through the relay to `name`, checked against `trust`; returns the stream
/// and the certificate the server presented.
pub async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: S,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(tokio_rustls::client::TlsStream<S>, CertificateDer<'static>), BoxError> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(ServerName::try_from(name.to_owned())?, tcp)
        .await?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no certificate")?;
    Ok((tls, presented))
}

/// [`tls_connect`] through the relay's HTTPS address `relay_https` to `daemon` by its node
/// name, trusting its certificate.
pub async fn tls_to_daemon<R: Runtime>(
    rt: &R,
    relay_https: SocketAddr,
    daemon: &TestDaemon,
) -> Result<
    (
        tokio_rustls::client::TlsStream<R::TcpStream>,
        CertificateDer<'static>,
    ),
    BoxError,
> {
    let tcp = rt.connect_tcp(relay_https).await?;
    tls_connect(
        tcp,
        &daemon.node_name,
        client_config(&daemon.certificate, Vec::new())?,
    )
    .await
}

/// `GET /health` over `tls`; returns the body.
pub async fn get_health<S: AsyncRead + AsyncWrite + Unpin>(
    mut tls: tokio_rustls::client::TlsStream<S>,
    name: &str,
) -> Result<String, BoxError> {
    tls.write_all(
        format!("GET /health HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (_, body) = text.split_once("\r\n\r\n").ok_or("no response head")?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected response {text:?}").into());
    }
    Ok(body.to_owned())
}

/// Full health check through the relay with rustls: the body, and that the certificate seen
/// is the daemon's.
pub async fn health_via_relay<R: Runtime>(
    rt: &R,
    relay_https: SocketAddr,
    name: &str,
    daemon_cert: &CertificateDer<'static>,
) -> Result<(), BoxError> {
    let attempt = async {
        let tcp = rt.connect_tcp(relay_https).await?;
        let (tls, presented) =
            tls_connect(tcp, name, client_config(daemon_cert, Vec::new())?).await?;
        if presented != *daemon_cert {
            return Err::<(), BoxError>("the certificate seen is not the daemon's".into());
        }
        let body = get_health(tls, name).await?;
        if body != "ok" {
            return Err(format!("unexpected body {body:?}").into());
        }
        Ok(())
    };
    match gate_rt::timeout(rt, Duration::from_secs(30), attempt).await {
        Ok(result) => result,
        Err(gate_rt::Elapsed) => Err(format!("GET /health via {name} took over 30 s").into()),
    }
}

/// [`health_via_relay`] to `daemon` by its node name.
pub async fn daemon_health<R: Runtime>(
    rt: &R,
    relay_https: SocketAddr,
    daemon: &TestDaemon,
) -> Result<(), BoxError> {
    health_via_relay(rt, relay_https, &daemon.node_name, &daemon.certificate).await
}

/// Runs a blocking closure on its own thread and awaits its result without blocking the
/// executor.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = async_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send_blocking(f());
    });
    rx.recv().await.expect("blocking thread finished")
}

/// A stream wrapper that writes at most `chunk` bytes per write call, flushing each, so a
/// ClientHello reaches the relay in many small TCP segments.
pub struct Trickle<S> {
    pub inner: S,
    pub chunk: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let chunk = self.chunk.max(1).min(buf.len());
        std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..chunk])
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub fn pem(cert: &CertificateDer<'_>) -> String {
    let b64 = data_encoding::BASE64.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Two free ports: one free for TCP and UDP (https_port), one free for UDP (p2p_port).
pub fn free_ports() -> (u16, u16) {
    loop {
        let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(https) = tcp.local_addr().map(|a| a.port()) else {
            continue;
        };
        let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", https)) else {
            continue;
        };
        let Ok(p2p) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(p2p_port) = p2p.local_addr().map(|a| a.port()) else {
            continue;
        };
        drop((tcp, udp, p2p));
        return (https, p2p_port);
    }
}

/// A UDP forwarder in front of a relay's QUIC port that can drop every datagram, as a network
/// that blocks UDP does: std threads, one client (the daemon's endpoint), stopped on drop.
pub struct UdpGate {
    /// Where the daemon sends its QUIC datagrams.
    pub addr: SocketAddr,
    blocked: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl UdpGate {
    /// A gate to `target`, dropping everything while `blocked`.
    pub fn start(target: SocketAddr, blocked: bool) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let front = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let back = std::net::UdpSocket::bind("127.0.0.1:0")?;
        back.connect(target)?;
        let tick = Some(Duration::from_millis(50));
        front.set_read_timeout(tick)?;
        back.set_read_timeout(tick)?;
        let addr = front.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(blocked));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let (front2, back2) = (front.try_clone()?, back.try_clone()?);
        {
            let (blocked, stop, client) = (blocked.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        if let Ok(mut c) = client.lock() {
                            *c = Some(from);
                        }
                        if !blocked.load(Ordering::Relaxed) {
                            let _ = back.send(&buf[..n]);
                        }
                    }
                }
            });
        }
        {
            let (blocked, stop) = (blocked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = back2.recv(&mut buf) {
                        let to = client.lock().ok().and_then(|c| *c);
                        if let (Some(to), false) = (to, blocked.load(Ordering::Relaxed)) {
                            let _ = front2.send_to(&buf[..n], to);
                        }
                    }
                }
            });
        }
        Ok(Self {
            addr,
            blocked,
            stop,
        })
    }

    /// Drops (true) or passes (false) every datagram from now on.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked
            .store(blocked, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for UdpGate {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
