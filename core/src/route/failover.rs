//! Failover rules: which outcome of an attempt at one upstream sends the request on to the next
//! candidate, and which outcomes count as the upstream failing (for its circuit breaker).
//!
//! It must not perform requests or look at response bodies; the daemon classifies what happened
//! into an [`AttemptOutcome`].

/// What happened when the daemon tried one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// TCP or TLS connection failed (refused, reset, DNS, handshake).
    ConnectError,
    /// No response headers within the upstream timeout.
    Timeout,
    /// The upstream answered with this status before anything was sent to the client.
    HttpStatus(u16),
    /// The response started (bytes reached the client) and then broke off. Too late to fail
    /// over, but it counts against the upstream.
    FailedAfterFirstByte,
}

impl AttemptOutcome {
    /// Whether the daemon should try the next candidate: connect error, timeout, 429 or 5xx
    /// before the first byte reached the client. Any other 4xx is the client's problem and is
    /// returned as it is; a 2xx/3xx is the answer.
    pub fn should_failover(&self) -> bool {
        match self {
            AttemptOutcome::ConnectError | AttemptOutcome::Timeout => true,
            AttemptOutcome::HttpStatus(status) => *status == 429 || (500..=599).contains(status),
            AttemptOutcome::FailedAfterFirstByte => false,
        }
    }

    /// Whether this outcome is the upstream failing (counts toward opening the circuit of that
    /// upstream and model): connect error, timeout, 5xx, or a stream that broke off. A 429 is
    /// rate limiting, tracked apart ([`is_rate_limited`](Self::is_rate_limited)); any other 4xx
    /// means the upstream is up and answering, so it counts as a success.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            AttemptOutcome::ConnectError
            | AttemptOutcome::Timeout
            | AttemptOutcome::FailedAfterFirstByte => true,
            AttemptOutcome::HttpStatus(status) => (500..=599).contains(status),
        }
    }

    /// Whether the upstream said it is rate limiting this caller (429): the (upstream, model)
    /// is put aside for its `retry-after`, without counting toward the breaker.
    pub fn is_rate_limited(&self) -> bool {
        *self == AttemptOutcome::HttpStatus(429)
    }
}

/// Free-function form of [`AttemptOutcome::should_failover`].
pub fn should_failover(outcome: &AttemptOutcome) -> bool {
    outcome.should_failover()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_table() {
        assert!(should_failover(&AttemptOutcome::ConnectError));
        assert!(should_failover(&AttemptOutcome::Timeout));
        for status in [500, 502, 503, 504, 599] {
            assert!(
                should_failover(&AttemptOutcome::HttpStatus(status)),
                "{status}"
            );
            assert!(
                AttemptOutcome::HttpStatus(status).is_upstream_failure(),
                "{status}"
            );
            assert!(!AttemptOutcome::HttpStatus(status).is_rate_limited());
        }
        let rate_limited = AttemptOutcome::HttpStatus(429);
        assert!(rate_limited.should_failover());
        assert!(!rate_limited.is_upstream_failure());
        assert!(rate_limited.is_rate_limited());
        for status in [200, 204, 301, 400, 401, 403, 404, 408, 413, 422, 600] {
            assert!(
                !should_failover(&AttemptOutcome::HttpStatus(status)),
                "{status}"
            );
            assert!(
                !AttemptOutcome::HttpStatus(status).is_upstream_failure(),
                "{status}"
            );
        }
        assert!(!should_failover(&AttemptOutcome::FailedAfterFirstByte));
        assert!(AttemptOutcome::FailedAfterFirstByte.is_upstream_failure());
    }
}
