//! Redis (or Valkey) for shared counters: a small client over the [`Runtime`]'s TCP streams,
//! speaking RESP through gate-core's sans-IO codec (`gate_core::resp`).
//!
//! Why not the `redis` crate (decision in ARCHITECTURE.md, "Shared store"): its async
//! connections live behind its `aio` feature, which brings `combine`, `tokio-util`'s codec and
//! `async-trait`, and whose timeouts, connection manager and reconnection locate a runtime of
//! their own (`tokio-comp` or `async-std-comp`); Gate's daemon runs on tokio or smol through
//! [`Runtime`]. Gate needs five commands (`AUTH`, `SELECT`, `PING`, `EVALSHA`, `EVAL`), one
//! reply each: a codec in core (proptests, a fuzz target) and this file are less than the
//! glue the crate would need.
//!
//! Connections: a small pool of idle connections; a command takes one (or opens one), sends,
//! reads the one reply, and gives it back. No pipelining. A failure on a reused connection is
//! retried once on a fresh one (a restarted server leaves every idle connection dead) and
//! empties the pool. After a failed connection attempt, commands fail at once with that error
//! until the backoff ([`BACKOFF_FIRST`], doubling to [`BACKOFF_MAX`]) has passed, so an
//! outage costs callers no waiting; the next command after it tries again (recovery without a
//! restart).
//!
//! TLS (`rediss://`): the stream is wrapped by [`super::tls::StoreTls`] (rustls; the host
//! name always verified; roots from `?ca=PATH` or the system's) before `AUTH`.
//!
//! Secrets: the URL's password is sent only in `AUTH`. [`RedisUrl`]'s `Display`, its `Debug`
//! and every [`RedisError`] show `redis://user@host:port/db`, never the password; server
//! texts are scrubbed of it too.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gate_core::resp::{encode_command, Decoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::{StoreKind, StoreTls, Verify};
use crate::{ByteStream, Runtime};

/// How long one command may take by default (callers on the request path pass less).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt (connect, `AUTH`, `SELECT`) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait after a failed connection attempt; doubled after each further failure.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Idle connections kept for reuse (more are opened under load and closed after).
pub const MAX_IDLE: usize = 64;

/// Why Redis could not do what was asked. The text never holds the URL's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// `[store] redis_url` is not usable.
    #[error("store.redis_url: {0}")]
    Url(String),
    /// The server could not be reached, refused the login, or the connection broke.
    #[error("Redis at {at} is unavailable: {why}")]
    Unavailable {
        /// redis://user@host:port/db.
        at: String,
        /// What went wrong.
        why: String,
    },
    /// The server answered the command with an error.
    #[error("Redis at {at} refused a command: {why}")]
    Command {
        /// redis://user@host:port/db.
        at: String,
        /// The server's error text.
        why: String,
    },
}

/// A parsed `redis://` URL; `Display` shows it without the password.
#[derive(Clone)]
pub struct RedisUrl {
    host: String,
    port: u16,
    db: u32,
    username: Option<String>,
    password: Option<String>,
    shown: String,
    /// `rediss://`: TLS, the host name verified (roots: `?ca=PATH` or the system's).
    tls: Option<StoreTls>,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisUrl").field(&self.shown).finish()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

fn percent_decode(s: &str) -> Result<String, RedisError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    RedisError::Url(
                        "a % in the user or password is not followed by two hex digits; \
                         percent-encode them"
                            .to_owned(),
                    )
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| RedisError::Url("the user or password is not UTF-8".to_owned()))
}

impl RedisUrl {
    /// Parses `redis://[[user]:password@]host[:port][/db]` (Valkey takes the same), or
    /// `rediss://...` for TLS: the server's certificate is checked against the system's roots,
    /// or the CA certificates (PEM) of `?ca=PATH`, and must name the host. A CA file that
    /// cannot be read is an error here.
    pub fn parse(url: &str) -> Result<Self, RedisError> {
        let (rest, scheme) = match (url.strip_prefix("rediss://"), url.strip_prefix("redis://")) {
            (Some(rest), _) => (rest, "rediss"),
            (None, Some(rest)) => (rest, "redis"),
            (None, None) => {
                return Err(RedisError::Url(
                    "expected a URL starting with redis:// or rediss:// (TLS) \
                     (redis://:password@host:6379/0)"
                        .to_owned(),
                ))
            }
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (
                    Some(percent_decode(user)?).filter(|u| !u.is_empty()),
                    Some(percent_decode(pass)?).filter(|p| !p.is_empty()),
                ),
                None => (Some(percent_decode(info)?).filter(|u| !u.is_empty()), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| RedisError::Url("an IPv6 host without its ]".to_owned()))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(RedisError::Url(
                "the URL names no host (redis://host:6379)".to_owned(),
            ));
        }
        let port = match port {
            None | Some("") => 6379,
            Some(p) => p.parse::<u16>().map_err(|_| {
                RedisError::Url(format!("the port {p:?} is not a number from 1 to 65535"))
            })?,
        };
        let db_text = path
            .strip_prefix('/')
            .unwrap_or("")
            .split(['?', '#'])
            .next()
            .unwrap_or("");
        let query = path
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(""))
            .unwrap_or("");
        let mut ca = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ca", value)) if !value.is_empty() => {
                    ca = Some(std::path::PathBuf::from(super::tls::percent_decode(value)));
                }
                _ => {
                    let key = pair.split('=').next().unwrap_or("");
                    return Err(RedisError::Url(format!(
                        "unknown option {key:?} after the ? (the one option is ca=PATH, the CA \
                         certificates of a rediss:// server)"
                    )));
                }
            }
        }
        if ca.is_some() && scheme == "redis" {
            return Err(RedisError::Url(
                "ca= is for TLS: use rediss:// with it".to_owned(),
            ));
        }
        let db = if db_text.is_empty() {
            0
        } else {
            db_text.parse::<u32>().map_err(|_| {
                RedisError::Url(format!(
                    "the database {db_text:?} after the host is not a number (redis://host:6379/0)"
                ))
            })?
        };
        let user_shown = username
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host_shown = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let tls = if scheme == "rediss" {
            Some(
                StoreTls::new(StoreKind::Redis, &host, Verify::Full, ca.as_deref())
                    .map_err(|e| RedisError::Url(format!("TLS (rediss://): {e}")))?,
            )
        } else {
            None
        };
        let mut parsed = Self {
            host,
            port,
            db,
            username,
            password,
            shown: String::new(),
            tls,
        };
        parsed.shown = parsed.scrub(&format!("{scheme}://{user_shown}{host_shown}:{port}/{db}"));
        Ok(parsed)
    }

    /// `text` with the password (if any) replaced by `(redacted)`.
    pub fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(password) => text.replace(password.as_str(), "(redacted)"),
            None => text.to_owned(),
        }
    }
}

/// A Lua script run by `EVALSHA`, loaded with `EVAL` when the server does not know it yet.
#[derive(Debug, Clone)]
pub struct Script {
    source: &'static str,
    sha1: String,
}

impl Script {
    /// The script of `source` (its SHA-1 is what `EVALSHA` names).
    pub fn new(source: &'static str) -> Self {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, source.as_bytes());
        let sha1 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Self { source, sha1 }
    }

    /// The script's SHA-1 in hex.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }
}

struct Conn {
    stream: Box<dyn ByteStream>,
    decoder: Decoder,
}

struct Link {
    idle: Vec<Conn>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<RedisError>,
    outage_logged: bool,
}

struct Inner<R: Runtime> {
    rt: R,
    url: RedisUrl,
    link: Mutex<Link>,
}

/// A Redis client: cheap to clone, one pool shared by every clone.
pub struct Redis<R: Runtime> {
    inner: Arc<Inner<R>>,
}

impl<R: Runtime> Clone for Redis<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime> fmt::Debug for Redis<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

fn lock(mutex: &Mutex<Link>) -> MutexGuard<'_, Link> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one exchange on a connection gave.
enum Exchange {
    Reply(Value),
    /// The connection failed (I/O, protocol, end of stream) with this text.
    Broken(String),
}

impl<R: Runtime> Redis<R> {
    /// A client for `url`; nothing is connected until first used (or [`Self::ping`]).
    pub fn new(rt: R, url: RedisUrl) -> Self {
        Self {
            inner: Arc::new(Inner {
                rt,
                url,
                link: Mutex::new(Link {
                    idle: Vec::new(),
                    retry_at: None,
                    backoff: BACKOFF_FIRST,
                    last_error: None,
                    outage_logged: false,
                }),
            }),
        }
    }

    /// The URL without its password.
    pub fn url(&self) -> &RedisUrl {
        &self.inner.url
    }

    /// `PING`: whether the server answers now.
    pub async fn ping(&self) -> Result<(), RedisError> {
        match self
            .command(&[b"PING".as_slice()], OPERATION_TIMEOUT)
            .await?
        {
            Value::Simple(s) if s == "PONG" => Ok(()),
            other => Err(self.refused(&format!("PING answered {other:?}"))),
        }
    }

    /// Runs `script` with `keys` and `args` (`EVALSHA`, then `EVAL` if the server answers
    /// `NOSCRIPT`), bounded by `timeout` per round trip. A server error reply is
    /// [`RedisError::Command`].
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
        timeout: Duration,
    ) -> Result<Value, RedisError> {
        let numkeys = keys.len().to_string();
        let mut command: Vec<&[u8]> = vec![b"EVALSHA", script.sha1.as_bytes(), numkeys.as_bytes()];
        command.extend(keys.iter().map(|k| k.as_bytes()));
        command.extend(args.iter().map(|a| a.as_bytes()));
        let reply = self.command(&command, timeout).await?;
        let reply = match reply {
            Value::Error(e) if e.starts_with("NOSCRIPT") => {
                command[0] = b"EVAL";
                command[1] = script.source.as_bytes();
                self.command(&command, timeout).await?
            }
            other => other,
        };
        match reply {
            Value::Error(e) => Err(self.refused(&e)),
            other => Ok(other),
        }
    }

    fn refused(&self, why: &str) -> RedisError {
        RedisError::Command {
            at: self.inner.url.to_string(),
            why: self.inner.url.scrub(why),
        }
    }

    fn unavailable(&self, why: &str) -> RedisError {
        RedisError::Unavailable {
            at: self.inner.url.to_string(),
            why: self.inner.url.scrub(why),
        }
    }

    /// Sends one command and returns its reply (an error reply is returned as
    /// [`Value::Error`]), bounded by `timeout` (connecting included).
    pub async fn command(&self, args: &[&[u8]], timeout: Duration) -> Result<Value, RedisError> {
        let deadline = Instant::now() + timeout;
        let bytes = encode_command(args);
        // A reused connection may be stale (the server restarted): one more try on a new one.
        for _ in 0..2 {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect(deadline).await?, false),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let exchange = crate::timeout(&self.inner.rt, left, exchange(&mut conn, &bytes)).await;
            match exchange {
                Ok(Exchange::Reply(value)) => {
                    self.give_back(conn);
                    return Ok(value);
                }
                Ok(Exchange::Broken(why)) => {
                    // Its siblings are most likely as dead.
                    lock(&self.inner.link).idle.clear();
                    if reused {
                        continue;
                    }
                    let error = self.unavailable(&why);
                    self.note_outage(&error);
                    return Err(error);
                }
                Err(crate::Elapsed) => {
                    let error =
                        self.unavailable(&format!("no answer within {} ms", timeout.as_millis()));
                    self.note_outage(&error);
                    return Err(error);
                }
            }
        }
        Err(self.unavailable("the connection broke twice in a row"))
    }

    fn take_idle(&self) -> Option<Conn> {
        lock(&self.inner.link).idle.pop()
    }

    fn give_back(&self, conn: Conn) {
        let mut link = lock(&self.inner.link);
        if link.idle.len() < MAX_IDLE {
            link.idle.push(conn);
        }
    }

    fn note_outage(&self, error: &RedisError) {
        let mut link = lock(&self.inner.link);
        if !link.outage_logged {
            link.outage_logged = true;
            tracing::warn!(
                "{error}; retrying in the background, at most every {} s",
                BACKOFF_MAX.as_secs()
            );
        }
    }

    /// A new connection, logged in; during the backoff after a failed attempt, that
    /// failure at once.
    async fn connect(&self, deadline: Instant) -> Result<Conn, RedisError> {
        {
            let link = lock(&self.inner.link);
            if let (Some(retry_at), Some(error)) = (link.retry_at, &link.last_error) {
                if Instant::now() < retry_at {
                    return Err(error.clone());
                }
            }
        }
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(CONNECT_TIMEOUT);
        let attempt = crate::timeout(&self.inner.rt, limit, self.open()).await;
        let result = match attempt {
            Ok(result) => result,
            Err(crate::Elapsed) => {
                Err(self.unavailable(&format!("no connection within {} ms", limit.as_millis())))
            }
        };
        let mut link = lock(&self.inner.link);
        match result {
            Ok(conn) => {
                if link.outage_logged || link.last_error.is_some() {
                    tracing::info!("Redis at {} is reachable again", self.inner.url);
                } else if link.retry_at.is_none() && link.idle.is_empty() {
                    tracing::debug!("connected to Redis at {}", self.inner.url);
                }
                link.retry_at = None;
                link.last_error = None;
                link.backoff = BACKOFF_FIRST;
                link.outage_logged = false;
                Ok(conn)
            }
            Err(error) => {
                link.retry_at = Some(Instant::now() + link.backoff);
                link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
                link.last_error = Some(error.clone());
                if !link.outage_logged {
                    link.outage_logged = true;
                    tracing::warn!(
                        "{error}; retrying in the background, at most every {} s",
                        BACKOFF_MAX.as_secs()
                    );
                }
                Err(error)
            }
        }
    }

    /// The connected stream: TCP, with TLS over it for `rediss://` (the handshake's error
    /// says what to fix). Everything after (`AUTH`, `SELECT`) goes over what this returns.
    async fn open_stream(&self) -> Result<Box<dyn ByteStream>, RedisError> {
        let url = &self.inner.url;
        let addrs: Vec<SocketAddr> = match url.host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, url.port)],
            Err(_) => self
                .inner
                .rt
                .resolve(&url.host, url.port)
                .await
                .map_err(|e| self.unavailable(&format!("resolving {}: {e}", url.host)))?,
        };
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match self.inner.rt.connect_tcp(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(format!("connecting to {addr}: {e}")),
            }
        }
        let Some(stream) = stream else {
            return Err(
                self.unavailable(&last.unwrap_or_else(|| format!("{} has no address", url.host)))
            );
        };
        match &url.tls {
            Some(tls) => match tls.handshake(Box::new(stream)).await {
                Ok(stream) => Ok(Box::new(stream)),
                Err(why) => Err(self.unavailable(&why)),
            },
            None => Ok(Box::new(stream)),
        }
    }

    async fn open(&self) -> Result<Conn, RedisError> {
        let url = &self.inner.url;
        let mut conn = Conn {
            stream: self.open_stream().await?,
            decoder: Decoder::new(),
        };
        if let Some(password) = &url.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &url.username {
                auth.push(user.as_bytes());
            }
            auth.push(password.as_bytes());
            match exchange(&mut conn, &encode_command(&auth)).await {
                Exchange::Reply(Value::Error(e)) => {
                    return Err(self.unavailable(&format!(
                        "the login was refused ({e}); check the user and password in \
                         store.redis_url"
                    )))
                }
                Exchange::Reply(_) => {}
                Exchange::Broken(why) => return Err(self.unavailable(&why)),
            }
        }
        if url.db != 0 {
            let db = url.db.to_string();
            match exchange(
                &mut conn,
                &encode_command(&[b"SELECT".as_slice(), db.as_bytes()]),
            )
            .await
            {
                Exchange::Reply(Value::Error(e)) => {
                    return Err(self.unavailable(&format!("SELECT {db} was refused: {e}")))
                }
                Exchange::Reply(_) => {}
                Exchange::Broken(why) => return Err(self.unavailable(&why)),
            }
        }
        Ok(conn)
    }
}

/// Writes `bytes` and reads one reply.
async fn exchange(conn: &mut Conn, bytes: &[u8]) -> Exchange {
    if let Err(e) = conn.stream.write_all(bytes).await {
        return Exchange::Broken(format!("sending: {e}"));
    }
    if let Err(e) = conn.stream.flush().await {
        return Exchange::Broken(format!("sending: {e}"));
    }
    let mut buf = [0u8; 4096];
    loop {
        match conn.decoder.next_value() {
            Ok(Some(value)) => return Exchange::Reply(value),
            Ok(None) => {}
            Err(e) => return Exchange::Broken(format!("the server's reply is not RESP: {e}")),
        }
        match conn.stream.read(&mut buf).await {
            Ok(0) => return Exchange::Broken("the server closed the connection".to_owned()),
            Ok(n) => conn.decoder.push(&buf[..n]),
            Err(e) => return Exchange::Broken(format!("receiving: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_and_the_password_never_shown() {
        let url = RedisUrl::parse("redis://gate:s3cr%40t@cache.internal:6380/2").unwrap();
        assert_eq!(url.to_string(), "redis://gate@cache.internal:6380/2");
        assert_eq!(url.password.as_deref(), Some("s3cr@t"));
        assert_eq!(url.db, 2);
        assert!(!format!("{url:?}").contains("s3cr"));
        let url = RedisUrl::parse("redis://:pw-only@127.0.0.1").unwrap();
        assert_eq!(url.to_string(), "redis://127.0.0.1:6379/0");
        assert_eq!(
            (url.username.as_deref(), url.password.as_deref()),
            (None, Some("pw-only"))
        );
        assert_eq!(
            RedisUrl::parse("redis://[::1]:7000").unwrap().to_string(),
            "redis://[::1]:7000/0"
        );
        let tls = RedisUrl::parse("rediss://:pw@cache.internal:6380").unwrap();
        assert_eq!(tls.to_string(), "rediss://cache.internal:6380/0");
        assert!(tls.tls.is_some());
        let e = RedisUrl::parse("rediss://:pw@h:6380?ca=/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && !e.contains("pw@"),
            "{e}"
        );
        for bad in [
            "http://h",
            "redis://",
            "redis://h:99999",
            "redis://h/x",
            "redis://:%zz@h",
            "redis://h?ca=/etc/ssl/ca.pem",
            "rediss://h?tls=yes",
        ] {
            let e = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("store.redis_url: "), "{bad}: {e}");
        }
    }

    #[test]
    fn script_sha1_is_what_redis_computes() {
        // `redis-cli SCRIPT LOAD "return 1"`.
        assert_eq!(
            Script::new("return 1").sha1(),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
