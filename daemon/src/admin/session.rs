//! Admin credentials: the admin token file, one-time login codes and web UI sessions.
//!
//! - The admin token lives in `<state_dir>/admin.token` (mode 0600), created on first
//!   start; the CLI reads it to talk to a running daemon. It is compared in constant time.
//! - A login code is single use and expires after [`LOGIN_CODE_TTL`]; at most
//!   [`MAX_LOGIN_CODES`] are outstanding (the oldest is dropped).
//! - A session lives [`SESSION_TTL`] in memory (a restart logs everyone out); at most
//!   [`MAX_SESSIONS`] exist (the oldest is dropped).
//!
//! Codes and sessions are kept only as SHA-256 hashes. Nothing here logs a credential.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine;
use ring::rand::SecureRandom;

use crate::state;

/// How long a login code printed at start or by `gate status` stays valid.
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a web UI session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Most login codes outstanding at once.
pub const MAX_LOGIN_CODES: usize = 64;
/// Most sessions at once.
pub const MAX_SESSIONS: usize = 256;
/// Prefix of the session cookie's name; the daemon's port follows (`gate_session_3000`),
/// because browsers share cookies between ports of one host and several daemons may run.
pub const SESSION_COOKIE_PREFIX: &str = "gate_session_";
/// Prefix of admin tokens (recognisable in a leaked-secret scan).
pub const ADMIN_TOKEN_PREFIX: &str = "gadm_";

/// The admin token file in a state directory.
pub fn admin_token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.token")
}

/// A random URL-safe string of `n` random bytes.
pub fn random_token(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Reads the admin token, creating it (mode 0600) when absent.
pub fn load_or_create_admin_token(state_dir: &Path) -> Result<String> {
    let path = admin_token_path(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    state::ensure_dir(state_dir)?;
    // Create-if-absent under the file's lock, checking again: two daemons starting at once
    // end up with one token.
    let _lock = state::lock(&path)?;
    if let Some(token) = read_admin_token(state_dir) {
        return Ok(token);
    }
    let token = format!("{ADMIN_TOKEN_PREFIX}{}", random_token(32)?);
    state::write_atomic(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Reads the admin token if it exists (for the CLI).
pub fn read_admin_token(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(admin_token_path(state_dir)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equality of two secrets without an early exit (compares their hashes).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (x, y) = (sha256(a.as_bytes()), sha256(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Hashed credentials with expiry, bounded in number.
#[derive(Default)]
struct ExpiringSet {
    entries: HashMap<[u8; 32], Instant>,
}

impl ExpiringSet {
    fn insert(&mut self, secret: &str, expires: Instant, now: Instant, max: usize) {
        self.entries.retain(|_, exp| *exp > now);
        while self.entries.len() >= max {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(k, _)| *k);
            match oldest {
                Some(key) => {
                    self.entries.remove(&key);
                }
                None => break,
            }
        }
        self.entries.insert(sha256(secret.as_bytes()), expires);
    }

    fn contains(&self, secret: &str, now: Instant) -> bool {
        self.entries
            .get(&sha256(secret.as_bytes()))
            .is_some_and(|exp| *exp > now)
    }

    fn take(&mut self, secret: &str, now: Instant) -> bool {
        self.entries
            .remove(&sha256(secret.as_bytes()))
            .is_some_and(|exp| exp > now)
    }
}

/// Login codes and sessions of the web UI.
#[derive(Default)]
pub struct Sessions {
    codes: Mutex<ExpiringSet>,
    sessions: Mutex<ExpiringSet>,
}

impl Sessions {
    /// A new one-time login code.
    pub fn new_login_code(&self, now: Instant) -> Result<String> {
        let code = random_token(24)?;
        self.codes.lock().unwrap_or_else(|e| e.into_inner()).insert(
            &code,
            now + LOGIN_CODE_TTL,
            now,
            MAX_LOGIN_CODES,
        );
        Ok(code)
    }

    /// Spends a login code; on success returns a new session id.
    pub fn redeem(&self, code: &str, now: Instant) -> Result<Option<String>> {
        let valid = self
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(code, now);
        if !valid {
            return Ok(None);
        }
        let session = random_token(32)?;
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(&session, now + SESSION_TTL, now, MAX_SESSIONS);
        Ok(Some(session))
    }

    /// Whether `session` is a live session.
    pub fn is_valid(&self, session: &str, now: Instant) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(session, now)
    }

    /// Ends a session.
    pub fn end(&self, session: &str, now: Instant) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(session, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_code_is_single_use_and_expires() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let code = sessions.new_login_code(t0).unwrap();
        let session = sessions.redeem(&code, t0).unwrap().unwrap();
        assert!(sessions.is_valid(&session, t0));
        assert!(sessions.redeem(&code, t0).unwrap().is_none(), "second use");
        let late = sessions.new_login_code(t0).unwrap();
        assert!(sessions
            .redeem(&late, t0 + LOGIN_CODE_TTL + Duration::from_secs(1))
            .unwrap()
            .is_none());
        assert!(!sessions.is_valid(&session, t0 + SESSION_TTL + Duration::from_secs(1)));
        sessions.end(&session, t0);
        assert!(!sessions.is_valid(&session, t0));
    }

    #[test]
    fn codes_are_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let first = sessions.new_login_code(t0).unwrap();
        for i in 0..MAX_LOGIN_CODES {
            sessions
                .new_login_code(t0 + Duration::from_millis(i as u64 + 1))
                .unwrap();
        }
        assert!(sessions.redeem(&first, t0).unwrap().is_none());
        assert!(sessions.codes.lock().unwrap().entries.len() <= MAX_LOGIN_CODES);
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("gadm_x", "gadm_x"));
        assert!(!secrets_equal("gadm_x", "gadm_y"));
    }
}
