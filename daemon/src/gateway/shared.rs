//! Rate limits and budget reservations shared by several daemons through Redis (issue 15,
//! `[store] redis_url`): the seam [`SharedLimits`] that admission (`policy.rs`) calls
//! instead of its in-process limiter and ledger, and its Redis implementation
//! [`RedisLimits`].
//!
//! **Leases.** Redis is asked per *chunk* of requests, not per request. For each key and
//! budget period this daemon keeps a [`Lease`]: part of the key's budget held in Redis for
//! this daemon (one hold, `h:lease:<daemon>:<n>`, in the same budget hash and holds set as
//! any hold, with a deadline of [`LEASE_TTL`] renewed while in use), and a few request slots
//! and tokens per minute taken from the GCRA state at once. A request reserves its maximum
//! cost from the lease and takes a slot locally; when the lease cannot cover it, the one
//! lease task asks Redis ([`LEASE`]) for more, and that answer decides the request. Settled
//! actual costs accumulate locally and are flushed into the settled spend (moved out of the
//! lease hold) by the same script every [`FLUSH_EVERY`] or with the next top-up, when the
//! lease is also resized: about what the key reserved here in the last interval (nothing
//! for an idle key, whose next request then leases exactly its own maximum, as a
//! per-request hold did), never more than half of the budget nobody holds unless that is
//! the request's own minimum (gate-core `accounting::lease`), so two daemons cannot starve
//! each other. Rate slots: `k` requests' worth of TAT advanced at once (1 when idle, at most
//! [`RATE_LEASE_SPAN_US`] of the limit's rate), usable for [`RATE_LEASE_FOR`]; unused slots
//! expire (never returned: a limit is never exceeded across daemons; at worst a key is
//! refused slightly early). Tokens-per-minute charges are corrected at settlement
//! ([`CORRECT_TOKENS`], batched per key).
//!
//! The bound: a lease is a hold, so `spent + held <= limit` holds in Redis as with
//! per-request holds (the script checks the budget nobody holds before it grants); only
//! requests costing more than their reserved maximum can pass it, as before. A daemon that
//! dies has its lease charged in full at its deadline by the next call of any daemon. A
//! lease call that fails (Redis unreachable, no answer in time) gives the lease up here:
//! whatever happened to it in Redis, it is charged in full at its deadline, the requests it
//! covered settle into nothing more (they are inside that charge), and the next request
//! takes a new lease under a new name. A daemon that stops gives its leases back
//! ([`SharedLimits::give_back`]) once its requests are done. Refusals come from the
//! script's answer, with the state it decided on: core's [`ratelimit::decide`] on it gives
//! the headers and the retry-after, as in-process.
//!
//! Time: rate limits use the Redis server's clock (`TIME` in the scripts), one clock for every
//! daemon; budget periods are named by the daemon's UTC clock (a key per period start), so a
//! few seconds of skew at midnight only decide which day a request counts in. A local
//! admission's headers use the server time of the last answer plus the time since.
//!
//! Keys (hash-tagged by key id, so a cluster keeps one key's state on one slot):
//! `gate:{<id>}:rate` (hash `r`, `t`: the TATs in Unix µs; expires when the allowance is
//! whole), `gate:{<id>}:budget:<period>:<start>` (hash `spent`, `held`, `h:<lease>`: nano-
//! dollars; expires a day after the period ends) and `gate:{<id>}:holds:<period>:<start>`
//! (sorted set of leases by deadline). A hold not renewed by its deadline is charged in full
//! to the settled spend by the next lease call of any daemon.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gate_core::accounting::lease::{rate_cap, RATE_LEASE_SPAN_US};
use gate_core::accounting::ratelimit::{self, MINUTE_US};
use gate_core::accounting::{
    Budget, BudgetRefusal, Limits, Period, RateRefusal, RateStatus, Tats, Usd,
};
use gate_core::resp::Value;
use gate_rt::store::{Redis, RedisError, Script};
use gate_rt::Runtime;

/// How long one decision may wait for Redis before the store counts as unavailable.
pub const DECISION_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a lease hold lives without being renewed before it is charged in full (a daemon
/// that died, or one that lost Redis for that long). Leases in use are renewed every third
/// of it.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often leases are flushed (settled costs into the spend) and resized.
pub const FLUSH_EVERY: Duration = Duration::from_millis(150);
/// How long leased rate slots may be used.
pub const RATE_LEASE_FOR: Duration = Duration::from_micros(RATE_LEASE_SPAN_US);
/// Token corrections waiting for Redis to come back, at most (beyond: dropped; the charge
/// at admission stands).
pub const MAX_PENDING_SETTLES: usize = 10_000;
/// How long a token correction is retried while Redis is unreachable.
pub const SETTLE_RETRY_FOR: Duration = Duration::from_secs(600);

/// Flush, resize and renew one daemon's lease of one key and budget period, and take more
/// of it (and rate slots) for a request. KEYS: rate, budget, holds. ARGV: 1 lease name,
/// 2 whether the daemon holds it (1/0), 3 settled cost to move from the lease to the spend
/// (added to the spend alone when the daemon holds nothing: costs no reservation covered),
/// 4 free lease to give back, 5 budget limit (-1: none), 6 budget the request still needs
/// (0: none), 7 budget wished beyond it, 8 lease ttl ms, 9 budget expiry (Unix s; 0: never),
/// 10 spend to start a new period's key from, 11 rpm (0: none), 12 tpm (0: none),
/// 13 whether a request asks (1/0: takes rate slots), 14 request slots wished, 15 the
/// request's tokens, 16 tokens wished. Returns {outcome (0 granted, 1 budget refused, 2 rate
/// refused), lost (1: the daemon's hold was gone: charged at its deadline, or Redis lost
/// it), the lease now, spent, held, now µs, requests TAT, tokens TAT (before), requests
/// granted, tokens granted, requests TAT, tokens TAT (after)}. Arithmetic: gate-core's
/// `lease::budget_grant` and `lease::rate_grant` (and `ratelimit::decide` for one unit).
pub const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local function fmt(x) return string.format('%d', x) end
local name, field = ARGV[1], 'h:' .. ARGV[1]
local flush, release = tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, need, wish = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local rpm, tpm, asks = tonumber(ARGV[11]), tonumber(ARGV[12]), ARGV[13] == '1'
local outcome, lost, granted = 0, 0, 0
local spent, held, h = 0, 0, 0
if limit >= 0 then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[2], 'spent', ARGV[10], 'held', '0')
    if tonumber(ARGV[9]) > 0 then redis.call('EXPIREAT', KEYS[2], ARGV[9]) end
  end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now_ms), 'LIMIT', 0, 100)
  for _, rid in ipairs(expired) do
    local amount = tonumber(redis.call('HGET', KEYS[2], 'h:' .. rid) or '0')
    if redis.call('HDEL', KEYS[2], 'h:' .. rid) == 1 then
      redis.call('HINCRBY', KEYS[2], 'held', fmt(-amount))
      redis.call('HINCRBY', KEYS[2], 'spent', fmt(amount))
    end
    redis.call('ZREM', KEYS[3], rid)
  end
  local v = redis.call('HMGET', KEYS[2], 'spent', 'held', field)
  spent, held = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  if v[3] then
    h = tonumber(v[3])
    -- Settled costs are spent whatever they were reserved at; the hold shrinks by them.
    local f = math.min(flush, h)
    local r = math.min(release, h - f)
    spent = spent + flush
    h = h - f - r
    held = held - f - r
  elseif ARGV[2] == '1' then
    lost = 1
  else
    -- No hold here: costs no reservation covered (a request whose maximum was 0).
    spent = spent + flush
  end
  if need > 0 or wish > 0 then
    local remaining = limit - spent - held
    if need > remaining then
      if need > 0 then outcome = 1 end
    else
      granted = math.max(need, math.min(need + wish, math.floor(remaining / 2)))
    end
  end
end
local tr, tt = 0, 0
local gr, gt = 0, 0
local nr, nt = 0, 0
local MINUTE = 60000000
local function grant(tat, lim, mn, want)
  local step = math.max(math.floor(MINUTE / lim), 1)
  local base = math.max(tat, now)
  local first = base + step * mn
  if first > now + MINUTE and tat > now then return false, 0, tat end
  local fit = math.floor((now + MINUTE - base) / step)
  local g = math.max(math.min(fit, math.max(want, mn)), mn)
  return true, g, base + step * g
end
if asks and (rpm > 0 or tpm > 0) then
  local v = redis.call('HMGET', KEYS[1], 'r', 't')
  tr, tt = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  nr, nt = tr, tt
  if outcome == 0 then
    local okr, okt = true, true
    if rpm > 0 then okr, gr, nr = grant(tr, rpm, 1, tonumber(ARGV[14])) end
    if tpm > 0 then okt, gt, nt = grant(tt, tpm, tonumber(ARGV[15]), tonumber(ARGV[16])) end
    if okr and okt then
      redis.call('HSET', KEYS[1], 'r', fmt(nr), 't', fmt(nt))
      redis.call('PEXPIRE', KEYS[1], fmt(math.floor((math.max(nr, nt) - now) / 1000) + 1000))
    else
      outcome, gr, gt, nr, nt, granted = 2, 0, 0, tr, tt, 0
    end
  end
end
if limit >= 0 then
  h = h + granted
  held = held + granted
  redis.call('HSET', KEYS[2], 'spent', fmt(spent), 'held', fmt(held))
  if h > 0 then
    redis.call('HSET', KEYS[2], field, fmt(h))
    redis.call('ZADD', KEYS[3], fmt(now_ms + tonumber(ARGV[8])), name)
    if tonumber(ARGV[9]) > 0 then redis.call('EXPIREAT', KEYS[3], ARGV[9]) end
  else
    redis.call('HDEL', KEYS[2], field)
    redis.call('ZREM', KEYS[3], name)
  end
end
return {outcome, lost, h, spent, held, now, tr, tt, gr, gt, nr, nt}
"#;

/// Admissions taken from the queue for one round, at most.
const ADMIT_BATCH: usize = 512;

/// Correct the tokens-per-minute charge of one key's settled requests, in order, as one
/// call per request would: KEYS: rate. ARGV: tpm, then per request its estimated and actual
/// tokens. Returns the server's time in µs.
pub const CORRECT_TOKENS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%d', x) end
local tpm = tonumber(ARGV[1])
local tat = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if tat == 0 then return now end
local step = math.max(math.floor(60000000 / math.max(tpm, 1)), 1)
for i = 2, #ARGV, 2 do
  local est, act = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if act >= est then
    tat = math.max(tat, now) + step * (act - est)
  else
    tat = math.max(tat - step * (est - act), math.min(now, tat))
  end
end
redis.call('HSET', KEYS[1], 't', fmt(tat))
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
redis.call('PEXPIRE', KEYS[1], fmt(math.floor((math.max(tat, r) - now) / 1000) + 1000))
return now
"#;

/// Corrections of one key settled by one [`CORRECT_TOKENS`] call, at most.
const SETTLE_PER_CALL: usize = 128;

/// One admission asked of the shared store.
#[derive(Debug, Clone)]
pub(crate) struct SharedAdmit {
    pub key_id: String,
    pub limits: Limits,
    pub tokens: u64,
    pub budget: Option<Budget>,
    pub max_cost: Usd,
    /// Unix seconds by the daemon's clock (names the budget period).
    pub now_unix: u64,
    /// What this daemon knows was spent this period (seeds a period's key Redis lacks).
    pub local_spent: Usd,
}

/// Which lease an admitted request was reserved from, for its settlement.
#[derive(Debug, Clone)]
pub(crate) struct SharedHold {
    pub key_id: String,
    /// The budget's period (`None`: no budget).
    pub period: Option<Period>,
    pub period_start: u64,
    pub tpm: Option<u64>,
    /// The lease's generation (a settlement of an older one is inside that lease's charge).
    generation: u64,
    /// The maximum cost reserved from the lease (0 without a budget).
    reserved: u64,
}

/// The shared store's decision.
#[derive(Debug)]
pub(crate) enum SharedDecision {
    Admitted {
        status: RateStatus,
        hold: SharedHold,
    },
    Budget(BudgetRefusal),
    Rate(RateRefusal),
}

/// Settling one request in the shared store.
#[derive(Debug, Clone)]
pub(crate) struct SharedSettle {
    pub hold: SharedHold,
    pub actual: Usd,
    pub estimated_tokens: u64,
    pub actual_tokens: u64,
}

type Decided = Pin<Box<dyn Future<Output = Result<SharedDecision, String>> + Send>>;

/// Rate limits and budget holds kept outside this process.
pub(crate) trait SharedLimits: Send + Sync {
    /// Decides one admission; `Err` says why the store could not (it names the store, never
    /// its password).
    fn admit(&self, request: SharedAdmit) -> Decided;
    /// Settles one request (its lease locally; token corrections in the background, retried
    /// while the store is unreachable).
    fn settle(&self, settle: SharedSettle);
    /// The key's (spent, held) in the period starting at `period_start`, as this daemon last
    /// saw them in the store (for listings; `None`: not seen).
    fn last_seen(&self, key_id: &str, period_start: u64) -> Option<(Usd, Usd)>;
    /// The key's policy changed or it was revoked: its leases admit nothing more here; what
    /// they hold unused goes back with their next flush.
    fn forget(&self, key_id: &str);
    /// The daemon stops (its requests are done): every lease admits nothing more, gives back
    /// what it holds unused and flushes what was settled, rather than being charged in full at
    /// its deadline. Resolves `true` when no lease has anything left to give back (one whose
    /// call failed is charged at its deadline, as ever), `false` after [`GIVE_BACK_WITHIN`].
    fn give_back(&self) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// How long a stopping daemon waits for its leases to be given back.
pub const GIVE_BACK_WITHIN: Duration = Duration::from_secs(3);

/// Keys whose last-seen shared spend is kept, at most (beyond: forgotten, listings fall back
/// to this daemon's own ledger).
const MAX_SEEN: usize = 10_000;

type Seen = Arc<Mutex<HashMap<String, (u64, Usd, Usd)>>>;

fn see(seen: &Seen, key_id: &str, period_start: u64, spent: Usd, held: Usd) {
    let mut map = seen.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_SEEN && !map.contains_key(key_id) {
        map.clear();
    }
    // Replies of concurrent calls arrive in any order; within a period the settled spend
    // only grows, so a reply with less spent than already seen is an older one.
    if let Some((start, seen_spent, _)) = map.get(key_id) {
        if *start == period_start && spent < *seen_spent {
            return;
        }
    }
    map.insert(key_id.to_owned(), (period_start, spent, held));
}

/// A lease is named per key, budget period (`None`: the key has no budget, only rate limits)
/// and period start. (Not the month that requests without a budget are counted in: a
/// monthly budget removed from a key would leave its lease to their calls, which skip the
/// budget, dropping what that lease's requests cost and leaving its hold.)
type LeaseId = (String, Option<Period>, u64);

/// The budget period whose keys a lease's calls name, from the lease's budget period (`None`:
/// no budget; the script then touches none of them).
fn lease_period(budget_period: Option<Period>) -> Period {
    budget_period.unwrap_or(gate_core::accounting::ledger::UNBUDGETED_PERIOD)
}

/// This daemon's lease of one key and budget period (see the module docs). Amounts in
/// nano-dollars. Invariant: `lease` is at most what Redis holds under `name` (amounts given
/// back or flushed leave it before the call is sent; grants join it when answered).
#[derive(Debug)]
struct Lease {
    /// The hold's name in Redis (a new one after a failed call).
    name: String,
    /// Requests reserved from this lease carry it; a settlement of another is ignored.
    generation: u64,
    /// Whether Redis held the lease at its last answer.
    held: bool,
    /// The policy the lease was taken under (a request of another policy asks Redis).
    budget_limit: Option<u64>,
    limits: Limits,
    /// The key's policy changed: admit nothing more from this lease.
    stale: bool,
    /// An admission call is in flight: requests wait for it rather than take the free part.
    topping_up: bool,
    /// A call (admission or flush) is in flight.
    calling: bool,
    lease: u64,
    /// Maximum costs of requests in flight.
    reserved: u64,
    /// Budgeted requests in flight (the lease is kept for their settlement even when they
    /// reserved nothing).
    in_flight: u64,
    /// Actual costs settled here and not yet flushed.
    settled: u64,
    /// Maximum costs reserved since the last flush tick, and in the interval before.
    used: u64,
    recent: u64,
    /// Rate slots: requests and tokens left, usable until `rate_until`.
    slots: u64,
    tokens: u64,
    rate_until: Option<Instant>,
    requests_used: u64,
    tokens_used: u64,
    recent_requests: u64,
    recent_tokens: u64,
    /// The GCRA state after the last grant, at the server time `server_now` (read at
    /// `seen_at`), for local admissions' headers.
    tats: Tats,
    server_now: u64,
    seen_at: Instant,
    /// The budget key's expiry and a new period's seed, from the last request.
    expiry: u64,
    seed: u64,
    renewed: Instant,
}

/// What one lease call asks (see [`LEASE`]'s ARGV).
struct Ask {
    flush: u64,
    release: u64,
    need: u64,
    wish: u64,
    asks: bool,
    slots: u64,
    tokens_min: u64,
    tokens: u64,
}

impl Lease {
    fn new(name: String, generation: u64) -> Self {
        let now = Instant::now();
        Self {
            name,
            generation,
            held: false,
            budget_limit: None,
            limits: Limits::default(),
            stale: true,
            topping_up: false,
            calling: false,
            lease: 0,
            reserved: 0,
            in_flight: 0,
            settled: 0,
            used: 0,
            recent: 0,
            slots: 0,
            tokens: 0,
            rate_until: None,
            requests_used: 0,
            tokens_used: 0,
            recent_requests: 0,
            recent_tokens: 0,
            tats: Tats::default(),
            server_now: 0,
            seen_at: now,
            expiry: 0,
            seed: 0,
            renewed: now,
        }
    }

    fn free(&self) -> u64 {
        self.lease
            .saturating_sub(self.reserved.saturating_add(self.settled))
    }

    /// Whether nothing of the lease is left to give back or flush (what requests in flight
    /// reserved stays held until their settlement, or their deadline).
    fn given_back(&self) -> bool {
        self.budget_limit.is_none() || (!self.calling && self.settled == 0 && self.free() == 0)
    }

    /// A request reserved from this lease is done, having cost `actual` (a settlement of an
    /// older generation is inside that lease's charge: ignored).
    fn unreserve(&mut self, hold: &SharedHold, actual: u64) {
        if self.generation == hold.generation {
            self.reserved = self.reserved.saturating_sub(hold.reserved);
            self.in_flight = self.in_flight.saturating_sub(1);
            self.settled = self.settled.saturating_add(actual);
        }
    }

    /// Admit nothing more from this lease; drop its rate slots.
    fn make_stale(&mut self) {
        self.stale = true;
        self.slots = 0;
        self.tokens = 0;
        self.rate_until = None;
    }

    fn matches(&self, request: &SharedAdmit) -> bool {
        !self.stale
            && self.budget_limit == request.budget.map(|b| b.limit.0)
            && self.limits == request.limits
    }

    /// Admits `request` from the lease alone, or `None` (Redis must be asked).
    fn take(
        &mut self,
        request: &SharedAdmit,
        id: &LeaseId,
        now: Instant,
    ) -> Option<SharedDecision> {
        if self.topping_up || !self.matches(request) {
            return None;
        }
        let budgeted = request.budget.is_some();
        if budgeted && self.free() < request.max_cost.0 {
            return None;
        }
        let limits = request.limits;
        if !limits.is_none() {
            if self.rate_until.is_none_or(|until| now >= until)
                || (limits.rpm.is_some() && self.slots == 0)
                || (limits.tpm.is_some() && self.tokens < request.tokens)
            {
                return None;
            }
            if limits.rpm.is_some() {
                self.slots -= 1;
                self.requests_used += 1;
            }
            if limits.tpm.is_some() {
                self.tokens -= request.tokens;
                self.tokens_used = self.tokens_used.saturating_add(request.tokens);
            }
        }
        let reserved = if budgeted { request.max_cost.0 } else { 0 };
        self.reserved = self.reserved.saturating_add(reserved);
        if budgeted {
            self.in_flight = self.in_flight.saturating_add(1);
        }
        self.used = self.used.saturating_add(reserved);
        let elapsed = u64::try_from(now.saturating_duration_since(self.seen_at).as_micros())
            .unwrap_or(u64::MAX);
        let status = ratelimit::status_of(
            self.tats,
            limits,
            self.server_now.saturating_add(elapsed),
            MINUTE_US,
        );
        Some(SharedDecision::Admitted {
            status,
            hold: SharedHold {
                key_id: id.0.clone(),
                period: id.1,
                period_start: id.2,
                tpm: limits.tpm,
                generation: self.generation,
                reserved,
            },
        })
    }

    /// The lease call for `waiting` (the first decides `need`), flushing what was settled.
    /// Amounts flushed or given back leave the lease now.
    fn ask_for(&mut self, waiting: &[PendingAdmit]) -> Ask {
        let first = &waiting[0].request;
        let mut release = 0;
        if !self.matches(first) {
            // New, edited or forgotten: unused budget goes back, rate slots are dropped.
            release = self.free();
            self.slots = 0;
            self.tokens = 0;
            self.rate_until = None;
            self.budget_limit = first.budget.map(|b| b.limit.0);
            self.limits = first.limits;
            self.stale = false;
        }
        self.expiry = first
            .budget
            .and_then(|b| b.period.end(first.now_unix))
            .map_or(0, |end| end + 86_400);
        self.seed = first.local_spent.0;
        let flush = std::mem::take(&mut self.settled);
        self.lease = self.lease.saturating_sub(flush.saturating_add(release));
        let (need, wish) = if first.budget.is_some() {
            // Saturating: a maximum cost can be near `u64::MAX` (prices saturate).
            let others = waiting[1..]
                .iter()
                .fold(0u64, |sum, p| sum.saturating_add(p.request.max_cost.0));
            (
                first.max_cost.0.saturating_sub(self.free()),
                self.recent.max(others),
            )
        } else {
            (0, 0)
        };
        let limits = first.limits;
        let count = waiting.len() as u64;
        let slots = limits.rpm.map_or(0, |rpm| {
            rate_cap(u64::from(rpm), MINUTE_US, 1).min(count.max(self.recent_requests))
        });
        let tokens = waiting
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.request.tokens));
        let tokens = limits.tpm.map_or(0, |tpm| {
            rate_cap(tpm, MINUTE_US, first.tokens)
                .min(tokens.max(self.recent_tokens))
                .max(first.tokens)
        });
        self.topping_up = true;
        self.calling = true;
        Ask {
            flush,
            release,
            need,
            wish,
            asks: !limits.is_none(),
            slots,
            tokens_min: first.tokens,
            tokens,
        }
    }

    /// The flush tick's call, if this lease needs one: settled costs into the spend, the
    /// free part resized toward what the key reserved in the last interval, the deadline
    /// renewed.
    fn ask_flush(&mut self) -> Option<Ask> {
        self.budget_limit?;
        let free = self.free();
        let target = if self.stale { 0 } else { self.recent };
        let release = free.saturating_sub(target);
        let wish = if !self.stale && free < target / 2 {
            target - free
        } else {
            0
        };
        let renew = self.held && self.renewed.elapsed() >= LEASE_TTL / 3;
        if self.settled == 0 && release == 0 && wish == 0 && !renew {
            return None;
        }
        let flush = std::mem::take(&mut self.settled);
        self.lease = self.lease.saturating_sub(flush.saturating_add(release));
        self.calling = true;
        Some(Ask {
            flush,
            release,
            need: 0,
            wish,
            asks: false,
            slots: 0,
            tokens_min: 0,
            tokens: 0,
        })
    }

    /// The script's ARGV for `ask` on this lease.
    fn args(&self, ask: &Ask) -> Vec<String> {
        vec![
            self.name.clone(),
            if self.held { "1" } else { "0" }.to_owned(),
            ask.flush.to_string(),
            ask.release.to_string(),
            self.budget_limit
                .map_or("-1".to_owned(), |limit| limit.to_string()),
            ask.need.to_string(),
            ask.wish.to_string(),
            LEASE_TTL.as_millis().to_string(),
            self.expiry.to_string(),
            self.seed.to_string(),
            self.limits.rpm.map_or(0, u64::from).to_string(),
            self.limits.tpm.unwrap_or(0).to_string(),
            if ask.asks { "1" } else { "0" }.to_owned(),
            ask.slots.to_string(),
            ask.tokens_min.to_string(),
            ask.tokens.to_string(),
        ]
    }

    /// The call failed (whether Redis ran it is unknown): the lease is given up here, to be
    /// charged in full at its deadline; the next call takes a new one.
    fn give_up(&mut self, name: String, generation: u64) {
        *self = Self {
            budget_limit: self.budget_limit,
            limits: self.limits,
            stale: self.stale,
            recent: self.recent,
            recent_requests: self.recent_requests,
            recent_tokens: self.recent_tokens,
            expiry: self.expiry,
            seed: self.seed,
            ..Self::new(name, generation)
        };
    }

    /// Takes in the script's answer; `generation` is a fresh one if the lease was lost.
    fn answered(&mut self, reply: &LeaseReply, generation: impl FnOnce() -> u64) {
        if reply.lost {
            // Charged in full (or gone with Redis's data): what it covered is inside that.
            self.generation = generation();
            self.reserved = 0;
            self.in_flight = 0;
            self.settled = 0;
        }
        self.lease = reply.lease;
        self.held = reply.lease > 0;
        self.topping_up = false;
        self.calling = false;
        self.renewed = Instant::now();
        self.server_now = reply.now;
        self.seen_at = Instant::now();
    }
}

/// One [`LEASE`] answer.
struct LeaseReply {
    outcome: u64,
    lost: bool,
    lease: u64,
    spent: u64,
    held: u64,
    now: u64,
    before: Tats,
    slots: u64,
    tokens: u64,
    after: Tats,
}

fn lease_reply(reply: &Value) -> Result<LeaseReply, String> {
    let Value::Array(values) = reply else {
        return Err(format!("the lease script answered {reply:?}"));
    };
    let field = |i| int(values, i);
    Ok(LeaseReply {
        outcome: field(0)?,
        lost: field(1)? == 1,
        lease: field(2)?,
        spent: field(3)?,
        held: field(4)?,
        now: field(5)?,
        before: Tats {
            requests: field(6)?,
            tokens: field(7)?,
        },
        slots: field(8)?,
        tokens: field(9)?,
        after: Tats {
            requests: field(10)?,
            tokens: field(11)?,
        },
    })
}

type Leases = Arc<Mutex<HashMap<LeaseId, Lease>>>;

fn lock(leases: &Leases) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Lease>> {
    leases.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lease names and generations: a per-process random prefix and a counter.
struct Names {
    prefix: String,
    next: AtomicU64,
}

impl Names {
    fn generation(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn name(&self) -> String {
        format!("lease:{}:{}", self.prefix, self.generation())
    }
}

/// [`SharedLimits`] on Redis.
pub(crate) struct RedisLimits<R: Runtime> {
    /// Admissions the local leases could not decide, for the lease task ([`run_leases`]).
    admissions: async_channel::Sender<PendingAdmit>,
    rt: R,
    leases: Leases,
    pending: Arc<AtomicUsize>,
    seen: Seen,
    /// Token corrections for the one task that sends them (see [`drain_settles`]).
    settles: async_channel::Sender<Queued>,
}

/// A token correction waiting to be sent, and since when.
struct Queued {
    settle: SharedSettle,
    since: Instant,
}

/// Corrections sent together, at most (one write, replies read in order).
const SETTLE_BATCH: usize = 512;

fn rate_key(id: &str) -> String {
    format!("gate:{{{id}}}:rate")
}

fn budget_keys(id: &str, period: Period, start: u64) -> (String, String) {
    (
        format!("gate:{{{id}}}:budget:{period}:{start}"),
        format!("gate:{{{id}}}:holds:{period}:{start}"),
    )
}

fn lease_keys(id: &LeaseId) -> Vec<String> {
    let (budget, holds) = budget_keys(&id.0, lease_period(id.1), id.2);
    vec![rate_key(&id.0), budget, holds]
}

fn int(values: &[Value], i: usize) -> Result<u64, String> {
    values
        .get(i)
        .and_then(Value::as_i64)
        .map(|v| u64::try_from(v).unwrap_or(0))
        .ok_or_else(|| format!("the script's reply lacks element {i}"))
}

impl<R: Runtime> RedisLimits<R> {
    pub(crate) fn new(rt: R, redis: Redis<R>) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let (settles, queue) = async_channel::unbounded();
        let pending = Arc::new(AtomicUsize::new(0));
        let seen = Seen::default();
        let leases = Leases::default();
        rt.spawn(drain_settles(
            rt.clone(),
            redis.clone(),
            Script::new(CORRECT_TOKENS),
            queue,
            pending.clone(),
        ));
        let (admissions, admission_queue) = async_channel::unbounded();
        let names = Names {
            prefix: format!("{:x}-{:x}", std::process::id(), seed),
            next: AtomicU64::new(0),
        };
        rt.spawn(run_leases(
            rt.clone(),
            redis,
            Script::new(LEASE),
            admission_queue,
            LeaseTask {
                leases: leases.clone(),
                seen: seen.clone(),
                names,
            },
        ));
        Self {
            rt,
            admissions,
            leases,
            pending,
            seen,
            settles,
        }
    }
}

/// A queued admission, its lease, and where its decision goes.
struct PendingAdmit {
    request: SharedAdmit,
    id: LeaseId,
    reply: async_channel::Sender<Result<SharedDecision, String>>,
}

/// The lease task's shared state.
struct LeaseTask {
    leases: Leases,
    seen: Seen,
    names: Names,
}

/// The refusal of `request` by the script's answer `reply` (outcome 1 or 2).
fn refusal(request: &SharedAdmit, id: &LeaseId, reply: &LeaseReply) -> SharedDecision {
    if reply.outcome == 1 {
        let budget = request.budget.unwrap_or(Budget {
            limit: Usd::ZERO,
            period: lease_period(id.1),
        });
        return SharedDecision::Budget(BudgetRefusal {
            spent: Usd(reply.spent),
            reserved: Usd(reply.held),
            limit: budget.limit,
            asked: request.max_cost,
            period: budget.period,
            resets_at: budget.period.end(request.now_unix),
        });
    }
    let (tats, limits, now) = (reply.before, request.limits, reply.now);
    SharedDecision::Rate(
        match ratelimit::decide(tats, limits, request.tokens, now, MINUTE_US) {
            Err(refusal) => refusal,
            // Core and the script disagree (they should not): the script decided.
            Ok(_) => RateRefusal {
                limited: if limits.rpm.is_some() {
                    gate_core::accounting::Limited::Requests
                } else {
                    gate_core::accounting::Limited::Tokens
                },
                retry_after_ns: 1_000_000_000,
                status: ratelimit::status_of(tats, limits, now, MINUTE_US),
            },
        },
    )
}

/// Hands an admission taken from `lease` to its caller; one nobody waits for any more (a
/// client that went away while its request waited) gives back what it reserved.
fn hand_over(lease: &mut Lease, pending: &PendingAdmit, decision: SharedDecision) {
    if let Err(unsent) = pending.reply.try_send(Ok(decision)) {
        if let Ok(SharedDecision::Admitted { hold, .. }) = unsent.into_inner() {
            lease.unreserve(&hold, 0);
        }
    }
}

/// What `hold`'s request cost, into its lease (if this daemon still has it).
fn settle_lease(leases: &Leases, hold: &SharedHold, actual: u64) {
    if hold.period.is_some() {
        let id = (hold.key_id.clone(), hold.period, hold.period_start);
        if let Some(lease) = lock(leases).get_mut(&id) {
            lease.unreserve(hold, actual);
        }
    }
}

/// A queued admission's decision, as its caller waits for it: a caller that goes away
/// after the decision was made, before reading it, gives back what it reserved.
struct Waiting {
    decided: async_channel::Receiver<Result<SharedDecision, String>>,
    leases: Leases,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Closed first: a decision sent from now on fails, and its sender gives it back.
        self.decided.close();
        if let Ok(Ok(SharedDecision::Admitted { hold, .. })) = self.decided.try_recv() {
            settle_lease(&self.leases, &hold, 0);
        }
    }
}

/// Who a lease call of a round was for.
enum Caller {
    /// The waiting admissions of `groups[i]`.
    Admissions(usize),
    /// The flush tick.
    Flush(LeaseId),
}

/// The one task that talks to Redis for the leases: takes the admissions the local leases
/// could not decide (up to [`ADMIT_BATCH`]), groups them by lease, and decides them in
/// rounds: in each, every lease with admissions waiting is tried locally first, then asked
/// of Redis once (the round's calls pipelined), the first admission decided by the answer,
/// the others tried on the grown lease in the next round. Every [`FLUSH_EVERY`] the other
/// leases are flushed, resized and renewed in the same round. One call per lease in flight
/// at most. Ends when the limits are dropped.
async fn run_leases<R: Runtime>(
    rt: R,
    redis: Redis<R>,
    script: Script,
    queue: async_channel::Receiver<PendingAdmit>,
    task: LeaseTask,
) {
    let mut next_tick = Instant::now() + FLUSH_EVERY;
    let mut batch: Vec<PendingAdmit> = Vec::new();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match gate_rt::timeout(&rt, wait, queue.recv()).await {
            Ok(Ok(first)) => batch.push(first),
            Ok(Err(_)) => return,
            Err(_) => {}
        }
        while batch.len() < ADMIT_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut groups: Vec<(LeaseId, Vec<PendingAdmit>)> = Vec::new();
        let mut open: HashMap<LeaseId, usize> = HashMap::new();
        for pending in batch.drain(..) {
            match open.get(&pending.id) {
                Some(&i) => groups[i].1.push(pending),
                None => {
                    open.insert(pending.id.clone(), groups.len());
                    groups.push((pending.id.clone(), vec![pending]));
                }
            }
        }
        let mut flushes = Vec::new();
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + FLUSH_EVERY;
            let mut leases = lock(&task.leases);
            leases.retain(|id, lease| {
                lease.recent = std::mem::take(&mut lease.used);
                lease.recent_requests = std::mem::take(&mut lease.requests_used);
                lease.recent_tokens = std::mem::take(&mut lease.tokens_used);
                let idle = lease.lease == 0
                    && lease.reserved == 0
                    && lease.in_flight == 0
                    && lease.settled == 0
                    && lease.recent == 0
                    && lease.recent_requests == 0
                    && lease.recent_tokens == 0
                    && !lease.held
                    && !lease.topping_up;
                if !open.contains_key(id) && !lease.topping_up && !idle {
                    flushes.push(id.clone());
                }
                !idle
            });
        }
        decide_round(&redis, &script, &task, groups, flushes).await;
    }
}

/// Decides `groups` (and flushes `flushes`) in rounds of pipelined lease calls.
async fn decide_round<R: Runtime>(
    redis: &Redis<R>,
    script: &Script,
    task: &LeaseTask,
    mut groups: Vec<(LeaseId, Vec<PendingAdmit>)>,
    mut flushes: Vec<LeaseId>,
) {
    loop {
        let mut calls: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        let mut callers = Vec::new();
        {
            let mut leases = lock(&task.leases);
            let now = Instant::now();
            for (i, (id, waiting)) in groups.iter_mut().enumerate() {
                if waiting.is_empty() {
                    continue;
                }
                let lease = leases
                    .entry(id.clone())
                    .or_insert_with(|| Lease::new(task.names.name(), task.names.generation()));
                waiting.retain(|pending| match lease.take(&pending.request, id, now) {
                    Some(decision) => {
                        hand_over(lease, pending, decision);
                        false
                    }
                    None => true,
                });
                if waiting.is_empty() || lease.topping_up {
                    continue;
                }
                let ask = lease.ask_for(waiting);
                calls.push((lease_keys(id), lease.args(&ask)));
                callers.push(Caller::Admissions(i));
            }
            for id in flushes.drain(..) {
                if let Some(lease) = leases.get_mut(&id) {
                    if let Some(ask) = lease.ask_flush() {
                        calls.push((lease_keys(&id), lease.args(&ask)));
                        callers.push(Caller::Flush(id));
                    }
                }
            }
        }
        if calls.is_empty() {
            return;
        }
        let results = redis.eval_many(script, &calls, DECISION_TIMEOUT).await;
        let mut leases = lock(&task.leases);
        for (caller, result) in callers.into_iter().zip(results) {
            let id = match &caller {
                Caller::Admissions(i) => groups[*i].0.clone(),
                Caller::Flush(id) => id.clone(),
            };
            let Some(lease) = leases.get_mut(&id) else {
                continue;
            };
            let reply = result.map_err(|e| e.to_string()).and_then(|value| {
                lease_reply(&value).map_err(|why| {
                    RedisError::Command {
                        at: redis.url().to_string(),
                        why,
                    }
                    .to_string()
                })
            });
            let reply = match reply {
                Ok(reply) => reply,
                Err(why) => {
                    if lease.held || lease.lease > 0 || lease.reserved > 0 {
                        tracing::debug!(key = %id.0, "{why}; this daemon's lease of the key is given up (charged in full at its deadline)");
                    }
                    lease.give_up(task.names.name(), task.names.generation());
                    if let Caller::Admissions(i) = caller {
                        for pending in groups[i].1.drain(..) {
                            let _ = pending.reply.try_send(Err(why.clone()));
                        }
                    }
                    continue;
                }
            };
            lease.answered(&reply, || task.names.generation());
            see(&task.seen, &id.0, id.2, Usd(reply.spent), Usd(reply.held));
            let Caller::Admissions(i) = caller else {
                continue;
            };
            let waiting = &mut groups[i].1;
            match reply.outcome {
                0 => {
                    if !lease.limits.is_none() {
                        lease.slots = reply.slots;
                        lease.tokens = reply.tokens;
                        lease.rate_until = Some(Instant::now() + RATE_LEASE_FOR);
                        lease.tats = reply.after;
                    }
                    // The grown lease decides the first (and what else it covers) now; the
                    // rest go on to the next round.
                    let now = Instant::now();
                    waiting.retain(|pending| match lease.take(&pending.request, &id, now) {
                        Some(decision) => {
                            hand_over(lease, pending, decision);
                            false
                        }
                        None => true,
                    });
                }
                1 => {
                    // Refused by the budget: the first, and every other waiting request that
                    // the lease and the budget nobody holds cannot cover either.
                    let room = lease.free().saturating_add(
                        lease
                            .budget_limit
                            .unwrap_or(0)
                            .saturating_sub(reply.spent.saturating_add(reply.held)),
                    );
                    refuse_first_and(waiting, &id, &reply, |request| request.max_cost.0 > room);
                }
                _ => {
                    // Refused by a rate limit: the first, and every other waiting request
                    // that core's limiter refuses on the same state; the others (fewer tokens
                    // than the first) go on to the next round.
                    lease.tats = reply.before;
                    refuse_first_and(waiting, &id, &reply, |request| {
                        ratelimit::decide(
                            reply.before,
                            request.limits,
                            request.tokens,
                            reply.now,
                            MINUTE_US,
                        )
                        .is_err()
                    });
                }
            }
        }
    }
}

/// A lease call's refusal (`reply`, outcome 1 or 2) of the admissions `waiting` for lease
/// `id`: the first, whose need the call asked for, is refused; of the rest, those that
/// `refuses` are refused too and the others stay, in order, for the next round.
fn refuse_first_and(
    waiting: &mut Vec<PendingAdmit>,
    id: &LeaseId,
    reply: &LeaseReply,
    refuses: impl Fn(&SharedAdmit) -> bool,
) {
    let refuse = |pending: &PendingAdmit| {
        let _ = pending
            .reply
            .try_send(Ok(refusal(&pending.request, id, reply)));
    };
    let mut rest = std::mem::take(waiting).into_iter();
    if let Some(first) = rest.next() {
        refuse(&first);
    }
    for pending in rest {
        if refuses(&pending.request) {
            refuse(&pending);
        } else {
            waiting.push(pending);
        }
    }
}

/// The correction script's KEYS and ARGV for `settles` (all of one key and tpm).
fn settle_call(settles: &[&SharedSettle]) -> (Vec<String>, Vec<String>) {
    let hold = &settles[0].hold;
    let mut args = Vec::with_capacity(1 + 2 * settles.len());
    args.push(hold.tpm.unwrap_or(0).to_string());
    for settle in settles {
        args.push(settle.estimated_tokens.to_string());
        args.push(settle.actual_tokens.to_string());
    }
    (vec![rate_key(&hold.key_id)], args)
}

/// `batch` in groups that one [`CORRECT_TOKENS`] call corrects: the same key and tpm, at
/// most [`SETTLE_PER_CALL`] each; a key's corrections keep their order.
fn settle_groups(batch: Vec<Queued>) -> Vec<Vec<Queued>> {
    let mut groups: Vec<Vec<Queued>> = Vec::new();
    let mut open: HashMap<(String, Option<u64>), usize> = HashMap::new();
    for queued in batch {
        let hold = &queued.settle.hold;
        let id = (hold.key_id.clone(), hold.tpm);
        match open.get(&id) {
            Some(&i) if groups[i].len() < SETTLE_PER_CALL => groups[i].push(queued),
            _ => {
                open.insert(id, groups.len());
                groups.push(vec![queued]);
            }
        }
    }
    groups
}

/// The one task that sends token corrections: takes what is queued (up to
/// [`SETTLE_BATCH`]), sends it in one pipelined round, and keeps what Redis could not take
/// for the next round after a pause (100 ms doubling to 2 s), each for at most
/// [`SETTLE_RETRY_FOR`]. Ends when the limits are dropped and nothing is left.
async fn drain_settles<R: Runtime>(
    rt: R,
    redis: Redis<R>,
    script: Script,
    queue: async_channel::Receiver<Queued>,
    pending: Arc<AtomicUsize>,
) {
    let mut batch: Vec<Queued> = Vec::new();
    let mut wait = Duration::from_millis(100);
    loop {
        if batch.is_empty() {
            match queue.recv().await {
                Ok(queued) => batch.push(queued),
                Err(_) => return,
            }
        }
        while batch.len() < SETTLE_BATCH {
            match queue.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let groups = settle_groups(std::mem::take(&mut batch));
        let calls: Vec<_> = groups
            .iter()
            .map(|group| settle_call(&group.iter().map(|q| &q.settle).collect::<Vec<_>>()))
            .collect();
        let results = redis.eval_many(&script, &calls, DECISION_TIMEOUT).await;
        let mut retry = Vec::new();
        for (group, result) in groups.into_iter().zip(results) {
            let key = group[0].settle.hold.key_id.clone();
            match result {
                Ok(_) => {}
                Err(RedisError::Command { why, .. }) => {
                    tracing::warn!(key = %key, "correcting tokens per minute in Redis failed: {why}");
                }
                Err(e) => {
                    let (kept, given_up): (Vec<Queued>, Vec<Queued>) = group
                        .into_iter()
                        .partition(|q| q.since.elapsed() < SETTLE_RETRY_FOR);
                    if !given_up.is_empty() {
                        tracing::warn!(
                            key = %key,
                            "{e}; gave up correcting the tokens per minute of {} request(s) \
                             after {} s: their charge at admission stands",
                            given_up.len(),
                            SETTLE_RETRY_FOR.as_secs()
                        );
                        pending.fetch_sub(given_up.len(), Ordering::Relaxed);
                    }
                    retry.extend(kept);
                    continue;
                }
            }
            pending.fetch_sub(group.len(), Ordering::Relaxed);
        }
        if retry.is_empty() {
            wait = Duration::from_millis(100);
        } else {
            batch = retry;
            rt.sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

impl<R: Runtime> SharedLimits for RedisLimits<R> {
    fn admit(&self, request: SharedAdmit) -> Decided {
        let period = request.budget.map(|b| b.period);
        let id: LeaseId = (
            request.key_id.clone(),
            period,
            lease_period(period).start(request.now_unix),
        );
        if let Some(lease) = lock(&self.leases).get_mut(&id) {
            if let Some(decision) = lease.take(&request, &id, Instant::now()) {
                return Box::pin(std::future::ready(Ok(decision)));
            }
        }
        let (reply, decided) = async_channel::bounded(1);
        let queued = self
            .admissions
            .try_send(PendingAdmit { request, id, reply });
        let waiting = Waiting {
            decided,
            leases: self.leases.clone(),
        };
        Box::pin(async move {
            if queued.is_err() {
                return Err("the lease task has stopped (the daemon is stopping)".to_owned());
            }
            waiting
                .decided
                .recv()
                .await
                .map_err(|_| "the lease task has stopped".to_owned())?
        })
    }

    fn settle(&self, settle: SharedSettle) {
        let hold = &settle.hold;
        settle_lease(&self.leases, hold, settle.actual.0);
        if hold.tpm.is_none() || settle.estimated_tokens == settle.actual_tokens {
            return;
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_SETTLES {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                key = %hold.key_id,
                "too many token corrections wait for Redis; this request's charge at \
                 admission stands"
            );
            return;
        }
        let queued = Queued {
            settle,
            since: Instant::now(),
        };
        if self.settles.try_send(queued).is_err() {
            // The settling task is gone (only while the process ends).
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn last_seen(&self, key_id: &str, period_start: u64) -> Option<(Usd, Usd)> {
        let map = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key_id)
            .filter(|(start, _, _)| *start == period_start)
            .map(|(_, spent, held)| (*spent, *held))
    }

    fn forget(&self, key_id: &str) {
        for (id, lease) in lock(&self.leases).iter_mut() {
            if id.0 == key_id {
                lease.make_stale();
            }
        }
    }

    fn give_back(&self) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        lock(&self.leases).values_mut().for_each(Lease::make_stale);
        // The lease task's next flush ticks give the stale leases back; wait for their answers.
        let (rt, leases) = (self.rt.clone(), self.leases.clone());
        Box::pin(async move {
            let end = Instant::now() + GIVE_BACK_WITHIN;
            loop {
                if lock(&leases).values().all(Lease::given_back) {
                    return true;
                }
                if Instant::now() >= end {
                    return false;
                }
                rt.sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../../../tests/support/store_servers.rs"]
mod store_servers;

#[cfg(test)]
mod tests {
    //! The scripts against a real `redis-server`: on random sequences of lease calls from two
    //! daemons, the lease script grants exactly what gate-core's lease arithmetic grants on
    //! the same state at the server's time, refuses as core's limiter does, and stores the
    //! state core computes; a lease not renewed is charged in full at its deadline.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::store_servers;
    use super::*;
    use gate_core::accounting::lease::{budget_grant, rate_grant};
    use gate_rt::store::RedisUrl;

    /// xorshift: a reproducible sequence without a dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    async fn hget<R: Runtime>(redis: &Redis<R>, key: &str, field: &str) -> u64 {
        let value = redis
            .command(
                &[b"HGET".as_slice(), key.as_bytes(), field.as_bytes()],
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        value.as_i64().unwrap_or(0) as u64
    }

    #[allow(clippy::too_many_arguments)]
    fn args(
        name: &str,
        had: bool,
        flush: u64,
        release: u64,
        limit: u64,
        need: u64,
        wish: u64,
        ttl_ms: u64,
        limits: Limits,
        asks: bool,
        slots: u64,
        tokens_min: u64,
        tokens: u64,
    ) -> Vec<String> {
        [
            name.to_owned(),
            u64::from(had).to_string(),
            flush.to_string(),
            release.to_string(),
            limit.to_string(),
            need.to_string(),
            wish.to_string(),
            ttl_ms.to_string(),
            "0".to_owned(),
            "0".to_owned(),
            limits.rpm.map_or(0, u64::from).to_string(),
            limits.tpm.unwrap_or(0).to_string(),
            u64::from(asks).to_string(),
            slots.to_string(),
            tokens_min.to_string(),
            tokens.to_string(),
        ]
        .to_vec()
    }

    async fn lease_agrees_with_core<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let script = Script::new(LEASE);
        let correct = Script::new(CORRECT_TOKENS);
        let mut outcomes = [0u32; 3];
        for seed in 1..=12u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let id: LeaseId = (format!("k{seed}"), Some(Period::Day), 0);
            let keys = lease_keys(&id);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let limits = Limits {
                rpm: Some(1 + rng.below(200) as u32),
                tpm: Some(100 + rng.below(50_000)),
            };
            let limit = 1 + rng.below(10_000);
            let (mut spent, mut held) = (0u64, 0u64);
            // Each daemon's lease: (name, amount held).
            let mut daemons = [("d1".to_owned(), 0u64), ("d2".to_owned(), 0u64)];
            let mut tats = Tats::default();
            for op in 0..60u64 {
                let d = rng.below(2) as usize;
                let h = daemons[d].1;
                if rng.below(5) == 0 && tats.tokens > 0 {
                    // Token corrections, as settlements send them.
                    let (est, act) = (rng.below(3000), rng.below(3000));
                    let now = redis
                        .eval(
                            &correct,
                            &[keys[0]],
                            &[
                                limits.tpm.unwrap().to_string(),
                                est.to_string(),
                                act.to_string(),
                            ],
                            DECISION_TIMEOUT,
                        )
                        .await
                        .unwrap()
                        .as_i64()
                        .unwrap() as u64;
                    tats.tokens = ratelimit::corrected_tokens_tat(
                        tats.tokens,
                        limits.tpm.unwrap(),
                        est,
                        act,
                        now,
                        MINUTE_US,
                    );
                    assert_eq!(hget(&redis, keys[0], "t").await, tats.tokens);
                    continue;
                }
                let flush = if h > 0 { rng.below(h + 1) } else { 0 };
                let release = if h > flush {
                    rng.below(h - flush + 1)
                } else {
                    0
                };
                let asks = rng.below(3) > 0;
                let need = if asks { rng.below(2000) } else { 0 };
                let wish = rng.below(3000);
                let (slots, tokens_min) = (1 + rng.below(20), rng.below(2000));
                let tokens = tokens_min + rng.below(5000);
                let reply = redis
                    .eval(
                        &script,
                        &keys,
                        &args(
                            &daemons[d].0,
                            h > 0,
                            flush,
                            release,
                            limit,
                            need,
                            wish,
                            3_600_000,
                            limits,
                            asks,
                            slots,
                            tokens_min,
                            tokens,
                        ),
                        DECISION_TIMEOUT,
                    )
                    .await
                    .unwrap();
                let reply = lease_reply(&reply).unwrap();
                let at = format!("seed {seed} op {op}");
                assert!(!reply.lost, "{at}");
                // Flush and release first, then the grant on the state they leave.
                spent += flush;
                held -= flush + release;
                let mut lease = h - flush - release;
                let remaining = limit.saturating_sub(spent + held);
                let budget = if need > 0 || wish > 0 {
                    if need > limit.saturating_sub(spent + held) || spent + held > limit {
                        None
                    } else {
                        budget_grant(need, wish, remaining)
                    }
                } else {
                    Some(0)
                };
                let mut outcome = if budget.is_none() && need > 0 { 1 } else { 0 };
                let mut granted = budget.unwrap_or(0);
                if asks && outcome == 0 {
                    assert_eq!(reply.before, tats, "{at}: the state before");
                    let now = reply.now;
                    let r = rate_grant(
                        tats.requests,
                        u64::from(limits.rpm.unwrap()),
                        1,
                        slots,
                        now,
                        MINUTE_US,
                    );
                    let t = rate_grant(
                        tats.tokens,
                        limits.tpm.unwrap(),
                        tokens_min,
                        tokens,
                        now,
                        MINUTE_US,
                    );
                    // One request of `tokens_min` as core's limiter decides it.
                    let one = ratelimit::decide(tats, limits, tokens_min, now, MINUTE_US);
                    assert_eq!(one.is_ok(), r.is_ok() && t.is_ok(), "{at}");
                    match (r, t) {
                        (Ok((gr, nr)), Ok((gt, nt))) => {
                            assert_eq!((reply.slots, reply.tokens), (gr, gt), "{at}");
                            tats = Tats {
                                requests: nr,
                                tokens: nt,
                            };
                            assert_eq!(reply.after, tats, "{at}");
                        }
                        _ => {
                            outcome = 2;
                            granted = 0;
                            assert!(matches!(
                                refusal(
                                    &SharedAdmit {
                                        key_id: id.0.clone(),
                                        limits,
                                        tokens: tokens_min,
                                        budget: None,
                                        max_cost: Usd(need),
                                        now_unix: 0,
                                        local_spent: Usd::ZERO,
                                    },
                                    &id,
                                    &reply
                                ),
                                SharedDecision::Rate(_)
                            ));
                        }
                    }
                }
                assert_eq!(reply.outcome, outcome, "{at}");
                outcomes[outcome as usize] += 1;
                lease += granted;
                held += granted;
                daemons[d].1 = lease;
                assert_eq!(
                    (reply.lease, reply.spent, reply.held),
                    (lease, spent, held),
                    "{at}"
                );
                assert!(
                    spent + held <= limit || granted == 0,
                    "{at}: over the budget"
                );
                assert_eq!(hget(&redis, keys[1], "spent").await, spent, "{at}");
                assert_eq!(hget(&redis, keys[1], "held").await, held, "{at}");
                assert_eq!(
                    hget(&redis, keys[1], &format!("h:{}", daemons[d].0)).await,
                    lease,
                    "{at}"
                );
                assert_eq!(hget(&redis, keys[0], "r").await, tats.requests, "{at}");
            }
        }
        // Grants, budget refusals and rate refusals were all exercised.
        assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
    }

    /// A lease not renewed by its deadline (a daemon that died) is charged in full by the
    /// next call of any daemon, and its owner learns it lost it.
    async fn unrenewed_lease_is_charged_at_its_deadline<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let script = Script::new(LEASE);
        let id: LeaseId = ("dead".to_owned(), Some(Period::Day), 0);
        let keys = lease_keys(&id);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let none = Limits::default();
        let call = |name: &'static str, had: bool, flush: u64, need: u64, ttl: u64| {
            let (redis, script, keys) = (&redis, &script, &keys);
            async move {
                let args = args(
                    name, had, flush, 0, 1000, need, 0, ttl, none, false, 0, 0, 0,
                );
                lease_reply(
                    &redis
                        .eval(script, keys, &args, DECISION_TIMEOUT)
                        .await
                        .unwrap(),
                )
                .unwrap()
            }
        };
        let taken = call("gone", false, 0, 600, 50).await;
        assert_eq!((taken.outcome, taken.lease, taken.held), (0, 600, 600));
        // The other daemon is refused what the lease holds...
        let refused = call("alive", false, 0, 500, 3_600_000).await;
        assert_eq!(refused.outcome, 1);
        // Once its deadline has passed, the next call of any daemon charges it in full...
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = call("alive", false, 0, 0, 3_600_000).await;
            if (reply.spent, reply.held) == (600, 0) {
                break;
            }
            assert_eq!((reply.spent, reply.held), (0, 600), "charged once, in full");
            assert!(Instant::now() < end, "the lease was never charged");
            rt.sleep(Duration::from_millis(20)).await;
        }
        // ...and the other daemon leases the rest of the budget, and no more.
        let rest = call("alive", false, 0, 400, 3_600_000).await;
        assert_eq!(
            (rest.outcome, rest.lease, rest.spent, rest.held),
            (0, 400, 600, 400)
        );
        let more = call("other", false, 0, 1, 3_600_000).await;
        assert_eq!(more.outcome, 1);
        let late = call("gone", true, 100, 0, 50).await;
        assert!(late.lost, "the dead daemon's flush finds its lease gone");
        assert_eq!(
            (late.spent, late.held),
            (600, 400),
            "and is not counted twice"
        );
    }

    /// A real redis-server (kept alive by the caller) and a client of it.
    fn redis_on<R: Runtime>(rt: &R) -> (store_servers::RedisServer, Redis<R>) {
        let server = store_servers::RedisServer::start().expect("redis-server");
        let redis = Redis::new(rt.clone(), RedisUrl::parse(&server.url()).unwrap());
        (server, redis)
    }

    fn lease_task() -> LeaseTask {
        LeaseTask {
            leases: Leases::default(),
            seen: Seen::default(),
            names: Names {
                prefix: "test".to_owned(),
                next: AtomicU64::new(0),
            },
        }
    }

    type Decision = async_channel::Receiver<Result<SharedDecision, String>>;

    fn pending(id: &LeaseId, request: SharedAdmit) -> (PendingAdmit, Decision) {
        let (reply, decided) = async_channel::bounded(1);
        let pending = PendingAdmit {
            request,
            id: id.clone(),
            reply,
        };
        (pending, decided)
    }

    /// An admission of 10 tokens of `key_id` at `now_unix` (Unix seconds, naming the budget
    /// period), costing at most `max_cost`; nothing spent here before.
    fn admission(
        key_id: &str,
        limits: Limits,
        budget: Option<Budget>,
        max_cost: u64,
        now_unix: u64,
    ) -> SharedAdmit {
        SharedAdmit {
            key_id: key_id.to_owned(),
            limits,
            tokens: 10,
            budget,
            max_cost: Usd(max_cost),
            now_unix,
            local_spent: Usd::ZERO,
        }
    }

    /// The hold of an admitted request (any other decision fails the test).
    fn admitted(decision: Result<SharedDecision, String>) -> SharedHold {
        match decision {
            Ok(SharedDecision::Admitted { hold, .. }) => hold,
            other => panic!("admitted: {other:?}"),
        }
    }

    /// A round whose first admission the tokens-per-minute limit refuses refuses only the
    /// admissions that limit refuses: a smaller one waiting behind it in the same round is
    /// admitted (it fits the minute), not refused with a made-up retry-after.
    async fn rate_refusal_refuses_only_what_it_refuses<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let script = Script::new(LEASE);
        let task = lease_task();
        let id: LeaseId = ("tpm".to_owned(), None, 0);
        let limits = Limits {
            rpm: None,
            tpm: Some(1000),
        };
        let tokens = |tokens| SharedAdmit {
            tokens,
            ..admission(&id.0, limits, None, 0, id.2)
        };
        // 900 of the minute's 1000 tokens are taken.
        let (big, decided) = pending(&id, tokens(900));
        decide_round(
            &redis,
            &script,
            &task,
            vec![(id.clone(), vec![big])],
            vec![],
        )
        .await;
        assert!(matches!(
            decided.try_recv().unwrap(),
            Ok(SharedDecision::Admitted { .. })
        ));
        // 500 more do not fit; 50 do.
        let (over, over_decided) = pending(&id, tokens(500));
        let (fits, fits_decided) = pending(&id, tokens(50));
        decide_round(
            &redis,
            &script,
            &task,
            vec![(id.clone(), vec![over, fits])],
            vec![],
        )
        .await;
        match over_decided.try_recv().unwrap() {
            Ok(SharedDecision::Rate(refusal)) => {
                assert_eq!(refusal.limited, gate_core::accounting::Limited::Tokens);
                // Core's retry-after on the stored state: 900 + 500 tokens are 1400 ms/token
                // * 400 over the minute, give or take the time the test took.
                assert!(refusal.retry_after_ns > 20_000_000_000, "{refusal:?}");
            }
            other => panic!("500 tokens over the minute: {other:?}"),
        }
        match fits_decided.try_recv().unwrap() {
            Ok(SharedDecision::Admitted { .. }) => {}
            other => panic!("50 tokens fit the minute: {other:?}"),
        }
    }

    /// A budget refusal refuses the admission whose need decided the call even when a
    /// settlement arrived while the call was in flight and the lease could now cover it: the
    /// answer is the call's, on the state it was sent with (its refusal names that state).
    /// Only the admissions behind it are checked against the newer state: one that fits is
    /// admitted from the lease in the same round.
    async fn budget_refusal_refuses_the_first_despite_a_settlement_in_flight<R: Runtime>(rt: R) {
        let (server, redis) = redis_on(&rt);
        // A connection of its own, to hold the call in flight: while writes are paused,
        // Redis runs no script.
        let pauser = Redis::new(rt.clone(), RedisUrl::parse(&server.url()).unwrap());
        let script = Script::new(LEASE);
        let task = lease_task();
        let id: LeaseId = ("inflight".to_owned(), Some(Period::Day), 0);
        let budget = Some(Budget {
            limit: Usd(1000),
            period: Period::Day,
        });
        let ask = |max_cost| {
            pending(
                &id,
                admission(&id.0, Limits::default(), budget, max_cost, id.2),
            )
        };
        // A leases 600 of the 1000 (an idle key leases exactly its maximum).
        let (a, a_decided) = ask(600);
        decide_round(&redis, &script, &task, vec![(id.clone(), vec![a])], vec![]).await;
        let a_hold = admitted(a_decided.try_recv().unwrap());
        assert_eq!(
            hget(&redis, &budget_keys(&id.0, Period::Day, 0).0, "held").await,
            600
        );
        // B needs 500, more than the 400 nobody holds: its call is refused. C (100) waits
        // behind it. A settles at 40 while B's call is in flight, freeing 560 of the lease.
        pauser
            .command(
                &[b"CLIENT".as_slice(), b"PAUSE", b"10000", b"WRITE"],
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        let (b, b_decided) = ask(500);
        let (c, c_decided) = ask(100);
        let settle_in_flight = async {
            let end = Instant::now() + Duration::from_secs(10);
            while !lock(&task.leases).get(&id).is_some_and(|l| l.topping_up) {
                assert!(Instant::now() < end, "B's call never went out");
                rt.sleep(Duration::from_millis(1)).await;
            }
            settle_lease(&task.leases, &a_hold, 40);
            pauser
                .command(&[b"CLIENT".as_slice(), b"UNPAUSE"], Duration::from_secs(2))
                .await
                .unwrap();
        };
        futures_util::future::join(
            decide_round(
                &redis,
                &script,
                &task,
                vec![(id.clone(), vec![b, c])],
                vec![],
            ),
            settle_in_flight,
        )
        .await;
        match b_decided.try_recv().unwrap() {
            Ok(SharedDecision::Budget(refusal)) => assert_eq!(
                (
                    refusal.spent,
                    refusal.reserved,
                    refusal.asked,
                    refusal.limit
                ),
                (Usd(0), Usd(600), Usd(500), Usd(1000)),
                "refused on the state the call was sent with"
            ),
            other => panic!("B is refused by its call's answer: {other:?}"),
        }
        admitted(c_decided.try_recv().unwrap());
        let lease = &lock(&task.leases)[&id];
        assert_eq!(
            (lease.lease, lease.reserved, lease.settled, lease.free()),
            (600, 100, 40, 460),
            "C reserved from the lease, B nothing"
        );
    }

    /// Requests whose maximum cost is near `u64::MAX` (an absurd price) are refused by the
    /// budget; the lease task's sums saturate instead of overflowing (a panic in debug builds,
    /// a wrapped, too small wish in release ones).
    async fn huge_maximum_costs_are_refused<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let script = Script::new(LEASE);
        let task = lease_task();
        let id: LeaseId = ("huge".to_owned(), Some(Period::Day), 0);
        let budget = Some(Budget {
            limit: Usd(1_000_000_000),
            period: Period::Day,
        });
        let mut group = Vec::new();
        let mut decisions = Vec::new();
        for _ in 0..3 {
            let asked = admission(&id.0, Limits::default(), budget, u64::MAX / 2 + 1, id.2);
            let (p, d) = pending(&id, asked);
            group.push(p);
            decisions.push(d);
        }
        decide_round(&redis, &script, &task, vec![(id.clone(), group)], vec![]).await;
        for decided in decisions {
            assert!(
                matches!(decided.try_recv().unwrap(), Ok(SharedDecision::Budget(_))),
                "refused by the budget"
            );
        }
    }

    /// A stopping daemon gives its leases back: when `give_back` resolves, what a lease held
    /// unused is back in the budget nobody holds and what was settled is in the spend, well
    /// before the lease's deadline (where it would be charged in full); a request still in
    /// flight keeps its reservation held.
    async fn stopping_gives_leases_back<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let limits = RedisLimits::new(rt.clone(), redis.clone());
        let now = gate_rt::tunnel::support::unix_now();
        let budget = Some(Budget {
            limit: Usd(1_000_000),
            period: Period::Day,
        });
        let (budget_key, holds_key) = budget_keys("stop", Period::Day, Period::Day.start(now));
        let admit =
            |max_cost| limits.admit(admission("stop", Limits::default(), budget, max_cost, now));
        // Two requests in flight (the lease holds both), one of them settles at 40 of 300.
        let (first, second) = (admit(300), admit(500));
        let (first, second) = (admitted(first.await), admitted(second.await));
        // (More when a flush tick has grown the lease toward what the key just reserved.)
        assert!(hget(&redis, &budget_key, "held").await >= 800);
        limits.settle(SharedSettle {
            hold: first,
            actual: Usd(40),
            estimated_tokens: 10,
            actual_tokens: 10,
        });
        let started = Instant::now();
        assert!(limits.give_back().await, "given back within the bound");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(hget(&redis, &budget_key, "spent").await, 40);
        assert_eq!(
            hget(&redis, &budget_key, "held").await,
            500,
            "only the request in flight stays held"
        );
        // It settles after the stop: its lease takes no more calls, so its reservation is
        // charged in full at the deadline (a stop ends the requests before giving back).
        limits.settle(SharedSettle {
            hold: second,
            actual: Usd(60),
            estimated_tokens: 10,
            actual_tokens: 10,
        });
        let deadline = redis
            .command(
                &[b"ZCARD".as_slice(), holds_key.as_bytes()],
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(deadline.as_i64(), Some(1), "one hold with a deadline");
    }

    /// A key's monthly budget removed (its rate limit kept) while its lease holds part of
    /// the month's budget: the requests without a budget take a lease of their own, and the
    /// budgeted lease still flushes what its requests cost (before and after the edit) and
    /// gives the rest back. (The unbudgeted lease used to be the same one, as requests
    /// without a budget are counted in the month: its calls skipped the budget, so the
    /// settled costs were dropped and the hold stayed.)
    async fn budget_removed_mid_lease_is_given_back<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let limits = RedisLimits::new(rt.clone(), redis.clone());
        let now = gate_rt::tunnel::support::unix_now();
        let rpm = Limits {
            rpm: Some(100),
            tpm: None,
        };
        let (budget_key, _) = budget_keys("edit", Period::Month, Period::Month.start(now));
        let admit = |budget, max_cost| limits.admit(admission("edit", rpm, budget, max_cost, now));
        let monthly = Some(Budget {
            limit: Usd(1_000_000),
            period: Period::Month,
        });
        let (first, second) = (admit(monthly, 300), admit(monthly, 500));
        let (first, second) = (admitted(first.await), admitted(second.await));
        let settle = |hold: SharedHold, actual: u64| {
            limits.settle(SharedSettle {
                hold,
                actual: Usd(actual),
                estimated_tokens: 10,
                actual_tokens: 10,
            })
        };
        settle(first, 40);
        // The budget is removed: the key's leases are forgotten, its next request has none.
        limits.forget("edit");
        admitted(admit(None, 0).await);
        settle(second, 60);
        assert!(limits.give_back().await, "given back within the bound");
        assert_eq!(hget(&redis, &budget_key, "spent").await, 100);
        assert_eq!(hget(&redis, &budget_key, "held").await, 0);
    }

    /// A budgeted request whose maximum cost is 0 (it reserves nothing) that costs something
    /// after all has that cost flushed into the spend like any other.
    async fn unreserved_cost_is_spent<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let limits = RedisLimits::new(rt.clone(), redis.clone());
        let now = gate_rt::tunnel::support::unix_now();
        let (budget_key, _) = budget_keys("zero", Period::Day, Period::Day.start(now));
        let budget = Some(Budget {
            limit: Usd(1_000_000),
            period: Period::Day,
        });
        let hold = admitted(
            limits
                .admit(admission("zero", Limits::default(), budget, 0, now))
                .await,
        );
        // It settles after a flush tick (seen by another key's settled cost reaching Redis),
        // where its lease, holding nothing, used to be forgotten as idle.
        let other = admitted(
            limits
                .admit(admission("tick", Limits::default(), budget, 300, now))
                .await,
        );
        limits.settle(SharedSettle {
            hold: other,
            actual: Usd(40),
            estimated_tokens: 10,
            actual_tokens: 10,
        });
        let (tick_key, _) = budget_keys("tick", Period::Day, Period::Day.start(now));
        let end = Instant::now() + Duration::from_secs(10);
        while hget(&redis, &tick_key, "spent").await != 40 {
            assert!(Instant::now() < end, "no flush tick");
            rt.sleep(Duration::from_millis(5)).await;
        }
        limits.settle(SharedSettle {
            hold,
            actual: Usd(7),
            estimated_tokens: 10,
            actual_tokens: 10,
        });
        assert!(limits.give_back().await, "given back within the bound");
        assert_eq!(hget(&redis, &budget_key, "spent").await, 7);
        assert_eq!(hget(&redis, &budget_key, "held").await, 0);
    }

    /// An admission whose caller went away (a client that disconnected while its request
    /// waited for Redis) reserves nothing: neither when its decision finds no one to take it,
    /// nor when it was decided but never read. Before, its maximum cost stayed reserved in
    /// the lease, held (and renewed) in Redis for as long as the daemon ran.
    async fn abandoned_admission_reserves_nothing<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let budget = Some(Budget {
            limit: Usd(1_000_000),
            period: Period::Day,
        });
        let reserved = |leases: &Leases, id: &LeaseId| {
            lock(leases)
                .get(id)
                .map(|l| (l.reserved, l.in_flight, l.lease))
        };
        // Decided by the lease task when nobody waits any more.
        let script = Script::new(LEASE);
        let task = lease_task();
        let id: LeaseId = ("gone".to_owned(), Some(Period::Day), 0);
        let (p, decided) = pending(&id, admission(&id.0, Limits::default(), budget, 300, id.2));
        drop(decided);
        decide_round(&redis, &script, &task, vec![(id.clone(), vec![p])], vec![]).await;
        assert_eq!(reserved(&task.leases, &id), Some((0, 0, 300)));
        // Decided, and the waiting future dropped before it read the decision.
        let limits = RedisLimits::new(rt.clone(), redis.clone());
        let now = gate_rt::tunnel::support::unix_now();
        let id: LeaseId = ("gone".to_owned(), Some(Period::Day), Period::Day.start(now));
        let waiting = limits.admit(admission(&id.0, Limits::default(), budget, 300, id.2));
        let end = Instant::now() + Duration::from_secs(10);
        while reserved(&limits.leases, &id).is_none_or(|(r, _, _)| r == 0) {
            assert!(Instant::now() < end, "never decided");
            rt.sleep(Duration::from_millis(2)).await;
        }
        drop(waiting);
        assert_eq!(reserved(&limits.leases, &id), Some((0, 0, 300)));
        assert!(limits.give_back().await);
        let (budget_key, _) = budget_keys("gone", Period::Day, Period::Day.start(now));
        assert_eq!(hget(&redis, &budget_key, "held").await, 0);
    }

    /// A lease held across a period boundary: a request admitted in the last second of a
    /// day settles into that day's budget after the next day began, whose requests lease from
    /// the new day's key; each day's lease flushes and gives back on its own.
    async fn leases_across_a_period_boundary<R: Runtime>(rt: R) {
        let (_server, redis) = redis_on(&rt);
        let limits = RedisLimits::new(rt.clone(), redis.clone());
        let today = Period::Day.start(gate_rt::tunnel::support::unix_now());
        let budget = Some(Budget {
            limit: Usd(1_000_000),
            period: Period::Day,
        });
        let admit = |now_unix, max_cost| {
            limits.admit(admission(
                "midnight",
                Limits::default(),
                budget,
                max_cost,
                now_unix,
            ))
        };
        let before = admitted(admit(today - 1, 300).await);
        let after = admitted(admit(today + 1, 500).await);
        let (yesterday_key, _) = budget_keys("midnight", Period::Day, today - 86_400);
        let (today_key, _) = budget_keys("midnight", Period::Day, today);
        assert_eq!(hget(&redis, &yesterday_key, "held").await, 300);
        assert_eq!(hget(&redis, &today_key, "held").await, 500);
        for (hold, actual) in [(before, 40), (after, 60)] {
            limits.settle(SharedSettle {
                hold,
                actual: Usd(actual),
                estimated_tokens: 10,
                actual_tokens: 10,
            });
        }
        assert!(limits.give_back().await);
        for (key, spent) in [(&yesterday_key, 40), (&today_key, 60)] {
            assert_eq!(hget(&redis, key, "spent").await, spent, "{key}");
            assert_eq!(hget(&redis, key, "held").await, 0, "{key}");
        }
    }

    #[test]
    fn rate_refusal_refuses_only_what_it_refuses_on_tokio() {
        gate_runtime_tokio::block_on(rate_refusal_refuses_only_what_it_refuses).expect("runtime");
    }

    #[test]
    fn rate_refusal_refuses_only_what_it_refuses_on_smol() {
        gate_runtime_smol::block_on(rate_refusal_refuses_only_what_it_refuses).expect("runtime");
    }

    #[test]
    fn budget_refusal_refuses_the_first_despite_a_settlement_in_flight_on_tokio() {
        gate_runtime_tokio::block_on(
            budget_refusal_refuses_the_first_despite_a_settlement_in_flight,
        )
        .expect("runtime");
    }

    #[test]
    fn budget_refusal_refuses_the_first_despite_a_settlement_in_flight_on_smol() {
        gate_runtime_smol::block_on(
            budget_refusal_refuses_the_first_despite_a_settlement_in_flight,
        )
        .expect("runtime");
    }

    #[test]
    fn stopping_gives_leases_back_on_tokio() {
        gate_runtime_tokio::block_on(stopping_gives_leases_back).expect("runtime");
    }

    #[test]
    fn stopping_gives_leases_back_on_smol() {
        gate_runtime_smol::block_on(stopping_gives_leases_back).expect("runtime");
    }

    #[test]
    fn budget_removed_mid_lease_is_given_back_on_tokio() {
        gate_runtime_tokio::block_on(budget_removed_mid_lease_is_given_back).expect("runtime");
    }

    #[test]
    fn budget_removed_mid_lease_is_given_back_on_smol() {
        gate_runtime_smol::block_on(budget_removed_mid_lease_is_given_back).expect("runtime");
    }

    #[test]
    fn unreserved_cost_is_spent_on_tokio() {
        gate_runtime_tokio::block_on(unreserved_cost_is_spent).expect("runtime");
    }

    #[test]
    fn unreserved_cost_is_spent_on_smol() {
        gate_runtime_smol::block_on(unreserved_cost_is_spent).expect("runtime");
    }

    #[test]
    fn abandoned_admission_reserves_nothing_on_tokio() {
        gate_runtime_tokio::block_on(abandoned_admission_reserves_nothing).expect("runtime");
    }

    #[test]
    fn abandoned_admission_reserves_nothing_on_smol() {
        gate_runtime_smol::block_on(abandoned_admission_reserves_nothing).expect("runtime");
    }

    #[test]
    fn leases_across_a_period_boundary_on_tokio() {
        gate_runtime_tokio::block_on(leases_across_a_period_boundary).expect("runtime");
    }

    #[test]
    fn leases_across_a_period_boundary_on_smol() {
        gate_runtime_smol::block_on(leases_across_a_period_boundary).expect("runtime");
    }

    #[test]
    fn huge_maximum_costs_are_refused_on_tokio() {
        gate_runtime_tokio::block_on(huge_maximum_costs_are_refused).expect("runtime");
    }

    #[test]
    fn huge_maximum_costs_are_refused_on_smol() {
        gate_runtime_smol::block_on(huge_maximum_costs_are_refused).expect("runtime");
    }

    #[test]
    fn lease_agrees_with_core_on_tokio() {
        gate_runtime_tokio::block_on(lease_agrees_with_core).expect("runtime");
    }

    #[test]
    fn lease_agrees_with_core_on_smol() {
        gate_runtime_smol::block_on(lease_agrees_with_core).expect("runtime");
    }

    #[test]
    fn unrenewed_lease_is_charged_at_its_deadline_on_tokio() {
        gate_runtime_tokio::block_on(unrenewed_lease_is_charged_at_its_deadline).expect("runtime");
    }

    #[test]
    fn unrenewed_lease_is_charged_at_its_deadline_on_smol() {
        gate_runtime_smol::block_on(unrenewed_lease_is_charged_at_its_deadline).expect("runtime");
    }
}
