//! Per-key rate limits: requests per minute and tokens per minute, with GCRA (the generic
//! cell rate algorithm, a leaky bucket kept as one "theoretical arrival time" per limit).
//!
//! Owns: admission ([`RateLimiter::admit`]: both limits must allow the request, or neither
//! is charged), the token correction at settlement ([`RateLimiter::settle_tokens`]: TPM is
//! charged the input estimate plus the output bound at admission and corrected to the
//! actual tokens when the answer ends), and what the rate-limit headers say (limit,
//! remaining, time to full reset) and a refusal's retry-after.
//!
//! A limit of `n` per minute lets a burst of `n` through at once, then one every `60/n`
//! seconds. A request whose tokens alone exceed the minute's allowance is admitted only
//! when the allowance is untouched (it then holds the key off for as long as it overdrew).
//!
//! Time arrives as nanoseconds on any monotonic scale; nothing here reads a clock.

use rustc_hash::FxHashMap;

/// Nanoseconds in the window every limit is expressed over.
pub const MINUTE_NS: u64 = 60_000_000_000;

/// One limit's state, as the rate-limit headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The limit per minute.
    pub limit: u64,
    /// How many more (requests or tokens) would be admitted right now.
    pub remaining: u64,
    /// Nanoseconds until the allowance is whole again.
    pub reset_ns: u64,
}

/// The state of a key's limits after a decision (either may be absent: no such limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateStatus {
    /// Requests per minute.
    pub requests: Option<Window>,
    /// Tokens per minute.
    pub tokens: Option<Window>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

/// A refusal: which limit, when to retry, and the state for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRefusal {
    /// The limit that refused (requests first when both do).
    pub limited: Limited,
    /// Nanoseconds until the request would be admitted (as far as is known now).
    pub retry_after_ns: u64,
    /// The limits' state.
    pub status: RateStatus,
}

/// A key's limits (from its policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
}

impl Limits {
    /// Whether there is no limit.
    pub fn is_none(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// A key's GCRA state: the "theoretical arrival time" of each limit, on the caller's time
/// scale (0: never used, the allowance whole).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tats {
    /// Requests per minute.
    pub requests: u64,
    /// Tokens per minute.
    pub tokens: u64,
}

/// Microseconds in a minute: the scale of the shared (Redis) limiter, whose script does the
/// same integer arithmetic as [`decide`] with `minute = MINUTE_US` (Lua numbers are doubles,
/// exact below 2^53: Unix microseconds fit, nanoseconds do not).
pub const MINUTE_US: u64 = 60_000_000;

/// Emission interval: time one unit occupies at `limit` per `minute`.
fn interval(minute: u64, limit: u64) -> u64 {
    (minute / limit.max(1)).max(1)
}

/// The new arrival time if `cost` units are admitted at `now`, or the wait before they could
/// be.
fn gcra(minute: u64, tat: u64, now: u64, limit: u64, cost: u64) -> Result<u64, u64> {
    let base = tat.max(now);
    let new_tat = base.saturating_add(interval(minute, limit).saturating_mul(cost));
    let horizon = now.saturating_add(minute);
    if new_tat <= horizon || tat <= now {
        // Within the minute's allowance, or the allowance is untouched (oversized request).
        Ok(new_tat)
    } else {
        Err(new_tat - horizon)
    }
}

fn window(minute: u64, tat: u64, now: u64, limit: u64) -> Window {
    let used = tat.saturating_sub(now);
    let free = minute.saturating_sub(used);
    Window {
        limit,
        remaining: (free / interval(minute, limit)).min(limit),
        reset_ns: used.saturating_mul(MINUTE_NS / minute),
    }
}

/// The limits' state in `tats` at `now`, for the headers (`minute`: the time scale, as in
/// [`decide`]; the windows' `reset_ns` is always in nanoseconds).
pub fn status_of(tats: Tats, limits: Limits, now: u64, minute: u64) -> RateStatus {
    RateStatus {
        requests: limits
            .rpm
            .map(|l| window(minute, tats.requests, now, u64::from(l))),
        tokens: limits.tpm.map(|l| window(minute, tats.tokens, now, l)),
    }
}

/// One admission decision on `tats` at `now` for a request of `tokens` (estimated): the new
/// state and the headers' status, or the refusal (charging neither limit). `minute` is the
/// number of time units in a minute ([`MINUTE_NS`] in-process, [`MINUTE_US`] in Redis); the
/// refusal's `retry_after_ns` is converted to nanoseconds.
pub fn decide(
    tats: Tats,
    limits: Limits,
    tokens: u64,
    now: u64,
    minute: u64,
) -> Result<(Tats, RateStatus), RateRefusal> {
    let to_ns = MINUTE_NS / minute;
    let requests = limits
        .rpm
        .map(|rpm| gcra(minute, tats.requests, now, u64::from(rpm), 1));
    let token_check = limits
        .tpm
        .map(|tpm| gcra(minute, tats.tokens, now, tpm, tokens));
    let refused = match (requests, token_check) {
        (Some(Err(wait)), _) => Some((Limited::Requests, wait)),
        (_, Some(Err(wait))) => Some((Limited::Tokens, wait)),
        _ => None,
    };
    if let Some((limited, wait)) = refused {
        let wait_tokens = match token_check {
            Some(Err(w)) => w,
            _ => 0,
        };
        return Err(RateRefusal {
            limited,
            // Both limits must allow it: the longer wait.
            retry_after_ns: wait.max(wait_tokens).saturating_mul(to_ns),
            status: status_of(tats, limits, now, minute),
        });
    }
    let mut new = tats;
    if let Some(Ok(tat)) = requests {
        new.requests = tat;
    }
    if let Some(Ok(tat)) = token_check {
        new.tokens = tat;
    }
    Ok((new, status_of(new, limits, now, minute)))
}

/// The tokens-per-minute state after correcting a request's charge from `estimated` to
/// `actual` tokens at `now` (never fuller than whole).
pub fn corrected_tokens_tat(
    tat: u64,
    tpm: u64,
    estimated: u64,
    actual: u64,
    now: u64,
    minute: u64,
) -> u64 {
    let step = interval(minute, tpm);
    if actual >= estimated {
        let extra = step.saturating_mul(actual - estimated);
        tat.max(now).saturating_add(extra)
    } else {
        let refund = step.saturating_mul(estimated - actual);
        // Never below `now`: an allowance cannot be fuller than whole.
        tat.saturating_sub(refund).max(now.min(tat))
    }
}

/// Every key's rate-limit state.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// FxHash, as the ledger's accounts: the ids are of authenticated callers.
    keys: FxHashMap<String, Tats>,
}

impl RateLimiter {
    /// No key seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits one request of `tokens` (estimated) for `key` at `now_ns`, charging both limits,
    /// or refuses it charging neither.
    pub fn admit(
        &mut self,
        key: &str,
        limits: Limits,
        tokens: u64,
        now_ns: u64,
    ) -> Result<RateStatus, RateRefusal> {
        if limits.is_none() {
            return Ok(RateStatus::default());
        }
        let tats = self.keys.get(key).copied().unwrap_or_default();
        let (new, status) = decide(tats, limits, tokens, now_ns, MINUTE_NS)?;
        self.keys.insert(key.to_owned(), new);
        Ok(status)
    }

    /// Corrects the tokens charged at admission (`estimated`) to what the request used
    /// (`actual`), at `now_ns`.
    pub fn settle_tokens(
        &mut self,
        key: &str,
        tpm: Option<u64>,
        estimated: u64,
        actual: u64,
        now_ns: u64,
    ) {
        let Some(tpm) = tpm else { return };
        let Some(tats) = self.keys.get_mut(key) else {
            return;
        };
        tats.tokens = corrected_tokens_tat(tats.tokens, tpm, estimated, actual, now_ns, MINUTE_NS);
    }

    /// The state of `key`'s limits at `now_ns` (for success headers after settlement).
    pub fn status(&self, key: &str, limits: Limits, now_ns: u64) -> RateStatus {
        let tats = self.keys.get(key).copied().unwrap_or_default();
        status_of(tats, limits, now_ns, MINUTE_NS)
    }

    /// Forgets keys whose allowances are whole again at `now_ns` (bounded memory for keys
    /// that come and go, such as JWT subjects).
    pub fn prune(&mut self, now_ns: u64) {
        self.keys
            .retain(|_, t| t.requests > now_ns || t.tokens > now_ns);
    }

    /// How many keys hold state.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key holds state.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn rpm_bursts_then_spaces_requests() {
        let mut rl = RateLimiter::new();
        let limits = Limits {
            rpm: Some(3),
            tpm: None,
        };
        let t0 = 1_000 * S;
        for i in 0..3 {
            let status = rl.admit("k", limits, 0, t0).unwrap();
            assert_eq!(status.requests.unwrap().remaining, 2 - i);
        }
        let refused = rl.admit("k", limits, 0, t0).unwrap_err();
        assert_eq!(refused.limited, Limited::Requests);
        assert_eq!(refused.retry_after_ns, 20 * S);
        assert_eq!(refused.status.requests.unwrap().reset_ns, 60 * S);
        assert!(rl.admit("k", limits, 0, t0 + 20 * S).is_ok());
        assert!(
            rl.admit("other", limits, 0, t0).is_ok(),
            "keys are separate"
        );
    }

    #[test]
    fn tpm_charges_estimates_and_corrects() {
        let mut rl = RateLimiter::new();
        let limits = Limits {
            rpm: Some(100),
            tpm: Some(1000),
        };
        let t0 = 5 * S;
        rl.admit("k", limits, 800, t0).unwrap();
        let refused = rl.admit("k", limits, 300, t0).unwrap_err();
        assert_eq!(refused.limited, Limited::Tokens);
        // The refused request charged nothing, requests included.
        assert_eq!(rl.status("k", limits, t0).requests.unwrap().remaining, 99);
        rl.settle_tokens("k", limits.tpm, 800, 100, t0);
        assert_eq!(rl.status("k", limits, t0).tokens.unwrap().remaining, 900);
        rl.admit("k", limits, 300, t0).unwrap();
        // Oversized: admitted only with the allowance whole.
        let mut fresh = RateLimiter::new();
        assert!(fresh.admit("k", limits, 5000, t0).is_ok());
        assert!(fresh.admit("k", limits, 1, t0 + S).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request { tokens: u64, actual: u64 },
        Wait { ms: u64 },
    }

    proptest! {
        /// Requests: over a run the count admitted is at most the burst plus the rate times
        /// the time elapsed; no minute admits more than the burst plus one minute's drain
        /// (`2 * rpm`); a refusal's retry-after is enough.
        #[test]
        fn admitted_rate_is_bounded(
            rpm in 1u32..50,
            ops in proptest::collection::vec(
                prop_oneof![
                    Just(Op::Request { tokens: 0, actual: 0 }),
                    (0u64..5_000).prop_map(|ms| Op::Wait { ms }),
                ],
                1..300),
        ) {
            let limits = Limits { rpm: Some(rpm), tpm: None };
            let mut rl = RateLimiter::new();
            let start = 10 * S;
            let mut now = start;
            let mut admitted = Vec::new();
            for op in ops {
                match op {
                    Op::Request { .. } => {
                        match rl.admit("k", limits, 0, now) {
                            Ok(status) => {
                                admitted.push(now);
                                let w = status.requests.unwrap();
                                prop_assert!(w.remaining < u64::from(rpm));
                            }
                            Err(refusal) => {
                                prop_assert!(refusal.retry_after_ns > 0);
                                // Waiting as told is enough.
                                let mut probe = RateLimiter { keys: rl.keys.clone() };
                                prop_assert!(probe.admit("k", limits, 0, now + refusal.retry_after_ns).is_ok());
                            }
                        }
                    }
                    Op::Wait { ms } => now += ms * 1_000_000,
                }
            }
            // Over the whole run: burst + elapsed * rate.
            let elapsed = now - start;
            let bound = u64::from(rpm) + elapsed / (MINUTE_NS / u64::from(rpm)) + 1;
            prop_assert!(admitted.len() as u64 <= bound);
            // In any minute starting at an admission: at most rpm (the burst) plus what
            // drains during that minute.
            for (i, t) in admitted.iter().enumerate() {
                let n = admitted[i..].iter().take_while(|u| **u < t + MINUTE_NS).count() as u64;
                prop_assert!(n <= 2 * u64::from(rpm), "{} in a minute at rpm {}", n, rpm);
            }
        }

        /// Tokens: corrections never leave the allowance fuller than whole, and a refusal
        /// changes nothing.
        #[test]
        fn token_corrections_stay_in_bounds(
            tpm in 100u64..10_000,
            ops in proptest::collection::vec(
                prop_oneof![
                    (0u64..3_000, 0u64..3_000).prop_map(|(tokens, actual)| Op::Request { tokens, actual }),
                    (0u64..20_000).prop_map(|ms| Op::Wait { ms }),
                ],
                1..200),
        ) {
            let limits = Limits { rpm: None, tpm: Some(tpm) };
            let mut rl = RateLimiter::new();
            let mut now = 10 * S;
            for op in ops {
                match op {
                    Op::Request { tokens, actual } => {
                        let before = rl.status("k", limits, now);
                        match rl.admit("k", limits, tokens, now) {
                            Ok(_) => rl.settle_tokens("k", limits.tpm, tokens, actual, now),
                            Err(_) => prop_assert_eq!(rl.status("k", limits, now), before),
                        }
                        let w = rl.status("k", limits, now).tokens.unwrap();
                        prop_assert!(w.remaining <= tpm);
                    }
                    Op::Wait { ms } => now += ms * 1_000_000,
                }
            }
        }
    }
}
