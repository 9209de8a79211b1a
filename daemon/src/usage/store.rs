//! The usage database: `<state_dir>/usage.db`, SQLite in WAL mode, one table of records.
//!
//! Owns the schema, the writes (batches in one transaction, retention deletes) and every
//! query (spend per key and period, last use, summaries, chart series). Blocking: it runs
//! on the writer thread ([`super::writer`]), on a short-lived thread per admin query, or
//! in the CLI. Must not: be called on an async executor's thread, or create the file when
//! opened read-only (`gate usage` on a machine where nothing was recorded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gate_core::accounting::{Period, UsageRecord, Usd};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::admin::types::{SpendPoint, TokenPoint, UsageRow, UsageSeries};

/// The database's file name in the state directory.
pub const DB_FILE: &str = "usage.db";

/// The schema version this build writes (`PRAGMA user_version`). 2: the per-key day totals
/// (`usage_key_days`) replace the `(key_id, at_ms)` index (see [`MIGRATE_1_TO_2`]). 3: the
/// rows' ids are time-ordered and replace the `at_ms` index (see [`migrate_2_to_3`]).
const SCHEMA_VERSION: i64 = 3;

/// How long a connection waits for another one's lock (a checkpoint, the writer's commit).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bits of a row's id below its millisecond (schema 3): a row's id is at least
/// `at_ms << ID_SHIFT` ([`id_floor`]), so "`at_ms >= since`" implies "`id >= since <<
/// ID_SHIFT`", a range of the table's own B-tree instead of a second index.
const ID_SHIFT: u32 = 20;

/// The largest millisecond an id encodes (later times share it): ids stay below 2^63. The
/// year 2248; a clock that far off only makes queries scan more.
const MAX_ID_MS: u64 = (1 << (63 - ID_SHIFT)) - 1;

/// The smallest id a row of `at_ms` may have (schema 3).
fn id_floor(at_ms: u64) -> i64 {
    int(at_ms.min(MAX_ID_MS) << ID_SHIFT)
}

/// How far behind its id's millisecond a row's `at_ms` may be and still be deleted by the
/// retention pass that first could: rows are written when their request ends (in batches
/// whose ids start at the floor of the batch's latest arrival), ids follow the order of
/// writing, and `at_ms` is when the request arrived, so a request longer than this (or a
/// clock set back by more) keeps its row until a later pass.
const RETENTION_LAG_MS: u64 = DAY_MS;

/// The `usage` table's columns (every schema creates it with these).
macro_rules! usage_columns {
    () => {
        "(
    id                 INTEGER PRIMARY KEY,
    at_ms              INTEGER NOT NULL,
    key_id             TEXT    NOT NULL,
    owner              TEXT,
    endpoint           TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    served_model       TEXT,
    upstream           TEXT,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_nanos         INTEGER,
    latency_ms         INTEGER NOT NULL,
    ttft_ms            INTEGER,
    status             INTEGER NOT NULL,
    error              TEXT
)"
    };
}

/// The columns after `id`, in the table's order.
const USAGE_VALUES: &str = "at_ms, key_id, owner, endpoint, model, served_model, upstream,
    input_tokens, output_tokens, cached_tokens, cache_write_tokens, cost_nanos, latency_ms,
    ttft_ms, status, error";

const SCHEMA: &str = concat!(
    "CREATE TABLE IF NOT EXISTS usage ",
    usage_columns!(),
    ";
CREATE TABLE IF NOT EXISTS usage_key_days (
    key_id     TEXT    NOT NULL,
    day        INTEGER NOT NULL,
    cost_nanos INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
) WITHOUT ROWID;
"
);

/// Schema 1 -> 2. Schema 1 indexed `usage` by `(key_id, at_ms)` for a key's spend in its
/// budget period and each key's last use; that index cost more than half of the writer's
/// CPU per row (~1.9 of ~3.3 µs: every row went into the middle of a B-tree, one insertion
/// point per key). Schema 2 keeps per key and UTC day the cost and the last use
/// (`usage_key_days`, one upsert per key and day per batch), which is what those two
/// questions read (budget periods start on UTC days). The totals are built from the rows
/// once, then the index goes.
const MIGRATE_1_TO_2: &str = "
INSERT INTO usage_key_days (key_id, day, cost_nanos, last_at_ms)
    SELECT key_id, at_ms / 86400000, COALESCE(SUM(cost_nanos), 0), MAX(at_ms)
    FROM usage GROUP BY 1, 2;
DROP INDEX IF EXISTS usage_key_at;
";

/// Milliseconds in a UTC day: `usage_key_days.day` is `at_ms / DAY_MS`.
const DAY_MS: u64 = 86_400_000;

/// Schema 2 -> 3 (`migrate_2_to_3`). Schema 2 indexed `usage` by `at_ms` for every "since" query; that
/// index was a third of the writer's CPU per row (harness: 2.1 -> 1.5 µs per row without
/// it). Schema 3 gives each row an id of at least `at_ms << ID_SHIFT` (see
/// `UsageDb::insert_paced`), so the table's own B-tree is in time order and a
/// "since" query is a range of it. The rows are copied once with such ids (a row's place
/// within its millisecond from its old id); more than 2^20 rows in one millisecond would
/// collide and fail the migration, leaving schema 2 as it was.
fn migrate_2_to_3() -> String {
    format!(
        "CREATE TABLE usage_v3 {columns};
INSERT INTO usage_v3 (id, {USAGE_VALUES})
    SELECT (MIN(MAX(at_ms, 0), {MAX_ID_MS}) << {ID_SHIFT})
            + ROW_NUMBER() OVER (PARTITION BY at_ms ORDER BY id) - 1,
        {USAGE_VALUES}
    FROM usage;
DROP TABLE usage;
ALTER TABLE usage_v3 RENAME TO usage;",
        columns = usage_columns!()
    )
}

/// Why the usage database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or prepared.
    #[error("cannot open the usage log {path}: {source} (move the file aside to start a new log, or set usage.enabled = false)")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file's permissions could not be set.
    #[error("cannot make the usage log {path} private (mode 0600): {source}")]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the usage log's writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A newer Gate wrote this file.
    #[error("the usage log {path} has schema version {found}; this gate reads up to {SCHEMA_VERSION} (a newer gate wrote it: upgrade, or move the file aside)")]
    NewerSchema { path: PathBuf, found: i64 },
    /// A query or write failed.
    #[error("usage log {path}: {what}: {source}")]
    Query {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

/// What [`UsageDb::summary`] groups by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The API key (or `jwt:<subject>`, `loopback`).
    #[default]
    Key,
    /// The model the client asked for.
    Model,
    /// The upstream that answered.
    Upstream,
    /// The UTC day.
    Day,
    /// The key's owner.
    Owner,
}

impl GroupBy {
    /// Every grouping, in the order `--help` lists them.
    pub const ALL: [GroupBy; 5] = [
        GroupBy::Key,
        GroupBy::Model,
        GroupBy::Upstream,
        GroupBy::Day,
        GroupBy::Owner,
    ];

    /// The name in the CLI, the admin API and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Upstream => "upstream",
            GroupBy::Day => "day",
            GroupBy::Owner => "owner",
        }
    }

    /// From its name.
    pub fn parse(text: &str) -> Result<GroupBy, String> {
        GroupBy::ALL
            .into_iter()
            .find(|g| g.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!("{text:?} is not a grouping: use key, model, upstream, day or owner")
            })
    }

    /// The SQL expression of the group (a fixed string per variant, never user text).
    fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
            GroupBy::Upstream => "upstream",
            GroupBy::Day => "strftime('%Y-%m-%d', at_ms / 1000, 'unixepoch')",
            GroupBy::Owner => "owner",
        }
    }
}

/// Rows [`UsageDb::insert_paced`] writes between two calls of its `pace` (~30 µs of work
/// on the benchmark machine).
pub const PACE_EVERY: usize = 8;

/// An open usage database.
#[derive(Debug)]
pub struct UsageDb {
    conn: Connection,
    path: PathBuf,
    /// False for a read-only connection to a file whose schema was never written.
    has_table: bool,
    /// The per-key day totals exist (schema 2; a read-only connection to a schema-1 file
    /// that no daemon has opened since reads the rows instead).
    key_days: bool,
    /// Row ids are time-ordered (schema 3; a read-only connection to an older file that no
    /// daemon has opened since filters on `at_ms` alone).
    time_ids: bool,
    /// The largest id written (the writer's next id is above it).
    last_id: i64,
}

/// A u64 as SQLite's signed integer (values past i64::MAX are clamped; no real count or
/// amount gets there).
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Parameters of one row's numbers in an insert: `id`, `at_ms`, the four token counts,
/// `cost_nanos`, `latency_ms`, `ttft_ms`, `status` ([`bind_row_numbers`]).
const NUMBER_PARAMS: usize = 10;
/// Parameters of one row's texts: `key_id`, `owner`, `endpoint`, `model`, `served_model`,
/// `upstream`, `error` ([`bind_row_texts`]).
const TEXT_PARAMS: usize = 7;

/// One row's `VALUES (...)` in the table's column order (`id` and [`USAGE_VALUES`]), its
/// numbers from parameter `numbers + 1` and its texts from `texts + 1` on.
fn row_values(numbers: usize, texts: usize) -> String {
    let n = |k: usize| format!("?{}", numbers + k);
    let t = |k: usize| format!("?{}", texts + k);
    let mut values = vec![n(1), n(2)];
    values.extend((1..=6).map(t));
    values.extend((3..=NUMBER_PARAMS).map(n));
    values.push(t(7));
    format!("({})", values.join(", "))
}

/// `INSERT INTO usage` of the rows whose `VALUES` are `rows`.
fn insert_sql(rows: impl Iterator<Item = String>) -> String {
    let values: Vec<String> = rows.collect();
    format!(
        "INSERT INTO usage (id, {USAGE_VALUES}) VALUES {}",
        values.join(", ")
    )
}

/// `INSERT INTO usage` of `rows` rows (1..=[`PACE_EVERY`]), each with parameters of its own
/// (numbers, then texts); built once per size (the texts are static).
fn insert_rows_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        let per_row = NUMBER_PARAMS + TEXT_PARAMS;
        (1..=PACE_EVERY)
            .map(|n| {
                insert_sql((0..n).map(|r| row_values(r * per_row, r * per_row + NUMBER_PARAMS)))
            })
            .collect()
    });
    &all[rows.clamp(1, PACE_EVERY) - 1]
}

/// `INSERT INTO usage` of [`PACE_EVERY`] rows that share their texts: parameters 1 to
/// [`TEXT_PARAMS`] are the texts of every row, then each row's numbers.
fn insert_shared_texts_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        insert_sql((0..PACE_EVERY).map(|r| row_values(TEXT_PARAMS + r * NUMBER_PARAMS, 0)))
    })
}

/// Binds row `r`'s numbers (with `id`, `NULL` for SQLite's next) to the parameters after
/// `base`. One by one: rusqlite's `execute(params![..])` checks the count and dispatches
/// each through `&dyn ToSql`, a fifth of the row's cost. Only those that differ from what
/// the same parameters held for the statement's last run (`bound`, one slot per number;
/// `None` until first bound): SQLite keeps a statement's bindings between runs, and a row
/// repeats many of the numbers of the one before it in its place (the `NULL` id, the zero
/// cache counts, an absent `ttft_ms`, the status): ~100 instructions a number not bound.
fn bind_row_numbers(
    insert: &mut rusqlite::Statement<'_>,
    base: usize,
    bound: &mut [Option<Option<i64>>],
    id: Option<i64>,
    r: &UsageRecord,
) -> rusqlite::Result<()> {
    let numbers: [Option<i64>; NUMBER_PARAMS] = [
        id,
        Some(int(r.at_ms)),
        Some(int(r.input_tokens)),
        Some(int(r.output_tokens)),
        Some(int(r.cached_tokens)),
        Some(int(r.cache_write_tokens)),
        r.cost.map(|c| int(c.0)),
        Some(int(r.latency_ms)),
        r.ttft_ms.map(int),
        Some(i64::from(r.status)),
    ];
    for (k, (number, last)) in numbers.into_iter().zip(bound.iter_mut()).enumerate() {
        if *last != Some(number) {
            // Forgotten first: should the bind fail, the slot is bound again next time.
            *last = None;
            insert.raw_bind_parameter(base + k + 1, number)?;
            *last = Some(number);
        }
    }
    Ok(())
}

/// Binds row `r`'s texts to the parameters after `base`.
fn bind_row_texts(
    insert: &mut rusqlite::Statement<'_>,
    base: usize,
    r: &UsageRecord,
) -> rusqlite::Result<()> {
    insert.raw_bind_parameter(base + 1, &*r.key_id)?;
    insert.raw_bind_parameter(base + 2, r.owner.as_deref())?;
    insert.raw_bind_parameter(base + 3, &*r.endpoint)?;
    insert.raw_bind_parameter(base + 4, &*r.model)?;
    insert.raw_bind_parameter(base + 5, r.served_model.as_deref())?;
    insert.raw_bind_parameter(base + 6, r.upstream.as_deref())?;
    insert.raw_bind_parameter(base + 7, r.error.as_deref())
}

/// Whether two rows' texts are the same (what [`insert_shared_texts_sql`] binds once).
fn same_texts(a: &UsageRecord, b: &UsageRecord) -> bool {
    a.key_id == b.key_id
        && a.owner == b.owner
        && a.endpoint == b.endpoint
        && a.model == b.model
        && a.served_model == b.served_model
        && a.upstream == b.upstream
        && a.error == b.error
}

/// The numbers last bound to an insert's parameters, [`NUMBER_PARAMS`] slots a row (see
/// [`bind_row_numbers`]).
type BoundNumbers = [Option<Option<i64>>; NUMBER_PARAMS * PACE_EVERY];

/// A statement's numbers before its first run: none bound.
const UNBOUND: BoundNumbers = [None; NUMBER_PARAMS * PACE_EVERY];

/// The insert statements of one batch, each prepared when first needed (a statement's
/// bindings stay between its runs, so texts bound for one group serve the next ones).
struct GroupInserts<'t, 'r> {
    tx: &'t rusqlite::Transaction<'t>,
    /// By group size, rows with parameters of their own ([`insert_rows_sql`]).
    by_size: [Option<(rusqlite::Statement<'t>, BoundNumbers)>; PACE_EVERY],
    /// Whole groups whose rows share their texts ([`insert_shared_texts_sql`]), the row
    /// whose texts are bound to it, and its bound numbers.
    shared: Option<(rusqlite::Statement<'t>, &'r UsageRecord, BoundNumbers)>,
}

impl<'t, 'r> GroupInserts<'t, 'r> {
    fn new(tx: &'t rusqlite::Transaction<'t>) -> Self {
        GroupInserts {
            tx,
            by_size: Default::default(),
            shared: None,
        }
    }

    /// Inserts `group` (1..=[`PACE_EVERY`] rows) with `ids` (one per row) in one statement.
    /// A whole group of rows with the same texts (one caller and model: the common case
    /// under load) binds its texts once, or not at all when the group before had them:
    /// ~1,300 fewer instructions a row (a text parameter costs SQLite ~270 to bind).
    fn insert(&mut self, group: &[&'r UsageRecord], ids: &[Option<i64>]) -> rusqlite::Result<()> {
        let first = group[0];
        if group.len() == PACE_EVERY && group.iter().all(|r| same_texts(r, first)) {
            let (insert, bound, numbers) = match &mut self.shared {
                Some((insert, bound, numbers)) => (insert, bound, numbers),
                None => {
                    let insert = self.tx.prepare(insert_shared_texts_sql())?;
                    let (insert, bound, numbers) = self.shared.insert((insert, first, UNBOUND));
                    bind_row_texts(insert, 0, first)?;
                    (insert, bound, numbers)
                }
            };
            if !same_texts(bound, first) {
                bind_row_texts(insert, 0, first)?;
                *bound = first;
            }
            for (row, ((r, id), numbers)) in group
                .iter()
                .zip(ids)
                .zip(numbers.chunks_mut(NUMBER_PARAMS))
                .enumerate()
            {
                bind_row_numbers(insert, TEXT_PARAMS + row * NUMBER_PARAMS, numbers, *id, r)?;
            }
            return insert.raw_execute().map(drop);
        }
        let (insert, numbers) = match &mut self.by_size[group.len() - 1] {
            Some(prepared) => prepared,
            slot => slot.insert((self.tx.prepare(insert_rows_sql(group.len()))?, UNBOUND)),
        };
        let per_row = NUMBER_PARAMS + TEXT_PARAMS;
        for (row, ((r, id), numbers)) in group
            .iter()
            .zip(ids)
            .zip(numbers.chunks_mut(NUMBER_PARAMS))
            .enumerate()
        {
            bind_row_numbers(insert, row * per_row, numbers, *id, r)?;
            bind_row_texts(insert, row * per_row + NUMBER_PARAMS, r)?;
        }
        insert.raw_execute().map(drop)
    }
}

/// An integer column back as u64 (negative values, which Gate never writes, read as 0).
fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl UsageDb {
    /// The database's path in `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(DB_FILE)
    }

    /// Opens (creating it, mode 0600) the database for writing: WAL mode,
    /// `synchronous = NORMAL` (a commit survives the process being killed; only a power loss
    /// can take the last commits), the schema created or checked.
    pub fn open(path: &Path) -> Result<UsageDb, StoreError> {
        create_private(path)?;
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "the usage log could not switch to WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found: version,
            });
        }
        // One transaction: a crash mid-migration leaves schema 1 as it was.
        let tx = conn.unchecked_transaction().map_err(open_err)?;
        tx.execute_batch(SCHEMA).map_err(open_err)?;
        if version == 1 {
            tracing::info!(path = %path.display(), "usage log: moving to schema 2 (per-key day totals instead of the per-key index; once, a pass over the log)");
            let started = std::time::Instant::now();
            tx.execute_batch(MIGRATE_1_TO_2).map_err(open_err)?;
            tracing::info!(path = %path.display(), took_ms = started.elapsed().as_millis() as u64, "usage log: schema 2");
        }
        if (1..3).contains(&version) {
            tracing::info!(path = %path.display(), "usage log: moving to schema 3 (time-ordered row ids instead of the time index; once, a copy of the log)");
            let started = std::time::Instant::now();
            tx.execute_batch(&migrate_2_to_3()).map_err(open_err)?;
            tracing::info!(path = %path.display(), took_ms = started.elapsed().as_millis() as u64, "usage log: schema 3");
        }
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(open_err)?;
        let last_id: Option<i64> = tx
            .query_row("SELECT MAX(id) FROM usage", [], |row| row.get(0))
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
        Ok(UsageDb {
            conn,
            path: path.to_owned(),
            has_table: true,
            key_days: true,
            time_ids: true,
            last_id: last_id.unwrap_or(0),
        })
    }

    /// Opens the database read-only (`gate usage`, the admin API): `None` when the file does
    /// not exist (nothing recorded yet). Works while a daemon writes (WAL readers do not
    /// block the writer, nor it them).
    pub fn open_read_only(path: &Path) -> Result<Option<UsageDb>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found: version,
            });
        }
        Ok(Some(UsageDb {
            conn,
            path: path.to_owned(),
            has_table: version >= 1,
            key_days: version >= 2,
            time_ids: version >= 3,
            last_id: 0,
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parameters of "`at_ms` from `since_ms` on" (`?1`) with the id range (`?2`) that
    /// holds every such row: `id >= ?2 AND at_ms >= ?1` reads a range of the table (schema
    /// 3). Older files read every row.
    fn time_range(&self, since_ms: u64) -> [i64; 2] {
        let id = if self.time_ids {
            id_floor(since_ms)
        } else {
            i64::MIN
        };
        [int(since_ms), id]
    }

    fn query_err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Query {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Writes `records` in one transaction (all or none).
    pub fn insert(&mut self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.insert_paced(records, &mut || {})
    }

    /// [`Self::insert`], calling `pace` between groups of [`PACE_EVERY`] rows (the writer
    /// thread gives its core back there; see `writer::Writer::write`).
    pub fn insert_paced(
        &mut self,
        records: &[UsageRecord],
        pace: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |what| {
            let path = path.clone();
            move |source| StoreError::Query { path, what, source }
        };
        let tx = self
            .conn
            .transaction()
            .map_err(err("begin a transaction"))?;
        // Time-ordered ids (see `ID_SHIFT`), cheaply: the batch is written in order of
        // arrival, and a row takes an explicit id (its millisecond's floor, or the last id +
        // 1 if that is higher) only as the batch's first row or the first of a later
        // millisecond; every other row takes SQLite's next id (`NULL`: the last id + 1,
        // found at the table's right edge). An explicit id costs a search for a duplicate
        // (~1,400 instructions); at load, most rows share a millisecond with the one before.
        let mut in_order: Vec<&UsageRecord> = records.iter().collect();
        in_order.sort_by_key(|r| r.at_ms);
        let mut last_id = self.last_id;
        {
            // Rows go in groups of `PACE_EVERY`, one multi-row statement per group, so a
            // statement's start and end (opening the table's cursor, halting, resetting) are
            // paid once a group: ~400 fewer instructions a row (callgrind, of ~9,000).
            let mut inserts = GroupInserts::new(&tx);
            let mut i = 0usize;
            for (g, group) in in_order.chunks(PACE_EVERY).enumerate() {
                if g > 0 {
                    pace();
                }
                let mut ids = [None; PACE_EVERY];
                for (id, r) in ids.iter_mut().zip(group) {
                    let next = last_id.saturating_add(1);
                    let floor = id_floor(r.at_ms);
                    *id = (i == 0 || next < floor).then(|| floor.max(next));
                    last_id = id.unwrap_or(next);
                    i += 1;
                }
                inserts
                    .insert(group, &ids[..group.len()])
                    .map_err(err("insert a record"))?;
            }
            debug_assert!(records.is_empty() || tx.last_insert_rowid() == last_id);
            // The per-key day totals: one upsert per key and day of the batch. FxHash: the
            // keys are ids of authenticated callers (SipHash was ~290 instructions a row).
            let mut days: rustc_hash::FxHashMap<(&str, u64), (u64, u64)> =
                rustc_hash::FxHashMap::default();
            for r in records {
                let cost = r.cost.map_or(0, |c| c.0);
                let (total, last) = days.entry((&*r.key_id, r.at_ms / DAY_MS)).or_default();
                *total = total.saturating_add(cost);
                *last = (*last).max(r.at_ms);
            }
            let mut upsert = tx
                .prepare(
                    "INSERT INTO usage_key_days (key_id, day, cost_nanos, last_at_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key_id, day) DO UPDATE SET
                        cost_nanos = cost_nanos + excluded.cost_nanos,
                        last_at_ms = MAX(last_at_ms, excluded.last_at_ms)",
                )
                .map_err(err("prepare the per-key totals"))?;
            for ((key_id, day), (cost, last)) in days {
                upsert
                    .execute(params![key_id, int(day), int(cost), int(last)])
                    .map_err(err("add to the per-key totals"))?;
            }
        }
        tx.commit().map_err(err("commit"))?;
        // Only once committed: a batch that failed left nothing, and is written again with
        // the same ids.
        self.last_id = last_id;
        Ok(())
    }

    /// Deletes the records from before `cutoff_ms`; how many.
    pub fn delete_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM usage WHERE id < ?2 AND at_ms < ?1",
                // A range of the table's B-tree; see `RETENTION_LAG_MS` for what it leaves.
                // (Only the writer deletes, and it always has time-ordered ids.)
                [
                    int(cutoff_ms),
                    id_floor(cutoff_ms.saturating_add(RETENTION_LAG_MS)),
                ],
            )
            .and_then(|deleted| {
                // Whole days only: the day holding the cutoff keeps its totals.
                self.conn
                    .execute(
                        "DELETE FROM usage_key_days WHERE day < ?1",
                        [int(cutoff_ms / DAY_MS)],
                    )
                    .map(|_| deleted)
            })
            .map_err(self.query_err("delete old records"))
    }

    /// Every record from `since_ms` on, oldest first (export and tests).
    pub fn records_since(&self, since_ms: u64) -> Result<Vec<UsageRecord>, StoreError> {
        if !self.has_table {
            return Ok(Vec::new());
        }
        let err = self.query_err("read records");
        let mut statement = self
            .conn
            .prepare(
                "SELECT at_ms, key_id, owner, endpoint, model, served_model, upstream,
                    input_tokens, output_tokens, cached_tokens, cache_write_tokens, cost_nanos,
                    latency_ms, ttft_ms, status, error
                 FROM usage WHERE id >= ?2 AND at_ms >= ?1 ORDER BY at_ms, id",
            )
            .map_err(&err)?;
        let rows = statement
            .query_map(self.time_range(since_ms), |row| {
                Ok(UsageRecord {
                    at_ms: uint(row.get(0)?),
                    key_id: row.get(1)?,
                    owner: row.get(2)?,
                    endpoint: row.get(3)?,
                    model: row.get(4)?,
                    served_model: row.get(5)?,
                    upstream: row.get(6)?,
                    input_tokens: uint(row.get(7)?),
                    output_tokens: uint(row.get(8)?),
                    cached_tokens: uint(row.get(9)?),
                    cache_write_tokens: uint(row.get(10)?),
                    cost: row.get::<_, Option<i64>>(11)?.map(|c| Usd(uint(c))),
                    latency_ms: uint(row.get(12)?),
                    ttft_ms: row.get::<_, Option<i64>>(13)?.map(uint),
                    status: u16::try_from(row.get::<_, i64>(14)?).unwrap_or(0),
                    error: row.get(15)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// The known spend of each key since `since_ms` (records with an unknown cost add 0).
    pub fn spend_since(&self, since_ms: u64) -> Result<BTreeMap<String, Usd>, StoreError> {
        if !self.has_table {
            return Ok(BTreeMap::new());
        }
        let err = self.query_err("sum spend per key");
        let mut statement = self
            .conn
            .prepare(
                "SELECT key_id, SUM(cost_nanos) FROM usage
                 WHERE id >= ?2 AND at_ms >= ?1 AND cost_nanos IS NOT NULL GROUP BY key_id",
            )
            .map_err(&err)?;
        let rows = statement
            .query_map(self.time_range(since_ms), |row| {
                Ok((row.get::<_, String>(0)?, Usd(uint(row.get(1)?))))
            })
            .map_err(&err)?;
        rows.collect::<Result<BTreeMap<_, _>, _>>().map_err(&err)
    }

    /// What `key_id` spent in the budget period holding `now_unix` (Unix seconds).
    pub fn spent_in_current_period(
        &self,
        key_id: &str,
        period: Period,
        now_unix: u64,
    ) -> Result<Usd, StoreError> {
        if !self.has_table {
            return Ok(Usd::ZERO);
        }
        let since_ms = period.start(now_unix).saturating_mul(1000);
        // Periods start at UTC midnight, so whole days of the totals are the period.
        let (sql, since) = if self.key_days {
            (
                "SELECT SUM(cost_nanos) FROM usage_key_days WHERE key_id = ?1 AND day >= ?2",
                since_ms / DAY_MS,
            )
        } else {
            (
                "SELECT SUM(cost_nanos) FROM usage WHERE key_id = ?1 AND at_ms >= ?2",
                since_ms,
            )
        };
        let nanos: Option<i64> = self
            .conn
            .query_row(sql, params![key_id, int(since)], |row| row.get(0))
            .optional()
            .map_err(self.query_err("sum a key's spend"))?
            .flatten();
        Ok(Usd(nanos.map_or(0, uint)))
    }

    /// [`spent_in_current_period`](Self::spent_in_current_period) for many keys at once
    /// (restoring budgets at start): key id -> spend in its period.
    pub fn spent_in_current_periods<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k str, Period)>,
        now_unix: u64,
    ) -> Result<BTreeMap<String, Usd>, StoreError> {
        let mut out = BTreeMap::new();
        for (key_id, period) in keys {
            out.insert(
                key_id.to_owned(),
                self.spent_in_current_period(key_id, period, now_unix)?,
            );
        }
        Ok(out)
    }

    /// When each key was last used (Unix milliseconds; within the retention).
    pub fn last_used(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        if !self.has_table {
            return Ok(BTreeMap::new());
        }
        let err = self.query_err("read last use per key");
        let mut statement = self
            .conn
            .prepare(if self.key_days {
                "SELECT key_id, MAX(last_at_ms) FROM usage_key_days GROUP BY key_id"
            } else {
                "SELECT key_id, MAX(at_ms) FROM usage GROUP BY key_id"
            })
            .map_err(&err)?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, uint(row.get(1)?))))
            .map_err(&err)?;
        rows.collect::<Result<BTreeMap<_, _>, _>>().map_err(&err)
    }

    /// The records since `since_ms` summed per group: for `Day` oldest day first, else the
    /// largest spend first (then most requests, then the group's name).
    pub fn summary(&self, since_ms: u64, by: GroupBy) -> Result<Vec<UsageRow>, StoreError> {
        if !self.has_table {
            return Ok(Vec::new());
        }
        let order = match by {
            GroupBy::Day => "grp",
            _ => "cost DESC, requests DESC, grp",
        };
        let sql = format!(
            "SELECT {column} AS grp, COUNT(*) AS requests, SUM(input_tokens), SUM(output_tokens),
                SUM(cached_tokens), COALESCE(SUM(cost_nanos), 0) AS cost,
                COUNT(*) - COUNT(cost_nanos),
                SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END)
             FROM usage WHERE id >= ?2 AND at_ms >= ?1 GROUP BY grp ORDER BY {order}",
            column = by.column()
        );
        let err = self.query_err("summarise");
        let mut statement = self.conn.prepare(&sql).map_err(&err)?;
        let rows = statement
            .query_map(self.time_range(since_ms), |row| {
                Ok(UsageRow {
                    group: row.get(0)?,
                    name: None,
                    requests: uint(row.get(1)?),
                    input_tokens: uint(row.get(2)?),
                    output_tokens: uint(row.get(3)?),
                    cached_tokens: uint(row.get(4)?),
                    cost_usd: Usd(uint(row.get(5)?)),
                    unknown_cost_requests: uint(row.get(6)?),
                    errors: uint(row.get(7)?),
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(&err)
    }

    /// The web UI's charts since `since_ms`: spend per UTC day per key, tokens per UTC day
    /// per model; both ordered by day, then key or model.
    pub fn series(&self, since_ms: u64) -> Result<UsageSeries, StoreError> {
        let mut series = UsageSeries {
            since_ms,
            ..UsageSeries::default()
        };
        if !self.has_table {
            return Ok(series);
        }
        let err = self.query_err("chart series");
        let mut spend = self
            .conn
            .prepare(
                "SELECT strftime('%Y-%m-%d', at_ms / 1000, 'unixepoch') AS day, key_id, COUNT(*),
                    COALESCE(SUM(cost_nanos), 0), COUNT(*) - COUNT(cost_nanos)
                 FROM usage WHERE id >= ?2 AND at_ms >= ?1 GROUP BY day, key_id ORDER BY day, key_id",
            )
            .map_err(&err)?;
        series.spend = spend
            .query_map(self.time_range(since_ms), |row| {
                Ok(SpendPoint {
                    day: row.get(0)?,
                    key_id: row.get(1)?,
                    name: None,
                    requests: uint(row.get(2)?),
                    cost_usd: Usd(uint(row.get(3)?)),
                    unknown_cost_requests: uint(row.get(4)?),
                })
            })
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        let mut tokens = self
            .conn
            .prepare(
                "SELECT strftime('%Y-%m-%d', at_ms / 1000, 'unixepoch') AS day, model, COUNT(*),
                    SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens)
                 FROM usage WHERE id >= ?2 AND at_ms >= ?1 GROUP BY day, model ORDER BY day, model",
            )
            .map_err(&err)?;
        series.tokens = tokens
            .query_map(self.time_range(since_ms), |row| {
                Ok(TokenPoint {
                    day: row.get(0)?,
                    model: row.get(1)?,
                    requests: uint(row.get(2)?),
                    input_tokens: uint(row.get(3)?),
                    output_tokens: uint(row.get(4)?),
                    cached_tokens: uint(row.get(5)?),
                })
            })
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        Ok(series)
    }
}

/// Creates the database file with mode 0600 if it does not exist, and tightens an existing
/// one that group or others may read. SQLite gives its `-wal` and `-shm` files the
/// database's mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode_err = |source| StoreError::Mode {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(mode_err)?;
    let mode = file.metadata().map_err(mode_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(mode_err)?;
        tracing::warn!(path = %path.display(), "the usage log had mode {mode:04o}; changed it to 0600");
    }
    Ok(())
}

/// The sum of `rows` (the total line of a summary; `group` is None).
pub fn total(rows: &[UsageRow]) -> UsageRow {
    rows.iter().fold(UsageRow::default(), |acc, r| UsageRow {
        group: None,
        name: None,
        requests: acc.requests + r.requests,
        input_tokens: acc.input_tokens + r.input_tokens,
        output_tokens: acc.output_tokens + r.output_tokens,
        cached_tokens: acc.cached_tokens + r.cached_tokens,
        cost_usd: acc.cost_usd.saturating_add(r.cost_usd),
        unknown_cost_requests: acc.unknown_cost_requests + r.unknown_cost_requests,
        errors: acc.errors + r.errors,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system's temp dir.
    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gate-usage-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    // 2026-12-03 15:04:05 UTC, a Thursday.
    pub(crate) const NOW_MS: u64 = 1_796_310_245_000;
    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 24 * HOUR;

    pub(crate) fn record(at_ms: u64, key: &str, model: &str, cost: Option<u64>) -> UsageRecord {
        UsageRecord {
            at_ms,
            key_id: key.into(),
            owner: None,
            endpoint: "chat".into(),
            model: model.into(),
            served_model: Some(format!("{model}-2026").into()),
            upstream: Some("openai".into()),
            input_tokens: 100,
            output_tokens: 10,
            cached_tokens: 40,
            cache_write_tokens: 0,
            cost: cost.map(Usd),
            latency_ms: 250,
            ttft_ms: Some(40),
            status: 200,
            error: None,
        }
    }

    #[test]
    fn records_round_trip_with_every_field() {
        let dir = temp_dir("roundtrip");
        let path = UsageDb::path_in(&dir);
        let mut db = UsageDb::open(&path).unwrap();
        let full = UsageRecord {
            at_ms: NOW_MS,
            key_id: "3fa2c1d4e5f6".into(),
            owner: Some("team-a".into()),
            endpoint: "messages".into(),
            model: "claude-x".into(),
            served_model: Some("claude-x-20261201".into()),
            upstream: Some("anthropic".into()),
            input_tokens: 1_234,
            output_tokens: 567,
            cached_tokens: 89,
            cache_write_tokens: 10,
            cost: Some(Usd(12_345)),
            latency_ms: 1_500,
            ttft_ms: Some(120),
            status: 200,
            error: None,
        };
        let bare = UsageRecord {
            at_ms: NOW_MS + 1,
            key_id: "jwt:alice".into(),
            endpoint: "chat".into(),
            model: "nope".into(),
            status: 404,
            error: Some("no_upstream".into()),
            ..UsageRecord::default()
        };
        let huge = UsageRecord {
            at_ms: NOW_MS + 2,
            key_id: "k".into(),
            input_tokens: u64::MAX,
            cost: Some(Usd(u64::MAX)),
            ..UsageRecord::default()
        };
        db.insert(&[full.clone(), bare.clone()]).unwrap();
        db.insert(&[huge]).unwrap();
        drop(db);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let db = UsageDb::open_read_only(&path).unwrap().unwrap();
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let back = db.records_since(0).unwrap();
        assert_eq!(back[..2], [full, bare]);
        // Past i64::MAX is clamped, never wrapped to a negative amount.
        assert_eq!(back[2].input_tokens, i64::MAX as u64);
        assert_eq!(back[2].cost, Some(Usd(i64::MAX as u64)));
        assert_eq!(db.records_since(NOW_MS + 1).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_only_open_never_creates_and_reads_an_empty_file() {
        let dir = temp_dir("readonly");
        let path = UsageDb::path_in(&dir);
        assert!(UsageDb::open_read_only(&path).unwrap().is_none());
        assert!(!path.exists(), "a reader must not create the log");
        // A file the daemon created but never wrote a schema to reads as empty.
        std::fs::write(&path, b"").unwrap();
        let db = UsageDb::open_read_only(&path).unwrap().unwrap();
        assert!(db.summary(0, GroupBy::Key).unwrap().is_empty());
        assert!(db.spend_since(0).unwrap().is_empty());
        assert_eq!(
            db.spent_in_current_period("k", Period::Month, NOW_MS / 1000)
                .unwrap(),
            Usd::ZERO
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_way_out() {
        let dir = temp_dir("newer");
        let path = UsageDb::path_in(&dir);
        drop(UsageDb::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 7;").unwrap();
        drop(conn);
        let err = UsageDb::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("schema version 7") && err.contains("move the file aside"),
            "{err}"
        );
        let err = UsageDb::open_read_only(&path).unwrap_err().to_string();
        assert!(err.contains("newer gate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broad_mode_is_tightened() {
        let dir = temp_dir("mode");
        let path = UsageDb::path_in(&dir);
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(UsageDb::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A log with three keys over three days, costs known and unknown, one failure.
    fn sample(dir: &Path) -> UsageDb {
        let mut db = UsageDb::open(&UsageDb::path_in(dir)).unwrap();
        let mut owned = record(NOW_MS - HOUR, "k1", "gpt-4o", Some(2_000_000_000));
        owned.owner = Some("team-a".into());
        let mut failed = record(NOW_MS - 2 * HOUR, "k2", "claude-x", None);
        failed.status = 502;
        failed.error = Some("upstream_error".into());
        failed.upstream = None;
        db.insert(&[
            // 2026-12-01: k1 spends $1 on gpt-4o.
            record(NOW_MS - 2 * DAY, "k1", "gpt-4o", Some(1_000_000_000)),
            // 2026-12-02: k2, no price known.
            record(NOW_MS - DAY, "k2", "mystery", None),
            // 2026-12-03.
            owned,
            failed,
            record(NOW_MS - 3 * HOUR, "jwt:alice", "gpt-4o", Some(500_000_000)),
        ])
        .unwrap();
        db
    }

    #[test]
    fn summaries_group_and_sum() {
        let dir = temp_dir("summary");
        let db = sample(&dir);
        let by_key = db.summary(0, GroupBy::Key).unwrap();
        let view: Vec<_> = by_key
            .iter()
            .map(|r| {
                (
                    r.group.clone().unwrap(),
                    r.requests,
                    r.cost_usd,
                    r.unknown_cost_requests,
                    r.errors,
                )
            })
            .collect();
        // Largest spend first; k2 spent nothing known.
        assert_eq!(
            view,
            vec![
                ("k1".into(), 2, Usd(3_000_000_000), 0, 0),
                ("jwt:alice".into(), 1, Usd(500_000_000), 0, 0),
                ("k2".into(), 2, Usd(0), 2, 1),
            ]
        );
        assert_eq!(by_key[0].input_tokens, 200);
        assert_eq!(by_key[0].output_tokens, 20);
        assert_eq!(by_key[0].cached_tokens, 80);
        let days: Vec<_> = db
            .summary(0, GroupBy::Day)
            .unwrap()
            .into_iter()
            .map(|r| (r.group.unwrap(), r.requests))
            .collect();
        assert_eq!(
            days,
            vec![
                ("2026-12-01".into(), 1),
                ("2026-12-02".into(), 1),
                ("2026-12-03".into(), 3)
            ]
        );
        let upstreams: Vec<_> = db
            .summary(0, GroupBy::Upstream)
            .unwrap()
            .into_iter()
            .map(|r| (r.group, r.requests))
            .collect();
        assert_eq!(upstreams, vec![(Some("openai".into()), 4), (None, 1)]);
        let owners: Vec<_> = db
            .summary(0, GroupBy::Owner)
            .unwrap()
            .into_iter()
            .map(|r| (r.group, r.cost_usd))
            .collect();
        assert_eq!(
            owners,
            vec![
                (Some("team-a".into()), Usd(2_000_000_000)),
                (None, Usd(1_500_000_000))
            ]
        );
        let models: Vec<_> = db
            .summary(NOW_MS - DAY - HOUR, GroupBy::Model)
            .unwrap()
            .into_iter()
            .map(|r| (r.group.unwrap(), r.requests))
            .collect();
        assert_eq!(
            models,
            vec![
                ("gpt-4o".into(), 2),
                ("claude-x".into(), 1),
                ("mystery".into(), 1)
            ]
        );
        let all = total(&by_key);
        assert_eq!(
            (
                all.requests,
                all.cost_usd,
                all.unknown_cost_requests,
                all.errors
            ),
            (5, Usd(3_500_000_000), 2, 1)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spend_per_key_and_period_and_last_use() {
        let dir = temp_dir("spend");
        let db = sample(&dir);
        let now = NOW_MS / 1000;
        assert_eq!(
            db.spend_since(0).unwrap(),
            BTreeMap::from([
                ("jwt:alice".to_owned(), Usd(500_000_000)),
                ("k1".to_owned(), Usd(3_000_000_000)),
            ])
        );
        // Today (2026-12-03) k1 spent $2; this month (and week, from Monday 11-30) $3.
        assert_eq!(
            db.spent_in_current_period("k1", Period::Day, now).unwrap(),
            Usd(2_000_000_000)
        );
        assert_eq!(
            db.spent_in_current_period("k1", Period::Week, now).unwrap(),
            Usd(3_000_000_000)
        );
        assert_eq!(
            db.spent_in_current_period("k1", Period::Total, now)
                .unwrap(),
            Usd(3_000_000_000)
        );
        assert_eq!(
            db.spent_in_current_period("k2", Period::Month, now)
                .unwrap(),
            Usd::ZERO
        );
        assert_eq!(
            db.spent_in_current_periods(
                [
                    ("k1", Period::Day),
                    ("jwt:alice", Period::Month),
                    ("new", Period::Day)
                ],
                now
            )
            .unwrap(),
            BTreeMap::from([
                ("jwt:alice".to_owned(), Usd(500_000_000)),
                ("k1".to_owned(), Usd(2_000_000_000)),
                ("new".to_owned(), Usd::ZERO),
            ])
        );
        // Next month, k1's monthly spend starts again.
        let january = now + 40 * 86_400;
        assert_eq!(
            db.spent_in_current_period("k1", Period::Month, january)
                .unwrap(),
            Usd::ZERO
        );
        assert_eq!(
            db.last_used().unwrap(),
            BTreeMap::from([
                ("jwt:alice".to_owned(), NOW_MS - 3 * HOUR),
                ("k1".to_owned(), NOW_MS - HOUR),
                // Its failed request two hours ago is its last use.
                ("k2".to_owned(), NOW_MS - 2 * HOUR),
            ])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chart_series_per_day() {
        let dir = temp_dir("series");
        let db = sample(&dir);
        let series = db.series(NOW_MS - DAY - HOUR).unwrap();
        let spend: Vec<_> = series
            .spend
            .iter()
            .map(|p| {
                (
                    p.day.as_str(),
                    p.key_id.as_str(),
                    p.cost_usd,
                    p.unknown_cost_requests,
                )
            })
            .collect();
        assert_eq!(
            spend,
            vec![
                ("2026-12-02", "k2", Usd(0), 1),
                ("2026-12-03", "jwt:alice", Usd(500_000_000), 0),
                ("2026-12-03", "k1", Usd(2_000_000_000), 0),
                ("2026-12-03", "k2", Usd(0), 1),
            ]
        );
        let tokens: Vec<_> = series
            .tokens
            .iter()
            .map(|p| (p.day.as_str(), p.model.as_str(), p.requests, p.input_tokens))
            .collect();
        assert_eq!(
            tokens,
            vec![
                ("2026-12-02", "mystery", 1, 100),
                ("2026-12-03", "claude-x", 1, 100),
                ("2026-12-03", "gpt-4o", 2, 200),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every row's id is at least its millisecond's floor, and ids grow in the order rows
    /// were written (schema 3).
    fn assert_time_ordered_ids(db: &UsageDb) {
        let mut statement = db
            .conn
            .prepare("SELECT id, at_ms FROM usage ORDER BY id")
            .unwrap();
        let rows: Vec<(i64, i64)> = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (id, at_ms) in rows {
            assert!(
                id >= id_floor(uint(at_ms)),
                "id {id} below the floor of {at_ms}"
            );
        }
    }

    /// Inserts `batches` one after the other and reads every row back, field by field, in
    /// order, with time-ordered ids.
    fn assert_batches_read_back(db: &mut UsageDb, batches: [Vec<UsageRecord>; 2]) {
        for batch in &batches {
            db.insert(batch).unwrap();
        }
        assert_time_ordered_ids(db);
        let all: Vec<UsageRecord> = batches.into_iter().flatten().collect();
        let read = db.records_since(0).unwrap();
        assert_eq!(read.len(), all.len());
        for (got, want) in read.iter().zip(&all) {
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    /// Issue 16: a row binds only the numbers that differ from what its place in the
    /// statement held last (`bind_row_numbers`). Rows drawn from small sets of values (so
    /// that repeats, `NULL` after a value and a value after `NULL` are common), in batches
    /// of every size around a group's, in both statements (texts shared and not): each row
    /// reads back as written.
    #[test]
    fn numbers_bound_only_when_changed_keep_every_value() {
        let dir = temp_dir("bound-numbers");
        let mut db = UsageDb::open(&UsageDb::path_in(&dir)).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut at = NOW_MS;
        let mut written = Vec::new();
        for size in [1, 7, 8, 9, 16, 17, 40, 3, 64] {
            let batch: Vec<UsageRecord> = (0..size)
                .map(|_| {
                    at += next(3); // a new millisecond now and then: an explicit id
                    let key = if next(4) == 0 { "k-b" } else { "k-a" };
                    UsageRecord {
                        input_tokens: next(3),
                        output_tokens: next(2),
                        cached_tokens: next(2) * 64,
                        cache_write_tokens: next(2),
                        cost: (next(3) > 0).then(|| Usd(next(3) * 1_000)),
                        latency_ms: next(3),
                        ttft_ms: (next(2) == 0).then(|| next(2)),
                        status: if next(5) == 0 { 502 } else { 200 },
                        ..record(at, key, "m", None)
                    }
                })
                .collect();
            db.insert(&batch).unwrap();
            written.extend(batch);
        }
        assert_time_ordered_ids(&db);
        let read = db.records_since(0).unwrap();
        assert_eq!(read.len(), written.len());
        for (got, want) in read.iter().zip(&written) {
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 16: a batch goes in multi-row statements of `PACE_EVERY` rows and one of the
    /// rest; every row keeps its own values (in the right parameters) and a time-ordered id,
    /// whichever group it fell in, and the next batch follows on.
    #[test]
    fn rows_written_in_groups_keep_their_values_and_order() {
        let dir = temp_dir("groups");
        let mut db = UsageDb::open(&UsageDb::path_in(&dir)).unwrap();
        let batch = |first: u64, n: u64| -> Vec<UsageRecord> {
            (first..first + n)
                .map(|i| UsageRecord {
                    // Runs of rows share a millisecond; some start a new one.
                    at_ms: NOW_MS + i / 3,
                    owner: (i % 2 == 0).then(|| format!("team-{i}").into()),
                    input_tokens: 1_000 + i,
                    output_tokens: 2_000 + i,
                    cached_tokens: i,
                    cache_write_tokens: i % 5,
                    latency_ms: 10 * i,
                    ttft_ms: (i % 3 == 0).then_some(i),
                    status: if i % 7 == 0 { 502 } else { 200 },
                    error: (i % 7 == 0).then(|| format!("upstream {i}").into()),
                    ..record(0, &format!("k{}", i % 4), &format!("m{i}"), Some(i))
                })
                .collect()
        };
        let first = batch(0, 2 * PACE_EVERY as u64 + 5);
        let second = batch(first.len() as u64, 3);
        assert_batches_read_back(&mut db, [first, second]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whole groups whose rows share their texts bind them once (and not again for a next
    /// group with the same ones): every row keeps its own numbers and the right texts,
    /// across groups that switch texts, a group with one odd row, a partial group and a
    /// new batch.
    #[test]
    fn groups_sharing_their_texts_keep_every_value() {
        let dir = temp_dir("shared-texts");
        let mut db = UsageDb::open(&UsageDb::path_in(&dir)).unwrap();
        let a = UsageRecord {
            owner: Some("team-a".into()),
            served_model: Some("m-a-2026".into()),
            upstream: Some("up-a".into()),
            ..record(0, "k-a", "m-a", None)
        };
        let b = UsageRecord {
            status: 429,
            error: Some("rate_limited".into()),
            ..record(0, "k-b", "m-b", None)
        };
        let mut n = 0u64;
        let mut rows = |texts: &UsageRecord, count: usize| -> Vec<UsageRecord> {
            (0..count)
                .map(|_| {
                    n += 1;
                    UsageRecord {
                        at_ms: NOW_MS + n / 5,
                        input_tokens: 100 + n,
                        output_tokens: 200 + n,
                        cached_tokens: n % 3,
                        cache_write_tokens: n % 4,
                        cost: (n % 6 != 0).then_some(Usd(n * 1_000)),
                        latency_ms: n,
                        ttft_ms: (n % 2 == 0).then_some(n / 2),
                        ..texts.clone()
                    }
                })
                .collect()
        };
        let mut first = Vec::new();
        first.extend(rows(&a, PACE_EVERY)); // texts bound
        first.extend(rows(&a, PACE_EVERY)); // the same texts: not bound again
        first.extend(rows(&b, PACE_EVERY)); // other texts
        let mut odd = rows(&b, PACE_EVERY);
        odd[3].model = "m-odd".into(); // one row differs: rows bound one by one
        first.extend(odd);
        first.extend(rows(&a, PACE_EVERY)); // back to the first texts
        first.extend(rows(&a, 3)); // a partial group
        let second = rows(&b, PACE_EVERY);
        assert_batches_read_back(&mut db, [first, second]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Schema 3: "since" queries and retention read a range of the table by id, and still
    /// find a row written after later ones (a long request: `at_ms` is its arrival).
    #[test]
    fn time_ordered_ids_answer_since_queries_and_retention() {
        let dir = temp_dir("time-ids");
        let path = UsageDb::path_in(&dir);
        let mut db = UsageDb::open(&path).unwrap();
        let long = NOW_MS - 10 * 60_000;
        db.insert(&[
            record(NOW_MS, "k1", "a", Some(1)),
            // Arrived ten minutes earlier, ended now.
            record(long, "k1", "long", Some(2)),
            record(NOW_MS, "k1", "b", Some(4)),
        ])
        .unwrap();
        assert_time_ordered_ids(&db);
        let models = |db: &UsageDb, since| -> Vec<String> {
            db.records_since(since)
                .unwrap()
                .into_iter()
                .map(|r| r.model.to_string())
                .collect()
        };
        assert_eq!(models(&db, long), ["long", "a", "b"]);
        assert_eq!(models(&db, long + 1), ["a", "b"]);
        assert_eq!(
            db.spend_since(long).unwrap(),
            BTreeMap::from([("k1".to_owned(), Usd(7))])
        );
        assert_eq!(
            db.spend_since(long + 1).unwrap(),
            BTreeMap::from([("k1".to_owned(), Usd(5))])
        );
        // The query reads a range of the table, not all of it, and no index.
        let plan: String = db
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM usage WHERE id >= ?2 AND at_ms >= ?1",
                db.time_range(long),
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("INTEGER PRIMARY KEY (rowid>?)"), "{plan}");
        // Reopened, the next id still follows the last one, even for an older arrival.
        drop(db);
        let mut db = UsageDb::open(&path).unwrap();
        db.insert(&[record(long - 1, "k2", "older", None)]).unwrap();
        assert_time_ordered_ids(&db);
        let last: String = db
            .conn
            .query_row(
                "SELECT model FROM usage ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(last, "older");
        // A batch whose latest row is not its first: the first id takes the latest floor.
        db.insert(&[
            record(NOW_MS - 60_000, "k2", "c", None),
            record(NOW_MS + 1_000, "k2", "d", None),
        ])
        .unwrap();
        assert_time_ordered_ids(&db);
        assert_eq!(models(&db, NOW_MS + 1), ["d"]);
        // Retention takes the late rows too (within `RETENTION_LAG_MS` of their ids).
        assert_eq!(db.delete_before(long + 1).unwrap(), 2);
        assert_eq!(models(&db, 0), ["c", "a", "b", "d"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deletes_before_a_cutoff() {
        let dir = temp_dir("delete");
        let db = sample(&dir);
        assert_eq!(db.delete_before(NOW_MS - DAY).unwrap(), 1);
        assert_eq!(db.records_since(0).unwrap().len(), 4);
        assert_eq!(db.delete_before(NOW_MS - DAY).unwrap(), 0);
        // The per-key totals of the deleted day went with it (k1's $1 of 2026-12-01).
        assert_eq!(
            db.spent_in_current_period("k1", Period::Total, NOW_MS / 1000)
                .unwrap(),
            Usd(2_000_000_000)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The per-key totals answer as the rows do, batch after batch, with several rows of one
    /// key and day in a batch and a key's rows across days.
    #[test]
    fn per_key_day_totals_follow_the_rows() {
        let dir = temp_dir("keydays");
        let mut db = sample(&dir);
        db.insert(&[
            record(NOW_MS - 30 * 60_000, "k1", "gpt-4o", Some(250)),
            record(NOW_MS - 20 * 60_000, "k1", "gpt-4o", Some(250)),
            record(NOW_MS - 25 * 60_000, "k1", "gpt-4o", None),
            record(NOW_MS - 5 * DAY, "k3", "gpt-4o", Some(7)),
        ])
        .unwrap();
        let now = NOW_MS / 1000;
        for (key, period) in [
            ("k1", Period::Day),
            ("k1", Period::Week),
            ("k1", Period::Month),
            ("k1", Period::Total),
            ("k3", Period::Day),
            ("k3", Period::Month),
            ("k2", Period::Total),
        ] {
            let since = period.start(now) * 1000;
            let from_rows: u64 = db
                .records_since(since)
                .unwrap()
                .iter()
                .filter(|r| &*r.key_id == key)
                .filter_map(|r| r.cost.map(|c| c.0))
                .sum();
            assert_eq!(
                db.spent_in_current_period(key, period, now).unwrap(),
                Usd(from_rows),
                "{key} {period:?}"
            );
        }
        let last = db.last_used().unwrap();
        assert_eq!(
            last["k1"],
            NOW_MS - 20 * 60_000,
            "the latest, not the last inserted"
        );
        assert_eq!(last["k3"], NOW_MS - 5 * DAY);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A log written by schema 1 (the `(key_id, at_ms)` index, no totals): read as it is
    /// by a reader, and moved to schema 2 by the next daemon with the same answers.
    #[test]
    fn a_schema_1_log_is_read_and_migrated() {
        let dir = temp_dir("migrate");
        let path = UsageDb::path_in(&dir);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE usage (
                    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, key_id TEXT NOT NULL,
                    owner TEXT, endpoint TEXT NOT NULL, model TEXT NOT NULL, served_model TEXT,
                    upstream TEXT, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
                    cached_tokens INTEGER NOT NULL, cache_write_tokens INTEGER NOT NULL,
                    cost_nanos INTEGER, latency_ms INTEGER NOT NULL, ttft_ms INTEGER,
                    status INTEGER NOT NULL, error TEXT);
                 CREATE INDEX usage_at ON usage (at_ms);
                 CREATE INDEX usage_key_at ON usage (key_id, at_ms);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
            for (at_ms, key, cost, model) in [
                (NOW_MS - 2 * DAY, "k1", Some(1_000_000_000_i64), "m"),
                (NOW_MS - HOUR, "k1", Some(2_000_000_000), "m"),
                (NOW_MS - 2 * HOUR, "k2", None, "m"),
                (NOW_MS - 90 * 60_000, "k2", None, "first"),
                (NOW_MS - 90 * 60_000, "k2", None, "second"),
            ] {
                conn.execute(
                    "INSERT INTO usage (at_ms, key_id, endpoint, model, input_tokens,
                        output_tokens, cached_tokens, cache_write_tokens, cost_nanos,
                        latency_ms, status) VALUES (?1, ?2, 'chat', ?4, 1, 1, 0, 0, ?3, 5, 200)",
                    params![int(at_ms), key, cost, model],
                )
                .unwrap();
            }
        }
        let now = NOW_MS / 1000;
        let expect = |db: &UsageDb| {
            assert_eq!(
                db.spent_in_current_period("k1", Period::Day, now).unwrap(),
                Usd(2_000_000_000)
            );
            assert_eq!(
                db.spent_in_current_period("k1", Period::Month, now)
                    .unwrap(),
                Usd(3_000_000_000)
            );
            assert_eq!(
                db.last_used().unwrap(),
                BTreeMap::from([
                    ("k1".to_owned(), NOW_MS - HOUR),
                    ("k2".to_owned(), NOW_MS - 90 * 60_000)
                ])
            );
        };
        // A reader (`gate usage` before the daemon's first start on this build).
        let reader = UsageDb::open_read_only(&path).unwrap().unwrap();
        expect(&reader);
        drop(reader);
        let mut db = UsageDb::open(&path).unwrap();
        expect(&db);
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        let indexes: i64 = db
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0, "the per-key and the time index are dropped");
        assert_time_ordered_ids(&db);
        // The two rows of one millisecond kept their order (their ids' low bits).
        let same_ms: Vec<String> = db
            .records_since(NOW_MS - 2 * HOUR)
            .unwrap()
            .into_iter()
            .map(|r| r.model.to_string())
            .collect();
        assert_eq!(same_ms, ["m", "first", "second", "m"]);
        db.insert(&[record(NOW_MS, "k1", "m", Some(5))]).unwrap();
        assert_eq!(
            db.spent_in_current_period("k1", Period::Day, now).unwrap(),
            Usd(2_000_000_005)
        );
        drop(db);
        // Opened again: already schema 3, nothing summed twice or copied again.
        let db = UsageDb::open(&path).unwrap();
        assert_eq!(
            db.spent_in_current_period("k1", Period::Month, now)
                .unwrap(),
            Usd(3_000_000_005)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
