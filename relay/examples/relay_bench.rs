//! Relay benchmark driver (issue 4), run by `bench/relay.sh`. Loopback only, bounded in time.
//!
//! The relay runs as its own process (the `gate-relay` binary given with `--relay-bin`), so its
//! RSS is read from `/proc/<pid>/status` alone. This process plays the daemons (a `RelayClient`
//! each, with a small rustls HTTP responder behind it) and a direct TLS listener serving the
//! same responder. It measures, in one run:
//! - (a) one large HTTPS download through the relay vs directly from the responder, each by a
//!   client process of its own (this binary with `--client`: one thread, blocking I/O, rustls,
//!   as `curl` or a browser would be a process apart from the daemon);
//! - (b) time to first response byte of a new connection (TCP + TLS + `GET /ping`), relay vs
//!   direct, alternating, median and p99;
//! - (c) relay RSS per registered idle daemon and per open forwarded connection;
//! - (d) relay RSS with 10,000 concurrent idle forwarded connections (TLS established).
//!
//! Usage: `relay_bench --relay-bin PATH [--download-mib N] [--rounds N] [--ttfb N]
//! [--daemons N] [--connections N]`. Prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

use std::net::SocketAddr;

// The relay tests' harness: free ports and deadline waits.
#[path = "../tests/common/mod.rs"]
mod common;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gate_relay::client::{
    RelayClient, RelayClientConfig, RelayConnectionState, StreamHandler, TransportPolicy,
};
use gate_relay::identity::{Identity, RelayAddress};
use gate_rt::Runtime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SUFFIX: &str = "gate.localhost";
const MIB: u64 = 1024 * 1024;
const BLOCK: usize = 256 * 1024;

struct Options {
    relay_bin: PathBuf,
    download_mib: u64,
    rounds: usize,
    ttfb: usize,
    daemons: usize,
    connections: usize,
}

fn options() -> Result<Options, BoxError> {
    let mut o = Options {
        relay_bin: PathBuf::from("target/release/gate-relay"),
        download_mib: 1024,
        rounds: 3,
        ttfb: 200,
        daemons: 200,
        connections: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--relay-bin" => o.relay_bin = PathBuf::from(value),
            "--download-mib" => o.download_mib = value.parse()?,
            "--rounds" => o.rounds = value.parse()?,
            "--ttfb" => o.ttfb = value.parse()?,
            "--daemons" => o.daemons = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(o)
}

/// The relay child process, killed when dropped.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl RelayProcess {
    fn rss_kib(&self) -> Result<u64, BoxError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .ok_or("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or("VmRSS value")?
            .parse()?)
    }
}

/// CPU time (user + system, all threads) a process has used so far, in seconds, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms).
fn cpu_seconds(pid: &str) -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')').ok_or("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11).ok_or("utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

/// CPU seconds used so far by this process and by the relay.
fn cpu_now(relay: &RelayProcess) -> Result<(f64, f64), BoxError> {
    Ok((
        cpu_seconds("self")?,
        cpu_seconds(&relay.0.id().to_string())?,
    ))
}

fn spawn_relay(
    bin: &Path,
    dir: &Path,
    https_port: u16,
    p2p_port: u16,
) -> Result<RelayProcess, BoxError> {
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "https_port = {https_port}\np2p_port = {p2p_port}\nbind_address = \"127.0.0.1\"\n\
             domain_suffix = \"{SUFFIX}\"\nlog_level = \"warn\"\n[limits]\n\
             max_connections = 40000\nmax_connections_per_ip = 40000\n\
             max_connections_per_node = 40000\n\
             max_registrations_per_ip_per_minute = 1000\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("relay.log"))?;
    let child = Command::new(bin)
        .args(["serve", "--runtime", "tokio", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(RelayProcess(child))
}

/// A daemon: relay client plus the certificate its responder serves.
struct Daemon {
    client: RelayClient,
    name: String,
    certificate: CertificateDer<'static>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Daemon {
    fn registered(&self) -> bool {
        self.client
            .status()
            .first()
            .is_some_and(|s| s.state == RelayConnectionState::Registered)
    }
}

fn start_daemon<R: Runtime>(rt: &R, relay: RelayAddress) -> Result<Daemon, BoxError> {
    start_daemon_via(rt, relay, TransportPolicy::Quic, 443)
}

/// A daemon whose tunnel uses `transport` (`Tcp`: TLS over TCP on `tcp_port`, issue 13).
fn start_daemon_via<R: Runtime>(
    rt: &R,
    relay: RelayAddress,
    transport: TransportPolicy,
    tcp_port: u16,
) -> Result<Daemon, BoxError> {
    let identity = Identity::generate()?;
    let name = format!("{}.{SUFFIX}", identity.node_id());
    let cert = rcgen::generate_simple_self_signed(vec![name.clone()])?;
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
    let handler_acceptor = acceptor.clone();
    let handler: StreamHandler = Arc::new(move |_header, stream| {
        let acceptor = handler_acceptor.clone();
        handler_rt.spawn(async move {
            let _ = respond(acceptor, stream).await;
        });
    });
    let config = RelayClientConfig {
        relays: vec![relay],
        transport,
        tcp_port,
        ..RelayClientConfig::default()
    };
    let client = RelayClient::start(rt, endpoint, &identity, config, handler)?;
    Ok(Daemon {
        client,
        name,
        certificate,
        acceptor,
    })
}

static PAYLOAD: [u8; BLOCK] = [0x5a; BLOCK];

/// The responder: `GET /bytes/N` streams N bytes, `GET /ping` answers `ok`; a connection that
/// sends nothing stays open (idle).
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: S,
) -> Result<(), BoxError> {
    let mut tls = acceptor.accept(stream).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or_default();
    if let Some(count) = path.strip_prefix("/bytes/") {
        let mut left: u64 = count.parse()?;
        tls.write_all(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {left}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        while left > 0 {
            let n = usize::try_from(left.min(BLOCK as u64))?;
            tls.write_all(PAYLOAD.get(..n).unwrap_or_default()).await?;
            left -= n as u64;
        }
    } else {
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await?;
    }
    tls.shutdown().await?;
    Ok(())
}

fn client_config(trust: &CertificateDer<'static>) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn connect_tls<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<R::TcpStream>, BoxError> {
    let tcp = rt.connect_tcp(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    Ok(connector
        .connect(ServerName::try_from(name.to_owned())?, tcp)
        .await?)
}

/// The HTTPS client of (a), run as a process of its own (`relay_bench --client ADDR NAME
/// CERT BYTES`), as a browser or `curl` would be: one thread, blocking I/O, rustls. Prints
/// the seconds from the request to the last byte and its own CPU seconds.
fn client_main(args: &[String]) -> Result<(), BoxError> {
    let [addr, name, cert, bytes] = args else {
        return Err("usage: relay_bench --client ADDR NAME CERT_DER_FILE BYTES".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let bytes: u64 = bytes.parse()?;
    let trust = CertificateDer::from(std::fs::read(cert)?);
    let mut tls =
        rustls::ClientConnection::new(client_config(&trust)?, ServerName::try_from(name.clone())?)?;
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    use std::io::{Read, Write};
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)?;
    }
    let started = Instant::now();
    tls.writer()
        .write_all(format!("GET /bytes/{bytes} HTTP/1.1\r\nhost: {name}\r\n\r\n").as_bytes())?;
    while tls.wants_write() {
        tls.write_tls(&mut tcp)?;
    }
    // Reads from the socket in large blocks (fewer system calls than one read per TLS record),
    // decrypts, and drains the plaintext: the client should not be what limits the rate.
    let mut socket = std::io::BufReader::with_capacity(BLOCK, tcp.try_clone()?);
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    'download: loop {
        if tls.read_tls(&mut socket)? == 0 {
            break;
        }
        tls.process_new_packets()?;
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => break 'download,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The responder closes after the body; a missing close_notify is no error here.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break 'download,
                Err(e) => return Err(e.into()),
            }
        }
        while tls.wants_write() {
            tls.write_tls(&mut tcp)?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if total < bytes {
        return Err(format!("download ended after {total} of {bytes} bytes").into());
    }
    println!("{elapsed} {}", cpu_seconds("self")?);
    Ok(())
}

/// Runs one download of `bytes` in a client process; returns (seconds from the request to the
/// last byte, the client's CPU seconds).
fn download(addr: SocketAddr, name: &str, cert: &Path, bytes: u64) -> Result<(f64, f64), BoxError> {
    let output = Command::new(std::env::current_exe()?)
        .arg("--client")
        .arg(addr.to_string())
        .arg(name)
        .arg(cert)
        .arg(bytes.to_string())
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("the client process failed: {}", output.status).into());
    }
    let text = String::from_utf8(output.stdout)?;
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(elapsed)), Some(Ok(cpu))) => Ok((elapsed, cpu)),
        _ => Err(format!("unexpected client output: {text:?}").into()),
    }
}

/// Time from the TCP connect to the first byte of the response to `GET /ping`.
async fn time_to_first_byte<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut tls = connect_tls(rt, addr, name, config).await?;
    tls.write_all(format!("GET /ping HTTP/1.1\r\nhost: {name}\r\n\r\n").as_bytes())
        .await?;
    let mut first = [0u8; 1];
    if tls.read(&mut first).await? == 0 {
        return Err("no response".into());
    }
    let elapsed = started.elapsed();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    Ok(elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(rank).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Opens `count` TLS connections through the relay, spread over `daemons`, with 32 in flight;
/// they are kept open in `held`.
async fn open_idle<R: Runtime>(
    rt: &R,
    https: SocketAddr,
    daemons: &[(String, Arc<rustls::ClientConfig>)],
    count: usize,
    held: &Arc<Mutex<Vec<tokio_rustls::client::TlsStream<R::TcpStream>>>>,
) -> Result<(), BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(None::<String>));
    let targets = Arc::new(daemons.to_vec());
    let workers = 32;
    for _ in 0..workers {
        let (rt2, next, done, failed, targets, held) = (
            rt.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
            targets.clone(),
            held.clone(),
        );
        rt.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let Some((name, config)) = targets.get(i % targets.len().max(1)) else {
                    break;
                };
                match connect_tls(&rt2, https, name, config.clone()).await {
                    Ok(tls) => {
                        if let Ok(mut held) = held.lock() {
                            held.push(tls);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(format!("connection {i}: {e}"));
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    common::wait_until(
        rt,
        Duration::from_secs(300),
        "idle connections opened",
        || done.load(Ordering::SeqCst) >= count,
    )
    .await?;
    if let Some(e) = failed.lock().ok().and_then(|f| f.clone()) {
        return Err(e.into());
    }
    Ok(())
}

async fn settle<R: Runtime>(rt: &R) {
    rt.sleep(Duration::from_secs(2)).await;
}

async fn run<R: Runtime>(rt: R, o: Options) -> Result<(), BoxError> {
    let run_started = Instant::now();
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let relay_id = Identity::load_or_create(&state)?.node_id().clone();
    let (https_port, p2p_port) = common::free_ports();
    let relay = spawn_relay(&o.relay_bin, dir.path(), https_port, p2p_port)?;
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));
    let address: RelayAddress = format!("{relay_id}@127.0.0.1:{p2p_port}").parse()?;
    let log = dir.path().join("relay.log");

    // The measured daemon, and the direct listener serving the same responder.
    let daemon = start_daemon(&rt, address.clone())?;
    let registered = common::wait_until(&rt, Duration::from_secs(20), "daemon registered", || {
        daemon.registered()
    })
    .await;
    if let Err(e) = registered {
        return Err(format!("{e}\nrelay log:\n{}", std::fs::read_to_string(&log)?).into());
    }
    // A second daemon whose tunnel runs over TLS/TCP (the path when UDP is blocked).
    let daemon_tcp = start_daemon_via(&rt, address.clone(), TransportPolicy::Tcp, https_port)?;
    let registered = common::wait_until(
        &rt,
        Duration::from_secs(20),
        "daemon registered over TCP",
        || daemon_tcp.registered(),
    )
    .await;
    if let Err(e) = registered {
        return Err(format!("{e}\nrelay log:\n{}", std::fs::read_to_string(&log)?).into());
    }
    let listener = rt.bind_tcp(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let direct = R::listener_addr(&listener)?;
    let direct_acceptor = daemon.acceptor.clone();
    let accept_rt = rt.clone();
    rt.spawn(async move {
        while let Ok((tcp, _)) = R::accept(&listener).await {
            let acceptor = direct_acceptor.clone();
            accept_rt.spawn(async move {
                let _ = respond(acceptor, tcp).await;
            });
        }
    });
    let config = client_config(&daemon.certificate)?;
    let name = daemon.name.clone();

    // (a) Throughput, alternating direct and relay; the client is a process of its own.
    let cert_file = dir.path().join("daemon-cert.der");
    std::fs::write(&cert_file, daemon.certificate.as_ref())?;
    let tcp_cert_file = dir.path().join("daemon-tcp-cert.der");
    std::fs::write(&tcp_cert_file, daemon_tcp.certificate.as_ref())?;
    let mut via_tcp = Vec::new();
    let mut cpu_tcp = Vec::new();
    let bytes = o.download_mib * MIB;
    let mut via_relay = Vec::new();
    let mut via_direct = Vec::new();
    // CPU seconds per GiB of all processes taking part: client + daemon (this process) for
    // direct, client + relay + daemon through the relay. Less sensitive to other load on the
    // machine than the rates.
    let mut cpu_direct = Vec::new();
    let mut cpu_relay = Vec::new();
    let gib = bytes as f64 / (1024.0 * MIB as f64);
    for round in 0..o.rounds {
        let before = cpu_now(&relay)?;
        let (d, d_client) = download(direct, &name, &cert_file, bytes)?;
        let middle = cpu_now(&relay)?;
        let (r, r_client) = download(https, &name, &cert_file, bytes)?;
        let after = cpu_now(&relay)?;
        let gbit = |s: f64| bytes as f64 * 8.0 / s / 1e9;
        let direct_cpu = (middle.0 - before.0 + d_client) / gib;
        let relay_daemon_cpu = (after.0 - middle.0) / gib;
        let relay_client_cpu = r_client / gib;
        let relay_cpu = (after.1 - middle.1) / gib;
        eprintln!(
            "round {round}: direct {:.2} Gbit/s ({direct_cpu:.2} CPU s/GiB: client {:.2}, \
             daemon {:.2}), relay {:.2} Gbit/s ({:.2} CPU s/GiB: client {relay_client_cpu:.2}, \
             daemon {relay_daemon_cpu:.2}, relay {relay_cpu:.2})",
            gbit(d),
            d_client / gib,
            (middle.0 - before.0) / gib,
            gbit(r),
            relay_client_cpu + relay_daemon_cpu + relay_cpu,
        );
        let (t, t_client) = download(https, &daemon_tcp.name, &tcp_cert_file, bytes)?;
        let after_tcp = cpu_now(&relay)?;
        let tcp_total = (after_tcp.0 - after.0 + t_client + after_tcp.1 - after.1) / gib;
        let tcp_relay = (after_tcp.1 - after.1) / gib;
        eprintln!(
            "round {round}: relay over the TCP tunnel {:.2} Gbit/s ({tcp_total:.2} CPU s/GiB: relay {tcp_relay:.2})",
            gbit(t)
        );
        via_tcp.push(gbit(t));
        cpu_tcp.push((tcp_total, tcp_relay));
        via_direct.push(gbit(d));
        via_relay.push(gbit(r));
        cpu_direct.push(direct_cpu);
        cpu_relay.push((relay_client_cpu + relay_daemon_cpu + relay_cpu, relay_cpu));
    }
    cpu_relay.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cpu_relay_total, cpu_relay_own) = cpu_relay
        .get(cpu_relay.len() / 2)
        .copied()
        .unwrap_or_default();
    let median_f = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    cpu_tcp.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cpu_tcp_total, cpu_tcp_own) = cpu_tcp.get(cpu_tcp.len() / 2).copied().unwrap_or_default();
    let tcp_gbit = median_f(&mut via_tcp);
    let relay_gbit = median_f(&mut via_relay);
    let direct_gbit = median_f(&mut via_direct);
    let cpu_direct = median_f(&mut cpu_direct);

    // (b) Time to first byte, alternating.
    let mut ttfb_relay = Vec::new();
    let mut ttfb_direct = Vec::new();
    for _ in 0..o.ttfb {
        ttfb_direct.push(time_to_first_byte(&rt, direct, &name, config.clone()).await?);
        ttfb_relay.push(time_to_first_byte(&rt, https, &name, config.clone()).await?);
    }
    ttfb_relay.sort();
    ttfb_direct.sort();
    eprintln!("ttfb done after {:.1?}", run_started.elapsed());

    // (c) Idle daemons.
    settle(&rt).await;
    let rss_one_daemon = relay.rss_kib()?;
    let mut idle = Vec::new();
    for _ in 0..o.daemons {
        idle.push(start_daemon(&rt, address.clone())?);
    }
    common::wait_until(
        &rt,
        Duration::from_secs(120),
        "idle daemons registered",
        || idle.iter().all(Daemon::registered),
    )
    .await?;
    settle(&rt).await;
    let rss_daemons = relay.rss_kib()?;
    let per_daemon = (rss_daemons.saturating_sub(rss_one_daemon)) as f64 / o.daemons.max(1) as f64;
    eprintln!(
        "{} idle daemons registered after {:.1?}",
        o.daemons,
        run_started.elapsed()
    );

    // (c, d) Idle forwarded connections, spread over all daemons.
    let mut targets = vec![(name.clone(), config.clone())];
    for d in &idle {
        targets.push((d.name.clone(), client_config(&d.certificate)?));
    }
    let held = Arc::new(Mutex::new(Vec::new()));
    let first_step = (o.connections / 10).max(1).min(o.connections);
    open_idle(&rt, https, &targets, first_step, &held).await?;
    settle(&rt).await;
    let rss_first_step = relay.rss_kib()?;
    open_idle(&rt, https, &targets, o.connections - first_step, &held).await?;
    settle(&rt).await;
    let rss_all = relay.rss_kib()?;
    let open = held.lock().map(|h| h.len()).unwrap_or_default();
    let per_conn_all = (rss_all.saturating_sub(rss_daemons)) as f64 / open.max(1) as f64;
    let per_conn_step = (rss_all.saturating_sub(rss_first_step)) as f64
        / (open.saturating_sub(first_step)).max(1) as f64;
    eprintln!(
        "{open} idle connections open after {:.1?}",
        run_started.elapsed()
    );

    // A connection still works with all of them open.
    let ttfb_loaded = time_to_first_byte(&rt, https, &name, config.clone()).await?;
    if let Ok(mut h) = held.lock() {
        h.clear();
    }

    let relay_p50 = percentile(&ttfb_relay, 0.5);
    let direct_p50 = percentile(&ttfb_direct, 0.5);
    let relay_p99 = percentile(&ttfb_relay, 0.99);
    let direct_p99 = percentile(&ttfb_direct, 0.99);
    let added_p50 = ms(relay_p50) - ms(direct_p50);
    let added_p99 = ms(relay_p99) - ms(direct_p99);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let throughput_verdict = format!(
        "2 Gbit/s {}, 50% {}",
        verdict(relay_gbit >= 2.0),
        verdict(relay_gbit >= 0.5 * direct_gbit)
    );
    println!();
    println!("| measure | via relay | direct | ratio / delta | target | verdict |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| (a) one HTTPS download, {} MiB, median of {} (Gbit/s) | {:.2} | {:.2} | {:.0}% of direct | >= 2 Gbit/s and >= 50% | {} |",
        o.download_mib,
        o.rounds,
        relay_gbit,
        direct_gbit,
        relay_gbit / direct_gbit * 100.0,
        throughput_verdict
    );
    println!(
        "| (a) CPU seconds per GiB downloaded, median (all processes; relay process alone) | {:.2} ({:.2}) | {:.2} | {:.0}% of direct's CPU per byte | (info) | |",
        cpu_relay_total,
        cpu_relay_own,
        cpu_direct,
        cpu_relay_total / cpu_direct * 100.0
    );
    println!(
        "| (a) the same over the TCP tunnel (UDP blocked), median (Gbit/s) | {:.2} | {:.2} | {:.0}% of direct | (info) | |",
        tcp_gbit,
        direct_gbit,
        tcp_gbit / direct_gbit * 100.0,
    );
    println!(
        "| (a) CPU seconds per GiB over the TCP tunnel (all processes; relay alone) | {:.2} ({:.2}) | {:.2} | {:.0}% of direct's CPU per byte | (info) | |",
        cpu_tcp_total,
        cpu_tcp_own,
        cpu_direct,
        cpu_tcp_total / cpu_direct * 100.0
    );
    println!(
        "| (b) new connection to first byte, median of {} (ms) | {:.3} | {:.3} | {:+.3} ms | <= +0.5 ms | {} |",
        o.ttfb,
        ms(relay_p50),
        ms(direct_p50),
        added_p50,
        verdict(added_p50 <= 0.5)
    );
    println!(
        "| (b) new connection to first byte, p99 (ms) | {:.3} | {:.3} | {:+.3} ms | (info) | |",
        ms(relay_p99),
        ms(direct_p99),
        added_p99
    );
    println!(
        "| (c) relay RSS per registered idle daemon ({} daemons) | {:.1} KiB | | {} -> {} KiB | (info) | |",
        o.daemons, per_daemon, rss_one_daemon, rss_daemons
    );
    println!(
        "| (c) relay RSS per open forwarded connection ({} open) | {:.1} KiB | | marginal {:.1} KiB ({} -> {}) | <= 64 KiB | {} |",
        open,
        per_conn_all,
        per_conn_step,
        first_step,
        open,
        verdict(per_conn_all <= 64.0)
    );
    println!(
        "| (d) relay RSS with {} idle forwarded connections | {:.1} MB | | | <= 200 MB | {} |",
        open,
        rss_all as f64 * 1024.0 / 1e6,
        verdict(rss_all as f64 * 1024.0 / 1e6 <= 200.0 && open >= o.connections)
    );
    println!(
        "| (d) new connection to first byte with them open (ms) | {:.3} | | | (info) | |",
        ms(ttfb_loaded)
    );
    println!();
    println!(
        "relay RSS (KiB): 1 daemon {rss_one_daemon}; with {} more idle daemons {rss_daemons}; and {first_step} idle connections {rss_first_step}; and {open} idle connections {rss_all}. Run took {:.1?}.",
        o.daemons,
        run_started.elapsed()
    );
    drop(relay);
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--client") {
        return client_main(args.get(1..).unwrap_or_default());
    }
    let o = options()?;
    gate_runtime_tokio::block_on(|rt| run(rt, o))??;
    Ok(())
}
