//! Accounting: what a key may do and what it used, as plain data and pure decisions.
//!
//! - [`policy`]: a key's policy (allowed models, requests and tokens per minute, a spend
//!   budget per period, owner) and the model-name globs it is written in;
//! - [`money`]: amounts of US dollars as integer nano-dollars (no float drift in sums);
//! - [`period`]: the start of a budget period (UTC day, ISO week, calendar month, total)
//!   from a Unix time, without a calendar library;
//! - [`record`]: one request's usage record, as the daemon logs it;
//! - [`prices`]: the built-in price table (`prices.toml`) and the cost of a request;
//! - [`ledger`]: spent and reserved per key and period (budgets that cannot be overrun);
//! - [`ratelimit`]: requests and tokens per minute per key (GCRA);
//! - [`lease`]: how much of a shared budget or rate limit a daemon leases at once;
//! - [`estimate`]: input tokens and the output bound of a request before it is forwarded.
//!
//! Time always arrives as an argument (Unix seconds or an `Instant` the caller read).

pub mod estimate;
pub mod lease;
pub mod ledger;
pub mod money;
pub mod period;
pub mod policy;
pub mod prices;
pub mod ratelimit;
pub mod record;

pub use ledger::{BudgetRefusal, KeySpend, Ledger, Reservation};
pub use money::Usd;
pub use period::Period;
pub use policy::{Budget, KeyPolicy, ModelPatterns};
pub use prices::{cost, Price, PriceTable, TokenCounts};
pub use ratelimit::{Limited, Limits, RateLimiter, RateRefusal, RateStatus, Tats, Window};
pub use record::UsageRecord;
