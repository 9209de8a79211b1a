//! The usage log's writer: [`UsageLog`] is the gateway's [`UsageSink`]. `record` counts the
//! record in the per-key metrics and pushes it onto a bounded queue without ever
//! waiting; one writer thread (a plain `std::thread`: SQLite is blocking, and a thread of
//! its own keeps it off every async executor) writes what arrived in one transaction at
//! most [`FLUSH_INTERVAL`] after the first record of a batch, or as soon as
//! [`MAX_BATCH`] records wait. It also deletes records past the retention, at start and
//! then daily.
//!
//! Wake-ups (issue 16): the writer is not woken per record. It parks; a record wakes it
//! only when it is the first one while the writer is idle (no batch waiting: it then
//! sleeps until the batch's flush deadline) or the [`MAX_BATCH`]th one queued since the
//! writer last drained the queue; flushes and the close always wake it. Under load that
//! is one wake-up per batch instead of one per request (a futex wake and a context switch
//! on the request's thread each).
//!
//! Durability: a committed batch survives the process being killed (WAL,
//! `synchronous = NORMAL`); what is lost after `kill -9` is what was still in the queue
//! or the batch: at most the last [`FLUSH_INTERVAL`] of records (plus the time of one
//! write). [`UsageLog::flush_and_close`] on a clean stop writes everything handed over.
//!
//! The hand-over (issue 16): the queue is a `Vec` of records under one lock, held by `record`
//! for a push and by the writer for a swap with its own emptied batch, so the two `Vec`s'
//! room is reused and a record costs no allocation. (A bounded channel of boxed records cost
//! ~750 instructions a request: the box was allocated on a serving thread and freed on the
//! writer's, which glibc serves from its arena, not its per-thread cache.)
//!
//! Must not: block (beyond that lock's push) or allocate on the request path, or let a full
//! queue slow requests down (records are dropped, counted in
//! `gate_usage_records_dropped_total`, and a warning is logged at most once a minute).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gate_core::accounting::UsageRecord;

use super::store::{StoreError, UsageDb};
use super::UsageSink;
use crate::metrics::Metrics;

/// The longest a record waits in memory before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// A batch this large is written at once.
pub const MAX_BATCH: usize = 1024;
/// Records the queue holds; more are dropped (and counted) rather than waited for.
pub const QUEUE_CAPACITY: usize = 16 * 1024;
/// Records kept for another try when writing fails (a full disk); older ones are dropped.
const MAX_PENDING: usize = 64 * 1024;
/// How often old records are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// At most one "records dropped" warning per this long.
const DROP_WARNING_EVERY_MS: u64 = 60_000;

/// What the request path hands the writer, under [`Shared::queue`]'s lock.
#[derive(Default)]
struct Queue {
    /// Records handed over and not yet taken by the writer, in order.
    records: Vec<UsageRecord>,
    /// Flushes and the close, each waiting for every record handed over before it to be
    /// written.
    waiting: Vec<SyncSender<()>>,
    /// The log is closed (or its writer is gone): records are dropped, flushes return at
    /// once, and the writer stops once it has written what it took.
    closed: bool,
    /// The writer is parked with no batch waiting (it sleeps until the retention's time):
    /// the next record wakes it.
    idle: bool,
}

/// What the request path and the writer thread share.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// How often the writer came back from parking (tests: no wake-up per record).
    wakeups: AtomicU64,
}

impl Shared {
    /// The queue; a panic while it was held left nothing half-done (a push or a swap).
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the log closed and lets every waiting flush go (their senders are dropped).
    fn close(&self) {
        let mut queue = self.lock();
        queue.closed = true;
        queue.waiting.clear();
    }
}

/// Closes the queue when the writer thread ends, even by a panic: no flush waits for a
/// writer that is gone.
struct WriterGone(Arc<Shared>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The usage log of a running daemon (see the module docs).
pub struct UsageLog {
    shared: Arc<Shared>,
    writer_thread: Thread,
    metrics: Arc<Metrics>,
    writer: Mutex<Option<JoinHandle<()>>>,
    last_drop_warning_ms: AtomicU64,
    path: PathBuf,
}

impl std::fmt::Debug for UsageLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl UsageLog {
    /// Opens (or creates) `<state_dir>/usage.db` and starts the writer thread, which first
    /// deletes records older than `retention_days` (0: keeps everything).
    pub fn open(
        state_dir: &Path,
        retention_days: u32,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<UsageLog>, StoreError> {
        let path = UsageDb::path_in(state_dir);
        let db = UsageDb::open(&path)?;
        let writer_metrics = metrics.clone();
        let shared = Arc::new(Shared::default());
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("gate-usage-writer".into())
            .spawn(move || {
                let _gone = WriterGone(writer_shared.clone());
                Writer {
                    db,
                    metrics: writer_metrics,
                    retention_days,
                    batch: Vec::new(),
                    shared: writer_shared,
                }
                .run()
            })
            .map_err(StoreError::Thread)?;
        tracing::info!(path = %path.display(), retention_days, "usage log open");
        Ok(Arc::new(UsageLog {
            shared,
            writer_thread: writer.thread().clone(),
            metrics,
            writer: Mutex::new(Some(writer)),
            last_drop_warning_ms: AtomicU64::new(0),
            path,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until every record handed over before this call is written (tests, and
    /// readers that must see the latest spend). Blocking: not for an async executor.
    pub fn flush(&self) {
        if let Some(wait) = self.hand_waiter(false) {
            let _ = wait.recv();
        }
    }

    /// Queues a waiter for the writer (and, with `close`, closes the log) and wakes the
    /// writer; `None` when the log is already closed.
    fn hand_waiter(&self, close: bool) -> Option<mpsc::Receiver<()>> {
        let (done, wait) = mpsc::sync_channel(1);
        {
            let mut queue = self.shared.lock();
            if queue.closed {
                return None;
            }
            queue.waiting.push(done);
            queue.closed = close;
        }
        self.writer_thread.unpark();
        Some(wait)
    }

    /// Writes every record handed over so far and stops the writer (a clean stop; records
    /// handed over afterwards are dropped and counted). Blocking: the daemon calls it
    /// through [`super::blocking`].
    pub fn flush_and_close(&self) {
        if let Some(wait) = self.hand_waiter(true) {
            let _ = wait.recv();
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!("the usage log's writer thread panicked");
            }
        }
    }

    fn dropped(&self, why: &str) {
        self.metrics.usage_dropped.inc();
        let now = now_ms();
        let last = self.last_drop_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_WARNING_EVERY_MS
            && self
                .last_drop_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = self.metrics.usage_dropped.get(),
                "usage records dropped: {why} (gate_usage_records_dropped_total counts them; this warning repeats at most once a minute)"
            );
        }
    }
}

impl Drop for UsageLog {
    /// Without [`UsageLog::flush_and_close`]: the writer writes what it has and stops.
    fn drop(&mut self) {
        self.shared.close();
        self.writer_thread.unpark();
    }
}

impl UsageSink for UsageLog {
    fn record(&self, record: UsageRecord) {
        self.metrics.record_usage(&record);
        let mut queue = self.shared.lock();
        let refused = if queue.closed {
            Some("the usage log is closed")
        } else if queue.records.len() >= QUEUE_CAPACITY {
            Some(
                "the writer is behind (more than 16384 records waiting; is the disk slow or full?)",
            )
        } else {
            None
        };
        if let Some(why) = refused {
            drop(queue);
            self.dropped(why);
            return;
        }
        queue.records.push(record);
        // The first record for an idle writer starts a batch (and its deadline); a full
        // batch is written at once. Anything else waits for the deadline.
        let wake = std::mem::take(&mut queue.idle) || queue.records.len() == MAX_BATCH;
        drop(queue);
        if wake {
            self.writer_thread.unpark();
        }
    }
}

/// Whether the writer gives its core back between groups of rows, with `queued` records
/// waiting in the queue: only while fewer than a batch wait (it is keeping up).
fn should_yield(queued: usize) -> bool {
    queued < MAX_BATCH
}

/// The writer thread's state.
struct Writer {
    db: UsageDb,
    metrics: Arc<Metrics>,
    retention_days: u32,
    batch: Vec<UsageRecord>,
    shared: Arc<Shared>,
}

/// What the writer does after draining the queue.
enum Drained {
    /// Nothing more is waiting.
    Empty,
    /// The log is closed (or dropped): stop.
    Stop,
}

impl Writer {
    /// Takes every record waiting in the queue (swapped with the batch when that is empty,
    /// so neither `Vec` is reallocated), writes a full batch, and answers the flushes and
    /// the close that were waiting, after writing everything handed over before them.
    fn drain(&mut self) -> Drained {
        let (waiting, closed) = {
            let mut queue = self.shared.lock();
            if self.batch.is_empty() {
                std::mem::swap(&mut self.batch, &mut queue.records);
            } else {
                self.batch.append(&mut queue.records);
            }
            (std::mem::take(&mut queue.waiting), queue.closed)
        };
        if closed || !waiting.is_empty() || self.batch.len() >= MAX_BATCH {
            self.write();
        }
        for done in waiting {
            let _ = done.send(());
        }
        if closed {
            Drained::Stop
        } else {
            Drained::Empty
        }
    }

    fn run(mut self) {
        self.apply_retention();
        let mut next_retention = Instant::now() + RETENTION_EVERY;
        // When the oldest record of the batch must be written.
        let mut deadline: Option<Instant> = None;
        loop {
            if let Drained::Stop = self.drain() {
                return;
            }
            let now = Instant::now();
            if self.batch.is_empty() {
                deadline = None;
            } else {
                let due = *deadline.get_or_insert(now + FLUSH_INTERVAL);
                if now >= due {
                    self.write();
                    deadline = (!self.batch.is_empty()).then(|| now + FLUSH_INTERVAL);
                }
            }
            if now >= next_retention {
                self.apply_retention();
                next_retention = now + RETENTION_EVERY;
            }
            if deadline.is_none() {
                // Idle: the next record wakes us. Said under the queue's lock only while it
                // is empty, so a record handed over after the last look either is seen there
                // or wakes us (an extra unpark only makes the next park return at once).
                let mut queue = self.shared.lock();
                if !(queue.records.is_empty() && queue.waiting.is_empty() && !queue.closed) {
                    continue;
                }
                queue.idle = true;
            }
            let wake = deadline.unwrap_or(next_retention).min(next_retention);
            std::thread::park_timeout(wake.saturating_duration_since(Instant::now()));
            self.shared.lock().idle = false;
            self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the batch; on failure keeps it for the next try (up to [`MAX_PENDING`]).
    fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // The writer shares the cores with the request path. Its batch is thousands of rows
        // once a second; run in one go, it held a core for a whole scheduler slice, and a
        // request thread woken on that core waited behind it (issue 16: ~1% of requests
        // delayed by ~1 ms at concurrency 1). So it gives the core back between small groups
        // of rows — but only while it is keeping up: a yielding thread gets a small share of
        // a saturated machine, so with a batch's worth of records waiting it writes at its
        // full share instead (latency then matters less than not dropping records).
        let shared = &self.shared;
        let mut pace = || {
            if should_yield(shared.lock().records.len()) {
                std::thread::yield_now();
            }
        };
        match self.db.insert_paced(&self.batch, &mut pace) {
            Ok(()) => {
                self.batch.clear();
                // The batch and the queue trade vectors at every drain: one that grew in a
                // burst (up to `QUEUE_CAPACITY` records) gives its room back here, so neither
                // keeps more than a few batches' worth (RSS flat under load; issue 16).
                if self.batch.capacity() > 4 * MAX_BATCH {
                    self.batch.shrink_to(MAX_BATCH);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = self.batch.len(), "cannot write usage records; will try again");
                if self.batch.len() > MAX_PENDING {
                    let excess = self.batch.len() - MAX_PENDING;
                    self.batch.drain(..excess);
                    self.metrics.usage_dropped.inc_by(excess as u64);
                }
            }
        }
    }

    fn apply_retention(&self) {
        if self.retention_days == 0 {
            return;
        }
        let cutoff = now_ms().saturating_sub(u64::from(self.retention_days) * 86_400_000);
        match self.db.delete_before(cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                retention_days = self.retention_days,
                "usage log: deleted records past the retention (usage.retention_days)"
            ),
            Err(e) => tracing::warn!(error = %e, "usage log: cannot delete old records"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::store::tests::{record, temp_dir};

    fn read_all(dir: &Path) -> Vec<UsageRecord> {
        UsageDb::open_read_only(&UsageDb::path_in(dir))
            .unwrap()
            .unwrap()
            .records_since(0)
            .unwrap()
    }

    /// Polls `check` for up to `deadline`.
    fn wait_until(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        check()
    }

    #[test]
    fn records_are_written_within_the_interval_and_a_close_loses_nothing() {
        let dir = temp_dir("writer");
        let log = UsageLog::open(&dir, 0, Arc::new(Metrics::new())).unwrap();
        let now = now_ms();
        log.record(record(now, "k1", "m", Some(5)));
        // No flush asked for: the writer's own timer writes it.
        assert!(
            wait_until(FLUSH_INTERVAL * 10, || read_all(&dir).len() == 1),
            "one record not written by the writer's timer"
        );
        // More than a batch, handed over faster than a second: all written on close.
        let n = 3 * MAX_BATCH + 7;
        for i in 0..n {
            let mut r = record(now + 1, "k2", "m", None);
            r.latency_ms = i as u64;
            log.record(r);
        }
        log.flush_and_close();
        let back = read_all(&dir);
        assert_eq!(back.len(), n + 1);
        let seqs: Vec<u64> = back.iter().skip(1).map(|r| r.latency_ms).collect();
        assert_eq!(
            seqs,
            (0..n as u64).collect::<Vec<_>>(),
            "in order, none lost"
        );
        // After the close, records are counted as dropped, not waited for.
        log.record(record(now, "k3", "m", None));
        assert_eq!(log.metrics.usage_dropped.get(), 1);
        assert_eq!(read_all(&dir).len(), n + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 16: the writer paces a batch (gives its core back every `PACE_EVERY` rows) and
    /// every row is still written in the one transaction; it stops pacing once a batch's
    /// worth of records waits, so a saturated machine cannot starve it into dropping records.
    #[test]
    fn a_batch_is_paced_between_groups_of_rows_only_while_the_writer_keeps_up() {
        let dir = temp_dir("paced");
        let mut db = UsageDb::open(&UsageDb::path_in(&dir)).unwrap();
        let rows: Vec<UsageRecord> = (0..100)
            .map(|i| record(1_000 + i, "k1", "m", Some(5)))
            .collect();
        let mut paced = 0;
        db.insert_paced(&rows, &mut || paced += 1).unwrap();
        assert_eq!(paced, (rows.len() - 1) / crate::usage::store::PACE_EVERY);
        drop(db);
        assert_eq!(read_all(&dir).len(), rows.len());

        assert!(should_yield(0));
        assert!(should_yield(MAX_BATCH - 1));
        assert!(!should_yield(MAX_BATCH));
        assert!(!should_yield(QUEUE_CAPACITY));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 16: records handed over back to back wake the writer once for their batch (and
    /// the flush once more), not once each; all of them are written.
    #[test]
    fn the_writer_is_woken_per_batch_not_per_record() {
        let dir = temp_dir("wakeups");
        let log = UsageLog::open(&dir, 0, Arc::new(Metrics::new())).unwrap();
        // Until the writer is parked and idle (after its start-up retention pass).
        assert!(
            wait_until(Duration::from_secs(10), || log.shared.lock().idle),
            "the writer never went idle"
        );
        let before = log.shared.wakeups.load(Ordering::Relaxed);
        let now = now_ms();
        let n = 500;
        for i in 0..n {
            let mut r = record(now, "k", "m", None);
            r.latency_ms = i;
            log.record(r);
        }
        log.flush();
        let woken = log.shared.wakeups.load(Ordering::Relaxed) - before;
        assert!(woken <= 5, "{n} records woke the writer {woken} times");
        assert_eq!(read_all(&dir).len(), n as usize);
        log.flush_and_close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A log dropped without `flush_and_close` still writes what it was handed (its writer
    /// sees the close, writes, and stops); a flush after the close returns at once.
    #[test]
    fn a_dropped_log_writes_what_it_was_handed_and_a_closed_one_refuses_more() {
        let dir = temp_dir("dropped");
        let metrics = Arc::new(Metrics::new());
        let log = UsageLog::open(&dir, 0, metrics.clone()).unwrap();
        let now = now_ms();
        for i in 0..10 {
            let mut r = record(now, "k", "m", None);
            r.latency_ms = i;
            log.record(r);
        }
        drop(log);
        assert!(
            wait_until(Duration::from_secs(10), || read_all(&dir).len() == 10),
            "the records of a dropped log were not written"
        );
        let log = UsageLog::open(&dir, 0, metrics.clone()).unwrap();
        log.flush_and_close();
        log.flush();
        log.record(record(now, "late", "m", None));
        assert_eq!(metrics.usage_dropped.get(), 1);
        assert_eq!(read_all(&dir).len(), 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Records from several threads at once: every one is written, each thread's in the
    /// order it handed them over, none dropped.
    #[test]
    fn records_from_many_threads_are_all_written_in_each_threads_order() {
        let dir = temp_dir("threads");
        let metrics = Arc::new(Metrics::new());
        let log = UsageLog::open(&dir, 0, metrics.clone()).unwrap();
        let now = now_ms();
        let (threads, each) = (4u64, 1500u64);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let log = &log;
                scope.spawn(move || {
                    for i in 0..each {
                        let mut r = record(now, &format!("k{t}"), "m", None);
                        r.latency_ms = i;
                        log.record(r);
                    }
                });
            }
        });
        log.flush();
        let back = read_all(&dir);
        assert_eq!(back.len() as u64, threads * each);
        assert_eq!(metrics.usage_dropped.get(), 0);
        for t in 0..threads {
            let key = format!("k{t}");
            let seqs: Vec<u64> = back
                .iter()
                .filter(|r| *r.key_id == *key)
                .map(|r| r.latency_ms)
                .collect();
            assert_eq!(seqs, (0..each).collect::<Vec<_>>(), "thread {t}");
        }

        log.flush_and_close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retention_deletes_old_records_at_start() {
        let dir = temp_dir("retention");
        let now = now_ms();
        let day = 86_400_000;
        let mut db = UsageDb::open(&UsageDb::path_in(&dir)).unwrap();
        db.insert(&[
            record(now - 100 * day, "old", "m", None),
            record(now - 89 * day, "kept", "m", None),
            record(now, "new", "m", None),
        ])
        .unwrap();
        drop(db);
        // 0 keeps everything.
        let log = UsageLog::open(&dir, 0, Arc::new(Metrics::new())).unwrap();
        log.flush();
        log.flush_and_close();
        assert_eq!(read_all(&dir).len(), 3);
        // 90 days: the 100-day-old record goes, before anything else is written.
        let log = UsageLog::open(&dir, 90, Arc::new(Metrics::new())).unwrap();
        log.flush();
        let keys: Vec<String> = read_all(&dir)
            .into_iter()
            .map(|r| r.key_id.to_string())
            .collect();
        assert_eq!(keys, ["kept", "new"]);
        log.flush_and_close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With the database locked by someone else, `record` still returns at once: the writer
    /// takes what the queue holds when it is first woken (at most `QUEUE_CAPACITY`) and then
    /// waits on the lock, the queue fills, the rest is dropped and counted, and what was
    /// taken is written once the lock is gone.
    #[test]
    fn a_stuck_writer_never_blocks_the_request_path() {
        let dir = temp_dir("stuck");
        let metrics = Arc::new(Metrics::new());
        let log = UsageLog::open(&dir, 0, metrics.clone()).unwrap();
        let path = UsageDb::path_in(&dir);
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE;").unwrap();
        let now = now_ms();
        let handed = 2 * QUEUE_CAPACITY + 100;
        for i in 0..handed {
            let mut r = record(now, "k", "m", None);
            r.latency_ms = i as u64;
            log.record(r);
        }
        let dropped = metrics.usage_dropped.get();
        assert!(dropped >= 100, "dropped {dropped}");
        assert!(metrics
            .render()
            .contains("gate_usage_records_dropped_total"));
        blocker.execute_batch("ROLLBACK;").unwrap();
        drop(blocker);
        log.flush();
        // The vectors that held the backlog give their room back once it is written.
        for _ in 0..2 {
            log.record(record(now, "k", "m", None));
            log.flush();
        }
        assert!(log.shared.lock().records.capacity() <= 4 * MAX_BATCH);
        log.flush_and_close();
        let written = read_all(&dir).len() as u64;
        assert_eq!(written + dropped, handed as u64 + 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
