//! The daemon's ACME DNS-01 flow against Pebble (Debian package `pebble`), with
//! `pebble-challtestsrv` as Pebble's DNS and the relay's Cloudflare client writing TXT records
//! through the fake Cloudflare API (tests/acme/fake_cloudflare.py) into challtestsrv. A TLS
//! listener on loopback serves the `certs` resolver; a rustls client verifies what it serves
//! against Pebble's root. Both runtimes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test or tool reports failure

#[path = "../../tests/acme/harness.rs"]
mod harness;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::temp_dir;
use gate_core::config::{CloudflareConfig, DnsConfig, DnsProvider as DnsProviderKind, Secret};
use gate_daemon::acme::{load_roots, AcmeManager, AcmeSettings, ChallengeSetter};
use gate_daemon::certs::CertStore;
use gate_relay::dns::{ChallengeRecords, ChallengeSettings, Cloudflare};
use gate_rt::Runtime;
use harness::{ChallTestSrv, FakeCloudflare, Pebble};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "cf-test-token";
const ZONE: &str = "example.test";
const NAME: &str = "node1.example.test";
/// A name first asked for while the DNS provider is down.
const FRESH: &str = "api.node1.example.test";

/// The integrator's setter goes through the relay; here it calls the relay's manager directly.
struct DirectSetter<R: Runtime> {
    records: ChallengeRecords<R, Cloudflare<R>>,
}

impl<R: Runtime> ChallengeSetter for DirectSetter<R> {
    async fn set(&self, record_name: &str, value: &str) -> Result<(), String> {
        self.records
            .set("node1", record_name, value)
            .await
            .map_err(|e| e.to_string())
    }
    async fn clear(&self, record_name: &str) -> Result<(), String> {
        self.records
            .clear(record_name)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A TLS echo server on loopback serving `store`'s certificate; returns its port.
fn serve_tls<R: Runtime>(rt: &R, store: &Arc<CertStore>) -> u16 {
    let listener = rt
        .bind_tcp("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = R::listener_addr(&listener).expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config(&[b"http/1.1"]));
    let spawner = rt.clone();
    rt.spawn(async move {
        while let Ok((tcp, _)) = R::accept(&listener).await {
            let acceptor = acceptor.clone();
            spawner.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                // An HTTP GET (from curl) gets a tiny answer; anything else is echoed.
                if let Ok(n) = tls.read(&mut buf).await {
                    if buf[..n].starts_with(b"GET ") {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                            .await;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let _ = tls.flush().await;
                }
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = tls.flush().await;
                }
            });
        }
    });
    port
}

type ClientTls<R> = tokio_rustls::client::TlsStream<<R as Runtime>::TcpStream>;

/// Connects and verifies against `roots`; returns the stream and the served leaf.
async fn connect<R: Runtime>(
    rt: &R,
    port: u16,
    roots: &[CertificateDer<'static>],
) -> Result<(ClientTls<R>, CertificateDer<'static>), std::io::Error> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root parses");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = rt
        .connect_tcp(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let tls = connector
        .connect(ServerName::try_from(NAME).expect("name"), tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .expect("a peer certificate");
    Ok((tls, leaf))
}

async fn echo<R: Runtime>(tls: &mut ClientTls<R>, text: &[u8]) {
    tls.write_all(text).await.expect("write");
    tls.flush().await.expect("flush");
    let mut back = vec![0u8; text.len()];
    tls.read_exact(&mut back).await.expect("read");
    assert_eq!(back, text);
}

async fn wait_until<R: Runtime>(rt: &R, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        rt.sleep(Duration::from_millis(100)).await;
    }
}

async fn pebble_flow<R: Runtime>(rt: R) {
    let dir = temp_dir(&format!("acme-{}", R::NAME));
    let chall = ChallTestSrv::start();
    let fake = FakeCloudflare::start(TOKEN, "zone-1", ZONE, Some(&chall.management_url()));
    let pebble = Pebble::start(&dir.join("pebble"), &chall, 3600);
    let pebble_root: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pebble.root_pem().as_bytes())
            .collect::<Result<_, _>>()
            .expect("Pebble root parses");

    let dns = DnsConfig {
        enabled: true,
        provider: DnsProviderKind::Cloudflare,
        cloudflare: CloudflareConfig {
            api_token: Some(Secret::new(TOKEN)),
            zone_id: Some("zone-1".into()),
            api_url: fake.api_url.clone(),
        },
    };
    let records = ChallengeRecords::from_config(
        rt.clone(),
        &dns,
        ChallengeSettings {
            propagation_delay: Duration::ZERO,
            ..ChallengeSettings::default()
        },
    );
    let setter = Arc::new(DirectSetter { records });

    let state_dir = dir.join("state");
    let names = vec![NAME.to_owned()];
    let store = CertStore::open(&state_dir, &names).expect("cert store");
    assert!(store.info().self_signed);
    let port = serve_tls(&rt, &store);

    // Self-signed: a client trusting only Pebble's root refuses it.
    assert!(connect(&rt, port, &pebble_root).await.is_err());

    let settings = AcmeSettings {
        directory_url: pebble.directory_url(),
        email: Some("ops@example.test".into()),
        names: names.clone(),
        renew_before: Duration::from_secs(60),
        retry_initial: Duration::from_millis(200),
        retry_max: Duration::from_secs(2),
        poll_interval: Duration::from_millis(100),
        order_timeout: Duration::from_secs(60),
        extra_roots: load_roots(&pebble.https_ca_file).expect("pebble HTTPS CA"),
    };
    let manager = AcmeManager::new(
        rt.clone(),
        &state_dir,
        settings.clone(),
        setter.clone(),
        store.clone(),
    );

    // First certificate.
    let first = manager
        .renew_now()
        .await
        .expect("a certificate from Pebble");
    assert!(!first.self_signed);
    assert_eq!(first.names, names);
    let status = manager.status();
    assert_eq!(status.last_error, None);
    assert_eq!(status.certificate.as_ref(), Some(&first));
    assert!(fake.records().is_empty(), "challenge records are removed");
    {
        use std::os::unix::fs::PermissionsExt;
        let key_mode = std::fs::metadata(store.paths().0)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let account = state_dir.join("acme/account.json");
        let mode = std::fs::metadata(account)
            .expect("account")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (mut open_conn, leaf) = connect(&rt, port, &pebble_root)
        .await
        .expect("the served certificate verifies against Pebble's root");
    assert_eq!(serial_of(&leaf), first.serial);
    echo::<R>(&mut open_conn, b"before renewal").await;
    curl_verifies(&rt, port, &dir.join("pebble-root.pem"), &pebble.root_pem()).await;

    // Renewal: a window longer than the certificate's life renews at once.
    let eager_manager = || {
        AcmeManager::new(
            rt.clone(),
            &state_dir,
            AcmeSettings {
                renew_before: Duration::from_secs(10 * 3600),
                ..settings.clone()
            },
            setter.clone(),
            store.clone(),
        )
    };
    let renewing = eager_manager();
    rt.spawn(renewing.clone().run());
    wait_until(&rt, "a renewed certificate", || {
        store.info().serial != first.serial
    })
    .await;
    renewing.stop();
    wait_until(&rt, "the renewal loop to stop", || !renewing.is_running()).await;
    let second = store.info();
    let (_, leaf) = connect(&rt, port, &pebble_root)
        .await
        .expect("the renewed certificate verifies");
    assert_ne!(
        serial_of(&leaf),
        first.serial,
        "a new connection sees the new certificate"
    );
    echo::<R>(&mut open_conn, b"after renewal").await;

    // Reopening the store loads the stored certificate.
    let reopened = CertStore::open(&state_dir, &names).expect("reopen");
    assert!(!reopened.info().self_signed);

    // Provider failure: the current certificate stays, the error is reported, retries back off.
    // ACME servers may reuse a valid authorization in a new order (Let's Encrypt does for
    // weeks, Pebble at random even with PEBBLE_AUTHZREUSE=0), and then no DNS record is
    // written, so a DNS outage cannot stop that renewal. The failing manager therefore also
    // asks for a name never validated: every attempt needs a TXT record.
    let wider: Vec<String> = vec![NAME.to_owned(), FRESH.to_owned()];
    let failing = AcmeManager::new(
        rt.clone(),
        &state_dir,
        AcmeSettings {
            names: wider.clone(),
            // Renews at once after recovering too, so `stop` is seen soon (it acts between
            // attempts, not during a nap).
            renew_before: Duration::from_secs(10 * 3600),
            ..settings.clone()
        },
        setter.clone(),
        store.clone(),
    );
    fake.set_failure(500);
    let serial_before = store.info().serial;
    let err = failing.renew_now().await.expect_err("provider down");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert!(!err.to_string().contains(TOKEN), "{err}");
    assert_eq!(store.info().serial, serial_before);
    let status = failing.status();
    assert!(status
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("HTTP 500"));
    assert_eq!(status.consecutive_failures, 1);
    rt.spawn(failing.clone().run());
    wait_until(&rt, "three failures in a row, next retry scheduled", || {
        let s = failing.status();
        s.consecutive_failures >= 3 && s.next_attempt > s.last_attempt
    })
    .await;
    let status = failing.status();
    let gap = status
        .next_attempt
        .zip(status.last_attempt)
        .and_then(|(next, last)| next.duration_since(last).ok())
        .unwrap_or_default();
    assert!(gap >= Duration::from_millis(800), "backoff grows: {gap:?}");
    assert_eq!(
        store.info().serial,
        serial_before,
        "current certificate kept"
    );
    // The provider recovers: the next retry succeeds.
    fake.set_failure(0);
    wait_until(&rt, "recovery after the provider is back", || {
        failing.status().consecutive_failures == 0
    })
    .await;
    failing.stop();
    wait_until(&rt, "the retry loop to stop", || !failing.is_running()).await;
    assert_eq!(failing.status().last_error, None);
    let recovered = store.info();
    assert_ne!(recovered.serial, second.serial);
    let mut named = recovered.names.clone();
    named.sort();
    let mut wanted = wider.clone();
    wanted.sort();
    assert_eq!(named, wanted, "the new certificate names both");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `curl --cacert <Pebble's root>` (no `-k`) fetches from the TLS listener.
async fn curl_verifies<R: Runtime>(rt: &R, port: u16, root_path: &std::path::Path, root_pem: &str) {
    std::fs::write(root_path, root_pem).expect("write root");
    let args = vec![
        "-sS".to_owned(),
        "--max-time".to_owned(),
        "20".to_owned(),
        "--cacert".to_owned(),
        root_path.display().to_string(),
        "--resolve".to_owned(),
        format!("{NAME}:{port}:127.0.0.1"),
        format!("https://{NAME}:{port}/"),
    ];
    // curl blocks: run it on a thread and poll, so the runtime keeps serving.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::process::Command::new("curl").args(&args).output());
    });
    let output = loop {
        if let Ok(out) = rx.try_recv() {
            break out.expect("run curl");
        }
        rt.sleep(Duration::from_millis(50)).await;
    };
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"ok");
}

fn serial_of(leaf: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("leaf parses");
    cert.raw_serial_as_string().replace(':', "")
}

#[test]
fn acme_with_pebble_tokio() {
    if harness::require_pebble() {
        gate_runtime_tokio::block_on(pebble_flow).expect("runtime");
    }
}

#[test]
fn acme_with_pebble_smol() {
    if harness::require_pebble() {
        gate_runtime_smol::block_on(pebble_flow).expect("runtime");
    }
}
