//! Lease sizing for shared budgets and rate limits: how much of a key's budget, and how many
//! of its requests and tokens per minute, one daemon takes from the shared store at once, so
//! that its hot keys are decided locally and the store is asked once per chunk of requests.
//!
//! Owns the arithmetic only (the daemon's Redis script does the same on the store's state,
//! and its tests check it against these functions):
//! - [`budget_grant`]: a budget lease is the request's maximum cost at least, about what the
//!   key used lately at most, and never more than half of the budget nobody holds unless it
//!   is that minimum (so two daemons cannot starve each other);
//! - [`rate_grant`]: GCRA on `k` units at once: the first `min` as [`super::ratelimit::decide`]
//!   would admit them, then as many more as fit in the minute's allowance, up to `want`;
//! - [`rate_cap`]: at most ~[`RATE_LEASE_SPAN_US`] of a limit's rate in one lease.
//!
//! Time arrives as an argument; nothing here reads a clock.

/// The share of a limit's rate one rate lease may take: 100 ms of it, in microseconds.
pub const RATE_LEASE_SPAN_US: u64 = 100_000;

/// A budget lease for a request that still needs `min` (its maximum cost less what the local
/// lease has free), wishing `want` more (the key's recent use), when `remaining` is held by
/// nobody (budget limit less settled spend less every hold): `None` when even `min` does not
/// fit (the request is refused), else the amount to add to the lease: at least `min`, at
/// most `min + want`, and at most `remaining / 2` unless that is below `min`.
pub fn budget_grant(min: u64, want: u64, remaining: u64) -> Option<u64> {
    if min > remaining {
        return None;
    }
    Some(min.max(min.saturating_add(want).min(remaining / 2)))
}

/// GCRA for `min..=want` units at once (`want >= min`) on the arrival time `tat` at `now`,
/// `limit` per `minute`: `Err(wait)` when `min` units are refused (exactly as one decision
/// for `min` units would refuse them), else how many units are granted and the new arrival
/// time: the most up to `want` that stay within the minute's allowance, `min` at least (a
/// request over the whole allowance is admitted when the allowance is untouched, as in
/// [`super::ratelimit`]).
pub fn rate_grant(
    tat: u64,
    limit: u64,
    min: u64,
    want: u64,
    now: u64,
    minute: u64,
) -> Result<(u64, u64), u64> {
    let step = (minute / limit.max(1)).max(1);
    let base = tat.max(now);
    let horizon = now.saturating_add(minute);
    let first = base.saturating_add(step.saturating_mul(min));
    if first > horizon && tat > now {
        return Err(first - horizon);
    }
    let fit = horizon.saturating_sub(base) / step;
    let granted = fit.min(want.max(min)).max(min);
    Ok((granted, base.saturating_add(step.saturating_mul(granted))))
}

/// The most units one rate lease takes of `limit` per `minute` (at least one request's).
pub fn rate_cap(limit: u64, minute: u64, min: u64) -> u64 {
    let span = u128::from(RATE_LEASE_SPAN_US.min(minute));
    let share = u128::from(limit) * span / u128::from(minute.max(1));
    u64::try_from(share).unwrap_or(u64::MAX).max(min).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::ratelimit::{decide, MINUTE_US};
    use crate::accounting::{Limits, Tats};
    use proptest::prelude::*;

    #[test]
    fn idle_key_leases_one_request() {
        assert_eq!(budget_grant(300, 0, 1000), Some(300));
        assert_eq!(budget_grant(300, 900, 1000), Some(500));
        assert_eq!(budget_grant(300, 900, 400), Some(300));
        assert_eq!(budget_grant(300, 0, 299), None);
        assert_eq!(rate_cap(5, MINUTE_US, 1), 1);
        assert_eq!(rate_cap(60_000_000, MINUTE_US, 1), 100_000);
    }

    proptest! {
        #[test]
        fn budget_lease_bounds(min in 0u64..1 << 40, want in 0u64..1 << 40,
                               remaining in 0u64..1 << 41) {
            match budget_grant(min, want, remaining) {
                None => prop_assert!(min > remaining),
                Some(g) => {
                    prop_assert!(g >= min);
                    prop_assert!(g <= remaining, "never more than nobody holds");
                    prop_assert!(g <= min + want);
                    prop_assert!(g <= remaining / 2 || g == min,
                        "more than half of the rest only as the one-request minimum");
                    if want == 0 { prop_assert_eq!(g, min); }
                }
            }
        }

        /// One unit leased is one decision of core's limiter; more units never pass the
        /// minute's allowance unless they are the minimum.
        #[test]
        fn rate_lease_is_gcra(tat in 0u64..1 << 40, now in 0u64..1 << 40,
                              limit in 1u64..100_000, min in 1u64..50, extra in 0u64..500) {
            let limits = Limits { rpm: None, tpm: Some(limit) };
            let one = decide(Tats { requests: 0, tokens: tat }, limits, min, now, MINUTE_US);
            let leased = rate_grant(tat, limit, min, min + extra, now, MINUTE_US);
            match (one, leased) {
                (Ok((new, _)), Ok((granted, new_tat))) => {
                    prop_assert!(granted >= min && granted <= min + extra);
                    if granted == min { prop_assert_eq!(new_tat, new.tokens); }
                    let step = (MINUTE_US / limit).max(1);
                    prop_assert_eq!(new_tat, tat.max(now) + step * granted);
                    prop_assert!(granted == min || new_tat <= now + MINUTE_US);
                    // Every unit granted would have been admitted one by one.
                    if granted > min {
                        let more = rate_grant(tat, limit, granted, granted, now, MINUTE_US);
                        prop_assert!(more.is_ok());
                    }
                }
                (Err(refusal), Err(wait)) => {
                    prop_assert_eq!(refusal.retry_after_ns, wait * 1000);
                }
                (one, leased) => prop_assert!(false, "{:?} vs {:?}", one, leased),
            }
        }

        #[test]
        fn rate_cap_is_a_tenth_of_a_second(limit in 1u64..1 << 40, min in 0u64..100) {
            let cap = rate_cap(limit, MINUTE_US, min);
            prop_assert!(cap >= min.max(1));
            prop_assert!(cap == min.max(1) || cap <= limit / 600 + 1);
        }
    }
}
