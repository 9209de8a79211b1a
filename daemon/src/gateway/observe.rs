//! Metrics of the request path: attempt outcomes, and the gauges refreshed when `/metrics`
//! is rendered (upstream health, relay state, certificate expiry).

use std::time::Instant;

use gate_rt::Runtime;

use super::Gateway;
use crate::metrics::UpstreamLabels;

impl<R: Runtime> Gateway<R> {
    /// Updates the upstream health gauges and renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        let now = Instant::now();
        if let Some(relay_side) = self.relay_gauges.get() {
            for (address, up) in relay_side.relays() {
                self.metrics
                    .relay_registered
                    .get_or_create(&crate::metrics::RelayLabels { relay: address })
                    .set(i64::from(up));
            }
            if let Some(expiry) = relay_side.certificate_expiry() {
                self.metrics.certificate_expiry.set(expiry);
            }
        }
        {
            let router = self.lock_router();
            for id in router.ids() {
                let (Some(spec), Some(health)) = (router.upstream(id), router.health(id, now))
                else {
                    continue;
                };
                let up = matches!(health, gate_core::route::Health::Closed);
                self.metrics
                    .upstream_up
                    .get_or_create(&UpstreamLabels {
                        upstream: spec.name.clone(),
                    })
                    .set(i64::from(up));
            }
        }
        self.metrics.render()
    }

    /// Counts one attempt at an upstream by outcome (the breaker hears of it through the
    /// attempt's slot).
    pub(super) fn count_attempt(&self, upstream: &str, outcome: &'static str) {
        self.metrics.count_attempt(upstream, outcome);
    }
}
