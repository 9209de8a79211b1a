//! The spend ledger: per key and budget period, what was spent and what is reserved by
//! requests still in flight.
//!
//! Owns: admission against a budget ([`Ledger::reserve`]: the request's maximum cost must fit
//! under the limit together with everything spent and reserved), settlement to the actual cost
//! ([`Ledger::settle`]), restoring a period's spend at start ([`Ledger::restore`]), and period
//! roll-over (a new period starts at zero spent).
//!
//! Invariant (proved by a property test over random interleavings): if every settled cost is
//! at most its reservation, `spent + reserved <= limit` holds after every operation, so spent
//! never exceeds the budget. A settled cost above its reservation (an upstream that ignored
//! the request's output bound) is charged in full: the books stay true, and the next
//! reservation is refused.
//!
//! Time arrives as Unix seconds; nothing here reads a clock.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use super::money::Usd;
use super::period::Period;
use super::policy::Budget;

/// The period a key without a budget is tracked in (for listings).
pub const UNBUDGETED_PERIOD: Period = Period::Month;

/// An admitted request's hold on its key's budget; give it back with [`Ledger::settle`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation holds budget until it is settled"]
pub struct Reservation {
    key: Arc<str>,
    amount: Usd,
}

impl Reservation {
    /// The key it is held on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The amount held.
    pub fn amount(&self) -> Usd {
        self.amount
    }
}

/// Why a reservation did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    /// Spent in the current period.
    pub spent: Usd,
    /// Held by requests in flight.
    pub reserved: Usd,
    /// The budget.
    pub limit: Usd,
    /// What this request could cost at most.
    pub asked: Usd,
    /// The budget's period.
    pub period: Period,
    /// When the period ends and the budget starts again (Unix seconds; `None`: a total).
    pub resets_at: Option<u64>,
}

/// A key's spend, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeySpend {
    /// Spent in the current period.
    pub spent: Usd,
    /// Held by requests in flight.
    pub reserved: Usd,
    /// Unix seconds at which the current period began.
    pub period_start: u64,
}

#[derive(Debug, Default)]
struct Account {
    period_start: u64,
    spent: Usd,
    reserved: Usd,
    /// Everything settled here since start, whatever the period (never reset): what
    /// [`Ledger::sync_shared`] adds to a shared store's sum for what the store has not
    /// received yet.
    settled_here: Usd,
}

/// The ledger of every key seen since start.
#[derive(Debug, Default)]
pub struct Ledger {
    /// By key id, shared with the reservations (reserving and settling copy no string).
    /// FxHash: the ids are of authenticated callers (configured or issued keys, verified
    /// JWT subjects), not text an anonymous client picks; SipHash cost ~570 instructions of
    /// every request's reservation and settlement.
    accounts: FxHashMap<Arc<str>, Account>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn account(&mut self, key: &Arc<str>, period: Period, now_unix: u64) -> &mut Account {
        let start = period.start(now_unix);
        let account = self.accounts.entry(Arc::clone(key)).or_default();
        if account.period_start != start {
            // A new period (or a period of another length after a policy change): spent
            // starts at zero; reservations in flight stay held until they settle.
            account.period_start = start;
            account.spent = Usd::ZERO;
        }
        account
    }

    /// Holds `max_cost` on `key`'s budget, or says why it does not fit. A key without a budget
    /// is always admitted (nothing is held; its spend is still tracked when settled).
    ///
    /// `key`: a `&str`, or an `Arc<str>` the caller already holds (then nothing is copied).
    pub fn reserve(
        &mut self,
        key: impl Into<Arc<str>>,
        budget: Option<Budget>,
        now_unix: u64,
        max_cost: Usd,
    ) -> Result<Reservation, BudgetRefusal> {
        let key: Arc<str> = key.into();
        let Some(budget) = budget else {
            self.account(&key, UNBUDGETED_PERIOD, now_unix);
            return Ok(Reservation {
                key,
                amount: Usd::ZERO,
            });
        };
        let account = self.account(&key, budget.period, now_unix);
        let committed = account.spent.saturating_add(account.reserved);
        if committed.saturating_add(max_cost) > budget.limit {
            return Err(BudgetRefusal {
                spent: account.spent,
                reserved: account.reserved,
                limit: budget.limit,
                asked: max_cost,
                period: budget.period,
                resets_at: budget.period.end(now_unix),
            });
        }
        account.reserved = account.reserved.saturating_add(max_cost);
        Ok(Reservation {
            key,
            amount: max_cost,
        })
    }

    /// Gives `reservation` back and charges `actual` to the key's current period.
    pub fn settle(
        &mut self,
        reservation: Reservation,
        actual: Usd,
        period: Option<Period>,
        now_unix: u64,
    ) {
        let account = self.account(
            &reservation.key,
            period.unwrap_or(UNBUDGETED_PERIOD),
            now_unix,
        );
        account.reserved = account.reserved.saturating_sub(reservation.amount);
        account.spent = account.spent.saturating_add(actual);
        account.settled_here = account.settled_here.saturating_add(actual);
    }

    /// Everything settled on `key` by this ledger since it was made (every period).
    pub fn settled_here(&self, key: &str) -> Usd {
        self.accounts.get(key).map_or(Usd::ZERO, |a| a.settled_here)
    }

    /// Sets `key`'s spend in its current `period` from a store that several processes
    /// write (`[store] url`): `stored` is the store's sum for the period, and `written` what
    /// this process had written to the store (of its [`settled_here`](Self::settled_here))
    /// before the store was asked. Spent becomes `stored` plus what was settled here and not
    /// yet written: counted once, never dropped. A batch the store committed while it was
    /// being asked is counted twice until the next sync, which errs towards refusing.
    pub fn sync_shared(
        &mut self,
        key: &str,
        period: Period,
        now_unix: u64,
        stored: Usd,
        written: Usd,
    ) {
        let account = self.account(&Arc::from(key), period, now_unix);
        let unwritten = account.settled_here.saturating_sub(written);
        account.spent = stored.saturating_add(unwritten);
    }

    /// Sets what `key` spent in the period that began at `period_start` (from the usage log,
    /// at start). Added to whatever this ledger already charged in that period.
    pub fn restore(&mut self, key: &str, spent: Usd, period_start: u64) {
        let account = self.accounts.entry(Arc::from(key)).or_default();
        if account.period_start != period_start {
            account.period_start = period_start;
            account.spent = Usd::ZERO;
        }
        account.spent = account.spent.saturating_add(spent);
    }

    /// `key`'s spend in its current `period` at `now_unix`.
    pub fn spend(&self, key: &str, period: Period, now_unix: u64) -> KeySpend {
        let start = period.start(now_unix);
        match self.accounts.get(key) {
            Some(a) if a.period_start == start => KeySpend {
                spent: a.spent,
                reserved: a.reserved,
                period_start: start,
            },
            Some(a) => KeySpend {
                spent: Usd::ZERO,
                reserved: a.reserved,
                period_start: start,
            },
            None => KeySpend {
                period_start: start,
                ..KeySpend::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_796_310_245; // 2026-12-03, a Thursday

    fn budget(dollars: u64, period: Period) -> Option<Budget> {
        Some(Budget {
            limit: Usd(dollars * 1_000_000_000),
            period,
        })
    }

    #[test]
    fn reserve_settle_refuse_and_roll_over() {
        let mut ledger = Ledger::new();
        let b = budget(1, Period::Day);
        let r = ledger.reserve("k", b, NOW, Usd(600_000_000)).unwrap();
        let refused = ledger.reserve("k", b, NOW, Usd(500_000_000)).unwrap_err();
        assert_eq!(refused.reserved, Usd(600_000_000));
        assert_eq!(refused.resets_at, Some(Period::Day.end(NOW).unwrap()));
        ledger.settle(r, Usd(100_000_000), Some(Period::Day), NOW);
        let s = ledger.spend("k", Period::Day, NOW);
        assert_eq!((s.spent, s.reserved), (Usd(100_000_000), Usd::ZERO));
        let r = ledger.reserve("k", b, NOW, Usd(900_000_000)).unwrap();
        ledger.settle(r, Usd(900_000_000), Some(Period::Day), NOW);
        assert!(
            ledger.reserve("k", b, NOW, Usd(1)).is_err(),
            "exactly spent"
        );
        let tomorrow = NOW + 86_400;
        assert!(
            ledger.reserve("k", b, tomorrow, Usd(1)).is_ok(),
            "a new day"
        );
        assert_eq!(ledger.spend("k", Period::Day, tomorrow).spent, Usd::ZERO);
    }

    #[test]
    fn shared_spend_counts_what_is_not_written_yet_once() {
        let mut ledger = Ledger::new();
        let b = budget(10, Period::Day);
        let r = ledger.reserve("k", b, NOW, Usd(2_000_000_000)).unwrap();
        ledger.settle(r, Usd(2_000_000_000), Some(Period::Day), NOW);
        assert_eq!(ledger.settled_here("k"), Usd(2_000_000_000));
        // The store has $5 from other daemons; our $2 is not written yet.
        ledger.sync_shared("k", Period::Day, NOW, Usd(5_000_000_000), Usd::ZERO);
        assert_eq!(
            ledger.spend("k", Period::Day, NOW).spent,
            Usd(7_000_000_000)
        );
        // Once written, the store's sum has it: still $7, not $9.
        ledger.sync_shared(
            "k",
            Period::Day,
            NOW,
            Usd(7_000_000_000),
            Usd(2_000_000_000),
        );
        assert_eq!(
            ledger.spend("k", Period::Day, NOW).spent,
            Usd(7_000_000_000)
        );
        // $3 more would pass $10 with the other daemons' spend counted.
        assert!(ledger.reserve("k", b, NOW, Usd(3_500_000_000)).is_err());
        assert!(ledger.reserve("k", b, NOW, Usd(3_000_000_000)).is_ok());
    }

    #[test]
    fn restore_and_unbudgeted_keys() {
        let mut ledger = Ledger::new();
        let start = Period::Month.start(NOW);
        ledger.restore("k", Usd(5), start);
        let r = ledger.reserve("k", None, NOW, Usd(100)).unwrap();
        assert_eq!(r.amount(), Usd::ZERO, "nothing held without a budget");
        ledger.settle(r, Usd(7), None, NOW);
        assert_eq!(ledger.spend("k", Period::Month, NOW).spent, Usd(12));
        // A restore for an older period does not count in the current one.
        ledger.restore("old", Usd(9), start - 86_400 * 40);
        assert_eq!(ledger.spend("old", Period::Month, NOW).spent, Usd::ZERO);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Request `req` asks to reserve `max`.
        Reserve { req: usize, max: u64 },
        /// Request `req` ends, having cost `permille`/1000 of its reservation.
        Settle { req: usize, permille: u64 },
        /// Time moves on.
        Tick { seconds: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..8, 0u64..400).prop_map(|(req, max)| Op::Reserve { req, max }),
            (0usize..8, 0u64..=1000).prop_map(|(req, permille)| Op::Settle { req, permille }),
            (0u64..20_000).prop_map(|seconds| Op::Tick { seconds }),
        ]
    }

    proptest! {
        /// Several concurrent requests on one key reserve and settle in any order: spent plus
        /// in-flight reservations never exceed the budget, so spent never does.
        #[test]
        fn concurrent_requests_never_overspend(
            limit in 1u64..1000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let period = Period::Day;
            let b = Some(Budget { limit: Usd(limit), period });
            let mut ledger = Ledger::new();
            let mut in_flight: Vec<Option<Reservation>> = (0..8).map(|_| None).collect();
            let mut now = NOW;
            // (period start at settlement, cost) of every settled request.
            let mut settled: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve { req, max } => {
                        if in_flight[req].is_some() { continue; }
                        if let Ok(r) = ledger.reserve("k", b, now, Usd(max)) {
                            in_flight[req] = Some(r);
                        }
                    }
                    Op::Settle { req, permille } => {
                        if let Some(r) = in_flight[req].take() {
                            let actual = r.amount().0 * permille / 1000;
                            ledger.settle(r, Usd(actual), Some(period), now);
                            settled.push((period.start(now), actual));
                        }
                    }
                    Op::Tick { seconds } => now += seconds,
                }
                let s = ledger.spend("k", period, now);
                let held: u64 = in_flight.iter().flatten().map(|r| r.amount().0).sum();
                prop_assert_eq!(s.reserved.0, held, "reserved is exactly what is in flight");
                prop_assert!(s.spent.0 + s.reserved.0 <= limit,
                    "spent {} + reserved {} > limit {}", s.spent.0, s.reserved.0, limit);
                // Spent is what requests settled in this period cost (a request reserved in
                // the last period is charged to the one it ends in).
                let expected: u64 = settled.iter()
                    .filter(|(start, _)| *start == period.start(now))
                    .map(|(_, cost)| cost)
                    .sum();
                prop_assert_eq!(s.spent.0, expected);
            }
        }
    }
}
