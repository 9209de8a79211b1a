//! Relays sharing name claims through PostgreSQL (`[store] url`, issue 15), against a real
//! PostgreSQL 15 started by the test (tests/support/store_servers.rs), on tokio and smol:
//! a custom name claimed through one relay is refused through another, a daemon registered
//! with both is reachable through either (curl), claims lapse in the store, a store outage
//! refuses new claims while routing goes on, and two relays starting together migrate once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod common;
#[path = "../../tests/support/store_servers.rs"]
mod store_servers;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gate_core::config::Secret;
use gate_relay::identity::Identity;
use gate_relay::server::RunningRelay;
use gate_rt::Runtime;
use store_servers::{PgServer, RedisServer, PG_PASSWORD};

const REGISTER_LIMIT: Duration = Duration::from_secs(15);

/// A relay on `url`, with its own state directory and identity under `dir/name`.
async fn relay_on_store<R: Runtime>(
    rt: &R,
    dir: &Path,
    name: &str,
    url: &str,
) -> Result<RunningRelay<R>, BoxError> {
    let state = dir.join(name);
    let identity = Identity::load_or_create(&state)?;
    let mut settings = test_settings();
    settings.store_url = Some(Secret::new(url));
    settings.claim_refresh_interval = Duration::from_secs(1);
    start_relay(rt, settings, &identity, &state).await
}

/// `GET /health` through the relay at `port` to `name` with curl, trusting only `cert`.
async fn curl_health(
    dir: &Path,
    port: u16,
    name: &str,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> Result<(), BoxError> {
    let pem_path = dir.join(format!("{name}-{port}.pem"));
    std::fs::write(&pem_path, pem(cert))?;
    let name = name.to_owned();
    let curl = blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--resolve"])
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&pem_path)
            .arg(format!("https://{name}:{port}/health"))
            .output()
    })
    .await?;
    if curl.status.success() && curl.stdout == b"ok" {
        return Ok(());
    }
    Err(format!(
        "curl via port {port}: {:?} {} {}",
        curl.status,
        String::from_utf8_lossy(&curl.stdout),
        String::from_utf8_lossy(&curl.stderr)
    )
    .into())
}

fn refusal(daemon: &TestDaemon) -> String {
    daemon.status().custom_name_refusal.unwrap_or_default()
}

/// A claim through one relay is refused through the other; a daemon registered with both is
/// reachable through either; the store's own claims (made by any relay) and their lapse
/// decide, not a relay's memory.
async fn shared_claims<RR: Runtime, DR: Runtime>(
    relay_rt: RR,
    rt: DR,
    pg: Arc<Mutex<PgServer>>,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let url = pg.lock().unwrap().create_database("shared_claims")?;
    let a = relay_on_store(&relay_rt, dir.path(), "a", &url).await?;
    let b = relay_on_store(&relay_rt, dir.path(), "b", &url).await?;
    let shop = format!("shop.{SUFFIX}");

    // X registers with both relays and gets `shop` from both.
    let x = start_daemon_on_relays(
        &rt,
        vec![relay_address(&a, 0), relay_address(&b, 0)],
        Some("shop"),
    )?;
    wait_until(&rt, REGISTER_LIMIT, "X registered with both relays", || {
        let statuses = x.client.status();
        statuses.len() == 2
            && statuses.iter().all(|s| {
                s.state == gate_relay::client::RelayConnectionState::Registered
                    && s.names.contains(&shop)
            })
    })
    .await?;

    // Y through B and Z through A are refused the label X holds, with today's message.
    let y = start_daemon(&rt, relay_address(&b, 0), Some("shop"))?;
    let z = start_daemon(&rt, relay_address(&a, 1), Some("shop"))?;
    wait_until(&rt, REGISTER_LIMIT, "Y and Z registered", || {
        y.is_registered() && z.is_registered()
    })
    .await?;
    for (who, daemon) in [("Y via B", &y), ("Z via A", &z)] {
        let told = refusal(daemon);
        assert!(
            told.contains("claimed by another node"),
            "{who} was told {told:?}"
        );
        assert_eq!(daemon.status().names, vec![daemon.node_name.clone()]);
    }
    let owner = pg.lock().unwrap().psql(
        "shared_claims",
        "SELECT node_id FROM gate_relay_claims WHERE label = 'shop'",
    )?;
    let owner_id = x
        .node_name
        .strip_suffix(&format!(".{SUFFIX}"))
        .unwrap()
        .to_owned();
    assert_eq!(owner, owner_id);

    // The relays report the claims of their online daemons in batches (every second here):
    // a claim made to look 40 days old is refreshed, and a row deleted by hand comes back.
    let db = |sql: &str| pg.lock().unwrap().psql("shared_claims", sql);
    db("UPDATE gate_relay_claims SET last_seen = last_seen - 40 * 86400 WHERE label = 'shop'")?;
    let fresh = format!(
        "SELECT count(*) FROM gate_relay_claims WHERE label = 'shop' AND last_seen >= {}",
        unix_now() - 60
    );
    wait_until(
        &rt,
        Duration::from_secs(10),
        "shop's last-seen refreshed",
        || db(&fresh).is_ok_and(|n| n == "1"),
    )
    .await?;
    db("DELETE FROM gate_relay_claims WHERE label = 'shop'")?;
    wait_until(&rt, Duration::from_secs(10), "shop's row put back", || {
        db("SELECT node_id FROM gate_relay_claims WHERE label = 'shop'")
            .is_ok_and(|owner| owner == owner_id)
    })
    .await?;

    // X is reachable through either relay (curl), by its custom and its node name.
    curl_health(dir.path(), a.https_addr().port(), &shop, &x.certificate).await?;
    curl_health(dir.path(), b.https_addr().port(), &shop, &x.certificate).await?;
    daemon_health(&rt, b.https_addr(), &x).await?;
    // Each relay routes only to the daemons connected to it.
    daemon_health(&rt, b.https_addr(), &y).await?;
    let a_https = a.https_addr();
    if daemon_health(&rt, a_https, &y).await.is_ok() {
        return Err("relay A routed to Y, which is connected to B only".into());
    }

    // Claims made elsewhere: one seen a minute ago holds, one absent for longer than the
    // lapse (30 days) is free, although neither relay has them in its own table.
    let stranger = Identity::generate()?.node_id().to_string();
    let lapsed_at = unix_now() - 31 * 86_400;
    pg.lock().unwrap().psql(
        "shared_claims",
        &format!(
            "INSERT INTO gate_relay_claims (label, node_id, last_seen) VALUES \
             ('held', '{stranger}', {}), ('old', '{stranger}', {lapsed_at})",
            unix_now() - 60
        ),
    )?;
    let held = start_daemon(&rt, relay_address(&a, 0), Some("held"))?;
    let old = start_daemon(&rt, relay_address(&b, 0), Some("old"))?;
    wait_until(&rt, REGISTER_LIMIT, "held and old registered", || {
        held.is_registered() && old.is_registered()
    })
    .await?;
    assert!(
        refusal(&held).contains("claimed by another node"),
        "held: {:?}",
        refusal(&held)
    );
    assert_eq!(refusal(&old), "", "a lapsed claim was not handed over");
    curl_health(
        dir.path(),
        b.https_addr().port(),
        &format!("old.{SUFFIX}"),
        &old.certificate,
    )
    .await?;
    let old_owner = pg.lock().unwrap().psql(
        "shared_claims",
        "SELECT node_id FROM gate_relay_claims WHERE label = 'old'",
    )?;
    assert_ne!(
        old_owner, stranger,
        "the store still names the lapsed owner"
    );

    for daemon in [x, y, z, held, old] {
        daemon.client.shutdown().await;
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// PostgreSQL stopped mid-run: a new claim is refused with a clear message (no password in
/// it), daemons already connected keep being routed, and once PostgreSQL is back the relay
/// reconnects by itself and grants claims again.
async fn store_outage<RR: Runtime, DR: Runtime>(
    relay_rt: RR,
    rt: DR,
    pg: Arc<Mutex<PgServer>>,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let url = pg.lock().unwrap().create_database("outage")?;
    let relay = relay_on_store(&relay_rt, dir.path(), "relay", &url).await?;
    let https = relay.https_addr();
    let before = start_daemon(&rt, relay_address(&relay, 0), Some("before"))?;
    wait_until(&rt, REGISTER_LIMIT, "first daemon registered", || {
        before.is_registered()
    })
    .await?;
    assert_eq!(refusal(&before), "");
    let before_name = format!("before.{SUFFIX}");

    pg.lock().unwrap().stop()?;
    wait_until(
        &rt,
        Duration::from_secs(10),
        "relay sees the store down",
        || relay.claim_store_connected() == Some(false),
    )
    .await?;
    let during = start_daemon(&rt, relay_address(&relay, 0), Some("during"))?;
    wait_until(
        &rt,
        REGISTER_LIMIT,
        "daemon registered during the outage",
        || during.is_registered(),
    )
    .await?;
    let told = refusal(&during);
    assert!(
        told.contains("cannot reach the claim store") && told.contains("during."),
        "told {told:?}"
    );
    assert!(!told.contains(PG_PASSWORD), "the password leaked: {told:?}");
    assert_eq!(during.status().names, vec![during.node_name.clone()]);
    // Routing goes on: the earlier claim and the new daemon's node-id name.
    curl_health(dir.path(), https.port(), &before_name, &before.certificate).await?;
    daemon_health(&rt, https, &during).await?;

    pg.lock().unwrap().restart()?;
    wait_until(&rt, Duration::from_secs(15), "relay reconnected", || {
        relay.claim_store_connected() == Some(true)
    })
    .await?;
    let after = start_daemon(&rt, relay_address(&relay, 1), Some("after"))?;
    wait_until(
        &rt,
        REGISTER_LIMIT,
        "daemon registered after the outage",
        || after.is_registered(),
    )
    .await?;
    assert_eq!(refusal(&after), "", "claims do not work after the outage");
    curl_health(
        dir.path(),
        https.port(),
        &format!("after.{SUFFIX}"),
        &after.certificate,
    )
    .await?;
    // `during` was never granted: the store does not hold it.
    let rows = pg.lock().unwrap().psql(
        "outage",
        "SELECT label FROM gate_relay_claims ORDER BY label",
    )?;
    assert_eq!(rows, "after\nbefore");

    for daemon in [before, during, after] {
        daemon.client.shutdown().await;
    }
    relay.shutdown().await;
    Ok(())
}

/// Two relays starting together on an empty database: both start and connect, and the
/// migration is recorded once.
async fn migrate_once<RR: Runtime, DR: Runtime>(
    relay_rt: RR,
    rt: DR,
    pg: Arc<Mutex<PgServer>>,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let url = pg.lock().unwrap().create_database("migrate")?;
    let (a, b) = futures_lite::future::zip(
        relay_on_store(&relay_rt, dir.path(), "a", &url),
        relay_on_store(&relay_rt, dir.path(), "b", &url),
    )
    .await;
    let (a, b) = (a?, b?);
    assert_eq!(a.claim_store_connected(), Some(true));
    assert_eq!(b.claim_store_connected(), Some(true));
    let applied = pg.lock().unwrap().psql(
        "migrate",
        "SELECT component || ':' || version FROM gate_schema_migrations",
    )?;
    assert_eq!(applied, "relay:1");
    // Both work on the table the other created.
    let one = start_daemon(&rt, relay_address(&a, 0), Some("one"))?;
    let two = start_daemon(&rt, relay_address(&b, 0), Some("two"))?;
    wait_until(&rt, REGISTER_LIMIT, "both registered", || {
        one.is_registered() && two.is_registered()
    })
    .await?;
    assert_eq!(
        (refusal(&one), refusal(&two)),
        (String::new(), String::new())
    );
    one.client.shutdown().await;
    two.client.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// A CA the test trusts and a PostgreSQL certificate it signed for `localhost` (PEM):
/// (CA, server certificate and key).
fn test_pki() -> (String, store_servers::TlsPem) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca.pem(),
        store_servers::TlsPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
    )
}

/// A relay on a PostgreSQL that serves TLS, with `sslmode=verify-full` against the test CA:
/// it connects, and a custom name claimed through it is in the shared table. With a CA that
/// did not sign the server's certificate, the relay starts without its store and says why.
async fn claims_over_tls<RR: Runtime, DR: Runtime>(
    relay_rt: RR,
    rt: DR,
    pg: Arc<Mutex<PgServer>>,
    ca_pem: String,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem)?;
    pg.lock().unwrap().create_database("tls")?;
    let port = pg.lock().unwrap().port();
    let url = format!(
        "postgres://postgres:{PG_PASSWORD}@localhost:{port}/tls?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    );
    let relay = relay_on_store(&relay_rt, dir.path(), "a", &url).await?;
    assert_eq!(relay.claim_store_connected(), Some(true));
    let daemon = start_daemon(&rt, relay_address(&relay, 0), Some("tls-name"))?;
    wait_until(&rt, REGISTER_LIMIT, "registered", || daemon.is_registered()).await?;
    assert_eq!(refusal(&daemon), String::new());
    let claims = pg.lock().unwrap().psql(
        "tls",
        "SELECT count(*) FROM gate_relay_claims WHERE label = 'tls-name'",
    )?;
    assert_eq!(claims, "1");
    daemon.client.shutdown().await;
    relay.shutdown().await;

    // The system's roots do not hold the test CA: the relay starts without its store.
    let wrong =
        format!("postgres://postgres:{PG_PASSWORD}@localhost:{port}/tls?sslmode=verify-full");
    let relay = relay_on_store(&relay_rt, dir.path(), "b", &wrong).await?;
    assert_eq!(relay.claim_store_connected(), Some(false));
    relay.shutdown().await;
    Ok(())
}

mod claims_over_tls {
    use super::*;
    #[test]
    fn tokio() {
        let (ca, pem) = test_pki();
        let pg = Arc::new(Mutex::new(PgServer::start_tls(&pem).expect("PostgreSQL")));
        tokio_tokio(|relay_rt, rt| super::claims_over_tls(relay_rt, rt, pg.clone(), ca));
    }
    #[test]
    fn smol() {
        let (ca, pem) = test_pki();
        let pg = Arc::new(Mutex::new(PgServer::start_tls(&pem).expect("PostgreSQL")));
        smol_smol(|relay_rt, rt| super::claims_over_tls(relay_rt, rt, pg.clone(), ca));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

macro_rules! on_both_runtimes_with_postgres {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;
            #[test]
            fn tokio() {
                let pg = Arc::new(Mutex::new(PgServer::start().expect("PostgreSQL")));
                tokio_tokio(|relay_rt, rt| super::$scenario(relay_rt, rt, pg.clone()));
            }
            #[test]
            fn smol() {
                let pg = Arc::new(Mutex::new(PgServer::start().expect("PostgreSQL")));
                smol_smol(|relay_rt, rt| super::$scenario(relay_rt, rt, pg.clone()));
            }
        }
    };
}

on_both_runtimes_with_postgres!(shared_claims);
on_both_runtimes_with_postgres!(store_outage);
on_both_runtimes_with_postgres!(migrate_once);

/// `gate-relay check-config` parses `[store] url` and shows it without the password; a bad
/// one is refused without the password either.
#[test]
fn check_config_hides_the_store_password() {
    let binary = env!("CARGO_BIN_EXE_gate-relay");
    let run = |url: &str| {
        Command::new(binary)
            .arg("check-config")
            .env("RELAY__STORE__URL", url)
            .output()
            .expect("gate-relay check-config")
    };
    let ok = run("postgres://relay:Hunter2-secret@db.internal:6432/claims");
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert!(
        stderr.contains("postgres://relay@db.internal:6432/claims"),
        "{stderr}"
    );
    assert!(!stderr.contains("Hunter2"), "{stderr}");
    for bad in [
        "mysql://relay:Hunter2-secret@db/claims",
        "postgres://relay:Hunter2-secret@db.internal:notaport/claims",
        "postgres://relay:Hunter2-secret@db.internal/claims?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ] {
        let out = run(bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted: {stderr}");
        assert!(stderr.contains("store.url"), "{stderr}");
        assert!(!stderr.contains("Hunter2"), "{stderr}");
    }
}

/// The Redis starter the daemon's shared rate limits will use: it starts, answers, and is
/// gone after its guard drops.
#[test]
fn redis_server_starts_and_stops() {
    let redis = RedisServer::start().expect("redis-server");
    assert_eq!(redis.command("SET gate-test 1").unwrap(), "+OK");
    assert_eq!(redis.command("INCR gate-test").unwrap(), ":2");
    let port = redis.port();
    let pid = redis.pid();
    drop(redis);
    let stopped = !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"));
    assert!(stopped, "redis-server {pid} still runs");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers"
    );
}

/// The real binary's log, from start to an outage and back, names the store as
/// `postgres://user@host:port/database` and never prints the password: first with a wrong
/// password (refused by PostgreSQL), then with the right one.
fn serve_logs_the_store_without_its_password(runtime: &str) {
    let pg = PgServer::start().expect("PostgreSQL");
    let url = pg.create_database("logs").expect("database");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    };
    std::fs::write(
        &config,
        format!(
            "https_port = {}\np2p_port = {}\nbind_address = \"127.0.0.1\"\ndomain_suffix = \"{SUFFIX}\"\n",
            free(),
            free()
        ),
    )
    .unwrap();
    let wrong = url.replace(PG_PASSWORD, "Wrong-Passw0rd-42");
    let shown = format!("postgres://postgres@127.0.0.1:{}/logs", pg.port());
    for (store_url, expect) in [
        (wrong.as_str(), "password authentication failed"),
        (url.as_str(), "name claims are shared through PostgreSQL"),
    ] {
        let log = dir.path().join("relay.log");
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gate-relay"))
            .args(["serve", "--runtime", runtime, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("RELAY__STORE__URL", store_url)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(expect) && text.contains("relay listening") {
                break text;
            }
            if std::time::Instant::now() >= deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("no {expect:?} in the log within 20 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(text.contains(&shown), "{text}");
        assert!(!text.contains(PG_PASSWORD), "{text}");
        assert!(!text.contains("Wrong-Passw0rd-42"), "{text}");
    }
}

#[test]
fn serve_logs_the_store_without_its_password_tokio() {
    serve_logs_the_store_without_its_password("tokio");
}

#[test]
fn serve_logs_the_store_without_its_password_smol() {
    serve_logs_the_store_without_its_password("smol");
}
