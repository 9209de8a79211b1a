//! TLS to the shared stores (issue 15), with real servers started by the test
//! (tests/support/store_servers.rs): Debian's PostgreSQL with `ssl=on` and `redis-server`
//! on its TLS port only, both presenting a certificate for `localhost` signed by a CA the
//! test makes with rcgen. Under tokio and smol:
//!
//! - PostgreSQL: `verify-full` against the test CA works (and the session is TLS, as
//!   `pg_stat_ssl` says); `verify-ca` works with an IP host the certificate does not name;
//!   `require` and the default `prefer` use TLS without a root; a wrong CA and a wrong host
//!   name are refused with an error naming the store and the setting to change, never the
//!   password; `require` against a server without TLS says to turn it on;
//! - Redis: `rediss://` with `?ca=` works, `AUTH` after the handshake; a wrong CA and a wrong
//!   host name are refused the same way;
//! - a `gate serve` with both stores over TLS serves a request with a budgeted key end to
//!   end, and its usage reaches PostgreSQL.
//!
//! And, on the same TLS PostgreSQL, what acts on the shared store besides the request path:
//!
//! - `gate token ...` and `gate usage` with `[store] url` and no daemon running act on
//!   PostgreSQL (a key the CLI creates works on a daemon started afterwards);
//! - `usage.retention_days` deletes old rows of the shared usage log (`gate_usage`), in the
//!   background, leaving recent rows and the spend table.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod common;
#[path = "../../tests/support/store_servers.rs"]
mod store_servers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    created_key_id, gate_bin, output_split, post_chat, start_local_daemon, temp_dir, wait_until,
    Mock, Proc, CHAT_BODY,
};
use gate_rt::store::{PgUrl, Postgres, Redis, RedisUrl, Schema};
use gate_rt::Runtime;
use store_servers::{PgServer, RedisServer, TlsPem, PG_PASSWORD};

const REDIS_PASSWORD: &str = "redis-tls-Secr3t-77ab";

/// A test CA, a server certificate it signed for `localhost` only, and a second CA that
/// signed nothing the servers present.
struct Pki {
    ca_file: PathBuf,
    other_ca_file: PathBuf,
    ca_pem: String,
    server: TlsPem,
}

fn make_ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (rcgen::Issuer::new(params, key), cert.pem())
}

fn pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let (issuer, ca_pem) = make_ca("gate store test CA");
    let (_, other_pem) = make_ca("some other CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    std::fs::write(&other_ca_file, other_pem).unwrap();
    Pki {
        ca_file,
        other_ca_file,
        ca_pem,
        server: TlsPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
    }
}

const NO_SCHEMA: Schema = Schema {
    component: "tls_test",
    migrations: &[],
};

/// Connects with `url` and asks whether the session is TLS (`pg_stat_ssl`).
async fn pg_session_is_tls<R: Runtime>(rt: &R, url: &str) -> Result<bool, String> {
    let store = Postgres::new(
        rt.clone(),
        PgUrl::parse(url).map_err(|e| e.to_string())?,
        NO_SCHEMA,
    );
    let rows = store
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.first().is_some_and(|row| row.get::<_, bool>(0)))
}

fn pg_url(host: &str, port: u16, options: &str) -> String {
    format!("postgres://postgres:{PG_PASSWORD}@{host}:{port}/postgres?{options}")
}

async fn postgres_tls_modes<R: Runtime>(rt: R) {
    let dir = temp_dir("pg-tls");
    let pki = pki(&dir);
    let pg = PgServer::start_tls(&pki.server).expect("PostgreSQL with TLS");
    let port = pg.port();
    let ca = pki.ca_file.display().to_string();
    let other = pki.other_ca_file.display().to_string();

    // verify-full against the test CA, by the name the certificate holds.
    let url = pg_url(
        "localhost",
        port,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_eq!(pg_session_is_tls(&rt, &url).await, Ok(true), "{}", pg.log());
    // The login used the TLS channel binding (SCRAM-SHA-256-PLUS): with
    // channel_binding=require the client refuses a login without it.
    let url = pg_url(
        "localhost",
        port,
        &format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
    );
    assert_eq!(pg_session_is_tls(&rt, &url).await, Ok(true));
    // verify-ca checks the chain, not the name.
    let url = pg_url(
        "127.0.0.1",
        port,
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    assert_eq!(pg_session_is_tls(&rt, &url).await, Ok(true));
    // require and the default prefer: TLS, nothing verified without a root (libpq's rule).
    for options in ["sslmode=require", ""] {
        let url = pg_url("127.0.0.1", port, options);
        assert_eq!(pg_session_is_tls(&rt, &url).await, Ok(true), "{options}");
    }
    // disable: no TLS.
    let url = pg_url("127.0.0.1", port, "sslmode=disable");
    assert_eq!(pg_session_is_tls(&rt, &url).await, Ok(false));

    // A host name the certificate does not hold.
    let url = pg_url(
        "127.0.0.1",
        port,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let error = pg_session_is_tls(&rt, &url).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "PostgreSQL at postgres://postgres@127.0.0.1:{port}/postgres"
        )) && error.contains("not valid for the host name 127.0.0.1")
            && error.contains("verify-ca"),
        "{error}"
    );
    assert!(!error.contains(PG_PASSWORD), "{error}");
    // A CA that did not sign the server's certificate (also with require: a root given
    // means the chain is checked, as in libpq).
    for mode in ["verify-full", "require"] {
        let url = pg_url(
            "localhost",
            port,
            &format!("sslmode={mode}&sslrootcert={other}"),
        );
        let error = pg_session_is_tls(&rt, &url).await.unwrap_err();
        assert!(
            error.contains("PostgreSQL at postgres://postgres@localhost")
                && error.contains("not signed by a CA this client trusts")
                && error.contains(&other)
                && error.contains("sslrootcert=PATH"),
            "{mode}: {error}"
        );
        assert!(!error.contains(PG_PASSWORD), "{error}");
    }
    // The system's roots do not hold the test CA.
    let url = pg_url("localhost", port, "sslmode=verify-full");
    let error = pg_session_is_tls(&rt, &url).await.unwrap_err();
    assert!(
        error.contains("the system's root certificates") && error.contains("sslrootcert=PATH"),
        "{error}"
    );
    drop(pg);

    // require against a server without TLS says what to change.
    let plain = PgServer::start().expect("PostgreSQL");
    let url = pg_url("127.0.0.1", plain.port(), "sslmode=require");
    let error = pg_session_is_tls(&rt, &url).await.unwrap_err();
    assert!(
        error.contains("does not support TLS") && error.contains("ssl = on"),
        "{error}"
    );
    assert!(!error.contains(PG_PASSWORD), "{error}");
    // prefer connects without TLS to it.
    let url = pg_url("127.0.0.1", plain.port(), "sslmode=prefer");
    assert_eq!(pg_session_is_tls(&rt, &url).await, Ok(false));
}

async fn redis_tls<R: Runtime>(rt: R) {
    let dir = temp_dir("redis-tls");
    let pki = pki(&dir);
    let redis = RedisServer::start_tls(&pki.server, &pki.ca_pem, Some(REDIS_PASSWORD))
        .expect("redis-server with TLS (Debian's is built with it)");
    let port = redis.port();
    let client = |url: String| Redis::new(rt.clone(), RedisUrl::parse(&url).unwrap());
    let ca = pki.ca_file.display().to_string();

    let good = client(format!(
        "rediss://:{REDIS_PASSWORD}@localhost:{port}?ca={ca}"
    ));
    good.ping().await.expect("PING over TLS, after AUTH");
    // Without the password: the handshake works and the server wants AUTH.
    let error = client(format!("rediss://localhost:{port}?ca={ca}"))
        .ping()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("NOAUTH"), "{error}");

    let wrong_name = client(format!(
        "rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}?ca={ca}"
    ));
    let error = wrong_name.ping().await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "Redis at rediss://127.0.0.1:{port}/0 is unavailable"
        )) && error.contains("not valid for the host name 127.0.0.1"),
        "{error}"
    );
    assert!(!error.contains(REDIS_PASSWORD), "{error}");
    let other = pki.other_ca_file.display().to_string();
    let wrong_ca = client(format!(
        "rediss://:{REDIS_PASSWORD}@localhost:{port}?ca={other}"
    ));
    let error = wrong_ca.ping().await.unwrap_err().to_string();
    assert!(
        error.contains("not signed by a CA this client trusts") && error.contains("?ca=PATH"),
        "{error}"
    );
    assert!(!error.contains(REDIS_PASSWORD), "{error}");
    // redis:// (no TLS) to the TLS port: the connection fails and says so.
    let error = client(format!("redis://:{REDIS_PASSWORD}@localhost:{port}"))
        .ping()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("Redis at redis://localhost:{port}/0")),
        "{error}"
    );
    assert!(!error.contains(REDIS_PASSWORD), "{error}");
}

common::both_runtimes!(postgres_tls_modes, redis_tls);

/// `gate serve` with `[store] url` over verify-full TLS and `redis_url` over rediss://: a
/// budgeted key created through it answers, and its usage is in PostgreSQL.
#[test]
fn daemon_with_tls_stores_serves_a_budgeted_key() {
    for runtime in ["tokio", "smol"] {
        let dir = temp_dir(&format!("tls-daemon-{runtime}"));
        let pki = pki(&dir.join("pki"));
        let pg = PgServer::start_tls(&pki.server).expect("PostgreSQL with TLS");
        pg.create_database("gate").unwrap();
        let redis = RedisServer::start_tls(&pki.server, &pki.ca_pem, Some(REDIS_PASSWORD))
            .expect("redis-server with TLS");
        let mock = Mock::start("oai");
        let ca = pki.ca_file.display().to_string();
        let config = format!(
            "[store]\nurl = \"postgres://postgres:{PG_PASSWORD}@localhost:{}/gate?sslmode=verify-full&sslrootcert={ca}\"\n\
             redis_url = \"rediss://:{REDIS_PASSWORD}@localhost:{}?ca={ca}\"\n{}",
            pg.port(),
            redis.port(),
            priced_upstream(&mock)
        );
        let daemon_dir = dir.join("daemon");
        std::fs::create_dir_all(&daemon_dir).unwrap();
        let (proc, addr) = start_local_daemon(&daemon_dir, runtime, &config, None);
        let out = Command::new(gate_bin())
            .args([
                "token", "create", "--name", "tls", "--budget", "10", "--period", "day",
            ])
            .arg("--state-dir")
            .arg(daemon_dir.join("state"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}\n{}", proc.log());
        let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        chat_answers(addr, &key, runtime, &proc);
        // Redis settled the request's $3 ...
        wait_until(
            "the budget settled in Redis",
            Duration::from_secs(10),
            || {
                redis
                    .command("KEYS gate:*:budget:*")
                    .is_ok_and(|keys| !keys.is_empty())
            },
            || proc.log(),
        );
        // ... and its usage record is in PostgreSQL.
        wait_until(
            "the usage record in PostgreSQL",
            Duration::from_secs(10),
            || {
                pg.psql("gate", "SELECT count(*) FROM gate_usage")
                    .as_deref()
                    == Ok("1")
            },
            || proc.log(),
        );
        let log = proc.log();
        assert!(
            !log.contains(PG_PASSWORD) && !log.contains(REDIS_PASSWORD),
            "{log}"
        );
        assert!(
            log.contains(&format!("postgres://postgres@localhost:{}/gate", pg.port())),
            "{log}"
        );
    }
}

/// The `[upstreams.oai]` table for `mock`, `gpt-4o` priced at $1 per output token.
fn priced_upstream(mock: &Mock) -> String {
    format!(
        "[upstreams.oai]\nprovider = \"openai\"\nbase_url = \"{}\"\n\
         api_key = \"sk-upstream-key-0123456789\"\nmodels = [\"gpt-4o\"]\n\
         [upstreams.oai.prices.\"gpt-4o\"]\ninput = 0\noutput = 1000000\n",
        mock.base_url()
    )
}

/// A chat request with `key` to the daemon at `addr` (`proc`), which must answer 200.
fn chat_answers(addr: SocketAddr, key: &str, runtime: &str, proc: &Proc) {
    let answer = post_chat(addr, key, CHAT_BODY).unwrap();
    assert_eq!(
        answer.status,
        200,
        "{runtime}: {}\n{}",
        String::from_utf8_lossy(&answer.body),
        proc.log()
    );
}

/// PostgreSQL over TLS (its PKI in `dir/pki`) with a `gate` database, and the verify-full
/// URL a daemon reaches that database by.
fn gate_database_over_tls(dir: &Path) -> (PgServer, String) {
    let pki = pki(&dir.join("pki"));
    let pg = PgServer::start_tls(&pki.server).expect("PostgreSQL with TLS");
    pg.create_database("gate").unwrap();
    let url = format!(
        "postgres://postgres:{PG_PASSWORD}@localhost:{}/gate?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        pki.ca_file.display()
    );
    (pg, url)
}

/// `gate` with `GATE_STORE__URL` set (as an operator's shell or the NixOS environment file
/// gives it) and `--state-dir`: output and success.
fn gate_with_store(url: &str, state_dir: &Path, args: &[&str]) -> (bool, String, String) {
    output_split(
        Command::new(gate_bin())
            .args(args)
            .arg("--state-dir")
            .arg(state_dir)
            .env("GATE_STORE__URL", url),
    )
}

/// With `[store] url` and no daemon running, `gate token` and `gate usage` act on
/// PostgreSQL (here over verify-full TLS), where the daemons read: a key the CLI creates
/// works on a daemon started afterwards, `gate usage` sums what the daemon wrote, and a
/// revocation by the CLI removes the key from the store.
#[test]
fn cli_without_a_daemon_acts_on_the_shared_store() {
    let dir = temp_dir("tls-cli");
    let (pg, url) = gate_database_over_tls(&dir);
    let shown = format!("postgres://postgres@localhost:{}/gate", pg.port());
    let daemon_dir = dir.join("daemon");
    let state_dir = daemon_dir.join("state");
    std::fs::create_dir_all(&daemon_dir).unwrap();

    // check-config reads the URL as the daemon will (the CA file included).
    let (ok, out, err) = gate_with_store(&url, &state_dir, &["check-config"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("shared store {shown} (sslmode=verify-full)")),
        "{out}"
    );
    let missing = url.replace("ca.pem", "missing-ca.pem");
    let (ok, _, err) = gate_with_store(&missing, &state_dir, &["check-config"]);
    assert!(!ok && err.contains("missing-ca.pem"), "{err}");
    assert!(!err.contains(PG_PASSWORD), "{err}");

    let (ok, key, err) = gate_with_store(
        &url,
        &state_dir,
        &["token", "create", "--name", "cli", "--budget", "10"],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("acting on the shared store {shown}")),
        "{err}"
    );
    assert!(!err.contains(PG_PASSWORD), "{err}");
    let id = created_key_id(&err);
    let key = key.trim().to_owned();
    assert_eq!(
        pg.psql(
            "gate",
            &format!("SELECT name FROM gate_keys WHERE id = '{id}'")
        ),
        Ok("cli".to_owned())
    );
    assert!(
        !state_dir.join("tokens.json").exists(),
        "the key went to the local file"
    );
    let (ok, list, err) = gate_with_store(&url, &state_dir, &["token", "list", "--json"]);
    assert!(ok && list.contains(&id), "{list}\n{err}");

    for runtime in ["tokio", "smol"] {
        let mock = Mock::start("oai");
        let config = format!("[store]\nurl = \"{url}\"\n{}", priced_upstream(&mock));
        let (proc, addr) = start_local_daemon(&daemon_dir, runtime, &config, None);
        chat_answers(addr, &key, runtime, &proc);
        wait_until(
            "the usage record in PostgreSQL",
            Duration::from_secs(10),
            || {
                pg.psql("gate", "SELECT count(*) FROM gate_usage")
                    .as_deref()
                    == Ok(if runtime == "tokio" { "1" } else { "2" })
            },
            || proc.log(),
        );
        drop(proc);
    }

    // No daemon: `gate usage` sums the shared log, with the key's name.
    let (ok, usage, err) = gate_with_store(
        &url,
        &state_dir,
        &["usage", "--json", "--since", "all", "--by", "key"],
    );
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&usage).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| {
            row["group"].as_str() == Some(id.as_str()) || row["key"].as_str() == Some(id.as_str())
        })
        .unwrap_or_else(|| panic!("{usage}"));
    assert_eq!(row["requests"].as_u64(), Some(2), "{usage}");
    assert_eq!(row["name"].as_str(), Some("cli"), "{usage}");

    let (ok, _, err) = gate_with_store(&url, &state_dir, &["token", "update", &id, "--rpm", "5"]);
    assert!(ok && err.contains("rpm"), "{err}");
    let (ok, _, err) = gate_with_store(&url, &state_dir, &["token", "revoke", &id]);
    assert!(
        ok && err.contains(&format!("revoked API key {id}")),
        "{err}"
    );
    assert_eq!(
        pg.psql("gate", "SELECT count(*) FROM gate_keys"),
        Ok("0".to_owned())
    );
    // A CA that did not sign the server's certificate: the CLI says which store and what to
    // change.
    let wrong_ca = url.replace("ca.pem", "other-ca.pem");
    let (ok, _, err) = gate_with_store(&wrong_ca, &state_dir, &["token", "list"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!("PostgreSQL at {shown}"))
            && err.contains("not signed by a CA this client trusts")
            && err.contains("sslrootcert=PATH"),
        "{err}"
    );
    assert!(!err.contains(PG_PASSWORD), "{err}");
    // A store that cannot be reached says which, and what failed, without the password.
    let down = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:1/gate?sslmode=disable");
    let (ok, _, err) = gate_with_store(&down, &state_dir, &["token", "revoke", &id]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("shared store") && err.contains("postgres://postgres@127.0.0.1:1/gate"),
        "{err}"
    );
    assert!(!err.contains(PG_PASSWORD), "{err}");
}

/// Usage rows `days` old (by `at_ms`), inserted as a daemon writes them.
fn insert_usage(pg: &PgServer, uid: &str, days: u32) {
    pg.psql(
        "gate",
        &format!(
            "INSERT INTO gate_usage (uid, daemon, at_ms, key_id, endpoint, model, input_tokens,
                output_tokens, cached_tokens, cache_write_tokens, latency_ms, status)
             VALUES ('{uid}', 'elsewhere',
                (extract(epoch FROM now()) * 1000)::bigint - {days}::bigint * 86400000,
                'k1', 'chat', 'gpt-4o', 1, 1, 0, 0, 5, 200)"
        ),
    )
    .unwrap();
}

/// `usage.retention_days = 30`: a daemon deletes the shared usage rows older than 30 days
/// (written by any daemon) once it runs, and keeps the newer ones and the spend table.
#[test]
fn retention_applies_to_the_shared_usage_log() {
    let dir = temp_dir("shared-retention");
    let (pg, url) = gate_database_over_tls(&dir);
    let mock = Mock::start("oai");
    let config = format!(
        "[store]\nurl = \"{url}\"\n[usage]\nretention_days = 30\n\
         [upstreams.oai]\nprovider = \"openai\"\nbase_url = \"{}\"\n\
         api_key = \"sk-upstream-key-0123456789\"\nmodels = [\"gpt-4o\"]\n",
        mock.base_url()
    );
    let daemon_dir = dir.join("daemon");
    std::fs::create_dir_all(&daemon_dir).unwrap();
    // A first start creates the schema.
    drop(start_local_daemon(&daemon_dir, "tokio", &config, None));
    pg.psql(
        "gate",
        "INSERT INTO gate_spend (key_id, day, cost_nanos) VALUES ('k1', 1, 5)",
    )
    .unwrap();
    for runtime in ["tokio", "smol"] {
        insert_usage(&pg, &format!("old-{runtime}"), 40);
        insert_usage(&pg, &format!("recent-{runtime}"), 29);
        let (proc, _) = start_local_daemon(&daemon_dir, runtime, &config, None);
        wait_until(
            "the rows past the retention deleted",
            Duration::from_secs(10),
            || {
                pg.psql(
                    "gate",
                    "SELECT count(*) FROM gate_usage WHERE uid LIKE 'old-%'",
                )
                .as_deref()
                    == Ok("0")
            },
            || proc.log(),
        );
        let recent = pg
            .psql(
                "gate",
                "SELECT count(*) FROM gate_usage WHERE uid LIKE 'recent-%'",
            )
            .unwrap();
        let expected = if runtime == "tokio" { "1" } else { "2" };
        assert_eq!(recent, expected, "{runtime}: recent rows kept");
        assert!(
            proc.log().contains("deleted records past the retention"),
            "{}",
            proc.log()
        );
        drop(proc);
    }
    assert_eq!(
        pg.psql("gate", "SELECT count(*) FROM gate_spend"),
        Ok("1".to_owned()),
        "the spend table is not touched"
    );
}
