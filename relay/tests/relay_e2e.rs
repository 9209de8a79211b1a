//! End to end on loopback: a relay, daemons (RelayClient + a rustls responder), and real TLS
//! clients (rustls, curl, openssl s_client). Every scenario runs on tokio, on smol, and with
//! the relay on smol and the daemon side on tokio.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gate_relay::client::AcmeError;
use gate_relay::identity::Identity;
use gate_rt::Runtime;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGISTER_LIMIT: Duration = Duration::from_secs(15);

/// Waits (at most [`REGISTER_LIMIT`]) until `daemon` is registered with its relay.
async fn registered<R: Runtime>(rt: &R, daemon: &TestDaemon) -> Result<(), BoxError> {
    wait_until(rt, REGISTER_LIMIT, "daemon registered", || {
        daemon.is_registered()
    })
    .await
}

fn is_unrecognized_name(error: &BoxError) -> bool {
    let io = error.downcast_ref::<std::io::Error>();
    let tls = io
        .and_then(|e| e.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    matches!(
        tls,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnrecognisedName
        ))
    )
}

async fn expect_unrecognized_name<R: Runtime>(
    rt: &R,
    relay_https: std::net::SocketAddr,
    name: &str,
    trust: &rustls::pki_types::CertificateDer<'static>,
) -> Result<(), BoxError> {
    let tcp = rt.connect_tcp(relay_https).await?;
    match tls_connect(tcp, name, client_config(trust, Vec::new())?).await {
        Ok(_) => Err(format!("TLS to {name} succeeded; expected unrecognized_name").into()),
        Err(e) if is_unrecognized_name(&e) => Ok(()),
        Err(e) => Err(format!("TLS to {name} failed with {e}; expected unrecognized_name").into()),
    }
}

/// A real ClientHello for `name` as rustls would send it.
fn client_hello(config: Arc<rustls::ClientConfig>, name: &str) -> Result<Vec<u8>, BoxError> {
    let mut conn = rustls::ClientConnection::new(config, ServerName::try_from(name.to_owned())?)?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello)?;
    }
    Ok(hello)
}

/// Waits until the peer closes the connection (EOF or error) and returns how long it took.
async fn time_until_closed<R: Runtime>(
    rt: &R,
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut sink = [0u8; 256];
    let closed = gate_rt::timeout(rt, limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    match closed {
        Ok(()) => Ok(start.elapsed()),
        Err(_) => Err(format!("the relay did not close the connection within {limit:?}").into()),
    }
}

// ---------------------------------------------------------------------------------------------

async fn forwarding<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let relay_state = dir.path().join("relay");
    let relay_identity = Identity::load_or_create(&relay_state)?;
    let mut settings = test_settings();
    settings.metrics_port = Some(0);
    let relay = start_relay(&relay_rt, settings, &relay_identity, &relay_state).await?;
    let daemon = start_daemon(&rt, relay_address(&relay, 0), None)?;
    registered(&rt, &daemon).await?;
    let status = daemon.status();
    assert_eq!(status.names, vec![daemon.node_name.clone()]);
    // The relay announces its HTTPS port (a free one here, not 443), so the URL carries it.
    assert_eq!(
        status.public_urls,
        vec![format!(
            "https://{}:{}/",
            daemon.node_name,
            relay.https_addr().port()
        )]
    );
    assert_eq!(status.registrations, 1);

    let https = relay.https_addr();
    let name = daemon.node_name.clone();
    health_via_relay(&rt, https, &name, &daemon.certificate).await?;

    // curl, trusting only the daemon's certificate.
    let pem_path = dir.path().join("daemon.pem");
    std::fs::write(&pem_path, pem(&daemon.certificate))?;
    let port = https.port();
    let (curl_name, curl_pem) = (name.clone(), pem_path.clone());
    let curl = blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--resolve"])
            .arg(format!("{curl_name}:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&curl_pem)
            .arg(format!("https://{curl_name}:{port}/health"))
            .output()
    })
    .await?;
    assert!(
        curl.status.success() && curl.stdout == b"ok",
        "curl: {:?} {} {}",
        curl.status,
        String::from_utf8_lossy(&curl.stdout),
        String::from_utf8_lossy(&curl.stderr)
    );

    // openssl s_client with -servername: sees the daemon's certificate and the answer.
    let ossl_name = name.clone();
    let openssl = blocking(move || -> std::io::Result<std::process::Output> {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-servername", &ossl_name, "-showcerts", "-ign_eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
        }
        child.wait_with_output()
    })
    .await?;
    let out = String::from_utf8_lossy(&openssl.stdout);
    let daemon_pem = pem(&daemon.certificate);
    let first_line = daemon_pem.lines().nth(1).unwrap_or_default();
    assert!(
        out.contains(first_line),
        "openssl did not see the daemon's certificate:\n{out}"
    );
    assert!(
        out.contains("HTTP/1.1 200 OK\r\n") && out.contains("\r\n\r\nok"),
        "openssl:\n{out}"
    );

    // A ClientHello over 1.5 KB, written 7 bytes at a time.
    let alpn: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("protocol-{i:02}-{}", "x".repeat(28)).into_bytes())
        .collect();
    let big = client_config(&daemon.certificate, alpn)?;
    let hello_len = client_hello(big.clone(), &name)?.len();
    assert!(hello_len > 1500, "ClientHello is only {hello_len} bytes");
    let tcp = rt.connect_tcp(https).await?;
    let (tls, presented) = tls_connect(
        Trickle {
            inner: tcp,
            chunk: 7,
        },
        &name,
        big,
    )
    .await?;
    assert_eq!(presented, daemon.certificate);
    assert_eq!(get_health(tls, &name).await?, "ok");

    // Unknown names get the alert, and the relay stays up.
    expect_unrecognized_name(&rt, https, &format!("nobody.{SUFFIX}"), &daemon.certificate).await?;
    expect_unrecognized_name(&rt, https, "example.com", &daemon.certificate).await?;
    health_via_relay(&rt, https, &name, &daemon.certificate).await?;
    let stats = relay.stats();
    assert!(stats.unknown_name >= 2, "{stats:?}");
    assert!(stats.forwarded >= 5, "{stats:?}");

    // Metrics, in the Prometheus text format, on loopback.
    let metrics_addr = relay.metrics_addr().ok_or("metrics listener not started")?;
    let mut metrics = rt.connect_tcp(metrics_addr).await?;
    metrics
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    metrics.read_to_string(&mut text).await?;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("\ngate_relay_daemons_registered 1\n"),
        "{text}"
    );
    // prometheus-client's exposition: the TYPE line names the counter without `_total`.
    assert!(
        text.contains("# TYPE gate_relay_forwarded counter\n"),
        "{text}"
    );
    assert!(text.contains("\ngate_relay_forwarded_total "), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    // ACME records: only for the daemon's own names; this relay has no DNS provider.
    let own = daemon
        .client
        .set_acme_txt(&format!("_acme-challenge.{name}"), "token")
        .await;
    assert_eq!(
        own,
        Err(AcmeError::Relay(
            "DNS provider not configured on this relay".to_owned()
        ))
    );
    let foreign = daemon
        .client
        .set_acme_txt(&format!("_acme-challenge.other.{SUFFIX}"), "token")
        .await;
    assert!(
        matches!(&foreign, Err(AcmeError::Relay(m)) if m.contains("not an ACME challenge record for one of this daemon's names")),
        "{foreign:?}"
    );

    // The daemon goes away: its name gets the alert.
    daemon.client.shutdown().await;
    wait_until(&rt, REGISTER_LIMIT, "daemon offline at the relay", || {
        relay.stats().daemons_registered == 0
    })
    .await?;
    expect_unrecognized_name(&rt, https, &name, &daemon.certificate).await?;
    relay.shutdown().await;
    Ok(())
}

async fn limits<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    let mut settings = test_settings();
    settings.limits.max_connections_per_ip = 4;
    settings.limits.max_connections_per_node = 2;
    let (_dir, relay) = start_test_relay(&relay_rt, settings).await?;
    let daemon = start_daemon(&rt, relay_address(&relay, 0), None)?;
    registered(&rt, &daemon).await?;
    let https = relay.https_addr();
    let name = daemon.node_name.clone();

    // Garbage is cut off at once (no need to wait for the handshake timeout).
    let mut garbage = rt.connect_tcp(https).await?;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nhost: example\r\n\r\n")
        .await?;
    time_until_closed(&rt, &mut garbage, Duration::from_secs(10)).await?;

    // Half a ClientHello is cut off at the handshake timeout; meanwhile others are served.
    let hello = client_hello(client_config(&daemon.certificate, Vec::new())?, &name)?;
    // The relay's deadline starts at accept, which may come before connect() returns here.
    let sent_at = Instant::now();
    let mut half = rt.connect_tcp(https).await?;
    half.write_all(&hello[..hello.len() / 2]).await?;
    health_via_relay(&rt, https, &name, &daemon.certificate).await?;
    time_until_closed(&rt, &mut half, Duration::from_secs(10)).await?;
    let held = sent_at.elapsed();
    assert!(
        held >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        "closed after {held:?}, before the handshake timeout"
    );

    // One byte every 200 ms: cut off at the handshake timeout, long before the hello is whole.
    let started = Instant::now();
    let slow = rt.connect_tcp(https).await?;
    let (mut slow_reader, mut slow_writer) = tokio::io::split(slow);
    let trickle_rt = rt.clone();
    let trickle = hello.clone();
    rt.spawn(async move {
        for byte in trickle {
            if slow_writer.write_all(&[byte]).await.is_err() {
                break;
            }
            trickle_rt.sleep(Duration::from_millis(200)).await;
        }
    });
    time_until_closed(&rt, &mut slow_reader, Duration::from_secs(10)).await?;
    assert!(started.elapsed() >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
    health_via_relay(&rt, https, &name, &daemon.certificate).await?;
    wait_until(&rt, Duration::from_secs(10), "connections released", || {
        relay.stats().https_open == 0
    })
    .await?;

    // Per source IP: the fifth open connection is closed at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(rt.connect_tcp(https).await?);
    }
    wait_until(
        &rt,
        Duration::from_secs(10),
        "four connections open",
        || relay.stats().https_open == 4,
    )
    .await?;
    let mut fifth = rt.connect_tcp(https).await?;
    time_until_closed(&rt, &mut fifth, Duration::from_secs(10)).await?;
    drop(idle);
    wait_until(&rt, Duration::from_secs(10), "connections released", || {
        relay.stats().https_open == 0
    })
    .await?;
    health_via_relay(&rt, https, &name, &daemon.certificate).await?;

    // Per daemon: while two forwarded connections are open, a third one gets an alert.
    wait_until(
        &rt,
        Duration::from_secs(10),
        "earlier forwarded connections released",
        || relay.stats().forwarded_open == 0,
    )
    .await?;
    let config = client_config(&daemon.certificate, Vec::new())?;
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = rt.connect_tcp(https).await?;
        let (mut open, _) = tls_connect(tcp, &name, config.clone()).await?;
        open.write_all(b"ECHO\nping").await?;
        let mut pong = [0u8; 4];
        open.read_exact(&mut pong).await?;
        held.push(open);
    }
    let tcp = rt.connect_tcp(https).await?;
    match tls_connect(tcp, &name, config).await {
        Ok(_) => return Err("a second connection passed the per-daemon limit".into()),
        Err(e) => {
            let alert = e
                .downcast_ref::<std::io::Error>()
                .and_then(|e| e.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            assert!(
                matches!(
                    alert,
                    Some(rustls::Error::AlertReceived(
                        rustls::AlertDescription::InternalError
                    ))
                ),
                "expected an internal_error alert, got {e}"
            );
        }
    }
    drop(held);
    wait_until(
        &rt,
        Duration::from_secs(10),
        "forwarded connection released",
        || relay.stats().forwarded_open == 0,
    )
    .await?;
    health_via_relay(&rt, https, &name, &daemon.certificate).await?;

    let stats = relay.stats();
    assert!(stats.invalid_hello >= 1, "{stats:?}");
    assert!(stats.handshake_timeouts >= 2, "{stats:?}");
    assert!(stats.over_limit >= 1, "{stats:?}");
    daemon.client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

async fn claims_and_restart<RR: Runtime, DR: Runtime>(
    relay_rt: RR,
    rt: DR,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let relay_identity = Identity::load_or_create(dir.path())?;
    let relay = start_relay(&relay_rt, test_settings(), &relay_identity, dir.path()).await?;
    let shop = format!("shop.{SUFFIX}");

    // A takes the label through the p2p port; B asks for it through the UDP https port.
    let a = start_daemon(&rt, relay_address(&relay, 0), Some("shop"))?;
    wait_until(&rt, REGISTER_LIMIT, "A registered", || a.is_registered()).await?;
    assert_eq!(a.status().names, vec![a.node_name.clone(), shop.clone()]);
    let b = start_daemon(&rt, relay_address(&relay, 1), Some("shop"))?;
    wait_until(&rt, REGISTER_LIMIT, "B registered", || b.is_registered()).await?;
    let refusal = b.status().custom_name_refusal.unwrap_or_default();
    assert!(
        refusal.contains("claimed by another node"),
        "B was told: {refusal:?}"
    );
    assert_eq!(b.status().names, vec![b.node_name.clone()]);
    health_via_relay(&rt, relay.https_addr(), &shop, &a.certificate).await?;
    daemon_health(&rt, relay.https_addr(), &b).await?;

    // A leaves; the relay restarts on the same ports and state directory.
    let a_id = relay.claim_owner("shop").ok_or("no claim on shop")?;
    a.client.shutdown().await;
    let mut settings = test_settings();
    settings.https_port = relay.https_addr().port();
    settings.p2p_port = relay.quic_addrs()[0].port();
    relay.shutdown().await;
    let relay = start_relay(&relay_rt, settings, &relay_identity, dir.path()).await?;
    assert_eq!(
        relay.claim_owner("shop"),
        Some(a_id),
        "the claim did not survive the restart"
    );

    // B re-registers by itself and is still refused the held label.
    wait_until(&rt, REGISTER_LIMIT, "B registered again", || {
        let status = b.status();
        status.registrations >= 2
            && status.state == gate_relay::client::RelayConnectionState::Registered
    })
    .await?;
    let refusal = b.status().custom_name_refusal.unwrap_or_default();
    assert!(
        refusal.contains("claimed by another node"),
        "B was told: {refusal:?}"
    );
    daemon_health(&rt, relay.https_addr(), &b).await?;
    expect_unrecognized_name(&rt, relay.https_addr(), &shop, &a.certificate).await?;
    b.client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

async fn large_transfer<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    const TOTAL: usize = 64 << 20;
    let (_dir, relay) = start_test_relay(&relay_rt, test_settings()).await?;
    let daemon = start_daemon(&rt, relay_address(&relay, 0), None)?;
    registered(&rt, &daemon).await?;
    let (mut tls, _) = tls_to_daemon(&rt, relay.https_addr(), &daemon).await?;
    tls.write_all(b"ECHO\n").await?;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let (sent_tx, sent_rx) = async_channel::bounded(1);
    rt.spawn(async move {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..TOTAL / chunk.len() {
            for word in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            digest.update(&chunk);
            if let Err(e) = writer.write_all(&chunk).await {
                result = Err(e.to_string());
                break;
            }
        }
        if result.is_ok() {
            result = writer.shutdown().await.map_err(|e| e.to_string());
        }
        let _ = sent_tx
            .send((result, digest.finish().as_ref().to_vec()))
            .await;
    });
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        received += n;
        digest.update(&buf[..n]);
    }
    let (sent, sent_digest) = sent_rx.recv().await?;
    sent?;
    assert_eq!(received, TOTAL, "bytes echoed back");
    assert_eq!(digest.finish().as_ref(), sent_digest.as_slice(), "checksum");
    daemon.client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

/// A relay presenting a CA-issued certificate on QUIC; the daemon does not pin its id and
/// trusts the CA as its extra root.
async fn unpinned_relay<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gate test CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
        .signed_by(&leaf_key, &issuer)?;
    let cert_file = dir.path().join("relay.pem");
    let key_file = dir.path().join("relay.key");
    std::fs::write(&cert_file, leaf.pem())?;
    std::fs::write(&key_file, leaf_key.serialize_pem())?;

    let mut settings = test_settings();
    settings.tunnel.certificate_file = Some(cert_file);
    settings.tunnel.key_file = Some(key_file);
    let relay_identity = Identity::load_or_create(&dir.path().join("state"))?;
    let relay = start_relay(
        &relay_rt,
        settings,
        &relay_identity,
        &dir.path().join("state"),
    )
    .await?;
    let port = relay.quic_addrs()[0].port();

    // Not pinned and the CA not trusted: no registration, and the status says why.
    let untrusting = start_daemon(&rt, format!("localhost:{port}").parse()?, None)?;
    wait_until(
        &rt,
        REGISTER_LIMIT,
        "a certificate error is reported",
        || {
            untrusting
                .status()
                .last_error
                .is_some_and(|e| e.contains("certificate"))
        },
    )
    .await?;
    assert!(!untrusting.is_registered());
    untrusting.client.shutdown().await;

    // Trusting the CA: registers and serves.
    let daemon = start_daemon_with_ca(
        &rt,
        format!("localhost:{port}").parse()?,
        ca_cert.der().clone(),
    )?;
    registered(&rt, &daemon).await?;
    daemon_health(&rt, relay.https_addr(), &daemon).await?;
    daemon.client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

/// The daemon's goodbye (protocol version 3): after `RelayClient::leave` the relay refuses new
/// clients for the daemon's name with `unrecognized_name` at once, although the daemon is still
/// connected and heartbeating (so without the goodbye it would keep being routed to for as long
/// as it lives), while a connection opened before the goodbye completes its exchange.
async fn goodbye<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    /// Far below the liveness timeout of this relay (3 x 10 s heartbeats).
    const PROMPTLY: Duration = Duration::from_secs(2);
    let mut settings = test_settings();
    settings.tunnel.heartbeat_interval_ms = 10_000;
    let (_dir, relay) = start_test_relay(&relay_rt, settings).await?;
    let daemon = start_daemon(&rt, relay_address(&relay, 0), Some("bye"))?;
    registered(&rt, &daemon).await?;
    let https = relay.https_addr();
    let custom = daemon.custom_name.clone().ok_or("no custom name")?;
    daemon_health(&rt, https, &daemon).await?;

    // A connection opened before the goodbye, with one exchange done.
    let (mut tls, _) = tls_to_daemon(&rt, https, &daemon).await?;
    tls.write_all(b"ECHO\nbefore ").await?;
    let mut echoed = [0u8; 7];
    tls.read_exact(&mut echoed).await?;
    assert_eq!(&echoed, b"before ");

    let started = Instant::now();
    match gate_rt::timeout(&rt, PROMPTLY, daemon.client.leave()).await {
        Ok(()) => {}
        Err(gate_rt::Elapsed) => return Err(format!("leave() took over {PROMPTLY:?}").into()),
    }
    assert_eq!(
        daemon.status().state,
        gate_relay::client::RelayConnectionState::Leaving
    );
    // Both names are out of routing now, not after a timeout.
    expect_unrecognized_name(&rt, https, &daemon.node_name, &daemon.certificate).await?;
    expect_unrecognized_name(&rt, https, &custom, &daemon.certificate).await?;
    let refused_after = started.elapsed();
    assert!(
        refused_after < PROMPTLY,
        "unrecognized_name came {refused_after:?} after the goodbye started"
    );
    // The daemon is still connected to the relay (it only said goodbye).
    assert_eq!(relay.stats().daemons_registered, 1);

    // The old connection still works to its end.
    tls.write_all(b"after").await?;
    tls.shutdown().await?;
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await?;
    assert_eq!(rest, b"after");

    daemon.client.shutdown().await;
    wait_until(&rt, REGISTER_LIMIT, "daemon gone from the relay", || {
        relay.stats().daemons_registered == 0
    })
    .await?;
    relay.shutdown().await;
    Ok(())
}

/// A control frame that cannot be encoded is not dropped: a custom label longer than a frame
/// string holds makes `Register` unencodable, and the daemon reports why at once (and tells the
/// relay) instead of waiting out the registration timeout with nothing sent.
async fn unencodable_frame<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    /// Far below the 10 s registration timeout a silently dropped `Register` would end in.
    const PROMPTLY: Duration = Duration::from_secs(5);
    let (_dir, relay) = start_test_relay(&relay_rt, test_settings()).await?;
    let identity = Identity::generate()?;
    let endpoint =
        identity.quic_endpoint(&rt, std::net::SocketAddr::from(([127, 0, 0, 1], 0)), None)?;
    let config = gate_relay::client::RelayClientConfig {
        relays: vec![relay_address(&relay, 0)],
        custom_label: Some("x".repeat(70_000)),
        ..Default::default()
    };
    let handler: gate_relay::client::StreamHandler = Arc::new(|_, _| {});
    let client = gate_relay::client::RelayClient::start(&rt, endpoint, &identity, config, handler)?;
    let started = Instant::now();
    wait_until(&rt, PROMPTLY, "the encode failure reported", || {
        client.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("could not encode") && e.contains("custom_label"))
    })
    .await?;
    assert!(started.elapsed() < PROMPTLY);
    client.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

/// Registrations from one address are throttled: past the per-minute limit the daemon is
/// refused with a message that says why and when to try again, and it gets no name.
async fn registration_throttle<RR: Runtime, DR: Runtime>(
    relay_rt: RR,
    rt: DR,
) -> Result<(), BoxError> {
    let mut settings = test_settings();
    settings.limits.max_registrations_per_ip_per_minute = 2;
    let (_dir, relay) = start_test_relay(&relay_rt, settings).await?;
    let mut admitted = Vec::new();
    for _ in 0..2 {
        let daemon = start_daemon(&rt, relay_address(&relay, 0), None)?;
        registered(&rt, &daemon).await?;
        admitted.push(daemon);
    }
    let third = start_daemon(&rt, relay_address(&relay, 0), None)?;
    wait_until(&rt, REGISTER_LIMIT, "the third daemon refused", || {
        third
            .status()
            .last_error
            .is_some_and(|e| e.contains("too many registrations from your address"))
    })
    .await?;
    let error = third.status().last_error.unwrap_or_default();
    assert!(
        error.contains("at most 2 a minute") && error.contains("try again in"),
        "{error}"
    );
    assert_eq!(third.status().registrations, 0);
    // It keeps being refused (its retries only make it worse), and it has no name.
    rt.sleep(Duration::from_millis(500)).await;
    assert!(!third.is_registered());
    expect_unrecognized_name(
        &rt,
        relay.https_addr(),
        &third.node_name,
        &third.certificate,
    )
    .await?;
    for daemon in &admitted {
        daemon_health(&rt, relay.https_addr(), daemon).await?;
    }
    third.client.shutdown().await;
    for daemon in admitted {
        daemon.client.shutdown().await;
    }
    relay.shutdown().await;
    Ok(())
}

/// Token mode with quotas per token, end to end: the right token registers, a wrong or missing
/// one is refused with a message that says what to do; the token's custom names, forwarded
/// connections at once, bytes per day and ACME requests per hour each refuse with their
/// message; the relay's claims in total are capped.
async fn token_quotas<RR: Runtime, DR: Runtime>(relay_rt: RR, rt: DR) -> Result<(), BoxError> {
    use gate_core::tunnel::{AccessMode, AccessPolicy, Quota, RegistrationToken};
    const TEAM: &str = "team-secret-0123456789";
    const METERED: &str = "metered-secret-0123456";
    let dir = tempfile::tempdir()?;
    let relay_identity = Identity::load_or_create(dir.path())?;
    let mut settings = test_settings();
    settings.limits.max_claims = 2;
    settings.access = AccessPolicy {
        mode: AccessMode::Token,
        tokens: vec![
            RegistrationToken::new("team", TEAM),
            RegistrationToken::new("metered", METERED),
        ],
        ..AccessPolicy::default()
    };
    settings.access.quotas.per_token.insert(
        "team".into(),
        Quota {
            custom_names: Some(1),
            connections: Some(1),
            bytes_per_day: None,
            acme_requests_per_hour: Some(1),
        },
    );
    settings.access.quotas.per_token.insert(
        "metered".into(),
        Quota {
            bytes_per_day: Some(1_000),
            ..Quota::default()
        },
    );
    let relay = start_relay(&relay_rt, settings, &relay_identity, dir.path()).await?;
    let https = relay.https_addr();

    // Missing and wrong tokens: refused, told what to do, never registered.
    let none = start_daemon_with_token(&rt, relay_address(&relay, 0), Some("x"), None)?;
    let wrong = start_daemon_with_token(
        &rt,
        relay_address(&relay, 0),
        Some("y"),
        Some("team-secret-0123456788"),
    )?;
    wait_until(&rt, REGISTER_LIMIT, "the token-less daemon refused", || {
        none.status()
            .last_error
            .is_some_and(|e| e.contains("sent none") && e.contains("GATE_RELAY__TOKEN"))
    })
    .await?;
    wait_until(&rt, REGISTER_LIMIT, "the wrong token refused", || {
        wrong
            .status()
            .last_error
            .is_some_and(|e| e.contains("not one this relay accepts"))
    })
    .await?;
    let error = wrong.status().last_error.unwrap_or_default();
    assert!(
        !error.contains("0123456788"),
        "the refusal echoes the token: {error}"
    );
    assert_eq!(wrong.status().registrations, 0);
    expect_unrecognized_name(&rt, https, &wrong.node_name, &wrong.certificate).await?;
    none.client.shutdown().await;
    wrong.client.shutdown().await;

    // The right token registers; its second daemon is over the token's custom names.
    let first = start_daemon_with_token(&rt, relay_address(&relay, 0), Some("first"), Some(TEAM))?;
    registered(&rt, &first).await?;
    assert_eq!(first.status().custom_name_refusal, None);
    let second =
        start_daemon_with_token(&rt, relay_address(&relay, 0), Some("second"), Some(TEAM))?;
    registered(&rt, &second).await?;
    let refusal = second.status().custom_name_refusal.unwrap_or_default();
    assert!(
        refusal.contains("token team") && refusal.contains("custom_names"),
        "{refusal}"
    );
    daemon_health(&rt, https, &second).await?;
    // The relay counts a forwarded connection until both ends have closed it, a moment after
    // the client has its answer.
    wait_until(&rt, Duration::from_secs(10), "connection released", || {
        relay.stats().forwarded_open == 0
    })
    .await?;

    // Connections at once: the token's one connection is held, the next gets an alert.
    let name = first.custom_name.clone().unwrap_or_default();
    let config = client_config(&first.certificate, Vec::new())?;
    let tcp = rt.connect_tcp(https).await?;
    let (mut held, _) = tls_connect(tcp, &name, config.clone()).await?;
    held.write_all(b"ECHO\nping").await?;
    let mut pong = [0u8; 4];
    held.read_exact(&mut pong).await?;
    let tcp = rt.connect_tcp(https).await?;
    match tls_connect(
        tcp,
        &second.node_name,
        client_config(&second.certificate, Vec::new())?,
    )
    .await
    {
        Ok(_) => return Err("a connection passed the token's connection quota".into()),
        Err(e) => assert!(is_alert(&e, rustls::AlertDescription::InternalError), "{e}"),
    }
    drop(held);
    wait_until(&rt, Duration::from_secs(10), "connection released", || {
        relay.stats().forwarded_open == 0
    })
    .await?;
    health_via_relay(&rt, https, &name, &first.certificate).await?;

    // ACME requests per hour: the first is counted (and answered: no DNS here), the second
    // refused by the quota.
    let record = format!("_acme-challenge.{name}");
    let answer = first.client.set_acme_txt(&record, "v").await;
    assert!(
        matches!(&answer, Err(AcmeError::Relay(m)) if m.contains("DNS provider not configured")),
        "{answer:?}"
    );
    let answer = first.client.set_acme_txt(&record, "v").await;
    assert!(
        matches!(&answer, Err(AcmeError::Relay(m)) if m.contains("acme_requests_per_hour")),
        "{answer:?}"
    );

    // Claims in total: `first` holds one; a metered daemon takes the second; the third is
    // refused by limits.max_claims.
    let metered = start_daemon_with_token(
        &rt,
        relay_address(&relay, 0),
        Some("metered"),
        Some(METERED),
    )?;
    registered(&rt, &metered).await?;
    assert_eq!(metered.status().custom_name_refusal, None);
    let third =
        start_daemon_with_token(&rt, relay_address(&relay, 0), Some("third"), Some(METERED))?;
    registered(&rt, &third).await?;
    let refusal = third.status().custom_name_refusal.unwrap_or_default();
    assert!(refusal.contains("limits.max_claims"), "{refusal}");

    // Bytes per day: 1,000 for the metered token; a connection that moves more uses them up,
    // and the next is refused.
    let metered_name = metered.custom_name.clone().unwrap_or_default();
    let config = client_config(&metered.certificate, Vec::new())?;
    {
        let tcp = rt.connect_tcp(https).await?;
        let (mut big, _) = tls_connect(tcp, &metered_name, config.clone()).await?;
        let payload = vec![b'x'; 4_000];
        big.write_all(b"ECHO\n").await?;
        big.write_all(&payload).await?;
        let mut back = vec![0u8; payload.len()];
        big.read_exact(&mut back).await?;
        big.shutdown().await?;
    }
    wait_until(&rt, Duration::from_secs(10), "connection released", || {
        relay.stats().forwarded_open == 0
    })
    .await?;
    let tcp = rt.connect_tcp(https).await?;
    match tls_connect(tcp, &metered_name, config).await {
        Ok(_) => return Err("a connection passed the token's bytes per day".into()),
        Err(e) => assert!(is_alert(&e, rustls::AlertDescription::InternalError), "{e}"),
    }
    // Other tokens are not affected.
    health_via_relay(&rt, https, &name, &first.certificate).await?;

    for daemon in [first, second, metered, third] {
        daemon.client.shutdown().await;
    }
    relay.shutdown().await;
    Ok(())
}

fn is_alert(error: &BoxError, description: rustls::AlertDescription) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .and_then(|e| e.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| *e == rustls::Error::AlertReceived(description))
}

macro_rules! on_every_runtime {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn tokio() {
                super::tokio_tokio(super::$scenario);
            }
            #[test]
            fn smol() {
                super::smol_smol(super::$scenario);
            }
            #[test]
            fn relay_smol_daemon_tokio() {
                super::smol_relay_tokio_daemon(super::$scenario);
            }
        }
    };
}

on_every_runtime!(forwarding);
on_every_runtime!(limits);
on_every_runtime!(claims_and_restart);
on_every_runtime!(large_transfer);
on_every_runtime!(unpinned_relay);
on_every_runtime!(goodbye);
on_every_runtime!(unencodable_frame);
on_every_runtime!(registration_throttle);
on_every_runtime!(token_quotas);
