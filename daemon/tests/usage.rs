//! The usage log end to end: durability after `kill -9` of a real process that records
//! continuously, nothing lost on a clean stop of the daemon (both runtimes), the admin API
//! routes and `gate usage` against the real binary (while the daemon runs and after).
//!
//! Records do not flow through the gateway yet in this branch (the request-path hooks come
//! with the enforcement work), so the tests hand records to the daemon's own sink
//! (`RunningDaemon::gateway().usage_sink()`) or write the log with the library, and read
//! it back through the binary and the admin API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{start_local_daemon, temp_dir, wait_until, RUNTIMES};
use gate_core::accounting::{UsageRecord, Usd};
use gate_daemon::admin::client::http_request;
use gate_daemon::metrics::Metrics;
use gate_daemon::usage::{UsageDb, UsageLog, UsageSink};
use serde_json::Value;

mod common;

/// The environment variable that turns [`usage_child_writer`] on.
const CHILD_DIR_VAR: &str = "GATE_TEST_USAGE_CHILD_DIR";
/// The writer commits at most this long after a record is handed over...
const FLUSH_INTERVAL: Duration = gate_daemon::usage::writer::FLUSH_INTERVAL;
/// ...plus the time of one write on a busy machine.
const MARGIN: Duration = Duration::from_millis(1500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn record(at_ms: u64, key: &str, model: &str, cost: Option<u64>) -> UsageRecord {
    UsageRecord {
        at_ms,
        key_id: key.into(),
        endpoint: "chat".into(),
        model: model.into(),
        served_model: Some(model.into()),
        upstream: Some("openai".into()),
        input_tokens: 1000,
        output_tokens: 200,
        cached_tokens: 100,
        cost: cost.map(Usd),
        latency_ms: 900,
        ttft_ms: Some(80),
        status: 200,
        ..UsageRecord::default()
    }
}

fn all_records(state_dir: &Path) -> Vec<UsageRecord> {
    UsageDb::open_read_only(&UsageDb::path_in(state_dir))
        .unwrap()
        .expect("usage.db exists")
        .records_since(0)
        .unwrap()
}

// ---------------------------------------------------------------- kill -9

/// Not a test on its own: the process [`kill_9_loses_at_most_the_last_second`] starts (this
/// test binary again) and kills. Records continuously, printing `handed SEQ MS` after each
/// record is handed over.
#[test]
#[ignore = "the child process of kill_9_loses_at_most_the_last_second"]
fn usage_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let log = UsageLog::open(Path::new(&dir), 0, Arc::new(Metrics::new())).unwrap();
    for seq in 0u64.. {
        let mut r = record(now_ms(), "crash", "m", Some(1));
        r.latency_ms = seq;
        log.record(r);
        println!("handed {seq} {}", now_ms());
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn kill_9_loses_at_most_the_last_second() {
    let dir = temp_dir("usage-kill");
    let out_path = dir.join("child.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "usage_child_writer", "--ignored", "--nocapture"])
        .env(CHILD_DIR_VAR, &dir)
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let handed = |text: &str| -> Vec<(u64, u64)> {
        text.lines()
            .filter_map(|l| {
                let mut parts = l.strip_prefix("handed ")?.split(' ');
                Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
            })
            .collect()
    };
    let read_out = || std::fs::read_to_string(&out_path).unwrap_or_default();
    // Several flush intervals of records, so some are certainly written and some not.
    wait_until(
        "the child to record for 3 seconds",
        Duration::from_secs(60),
        || {
            let h = handed(&read_out());
            matches!((h.first(), h.last()), (Some(a), Some(b)) if b.1 >= a.1 + 3000)
        },
        read_out,
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = now_ms();
    let handed = handed(&read_out());
    let present: BTreeSet<u64> = all_records(&dir)
        .into_iter()
        .filter(|r| &*r.key_id == "crash")
        .map(|r| r.latency_ms)
        .collect();
    let must_have = (FLUSH_INTERVAL + MARGIN).as_millis() as u64;
    let old_enough: Vec<u64> = handed
        .iter()
        .filter(|(_, at)| at + must_have <= killed_at)
        .map(|(seq, _)| *seq)
        .collect();
    assert!(
        old_enough.len() > 100,
        "too few records to judge: {}",
        old_enough.len()
    );
    let missing: Vec<u64> = old_enough
        .iter()
        .filter(|s| !present.contains(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} records handed over more than {must_have} ms before the kill are missing, first {:?}",
        missing.len(),
        old_enough.len(),
        &missing[..missing.len().min(10)]
    );
    // Nothing appears that was not handed over (the last record may have been handed over
    // without its line being printed).
    let last = handed.last().map_or(0, |h| h.0);
    assert!(present.iter().all(|s| *s <= last + 1));
    assert!(present.len() <= handed.len() + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- a clean stop

/// The daemon's own stop sequence writes every record handed to its sink, and a reopened
/// log has them all (both runtimes).
#[test]
fn a_clean_stop_of_the_daemon_loses_nothing() {
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("usage-stop-{runtime}"));
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let loaded = gate_core::config::load_daemon(&gate_core::config::ConfigSources::new(
            state_dir.join("config.toml").display().to_string(),
        ))
        .unwrap();
        let options = gate_daemon::daemon::DaemonOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            loaded,
            tokens: gate_daemon::auth::TokenStore::load(&state_dir).unwrap(),
            config_files: Vec::new(),
            state_dir: state_dir.clone(),
        };
        match runtime {
            "tokio" => gate_runtime_tokio::block_on(|rt| hand_over_and_stop(rt, options)).unwrap(),
            _ => gate_runtime_smol::block_on(|rt| hand_over_and_stop(rt, options)).unwrap(),
        }
        let back = all_records(&state_dir);
        let seqs: Vec<u64> = back.iter().map(|r| r.latency_ms).collect();
        assert_eq!(seqs, (0..HANDED).collect::<Vec<_>>(), "{runtime}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

const HANDED: u64 = 5000;

/// Starts the daemon, hands [`HANDED`] records to its sink faster than the writer's
/// interval, and stops it.
async fn hand_over_and_stop<R: gate_rt::Runtime>(
    rt: R,
    options: gate_daemon::daemon::DaemonOptions,
) {
    let daemon = gate_daemon::daemon::RunningDaemon::start(rt, options)
        .await
        .unwrap();
    assert!(
        daemon.usage_log().is_some(),
        "usage.enabled defaults to true"
    );
    let sink = daemon.gateway().usage_sink();
    let now = now_ms();
    for i in 0..HANDED {
        let mut r = record(now, "k1", "gpt-4o", Some(1_000));
        r.latency_ms = i;
        sink.record(r);
    }
    daemon.shutdown().await;
}

/// `usage.enabled = false`: no log file, the daemon runs.
#[test]
fn usage_can_be_turned_off() {
    let dir = temp_dir("usage-off");
    let (mut proc, _addr) = start_local_daemon(&dir, "tokio", "[usage]\nenabled = false\n", None);
    assert!(proc.log().contains("usage log off"), "{}", proc.log());
    proc.signal("TERM");
    assert!(proc.wait_exit(Duration::from_secs(30)).success());
    assert!(!UsageDb::path_in(&dir.join("state")).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- admin API and CLI

/// 2026-12-01 00:00 UTC.
const DEC_1_MS: u64 = 1_796_083_200_000;
const HOUR_MS: u64 = 3_600_000;

/// A log of known content (written with the library) and a key named `laptop` in
/// tokens.json; returns that key's id.
fn populate(state_dir: &Path) -> String {
    std::fs::create_dir_all(state_dir).unwrap();
    let mut tokens = gate_daemon::auth::TokenStore::load(state_dir).unwrap();
    let (laptop, _) = tokens.create("laptop", None).unwrap();
    let mut db = UsageDb::open(&UsageDb::path_in(state_dir)).unwrap();
    let mut failed = record(DEC_1_MS + 30 * HOUR_MS, "jwt:alice", "mystery", None);
    failed.status = 502;
    failed.error = Some("upstream_error".into());
    failed.upstream = None;
    db.insert(&[
        record(DEC_1_MS + HOUR_MS, &laptop.id, "gpt-4o", Some(12_345_678)),
        record(
            DEC_1_MS + 2 * HOUR_MS,
            &laptop.id,
            "gpt-4o",
            Some(1_000_000_000),
        ),
        record(
            DEC_1_MS + 26 * HOUR_MS,
            "jwt:alice",
            "gpt-4o",
            Some(500_000),
        ),
        failed,
    ])
    .unwrap();
    laptop.id
}

fn gate_usage(state_dir: &Path, args: &[&str]) -> (bool, String, String) {
    common::output_split(
        Command::new(common::gate_bin())
            .arg("usage")
            .args(args)
            .arg("--state-dir")
            .arg(state_dir)
            .env_remove("GATE_STATE_DIR"),
    )
}

#[test]
fn gate_usage_prints_tables_csv_and_json() {
    let dir = temp_dir("usage-cli");
    let state_dir = dir.join("state");
    // Nothing recorded yet: a clear message, and the reader creates no file.
    let (ok, out, _) = gate_usage(&state_dir, &["--since", "2026-12-01"]);
    assert!(ok);
    expect_test::expect![[r#"
        No usage recorded since 2026-12-01 00:00 UTC (usage log: STATE/usage.db).
        Gate records each request there once a client has been answered; try --since all.
    "#]]
    .assert_eq(&out.replace(&state_dir.display().to_string(), "STATE"));
    assert!(!UsageDb::path_in(&state_dir).exists());
    let (_, json, _) = gate_usage(&state_dir, &["--json"]);
    assert_eq!(json.trim(), "[]");

    let id = populate(&state_dir);
    let (ok, out, err) = gate_usage(&state_dir, &["--since", "2026-12-01"]);
    assert!(ok, "{err}");
    expect_test::expect![[r#"
        Usage since 2026-12-01 00:00 UTC, by key

        KEY           NAME    REQUESTS  INPUT  OUTPUT  CACHED  COST               ERRORS
        ID            laptop         2  2,000     400     200  $1.0123                 0
        jwt:alice     -              2  2,000     400     200  $0.0005 + unknown       1
        --------------------------------------------------------------------------------
        TOTAL                        4  4,000     800     400  $1.0128 + unknown       1

        unknown: 1 request(s) used a model without a known price; the dollar amounts leave them out.
    "#]]
    .assert_eq(&out.replace(&id, "ID          "));
    let (_, out, _) = gate_usage(&state_dir, &["--since", "2026-12-01", "--by", "day"]);
    expect_test::expect![[r#"
        Usage since 2026-12-01 00:00 UTC, by day

        DAY         REQUESTS  INPUT  OUTPUT  CACHED  COST               ERRORS
        2026-12-01         2  2,000     400     200  $1.0123                 0
        2026-12-02         2  2,000     400     200  $0.0005 + unknown       1
        ----------------------------------------------------------------------
        TOTAL              4  4,000     800     400  $1.0128 + unknown       1

        unknown: 1 request(s) used a model without a known price; the dollar amounts leave them out.
    "#]]
    .assert_eq(&out);
    let (_, out, _) = gate_usage(&state_dir, &["--since", "all", "--by", "model", "--csv"]);
    expect_test::expect![[r#"
        model,requests,input_tokens,output_tokens,cached_tokens,cost_usd,unknown_cost_requests,errors
        gpt-4o,3,3000,600,300,1.012845678,0,0
        mystery,1,1000,200,100,0,1,1
    "#]]
    .assert_eq(&out);
    let (_, out, _) = gate_usage(
        &state_dir,
        &["--since", "all", "--by", "upstream", "--json"],
    );
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["group"], "openai");
    assert_eq!(rows[0]["requests"], 3);
    assert_eq!(rows[1]["group"], Value::Null);
    assert_eq!(rows[1]["unknown_cost_requests"], 1);
    // Mistakes are explained.
    let (ok, _, err) = gate_usage(&state_dir, &["--since", "last tuesday"]);
    assert!(!ok);
    assert!(err.contains("--since") && err.contains("7d, 24h"), "{err}");
    let (ok, _, err) = gate_usage(&state_dir, &["--by", "colour"]);
    assert!(!ok);
    assert!(err.contains("key, model, upstream, day, owner"), "{err}");
    let (ok, _, err) = gate_usage(&state_dir, &["--json", "--csv"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_admin_api_and_the_cli_read_the_log_of_a_running_daemon() {
    for runtime in RUNTIMES {
        let dir = temp_dir(&format!("usage-admin-{runtime}"));
        let state_dir = dir.join("state");
        let id = populate(&state_dir);
        // Retention off: the records have fixed dates.
        let (mut proc, addr) =
            start_local_daemon(&dir, runtime, "[usage]\nretention_days = 0\n", None);
        let token = std::fs::read_to_string(state_dir.join("admin.token")).unwrap();
        let auth = format!("Bearer {}", token.trim());
        let get = |path: &str, auth: &str| {
            let response =
                http_request(addr, "GET", path, &[("Authorization", auth)], b"").unwrap();
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            (response.status, body)
        };
        let (status, summary) = get("/admin/api/usage?since=2026-12-01&by=key", &auth);
        assert_eq!(status, 200, "{summary}");
        assert_eq!(summary["by"], "key");
        assert_eq!(summary["since_ms"], DEC_1_MS);
        assert_eq!(summary["rows"][0]["group"], id.as_str());
        assert_eq!(summary["rows"][0]["name"], "laptop");
        assert_eq!(summary["rows"][0]["cost_usd"], 1.012345678);
        assert_eq!(summary["total"]["requests"], 4);
        assert_eq!(summary["total"]["unknown_cost_requests"], 1);
        // The CLI reads the same rows while the daemon holds the log open.
        let (ok, out, err) = gate_usage(&state_dir, &["--since", "2026-12-01", "--json"]);
        assert!(ok, "{err}");
        let cli_rows: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(cli_rows, summary["rows"]);
        let (status, series) = get("/admin/api/usage/series?since=2026-12-01", &auth);
        assert_eq!(status, 200, "{series}");
        assert_eq!(series["spend"][0]["day"], "2026-12-01");
        assert_eq!(series["spend"][0]["name"], "laptop");
        assert_eq!(series["tokens"].as_array().unwrap().len(), 3, "{series}");
        // `since` defaults to 7 days: the December records are older on any later date.
        let (status, recent) = get("/admin/api/usage?by=model", &auth);
        assert_eq!(status, 200);
        assert_eq!(recent["by"], "model");
        let (status, error) = get("/admin/api/usage?by=colour", &auth);
        assert_eq!(status, 400);
        assert!(error["error"].as_str().unwrap().contains("`by`"), "{error}");
        let (status, error) = get("/admin/api/usage?since=whenever", &auth);
        assert_eq!(status, 400);
        assert!(
            error["error"].as_str().unwrap().contains("`since`"),
            "{error}"
        );
        for path in ["/admin/api/usage", "/admin/api/usage/series"] {
            let (status, _) = get(path, "Bearer wrong");
            assert_eq!(status, 401, "{path}");
        }
        proc.signal("TERM");
        assert!(proc.wait_exit(Duration::from_secs(30)).success());
        assert!(
            proc.log().contains("usage log written and closed"),
            "{}",
            proc.log()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(UsageDb::path_in(&state_dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(all_records(&state_dir).len(), 4, "{runtime}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Budgets survive a crash: spend settled by a daemon that is then killed with SIGKILL is
/// read back from the usage log by the next start (tokio, then smol on the same state), and
/// `gate token list` shows the same figure.
#[test]
fn spend_survives_kill_9_and_restart() {
    let dir = temp_dir("usage-budget-kill9");
    let state_dir = dir.join("state");
    let mock = common::Mock::start("budget-mock");
    let created = Command::new(common::gate_bin())
        .args([
            "token", "create", "--name", "ci", "--budget", "50", "--period", "month",
        ])
        .arg("--state-dir")
        .arg(&state_dir)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let config = format!(
        "[upstreams.mock]\nprovider = \"custom\"\nbase_url = \"{}\"\nmodels = [\"priced-model\"]\n\
         [upstreams.mock.prices.\"priced-model\"]\ninput = 1000\noutput = 2000\n",
        mock.base_url()
    );
    let spent_of = |addr, state_dir: &Path| {
        let token = std::fs::read_to_string(state_dir.join("admin.token")).unwrap();
        let auth = format!("Bearer {}", token.trim());
        let response = http_request(
            addr,
            "GET",
            "/admin/api/tokens",
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&response.body).unwrap();
        body["tokens"][0]["spent_usd"].as_f64().unwrap()
    };
    let (mut first, addr) = start_local_daemon(&dir, "tokio", &config, None);
    let body =
        r#"{"model":"priced-model","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..3 {
        let response = common::post_chat(addr, &key, body.as_bytes()).unwrap();
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }
    let spent = spent_of(addr, &state_dir);
    assert!(spent > 0.0, "nothing was charged");
    // The writer flushes within a second; then the process dies without a chance to act.
    wait_until(
        "three records in the usage log",
        Duration::from_secs(10),
        || all_records(&state_dir).len() >= 3,
        || first.log(),
    );
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let (mut second, addr) = start_local_daemon(&dir, "smol", &config, None);
    assert_eq!(spent_of(addr, &state_dir), spent, "spend after restart");
    assert!(
        second.log().contains("restored from the usage log"),
        "{}",
        second.log()
    );
    let listed = Command::new(common::gate_bin())
        .args(["token", "list", "--json", "--state-dir"])
        .arg(&state_dir)
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["spent_usd"].as_f64(), Some(spent));
    assert!(
        rows[0]["last_used"]
            .as_str()
            .is_some_and(|d| d.ends_with("UTC")),
        "{rows}"
    );
    second.signal("TERM");
    second.wait_exit(Duration::from_secs(20));
}
