//! The usage log's writer: [`UsageLog`] is the gateway's [`UsageSink`]. `record` counts the
//! record in the per-key metrics and pushes it into a bounded channel without ever
//! waiting; one writer thread (a plain `std::thread`: SQLite is blocking, and a thread of
//! its own keeps it off every async executor) writes what arrived in one transaction at
//! most [`FLUSH_INTERVAL`] after the first record of a batch, or as soon as
//! [`MAX_BATCH`] records wait. It also deletes records past the retention, at start and
//! then daily.
//!
//! Durability: a committed batch survives the process being killed (WAL,
//! `synchronous = NORMAL`); what is lost after `kill -9` is what was still in the channel
//! or the batch: at most the last [`FLUSH_INTERVAL`] of records (plus the time of one
//! write). [`UsageLog::flush_and_close`] on a clean stop writes everything handed over.
//!
//! Must not: block or allocate beyond the channel on the request path, or let a full
//! channel slow requests down (records are dropped, counted in
//! `gate_usage_records_dropped_total`, and a warning is logged at most once a minute).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gate_core::accounting::UsageRecord;

use super::store::{StoreError, UsageDb};
use super::UsageSink;
use crate::metrics::Metrics;

/// The longest a record waits in memory before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// A batch this large is written at once.
pub const MAX_BATCH: usize = 1024;
/// Records the channel holds; more are dropped (and counted) rather than waited for.
pub const CHANNEL_CAPACITY: usize = 16 * 1024;
/// Records kept for another try when writing fails (a full disk); older ones are dropped.
const MAX_PENDING: usize = 64 * 1024;
/// How often old records are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// At most one "records dropped" warning per this long.
const DROP_WARNING_EVERY_MS: u64 = 60_000;

enum Message {
    Record(Box<UsageRecord>),
    /// Write everything received so far, then answer.
    Flush(SyncSender<()>),
    /// Write everything, answer, and stop.
    Close(SyncSender<()>),
}

/// The usage log of a running daemon (see the module docs).
pub struct UsageLog {
    sender: SyncSender<Message>,
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
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let writer_metrics = metrics.clone();
        let writer = std::thread::Builder::new()
            .name("gate-usage-writer".into())
            .spawn(move || {
                Writer {
                    db,
                    metrics: writer_metrics,
                    retention_days,
                    batch: Vec::new(),
                }
                .run(receiver)
            })
            .map_err(StoreError::Thread)?;
        tracing::info!(path = %path.display(), retention_days, "usage log open");
        Ok(Arc::new(UsageLog {
            sender,
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
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Writes every record handed over so far and stops the writer (a clean stop; records
    /// handed over afterwards are dropped and counted). Blocking: the daemon calls it
    /// through [`super::blocking`].
    pub fn flush_and_close(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.sender.send(Message::Close(done)).is_ok() {
            let _ = wait.recv();
        }
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
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

impl UsageSink for UsageLog {
    fn record(&self, record: UsageRecord) {
        self.metrics.record_usage(&record);
        match self.sender.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped(
                "the writer is behind (more than 16384 records waiting; is the disk slow or full?)",
            ),
            Err(TrySendError::Disconnected(_)) => self.dropped("the usage log is closed"),
        }
    }
}

/// The writer thread's state.
struct Writer {
    db: UsageDb,
    metrics: Arc<Metrics>,
    retention_days: u32,
    batch: Vec<UsageRecord>,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        self.apply_retention();
        let mut next_retention = Instant::now() + RETENTION_EVERY;
        // When the oldest record of the batch must be written.
        let mut deadline: Option<Instant> = None;
        loop {
            let wake = deadline.unwrap_or(next_retention).min(next_retention);
            match receiver.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Message::Record(record)) => {
                    self.batch.push(*record);
                    if self.batch.len() >= MAX_BATCH {
                        self.write();
                    }
                }
                Ok(Message::Flush(done)) => {
                    self.write();
                    let _ = done.send(());
                }
                Ok(Message::Close(done)) => {
                    // Whatever else is queued was handed over before the close took effect.
                    let mut waiting = Vec::new();
                    while let Ok(message) = receiver.try_recv() {
                        match message {
                            Message::Record(record) => self.batch.push(*record),
                            Message::Flush(other) | Message::Close(other) => waiting.push(other),
                        }
                    }
                    self.write();
                    let _ = done.send(());
                    for other in waiting {
                        let _ = other.send(());
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.write();
                    return;
                }
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
        }
    }

    /// Writes the batch; on failure keeps it for the next try (up to [`MAX_PENDING`]).
    fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        match self.db.insert(&self.batch) {
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
