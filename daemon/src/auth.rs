//! Client authentication: Gate API keys (stored only as SHA-256 hashes in
//! `<state_dir>/tokens.json`) and JWTs signed HS256 with `auth.jwt.secret`.
//!
//! Invariants: a token's plaintext exists only in the output of `gate token create`; the
//! store holds hashes. JWT verification pins HS256 (so `alg: none` and every other
//! algorithm are refused), checks the issuer and the expiry. Nothing here logs a token.
//! Every change of `tokens.json` re-reads it under its exclusive lock
//! ([`crate::state::lock`]), so concurrent `gate token create` runs and the daemon never
//! lose each other's keys.

use gate_rt::tunnel::support::unix_now;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use gate_core::accounting::{Budget, KeyPolicy, ModelPatterns, Period, Usd};

use crate::state;

/// Prefix of Gate API keys; makes them recognisable in a leaked-secret scan.
pub const TOKEN_PREFIX: &str = "gk_";

/// One stored API key (never the key itself).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// Short public identifier, used by `gate token revoke ID`.
    pub id: String,
    /// A label chosen by the user.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Expiry, seconds since the Unix epoch, if any.
    pub expires_at: Option<u64>,
    /// What the key may do (models, rate, budget, owner); absent: no limit.
    #[serde(default, skip_serializing_if = "KeyPolicy::is_default")]
    pub policy: KeyPolicy,
}

/// A change to a key's name, expiry or policy; `None` leaves a field as it is, `Some(None)`
/// removes a limit. Checked as a whole before anything is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyEdit {
    pub name: Option<String>,
    /// Lifetime from now in seconds; `Some(None)`: never expires.
    pub expires_in: Option<Option<u64>>,
    /// Allowed models; an empty list allows every model.
    pub models: Option<ModelPatterns>,
    pub rpm: Option<Option<u32>>,
    pub tpm: Option<Option<u64>>,
    /// The budget's amount; its period is `period` or the key's current one (default month).
    pub budget: Option<Option<Usd>>,
    pub period: Option<Period>,
    pub owner: Option<Option<String>>,
}

impl KeyEdit {
    /// Applies the edit to `record` at `now` (Unix seconds), or says what is wrong.
    pub fn apply(&self, record: &mut TokenRecord, now: u64) -> Result<(), String> {
        let mut next = record.clone();
        if let Some(name) = &self.name {
            let name = name.trim();
            if name.is_empty() {
                return Err("the name is empty".to_owned());
            }
            next.name = name.to_owned();
        }
        if let Some(expires) = self.expires_in {
            next.expires_at = expires.map(|ttl| now.saturating_add(ttl));
        }
        if let Some(models) = &self.models {
            next.policy.models = models.clone();
        }
        if let Some(rpm) = self.rpm {
            if rpm == Some(0) {
                return Err("rpm must be at least 1 (use `none` to remove the limit)".to_owned());
            }
            next.policy.rpm = rpm;
        }
        if let Some(tpm) = self.tpm {
            if tpm == Some(0) {
                return Err("tpm must be at least 1 (use `none` to remove the limit)".to_owned());
            }
            next.policy.tpm = tpm;
        }
        match (self.budget, self.period) {
            (Some(None), Some(_)) => {
                return Err("a period was given with no budget; give both, e.g. \
                            --budget 20 --period month"
                    .to_owned())
            }
            (Some(None), None) => next.policy.budget = None,
            (Some(Some(limit)), period) => {
                let period = period
                    .or(next.policy.budget.map(|b| b.period))
                    .unwrap_or(Period::Month);
                next.policy.budget = Some(Budget { limit, period });
            }
            (None, Some(period)) => match &mut next.policy.budget {
                Some(budget) => budget.period = period,
                None => {
                    return Err("the key has no budget to set a period for; give one, \
                                e.g. --budget 20 --period month"
                        .to_owned())
                }
            },
            (None, None) => {}
        }
        if let Some(owner) = &self.owner {
            next.policy.owner = owner
                .as_deref()
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned);
        }
        *record = next;
        Ok(())
    }
}

/// Who is calling, once authenticated, and what they may do: a shared handle (its fields
/// through `Deref`), so a Gate key's caller is built once when the key store is loaded and
/// each request takes a reference count, not copies of the id, name and policy (issue 16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(Arc<CallerData>);

/// What a [`Caller`] holds.
#[derive(Debug, PartialEq, Eq)]
pub struct CallerData {
    /// The key id the usage log and the budgets use: a Gate key's id, `jwt:<sub>` for a
    /// JWT, `loopback` for a trusted loopback client.
    pub key_id: Arc<str>,
    /// The key's name (Gate keys), the JWT's subject, or `loopback`.
    pub name: String,
    /// The policy that applies to this request.
    pub policy: KeyPolicy,
    /// `policy.owner`, shared with the usage records.
    pub owner: Option<Arc<str>>,
}

impl std::ops::Deref for Caller {
    type Target = CallerData;
    fn deref(&self) -> &CallerData {
        &self.0
    }
}

impl Caller {
    pub fn new(key_id: String, name: String, policy: KeyPolicy) -> Self {
        Self(Arc::new(CallerData {
            key_id: key_id.into(),
            name,
            owner: policy.owner.as_deref().map(Arc::from),
            policy,
        }))
    }

    /// A trusted loopback client (`auth.allow_loopback`): no key, no limit (one shared
    /// value).
    pub fn loopback() -> Self {
        static LOOPBACK: std::sync::OnceLock<Caller> = std::sync::OnceLock::new();
        LOOPBACK
            .get_or_init(|| {
                Self::new(
                    "loopback".to_owned(),
                    "loopback".to_owned(),
                    KeyPolicy::default(),
                )
            })
            .clone()
    }

    /// The caller of a Gate API key.
    pub fn of_key(record: &TokenRecord) -> Self {
        Self::new(
            record.id.clone(),
            record.name.clone(),
            record.policy.clone(),
        )
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// The file-backed API key store.
///
/// Lookups on the request path are hash-map lookups (issue 16): by the key's SHA-256 digest
/// (computed on the stack, no hex string) for [`TokenStore::verify`], and by id for
/// [`TokenStore::get`]. Both maps are rebuilt whenever the file's content is taken in.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    by_digest: HashMap<[u8; 32], TokenRecord, ByDigest>,
    /// Each valid-looking record's [`Caller`], built when the records are taken in.
    callers: HashMap<[u8; 32], Caller, ByDigest>,
    /// Key id -> digest, for lookups by id.
    by_id: HashMap<String, [u8; 32]>,
    /// Records whose `sha256` is not 64 lower-case hex digits (a hand-edited file): listed,
    /// never matched by a key.
    malformed: Vec<TokenRecord>,
}

/// The hasher of the digest-keyed maps: a SHA-256 digest is uniformly distributed already,
/// so its first eight bytes are the hash (SipHash of 32 bytes cost ~250 instructions per
/// lookup, twice per request). Only the operator's keys are inserted; a client's digest is
/// only looked up, so there is nothing to flood.
type ByDigest = std::hash::BuildHasherDefault<DigestHasher>;

#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(word);
    }

    /// The length prefix of the digest (always 32) adds nothing.
    fn write_usize(&mut self, _: usize) {}
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 digests of keys that verified lately, per thread: a key's digest is a pure
/// function of the key, so an entry never goes stale (a revoked key's digest is simply not in
/// the store any more), and a hit saves hashing the key on every request (~2,100
/// instructions of ~80,000 per proxied request). Bounded ([`RecentKeys::MAX`] entries,
/// emptied when full); only keys that matched a record are kept, so clients sending made-up
/// keys cannot fill it. Keys are compared in constant time and hashed with a per-thread random
/// SipHash key. The keys are held in the daemon's memory, as every request's headers are;
/// never written anywhere.
struct RecentKeys;

/// A key of at most [`RecentKey::CAP`] bytes (longer ones are not kept).
#[derive(Clone, Copy)]
struct RecentKey {
    len: usize,
    bytes: [u8; RecentKey::CAP],
}

impl RecentKey {
    /// Gate's keys are 46 bytes (`gk_` and 43 base64url characters).
    const CAP: usize = 64;

    fn new(token: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; Self::CAP];
        bytes.get_mut(..token.len())?.copy_from_slice(token);
        Some(Self {
            len: token.len(),
            bytes,
        })
    }
}

impl PartialEq for RecentKey {
    /// Constant time: every byte is compared whatever the first difference.
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(self.len ^ other.len, |acc, (a, b)| acc | usize::from(a ^ b));
        diff == 0
    }
}

impl Eq for RecentKey {}

impl std::hash::Hash for RecentKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.bytes[..self.len]);
    }
}

thread_local! {
    static RECENT_KEYS: std::cell::RefCell<HashMap<RecentKey, [u8; 32]>> =
        std::cell::RefCell::new(HashMap::new());
}

impl RecentKeys {
    /// Entries per thread.
    const MAX: usize = 1024;

    fn digest(token: &[u8]) -> Option<[u8; 32]> {
        let key = RecentKey::new(token)?;
        RECENT_KEYS.with(|keys| keys.borrow().get(&key).copied())
    }

    fn remember(token: &[u8], digest: [u8; 32]) {
        let Some(key) = RecentKey::new(token) else {
            return;
        };
        RECENT_KEYS.with(|keys| {
            let mut keys = keys.borrow_mut();
            if keys.len() >= Self::MAX {
                keys.clear();
            }
            keys.insert(key, digest);
        });
    }
}

/// The digest a record's hex `sha256` names (`None` when it is not 64 hex digits).
fn digest_of_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    // Lower-case only: `sha256_hex` writes lower case, and an upper-case hash never matched.
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for &b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(bytes)
}

/// A new key with the name, expiry and policy of `edit` (name `default` when it has none):
/// its record and the plaintext key (shown once). Stored by the caller.
pub fn new_key(edit: &KeyEdit) -> Result<(TokenRecord, String)> {
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let token = format!("{TOKEN_PREFIX}{secret}");
    let id: String = random_bytes::<6>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let created_at = unix_now();
    let mut record = TokenRecord {
        id,
        name: "default".to_owned(),
        sha256: sha256_hex(token.as_bytes()),
        created_at,
        expires_at: None,
        policy: KeyPolicy::default(),
    };
    edit.apply(&mut record, created_at)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((record, token))
}

/// `n` random bytes as lower-case hex.
pub fn random_hex<const N: usize>() -> Result<String> {
    Ok(random_bytes::<N>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl TokenStore {
    /// The store's file in a state directory.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("tokens.json")
    }

    /// Loads the store (an absent file is an empty store).
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = Self::path_in(state_dir);
        let records = Self::read_records(&path)?;
        let mut store = Self {
            path,
            by_digest: HashMap::default(),
            callers: HashMap::default(),
            by_id: HashMap::new(),
            malformed: Vec::new(),
        };
        store.take_in(records);
        Ok(store)
    }

    /// Makes `records` (by hex hash, as in the file) this store's content.
    fn take_in(&mut self, records: BTreeMap<String, TokenRecord>) {
        self.by_digest.clear();
        self.callers.clear();
        self.by_id.clear();
        self.malformed.clear();
        for (hex, record) in records {
            let Some(digest) = digest_of_hex(&hex) else {
                self.malformed.push(record);
                continue;
            };
            self.by_id.insert(record.id.clone(), digest);
            self.callers.insert(digest, Caller::of_key(&record));
            self.by_digest.insert(digest, record);
        }
    }

    fn read_records(path: &Path) -> Result<BTreeMap<String, TokenRecord>> {
        let file: TokenFile = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid token file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(file
            .tokens
            .into_iter()
            .map(|t| (t.sha256.clone(), t))
            .collect())
    }

    /// Applies `change` to the file's current content under the store's exclusive lock
    /// (re-read from disk first, so a change made meanwhile by another process or thread is
    /// kept), writes it atomically and makes it this store's content.
    fn modify<T>(
        &mut self,
        change: impl FnOnce(&mut BTreeMap<String, TokenRecord>) -> T,
    ) -> Result<T> {
        if self.path.as_os_str().is_empty() {
            anyhow::bail!(
                "the keys are held by the shared store ([store] url); change them through the \
                 running daemon (gate token ..., the admin API or the web UI)"
            );
        }
        let _lock = state::lock(&self.path)?;
        let mut current = Self::read_records(&self.path)?;
        let out = change(&mut current);
        let mut tokens: Vec<_> = current.values().cloned().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let bytes = serde_json::to_vec_pretty(&TokenFile { tokens })?;
        state::write_atomic(&self.path, &bytes)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.take_in(current);
        Ok(out)
    }

    /// Creates a key; returns its record and the plaintext key (shown once).
    pub fn create(&mut self, name: &str, ttl_secs: Option<u64>) -> Result<(TokenRecord, String)> {
        self.create_with(&KeyEdit {
            name: Some(name.to_owned()),
            expires_in: Some(ttl_secs),
            ..KeyEdit::default()
        })
    }

    /// Creates a key with the name, expiry and policy of `edit` (name `default` when it
    /// has none); returns its record and the plaintext key (shown once).
    pub fn create_with(&mut self, edit: &KeyEdit) -> Result<(TokenRecord, String)> {
        let (record, token) = new_key(edit)?;
        let stored = record.clone();
        self.modify(|tokens| tokens.insert(stored.sha256.clone(), stored))?;
        Ok((record, token))
    }

    /// A store of `records` held in memory only: the daemon's copy of the keys a shared
    /// store (`[store] url`) holds. Changes go to the shared store, never through this.
    pub fn from_records(records: Vec<TokenRecord>) -> Self {
        let mut store = Self {
            path: PathBuf::new(),
            by_digest: HashMap::default(),
            callers: HashMap::default(),
            by_id: HashMap::new(),
            malformed: Vec::new(),
        };
        store.take_in(records.into_iter().map(|t| (t.sha256.clone(), t)).collect());
        store
    }

    /// All records, oldest first.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut tokens: Vec<_> = self
            .by_digest
            .values()
            .chain(&self.malformed)
            .cloned()
            .collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        tokens
    }

    /// Changes the key with id `id`; `Ok(None)` when no key has that id, an error when the
    /// edit is not valid (nothing is written then).
    pub fn update(&mut self, id: &str, edit: &KeyEdit) -> Result<Option<TokenRecord>> {
        let now = unix_now();
        self.modify(|tokens| {
            let Some(record) = tokens.values_mut().find(|t| t.id == id) else {
                return Ok(None);
            };
            edit.apply(record, now)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Some(record.clone()))
        })?
    }

    /// Revokes a key by id; false when no key has that id.
    pub fn revoke(&mut self, id: &str) -> Result<bool> {
        self.modify(|tokens| {
            let before = tokens.len();
            tokens.retain(|_, t| t.id != id);
            tokens.len() != before
        })
    }

    /// The record of a valid, unexpired key.
    pub fn verify(&self, token: &str) -> Option<&TokenRecord> {
        self.live_digest(token)
            .and_then(|digest| self.by_digest.get(&digest))
    }

    /// The caller of `token` when it is a valid, unexpired Gate key: [`Self::verify`] and
    /// [`Caller::of_key`] in one, with the caller built when the store was loaded.
    pub fn verify_caller(&self, token: &str) -> Option<Caller> {
        self.live_digest(token)
            .and_then(|digest| self.callers.get(&digest).cloned())
    }

    /// The digest of `token` when it names a valid, unexpired key of this store (recently
    /// verified keys are not hashed again: [`RecentKeys`]).
    fn live_digest(&self, token: &str) -> Option<[u8; 32]> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let digest = match RecentKeys::digest(token.as_bytes()) {
            Some(digest) => digest,
            None => {
                let digest = sha256(token.as_bytes());
                if self.by_digest.contains_key(&digest) {
                    RecentKeys::remember(token.as_bytes(), digest);
                }
                digest
            }
        };
        let record = self.by_digest.get(&digest)?;
        match record.expires_at {
            Some(exp) if exp <= unix_now() => None,
            _ => Some(digest),
        }
    }

    /// The record of the key with id `id` (valid or not).
    pub fn get(&self, id: &str) -> Option<&TokenRecord> {
        match self.by_id.get(id) {
            Some(digest) => self.by_digest.get(digest),
            None => self.malformed.iter().find(|t| t.id == id),
        }
    }
}

/// JWT settings (`[auth.jwt]`).
#[derive(Clone)]
pub struct JwtSettings {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    /// The longest lifetime accepted, seconds.
    max_lifetime: u64,
    /// The most a token may do; its `gate` claim is bounded by it.
    ceiling: KeyPolicy,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("secret", &"(set)")
            .field("max_lifetime", &self.max_lifetime)
            .field("ceiling", &self.ceiling)
            .finish()
    }
}

/// Seconds of clock skew allowed on `exp`, `nbf` and the lifetime.
const JWT_LEEWAY: u64 = 30;

/// The members of the `gate` claim (a token's policy).
const POLICY_CLAIMS: [&str; 5] = ["models", "rpm", "tpm", "budget", "owner"];

impl JwtSettings {
    /// HS256 with `secret`, issuer `issuer`, a lifetime of at most 24 hours, no audience,
    /// no ceiling.
    pub fn new(secret: &str, issuer: &str) -> Self {
        Self::with_rules(secret, issuer, 24, None, KeyPolicy::default())
    }

    /// HS256 with `secret`; `iss` must be `issuer`, `exp` is required and at most
    /// `max_hours` after `iat` (and after now), `nbf` is honoured, `aud` must be
    /// `audience` when one is set (and absent otherwise), and the token's `gate` policy claim
    /// is bounded by `ceiling`.
    pub fn with_rules(
        secret: &str,
        issuer: &str,
        max_hours: u32,
        audience: Option<&str>,
        ceiling: KeyPolicy,
    ) -> Self {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.leeway = JWT_LEEWAY;
        validation.validate_nbf = true;
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            }
            // A token meant for an audience is not meant for a gateway that names none.
            None => validation.set_required_spec_claims(&["exp", "iss"]),
        }
        Self {
            key: jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            validation,
            max_lifetime: u64::from(max_hours) * 3600,
            ceiling,
        }
    }

    /// The period of the operator's JWT budget, if it sets one.
    pub fn budget_period(&self) -> Option<Period> {
        self.ceiling.budget.map(|b| b.period)
    }

    /// The caller of a valid token: `jwt:<sub>`, with the token's policy (claim `gate`)
    /// bounded by the operator's ceiling.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        #[derive(Deserialize)]
        struct Claims {
            #[serde(default)]
            sub: Option<String>,
            exp: u64,
            #[serde(default)]
            iat: Option<u64>,
            #[serde(default)]
            gate: Option<serde_json::Value>,
        }
        // RFC 7515 section 4.1.11: a `crit` header names extensions that must be understood;
        // Gate understands none, so any is refused (jsonwebtoken does not look at it).
        if header_has_crit(token) {
            return Err(AuthError::CriticalExtension);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::WrongAudience,
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                    AuthError::WrongAudience
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                _ => AuthError::Invalid,
            },
        )?;
        let claims = data.claims;
        let now = unix_now();
        let too_long = |from: u64| claims.exp.saturating_sub(from) > self.max_lifetime + JWT_LEEWAY;
        if too_long(now) || claims.iat.is_some_and(too_long) {
            return Err(AuthError::TooLongLived);
        }
        let policy = match claims.gate {
            None => KeyPolicy::default(),
            Some(serde_json::Value::Object(members)) => {
                if members.keys().any(|k| !POLICY_CLAIMS.contains(&k.as_str())) {
                    return Err(AuthError::BadPolicyClaim);
                }
                serde_json::from_value(serde_json::Value::Object(members))
                    .map_err(|_| AuthError::BadPolicyClaim)?
            }
            Some(_) => return Err(AuthError::BadPolicyClaim),
        };
        let sub = claims.sub.unwrap_or_else(|| "jwt".to_owned());
        let mut policy = policy.bounded_by(&self.ceiling);
        if policy.owner.is_none() {
            policy.owner = Some(sub.clone());
        }
        Ok(Caller::new(format!("jwt:{sub}"), sub, policy))
    }
}

/// Whether the token's header (its first segment) has a `crit` member. A header that does
/// not decode is left to the signature check to refuse.
fn header_has_crit(token: &str) -> bool {
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|value| value.get("crit").is_some())
}

/// Why a request was not authenticated. Messages never include the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <token>` or `x-api-key: <token>`")]
    Missing,
    #[error("invalid API key or token")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is not signed with HS256")]
    WrongAlgorithm,
    #[error(
        "loopback trust does not cover a request body that is not Content-Type: application/json \
         (what a web page can send); send the body as JSON, or an API key"
    )]
    LoopbackNotJson,
    #[error(
        "loopback trust does not cover requests from a web page of another origin; \
         send an API key (gate token create)"
    )]
    LoopbackForeignOrigin,
    #[error(
        "loopback trust does not cover a Host that is not loopback (127.0.0.1, [::1], localhost); \
         send an API key (gate token create)"
    )]
    LoopbackForeignHost,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error(
        "the token lives longer than this gateway accepts (exp - iat over auth.jwt.expiration_hours)"
    )]
    TooLongLived,
    #[error("the token's audience (aud) is not this gateway's (auth.jwt.audience)")]
    WrongAudience,
    #[error("the token's header names critical extensions (crit) this gateway does not support")]
    CriticalExtension,
    #[error(
        "the token's `gate` claim is not a policy: an object of models, rpm, tpm, budget \
         {{usd, period}}, owner"
    )]
    BadPolicyClaim,
}

/// The credential a request carries: `Authorization: Bearer` or `x-api-key`.
pub fn credential(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        // The scheme is case-insensitive (RFC 9110 section 11.1): `Bearer`, `bearer`, `BEARER`.
        let value = value.trim();
        if let Some((scheme, token)) = value.split_once(' ') {
            let token = token.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
                return Some(token);
            }
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Parses durations such as `30d`, `12h`, `90m`, `3600s` or `3600`.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d, 12h, 90m"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gate-auth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn digests_alike_in_their_first_bytes_are_told_apart() {
        // The digest hasher hashes the first eight bytes; equal hashes must still be two keys.
        let mut map: HashMap<[u8; 32], u32, ByDigest> = HashMap::default();
        let a = [7u8; 32];
        let mut b = a;
        b[31] = 8;
        map.insert(a, 1);
        map.insert(b, 2);
        assert_eq!((map.get(&a), map.get(&b)), (Some(&1), Some(&2)));
        assert_eq!(map.get(&[9u8; 32]), None);
    }

    #[test]
    fn tokens_are_stored_as_hashes_and_verify() {
        let dir = temp_dir("store");
        let mut store = TokenStore::load(&dir).unwrap();
        let (record, token) = store.create("ci", None).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        let file = std::fs::read_to_string(TokenStore::path_in(&dir)).unwrap();
        assert!(!file.contains(&token));
        assert!(file.contains(&record.sha256));
        let reloaded = TokenStore::load(&dir).unwrap();
        assert_eq!(
            reloaded.verify(&token).map(|r| r.id.clone()),
            Some(record.id.clone())
        );
        assert!(reloaded.verify("gk_wrong").is_none());
        assert_eq!(reloaded.get(&record.id), Some(&record));
        assert_eq!(reloaded.get("nosuchid"), None);
        let mut store = reloaded;
        assert!(store.revoke(&record.id).unwrap());
        assert!(store.verify(&token).is_none());
        assert_eq!(store.get(&record.id), None);
        assert!(!store.revoke(&record.id).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The per-thread cache of key digests changes nothing a caller can see: a key verifies
    /// from the cache after its first use, a revoked key stops verifying at once (and another
    /// store without it does not take it), a made-up key is never kept, and a key one byte
    /// off a cached one is not its match.
    #[test]
    fn recently_verified_keys_skip_the_hash_and_never_outlive_their_record() {
        let dir = temp_dir("recent");
        let mut store = TokenStore::load(&dir).unwrap();
        let (record, token) = store.create("hot", None).unwrap();
        assert!(RecentKeys::digest(token.as_bytes()).is_none());
        for _ in 0..3 {
            let caller = store.verify_caller(&token).expect("verifies");
            assert_eq!(&*caller.key_id, record.id.as_str());
        }
        assert_eq!(
            RecentKeys::digest(token.as_bytes()),
            Some(sha256(token.as_bytes()))
        );
        let mut off = token.clone().into_bytes();
        let last = off.len() - 1;
        off[last] = if off[last] == b'A' { b'B' } else { b'A' };
        let off = String::from_utf8(off).unwrap();
        assert!(store.verify_caller(&off).is_none());
        assert!(
            RecentKeys::digest(off.as_bytes()).is_none(),
            "a made-up key was kept"
        );
        let other = TokenStore::load(&temp_dir("recent-other")).unwrap();
        assert!(
            other.verify_caller(&token).is_none(),
            "another store took the key"
        );
        assert!(store.revoke(&record.id).unwrap());
        assert!(
            store.verify_caller(&token).is_none(),
            "revoked, still verified"
        );
        // Bounded: a full cache is emptied and takes the next key.
        for i in 0..RecentKeys::MAX + 1 {
            RecentKeys::remember(format!("gk_filler{i}").as_bytes(), [0; 32]);
        }
        RECENT_KEYS.with(|k| assert!(k.borrow().len() <= RecentKeys::MAX));
        let long = format!("gk_{}", "x".repeat(RecentKey::CAP));
        RecentKeys::remember(long.as_bytes(), [1; 32]);
        assert!(
            RecentKeys::digest(long.as_bytes()).is_none(),
            "longer than the cap"
        );
        assert!(RecentKey::new(b"gk_a") != RecentKey::new(b"gk_a\0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn digests_round_trip_through_hex_and_malformed_hashes_match_nothing() {
        for data in [&b""[..], b"gk_abc", &[0xff; 100]] {
            assert_eq!(digest_of_hex(&sha256_hex(data)), Some(sha256(data)));
        }
        let upper = sha256_hex(b"x").to_ascii_uppercase();
        assert_eq!(digest_of_hex(&upper), None, "upper case never matched");
        assert_eq!(digest_of_hex("abc"), None);
        // A hand-edited record with a broken hash is listed and found by id, never verified.
        let dir = temp_dir("malformed");
        let mut store = TokenStore::load(&dir).unwrap();
        let (record, token) = store.create("ok", None).unwrap();
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(TokenStore::path_in(&dir)).unwrap()).unwrap();
        file["tokens"][0]["sha256"] = serde_json::json!(record.sha256.to_ascii_uppercase());
        std::fs::write(TokenStore::path_in(&dir), file.to_string()).unwrap();
        let store = TokenStore::load(&dir).unwrap();
        assert!(store.verify(&token).is_none());
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.get(&record.id).map(|r| r.name.as_str()), Some("ok"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn expired_tokens_do_not_verify() {
        let dir = temp_dir("expiry");
        let mut store = TokenStore::load(&dir).unwrap();
        let (_, token) = store.create("short", Some(0)).unwrap();
        assert!(store.verify(&token).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jwt_checks_algorithm_issuer_and_expiry() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let settings = JwtSettings::new("s3cret", "gate-daemon");
        let exp = unix_now() + 3600;
        let claims = serde_json::json!({"sub": "alice", "iss": "gate-daemon", "exp": exp});
        let good = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        let caller = settings.verify(&good).unwrap();
        assert_eq!(&*caller.key_id, "jwt:alice");
        assert_eq!(caller.policy.owner.as_deref(), Some("alice"));
        let wrong_key = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(settings.verify(&wrong_key), Err(AuthError::Invalid));
        let other_iss = serde_json::json!({"iss": "someone", "exp": exp});
        let t = encode(
            &Header::default(),
            &other_iss,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(settings.verify(&t), Err(AuthError::WrongIssuer));
        let expired = serde_json::json!({"iss": "gate-daemon", "exp": unix_now() - 3600});
        let t = encode(
            &Header::default(),
            &expired,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(settings.verify(&t), Err(AuthError::Expired));
        let hs512 = Header::new(jsonwebtoken::Algorithm::HS512);
        let t = encode(&hs512, &claims, &EncodingKey::from_secret(b"s3cret")).unwrap();
        assert_eq!(settings.verify(&t), Err(AuthError::WrongAlgorithm));
        // alg: none, unsigned.
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        );
        assert!(settings.verify(&none).is_err());
    }

    fn sign(claims: &serde_json::Value) -> String {
        use jsonwebtoken::{encode, EncodingKey, Header};
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    #[test]
    fn jwt_nbf_lifetime_audience_and_crit() {
        use serde_json::json;
        let now = unix_now();
        let settings =
            JwtSettings::with_rules("s3cret", "gate-daemon", 2, None, KeyPolicy::default());
        let ok = json!({"sub": "a", "iss": "gate-daemon", "iat": now, "exp": now + 3600});
        assert!(settings.verify(&sign(&ok)).is_ok());
        // nbf in the future (beyond the leeway), then in the past.
        let early = json!({"iss": "gate-daemon", "nbf": now + 600, "exp": now + 3600});
        assert_eq!(settings.verify(&sign(&early)), Err(AuthError::NotYetValid));
        let late = json!({"iss": "gate-daemon", "nbf": now - 60, "exp": now + 3600});
        assert!(settings.verify(&sign(&late)).is_ok());
        // Longer than 2 hours: from iat, or from now when there is no iat.
        let long = json!({"iss": "gate-daemon", "iat": now - 7000, "exp": now + 600});
        assert_eq!(settings.verify(&sign(&long)), Err(AuthError::TooLongLived));
        let long = json!({"iss": "gate-daemon", "exp": now + 3 * 3600});
        assert_eq!(settings.verify(&sign(&long)), Err(AuthError::TooLongLived));
        // No audience configured: a token for an audience is refused.
        let aud = json!({"iss": "gate-daemon", "aud": "gate", "exp": now + 600});
        assert_eq!(settings.verify(&sign(&aud)), Err(AuthError::WrongAudience));
        // Audience configured: it must be there and match.
        let with_aud = JwtSettings::with_rules(
            "s3cret",
            "gate-daemon",
            2,
            Some("gate"),
            KeyPolicy::default(),
        );
        assert!(with_aud.verify(&sign(&aud)).is_ok());
        let other = json!({"iss": "gate-daemon", "aud": ["other"], "exp": now + 600});
        assert_eq!(
            with_aud.verify(&sign(&other)),
            Err(AuthError::WrongAudience)
        );
        let none = json!({"iss": "gate-daemon", "exp": now + 600});
        assert_eq!(with_aud.verify(&sign(&none)), Err(AuthError::WrongAudience));
        // crit: refused before anything else, whatever it names.
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let crit_header = b64(&json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}));
        let good = sign(&ok);
        let rest = good.split_once('.').unwrap().1;
        assert_eq!(
            settings.verify(&format!("{crit_header}.{rest}")),
            Err(AuthError::CriticalExtension)
        );
    }

    #[test]
    fn jwt_policy_claims_are_bounded_by_the_operator() {
        use gate_core::accounting::{Budget, Period, Usd};
        use serde_json::json;
        let now = unix_now();
        let ceiling = KeyPolicy {
            models: ModelPatterns::parse("gpt-*,claude-*"),
            rpm: Some(100),
            tpm: None,
            budget: Some(Budget {
                limit: Usd::parse("10").unwrap(),
                period: Period::Month,
            }),
            owner: None,
        };
        let settings = JwtSettings::with_rules("s3cret", "gate-daemon", 24, None, ceiling);
        let claims = json!({"sub": "bob", "iss": "gate-daemon", "exp": now + 600,
            "gate": {"models": ["gpt-4o*", "gemini-*"], "rpm": 1000, "tpm": 5000,
                     "budget": {"usd": 50, "period": "month"}, "owner": "team-b"}});
        let caller = settings.verify(&sign(&claims)).unwrap();
        assert_eq!(&*caller.key_id, "jwt:bob");
        let p = caller.policy.clone();
        assert!(p.models.allows("gpt-4o-mini"));
        assert!(
            !p.models.allows("gemini-2.5-pro"),
            "outside the operator's models"
        );
        assert!(
            !p.models.allows("claude-sonnet-4"),
            "outside the token's models"
        );
        assert_eq!((p.rpm, p.tpm), (Some(100), Some(5000)));
        assert_eq!(p.budget.unwrap().limit, Usd::parse("10").unwrap());
        assert_eq!(p.owner.as_deref(), Some("team-b"));
        // No claim: the ceiling applies as is.
        let plain = json!({"sub": "c", "iss": "gate-daemon", "exp": now + 600});
        let p = settings.verify(&sign(&plain)).unwrap().policy.clone();
        assert_eq!(p.rpm, Some(100));
        assert!(!p.models.allows("gemini-2.5-pro"));
        // A misspelt or mistyped claim is refused, not ignored.
        for bad in [json!({"rmp": 5}), json!("gpt-*"), json!({"rpm": "many"})] {
            let claims = json!({"iss": "gate-daemon", "exp": now + 600, "gate": bad});
            assert_eq!(
                settings.verify(&sign(&claims)),
                Err(AuthError::BadPolicyClaim)
            );
        }
    }

    #[test]
    fn credentials_from_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(credential(&h), Some("k1"));
        h.insert(http::header::AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert_eq!(credential(&h), Some("k2"));
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme}  k3 ");
            h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(credential(&h), Some("k3"), "{scheme}");
        }
        h.insert(http::header::AUTHORIZATION, "Basic k4".parse().unwrap());
        assert_eq!(credential(&h), Some("k1"), "not a bearer token: x-api-key");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration_secs("90m"), Ok(5400));
        assert_eq!(parse_duration_secs("15"), Ok(15));
        assert!(parse_duration_secs("3y").is_err());
        assert!(parse_duration_secs("abc").is_err());
    }
}
