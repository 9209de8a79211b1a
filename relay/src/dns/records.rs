//! [`ChallengeRecords`]: the ACME TXT records the relay wrote for its daemons.
//!
//! Owns: writing `_acme-challenge.<name>` through the provider and answering when it is in
//! place, deleting on request, after [`ChallengeSettings::lifetime`], and when the owning
//! daemon disconnects. Must not: check that the daemon owns the name (the caller passes only
//! names `RelaySession` accepted) or hold its lock across a provider call.
//! Memory: at most [`ChallengeSettings::max_records`] records at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gate_core::config::DnsConfig;
use gate_rt::Runtime;

use super::{Cloudflare, CloudflareSettings, DnsError, DnsProvider};

/// Prefix every record name must have.
const PREFIX: &str = "_acme-challenge.";

/// Tuning of [`ChallengeRecords`].
#[derive(Debug, Clone)]
pub struct ChallengeSettings {
    /// Records still present after this long are deleted (default 10 minutes).
    pub lifetime: Duration,
    /// Wait this long after the provider accepted a record before answering, so that it reaches
    /// the zone's name servers before the CA looks (default 5 s; tests use 0).
    pub propagation_delay: Duration,
    /// At most this many records at once, all daemons together (default 4096).
    pub max_records: usize,
}

impl Default for ChallengeSettings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(600),
            propagation_delay: Duration::from_secs(5),
            max_records: 4096,
        }
    }
}

/// Why a challenge request was not done; `Display` is the answer sent to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// DNS is turned off on this relay.
    #[error("this relay does not publish ACME DNS records: {0}")]
    Disabled(String),
    /// Not an `_acme-challenge.` name.
    #[error("`{0}` is not an _acme-challenge record name")]
    NotAChallengeName(String),
    /// Too many records at once.
    #[error("the relay holds too many ACME records at once (at most {0}); try again later")]
    Full(usize),
    /// The provider failed.
    #[error("{0}")]
    Provider(#[from] DnsError),
}

struct Written {
    owner: String,
    value: String,
    record_id: String,
    /// Distinguishes this write from a later one of the same name, for the expiry timer.
    generation: u64,
}

struct State {
    records: HashMap<String, Vec<Written>>,
    next_generation: u64,
}

struct Inner<P> {
    provider: Result<P, String>,
    settings: ChallengeSettings,
    state: Mutex<State>,
}

/// The relay's ACME TXT records. Cheap to clone; clones share the records.
pub struct ChallengeRecords<R: Runtime, P: DnsProvider> {
    rt: R,
    inner: Arc<Inner<P>>,
}

impl<R: Runtime, P: DnsProvider> Clone for ChallengeRecords<R, P> {
    fn clone(&self) -> Self {
        Self {
            rt: self.rt.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime> ChallengeRecords<R, Cloudflare<R>> {
    /// From `[dns]`: with `enabled = false` (or an unusable provider configuration) every
    /// request is refused with the reason.
    pub fn from_config(rt: R, config: &DnsConfig, settings: ChallengeSettings) -> Self {
        let provider = if !config.enabled {
            Err("dns.enabled is false in the relay's configuration".to_owned())
        } else {
            CloudflareSettings::from_config(&config.cloudflare)
                .map(|s| Cloudflare::new(rt.clone(), s))
                .map_err(|e| e.to_string())
        };
        Self::with_provider(rt, provider, settings)
    }
}

impl<R: Runtime, P: DnsProvider> ChallengeRecords<R, P> {
    /// A manager over `provider`, or refusing everything with the `Err` reason.
    pub fn with_provider(rt: R, provider: Result<P, String>, settings: ChallengeSettings) -> Self {
        Self {
            rt,
            inner: Arc::new(Inner {
                provider,
                settings,
                state: Mutex::new(State {
                    records: HashMap::new(),
                    next_generation: 0,
                }),
            }),
        }
    }

    /// Whether requests are served (false when DNS is disabled).
    pub fn enabled(&self) -> bool {
        self.inner.provider.is_ok()
    }

    /// Why requests are refused (DNS disabled, or the provider's settings unusable); `None`
    /// when they are served.
    pub fn problem(&self) -> Option<String> {
        self.inner.provider.as_ref().err().cloned()
    }

    /// Publishes `TXT name = value` for the daemon `owner` (its node id) and returns once the
    /// provider has it (plus the propagation delay). Setting a value already set is success.
    pub async fn set(&self, owner: &str, name: &str, value: &str) -> Result<(), ChallengeError> {
        let provider = self.provider()?;
        let name = normalize(name)?;
        let value = super::unquote_txt(value).to_owned();
        {
            let state = self.lock();
            if let Some(list) = state.records.get(&name) {
                if list.iter().any(|w| w.value == value) {
                    return Ok(());
                }
            }
            let total: usize = state.records.values().map(Vec::len).sum();
            if total >= self.inner.settings.max_records {
                return Err(ChallengeError::Full(self.inner.settings.max_records));
            }
        }
        let record_id = provider.create_txt(&name, &value).await?;
        let generation = {
            let mut state = self.lock();
            let generation = state.next_generation;
            state.next_generation = state.next_generation.wrapping_add(1);
            state
                .records
                .entry(name.clone())
                .or_default()
                .push(Written {
                    owner: owner.to_owned(),
                    value,
                    record_id,
                    generation,
                });
            generation
        };
        tracing::info!(record = %name, node = %owner, "ACME TXT record published");
        let this = self.clone();
        let expiry_name = name.clone();
        self.rt.spawn(async move {
            this.rt.sleep(this.inner.settings.lifetime).await;
            this.expire(&expiry_name, generation).await;
        });
        if !self.inner.settings.propagation_delay.is_zero() {
            self.rt.sleep(self.inner.settings.propagation_delay).await;
        }
        Ok(())
    }

    /// Deletes every record named `name` (the daemon's "clear" or the relay session's cleanup).
    /// Deleting what is not there is success.
    pub async fn clear(&self, name: &str) -> Result<(), ChallengeError> {
        let provider = self.provider()?;
        let name = normalize(name)?;
        let written = self.lock().records.remove(&name).unwrap_or_default();
        delete_all(provider, &name, written).await
    }

    /// Deletes every record written for `owner`: call it when the daemon's connection ends.
    /// Errors are logged; the records are forgotten either way.
    pub async fn owner_disconnected(&self, owner: &str) {
        let Ok(provider) = self.provider() else {
            return;
        };
        let mut removed: Vec<(String, Vec<Written>)> = Vec::new();
        {
            let mut state = self.lock();
            for (name, list) in state.records.iter_mut() {
                let (mine, others): (Vec<Written>, Vec<Written>) =
                    list.drain(..).partition(|w| w.owner == owner);
                *list = others;
                if !mine.is_empty() {
                    removed.push((name.clone(), mine));
                }
            }
            state.records.retain(|_, list| !list.is_empty());
        }
        for (name, written) in removed {
            if let Err(e) = delete_all(provider, &name, written).await {
                tracing::warn!(record = %name, error = %e, "could not delete an ACME TXT record of a disconnected daemon");
            }
        }
    }

    /// Carries out a `RelayEvent::DnsSet` / `DnsClear` of the session of daemon `owner`.
    /// Returns `Some((request_id, outcome))` to pass to `RelaySession::complete_acme` when the
    /// daemon asked (the outcome's `Err` is the clear answer for the daemon), `None` for the
    /// relay's own cleanups and for other events. A set can take the propagation delay: run it
    /// in a spawned task, not in the control loop.
    pub async fn apply_event(
        &self,
        owner: &str,
        event: &gate_core::tunnel::RelayEvent,
    ) -> Option<(u64, Result<(), String>)> {
        use gate_core::tunnel::RelayEvent;
        match event {
            RelayEvent::DnsSet {
                request_id,
                name,
                txt_value,
            } => {
                let outcome = self.set(owner, name, txt_value).await;
                if let Err(e) = &outcome {
                    tracing::warn!(record = %name, node = %owner, error = %e, "ACME TXT record not published");
                }
                Some((*request_id, outcome.map_err(|e| e.to_string())))
            }
            RelayEvent::DnsClear { request_id, name } => {
                let outcome = self.clear(name).await;
                if let Err(e) = &outcome {
                    tracing::warn!(record = %name, node = %owner, error = %e, "ACME TXT record not deleted");
                }
                request_id.map(|id| (id, outcome.map_err(|e| e.to_string())))
            }
            _ => None,
        }
    }

    /// Names with records currently held (for status and tests).
    pub fn record_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().records.keys().cloned().collect();
        names.sort();
        names
    }

    async fn expire(&self, name: &str, generation: u64) {
        let Ok(provider) = self.provider() else {
            return;
        };
        let expired: Vec<Written> = {
            let mut state = self.lock();
            let Some(list) = state.records.get_mut(name) else {
                return;
            };
            let (old, keep): (Vec<Written>, Vec<Written>) =
                list.drain(..).partition(|w| w.generation == generation);
            *list = keep;
            if list.is_empty() {
                state.records.remove(name);
            }
            old
        };
        if expired.is_empty() {
            return;
        }
        tracing::info!(record = %name, "ACME TXT record outlived its lifetime; deleting it");
        if let Err(e) = delete_all(provider, name, expired).await {
            tracing::warn!(record = %name, error = %e, "could not delete an expired ACME TXT record");
        }
    }

    fn provider(&self) -> Result<&P, ChallengeError> {
        self.inner
            .provider
            .as_ref()
            .map_err(|reason| ChallengeError::Disabled(reason.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters here, so a poisoned lock is still used.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn delete_all<P: DnsProvider>(
    provider: &P,
    name: &str,
    written: Vec<Written>,
) -> Result<(), ChallengeError> {
    let mut first_error = None;
    for w in written {
        if let Err(e) = provider.delete_txt(name, &w.record_id).await {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn normalize(name: &str) -> Result<String, ChallengeError> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if !name.starts_with(PREFIX) || name.len() <= PREFIX.len() {
        return Err(ChallengeError::NotAChallengeName(name));
    }
    Ok(name)
}
