//! Rate limits and budget reservations shared by several daemons through Redis (issue 15,
//! `[store] redis_url`): the seam [`SharedLimits`] that admission (`policy.rs`) calls
//! instead of its in-process limiter and ledger, and its Redis implementation
//! [`RedisLimits`].
//!
//! One Lua script per decision, so no decision races another daemon's:
//! - [`ADMIT`]: budget first (settled spend + held + this request's maximum cost <= budget,
//!   then hold it), then GCRA for requests and tokens per minute (both or neither charged; a
//!   refusal holds nothing). The same arithmetic as gate-core's limiter on microseconds
//!   ([`ratelimit::decide`] with [`MINUTE_US`]): the script returns the state it decided on,
//!   and the daemon runs core's `decide` on it for the headers and retry-after, so the shared
//!   answers are the in-process answers.
//! - [`SETTLE`]: releases the hold and adds the actual cost to the settled spend, corrects the
//!   tokens-per-minute charge to the actual tokens. Idempotent: only a hold still present is
//!   settled. Settlements are not a task per request: they go into one queue that one
//!   background task ([`drain_settles`]) sends in pipelined rounds of up to [`SETTLE_BATCH`]
//!   (one write; the client multiplexes them with admissions on its connection), retried
//!   while Redis is unreachable.
//!
//! Time: rate limits use the Redis server's clock (`TIME` in the scripts), one clock for every
//! daemon; budget periods are named by the daemon's UTC clock (a key per period start), so a
//! few seconds of skew at midnight only decide which day a request counts in.
//!
//! Keys (hash-tagged by key id, so a cluster keeps one key's state on one slot):
//! `gate:{<id>}:rate` (hash `r`, `t`: the TATs in Unix µs; expires when the allowance is
//! whole), `gate:{<id>}:budget:<period>:<start>` (hash `spent`, `held`, `h:<request>`: nano-
//! dollars; expires a day after the period ends) and `gate:{<id>}:holds:<period>:<start>`
//! (sorted set of request ids by deadline). A hold not settled by its deadline ([`HOLD_TTL`]:
//! a daemon that died mid-request) is charged in full to the settled spend by the next
//! admission: the budget is never overrun, at worst a dead daemon's requests count their
//! maximum.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gate_core::accounting::ratelimit::{self, MINUTE_US};
use gate_core::accounting::{
    Budget, BudgetRefusal, Limits, Period, RateRefusal, RateStatus, Tats, Usd,
};
use gate_core::resp::Value;
use gate_rt::store::{Redis, RedisError, Script};
use gate_rt::Runtime;

/// How long one decision may wait for Redis before the store counts as unavailable.
pub const DECISION_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a hold lives without being settled before it is charged in full.
pub const HOLD_TTL: Duration = Duration::from_secs(3600);
/// Settlements waiting for Redis to come back, at most (beyond: their holds are charged in
/// full when their deadline passes, as for a dead daemon).
pub const MAX_PENDING_SETTLES: usize = 10_000;
/// How long a settlement is retried while Redis is unreachable.
pub const SETTLE_RETRY_FOR: Duration = Duration::from_secs(600);

/// Reserve and rate-limit admissions of one key and budget period, each in turn, as that many
/// single calls would decide them (one atomic step). KEYS: rate, budget, holds. ARGV, per
/// admission (9 each): rpm (0: none), tpm (0: none), tokens, budget limit (-1: none), max
/// cost, request id, hold ttl ms, budget expiry (Unix s; 0: never), spend to start a new
/// period's key from. Returns one {outcome (0 admitted, 1 budget, 2 rate), spent, held, now
/// µs, requests TAT, tokens TAT} per admission (spent and held 0 without a budget; the TATs
/// before its decision, 0 without a rate limit).
pub const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local function fmt(x) return string.format('%d', x) end
local n = math.floor(#ARGV / 9)
local budgeted, limited = nil, false
for i = 0, n - 1 do
  if budgeted == nil and tonumber(ARGV[i * 9 + 4]) >= 0 then budgeted = i * 9 end
  if tonumber(ARGV[i * 9 + 1]) > 0 or tonumber(ARGV[i * 9 + 2]) > 0 then limited = true end
end
local spent, held = 0, 0
if budgeted ~= nil then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[2], 'spent', ARGV[budgeted + 9], 'held', '0')
    if tonumber(ARGV[budgeted + 8]) > 0 then
      redis.call('EXPIREAT', KEYS[2], ARGV[budgeted + 8])
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now_ms), 'LIMIT', 0, 100 * n)
  for _, rid in ipairs(expired) do
    local amount = tonumber(redis.call('HGET', KEYS[2], 'h:' .. rid) or '0')
    if redis.call('HDEL', KEYS[2], 'h:' .. rid) == 1 then
      redis.call('HINCRBY', KEYS[2], 'held', fmt(-amount))
      redis.call('HINCRBY', KEYS[2], 'spent', fmt(amount))
    end
    redis.call('ZREM', KEYS[3], rid)
  end
  spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
  held = tonumber(redis.call('HGET', KEYS[2], 'held') or '0')
end
local tr, tt = 0, 0
if limited then
  local v = redis.call('HMGET', KEYS[1], 'r', 't')
  tr = tonumber(v[1] or '0')
  tt = tonumber(v[2] or '0')
end
local MINUTE = 60000000
local function gcra(tat, lim, c)
  local interval = math.max(math.floor(MINUTE / lim), 1)
  local new = math.max(tat, now) + interval * c
  if new <= now + MINUTE or tat <= now then return true, new end
  return false, new
end
local out, fields, members = {}, {}, {}
local rate_set, added, expiry = false, 0, 0
for i = 0, n - 1 do
  local b = i * 9
  local rpm, tpm = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local tokens, limit, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local s, h = 0, 0
  if limit >= 0 then s, h = spent, held end
  if limit >= 0 and spent + held + cost > limit then
    out[i + 1] = {1, s, h, now, 0, 0}
  else
    local ok, r0, t0 = true, 0, 0
    if rpm > 0 or tpm > 0 then
      r0, t0 = tr, tt
      local okr, nr, okt, nt = true, tr, true, tt
      if rpm > 0 then okr, nr = gcra(tr, rpm, 1) end
      if tpm > 0 then okt, nt = gcra(tt, tpm, tokens) end
      if okr and okt then
        tr, tt, rate_set = nr, nt, true
      else
        ok = false
        out[i + 1] = {2, s, h, now, r0, t0}
      end
    end
    if ok then
      if limit >= 0 then
        held = held + cost
        h = held
        added = added + cost
        fields[#fields + 1] = 'h:' .. ARGV[b + 6]
        fields[#fields + 1] = fmt(cost)
        members[#members + 1] = fmt(now_ms + tonumber(ARGV[b + 7]))
        members[#members + 1] = ARGV[b + 6]
        expiry = tonumber(ARGV[b + 8])
      end
      out[i + 1] = {0, s, h, now, r0, t0}
    end
  end
end
if rate_set then
  redis.call('HSET', KEYS[1], 'r', fmt(tr), 't', fmt(tt))
  redis.call('PEXPIRE', KEYS[1], fmt(math.floor((math.max(tr, tt) - now) / 1000) + 1000))
end
if #fields > 0 then
  redis.call('HINCRBY', KEYS[2], 'held', fmt(added))
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('ZADD', KEYS[3], unpack(members))
  if expiry > 0 then
    redis.call('EXPIREAT', KEYS[3], fmt(expiry))
  end
end
return out
"#;

/// Admissions of one key decided by one [`ADMIT`] call, at most.
const ADMIT_PER_CALL: usize = 64;
/// Admissions taken from the queue for one pipelined round, at most.
const ADMIT_BATCH: usize = 512;

/// Settle admitted requests of one key and period, in order, as one script call settling
/// each in turn would. KEYS: rate, budget, holds. ARGV: tpm (0: none), then per request: its
/// id, actual cost, estimated tokens, actual tokens. Returns {how many were settled (the
/// others were already), spent, held, the server's time in µs}.
pub const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%d', x) end
local tpm = tonumber(ARGV[1])
local tat = 0
if tpm > 0 then
  tat = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
end
local step = math.max(math.floor(60000000 / math.max(tpm, 1)), 1)
local fields = {}
for i = 2, #ARGV, 4 do fields[#fields + 1] = 'h:' .. ARGV[i] end
local amounts = redis.call('HMGET', KEYS[2], unpack(fields))
local settled, released, added = 0, 0, 0
local gone, done_fields, done_ids = {}, {}, {}
for i = 2, #ARGV, 4 do
  if tat > 0 then
    local est, act = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    if act >= est then
      tat = math.max(tat, now) + step * (act - est)
    else
      tat = math.max(tat - step * (est - act), math.min(now, tat))
    end
  end
  local amount = amounts[(i - 2) / 4 + 1]
  -- A request named twice is settled once, as two calls in a row would.
  if amount and not gone[ARGV[i]] then
    gone[ARGV[i]] = true
    done_fields[#done_fields + 1] = 'h:' .. ARGV[i]
    done_ids[#done_ids + 1] = ARGV[i]
    released = released + tonumber(amount)
    added = added + tonumber(ARGV[i + 1])
    settled = settled + 1
  end
end
if settled > 0 then
  redis.call('HDEL', KEYS[2], unpack(done_fields))
  redis.call('ZREM', KEYS[3], unpack(done_ids))
end
if tat > 0 then
  redis.call('HSET', KEYS[1], 't', fmt(tat))
  local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
  redis.call('PEXPIRE', KEYS[1], fmt(math.floor((math.max(tat, r) - now) / 1000) + 1000))
end
if settled > 0 then
  redis.call('HINCRBY', KEYS[2], 'held', fmt(-released))
  redis.call('HINCRBY', KEYS[2], 'spent', fmt(added))
end
local v = redis.call('HMGET', KEYS[2], 'spent', 'held')
return {settled, tonumber(v[1] or '0'), tonumber(v[2] or '0'), now}
"#;

/// Settlements of one key settled by one [`SETTLE`] call, at most.
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

/// Where an admitted request's budget hold lives, for its settlement.
#[derive(Debug, Clone)]
pub(crate) struct SharedHold {
    pub key_id: String,
    pub request: String,
    pub period: Period,
    pub period_start: u64,
    pub tpm: Option<u64>,
}

/// The shared store's decision.
#[derive(Debug)]
pub(crate) enum SharedDecision {
    Admitted {
        status: RateStatus,
        hold: SharedHold,
        spent: Usd,
        held: Usd,
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
    /// Settles one request in the background (retried while the store is unreachable).
    fn settle(&self, settle: SharedSettle);
    /// The key's (spent, held) in the period starting at `period_start`, as this daemon last
    /// saw them in the store (for listings; `None`: not seen).
    fn last_seen(&self, key_id: &str, period_start: u64) -> Option<(Usd, Usd)>;
}

/// Keys whose last-seen shared spend is kept, at most (beyond: forgotten, listings fall back
/// to this daemon's own ledger).
const MAX_SEEN: usize = 10_000;

type Seen = Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, Usd, Usd)>>>;

fn see(seen: &Seen, key_id: &str, period_start: u64, spent: Usd, held: Usd) {
    let mut map = seen.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_SEEN && !map.contains_key(key_id) {
        map.clear();
    }
    // Replies of concurrent requests arrive in any order; within a period the settled spend
    // only grows, so a reply with less spent than already seen is an older one.
    if let Some((start, seen_spent, _)) = map.get(key_id) {
        if *start == period_start && spent < *seen_spent {
            return;
        }
    }
    map.insert(key_id.to_owned(), (period_start, spent, held));
}

/// [`SharedLimits`] on Redis.
pub(crate) struct RedisLimits<R: Runtime> {
    /// Admissions for the one task that decides them (see [`run_admissions`]).
    admissions: async_channel::Sender<PendingAdmit>,
    _runtime: std::marker::PhantomData<R>,
    /// Request ids: a per-process random prefix and a counter.
    prefix: String,
    next: AtomicU64,
    pending: Arc<AtomicUsize>,
    seen: Seen,
    /// Settlements for the one task that sends them (see [`drain_settles`]).
    settles: async_channel::Sender<Queued>,
}

/// A settlement waiting to be sent, and since when.
struct Queued {
    settle: SharedSettle,
    since: std::time::Instant,
}

/// Settlements sent together, at most (one write, replies read in order).
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
        rt.spawn(drain_settles(
            rt.clone(),
            redis.clone(),
            Script::new(SETTLE),
            queue,
            pending.clone(),
            seen.clone(),
        ));
        let (admissions, admission_queue) = async_channel::unbounded();
        rt.spawn(run_admissions(redis, Script::new(ADMIT), admission_queue));
        Self {
            admissions,
            _runtime: std::marker::PhantomData,
            prefix: format!("{:x}-{:x}", std::process::id(), seed),
            next: AtomicU64::new(0),
            pending,
            seen,
            settles,
        }
    }
}

/// The admission script's ARGV for one admission.
fn admit_args(request: &SharedAdmit, hold: &SharedHold) -> [String; 9] {
    let expire = request
        .budget
        .and_then(|b| b.period.end(request.now_unix))
        .map_or(0, |end| end + 86_400);
    [
        request.limits.rpm.map_or(0, u64::from).to_string(),
        request.limits.tpm.unwrap_or(0).to_string(),
        request.tokens.to_string(),
        request
            .budget
            .map_or("-1".to_owned(), |b| b.limit.0.to_string()),
        request.max_cost.0.to_string(),
        hold.request.clone(),
        HOLD_TTL.as_millis().to_string(),
        expire.to_string(),
        request.local_spent.0.to_string(),
    ]
}

/// One admission's decision from its element of the script's reply.
fn decision_of(
    reply: &Value,
    request: &SharedAdmit,
    hold: SharedHold,
) -> Result<SharedDecision, String> {
    let Value::Array(values) = reply else {
        return Err(format!("the admission script answered {reply:?}"));
    };
    {
        let field = |i| int(values, i);
        let (outcome, spent, held, now) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let tats = Tats {
            requests: field(4)?,
            tokens: field(5)?,
        };
        let limits = request.limits;
        Ok(match outcome {
            1 => {
                let budget = request.budget.unwrap_or(Budget {
                    limit: Usd::ZERO,
                    period: hold.period,
                });
                SharedDecision::Budget(BudgetRefusal {
                    spent: Usd(spent),
                    reserved: Usd(held),
                    limit: budget.limit,
                    asked: request.max_cost,
                    period: budget.period,
                    resets_at: budget.period.end(request.now_unix),
                })
            }
            2 => SharedDecision::Rate(
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
            ),
            _ => {
                let status = match ratelimit::decide(tats, limits, request.tokens, now, MINUTE_US) {
                    Ok((_, status)) => status,
                    Err(_) => ratelimit::status_of(tats, limits, now, MINUTE_US),
                };
                SharedDecision::Admitted {
                    status,
                    hold,
                    spent: Usd(spent),
                    held: Usd(held),
                }
            }
        })
    }
}

/// A queued admission and where its decision goes.
struct PendingAdmit {
    request: SharedAdmit,
    hold: SharedHold,
    reply: async_channel::Sender<Result<SharedDecision, String>>,
}

/// The one task that admits: takes what is queued (up to [`ADMIT_BATCH`]), groups it by key
/// and budget period (at most [`ADMIT_PER_CALL`] per [`ADMIT`] call, in queue order), sends
/// the round pipelined, and hands each admission its decision. Concurrent requests of one
/// key so cost Redis one script call, not one each. Ends when the limits are dropped.
async fn run_admissions<R: Runtime>(
    redis: Redis<R>,
    script: Script,
    queue: async_channel::Receiver<PendingAdmit>,
) {
    let mut batch: Vec<PendingAdmit> = Vec::new();
    loop {
        match queue.recv().await {
            Ok(first) => batch.push(first),
            Err(_) => return,
        }
        while batch.len() < ADMIT_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut groups: Vec<Vec<PendingAdmit>> = Vec::new();
        let mut open: std::collections::HashMap<(String, Period, u64), usize> =
            std::collections::HashMap::new();
        for pending in batch.drain(..) {
            let hold = &pending.hold;
            let id = (hold.key_id.clone(), hold.period, hold.period_start);
            match open.get(&id) {
                Some(&i) if groups[i].len() < ADMIT_PER_CALL => groups[i].push(pending),
                _ => {
                    open.insert(id, groups.len());
                    groups.push(vec![pending]);
                }
            }
        }
        let calls: Vec<(Vec<String>, Vec<String>)> = groups
            .iter()
            .map(|group| {
                let hold = &group[0].hold;
                let (budget_key, holds_key) =
                    budget_keys(&hold.key_id, hold.period, hold.period_start);
                let args = group
                    .iter()
                    .flat_map(|p| admit_args(&p.request, &p.hold))
                    .collect();
                (vec![rate_key(&hold.key_id), budget_key, holds_key], args)
            })
            .collect();
        let results = redis.eval_many(&script, &calls, DECISION_TIMEOUT).await;
        for (group, result) in groups.into_iter().zip(results) {
            match result {
                Ok(Value::Array(replies)) if replies.len() == group.len() => {
                    for (pending, reply) in group.into_iter().zip(&replies) {
                        let decision =
                            decision_of(reply, &pending.request, pending.hold).map_err(|why| {
                                RedisError::Command {
                                    at: redis.url().to_string(),
                                    why,
                                }
                                .to_string()
                            });
                        let _ = pending.reply.try_send(decision);
                    }
                }
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(reply) => RedisError::Command {
                            at: redis.url().to_string(),
                            why: format!("the admission script answered {reply:?}"),
                        }
                        .to_string(),
                    };
                    for pending in group {
                        let _ = pending.reply.try_send(Err(why.clone()));
                    }
                }
            }
        }
    }
}

/// The settlement script's KEYS and ARGV for `settles` (all of one key, period and tpm).
fn settle_call(settles: &[&SharedSettle]) -> (Vec<String>, Vec<String>) {
    let hold = &settles[0].hold;
    let (budget_key, holds_key) = budget_keys(&hold.key_id, hold.period, hold.period_start);
    let mut args = Vec::with_capacity(1 + 4 * settles.len());
    args.push(hold.tpm.unwrap_or(0).to_string());
    for settle in settles {
        args.push(settle.hold.request.clone());
        args.push(settle.actual.0.to_string());
        args.push(settle.estimated_tokens.to_string());
        args.push(settle.actual_tokens.to_string());
    }
    (vec![rate_key(&hold.key_id), budget_key, holds_key], args)
}

/// `batch` in groups that one [`SETTLE`] call settles: the same key, period and tpm, at most
/// [`SETTLE_PER_CALL`] each; a key's settlements keep their order.
fn settle_groups(batch: Vec<Queued>) -> Vec<Vec<Queued>> {
    let mut groups: Vec<Vec<Queued>> = Vec::new();
    let mut open: std::collections::HashMap<(String, Period, u64, Option<u64>), usize> =
        std::collections::HashMap::new();
    for queued in batch {
        let hold = &queued.settle.hold;
        let id = (
            hold.key_id.clone(),
            hold.period,
            hold.period_start,
            hold.tpm,
        );
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

/// The one task that settles: takes what is queued (up to [`SETTLE_BATCH`]), sends it in one
/// pipelined round, and keeps what Redis could not take for the next round after a pause
/// (100 ms doubling to 2 s), each settlement for at most [`SETTLE_RETRY_FOR`] (then its hold
/// is charged in full at its deadline). Ends when the limits are dropped and nothing is left.
async fn drain_settles<R: Runtime>(
    rt: R,
    redis: Redis<R>,
    script: Script,
    queue: async_channel::Receiver<Queued>,
    pending: Arc<AtomicUsize>,
    seen: Seen,
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
            let period_start = group[0].settle.hold.period_start;
            match result {
                Ok(Value::Array(values)) => {
                    see(
                        &seen,
                        &key,
                        period_start,
                        Usd(int(&values, 1).unwrap_or(0)),
                        Usd(int(&values, 2).unwrap_or(0)),
                    );
                }
                Ok(other) => {
                    tracing::warn!(key = %key, "the settlement script answered {other:?}");
                }
                Err(RedisError::Command { why, .. }) => {
                    tracing::warn!(key = %key, "settling in Redis failed: {why}");
                }
                Err(e) => {
                    let (kept, given_up): (Vec<Queued>, Vec<Queued>) = group
                        .into_iter()
                        .partition(|q| q.since.elapsed() < SETTLE_RETRY_FOR);
                    if !given_up.is_empty() {
                        tracing::warn!(
                            key = %key,
                            "{e}; gave up settling {} request(s) after {} s: their holds are \
                             charged in full when they expire",
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
        let period = request
            .budget
            .map_or(gate_core::accounting::ledger::UNBUDGETED_PERIOD, |b| {
                b.period
            });
        let hold = SharedHold {
            key_id: request.key_id.clone(),
            request: format!(
                "{}-{}",
                self.prefix,
                self.next.fetch_add(1, Ordering::Relaxed)
            ),
            period,
            period_start: period.start(request.now_unix),
            tpm: request.limits.tpm,
        };
        let seen = self.seen.clone();
        let (reply, decided) = async_channel::bounded(1);
        let key_id = request.key_id.clone();
        let queued = self.admissions.try_send(PendingAdmit {
            request,
            hold,
            reply,
        });
        Box::pin(async move {
            if queued.is_err() {
                return Err("the admission task has stopped (the daemon is stopping)".to_owned());
            }
            let decision = decided
                .recv()
                .await
                .map_err(|_| "the admission task has stopped".to_owned())??;
            if let SharedDecision::Admitted {
                hold, spent, held, ..
            } = &decision
            {
                see(&seen, &key_id, hold.period_start, *spent, *held);
            }
            Ok(decision)
        })
    }

    fn settle(&self, settle: SharedSettle) {
        if self.pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_SETTLES {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                key = %settle.hold.key_id,
                "too many settlements wait for Redis; this request's hold will be charged in \
                 full when it expires"
            );
            return;
        }
        let queued = Queued {
            settle,
            since: std::time::Instant::now(),
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../../../tests/support/store_servers.rs"]
mod store_servers;

#[cfg(test)]
mod tests {
    //! The scripts against a real `redis-server`: on random sequences of requests, the
    //! admission script decides exactly as gate-core's limiter and ledger would on the same
    //! state at the server's time, and stores the state core computes.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::store_servers;
    use super::*;
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

    async fn scripts_agree_with_core<R: Runtime>(rt: R) {
        let server = store_servers::RedisServer::start().expect("redis-server");
        let redis = Redis::new(rt.clone(), RedisUrl::parse(&server.url()).unwrap());
        let admit = Script::new(ADMIT);
        let settle = Script::new(SETTLE);
        for seed in 1..=12u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let key = format!("k{seed}");
            let limits = Limits {
                rpm: Some(1 + rng.below(20) as u32),
                tpm: Some(100 + rng.below(5000)),
            };
            let limit = 1 + rng.below(1000);
            let (rate, (budget_key, holds_key)) =
                (rate_key(&key), budget_keys(&key, Period::Day, 0));
            let (mut spent, mut held) = (0u64, 0u64);
            let mut in_flight: Vec<(String, u64, u64)> = Vec::new();
            for op in 0..40u64 {
                if rng.below(3) == 0 && !in_flight.is_empty() {
                    // One to three requests settled by one call (the settling task's batches).
                    let n = (1 + rng.below(3) as usize).min(in_flight.len());
                    let mut args = vec![limits.tpm.unwrap().to_string()];
                    let mut corrections = Vec::new();
                    for (id, amount, tokens) in in_flight.drain(..n) {
                        let actual = amount * rng.below(1001) / 1000;
                        let actual_tokens = rng.below(3000);
                        args.extend([
                            id,
                            actual.to_string(),
                            tokens.to_string(),
                            actual_tokens.to_string(),
                        ]);
                        corrections.push((tokens, actual_tokens));
                        held -= amount;
                        spent += actual;
                    }
                    let tat_before = hget(&redis, &rate, "t").await;
                    let Value::Array(reply) = redis
                        .eval(
                            &settle,
                            &[&rate, &budget_key, &holds_key],
                            &args,
                            DECISION_TIMEOUT,
                        )
                        .await
                        .unwrap()
                    else {
                        panic!("not an array");
                    };
                    assert_eq!(int(&reply, 0).unwrap(), n as u64, "seed {seed} op {op}");
                    // Each correction in turn, as core's limiter makes it.
                    let now = int(&reply, 3).unwrap();
                    let tat = corrections.iter().fold(tat_before, |tat, &(est, act)| {
                        if tat == 0 {
                            return 0;
                        }
                        ratelimit::corrected_tokens_tat(
                            tat,
                            limits.tpm.unwrap(),
                            est,
                            act,
                            now,
                            MINUTE_US,
                        )
                    });
                    assert_eq!(hget(&redis, &rate, "t").await, tat, "seed {seed} op {op}");
                    assert_eq!(
                        (int(&reply, 1).unwrap(), int(&reply, 2).unwrap()),
                        (spent, held),
                        "seed {seed} op {op}"
                    );
                } else {
                    // One to three admissions decided by one call (the admission task's
                    // batches): each as core decides it after the ones before.
                    let k = 1 + rng.below(3);
                    let mut asked = Vec::new();
                    let mut args = Vec::new();
                    for j in 0..k {
                        let (tokens, cost, id) =
                            (rng.below(2000), rng.below(400), format!("r{op}-{j}"));
                        args.extend([
                            limits.rpm.unwrap().to_string(),
                            limits.tpm.unwrap().to_string(),
                            tokens.to_string(),
                            limit.to_string(),
                            cost.to_string(),
                            id.clone(),
                            "3600000".to_owned(),
                            "0".to_owned(),
                            "0".to_owned(),
                        ]);
                        asked.push((tokens, cost, id));
                    }
                    let Value::Array(replies) = redis
                        .eval(
                            &admit,
                            &[&rate, &budget_key, &holds_key],
                            &args,
                            DECISION_TIMEOUT,
                        )
                        .await
                        .unwrap()
                    else {
                        panic!("not an array");
                    };
                    assert_eq!(replies.len() as u64, k, "seed {seed} op {op}");
                    let mut chain: Option<Tats> = None;
                    let mut last_admitted: Option<Tats> = None;
                    for (j, ((tokens, cost, id), reply)) in
                        asked.into_iter().zip(&replies).enumerate()
                    {
                        let Value::Array(reply) = reply else {
                            panic!("not an array: {reply:?}");
                        };
                        let field = |i| int(reply, i).unwrap();
                        let (outcome, now) = (field(0), field(3));
                        // Spent before, held after the decision.
                        let held_after = if outcome == 0 { held + cost } else { held };
                        assert_eq!(
                            (field(1), field(2)),
                            (spent, held_after),
                            "seed {seed} op {op}.{j}"
                        );
                        if spent + held + cost > limit {
                            assert_eq!(outcome, 1, "seed {seed} op {op}.{j}: budget");
                            continue;
                        }
                        let tats = Tats {
                            requests: field(4),
                            tokens: field(5),
                        };
                        if let Some(expected) = chain {
                            assert_eq!(tats, expected, "seed {seed} op {op}.{j}: the state before");
                        }
                        chain = Some(tats);
                        match ratelimit::decide(tats, limits, tokens, now, MINUTE_US) {
                            Ok((new, _)) => {
                                assert_eq!(outcome, 0, "seed {seed} op {op}.{j}: core admits");
                                chain = Some(new);
                                last_admitted = Some(new);
                                held += cost;
                                in_flight.push((id, cost, tokens));
                            }
                            Err(_) => {
                                assert_eq!(outcome, 2, "seed {seed} op {op}.{j}: core refuses")
                            }
                        }
                    }
                    if let Some(new) = last_admitted {
                        assert_eq!(hget(&redis, &rate, "r").await, new.requests);
                        assert_eq!(hget(&redis, &rate, "t").await, new.tokens);
                    }
                }
                assert_eq!(hget(&redis, &budget_key, "held").await, held);
                assert_eq!(hget(&redis, &budget_key, "spent").await, spent);
            }
        }
    }

    #[test]
    fn scripts_agree_with_core_on_tokio() {
        gate_runtime_tokio::block_on(scripts_agree_with_core).expect("runtime");
    }

    #[test]
    fn scripts_agree_with_core_on_smol() {
        gate_runtime_smol::block_on(scripts_agree_with_core).expect("runtime");
    }
}
