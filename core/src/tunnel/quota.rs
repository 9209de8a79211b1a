//! Quotas of the daemons a relay admits: per account (a registration token, or in open and
//! allowlist modes the node itself) how many forwarded connections may be open at once, how
//! many bytes they may carry per day, and how many ACME challenge records may be asked for per
//! hour. Custom names per account are decided by the name table ([`super::RelayNameTable`]).
//!
//! Owns: [`Quota`], [`Quotas`] (which quota an account gets), [`QuotaLedger`] (what each
//! account uses now, in fixed windows, time as input) and the refusal texts. Must not: read
//! clocks or know about sockets; the relay calls it at each connection and ACME request.
//!
//! Windows are fixed and start at an account's first use: bytes per 24 hours, ACME requests
//! per hour. Bytes are counted as a connection reports them (the relay does so when a
//! forwarded connection ends); a connection is refused while the account's window is used up.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use super::access::Account;

/// The bandwidth window.
pub const BYTES_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The ACME request window.
pub const ACME_WINDOW: Duration = Duration::from_secs(60 * 60);

/// One account's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Custom names the account's daemons may hold (each daemon holds at most one).
    pub custom_names: Option<u32>,
    /// Forwarded connections open at once.
    pub connections: Option<u32>,
    /// Bytes forwarded (both directions) per 24 hours.
    pub bytes_per_day: Option<u64>,
    /// ACME challenge record requests per hour.
    pub acme_requests_per_hour: Option<u32>,
}

/// Which quota each account gets: a token's own (`access.quotas.<name>`, whose unset fields the
/// configuration fills from the default), else the default (`access.default_quota`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quotas {
    /// For every account without a quota of its own.
    pub default: Quota,
    /// Per token name.
    pub per_token: BTreeMap<String, Quota>,
}

impl Quotas {
    /// The quota of `account`.
    pub fn for_account(&self, account: &Account) -> Quota {
        match account {
            Account::Token(name) => self.per_token.get(name).copied().unwrap_or(self.default),
            Account::Node(_) => self.default,
        }
    }
}

/// Why a quota refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// Too many forwarded connections open at once.
    Connections {
        /// Whose.
        account: Account,
        /// The limit.
        max: u32,
    },
    /// The day's bytes are used up.
    Bandwidth {
        /// Whose.
        account: Account,
        /// The limit.
        max: u64,
        /// When the window ends.
        retry_after: Duration,
    },
    /// Too many ACME requests this hour.
    Acme {
        /// Whose.
        account: Account,
        /// The limit.
        max: u32,
        /// When the window ends.
        retry_after: Duration,
    },
}

impl fmt::Display for QuotaRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaRefusal::Connections { account, max } => write!(
                f,
                "{account} has {max} forwarded connections open, its quota \
                 (access quota `connections`); the connection is refused"
            ),
            QuotaRefusal::Bandwidth {
                account,
                max,
                retry_after,
            } => write!(
                f,
                "{account} has used its {max} bytes for the day (access quota `bytes_per_day`); \
                 connections are refused for {} s more",
                retry_after.as_secs().max(1)
            ),
            QuotaRefusal::Acme {
                account,
                max,
                retry_after,
            } => write!(
                f,
                "ACME challenge refused: {account} asked for {max} records this hour, its quota \
                 (access quota `acme_requests_per_hour`); try again in {} s",
                retry_after.as_secs().max(1)
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    used: u64,
}

impl Window {
    /// The window at `now`, restarted when `length` has passed.
    fn current(slot: &mut Option<Window>, now: Instant, length: Duration) -> &mut Window {
        let window = slot.get_or_insert(Window {
            start: now,
            used: 0,
        });
        if now.saturating_duration_since(window.start) >= length {
            *window = Window {
                start: now,
                used: 0,
            };
        }
        window
    }

    fn retry_after(&self, now: Instant, length: Duration) -> Duration {
        length.saturating_sub(now.saturating_duration_since(self.start))
    }
}

#[derive(Debug, Clone, Default)]
struct Usage {
    open: u32,
    bytes: Option<Window>,
    acme: Option<Window>,
}

/// What one account uses now (for `gate-relay status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageView {
    /// Forwarded connections open.
    pub connections: u32,
    /// Bytes counted in the current 24-hour window.
    pub bytes_today: u64,
    /// ACME requests in the current hour.
    pub acme_this_hour: u32,
}

/// What each account uses, against its [`Quota`]. Sans-IO: time comes in as an argument.
/// Memory: one small entry per account in use; [`QuotaLedger::prune`] drops idle ones.
#[derive(Debug, Clone, Default)]
pub struct QuotaLedger {
    accounts: HashMap<Account, Usage>,
}

impl QuotaLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A forwarded connection for `account` wants to open at `now`: counted and admitted, or
    /// refused (nothing counted). Pair every `Ok` with [`QuotaLedger::close_connection`].
    pub fn open_connection(
        &mut self,
        account: &Account,
        quota: &Quota,
        now: Instant,
    ) -> Result<(), QuotaRefusal> {
        let usage = self.accounts.entry(account.clone()).or_default();
        if let Some(max) = quota.connections {
            if usage.open >= max {
                return Err(QuotaRefusal::Connections {
                    account: account.clone(),
                    max,
                });
            }
        }
        if let Some(max) = quota.bytes_per_day {
            let window = Window::current(&mut usage.bytes, now, BYTES_WINDOW);
            if window.used >= max {
                return Err(QuotaRefusal::Bandwidth {
                    account: account.clone(),
                    max,
                    retry_after: window.retry_after(now, BYTES_WINDOW),
                });
            }
        }
        usage.open = usage.open.saturating_add(1);
        Ok(())
    }

    /// A connection admitted by [`QuotaLedger::open_connection`] ended.
    pub fn close_connection(&mut self, account: &Account) {
        if let Some(usage) = self.accounts.get_mut(account) {
            usage.open = usage.open.saturating_sub(1);
        }
    }

    /// `bytes` were forwarded for `account` by `now`.
    pub fn record_bytes(&mut self, account: &Account, bytes: u64, now: Instant) {
        let usage = self.accounts.entry(account.clone()).or_default();
        let window = Window::current(&mut usage.bytes, now, BYTES_WINDOW);
        window.used = window.used.saturating_add(bytes);
    }

    /// An ACME challenge record request of `account` at `now`: counted and admitted, or
    /// refused (nothing counted).
    pub fn acme_request(
        &mut self,
        account: &Account,
        quota: &Quota,
        now: Instant,
    ) -> Result<(), QuotaRefusal> {
        let usage = self.accounts.entry(account.clone()).or_default();
        let window = Window::current(&mut usage.acme, now, ACME_WINDOW);
        if let Some(max) = quota.acme_requests_per_hour {
            if window.used >= u64::from(max) {
                return Err(QuotaRefusal::Acme {
                    account: account.clone(),
                    max,
                    retry_after: window.retry_after(now, ACME_WINDOW),
                });
            }
        }
        window.used = window.used.saturating_add(1);
        Ok(())
    }

    /// What `account` uses at `now`.
    pub fn usage(&self, account: &Account, now: Instant) -> UsageView {
        let Some(usage) = self.accounts.get(account) else {
            return UsageView::default();
        };
        let live = |window: &Option<Window>, length: Duration| {
            window
                .filter(|w| now.saturating_duration_since(w.start) < length)
                .map_or(0, |w| w.used)
        };
        UsageView {
            connections: usage.open,
            bytes_today: live(&usage.bytes, BYTES_WINDOW),
            acme_this_hour: u32::try_from(live(&usage.acme, ACME_WINDOW)).unwrap_or(u32::MAX),
        }
    }

    /// Drops accounts with nothing open and no window still running at `now`.
    pub fn prune(&mut self, now: Instant) {
        self.accounts.retain(|_, usage| {
            let running = |window: &Option<Window>, length: Duration| {
                window.is_some_and(|w| now.saturating_duration_since(w.start) < length)
            };
            usage.open > 0
                || running(&usage.bytes, BYTES_WINDOW)
                || running(&usage.acme, ACME_WINDOW)
        });
    }

    /// Accounts remembered now.
    pub fn tracked(&self) -> usize {
        self.accounts.len()
    }
}
