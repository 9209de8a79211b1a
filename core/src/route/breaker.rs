//! A circuit breaker for one (upstream, model), with time passed in.
//!
//! It owns the Closed -> Open -> HalfOpen -> Closed cycle and nothing else: it must not read a
//! clock, sleep or know what a request is. The daemon tells it about outcomes
//! ([`CircuitBreaker::record_success`], [`CircuitBreaker::record_failure`]) and asks before
//! each attempt ([`CircuitBreaker::try_acquire`]).
//!
//! Rules:
//! - **Closed**: every request is admitted. `failure_threshold` consecutive failures open the
//!   circuit; a success resets the count.
//! - **Open** until `now + cooldown`: nothing is admitted. The cooldown is `base_cooldown` on
//!   the first trip and doubles on each trip that follows without a successful close, up to
//!   `max_cooldown`. Outcomes reported while open come from requests admitted before the trip
//!   and are ignored, also after the cooldown until a trial has been admitted.
//! - **HalfOpen** once the cooldown has passed: exactly one trial request is admitted by
//!   `try_acquire`; a second caller is refused until the trial reports. Success closes the
//!   circuit (and resets the cooldown to `base_cooldown`), failure opens it again with a longer
//!   cooldown. A trial that reports nothing (cancelled without [`CircuitBreaker::release`]) is
//!   presumed lost after `trial_timeout`, and another trial is admitted.

use std::time::{Duration, Instant};

/// Breaker tuning. The defaults are 5 failures, 30 s doubling up to 5 min, 60 s trial timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed circuit (0 is treated as 1).
    pub failure_threshold: u32,
    /// Cooldown after the first trip.
    pub base_cooldown: Duration,
    /// Upper bound of the doubling cooldown.
    pub max_cooldown: Duration,
    /// How long a half-open trial may go unreported before another one is admitted.
    pub trial_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            base_cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(300),
            trial_timeout: Duration::from_secs(60),
        }
    }
}

/// What a breaker looks like from outside (for metrics and routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Requests flow normally.
    Closed,
    /// No requests until `until`.
    Open {
        /// When the circuit becomes half-open.
        until: Instant,
    },
    /// One trial request decides; `trial_in_flight` says whether it has been admitted.
    HalfOpen {
        /// A trial has been admitted and has not reported (nor timed out).
        trial_in_flight: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_started: Option<Instant> },
}

/// The breaker of one upstream. See the module docs for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: State,
    /// Trips since the circuit last closed after a successful trial (drives the doubling).
    trips_in_a_row: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::new(BreakerConfig::default())
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: State::Closed {
                consecutive_failures: 0,
            },
            trips_in_a_row: 0,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now` (an open circuit whose cooldown has passed reads as half-open).
    pub fn health(&self, now: Instant) -> Health {
        match self.state {
            State::Closed { .. } => Health::Closed,
            State::Open { until } if now < until => Health::Open { until },
            State::Open { .. } => Health::HalfOpen {
                trial_in_flight: false,
            },
            State::HalfOpen { trial_started } => Health::HalfOpen {
                trial_in_flight: self.trial_running(trial_started, now),
            },
        }
    }

    /// Whether [`try_acquire`](Self::try_acquire) would admit a request at `now`.
    pub fn is_available(&self, now: Instant) -> bool {
        matches!(
            self.health(now),
            Health::Closed
                | Health::HalfOpen {
                    trial_in_flight: false
                }
        )
    }

    /// Asks to send a request at `now`. Always true when closed; when half-open, true for the
    /// one trial request only; false when open.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if !self.is_available(now) {
            return false;
        }
        if !matches!(self.state, State::Closed { .. }) {
            self.state = State::HalfOpen {
                trial_started: Some(now),
            };
        }
        true
    }

    /// A request succeeded (or got an answer that proves the upstream up). `now` is taken for
    /// symmetry with [`record_failure`](Self::record_failure); a success does not depend on it.
    pub fn record_success(&mut self, _now: Instant) {
        match self.state {
            State::Closed { .. } => {
                self.state = State::Closed {
                    consecutive_failures: 0,
                }
            }
            State::Open { .. } => {}
            State::HalfOpen { .. } => {
                self.trips_in_a_row = 0;
                self.state = State::Closed {
                    consecutive_failures: 0,
                };
            }
        }
    }

    /// The request failed (connect error, timeout, 5xx, broken stream; not a 429, which is
    /// rate limiting and tracked apart).
    pub fn record_failure(&mut self, now: Instant) {
        match self.state {
            State::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.config.failure_threshold.max(1) {
                    self.trip(now);
                } else {
                    self.state = State::Closed {
                        consecutive_failures: failures,
                    };
                }
            }
            State::Open { .. } => {}
            State::HalfOpen { .. } => self.trip(now),
        }
    }

    /// A request admitted while half-open ended without a verdict (e.g. the client went away
    /// before the upstream answered): another trial may go.
    pub fn release(&mut self) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen {
                trial_started: None,
            };
        }
    }

    /// Closed, with no failure counted and no trip to remember: the state of a new breaker
    /// (such a breaker need not be kept).
    pub fn is_at_rest(&self) -> bool {
        self.state
            == State::Closed {
                consecutive_failures: 0,
            }
            && self.trips_in_a_row == 0
    }

    /// The cooldown the next trip would use.
    pub fn next_cooldown(&self) -> Duration {
        let doublings = self.trips_in_a_row.min(31);
        let factor = 1u32 << doublings;
        self.config
            .base_cooldown
            .saturating_mul(factor)
            .min(self.config.max_cooldown.max(self.config.base_cooldown))
    }

    fn trip(&mut self, now: Instant) {
        let cooldown = self.next_cooldown();
        self.trips_in_a_row = self.trips_in_a_row.saturating_add(1);
        // `Instant + Duration` panics on overflow; a cooldown that cannot be represented is
        // capped at the largest one that can (never reached with sane configuration).
        let until = now
            .checked_add(cooldown)
            .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
            .unwrap_or(now);
        self.state = State::Open { until };
    }

    fn trial_running(&self, trial_started: Option<Instant>, now: Instant) -> bool {
        match trial_started {
            None => false,
            Some(started) => now.saturating_duration_since(started) < self.config.trial_timeout,
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // one real `Instant` to start simulated time from
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            base_cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(35),
            trial_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_after_threshold_and_half_opens_after_cooldown() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        breaker.record_success(t0);
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        assert_eq!(breaker.health(t0), Health::Closed);
        breaker.record_failure(t0);
        let until = t0 + Duration::from_secs(10);
        assert_eq!(breaker.health(t0), Health::Open { until });
        assert!(!breaker.try_acquire(until - Duration::from_millis(1)));
        assert_eq!(
            breaker.health(until),
            Health::HalfOpen {
                trial_in_flight: false
            }
        );
        assert!(breaker.try_acquire(until));
        assert!(!breaker.try_acquire(until), "only one trial");
        breaker.record_success(until);
        assert_eq!(breaker.health(until), Health::Closed);
    }

    #[test]
    fn cooldown_doubles_up_to_the_cap_and_resets_on_close() {
        let mut now = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..3 {
            breaker.record_failure(now);
        }
        let mut cooldowns = Vec::new();
        for _ in 0..4 {
            let Health::Open { until } = breaker.health(now) else {
                panic!("open expected")
            };
            cooldowns.push(until - now);
            now = until;
            assert!(breaker.try_acquire(now));
            breaker.record_failure(now);
        }
        assert_eq!(cooldowns, [10, 20, 35, 35].map(Duration::from_secs));
        let Health::Open { until } = breaker.health(now) else {
            panic!()
        };
        now = until;
        assert!(breaker.try_acquire(now));
        breaker.record_success(now);
        assert_eq!(breaker.next_cooldown(), Duration::from_secs(10));
    }

    #[test]
    fn lost_trial_times_out_and_release_frees_it() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..3 {
            breaker.record_failure(t0);
        }
        let half_open = t0 + Duration::from_secs(10);
        assert!(breaker.try_acquire(half_open));
        assert!(!breaker.try_acquire(half_open + Duration::from_secs(4)));
        assert!(breaker.try_acquire(half_open + Duration::from_secs(5)));
        breaker.release();
        assert!(breaker.try_acquire(half_open + Duration::from_secs(5)));
        breaker.record_failure(half_open + Duration::from_secs(6));
        assert!(matches!(
            breaker.health(half_open + Duration::from_secs(6)),
            Health::Open { .. }
        ));
    }
}
