//! What the shared usage log costs PostgreSQL (issue 15's benchmark target): writes usage
//! records through the daemon's real write path ([`SharedStore::start_usage_log`], the
//! gateway's sink, flushed after every batch) into a PostgreSQL started as the tests start it
//! (tests/support/store_servers.rs), and reports the CPU the server's processes spent per row
//! (utime + stime of the postmaster and its children from `/proc`, before and after, children
//! already reaped included) and the rows written per second.
//!
//! ```text
//! cargo run --release -p gate-daemon --example pgusage -- [--rows 100000] [--batches 50,200,1000] [--explain] [--setup-sql SQL]
//! ```
//!
//! One JSON line per batch size on stdout: `{"batch", "rows", "elapsed_s", "rows_per_s",
//! "pg_cpu_us_per_row", "client_cpu_us_per_row"}`, then the table's and indexes' sizes. With
//! `--explain`, the plans of the `gate usage` report, the last-used query and the retention
//! delete on the table just written. A benchmark tool, not a test: it judges nothing except
//! that every row arrived (the row count is checked at the end).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a tool reports failure

#[path = "../../tests/support/store_servers.rs"]
mod store_servers;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gate_core::accounting::{UsageRecord, Usd};
use gate_core::config::OnUnavailable;
use gate_daemon::metrics::Metrics;
use gate_daemon::shared::SharedStore;
use gate_daemon::usage::UsageSink;
use store_servers::PgServer;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// (utime + stime) of `pid`, and (cutime + cstime) of its reaped children, in ticks.
fn stat_ticks(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    Some((n(14)? + n(15)?, n(16)? + n(17)?))
}

fn ppid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of the postmaster `root`, its live children and its reaped ones.
fn server_cpu(root: u32) -> f64 {
    let (own, reaped) = stat_ticks(root).unwrap_or((0, 0));
    let mut ticks = own + reaped;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if ppid(pid) == Some(root) {
            let (own, reaped) = stat_ticks(pid).unwrap_or((0, 0));
            ticks += own + reaped;
        }
    }
    ticks as f64 / TICKS_PER_S
}

fn self_cpu() -> f64 {
    stat_ticks(std::process::id()).map_or(0.0, |(own, _)| own as f64 / TICKS_PER_S)
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A record as the gateway makes one: 20 keys, 3 models, a price known.
fn record(i: usize, keys: &[Arc<str>], models: &[Arc<str>]) -> UsageRecord {
    UsageRecord {
        at_ms: now_ms(),
        key_id: keys[i % keys.len()].clone(),
        owner: (i % 3 == 0).then(|| Arc::from("team-a")),
        endpoint: Cow::Borrowed("chat"),
        model: models[i % models.len()].clone(),
        served_model: Some(models[i % models.len()].clone()),
        upstream: Some(Arc::from("openai")),
        input_tokens: 120 + (i as u64 % 500),
        output_tokens: 40 + (i as u64 % 300),
        cached_tokens: 0,
        cache_write_tokens: 0,
        cost: Some(Usd(1_500 + i as u64 % 10_000)),
        latency_ms: 300 + i as u64 % 700,
        ttft_ms: Some(90),
        status: 200,
        error: None,
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = arg(&args, "--rows").map_or(100_000, |v| v.parse().expect("--rows N"));
    let batches: Vec<usize> = arg(&args, "--batches")
        .unwrap_or_else(|| "50,200,1000".to_owned())
        .split(',')
        .map(|v| v.trim().parse().expect("--batches 50,200,1000"))
        .collect();
    let explain = args.iter().any(|a| a == "--explain");
    // SQL run after the migrations, before the first row (ablations: `DROP INDEX ...`).
    let setup_sql = arg(&args, "--setup-sql");

    let pg = PgServer::start().expect("PostgreSQL (apt-get install -y postgresql)");
    let url = pg.create_database("gate").expect("create database");
    let root = pg.postmaster_pid().expect("postmaster.pid");
    let state = tempfile::tempdir().expect("temp dir");
    let keys: Vec<Arc<str>> = (0..20).map(|i| Arc::from(format!("key{i:02}"))).collect();
    let models: Vec<Arc<str>> = ["gpt-4o-mini", "gpt-4o", "o3-mini"]
        .into_iter()
        .map(Arc::from)
        .collect();

    gate_runtime_tokio::block_on(|rt| async move {
        let store = SharedStore::connect(rt, &url, OnUnavailable::Closed, "bench".to_owned())
            .await
            .expect("connect");
        if let Some(sql) = &setup_sql {
            pg.psql("gate", sql).expect("--setup-sql");
        }
        let log = store.start_usage_log(state.path(), Arc::new(Metrics::new()));
        // Warm up: the connection, the statement's plan, the first pages.
        for i in 0..1000 {
            log.record(record(i, &keys, &models));
        }
        assert!(log.flush().await, "warm-up batch written");
        let mut total = 1000;
        for &batch in &batches {
            let (pg0, me0, t0) = (server_cpu(root), self_cpu(), Instant::now());
            let mut written = 0;
            while written < rows {
                let n = batch.min(rows - written);
                for i in 0..n {
                    log.record(record(written + i, &keys, &models));
                }
                assert!(log.flush().await, "batch written");
                written += n;
            }
            let elapsed = t0.elapsed().as_secs_f64();
            let (pg_s, me_s) = (server_cpu(root) - pg0, self_cpu() - me0);
            total += written;
            println!(
                "{{\"batch\":{batch},\"rows\":{written},\"elapsed_s\":{elapsed:.3},\"rows_per_s\":{:.0},\"pg_cpu_us_per_row\":{:.2},\"client_cpu_us_per_row\":{:.2}}}",
                written as f64 / elapsed,
                pg_s * 1e6 / written as f64,
                me_s * 1e6 / written as f64,
            );
        }
        log.flush_and_close().await;
        let count = pg
            .psql("gate", "SELECT count(*) FROM gate_usage")
            .expect("count");
        assert_eq!(count, total.to_string(), "every row written once");
        let sizes = pg
            .psql(
                "gate",
                "SELECT string_agg(c.relname || '=' || pg_size_pretty(pg_relation_size(c.oid)), ' ' ORDER BY c.relname)
                 FROM pg_class c WHERE c.relname LIKE 'gate_usage%' OR c.relname LIKE 'gate_spend%'",
            )
            .expect("sizes");
        println!("{{\"rows_total\":{total},\"sizes\":\"{sizes}\"}}");
        if explain {
            pg.psql("gate", "ANALYZE gate_usage").expect("analyze");
            let since = now_ms() - 3_600_000;
            // The retention's cutoff: half the rows are older.
            let middle = pg
                .psql("gate", "SELECT (min(at_ms) + max(at_ms)) / 2 FROM gate_usage")
                .expect("middle");
            for sql in [
                format!("SELECT key_id, COUNT(*), SUM(cost_nanos) FROM gate_usage WHERE at_ms >= {since} GROUP BY key_id"),
                format!("SELECT key_id, COUNT(*) FROM gate_usage WHERE at_ms >= {} GROUP BY key_id", now_ms() - 2_000),
                "SELECT key_id, MAX(at_ms) FROM gate_usage GROUP BY key_id".to_owned(),
                format!("DELETE FROM gate_usage WHERE uid IN (SELECT uid FROM gate_usage WHERE at_ms < {middle} LIMIT 10000)"),
                format!("DELETE FROM gate_usage WHERE ctid = ANY(ARRAY(SELECT ctid FROM gate_usage WHERE at_ms < {middle} LIMIT 10000))"),
            ] {
                let plan = pg
                    .psql("gate", &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"))
                    .expect("explain");
                println!("--- {sql}\n{plan}");
            }
        }
    })
    .expect("tokio runtime");
}
