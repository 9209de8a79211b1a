//! The usage log's writer: [`UsageLog`] is the gateway's [`UsageSink`]. `record` counts the
//! record in the per-key metrics and appends it to a bounded in-memory queue without ever
//! waiting; one writer thread (a plain `std::thread`: SQLite is blocking, and a thread of
//! its own keeps it off every async executor) writes what arrived in one transaction at
//! most [`FLUSH_INTERVAL`] after the first record of a batch, or as soon as about
//! [`MAX_BATCH`] records wait. It also deletes records past the retention, at start and
//! then daily.
//!
//! The queue is sharded (issue 16): one `Mutex<Vec<UsageRecord>>` per shard, as many shards
//! as the machine has cores, each padded to its own cache lines; a request thread always
//! appends to the same shard (chosen once per thread), so its lock is uncontended except
//! for the moment the writer swaps the shard's vector for an empty one. A record is moved
//! into the vector: no allocation, no cross-core counter per record. (The former channel
//! boxed every record, freed on the writer's thread, so every box came from glibc's slow
//! path, and bumped a shared counter twice per record.)
//!
//! Wake-ups (issue 16): the writer is not woken per record. It parks; a record wakes it
//! only when it is the first one while the writer is idle (no batch waiting: it then
//! sleeps until the batch's flush deadline) or when it fills its shard's share of a batch;
//! flushes and the close always wake it. Under load that is one wake-up per batch instead
//! of one per request (a futex wake and a context switch on the request's thread each).
//!
//! Durability: a committed batch survives the process being killed (WAL,
//! `synchronous = NORMAL`); what is lost after `kill -9` is what was still queued or in the
//! batch: at most the last [`FLUSH_INTERVAL`] of records (plus the time of one write).
//! [`UsageLog::flush_and_close`] on a clean stop writes everything handed over.
//!
//! Must not: block (beyond a shard's short lock) or allocate (beyond a shard's vector
//! growing) on the request path, or let a full queue slow requests down (records are
//! dropped, counted in `gate_usage_records_dropped_total`, and a warning is logged at most
//! once a minute).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TryRecvError};
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
/// Records the queue holds (over all shards); more are dropped (and counted) rather than
/// waited for.
pub const CHANNEL_CAPACITY: usize = 16 * 1024;
/// Records kept for another try when writing fails (a full disk); older ones are dropped.
const MAX_PENDING: usize = 64 * 1024;
/// How often old records are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// At most one "records dropped" warning per this long.
const DROP_WARNING_EVERY_MS: u64 = 60_000;
/// At most this many shards, whatever the core count.
const MAX_SHARDS: usize = 64;

/// What the writer is asked besides writing records.
enum Control {
    /// Write everything received so far, then answer.
    Flush(SyncSender<()>),
    /// Write everything, answer, and stop.
    Close(SyncSender<()>),
}

/// One shard of the queue, on cache lines of its own (two request threads appending to
/// neighbouring shards must not share a line).
#[repr(align(128))]
struct Shard {
    records: Mutex<Vec<UsageRecord>>,
}

/// What the request path and the writer thread share: the queue, and what decides when
/// to wake the writer.
struct Queue {
    shards: Box<[Shard]>,
    /// Records a shard holds at most ([`CHANNEL_CAPACITY`] over the shards).
    shard_capacity: usize,
    /// A shard this full wakes the writer ([`MAX_BATCH`] over the shards).
    shard_batch: usize,
    /// The writer is parked with no batch waiting (it sleeps until the retention's time):
    /// the next record wakes it.
    idle: AtomicBool,
    /// [`UsageLog::flush_and_close`] has begun: records are dropped, not queued. Read under
    /// a shard's lock, so a record either sees it or is taken by the close's last drain.
    closed: AtomicBool,
    /// How often the writer came back from parking (tests: no wake-up per record).
    wakeups: AtomicU64,
}

impl Queue {
    fn new(shards: usize) -> Queue {
        let shards = shards.clamp(1, MAX_SHARDS);
        Queue {
            shards: (0..shards)
                .map(|_| Shard {
                    records: Mutex::new(Vec::new()),
                })
                .collect(),
            shard_capacity: (CHANNEL_CAPACITY / shards).max(1),
            shard_batch: (MAX_BATCH / shards).max(1),
            idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        }
    }

    fn lock(shard: &Shard) -> MutexGuard<'_, Vec<UsageRecord>> {
        // A panic while holding a shard's lock leaves a valid vector; keep using it.
        shard.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard of the calling thread: chosen once per thread, round robin, so the
    /// serving cores' threads each keep to their own.
    fn shard(&self) -> &Shard {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static MINE: Cell<Option<usize>> = const { Cell::new(None) };
        }
        let mine = MINE.with(|mine| {
            mine.get().unwrap_or_else(|| {
                let index = NEXT.fetch_add(1, Ordering::Relaxed);
                mine.set(Some(index));
                index
            })
        });
        &self.shards[mine % self.shards.len()]
    }

    /// Records waiting in the shards.
    fn waiting(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| Queue::lock(shard).len())
            .sum()
    }

    /// Moves every waiting record into `batch`. Each shard's lock is held only to swap its
    /// vector with `spare` (empty, with capacity), so request threads never wait for a copy.
    fn take_into(&self, batch: &mut Vec<UsageRecord>, spare: &mut Vec<UsageRecord>) {
        for shard in self.shards.iter() {
            {
                let mut records = Queue::lock(shard);
                if records.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *records, spare);
            }
            if batch.is_empty() {
                std::mem::swap(batch, spare);
            } else {
                batch.append(spare);
            }
        }
    }
}

/// Why a record was not queued.
enum Refused {
    Full,
    Closed,
}

/// The usage log of a running daemon (see the module docs).
pub struct UsageLog {
    queue: Arc<Queue>,
    control: SyncSender<Control>,
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
        let (control, receiver) = mpsc::sync_channel(16);
        let writer_metrics = metrics.clone();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let queue = Arc::new(Queue::new(cores));
        let writer_queue = queue.clone();
        let writer = std::thread::Builder::new()
            .name("gate-usage-writer".into())
            .spawn(move || {
                Writer {
                    db,
                    metrics: writer_metrics,
                    retention_days,
                    batch: Vec::new(),
                    spare: Vec::new(),
                    queue: writer_queue,
                }
                .run(receiver)
            })
            .map_err(StoreError::Thread)?;
        tracing::info!(path = %path.display(), retention_days, "usage log open");
        Ok(Arc::new(UsageLog {
            queue,
            control,
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
        let (done, wait) = mpsc::sync_channel(1);
        if self.control.send(Control::Flush(done)).is_ok() {
            self.writer_thread.unpark();
            let _ = wait.recv();
        }
    }

    /// Writes every record handed over so far and stops the writer (a clean stop; records
    /// handed over afterwards are dropped and counted). Blocking: the daemon calls it
    /// through [`super::blocking`].
    pub fn flush_and_close(&self) {
        // Before the writer's last drain (which follows the message): a record queued
        // after that drain would see it under its shard's lock.
        self.queue.closed.store(true, Ordering::SeqCst);
        let (done, wait) = mpsc::sync_channel(1);
        if self.control.send(Control::Close(done)).is_ok() {
            self.writer_thread.unpark();
            let _ = wait.recv();
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!("the usage log's writer thread panicked");
            }
        }
    }

    fn dropped(&self, why: Refused) {
        self.metrics.usage_dropped.inc();
        let now = now_ms();
        let last = self.last_drop_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_WARNING_EVERY_MS
            && self
                .last_drop_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let why = match why {
                Refused::Full => "the writer is behind (more than 16384 records waiting; is the disk slow or full?)",
                Refused::Closed => "the usage log is closed",
            };
            tracing::warn!(
                dropped_total = self.metrics.usage_dropped.get(),
                "usage records dropped: {why} (gate_usage_records_dropped_total counts them; this warning repeats at most once a minute)"
            );
        }
    }
}

impl UsageSink for UsageLog {
    fn record(&self, record: UsageRecord) {
        self.metrics.record_usage(&record);
        let queue = &*self.queue;
        let mut records = Queue::lock(queue.shard());
        if queue.closed.load(Ordering::Relaxed) {
            drop(records);
            return self.dropped(Refused::Closed);
        }
        if records.len() >= queue.shard_capacity {
            drop(records);
            return self.dropped(Refused::Full);
        }
        records.push(record);
        let waiting = records.len();
        drop(records);
        // A full share of a batch is written at once; the first record for an idle writer
        // starts a batch (and its deadline). Anything else waits for the deadline. `idle`
        // is read first and only swapped when set, so under load (the writer not idle) no
        // request writes to the line the writer and the other cores read; the shard's lock
        // orders the read after the writer's "idle, then a last look at the shards".
        if waiting == queue.shard_batch
            || (queue.idle.load(Ordering::Relaxed) && queue.idle.swap(false, Ordering::SeqCst))
        {
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
    /// An empty vector (with the capacity of an earlier batch) to swap into a shard.
    spare: Vec<UsageRecord>,
    queue: Arc<Queue>,
}

/// What the writer does after draining the queue.
enum Drained {
    /// Nothing more is waiting.
    Empty,
    /// The log is closed (or its handle is gone): stop.
    Stop,
}

impl Writer {
    /// Takes every record waiting in the shards (writing at once past a batch) and answers
    /// every flush or close asked for.
    fn drain(&mut self, control: &mpsc::Receiver<Control>) -> Drained {
        self.take();
        loop {
            match control.try_recv() {
                Ok(Control::Flush(done)) => {
                    self.take();
                    self.write();
                    let _ = done.send(());
                }
                Ok(Control::Close(done)) => {
                    // `closed` is set: whatever is queued now was handed over before it.
                    let mut waiting = Vec::new();
                    while let Ok(other) = control.try_recv() {
                        match other {
                            Control::Flush(other) | Control::Close(other) => waiting.push(other),
                        }
                    }
                    self.take();
                    self.write();
                    let _ = done.send(());
                    for other in waiting {
                        let _ = other.send(());
                    }
                    return Drained::Stop;
                }
                Err(TryRecvError::Empty) => return Drained::Empty,
                Err(TryRecvError::Disconnected) => {
                    self.take();
                    self.write();
                    return Drained::Stop;
                }
            }
        }
    }

    /// Moves the queued records into the batch; writes it once it holds a batch's worth.
    fn take(&mut self) {
        self.queue.take_into(&mut self.batch, &mut self.spare);
        if self.batch.len() >= MAX_BATCH {
            self.write();
        }
    }

    fn run(mut self, control: mpsc::Receiver<Control>) {
        self.apply_retention();
        let mut next_retention = Instant::now() + RETENTION_EVERY;
        // When the oldest record of the batch must be written.
        let mut deadline: Option<Instant> = None;
        loop {
            if let Drained::Stop = self.drain(&control) {
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
                // Idle: the next record wakes us. Said before the last look at the shards,
                // so a record queued in between is either seen here or wakes us (an extra
                // unpark only makes the next park return at once).
                self.queue.idle.store(true, Ordering::SeqCst);
                if let Drained::Stop = self.drain(&control) {
                    return;
                }
                if !self.batch.is_empty() {
                    self.queue.idle.store(false, Ordering::SeqCst);
                    continue;
                }
            }
            let wake = deadline.unwrap_or(next_retention).min(next_retention);
            std::thread::park_timeout(wake.saturating_duration_since(Instant::now()));
            self.queue.idle.store(false, Ordering::SeqCst);
            self.queue.wakeups.fetch_add(1, Ordering::Relaxed);
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
        let queue = &self.queue;
        let mut pace = || {
            if should_yield(queue.waiting()) {
                std::thread::yield_now();
            }
        };
        match self.db.insert_paced(&self.batch, &mut pace) {
            Ok(()) => self.batch.clear(),
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
        assert!(!should_yield(CHANNEL_CAPACITY));
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
            wait_until(Duration::from_secs(10), || log
                .queue
                .idle
                .load(Ordering::SeqCst)),
            "the writer never went idle"
        );
        let before = log.queue.wakeups.load(Ordering::Relaxed);
        let now = now_ms();
        let n = 500;
        for i in 0..n {
            let mut r = record(now, "k", "m", None);
            r.latency_ms = i;
            log.record(r);
        }
        log.flush();
        let woken = log.queue.wakeups.load(Ordering::Relaxed) - before;
        assert!(woken <= 5, "{n} records woke the writer {woken} times");
        assert_eq!(read_all(&dir).len(), n as usize);
        log.flush_and_close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Records from several threads at once (each appends to its own shard): every one is
    /// written, each thread's in the order it handed them over, none dropped; and a close
    /// racing with them loses nothing it accepted (every record is written or counted).
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

        // Threads still recording while the log closes: accepted ones are written, the
        // rest counted as dropped.
        let handed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (log, handed) = (&log, &handed);
                scope.spawn(move || {
                    for i in 0..each {
                        let mut r = record(now + 1, &format!("late{t}"), "m", None);
                        r.latency_ms = i;
                        log.record(r);
                        handed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(2));
            log.flush_and_close();
        });
        let late = read_all(&dir).len() as u64 - threads * each;
        assert_eq!(
            late + metrics.usage_dropped.get(),
            handed.load(Ordering::Relaxed)
        );
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

    /// With the database locked by someone else, `record` still returns at once: the
    /// channel fills, the rest is dropped and counted, and what was taken is written once
    /// the lock is gone.
    #[test]
    fn a_stuck_writer_never_blocks_the_request_path() {
        let dir = temp_dir("stuck");
        let metrics = Arc::new(Metrics::new());
        let log = UsageLog::open(&dir, 0, metrics.clone()).unwrap();
        let path = UsageDb::path_in(&dir);
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE;").unwrap();
        let now = now_ms();
        let handed = CHANNEL_CAPACITY + 2 * MAX_BATCH + 100;
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
        log.flush_and_close();
        let written = read_all(&dir).len() as u64;
        assert_eq!(written + dropped, handed as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
