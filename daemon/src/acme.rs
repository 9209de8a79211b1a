//! ACME DNS-01 for the daemon's relay names (DESIGN.md §4): an account key persisted in the
//! state directory, orders through instant-acme over Gate's own HTTP client (so it runs on
//! both runtimes), TXT records published through a [`ChallengeSetter`] (the relay, in
//! production), the certificate stored and swapped into [`CertStore`], renewal before expiry
//! with retries and exponential backoff, and a status for `gate status`, the UI and `/metrics`.
//!
//! Owns: the order flow and the renewal schedule. Must not: write DNS itself, use instant-acme's
//! own polling helpers (they sleep on tokio's timer and would panic under smol), or log keys.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gate_core::config::LetsEncryptConfig;
use gate_rt::client::{http_client, ClientSettings};
use gate_rt::Runtime;
use http_body_util::{BodyExt, Limited};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::certs::{CertInfo, CertStore};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Largest ACME server answer read, in bytes.
pub const MAX_ACME_RESPONSE_BYTES: usize = 1024 * 1024;

/// Publishes and removes the `_acme-challenge` TXT records (through the relay in production).
pub trait ChallengeSetter: Send + Sync + 'static {
    /// Publishes `TXT record_name = value`; returns once it is in place, or the reason why not.
    fn set(
        &self,
        record_name: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes the records named `record_name`.
    fn clear(&self, record_name: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// Why getting a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME server: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("publishing the DNS challenge for {name} failed: {reason}")]
    Challenge { name: String, reason: String },
    #[error("the ACME server offers no dns-01 challenge for {0}")]
    NoDnsChallenge(String),
    #[error("the authorization for {name} is {status}")]
    Authorization { name: String, status: String },
    #[error("the order became {0} (a challenge failed validation?)")]
    OrderFailed(String),
    #[error("the ACME server did not finish within {0:?}")]
    Timeout(Duration),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("stored ACME account {path} does not parse: {reason}")]
    Account { path: String, reason: String },
    #[error("could not make the certificate request: {0}")]
    Csr(String),
    #[error("the issued certificate could not be used: {0}")]
    Cert(#[from] crate::certs::CertError),
    #[error("letsencrypt.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// How to run ACME.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// ACME directory URL.
    pub directory_url: String,
    /// Account contact e-mail.
    pub email: Option<String>,
    /// Names to order (relay names, then `letsencrypt.domains`).
    pub names: Vec<String>,
    /// Renew when the certificate expires within this (`auto_renew_days`).
    pub renew_before: Duration,
    /// First retry delay after a failure; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Delay between polls of the order.
    pub poll_interval: Duration,
    /// Give up on an order after this long.
    pub order_timeout: Duration,
    /// Extra trusted roots for the ACME server's HTTPS (`letsencrypt.ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl AcmeSettings {
    /// From `[letsencrypt]` and the names to order. Reads `ca_file` when set.
    pub fn from_config(config: &LetsEncryptConfig, names: Vec<String>) -> Result<Self, AcmeError> {
        let directory_url = match &config.directory_url {
            Some(url) if !url.trim().is_empty() => url.trim().to_owned(),
            _ if config.staging => LETS_ENCRYPT_STAGING.to_owned(),
            _ => LETS_ENCRYPT_PRODUCTION.to_owned(),
        };
        let extra_roots = match &config.ca_file {
            Some(path) if !path.trim().is_empty() => load_roots(Path::new(path))?,
            _ => Vec::new(),
        };
        Ok(Self {
            directory_url,
            email: config.email.clone(),
            names,
            renew_before: Duration::from_secs(u64::from(config.auto_renew_days) * 86_400),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
            poll_interval: Duration::from_secs(2),
            order_timeout: Duration::from_secs(300),
            extra_roots,
        })
    }
}

/// Reads every certificate of a PEM file as a trusted root.
pub fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    let ca_err = |reason: String| AcmeError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if roots.is_empty() {
        return Err(ca_err("no certificate in the file".into()));
    }
    Ok(roots)
}

/// What ACME is doing, for `gate status`, the web UI and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcmeStatus {
    /// The certificate served now.
    pub certificate: Option<CertInfo>,
    /// The last failure, cleared by a success.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When the last attempt ended.
    pub last_attempt: Option<SystemTime>,
    /// When the last certificate was obtained.
    pub last_success: Option<SystemTime>,
    /// When the next attempt is due.
    pub next_attempt: Option<SystemTime>,
}

/// instant-acme's HTTP client trait over Gate's client (both runtimes).
pub struct AcmeHttp<R: Runtime> {
    client: gate_rt::client::HttpClient<R, BodyWrapper<Bytes>>,
}

impl<R: Runtime> AcmeHttp<R> {
    /// A client trusting the Mozilla roots plus `extra_roots`.
    pub fn new(rt: R, extra_roots: Vec<CertificateDer<'static>>) -> Self {
        let settings = ClientSettings {
            extra_roots,
            ..ClientSettings::default()
        };
        Self {
            client: http_client(rt, &settings),
        }
    }
}

impl<R: Runtime> instant_acme::HttpClient for AcmeHttp<R> {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.client.request(req);
        Box::pin(async move {
            let response = fut
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_ACME_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(instant_acme::Error::Other)?
                .to_bytes();
            Ok(BytesResponse {
                parts,
                body: Box::new(bytes),
            })
        })
    }
}

/// Gets and renews the daemon's certificate.
pub struct AcmeManager<R: Runtime, S: ChallengeSetter> {
    rt: R,
    settings: AcmeSettings,
    setter: Arc<S>,
    store: Arc<CertStore>,
    account_path: PathBuf,
    status: Arc<Mutex<AcmeStatus>>,
    stopped: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
}

impl<R: Runtime, S: ChallengeSetter> Clone for AcmeManager<R, S> {
    fn clone(&self) -> Self {
        Self {
            rt: self.rt.clone(),
            settings: self.settings.clone(),
            setter: self.setter.clone(),
            store: self.store.clone(),
            account_path: self.account_path.clone(),
            status: self.status.clone(),
            stopped: self.stopped.clone(),
            running: self.running.clone(),
        }
    }
}

impl<R: Runtime, S: ChallengeSetter> AcmeManager<R, S> {
    /// A manager storing its account in `<state_dir>/acme/account.json` (mode 0600).
    pub fn new(
        rt: R,
        state_dir: &Path,
        settings: AcmeSettings,
        setter: Arc<S>,
        store: Arc<CertStore>,
    ) -> Self {
        let status = AcmeStatus {
            certificate: Some(store.info()),
            ..AcmeStatus::default()
        };
        Self {
            rt,
            settings,
            setter,
            store,
            account_path: state_dir.join("acme").join("account.json"),
            status: Arc::new(Mutex::new(status)),
            stopped: Arc::new(AtomicBool::new(false)),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The current status.
    pub fn status(&self) -> AcmeStatus {
        self.lock_status().clone()
    }

    /// The certificate store this manager fills.
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Asks [`AcmeManager::run`] to return at its next wake-up (after an attempt in flight).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether [`AcmeManager::run`] is still looping.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// When the certificate now served should be renewed: now for the self-signed stand-in or
    /// one that lacks a wanted name, else `renew_before` ahead of its expiry.
    pub fn renewal_due(&self, now: SystemTime) -> SystemTime {
        let info = self.store.info();
        if info.self_signed || !covers(&info.names, &self.settings.names) {
            return now;
        }
        info.not_after
            .checked_sub(self.settings.renew_before)
            .unwrap_or(now)
    }

    /// Obtains (or renews) the certificate once, records the outcome in the status.
    /// The whole attempt is bounded by `order_timeout` (records a timed-out attempt leaves
    /// behind are removed by the relay after their lifetime).
    pub async fn renew_now(&self) -> Result<CertInfo, AcmeError> {
        let limit = self.settings.order_timeout;
        let result = match gate_rt::timeout(&self.rt, limit, self.obtain()).await {
            Ok(result) => result,
            Err(_) => Err(AcmeError::Timeout(limit)),
        };
        let now = SystemTime::now();
        let mut status = self.lock_status();
        status.last_attempt = Some(now);
        match &result {
            Ok(info) => {
                status.certificate = Some(info.clone());
                status.last_error = None;
                status.consecutive_failures = 0;
                status.last_success = Some(now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "getting a certificate failed; keeping the current one");
                status.last_error = Some(e.to_string());
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            }
        }
        result
    }

    /// Keeps the certificate fresh until [`AcmeManager::stop`]: obtains one now if serving the
    /// self-signed stand-in, renews `renew_before` ahead of expiry, retries failures with
    /// exponential backoff (`retry_initial` doubling up to `retry_max`).
    pub async fn run(self) {
        /// Re-check the schedule at least this often (wall-clock jumps, stop requests).
        const MAX_NAP: Duration = Duration::from_secs(3600);
        self.running.store(true, Ordering::SeqCst);
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                self.running.store(false, Ordering::SeqCst);
                return;
            }
            let now = SystemTime::now();
            let failures = self.lock_status().consecutive_failures;
            let due = if failures > 0 {
                let backoff = backoff(
                    self.settings.retry_initial,
                    self.settings.retry_max,
                    failures,
                );
                self.lock_status()
                    .last_attempt
                    .map(|t| t + backoff)
                    .unwrap_or(now)
            } else {
                self.renewal_due(now)
            };
            self.lock_status().next_attempt = Some(due);
            match due.duration_since(now) {
                Ok(wait) if !wait.is_zero() => {
                    self.rt.sleep(wait.min(MAX_NAP)).await;
                    continue;
                }
                _ => {}
            }
            let _ = self.renew_now().await;
        }
    }

    async fn obtain(&self) -> Result<CertInfo, AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .settings
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut published: Vec<String> = Vec::new();
        let result = self.complete(&mut order, &mut published).await;
        for record in &published {
            if let Err(reason) = self.setter.clear(record).await {
                tracing::warn!(record = %record, %reason, "could not remove an ACME TXT record");
            }
        }
        let (chain_pem, key_pem) = result?;
        Ok(self.store.install(&chain_pem, &key_pem)?)
    }

    async fn complete(
        &self,
        order: &mut instant_acme::Order,
        published: &mut Vec<String>,
    ) -> Result<(String, String), AcmeError> {
        let deadline = SystemTime::now() + self.settings.order_timeout;
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                let name = authz.identifier().to_string();
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(AcmeError::Authorization {
                            name,
                            status: format!("{other:?}").to_lowercase(),
                        })
                    }
                }
                let base = name.trim_start_matches("*.").to_owned();
                let mut challenge = authz
                    .challenge(ChallengeType::Dns01)
                    .ok_or_else(|| AcmeError::NoDnsChallenge(name.clone()))?;
                let record = format!("_acme-challenge.{base}");
                let value = challenge.key_authorization().dns_value();
                self.setter
                    .set(&record, &value)
                    .await
                    .map_err(|reason| AcmeError::Challenge {
                        name: record.clone(),
                        reason,
                    })?;
                if !published.contains(&record) {
                    published.push(record);
                }
                challenge.set_ready().await?;
            }
        }
        // Wait until every authorization is validated.
        loop {
            let state = order.refresh().await?;
            match state.status {
                OrderStatus::Ready => break,
                OrderStatus::Pending => {}
                OrderStatus::Invalid => {
                    let detail = state
                        .error
                        .as_ref()
                        .map(|p| format!("invalid: {p}"))
                        .unwrap_or_else(|| "invalid".into());
                    return Err(AcmeError::OrderFailed(detail));
                }
                OrderStatus::Valid | OrderStatus::Processing => break,
            }
            self.wait_poll(deadline).await?;
        }
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Csr(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(self.settings.names.clone())
            .map_err(|e| AcmeError::Csr(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Csr(e.to_string()))?;
        if order.state().status == OrderStatus::Ready {
            order.finalize_csr(csr.der()).await?;
        }
        let chain = loop {
            if let Some(chain) = order.certificate().await? {
                break chain;
            }
            self.wait_poll(deadline).await?;
        };
        Ok((chain, key.serialize_pem()))
    }

    async fn wait_poll(&self, deadline: SystemTime) -> Result<(), AcmeError> {
        if SystemTime::now() >= deadline {
            return Err(AcmeError::Timeout(self.settings.order_timeout));
        }
        self.rt.sleep(self.settings.poll_interval).await;
        Ok(())
    }

    /// Loads the stored account, or creates one and stores it (mode 0600).
    async fn account(&self) -> Result<Account, AcmeError> {
        let http = || -> Box<dyn instant_acme::HttpClient> {
            Box::new(AcmeHttp::new(
                self.rt.clone(),
                self.settings.extra_roots.clone(),
            ))
        };
        let path = &self.account_path;
        match std::fs::read(path) {
            Ok(bytes) => {
                let credentials: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|e| AcmeError::Account {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                return Ok(Account::builder_with_http(http())
                    .from_credentials(credentials)
                    .await?);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AcmeError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(http())
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory_url.clone(),
                None,
            )
            .await?;
        let json = serde_json::to_vec(&credentials).map_err(|e| AcmeError::Account {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_private(path, &json)?;
        tracing::info!(directory = %self.settings.directory_url, "created an ACME account");
        Ok(account)
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, AcmeStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a certificate for `have` covers every name in `want` (exact names, or a wildcard
/// `*.parent` for a one-label child).
pub fn covers(have: &[String], want: &[String]) -> bool {
    want.iter().all(|w| {
        have.iter().any(|h| {
            h.eq_ignore_ascii_case(w)
                || h.strip_prefix("*.").is_some_and(|parent| {
                    w.split_once('.')
                        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(parent))
                })
        })
    })
}

/// `initial * 2^(failures-1)`, at most `max`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    initial.saturating_mul(1u32 << exponent).min(max)
}

/// Writes a private file (the account key) with the one atomic write: mode 0600, fsync of
/// the file and of its directory ([`gate_rt::fs::write_atomic`]).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let io = |source: std::io::Error| AcmeError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    gate_rt::fs::write_atomic(path, bytes, 0o600, gate_rt::fs::Durability::Durable).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(60), s(3600), 1), s(60));
        assert_eq!(backoff(s(60), s(3600), 2), s(120));
        assert_eq!(backoff(s(60), s(3600), 3), s(240));
        assert_eq!(backoff(s(60), s(3600), 10), s(3600));
        assert_eq!(backoff(s(60), s(3600), u32::MAX), s(3600));
    }

    #[test]
    fn coverage_of_names() {
        let v = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(covers(&v(&["a.x.test", "b.x.test"]), &v(&["a.x.test"])));
        assert!(!covers(&v(&["a.x.test"]), &v(&["a.x.test", "b.x.test"])));
        assert!(covers(&v(&["*.x.test"]), &v(&["b.x.test"])));
        assert!(!covers(&v(&["*.x.test"]), &v(&["c.b.x.test"])));
        assert!(covers(&v(&["A.x.test"]), &v(&["a.x.test"])));
    }

    #[test]
    fn directory_follows_the_config() {
        let mut config = LetsEncryptConfig {
            enabled: true,
            email: None,
            staging: false,
            domains: vec![],
            auto_renew_days: 30,
            directory_url: None,
            ca_file: None,
        };
        let names = vec!["a.example.test".to_owned()];
        let s = AcmeSettings::from_config(&config, names.clone()).expect("settings");
        assert_eq!(s.directory_url, LETS_ENCRYPT_PRODUCTION);
        assert_eq!(s.renew_before, Duration::from_secs(30 * 86_400));
        config.staging = true;
        let s = AcmeSettings::from_config(&config, names.clone()).expect("settings");
        assert_eq!(s.directory_url, LETS_ENCRYPT_STAGING);
        config.directory_url = Some("https://localhost:14000/dir".into());
        let s = AcmeSettings::from_config(&config, names.clone()).expect("settings");
        assert_eq!(s.directory_url, "https://localhost:14000/dir");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            AcmeSettings::from_config(&config, names),
            Err(AcmeError::CaFile { .. })
        ));
    }
}
