//! Two real `gate serve` processes on one PostgreSQL (`[store] url`, issue 15), under tokio
//! and smol, with Debian's PostgreSQL started by the test (tests/support/store_servers.rs):
//!
//! - a key created through one daemon (`gate token create`, over its admin socket) works on
//!   the other within the sync interval; a revocation is refused on both;
//! - requests alternate between the daemons; `gate usage` on either shows both daemons'
//!   requests;
//! - spend settled on one daemon counts against the budget on the other;
//! - PostgreSQL stopped mid-load and started again: a budgeted key is refused with a clear
//!   error on the `closed` daemon and admitted on the `open` one, keys known before keep
//!   working on both, no usage record is lost, and both recover without a restart;
//! - a daemon stopped while the store is down spools its unwritten usage records and writes
//!   them at its next start;
//! - the store's password is in no log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod common;
#[path = "../../tests/support/store_servers.rs"]
mod store_servers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    created_key_id, gate_bin, output_split, post_chat, start_local_daemon, temp_dir, wait_for,
    wait_until, Mock, Proc, CHAT_BODY,
};
use serde_json::Value;
use store_servers::{PgServer, PG_PASSWORD};

/// Generous for a loaded 2-core machine; the design bound is one sync (250 ms) plus one
/// usage batch (250 ms).
const PROPAGATION: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(20);

struct Daemon {
    proc: Proc,
    addr: SocketAddr,
    state_dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, runtime: &str, mock: &Mock, url: &str, on_unavailable: &str) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        // Three output tokens per answer at $1 each; input free.
        let config = format!(
            "[store]\nurl = \"{url}\"\non_unavailable = \"{on_unavailable}\"\n\
             [upstreams.oai]\nprovider = \"openai\"\nbase_url = \"{}\"\n\
             api_key = \"sk-upstream-key-0123456789\"\nmodels = [\"gpt-4o\"]\n\
             [upstreams.oai.prices.\"gpt-4o\"]\ninput = 0\noutput = 1000000\n",
            mock.base_url()
        );
        let (proc, addr) = start_local_daemon(dir, runtime, &config, None);
        Daemon {
            proc,
            addr,
            state_dir: dir.join("state"),
        }
    }

    /// One chat request with `key`: (status, body).
    fn chat(&self, key: &str) -> (u16, String) {
        match post_chat(self.addr, key, CHAT_BODY) {
            Ok(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            Err(e) => (0, e.to_string()),
        }
    }

    fn gate(&self, args: &[&str]) -> (bool, String, String) {
        output_split(
            Command::new(gate_bin())
                .args(args)
                .arg("--state-dir")
                .arg(&self.state_dir),
        )
    }

    /// `gate token create` through this daemon: (id, key).
    fn create_key(&self, name: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec!["token", "create", "--name", name];
        args.extend_from_slice(extra);
        let (ok, out, err) = self.gate(&args);
        assert!(ok, "gate token create: {err}\n{}", self.proc.log());
        let id = created_key_id(&err);
        (id, out.trim().to_owned())
    }

    /// `gate usage --json --since all --by key` on this daemon: requests per key id.
    fn usage_requests(&self, key_id: &str) -> u64 {
        let (ok, out, err) = self.gate(&["usage", "--json", "--since", "all", "--by", "key"]);
        if !ok {
            // The store reconnecting after an outage (the client backs off): the error says
            // so, and the callers wait.
            assert!(err.contains("PostgreSQL at"), "gate usage: {err}");
            assert!(!err.contains(PG_PASSWORD), "gate usage: {err}");
            return 0;
        }
        let rows: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|row| {
                row["key"].as_str() == Some(key_id) || row["group"].as_str() == Some(key_id)
            })
            .filter_map(|row| row["requests"].as_u64())
            .sum()
    }
}

fn wait_status(what: &str, daemon: &Daemon, key: &str, want: u16) -> String {
    let last = std::cell::RefCell::new(String::new());
    wait_for(
        what,
        PROPAGATION,
        || {
            let (status, body) = daemon.chat(key);
            *last.borrow_mut() = format!("{status} {body}");
            (status == want).then_some(body)
        },
        || format!("last answer: {}\n{}", last.borrow(), daemon.proc.log()),
    )
}

#[test]
fn two_daemons_share_keys_usage_and_spend_on_postgres() {
    let mut pg = PgServer::start().expect("PostgreSQL (apt-get install -y postgresql)");
    for (i, runtime) in ["tokio", "smol"].into_iter().enumerate() {
        let url = pg.create_database(&format!("gate_{i}")).unwrap();
        scenario(runtime, &mut pg, &url);
    }
}

fn scenario(runtime: &str, pg: &mut PgServer, url: &str) {
    let dir = temp_dir(&format!("shared-{runtime}"));
    let mock = Mock::start("oai");
    // Started together: they migrate once (the advisory lock), and both serve.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Daemon::start(&dir.join("a"), runtime, &mock, url, "closed"));
        let b = s.spawn(|| Daemon::start(&dir.join("b"), runtime, &mock, url, "open"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(
        pg.psql(
            db,
            "SELECT count(*) FROM gate_schema_migrations WHERE component = 'daemon'"
        )
        .unwrap(),
        gate_daemon::shared::DAEMON_SCHEMA
            .migrations
            .len()
            .to_string(),
        "{runtime}: each migration of the daemon schema is applied once"
    );

    // A key made on A works on B.
    let (plain_id, plain) = a.create_key("plain", &[]);
    let started = Instant::now();
    wait_status("B to accept the key made on A", &b, &plain, 200);
    eprintln!(
        "{runtime}: key made on A accepted by B after {:?}",
        started.elapsed()
    );

    // Requests alternating between the daemons; `gate usage` on either shows them all.
    for i in 0..6 {
        let daemon = if i % 2 == 0 { &a } else { &b };
        let (status, body) = daemon.chat(&plain);
        assert_eq!(status, 200, "{runtime}: {body}");
    }
    // One request of B's wait above may have answered 200 too: count from the log itself.
    let expected = |d: &Daemon| d.usage_requests(&plain_id);
    wait_until(
        "both daemons' requests in `gate usage` on A and on B",
        PROPAGATION,
        || expected(&a) >= 7 && expected(&a) == expected(&b),
        || format!("A: {} B: {}", expected(&a), expected(&b)),
    );

    // Spend settled on A counts on B: $10 a day, $3 a request (three output tokens).
    let (_, budgeted) = a.create_key("budgeted", &["--budget", "10", "--period", "day"]);
    wait_status("B to accept the budgeted key", &b, &budgeted, 200);
    for _ in 0..2 {
        let (status, body) = a.chat(&budgeted);
        assert_eq!(status, 200, "{runtime}: {body}");
    }
    // $9 spent ($3 on B, $6 on A): B refuses the next $3, since A's spend reached it.
    let refusal = wait_status("B to refuse the budget A spent", &b, &budgeted, 402);
    assert!(refusal.contains("budget"), "{runtime}: {refusal}");
    // A sees B's $3 within one batch plus one sync too.
    let refusal = wait_status("A to refuse the budget both spent", &a, &budgeted, 402);
    assert!(refusal.contains("budget"), "{runtime}: {refusal}");

    // A revocation on B is refused on both.
    let (ok, _, err) = b.gate(&["token", "revoke", &plain_id]);
    assert!(ok, "{err}");
    wait_status("B to refuse the revoked key", &b, &plain, 401);
    wait_status("A to refuse the key revoked on B", &a, &plain, 401);

    // The store stops mid-load.
    let (created_id, steady) = a.create_key("steady", &[]);
    let (_, capped) = a.create_key("capped", &["--budget", "100", "--period", "month"]);
    wait_status("B to accept the steady key", &b, &steady, 200);
    wait_status("B to accept the capped key", &b, &capped, 200);
    let listed = b.gate(&["token", "list", "--json"]).1;
    let steady_id: String = serde_json::from_str::<Value>(&listed)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "steady")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .expect("the key made on A is listed by B");
    assert_eq!(steady_id, created_id);
    let mut answered = 1; // B's wait above
    for _ in 0..4 {
        for d in [&a, &b] {
            let (status, body) = d.chat(&steady);
            assert_eq!(status, 200, "{runtime}: {body}");
            answered += 1;
        }
    }
    pg.stop().unwrap();
    // Closed: A refuses the budgeted key, in the client's protocol, saying why.
    let refusal = wait_status(
        "A to refuse a budgeted key while the store is down",
        &a,
        &capped,
        503,
    );
    assert!(
        refusal.contains("shared store") && refusal.contains("on_unavailable"),
        "{runtime}: {refusal}"
    );
    assert!(!refusal.contains(PG_PASSWORD));
    // Open: B admits it against the spend it saw last.
    let (status, body) = b.chat(&capped);
    assert_eq!(status, 200, "{runtime}: B is `open`: {body}");
    // Keys known before the outage keep working on both, and their usage is kept.
    for _ in 0..5 {
        for d in [&a, &b] {
            let (status, body) = d.chat(&steady);
            assert_eq!(status, 200, "{runtime}: during the outage: {body}");
            answered += 1;
        }
    }
    pg.restart().unwrap();
    // Recovery without a restart: A admits the budgeted key again.
    let started = Instant::now();
    wait_for(
        "A to admit the budgeted key once the store is back",
        DEADLINE,
        || (a.chat(&capped).0 == 200).then_some(()),
        || a.proc.log(),
    );
    eprintln!(
        "{runtime}: recovered {:?} after the restart",
        started.elapsed()
    );
    // Nothing lost: every answered request of the steady key is in the shared log.
    wait_until(
        "every request of the outage in the shared usage log",
        DEADLINE,
        || a.usage_requests(&steady_id) == answered && b.usage_requests(&steady_id) == answered,
        || {
            format!(
                "answered {answered}, A shows {}, B shows {}\n{}",
                a.usage_requests(&steady_id),
                b.usage_requests(&steady_id),
                a.proc.log()
            )
        },
    );
    for d in [&a, &b] {
        let log = d.proc.log();
        assert!(
            !log.contains(PG_PASSWORD),
            "{runtime}: the password is in a log"
        );
        assert!(
            log.contains("shared store"),
            "{runtime}: the outage is logged:\n{log}"
        );
    }
    let config = dir.join("a").join("gate.toml");
    let (_, shown, _) = a.gate(&["config", "show", "--config", config.to_str().unwrap()]);
    assert!(
        shown.contains("[store]") && shown.contains("url = \"(set)\""),
        "{runtime}: config show: {shown}"
    );
    assert!(
        !shown.contains(PG_PASSWORD),
        "{runtime}: config show: {shown}"
    );
    // A stop while the store is down loses nothing: A spools what it could not write, and
    // writes it when it starts again with the store back.
    pg.stop().unwrap();
    for _ in 0..3 {
        let (status, body) = a.chat(&steady);
        assert_eq!(status, 200, "{runtime}: during the second outage: {body}");
        answered += 1;
    }
    let Daemon {
        proc: mut a_proc,
        state_dir: a_state,
        ..
    } = a;
    a_proc.signal("TERM");
    assert!(a_proc.wait_exit(DEADLINE).success(), "{}", a_proc.log());
    let spool = a_state.join("usage-spool.jsonl");
    assert!(
        spool.exists(),
        "{runtime}: no spool after a stop with the store down:\n{}",
        a_proc.log()
    );
    pg.restart().unwrap();
    let a = Daemon::start(&dir.join("a"), runtime, &mock, url, "closed");
    wait_until(
        "the spooled records in the shared usage log after the restart",
        DEADLINE,
        || b.usage_requests(&steady_id) == answered && !spool.exists(),
        || {
            format!(
                "answered {answered}, B shows {}\n{}",
                b.usage_requests(&steady_id),
                a.proc.log()
            )
        },
    );
    assert_eq!(a.usage_requests(&steady_id), answered, "{runtime}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A chat request's usage record of key `key` at `at_ms` costing `cost` nano-dollars.
fn usage_record(
    key: &str,
    at_ms: u64,
    cost: u64,
    latency_ms: u64,
) -> gate_core::accounting::UsageRecord {
    gate_core::accounting::UsageRecord {
        at_ms,
        key_id: std::sync::Arc::from(key),
        owner: None,
        endpoint: "chat".into(),
        model: std::sync::Arc::from("m"),
        served_model: None,
        upstream: None,
        input_tokens: 1,
        output_tokens: 1,
        cached_tokens: 0,
        cache_write_tokens: 0,
        cost: Some(gate_core::accounting::Usd(cost)),
        latency_ms,
        ttft_ms: None,
        status: 200,
        error: None,
    }
}

/// A database at schema version 1 with usage and spend rows (as deployed) migrates to the
/// current version when a daemon connects: its rows stay, the indexes are those of version 2,
/// and a batch written twice (replayed from the spool, as after a lost answer) is stored once
/// and its cost counted once.
async fn version_1_database_migrates_and_keeps_rows<R: gate_rt::Runtime>(rt: R) {
    use std::sync::Arc;

    use gate_core::config::OnUnavailable;
    use gate_daemon::metrics::Metrics;
    use gate_daemon::shared::{SharedStore, DAEMON_SCHEMA, SPOOL_FILE};
    use gate_rt::store::{PgUrl, Postgres, Schema};

    let pg = PgServer::start().expect("PostgreSQL");
    let url = pg.create_database("gate").unwrap();
    let v1 = Schema {
        component: DAEMON_SCHEMA.component,
        migrations: &DAEMON_SCHEMA.migrations[..1],
    };
    Postgres::new(rt.clone(), PgUrl::parse(&url).unwrap(), v1)
        .connect()
        .await
        .expect("schema version 1");
    pg.psql(
        "gate",
        "INSERT INTO gate_usage (uid, daemon, at_ms, key_id, endpoint, model, input_tokens,
            output_tokens, cached_tokens, cache_write_tokens, cost_nanos, latency_ms, status)
         SELECT md5(i::text), 'old', 1700000000000 + i, 'k1', 'chat', 'm', 1, 1, 0, 0, 10, 5, 200
         FROM generate_series(1, 500) i;
         INSERT INTO gate_spend (key_id, day, cost_nanos) VALUES ('k1', 19675, 5000);",
    )
    .unwrap();

    let store = SharedStore::connect(rt.clone(), &url, OnUnavailable::Closed, "new".into())
        .await
        .expect("migrates to the current version");
    let versions = pg
        .psql(
            "gate",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM gate_schema_migrations
             WHERE component = 'daemon'",
        )
        .unwrap();
    assert_eq!(versions, "1,2,3");
    let indexes = pg
        .psql(
            "gate",
            "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes
             WHERE tablename = 'gate_usage'",
        )
        .unwrap();
    // No per-row unique id any more (migration 3): batches are written once by their id.
    assert_eq!(indexes, "gate_usage_at");
    assert_eq!(
        pg.psql(
            "gate",
            "SELECT count(*), sum(cost_nanos) FROM gate_usage WHERE daemon = 'old'"
        )
        .unwrap(),
        "500|5000"
    );
    let report = store
        .summary(0, gate_daemon::usage::GroupBy::Key)
        .await
        .unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].requests, 500);

    // The same records spooled twice (batches whose answer was lost, written again): 3 of
    // an earlier build (an id per record) and two batches of this one (2 records and 1,
    // the id repeated on each of a batch's lines).
    let state = temp_dir("pg-migrate");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let spool: String = (0..3)
        .map(|i| {
            let record = usage_record("k2", now + i, 7, 1);
            serde_json::to_string(&(format!("replayed-{i}"), record)).unwrap() + "\n"
        })
        .collect();
    let batch_ids = [
        "b0000000000010000000100000000000a",
        "b0000000000010000000200000000000a",
    ];
    let spool: String = spool
        + &[(batch_ids[0], 11), (batch_ids[0], 12), (batch_ids[1], 13)]
            .iter()
            .map(|(id, cost)| {
                let record = usage_record("k3", now, *cost, 1);
                serde_json::to_string(&(id, record)).unwrap() + "\n"
            })
            .collect::<String>();
    for round in 0..2 {
        std::fs::write(state.join(SPOOL_FILE), &spool).unwrap();
        let log = store.start_usage_log(&state, Arc::new(Metrics::new()));
        assert!(log.flush().await, "round {round}: spool written");
        assert!(log.flush_and_close().await);
        assert!(!state.join(SPOOL_FILE).exists(), "round {round}");
    }
    assert_eq!(
        pg.psql(
            "gate",
            "SELECT count(*) FROM gate_usage WHERE key_id = 'k2'"
        )
        .unwrap(),
        "3"
    );
    assert_eq!(
        pg.psql(
            "gate",
            "SELECT sum(cost_nanos) FROM gate_spend WHERE key_id = 'k2'"
        )
        .unwrap(),
        "21"
    );
    assert_eq!(
        pg.psql(
            "gate",
            "SELECT count(*), sum(cost_nanos) FROM gate_usage WHERE key_id = 'k3'"
        )
        .unwrap(),
        "3|36"
    );
    assert_eq!(
        pg.psql(
            "gate",
            &format!(
                "SELECT count(*) FROM gate_usage_batches WHERE batch IN ('{}', '{}')",
                batch_ids[0], batch_ids[1]
            )
        )
        .unwrap(),
        "2"
    );
    // Reconnecting finds nothing to migrate.
    drop(store);
    SharedStore::connect(rt, &url, OnUnavailable::Closed, "again".into())
        .await
        .expect("connects again");
    let _ = std::fs::remove_dir_all(&state);
}

/// Issue 16: records handed over while a batch is under way do not wake the shared usage
/// log's writer one by one: it takes them when the batch is due (or 1000 are queued), and
/// every one is written.
async fn shared_writer_is_woken_per_batch_not_per_record<R: gate_rt::Runtime>(rt: R) {
    use std::sync::Arc;
    use std::time::Duration;

    use gate_core::config::OnUnavailable;
    use gate_daemon::metrics::Metrics;
    use gate_daemon::shared::SharedStore;
    use gate_daemon::usage::UsageSink;

    let pg = PgServer::start().expect("PostgreSQL");
    let url = pg.create_database("gate").unwrap();
    let store = SharedStore::connect(rt.clone(), &url, OnUnavailable::Closed, "w".into())
        .await
        .expect("connects");
    let state = temp_dir("pg-wakeups");
    let log = store.start_usage_log(&state, Arc::new(Metrics::new()));
    rt.sleep(Duration::from_millis(100)).await;
    let before = log.wakeups();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let n = 3000u64;
    for i in 0..n {
        log.record(usage_record("kw", now, 1, i));
        if i % 50 == 49 {
            // The writer gets a chance to run between every 50 records (60 times).
            rt.sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(log.flush().await);
    let woken = log.wakeups() - before;
    assert!(woken <= 12, "{n} records woke the writer {woken} times");
    assert_eq!(
        pg.psql(
            "gate",
            "SELECT count(*) FROM gate_usage WHERE key_id = 'kw'"
        )
        .unwrap(),
        n.to_string()
    );
    assert!(log.flush_and_close().await);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn shared_writer_is_woken_per_batch_not_per_record_on_tokio() {
    gate_runtime_tokio::block_on(shared_writer_is_woken_per_batch_not_per_record).expect("runtime");
}

#[test]
fn shared_writer_is_woken_per_batch_not_per_record_on_smol() {
    gate_runtime_smol::block_on(shared_writer_is_woken_per_batch_not_per_record).expect("runtime");
}

#[test]
fn version_1_database_migrates_and_keeps_rows_on_tokio() {
    gate_runtime_tokio::block_on(version_1_database_migrates_and_keeps_rows).expect("runtime");
}

#[test]
fn version_1_database_migrates_and_keeps_rows_on_smol() {
    gate_runtime_smol::block_on(version_1_database_migrates_and_keeps_rows).expect("runtime");
}
