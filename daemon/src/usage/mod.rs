//! The usage log: where the gateway hands one [`UsageRecord`] per request once its answer
//! has ended. The gateway only sees [`UsageSink`]; the store behind it writes off the
//! request path.
//!
//! - [`store`]: `<state_dir>/usage.db` (SQLite, WAL): schema, batched writes, retention,
//!   and every query (spend per key and period, last use, summaries, chart series);
//! - [`writer`]: [`UsageLog`], the sink with its bounded channel and writer thread;
//! - [`render`]: `gate usage`'s table, CSV and JSON;
//! - here: the sink trait, the sinks without a log, `--since` parsing, and [`blocking`],
//!   which runs a database call on a thread of its own for async callers.

pub mod render;
pub mod report;
pub mod store;
pub mod writer;

use std::future::Future;
use std::sync::Arc;

use gate_core::accounting::period::days_from_civil;
use gate_core::accounting::UsageRecord;

pub use store::{GroupBy, StoreError, UsageDb};
pub use writer::UsageLog;

use crate::metrics::Metrics;

/// Takes the usage record of each finished request. `record` must not block: it is
/// called on the request path (at the end of an answer or stream).
pub trait UsageSink: Send + Sync + 'static {
    /// Hands over one request's record.
    fn record(&self, record: UsageRecord);
}

/// A sink that keeps nothing (tests that do not look at it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl UsageSink for Discard {
    fn record(&self, _record: UsageRecord) {}
}

/// The sink when the log is off (`usage.enabled = false`): the per-key Prometheus counters
/// only.
#[derive(Clone)]
pub struct MetricsOnly(pub Arc<Metrics>);

impl UsageSink for MetricsOnly {
    fn record(&self, record: UsageRecord) {
        self.0.record_usage(&record);
    }
}

/// Runs `work` (a database call) on a thread of its own and awaits its result, so an async
/// caller on either runtime never blocks its executor.
pub fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Result<T, String>> {
    let (sender, receiver) = async_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("gate-usage-query".into())
        .spawn(move || {
            let _ = sender.send_blocking(work());
        });
    async move {
        spawned.map_err(|e| format!("cannot start a thread for the usage log: {e}"))?;
        receiver
            .recv()
            .await
            .map_err(|_| "the usage log query thread ended without an answer".to_owned())
    }
}

/// Parses a `--since` / `since=` value into Unix milliseconds: a duration back from
/// `now_ms` (`7d`, `24h`, `90m`, `2w`), a UTC date (`2026-12-01`), or `all`.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(0);
    }
    if let Some(date) = parse_date(text) {
        return Ok(date);
    }
    if !text.starts_with(|c: char| c.is_ascii_digit()) || text.contains('-') {
        return Err(format!(
            "{text:?} is not a time: use a duration back from now (7d, 24h, 90m), a UTC date (2026-12-01) or all"
        ));
    }
    let secs = crate::auth::parse_duration_secs(text)?;
    Ok(now_ms.saturating_sub(secs.saturating_mul(1000)))
}

/// `YYYY-MM-DD` as Unix milliseconds at 00:00 UTC.
fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // 2026-02-31 would silently become March 3rd: refuse dates that do not round-trip.
    if gate_core::accounting::period::civil_from_days(days) != (y, m, d) {
        return None;
    }
    u64::try_from(days).ok().map(|days| days * 86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-03 15:04:05 UTC.
    const NOW_MS: u64 = 1_796_310_245_000;

    #[test]
    fn since_values() {
        assert_eq!(parse_since("7d", NOW_MS), Ok(NOW_MS - 7 * 86_400_000));
        assert_eq!(parse_since("24h", NOW_MS), Ok(NOW_MS - 86_400_000));
        assert_eq!(parse_since(" 90m ", NOW_MS), Ok(NOW_MS - 90 * 60_000));
        assert_eq!(parse_since("all", NOW_MS), Ok(0));
        assert_eq!(
            parse_since("2026-12-01", NOW_MS),
            Ok(days_from_civil(2026, 12, 1) as u64 * 86_400_000)
        );
        assert_eq!(
            gate_core::accounting::period::date_string(
                parse_since("2026-12-01", NOW_MS).unwrap() / 1000
            ),
            "2026-12-01"
        );
        for bad in [
            "",
            "yesterday",
            "2026-02-31",
            "2026-13-01",
            "-7d",
            "7y",
            "2026-1-1",
        ] {
            let err = parse_since(bad, NOW_MS).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse_since("soon", NOW_MS).unwrap_err().contains("7d, 24h"));
    }
}
