//! The usage log: where the gateway hands one [`UsageRecord`] per request once its answer
//! has ended. The gateway only sees [`UsageSink`]; the store behind it writes off the
//! request path.

use gate_core::accounting::UsageRecord;

/// Takes the usage record of each finished request. `record` must not block: it is
/// called on the request path (at the end of an answer or stream).
pub trait UsageSink: Send + Sync + 'static {
    /// Hands over one request's record.
    fn record(&self, record: UsageRecord);
}

/// A sink that keeps nothing (usage logging off, and tests that do not look at it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl UsageSink for Discard {
    fn record(&self, _record: UsageRecord) {}
}
