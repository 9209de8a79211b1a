//! One admitted attempt at an (upstream, model): the breaker slot taken by `try_acquire`,
//! held in a guard that gives it back on drop, so a half-open trial is never lost when the
//! upstream request cannot be built, when the client goes away mid-attempt (the request
//! future is dropped), or on any early return.
//!
//! Must not: hold the router's lock across an await (each call locks briefly), or decide
//! outcomes (the dispatcher classifies them into [`AttemptOutcome`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gate_core::route::{AttemptOutcome, Router, UpstreamId};

/// The shared router.
pub(super) type SharedRouter = Arc<Mutex<Router>>;

pub(super) fn lock(router: &SharedRouter) -> MutexGuard<'_, Router> {
    router.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where outcomes of an (upstream, model) are reported. Upstreams are named, not indexed:
/// a reload in the middle of an attempt renumbers them.
#[derive(Debug)]
struct OutcomeSink {
    router: SharedRouter,
    upstream: std::sync::Arc<str>,
    model: String,
}

impl OutcomeSink {
    fn with<T>(&self, f: impl FnOnce(&mut Router, UpstreamId) -> T) -> Option<T> {
        let mut router = lock(&self.router);
        let id = router.find(&self.upstream)?;
        Some(f(&mut router, id))
    }

    /// Reports an outcome (a 429 with its `retry-after`, when given).
    fn report(&self, outcome: &AttemptOutcome, retry_after: Option<Duration>) {
        let now = Instant::now();
        self.with(|router, id| {
            if outcome.is_rate_limited() {
                router.record_rate_limited(id, &self.model, retry_after, now);
            } else {
                router.record_outcome(id, &self.model, outcome, now);
            }
        });
    }
}

/// An admitted attempt; released on drop unless [`settle`](Self::settle)d.
pub(super) struct AttemptSlot {
    sink: OutcomeSink,
    settled: bool,
}

impl AttemptSlot {
    /// Asks the (upstream, model) breaker for a slot at `now`; `None` when it admits nothing.
    pub(super) fn acquire(
        router: &SharedRouter,
        upstream: UpstreamId,
        upstream_name: &std::sync::Arc<str>,
        model: &str,
        now: Instant,
    ) -> Option<AttemptSlot> {
        if !lock(router).try_acquire(upstream, model, now) {
            return None;
        }
        Some(AttemptSlot {
            sink: OutcomeSink {
                router: router.clone(),
                upstream: upstream_name.clone(),
                model: model.to_owned(),
            },
            settled: false,
        })
    }

    /// Reports the attempt's verdict; the slot is then the breaker's to judge.
    pub(super) fn settle(mut self, outcome: &AttemptOutcome, retry_after: Option<Duration>) {
        self.settled = true;
        self.sink.report(outcome, retry_after);
    }
}

impl Drop for AttemptSlot {
    fn drop(&mut self) {
        if !self.settled {
            let model = self.sink.model.clone();
            self.sink.with(|router, id| router.release(id, &model));
        }
    }
}
