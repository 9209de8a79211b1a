//! Shared state on PostgreSQL (`[store] url`, issue 15): what several daemons behind one load
//! balancer must agree on.
//!
//! Owns the daemon's tables (migrations of component `daemon`, run at every (re)connection
//! under the advisory lock of `gate_rt::store`, so daemons starting together migrate once):
//! - `gate_keys`: API keys (hash, name, expiry, policy as JSON) with a revision per row for
//!   race-free edits, and `gate_keys_version`, a generation a trigger bumps on every change;
//! - `gate_usage`: the usage log of every daemon, one row per request;
//! - `gate_usage_batches`: the id of every batch of usage rows written, so a batch written
//!   twice (an answer lost in an outage, a spool read again) is stored once;
//! - `gate_spend`: spend per key per UTC day, updated in the same statement as the usage
//!   rows, so budgets read a few rows instead of the whole log.
//!
//! And the daemon's side of them:
//! - [`SharedStore`]: key edits (create, update, revoke) and the usage queries of the admin
//!   API and `gate usage`;
//! - [`SharedUsageLog`]: the gateway's usage sink; never waits on the request path, writes in
//!   batches from a task, buffers while the store is down (bounded: [`MAX_BUFFERED`]) and
//!   writes what it holds to `<state_dir>/usage-spool.jsonl` on a stop while the store is
//!   still down (read back at the next start);
//! - [`sync`]: every [`SYNC_INTERVAL`], the keys when their generation moved, and the spend of
//!   every key in its period, into the gateway's key cache and ledger. Polling, not
//!   LISTEN/NOTIFY: see ARCHITECTURE.md, "Scale-out";
//! - [`StoreHealth`]: whether the store answered lately, for `store.on_unavailable`.
//!
//! Must not: wait on the store on the request path (verification reads the cache, admission
//! reads the ledger and [`StoreHealth`]), or show the URL's password (errors come from
//! `gate_rt::store`, which scrubs them).

use gate_rt::tunnel::support::unix_now;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gate_core::accounting::{KeyPolicy, Period, UsageRecord, Usd};
use gate_core::config::OnUnavailable;
use gate_rt::store::{Migration, PgUrl, Postgres, Row, Schema, StoreError, ToSql};
use gate_rt::tunnel::support::{race, Either};
use gate_rt::Runtime;

use crate::admin::types::{SpendPoint, TokenPoint, UsageRow, UsageSeries};
use crate::auth::{KeyEdit, TokenRecord, TokenStore};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::usage::{GroupBy, UsageSink};

/// How often each daemon reads the key generation and the spend of every key: a change on
/// one daemon takes effect on the others within this (plus one usage batch for spend).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// The store counts as unavailable once no sync succeeded for this long.
pub const UNAVAILABLE_AFTER: Duration = Duration::from_secs(2);
/// The longest a usage record waits before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Records written in one statement at most.
pub const MAX_BATCH: usize = 1000;
/// Records the hand-over channel holds (the writer drains it into its buffer at once).
const CHANNEL_CAPACITY: usize = 16 * 1024;
/// Records held in memory while the store is down; past this the oldest go to the spool
/// file (`usage-spool.jsonl`), so none is lost while the disk takes them.
pub const MAX_BUFFERED: usize = 100_000;
/// On a stop, how long the writer keeps trying the store before it spools what is left.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);
/// The spool file in the state directory.
pub const SPOOL_FILE: &str = "usage-spool.jsonl";

/// The daemon's tables, by version.
pub const DAEMON_SCHEMA: Schema = Schema {
    component: "daemon",
    migrations: &[
        Migration {
            version: 1,
            description: "keys, usage log and spend shared by the daemons of a deployment",
            sql: "CREATE TABLE gate_keys (
                id text PRIMARY KEY,
                name text NOT NULL,
                sha256 text NOT NULL UNIQUE,
                created_at bigint NOT NULL,
                expires_at bigint,
                policy text NOT NULL,
                rev bigint NOT NULL DEFAULT 1
            );
            CREATE TABLE gate_keys_version (
                one boolean PRIMARY KEY DEFAULT true CHECK (one),
                generation bigint NOT NULL
            );
            INSERT INTO gate_keys_version (one, generation) VALUES (true, 1);
            CREATE FUNCTION gate_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE gate_keys_version SET generation = generation + 1;
                PERFORM pg_notify('gate_keys', '');
                RETURN NULL;
            END $$;
            CREATE TRIGGER gate_keys_changed AFTER INSERT OR UPDATE OR DELETE ON gate_keys
                FOR EACH STATEMENT EXECUTE FUNCTION gate_keys_changed();
            CREATE TABLE gate_usage (
                uid text PRIMARY KEY,
                daemon text NOT NULL,
                at_ms bigint NOT NULL,
                key_id text NOT NULL,
                owner text,
                endpoint text NOT NULL,
                model text NOT NULL,
                served_model text,
                upstream text,
                input_tokens bigint NOT NULL,
                output_tokens bigint NOT NULL,
                cached_tokens bigint NOT NULL,
                cache_write_tokens bigint NOT NULL,
                cost_nanos bigint,
                latency_ms bigint NOT NULL,
                ttft_ms bigint,
                status integer NOT NULL,
                error text
            );
            CREATE INDEX gate_usage_at ON gate_usage (at_ms);
            CREATE INDEX gate_usage_key_at ON gate_usage (key_id, at_ms);
            CREATE TABLE gate_spend (
                key_id text NOT NULL,
                day integer NOT NULL,
                cost_nanos bigint NOT NULL,
                PRIMARY KEY (key_id, day)
            );",
        },
        Migration {
            version: 2,
            description: "cheaper usage rows: no (key_id, at_ms) index on gate_usage",
            // What each usage row costs PostgreSQL (bench/pgusage.sh; ARCHITECTURE.md, "Shared
            // usage rows"): no query reads `gate_usage_key_at` (the report, the chart and the
            // retention select by `at_ms` alone; the last-used query groups the whole log), and
            // its entry per row cost ~2 us of the server's CPU. Dropping an index is instant on
            // any table size (the migration runs within the connect timeout).
            sql: "DROP INDEX IF EXISTS gate_usage_key_at;",
        },
        Migration {
            version: 3,
            description: "cheaper usage rows: exactly-once per batch, not per row",
            // The per-row unique id cost PostgreSQL more than the row itself: its B-tree entry
            // and the speculative insertion of `ON CONFLICT` were ~4 of the ~6-8 µs of server
            // CPU per row (bench/pgusage.sh; ARCHITECTURE.md, "Shared usage rows"). A batch
            // now carries one id, checked once. Dropping a constraint and a NOT NULL is
            // instant on any table size; old rows keep their uids.
            sql: "CREATE TABLE gate_usage_batches (
                batch text PRIMARY KEY,
                at_ms bigint NOT NULL
            );
            CREATE INDEX gate_usage_batches_at ON gate_usage_batches (at_ms);
            ALTER TABLE gate_usage DROP CONSTRAINT IF EXISTS gate_usage_pkey;
            ALTER TABLE gate_usage ALTER COLUMN uid DROP NOT NULL;",
        },
    ],
};

/// Inserts a batch of usage rows unless its id (`$1`) is already in `gate_usage_batches` (a
/// batch written before, its answer lost), and adds the cost of the rows inserted to
/// `gate_spend`, in one statement: all or nothing. `$2` is the batch's newest `at_ms` (the
/// retention of batch ids), `$3` the daemon.
const INSERT_USAGE_SQL: &str = "
WITH batch AS (
    INSERT INTO gate_usage_batches (batch, at_ms) VALUES ($1, $2)
    ON CONFLICT (batch) DO NOTHING
    RETURNING batch
), ins AS (
    INSERT INTO gate_usage (daemon, at_ms, key_id, owner, endpoint, model, served_model,
        upstream, input_tokens, output_tokens, cached_tokens, cache_write_tokens, cost_nanos,
        latency_ms, ttft_ms, status, error)
    SELECT $3::text, unnest($4::bigint[]), unnest($5::text[]), unnest($6::text[]),
        unnest($7::text[]), unnest($8::text[]), unnest($9::text[]), unnest($10::text[]),
        unnest($11::bigint[]), unnest($12::bigint[]), unnest($13::bigint[]),
        unnest($14::bigint[]), unnest($15::bigint[]), unnest($16::bigint[]),
        unnest($17::bigint[]), unnest($18::integer[]), unnest($19::text[])
    WHERE EXISTS (SELECT 1 FROM batch)
    RETURNING key_id, at_ms, cost_nanos
), spend AS (
    INSERT INTO gate_spend AS s (key_id, day, cost_nanos)
    SELECT key_id, (at_ms / 86400000)::integer, SUM(COALESCE(cost_nanos, 0))::bigint
    FROM ins GROUP BY 1, 2
    ON CONFLICT (key_id, day) DO UPDATE SET cost_nanos = s.cost_nanos + EXCLUDED.cost_nanos
)
SELECT count(*) FROM ins";

/// Spend per key since the start of today, this week, this month, and in total (days since
/// the Unix epoch as `$1`, `$2`, `$3`).
const SPEND_SQL: &str = "
SELECT key_id,
    COALESCE(SUM(cost_nanos) FILTER (WHERE day >= $1), 0)::bigint,
    COALESCE(SUM(cost_nanos) FILTER (WHERE day >= $2), 0)::bigint,
    COALESCE(SUM(cost_nanos) FILTER (WHERE day >= $3), 0)::bigint,
    COALESCE(SUM(cost_nanos), 0)::bigint
FROM gate_spend GROUP BY key_id";

const KEYS_SQL: &str =
    "SELECT id, name, sha256, created_at, expires_at, policy, rev FROM gate_keys";

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether the store answered lately, and what a budgeted key gets when it did not.
#[derive(Debug)]
pub struct StoreHealth {
    /// `postgres://user@host:port/db`, without the password.
    shown: String,
    on_unavailable: OnUnavailable,
    /// Milliseconds since `epoch` of the last successful sync.
    last_ok_ms: AtomicU64,
    /// The last sync failed.
    failing: AtomicBool,
    epoch: Instant,
}

impl StoreHealth {
    fn new(shown: String, on_unavailable: OnUnavailable) -> Self {
        Self {
            shown,
            on_unavailable,
            last_ok_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    fn mark_ok(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ok_ms.store(ms, Ordering::Relaxed);
        self.failing.store(false, Ordering::Relaxed);
    }

    fn mark_failed(&self) {
        self.failing.store(true, Ordering::Relaxed);
    }

    /// Whether the store is unreachable now: the last sync failed, or none succeeded for
    /// [`UNAVAILABLE_AFTER`].
    pub fn unavailable(&self) -> bool {
        let since_ok = self.epoch.elapsed().saturating_sub(Duration::from_millis(
            self.last_ok_ms.load(Ordering::Relaxed),
        ));
        self.failing.load(Ordering::Relaxed) || since_ok > UNAVAILABLE_AFTER
    }

    /// `store.on_unavailable`.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable
    }

    /// Where the store is, without the password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// What this daemon has written to the store, per key (cost of the records committed): the
/// ledger's [`gate_core::accounting::Ledger::sync_shared`] subtracts it from what it settled.
#[derive(Debug, Default)]
pub struct Written(Mutex<HashMap<String, Usd>>);

impl Written {
    fn add(&self, records: &[UsageRecord]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            let cost = r.cost.unwrap_or(Usd::ZERO);
            // The key's name is copied only the first time it is seen.
            match map.get_mut(&*r.key_id) {
                Some(entry) => *entry = entry.saturating_add(cost),
                None => {
                    map.insert(r.key_id.to_string(), cost);
                }
            }
        }
    }

    fn snapshot(&self) -> HashMap<String, Usd> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The shared store of a running daemon.
pub struct SharedStore<R: Runtime> {
    rt: R,
    pg: Postgres<R>,
    health: Arc<StoreHealth>,
    written: Arc<Written>,
    /// This daemon's name in `gate_usage.daemon`.
    daemon_id: String,
}

impl<R: Runtime> std::fmt::Debug for SharedStore<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("url", self.pg.url())
            .field("daemon", &self.daemon_id)
            .finish_non_exhaustive()
    }
}

/// What a key edit in the shared store could not do.
#[derive(Debug, thiserror::Error)]
pub enum KeyChangeError {
    /// The edit is not valid (nothing was written).
    #[error("{0}")]
    Invalid(String),
    /// The store could not be reached or refused the statement.
    #[error("the shared store cannot take the change: {0}")]
    Store(#[from] StoreError),
}

impl<R: Runtime> SharedStore<R> {
    /// Connects to `url` and migrates; an error says why (without the password).
    pub async fn connect(
        rt: R,
        url: &str,
        on_unavailable: OnUnavailable,
        daemon_id: String,
    ) -> Result<Arc<Self>, StoreError> {
        let url = PgUrl::parse(url)?;
        let shown = url.to_string();
        let pg = Postgres::new(rt.clone(), url, DAEMON_SCHEMA);
        pg.connect().await?;
        let health = Arc::new(StoreHealth::new(shown, on_unavailable));
        health.mark_ok();
        Ok(Arc::new(Self {
            rt,
            pg,
            health,
            written: Arc::default(),
            daemon_id,
        }))
    }

    /// The store's health (admission reads it).
    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Where, without the password.
    pub fn describe(&self) -> String {
        self.pg.url().to_string()
    }

    /// Every key (revoked ones are deleted).
    pub async fn load_keys(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self.pg.query(KEYS_SQL, &[]).await?;
        Ok(rows
            .iter()
            .filter_map(|row| self.key_of(row).map(|(record, _)| record))
            .collect())
    }

    fn key_of(&self, row: &Row) -> Option<(TokenRecord, i64)> {
        let id: String = row.try_get(0).ok()?;
        let policy: String = row.try_get(5).ok()?;
        let policy: KeyPolicy = match serde_json::from_str(&policy) {
            Ok(p) => p,
            Err(e) => {
                // A key whose policy this build cannot read is left out rather than let in
                // without its limits.
                tracing::error!(key = %id, error = %e, "a key's policy in the shared store is not readable; the key is refused");
                return None;
            }
        };
        Some((
            TokenRecord {
                id,
                name: row.try_get(1).ok()?,
                sha256: row.try_get(2).ok()?,
                created_at: uint(row.try_get(3).ok()?),
                expires_at: row.try_get::<_, Option<i64>>(4).ok()?.map(uint),
                policy,
            },
            row.try_get(6).ok()?,
        ))
    }

    async fn generation(&self) -> Result<i64, StoreError> {
        let rows = self
            .pg
            .query("SELECT generation FROM gate_keys_version", &[])
            .await?;
        Ok(rows.first().and_then(|r| r.try_get(0).ok()).unwrap_or(0))
    }

    /// Creates a key with `edit`; returns its record and the plaintext key (shown once).
    pub async fn create_key(
        &self,
        edit: &KeyEdit,
    ) -> Result<(TokenRecord, String), KeyChangeError> {
        let (record, token) =
            crate::auth::new_key(edit).map_err(|e| KeyChangeError::Invalid(format!("{e:#}")))?;
        let policy = serde_json::to_string(&record.policy)
            .map_err(|e| KeyChangeError::Invalid(e.to_string()))?;
        let created = int(record.created_at);
        let expires = record.expires_at.map(int);
        self.pg
            .execute(
                "INSERT INTO gate_keys (id, name, sha256, created_at, expires_at, policy)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &record.id,
                    &record.name,
                    &record.sha256,
                    &created,
                    &expires,
                    &policy,
                ],
            )
            .await?;
        Ok((record, token))
    }

    /// Changes key `id`; `Ok(None)` when there is none. An edit made meanwhile by another
    /// daemon is not overwritten: the row's revision must still be the one read.
    pub async fn update_key(
        &self,
        id: &str,
        edit: &KeyEdit,
    ) -> Result<Option<TokenRecord>, KeyChangeError> {
        for _ in 0..5 {
            let rows = self
                .pg
                .query(&format!("{KEYS_SQL} WHERE id = $1"), &[&id])
                .await?;
            let Some((mut record, rev)) = rows.first().and_then(|row| self.key_of(row)) else {
                return Ok(None);
            };
            edit.apply(&mut record, unix_now())
                .map_err(KeyChangeError::Invalid)?;
            let policy = serde_json::to_string(&record.policy)
                .map_err(|e| KeyChangeError::Invalid(e.to_string()))?;
            let expires = record.expires_at.map(int);
            let changed = self
                .pg
                .execute(
                    "UPDATE gate_keys SET name = $3, expires_at = $4, policy = $5, rev = rev + 1
                     WHERE id = $1 AND rev = $2",
                    &[&id, &rev, &record.name, &expires, &policy],
                )
                .await?;
            if changed == 1 {
                return Ok(Some(record));
            }
        }
        Err(KeyChangeError::Invalid(format!(
            "key {id} is being changed elsewhere at the same time; try again"
        )))
    }

    /// Deletes key `id`; false when there is none.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, KeyChangeError> {
        let deleted = self
            .pg
            .execute("DELETE FROM gate_keys WHERE id = $1", &[&id])
            .await?;
        Ok(deleted > 0)
    }

    /// When each key was last used (Unix milliseconds), by every daemon.
    pub async fn last_used(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = self
            .pg
            .query(
                "SELECT key_id, MAX(at_ms) FROM gate_usage GROUP BY key_id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.try_get(0).ok()?, uint(r.try_get(1).ok()?))))
            .collect())
    }

    /// The usage of every daemon since `since_ms`, grouped `by` (as
    /// [`crate::usage::UsageDb::summary`] sums the local log).
    pub async fn summary(&self, since_ms: u64, by: GroupBy) -> Result<Vec<UsageRow>, StoreError> {
        let column = match by {
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
            GroupBy::Upstream => "upstream",
            GroupBy::Day => "to_char(to_timestamp(at_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            GroupBy::Owner => "owner",
        };
        let order = match by {
            GroupBy::Day => "grp",
            _ => "cost DESC, requests DESC, grp",
        };
        let sql = format!(
            "SELECT {column} AS grp, COUNT(*)::bigint AS requests, SUM(input_tokens)::bigint,
                SUM(output_tokens)::bigint, SUM(cached_tokens)::bigint,
                COALESCE(SUM(cost_nanos), 0)::bigint AS cost,
                (COUNT(*) - COUNT(cost_nanos))::bigint,
                SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END)::bigint
             FROM gate_usage WHERE at_ms >= $1 GROUP BY grp ORDER BY {order}"
        );
        let since = int(since_ms);
        let rows = self.pg.query(&sql, &[&since]).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(UsageRow {
                    group: r.try_get(0).ok()?,
                    name: None,
                    requests: uint(r.try_get(1).ok()?),
                    input_tokens: uint(r.try_get(2).ok()?),
                    output_tokens: uint(r.try_get(3).ok()?),
                    cached_tokens: uint(r.try_get(4).ok()?),
                    cost_usd: Usd(uint(r.try_get(5).ok()?)),
                    unknown_cost_requests: uint(r.try_get(6).ok()?),
                    errors: uint(r.try_get(7).ok()?),
                })
            })
            .collect())
    }

    /// The web UI's chart series of every daemon since `since_ms`.
    pub async fn series(&self, since_ms: u64) -> Result<UsageSeries, StoreError> {
        const DAY: &str = "to_char(to_timestamp(at_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";
        let since = int(since_ms);
        let spend = self
            .pg
            .query(
                &format!(
                    "SELECT {DAY} AS day, key_id, COUNT(*)::bigint,
                        COALESCE(SUM(cost_nanos), 0)::bigint, (COUNT(*) - COUNT(cost_nanos))::bigint
                     FROM gate_usage WHERE at_ms >= $1 GROUP BY day, key_id ORDER BY day, key_id"
                ),
                &[&since],
            )
            .await?;
        let tokens = self
            .pg
            .query(
                &format!(
                    "SELECT {DAY} AS day, model, COUNT(*)::bigint, SUM(input_tokens)::bigint,
                        SUM(output_tokens)::bigint, SUM(cached_tokens)::bigint
                     FROM gate_usage WHERE at_ms >= $1 GROUP BY day, model ORDER BY day, model"
                ),
                &[&since],
            )
            .await?;
        Ok(UsageSeries {
            since_ms,
            spend: spend
                .iter()
                .filter_map(|r| {
                    Some(SpendPoint {
                        day: r.try_get(0).ok()?,
                        key_id: r.try_get(1).ok()?,
                        name: None,
                        requests: uint(r.try_get(2).ok()?),
                        cost_usd: Usd(uint(r.try_get(3).ok()?)),
                        unknown_cost_requests: uint(r.try_get(4).ok()?),
                    })
                })
                .collect(),
            tokens: tokens
                .iter()
                .filter_map(|r| {
                    Some(TokenPoint {
                        day: r.try_get(0).ok()?,
                        model: r.try_get(1).ok()?,
                        requests: uint(r.try_get(2).ok()?),
                        input_tokens: uint(r.try_get(3).ok()?),
                        output_tokens: uint(r.try_get(4).ok()?),
                        cached_tokens: uint(r.try_get(5).ok()?),
                    })
                })
                .collect(),
        })
    }

    /// Every key's settled spend by period: key -> (today, this week, this month, total).
    pub(crate) async fn spend(
        &self,
        now_unix: u64,
    ) -> Result<HashMap<String, [Usd; 4]>, StoreError> {
        let day = |p: Period| i32::try_from(p.start(now_unix) / 86_400).unwrap_or(i32::MAX);
        let (d, w, m) = (day(Period::Day), day(Period::Week), day(Period::Month));
        let rows = self.pg.query(SPEND_SQL, &[&d, &w, &m]).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let key: String = r.try_get(0).ok()?;
                let mut sums = [Usd::ZERO; 4];
                for (i, sum) in sums.iter_mut().enumerate() {
                    *sum = Usd(uint(r.try_get(i + 1).ok()?));
                }
                Some((key, sums))
            })
            .collect())
    }

    /// Writes the batch `id` (nothing if a batch of that id was written before); counts it as
    /// written. The columns borrow the records' text (no copy per field): the statement's
    /// parameters are encoded in one go on the runtime, so what they cost is a pause of the
    /// writer's worker.
    async fn write_usage(&self, id: &str, batch: &[UsageRecord]) -> Result<(), StoreError> {
        fn column<'a, T>(batch: &'a [UsageRecord], f: impl Fn(&'a UsageRecord) -> T) -> Vec<T> {
            batch.iter().map(f).collect()
        }
        let num = |f: fn(&UsageRecord) -> u64| column(batch, move |r| int(f(r)));
        let newest = int(batch.iter().map(|r| r.at_ms).max().unwrap_or(0));
        let at = num(|r| r.at_ms);
        let keys = column(batch, |r| &*r.key_id);
        let owners = column(batch, |r| r.owner.as_deref());
        let endpoints = column(batch, |r| &*r.endpoint);
        let models = column(batch, |r| &*r.model);
        let served = column(batch, |r| r.served_model.as_deref());
        let upstreams = column(batch, |r| r.upstream.as_deref());
        let input = num(|r| r.input_tokens);
        let output = num(|r| r.output_tokens);
        let cached = num(|r| r.cached_tokens);
        let cache_write = num(|r| r.cache_write_tokens);
        let costs = column(batch, |r| r.cost.map(|c| int(c.0)));
        let latency = num(|r| r.latency_ms);
        let ttft = column(batch, |r| r.ttft_ms.map(int));
        let status = column(batch, |r| i32::from(r.status));
        let errors = column(batch, |r| r.error.as_deref());
        let params: [&(dyn ToSql + Sync); 19] = [
            &id,
            &newest,
            &self.daemon_id,
            &at,
            &keys,
            &owners,
            &endpoints,
            &models,
            &served,
            &upstreams,
            &input,
            &output,
            &cached,
            &cache_write,
            &costs,
            &latency,
            &ttft,
            &status,
            &errors,
        ];
        self.pg.query(INSERT_USAGE_SQL, &params).await?;
        self.written.add(batch);
        Ok(())
    }

    /// Starts the usage log's writer task: the sink to give the gateway.
    pub fn start_usage_log(
        self: &Arc<Self>,
        state_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Arc<SharedUsageLog> {
        let (sender, receiver) = async_channel::bounded(CHANNEL_CAPACITY);
        let (control, control_rx) = async_channel::unbounded();
        let nudged = Arc::new(AtomicBool::new(false));
        let wakeups = Arc::new(AtomicU64::new(0));
        let spool = state_dir.join(SPOOL_FILE);
        let mut writer = UsageWriter {
            store: self.clone(),
            receiver,
            control: control_rx,
            nudged: nudged.clone(),
            wakeups: wakeups.clone(),
            batches: VecDeque::new(),
            buffered: 0,
            oldest: None,
            spool: spool.clone(),
            spooled: false,
            spool_loaded: false,
            metrics: metrics.clone(),
            outage_since: None,
        };
        writer.read_spool();
        self.rt.spawn(writer.run());
        Arc::new(SharedUsageLog {
            sender,
            control,
            nudged,
            wakeups,
            metrics,
            last_drop_warning: Mutex::new(None),
        })
    }
}

/// The gateway's usage sink with `[store] url` (see the module docs).
pub struct SharedUsageLog {
    sender: async_channel::Sender<UsageRecord>,
    control: async_channel::Sender<Control>,
    /// A [`Control::Drain`] was sent and the writer has not drained the channel since.
    nudged: Arc<AtomicBool>,
    /// How often the writer came back from waiting (tests: no wake-up per record).
    wakeups: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    last_drop_warning: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for SharedUsageLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedUsageLog").finish_non_exhaustive()
    }
}

enum Control {
    /// Write everything handed over so far (or hold it, if the store is down), then answer
    /// whether it is written.
    Flush(async_channel::Sender<bool>),
    /// Write what can be written within [`CLOSE_DEADLINE`], spool the rest, stop.
    Close(async_channel::Sender<bool>),
    /// [`MAX_BATCH`] records wait in the channel: take them (and write them when the store
    /// takes writes).
    Drain,
}

impl SharedUsageLog {
    /// Waits until every record handed over before this call is in the store; false when
    /// the store is down (the records stay buffered).
    pub async fn flush(&self) -> bool {
        let (done, wait) = async_channel::bounded(1);
        if self.control.send(Control::Flush(done)).await.is_err() {
            return false;
        }
        wait.recv().await.unwrap_or(false)
    }

    /// How often the writer task came back from waiting (for tests).
    #[doc(hidden)]
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// A clean stop: writes what it can, spools the rest to the state directory.
    pub async fn flush_and_close(&self) -> bool {
        let (done, wait) = async_channel::bounded(1);
        if self.control.send(Control::Close(done)).await.is_err() {
            return false;
        }
        wait.recv().await.unwrap_or(false)
    }
}

impl UsageSink for SharedUsageLog {
    fn record(&self, record: UsageRecord) {
        self.metrics.record_usage(&record);
        if self.sender.try_send(record).is_ok() {
            // The writer is not woken per record (a wake-up across threads per request was
            // most of what the shared log cost the gateway under load): the first record
            // after an idle spell wakes it, then it sleeps until the batch is due, unless a
            // full batch waits first.
            if self.sender.len() >= MAX_BATCH && !self.nudged.swap(true, Ordering::AcqRel) {
                let _ = self.control.try_send(Control::Drain);
            }
        } else {
            // The writer drains the channel into its buffer without waiting on the store,
            // so a full channel means the writer task is stuck or gone.
            self.metrics.usage_dropped.inc();
            let mut last = self
                .last_drop_warning
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    dropped_total = self.metrics.usage_dropped.get(),
                    "usage records dropped: the shared usage log's writer is not taking them"
                );
            }
        }
    }
}

struct UsageWriter<R: Runtime> {
    store: Arc<SharedStore<R>>,
    receiver: async_channel::Receiver<UsageRecord>,
    control: async_channel::Receiver<Control>,
    /// See [`SharedUsageLog::nudged`]; cleared when the channel is drained.
    nudged: Arc<AtomicBool>,
    wakeups: Arc<AtomicU64>,
    /// Records not yet written, oldest first, in batches (see [`Batch`]).
    batches: VecDeque<Batch>,
    /// Records in `batches`.
    buffered: usize,
    /// When the oldest record of the buffer arrived.
    oldest: Option<Instant>,
    spool: PathBuf,
    /// Whether the spool file holds records (deleted once they are written).
    spooled: bool,
    /// Whether every record of the spool file is in the buffer.
    spool_loaded: bool,
    metrics: Arc<Metrics>,
    /// When writes started failing (logged once per outage).
    outage_since: Option<Instant>,
}

/// Records written in one statement under one id. Once a batch was sent (or spooled) it
/// never changes: sent again after an answer was lost, or read back from the spool, it has
/// the same id and the same records, and the store takes it once
/// (`gate_usage_batches`). A batch whose fate is unknown must never be merged or split.
struct Batch {
    /// [`BATCH_PREFIX`] and a [`uid`]; or, for the records of a spool written by a build that
    /// gave every record an id of its own, `legacy:<first id>:<count>`.
    id: String,
    records: Vec<UsageRecord>,
    /// Sent, spooled or read from the spool: it takes no more records. Only the last batch
    /// of the buffer can be unsealed.
    sealed: bool,
    /// Read from the spool file, and in it still (it is never written there twice: two
    /// copies side by side would read back as one batch of twice the records).
    in_spool: bool,
}

/// How the ids of batches start (a record's id of earlier builds is 32 hex digits).
const BATCH_PREFIX: &str = "b";

/// A new batch's id.
fn batch_id() -> String {
    format!("{BATCH_PREFIX}{}", uid())
}

/// A batch id of this build (not a record id of an earlier one).
fn is_batch_id(id: &str) -> bool {
    id.len() == BATCH_PREFIX.len() + 32
        && id.starts_with(BATCH_PREFIX)
        && id[BATCH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// A unique id, time-ordered: the milliseconds since the Unix epoch (12 hex digits),
/// a counter of this process (8 hex digits) and 48 random bits (12 hex digits), 32
/// characters. Ids this process makes later sort later (within one millisecond by the
/// counter), so a B-tree of them takes new ones at its right edge, where PostgreSQL fills a
/// page before it splits it, instead of at random pages all over an index larger than
/// memory. Unique: within a process by (millisecond, counter), between daemons by the 48
/// random bits besides.
fn uid() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    // Drawn once per process (a system RNG call per record was most of a record's cost to
    // the writer): the counter keeps this process's ids apart, the random part other
    // processes' (other daemons, this daemon's earlier runs).
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let process = PROCESS.get_or_init(|| {
        crate::auth::random_hex::<6>().unwrap_or_else(|_| {
            // The system RNG failed: the process id and the start time's nanoseconds.
            format!(
                "{:06x}{:06x}",
                std::process::id() & 0xff_ffff,
                now.subsec_nanos() & 0xff_ffff
            )
        })
    });
    let seq = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:012x}{seq:08x}{process}",
        now.as_millis() & 0xffff_ffff_ffff
    )
}

/// The batches of a spool file's text, and how many records they hold (see
/// `UsageWriter::read_spool`).
fn parse_spool(text: &str) -> (Vec<Batch>, usize) {
    let mut count = 0usize;
    let mut batches: Vec<Batch> = Vec::new();
    // The legacy run being read: its first record id and records.
    let mut legacy: Option<(String, Vec<UsageRecord>)> = None;
    let end_legacy = |legacy: &mut Option<(String, Vec<UsageRecord>)>, batches: &mut Vec<Batch>| {
        if let Some((first, records)) = legacy.take() {
            batches.push(Batch {
                id: format!("legacy:{first}:{}", records.len()),
                records,
                sealed: true,
                in_spool: true,
            });
        }
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (id, record) = match serde_json::from_str::<(String, UsageRecord)>(line) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "a line of the usage spool is not a record; skipped");
                continue;
            }
        };
        count += 1;
        if is_batch_id(&id) {
            end_legacy(&mut legacy, &mut batches);
            match batches.last_mut() {
                Some(batch) if batch.id == id => batch.records.push(record),
                _ => batches.push(Batch {
                    id,
                    records: vec![record],
                    sealed: true,
                    in_spool: true,
                }),
            }
        } else {
            if legacy.as_ref().is_some_and(|(_, r)| r.len() >= MAX_BATCH) {
                end_legacy(&mut legacy, &mut batches);
            }
            legacy
                .get_or_insert_with(|| (id, Vec::new()))
                .1
                .push(record);
        }
    }
    end_legacy(&mut legacy, &mut batches);
    (batches, count)
}

impl<R: Runtime> UsageWriter<R> {
    /// Records a previous run spooled (the store was down when it stopped) go first. The
    /// spool's lines are `[batch id, record]`; consecutive lines of one id are one batch, read
    /// back as it was sent. Lines of an earlier build (an id per record) are grouped in runs
    /// of up to [`MAX_BATCH`] under an id made of the run's first id and length: the same
    /// file read again gives the same batches.
    fn read_spool(&mut self) {
        let text = match std::fs::read_to_string(&self.spool) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.spooled = false;
                return;
            }
            Err(e) => {
                self.spooled = false;
                tracing::error!(path = %self.spool.display(), error = %e, "cannot read the usage spool; its records stay in it, unwritten");
                return;
            }
        };
        let (batches, count) = parse_spool(&text);
        self.spool_loaded = true;
        if count > 0 {
            self.spooled = true;
            if self.buffered == 0 {
                self.oldest = Some(Instant::now());
            }
            self.buffered += count;
            self.batches.extend(batches);
            tracing::info!(records = count, path = %self.spool.display(), "usage records spooled by the last run will be written to the shared store");
        }
    }

    fn take(&mut self, record: UsageRecord) {
        if self.buffered == 0 {
            self.oldest = Some(Instant::now());
        }
        match self.batches.back_mut() {
            Some(batch) if !batch.sealed && batch.records.len() < MAX_BATCH => {
                batch.records.push(record);
            }
            _ => {
                self.batches.push_back(Batch {
                    id: batch_id(),
                    records: vec![record],
                    sealed: false,
                    in_spool: false,
                });
            }
        }
        self.buffered += 1;
        if self.buffered > MAX_BUFFERED {
            // Past the bound the oldest batches go to disk: nothing handed over is dropped
            // while the state directory takes them.
            let mut spilled = Vec::new();
            while self.buffered > MAX_BUFFERED / 2 {
                let Some(batch) = self.batches.pop_front() else {
                    break;
                };
                self.buffered -= batch.records.len();
                spilled.push(batch);
            }
            self.append_spool(&spilled);
        }
    }

    fn append_spool(&mut self, batches: &[Batch]) -> bool {
        use std::io::Write;
        let mut text = String::new();
        let mut records = 0usize;
        for batch in batches.iter().filter(|b| !b.in_spool) {
            for record in &batch.records {
                if let Ok(line) = serde_json::to_string(&(&batch.id, record)) {
                    text.push_str(&line);
                    text.push('\n');
                    records += 1;
                }
            }
        }
        if records == 0 {
            if !batches.is_empty() {
                // All of them in the file already, and now only there: read it again later.
                self.spool_loaded = false;
            }
            return true;
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spool)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_data()));
        match written {
            Ok(()) => {
                self.spooled = true;
                // The file now holds records the buffer does not: read it whole again later
                // (the batches already written are skipped by their ids).
                self.spool_loaded = false;
                tracing::warn!(records, path = %self.spool.display(), "usage records spooled to disk (the shared store is unreachable); written to it at the next start");
                true
            }
            Err(e) => {
                self.metrics.usage_dropped.inc_by(records as u64);
                tracing::error!(records, path = %self.spool.display(), error = %e, "usage records lost: the shared store is unreachable and the spool cannot be written");
                false
            }
        }
    }

    /// Writes the buffer in batches; false when the store refused (what is left stays).
    async fn write_all(&mut self) -> bool {
        loop {
            if !self.write_buffer().await {
                return false;
            }
            if !self.spooled {
                return true;
            }
            if self.spool_loaded {
                // Everything the spool held is written now.
                self.spooled = false;
                self.spool_loaded = false;
                if let Err(e) = std::fs::remove_file(&self.spool) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %self.spool.display(), error = %e, "cannot remove the usage spool (its records are written; a next start skips them as duplicates)");
                    }
                }
                return true;
            }
            // Records spilled to disk during the outage: read them back and write them.
            self.read_spool();
        }
    }

    async fn write_buffer(&mut self) -> bool {
        while let Some(batch) = self.batches.front_mut() {
            // Sent from now on: whatever the answer, the batch is what it is.
            batch.sealed = true;
            let batch = &*batch;
            match self.store.write_usage(&batch.id, &batch.records).await {
                Ok(()) => {
                    if let Some(done) = self.batches.pop_front() {
                        self.buffered -= done.records.len();
                    }
                    if let Some(since) = self.outage_since.take() {
                        tracing::info!(
                            outage = ?since.elapsed(),
                            "usage log: the shared store takes records again; the buffered ones are written"
                        );
                    }
                }
                Err(e) => {
                    if self.outage_since.is_none() {
                        self.outage_since = Some(Instant::now());
                        tracing::warn!(error = %e, buffered = self.buffered, "usage log: cannot write to the shared store; records are buffered in memory (up to {MAX_BUFFERED}, then spooled to disk) and written when it is back");
                    }
                    return false;
                }
            }
        }
        self.oldest = None;
        true
    }

    fn drain_channel(&mut self) {
        // Cleared first: records sent from here on may nudge again.
        self.nudged.store(false, Ordering::Release);
        while let Ok(record) = self.receiver.try_recv() {
            self.take(record);
        }
    }

    async fn run(mut self) {
        let mut retry_at: Option<Instant> = None;
        loop {
            // Wait for a record, a control message, or the time the buffer is due.
            let due = match (self.oldest, retry_at) {
                (_, Some(at)) => Some(at),
                (Some(oldest), None) => Some(oldest + FLUSH_INTERVAL),
                (None, None) => None,
            };
            let wait = due.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
            });
            // Records are listened for only while none waits: a batch under way is taken
            // from the channel when it is due (or on a `Drain`), not record by record.
            let idle = self.buffered == 0 && retry_at.is_none();
            let next_record = async {
                if idle {
                    self.receiver.recv().await
                } else {
                    std::future::pending().await
                }
            };
            let event = race(
                race(next_record, self.control.recv()),
                self.store.rt.sleep(wait),
            )
            .await;
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            match event {
                Either::Left(Either::Left(Ok(record))) => {
                    self.take(record);
                    self.drain_channel();
                    if self.buffered < MAX_BATCH || retry_at.is_some() {
                        continue;
                    }
                }
                Either::Left(Either::Left(Err(_))) => {
                    // Every sender is gone: write what is left, as on a close.
                    self.close().await;
                    return;
                }
                Either::Left(Either::Right(Ok(Control::Flush(done)))) => {
                    self.drain_channel();
                    let ok = self.write_all().await;
                    retry_at = (!ok).then(|| Instant::now() + FLUSH_INTERVAL * 4);
                    let _ = done.try_send(ok);
                    continue;
                }
                Either::Left(Either::Right(Ok(Control::Close(done)))) => {
                    let ok = self.close().await;
                    let _ = done.try_send(ok);
                    return;
                }
                Either::Left(Either::Right(Ok(Control::Drain))) => {}
                Either::Left(Either::Right(Err(_))) => {
                    self.close().await;
                    return;
                }
                Either::Right(()) => {}
            }
            self.drain_channel();
            let due_now = self
                .oldest
                .is_some_and(|oldest| oldest.elapsed() >= FLUSH_INTERVAL)
                || self.buffered >= MAX_BATCH;
            if due_now && retry_at.is_none_or(|at| Instant::now() >= at) {
                let ok = self.write_all().await;
                // The client backs off its reconnects; this only paces the attempts.
                retry_at = (!ok).then(|| Instant::now() + FLUSH_INTERVAL * 4);
            }
        }
    }

    /// Writes what it can within [`CLOSE_DEADLINE`], spools the rest.
    async fn close(&mut self) -> bool {
        self.drain_channel();
        let deadline = Instant::now() + CLOSE_DEADLINE;
        loop {
            if self.write_all().await {
                return true;
            }
            if Instant::now() >= deadline {
                break;
            }
            self.store.rt.sleep(FLUSH_INTERVAL).await;
            self.drain_channel();
        }
        // The records read from the spool are in it still (it is removed only once they are
        // written); a batch there twice is stored once (its id).
        let left: Vec<Batch> = self.batches.drain(..).collect();
        self.buffered = 0;
        self.append_spool(&left);
        false
    }
}

/// How often a daemon deletes shared usage rows past `usage.retention_days`.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows one retention statement deletes at most (a first run on a large log is split into
/// statements short enough not to hold up the syncs pipelined on the same connection).
pub const RETENTION_CHUNK: i64 = 10_000;

impl<R: Runtime> SharedStore<R> {
    /// Deletes the shared usage rows older than `cutoff_ms`, [`RETENTION_CHUNK`] at a time;
    /// returns how many. Idempotent: daemons doing it at the same time delete each row once
    /// between them. `gate_spend` stays (one row per key and day): budgets are not reset by
    /// the retention. The ids of batches whose newest row is older go too: a batch replayed
    /// after that (from a spool kept longer than the retention) is stored again, and its
    /// rows deleted at the next run.
    pub async fn delete_usage_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        // By the rows' physical ids (a TID scan), so each chunk reads its rows once: `uid IN
        // (...)` let the planner join against a sequential scan of the whole log for every
        // chunk (bench/pgusage.sh --explain). A row another daemon deleted meanwhile is
        // skipped.
        let deleted = self
            .delete_chunked(
                "DELETE FROM gate_usage WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM gate_usage WHERE at_ms < $1 LIMIT $2))",
                cutoff_ms,
            )
            .await?;
        self.delete_chunked(
            "DELETE FROM gate_usage_batches WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM gate_usage_batches WHERE at_ms < $1 LIMIT $2))",
            cutoff_ms,
        )
        .await?;
        Ok(deleted)
    }

    /// Runs `delete` (`$1` the cutoff, `$2` the chunk) until a chunk deletes less than
    /// [`RETENTION_CHUNK`] rows; returns how many it deleted.
    async fn delete_chunked(&self, delete: &str, cutoff_ms: u64) -> Result<u64, StoreError> {
        let cutoff = int(cutoff_ms);
        let mut deleted = 0;
        loop {
            let n = self
                .pg
                .execute(delete, &[&cutoff, &RETENTION_CHUNK])
                .await?;
            deleted += n;
            if n < u64::try_from(RETENTION_CHUNK).unwrap_or(u64::MAX) {
                return Ok(deleted);
            }
        }
    }
}

/// `usage.retention_days` on the shared usage log: at start and every
/// [`RETENTION_INTERVAL`], rows older than the retention are deleted, in a task of its own
/// (never on the request path). Every daemon does it; the deletes are idempotent. A store
/// that cannot be reached is tried again at the next interval. `retention_days = 0` keeps
/// everything.
pub async fn retention<R: Runtime>(
    rt: R,
    store: Arc<SharedStore<R>>,
    retention_days: u32,
    stop: gate_rt::tunnel::support::Shutdown,
) {
    if retention_days == 0 {
        return;
    }
    loop {
        let cutoff = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        )
        .unwrap_or(u64::MAX)
        .saturating_sub(u64::from(retention_days) * 86_400_000);
        match store.delete_usage_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                retention_days,
                store = %store.health.shown,
                "shared usage log: deleted records past the retention (usage.retention_days)"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "shared usage log: cannot delete records past the retention; trying again in {} min",
                RETENTION_INTERVAL.as_secs() / 60
            ),
        }
        if let Either::Left(()) = race(stop.wait(), rt.sleep(RETENTION_INTERVAL)).await {
            return;
        }
    }
}

/// Keeps the gateway's keys and spend in step with the store every [`SYNC_INTERVAL`] until
/// `stop` fires.
pub async fn sync<R: Runtime>(
    rt: R,
    store: Arc<SharedStore<R>>,
    gateway: Arc<Gateway<R>>,
    stop: gate_rt::tunnel::support::Shutdown,
) {
    let mut generation = None;
    loop {
        match sync_once(&store, &gateway, &mut generation).await {
            Ok(()) => {
                if store.health.failing.load(Ordering::Relaxed) {
                    tracing::info!(store = %store.health.shown, "shared store reachable again: keys and spend are in step");
                }
                store.health.mark_ok();
            }
            Err(e) => {
                if !store.health.failing.load(Ordering::Relaxed) {
                    tracing::warn!(error = %e, on_unavailable = ?store.health.on_unavailable, "shared store unreachable: keys are checked against the last copy; budgeted keys follow store.on_unavailable");
                }
                store.health.mark_failed();
            }
        }
        if let Either::Left(()) = race(stop.wait(), rt.sleep(SYNC_INTERVAL)).await {
            return;
        }
    }
}

/// Reads the keys if their generation moved, and every key's spend.
pub async fn sync_once<R: Runtime>(
    store: &SharedStore<R>,
    gateway: &Gateway<R>,
    generation: &mut Option<i64>,
) -> Result<(), StoreError> {
    let now = store.generation().await?;
    if *generation != Some(now) {
        let keys = store.load_keys().await?;
        gateway.set_tokens(TokenStore::from_records(keys));
        *generation = Some(now);
    }
    // What was written before asking: see `Ledger::sync_shared`.
    let written = store.written.snapshot();
    let now_unix = unix_now();
    let spend = store.spend(now_unix).await?;
    gateway.apply_shared_spend(&spend, &written, now_unix);
    Ok(())
}

/// `sums` (today, this week, this month, total) for `period`.
pub fn spend_in(sums: &[Usd; 4], period: Period) -> Usd {
    match period {
        Period::Day => sums[0],
        Period::Week => sums[1],
        Period::Month => sums[2],
        Period::Total => sums[3],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::{batch_id, is_batch_id, parse_spool, uid, MAX_BATCH};
    use gate_core::accounting::{UsageRecord, Usd};
    use std::sync::Arc;

    fn record(cost: u64) -> UsageRecord {
        UsageRecord {
            at_ms: 1_700_000_000_000,
            key_id: Arc::from("k"),
            owner: None,
            endpoint: "chat".into(),
            model: Arc::from("m"),
            served_model: None,
            upstream: None,
            input_tokens: 1,
            output_tokens: 1,
            cached_tokens: 0,
            cache_write_tokens: 0,
            cost: Some(Usd(cost)),
            latency_ms: 1,
            ttft_ms: None,
            status: 200,
            error: None,
        }
    }

    fn line(id: &str, cost: u64) -> String {
        serde_json::to_string(&(id, record(cost))).unwrap() + "\n"
    }

    #[test]
    fn batch_ids_are_told_apart_from_record_ids_of_earlier_builds() {
        let id = batch_id();
        assert!(is_batch_id(&id), "{id}");
        assert!(!is_batch_id(&uid()), "a record id of an earlier build");
        assert!(!is_batch_id("replayed-0"));
        assert!(!is_batch_id(&format!("{id}0")));
        assert!(!is_batch_id(&format!("b{}", "g".repeat(32))));
    }

    /// A spool reads back as the batches written to it: the lines of one id together, in
    /// order; the lines of an earlier build in runs of at most `MAX_BATCH` under an id that
    /// is the same every time the file is read; lines that are not records skipped.
    #[test]
    fn a_spool_reads_back_as_the_batches_written_to_it() {
        let (a, b) = (batch_id(), batch_id());
        let mut text = String::new();
        for i in 0..3 {
            text += &line(&a, i);
        }
        text += "not a record\n\n";
        for i in 0..(MAX_BATCH as u64 + 5) {
            text += &line(&format!("{:032x}", i), 100 + i);
        }
        text += &line(&b, 7);
        text += &line(&format!("{:032x}", 999_999), 8);
        let (batches, count) = parse_spool(&text);
        assert_eq!(count, 3 + MAX_BATCH + 5 + 1 + 1);
        let shape: Vec<(String, usize)> = batches
            .iter()
            .map(|b| (b.id.clone(), b.records.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (a.clone(), 3),
                (format!("legacy:{:032x}:{MAX_BATCH}", 0), MAX_BATCH),
                (format!("legacy:{:032x}:5", MAX_BATCH), 5),
                (b.clone(), 1),
                (format!("legacy:{:032x}:1", 999_999), 1),
            ]
        );
        assert!(batches.iter().all(|b| b.in_spool));
        let costs: Vec<u64> = batches[0]
            .records
            .iter()
            .map(|r| r.cost.unwrap().0)
            .collect();
        assert_eq!(costs, [0, 1, 2]);
        // Read again: the same ids.
        let again: Vec<String> = parse_spool(&text).0.into_iter().map(|b| b.id).collect();
        assert_eq!(
            again,
            shape.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn shared_usage_uids_are_unique_and_time_ordered() {
        let first: Vec<String> = (0..1000).map(|_| uid()).collect();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = uid();
        let mut seen = std::collections::HashSet::new();
        for id in &first {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(seen.insert(id.clone()), "duplicate {id}");
            assert!(*id < later, "{id} made before {later} sorts after it");
        }
        // Made one after the other on one thread: in order (the clock does not go back
        // here; within a millisecond the counter orders them).
        assert!(first.windows(2).all(|w| w[0] < w[1]), "not in order");
    }
}
