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
//! Connections: [`CONNECTIONS`] multiplexed, pipelined connection(s) (auto-pipelining, as
//! redis-rs's `MultiplexedConnection` or ioredis do). A command is queued on a connection
//! (its bytes appended to the connection's outgoing buffer, its reply slot to the list of
//! waiters, both under one lock, so the order of the two lists is the same); the
//! connection's one driver task writes everything queued in one write and reads replies in
//! order, handing each to the oldest waiter. So under load one write and one read carry many
//! commands, and Redis runs them back to back. A caller that times out only stops waiting:
//! its reply is still read (and dropped), so later replies stay matched; but when the
//! connection handed out no reply at all while the command waited, the path has gone
//! silent and the connection is given up (its waiters fail, the next command opens a new
//! one). A broken connection
//! (I/O error, end of stream, a reply that is not RESP) fails every waiter in flight at once
//! and is replaced by the next command; a command that had not been written yet is sent
//! once more on the new connection (it cannot run twice). After a failed connection attempt,
//! commands fail at once with that error until the backoff ([`BACKOFF_FIRST`], doubling to
//! [`BACKOFF_MAX`]) has passed, so an outage costs callers no waiting; the next command
//! after it tries again (recovery without a restart).
//!
//! TLS (`rediss://`): the stream is wrapped by [`super::tls::StoreTls`] (rustls; the host
//! name always verified; roots from `?ca=PATH` or the system's) before `AUTH`.
//!
//! Secrets: the URL's password is sent only in `AUTH`. [`RedisUrl`]'s `Display`, its `Debug`
//! and every [`RedisError`] show `redis://user@host:port/db`, never the password; server
//! texts are scrubbed of it too.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use gate_core::resp::{encode_command, Decoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};

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
/// Connections to the server, each multiplexed and pipelined (commands go round-robin).
pub const CONNECTIONS: usize = 1;

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

/// How a command's reply did not come.
#[derive(Debug)]
enum Failure {
    /// The connection broke (or never came up) before the command was written: sending it
    /// on a new connection cannot run it twice.
    Unsent(RedisError),
    /// The connection broke after the command was (perhaps) written: not retried.
    Failed(RedisError),
}

/// What a waiter is handed: its reply, or why none came.
type Delivered = Result<Value, Failure>;

/// A one-shot slot one command's reply is put in by its connection's driver.
struct ReplySlot {
    state: Mutex<(Option<Delivered>, Option<Waker>)>,
    /// The connection it was queued on, and how many replies that connection had handed
    /// out then (to tell a stalled connection from a slow command: [`Conn::stalled`]).
    origin: (Weak<Conn>, u64),
}

impl ReplySlot {
    fn put(&self, result: Result<Value, Failure>) {
        let waker = {
            let mut state = lock(&self.state);
            state.0 = Some(result);
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Its command outlived its timeout: if the connection has handed out no reply since
    /// the command was queued, the server (or the path to it) stopped answering, so the
    /// connection is given up (every waiter fails; the next command opens a new one) rather
    /// than left to time out every command until TCP notices, which takes minutes.
    fn timed_out(&self) {
        if let Some(conn) = self.origin.0.upgrade() {
            conn.stalled(self.origin.1);
        }
    }

    /// The reply, once it is there (dropping this future just stops waiting: the driver
    /// still reads the reply and throws it away, so later replies stay in order).
    async fn wait(&self) -> Result<Value, Failure> {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.state);
            match state.0.take() {
                Some(result) => Poll::Ready(result),
                None => {
                    if !state.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        state.1 = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// What a connection's callers and its driver share.
#[derive(Default)]
struct ConnState {
    /// Encoded commands not yet taken by the driver.
    out: Vec<u8>,
    /// One slot per command sent or queued, in order: replies come in this order.
    waiting: VecDeque<Arc<ReplySlot>>,
    /// How many of `waiting`'s last entries are still in `out` (not written).
    unsent: usize,
    /// Why the connection is dead (no more commands go to it).
    dead: bool,
    /// The client is gone: the driver ends once nothing waits.
    closed: bool,
    /// The driver, to wake when `out` gets something.
    driver: Option<Waker>,
    /// Replies handed out so far.
    replies: u64,
    /// No reply came while a command waited out its timeout: the driver gives up.
    stalled: bool,
}

/// One multiplexed connection: every caller queues its command here; one driver task
/// writes what is queued in one write and hands replies out in order.
#[derive(Default)]
struct Conn {
    state: Mutex<ConnState>,
}

impl Conn {
    /// Queues `commands` (contiguous, in order); `None` when the connection is dead.
    fn enqueue(self: &Arc<Self>, commands: &[&[u8]]) -> Option<Vec<Arc<ReplySlot>>> {
        let slots: Vec<Arc<ReplySlot>>;
        let waker = {
            let mut state = lock(&self.state);
            if state.dead {
                return None;
            }
            let origin = (Arc::downgrade(self), state.replies);
            slots = commands
                .iter()
                .map(|_| {
                    Arc::new(ReplySlot {
                        state: Mutex::new((None, None)),
                        origin: origin.clone(),
                    })
                })
                .collect();
            for command in commands {
                state.out.extend_from_slice(command);
            }
            state.waiting.extend(slots.iter().cloned());
            state.unsent += slots.len();
            state.driver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Some(slots)
    }

    /// Marks the connection dead and fails every waiter: those whose command was written
    /// with `failed`, those still queued as unsent.
    fn fail_all(&self, error: &RedisError, connect_failed: bool) {
        let (slots, unsent) = {
            let mut state = lock(&self.state);
            state.dead = true;
            state.out.clear();
            let unsent = std::mem::take(&mut state.unsent);
            (std::mem::take(&mut state.waiting), unsent)
        };
        let written = slots.len() - unsent;
        for (i, slot) in slots.into_iter().enumerate() {
            // A failed connection attempt is final for its waiters (they would only meet
            // the backoff on a new one).
            slot.put(Err(if i < written || connect_failed {
                Failure::Failed(error.clone())
            } else {
                Failure::Unsent(error.clone())
            }));
        }
    }

    /// A command queued when `replies` replies had been handed out timed out: if none came
    /// since, the driver is told to give the connection up.
    fn stalled(&self, replies: u64) {
        let waker = {
            let mut state = lock(&self.state);
            if state.dead || state.replies != replies {
                return;
            }
            state.stalled = true;
            state.driver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn close(&self) {
        let waker = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.driver.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

struct Link {
    /// The connections ([`CONNECTIONS`] slots), each replaced when it dies.
    conns: Vec<Option<Arc<Conn>>>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<RedisError>,
    outage_logged: bool,
    connected_once: bool,
}

struct Inner<R: Runtime> {
    rt: R,
    url: RedisUrl,
    link: Mutex<Link>,
    next: AtomicUsize,
}

impl<R: Runtime> Drop for Inner<R> {
    fn drop(&mut self) {
        for conn in lock(&self.link).conns.iter().flatten() {
            conn.close();
        }
    }
}

/// A Redis client: cheap to clone, its connections shared by every clone.
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unavailable(url: &RedisUrl, why: &str) -> RedisError {
    RedisError::Unavailable {
        at: url.to_string(),
        why: url.scrub(why),
    }
}

/// What one exchange on a connection gave (logging in, before the driver takes over).
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
                    conns: vec![None; CONNECTIONS],
                    retry_at: None,
                    backoff: BACKOFF_FIRST,
                    last_error: None,
                    outage_logged: false,
                    connected_once: false,
                }),
                next: AtomicUsize::new(0),
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

    fn evalsha(script: &Script, keys: &[&str], args: &[String], eval: bool) -> Vec<u8> {
        let numkeys = keys.len().to_string();
        let mut command: Vec<&[u8]> = if eval {
            vec![b"EVAL", script.source.as_bytes(), numkeys.as_bytes()]
        } else {
            vec![b"EVALSHA", script.sha1.as_bytes(), numkeys.as_bytes()]
        };
        command.extend(keys.iter().map(|k| k.as_bytes()));
        command.extend(args.iter().map(|a| a.as_bytes()));
        encode_command(&command)
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
        let reply = self
            .command_encoded(&Self::evalsha(script, keys, args, false), timeout)
            .await?;
        let reply = match reply {
            Value::Error(e) if e.starts_with("NOSCRIPT") => {
                self.command_encoded(&Self::evalsha(script, keys, args, true), timeout)
                    .await?
            }
            other => other,
        };
        match reply {
            Value::Error(e) => Err(self.refused(&e)),
            other => Ok(other),
        }
    }

    /// Runs `script` once per call of `calls` (keys, args), all sent together on one
    /// connection (one write, replies read in order), each bounded by `timeout`; `EVAL`
    /// for those the server answers `NOSCRIPT`. One result per call, in order.
    pub async fn eval_many(
        &self,
        script: &Script,
        calls: &[(Vec<String>, Vec<String>)],
        timeout: Duration,
    ) -> Vec<Result<Value, RedisError>> {
        let encode = |eval: bool, (keys, args): &(Vec<String>, Vec<String>)| {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            Self::evalsha(script, &keys, args, eval)
        };
        let commands: Vec<Vec<u8>> = calls.iter().map(|c| encode(false, c)).collect();
        let mut results = self.pipeline(&commands, timeout).await;
        let again: Vec<usize> = (0..results.len())
            .filter(|&i| matches!(&results[i], Ok(Value::Error(e)) if e.starts_with("NOSCRIPT")))
            .collect();
        if !again.is_empty() {
            let commands: Vec<Vec<u8>> = again.iter().map(|&i| encode(true, &calls[i])).collect();
            for (i, result) in again
                .into_iter()
                .zip(self.pipeline(&commands, timeout).await)
            {
                results[i] = result;
            }
        }
        results
            .into_iter()
            .map(|result| match result {
                Ok(Value::Error(e)) => Err(self.refused(&e)),
                other => other,
            })
            .collect()
    }

    fn refused(&self, why: &str) -> RedisError {
        RedisError::Command {
            at: self.inner.url.to_string(),
            why: self.inner.url.scrub(why),
        }
    }

    fn unavailable(&self, why: &str) -> RedisError {
        unavailable(&self.inner.url, why)
    }

    /// Sends one command and returns its reply (an error reply is returned as
    /// [`Value::Error`]), bounded by `timeout` (connecting included).
    pub async fn command(&self, args: &[&[u8]], timeout: Duration) -> Result<Value, RedisError> {
        self.command_encoded(&encode_command(args), timeout).await
    }

    async fn command_encoded(&self, bytes: &[u8], timeout: Duration) -> Result<Value, RedisError> {
        let deadline = Instant::now() + timeout;
        // A connection found dead before the command was written: once more on a new one.
        for _ in 0..2 {
            let slot = self.send(&[bytes])?.pop();
            let Some(slot) = slot else {
                return Err(self.unavailable("no reply slot"));
            };
            match self.wait(&slot, deadline, timeout).await {
                Err(Failure::Unsent(_)) => continue,
                Err(Failure::Failed(error)) => return Err(error),
                Ok(value) => return Ok(value),
            }
        }
        Err(self.unavailable("the connection broke twice in a row"))
    }

    /// Sends `commands` together on one connection; one result per command.
    async fn pipeline(
        &self,
        commands: &[Vec<u8>],
        timeout: Duration,
    ) -> Vec<Result<Value, RedisError>> {
        let deadline = Instant::now() + timeout;
        let refs: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
        let slots = match self.send(&refs) {
            Ok(slots) => slots,
            Err(error) => return commands.iter().map(|_| Err(error.clone())).collect(),
        };
        let mut results = Vec::with_capacity(slots.len());
        for slot in &slots {
            results.push(match self.wait(slot, deadline, timeout).await {
                Ok(value) => Ok(value),
                Err(Failure::Unsent(error) | Failure::Failed(error)) => Err(error),
            });
        }
        results
    }

    async fn wait(
        &self,
        slot: &ReplySlot,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::timeout(&self.inner.rt, left, slot.wait()).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(failure)) => {
                if let Failure::Failed(error) = &failure {
                    self.note_outage(error);
                }
                Err(failure)
            }
            Err(crate::Elapsed) => {
                slot.timed_out();
                let error =
                    self.unavailable(&format!("no answer within {} ms", timeout.as_millis()));
                self.note_outage(&error);
                Err(Failure::Failed(error))
            }
        }
    }

    /// Queues `commands` on a live connection (opening one if its slot is empty or dead);
    /// during the backoff after a failed connection attempt, that failure at once.
    fn send(&self, commands: &[&[u8]]) -> Result<Vec<Arc<ReplySlot>>, RedisError> {
        let mut link = lock(&self.inner.link);
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % link.conns.len();
        if let Some(conn) = &link.conns[i] {
            if let Some(slots) = conn.enqueue(commands) {
                return Ok(slots);
            }
        }
        if let (Some(retry_at), Some(error)) = (link.retry_at, &link.last_error) {
            if Instant::now() < retry_at {
                return Err(error.clone());
            }
        }
        let conn = Arc::new(Conn::default());
        let slots = conn
            .enqueue(commands)
            .ok_or_else(|| self.unavailable("a new connection was dead at once"))?;
        link.conns[i] = Some(conn.clone());
        // Others wait for this attempt rather than start their own.
        link.retry_at = None;
        drop(link);
        self.inner
            .rt
            .spawn(drive(Arc::downgrade(&self.inner), conn));
        Ok(slots)
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
}

impl<R: Runtime> Inner<R> {
    /// Books a connection attempt's outcome: the backoff after a failure, its reset after a
    /// success.
    fn connected(&self, result: Result<(), &RedisError>) {
        let mut link = lock(&self.link);
        match result {
            Ok(()) => {
                if link.outage_logged || link.last_error.is_some() {
                    tracing::info!("Redis at {} is reachable again", self.url);
                } else if !link.connected_once {
                    tracing::debug!("connected to Redis at {}", self.url);
                }
                link.connected_once = true;
                link.retry_at = None;
                link.last_error = None;
                link.backoff = BACKOFF_FIRST;
                link.outage_logged = false;
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
            }
        }
    }
}

/// A connection's driver: connects and logs in, then writes whatever is queued and hands
/// each reply to the oldest waiter, until the connection breaks (every waiter fails at
/// once) or the client is gone and nothing waits.
async fn drive<R: Runtime>(inner: Weak<Inner<R>>, conn: Arc<Conn>) {
    let Some((rt, url)) = inner.upgrade().map(|i| (i.rt.clone(), i.url.clone())) else {
        conn.fail_all(
            &RedisError::Unavailable {
                at: String::new(),
                why: "the client is gone".to_owned(),
            },
            true,
        );
        return;
    };
    let opened = match crate::timeout(&rt, CONNECT_TIMEOUT, open(&rt, &url)).await {
        Ok(result) => result,
        Err(crate::Elapsed) => Err(unavailable(
            &url,
            &format!("no connection within {} ms", CONNECT_TIMEOUT.as_millis()),
        )),
    };
    if let Some(inner) = inner.upgrade() {
        inner.connected(opened.as_ref().map(|_| ()));
    }
    let (mut stream, mut decoder) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            conn.fail_all(&error, true);
            return;
        }
    };
    let why = pump(&conn, &mut *stream, &mut decoder).await;
    if let Some(why) = why {
        conn.fail_all(&unavailable(&url, &why), false);
    }
}

/// Moves commands out and replies in; `None` when the client closed it, else why it broke.
async fn pump(conn: &Conn, stream: &mut dyn ByteStream, decoder: &mut Decoder) -> Option<String> {
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let mut replies: Vec<Value> = Vec::new();
    let mut stream = Pin::new(stream);
    std::future::poll_fn(|cx| loop {
        let mut progressed = false;
        {
            let mut state = lock(&conn.state);
            if state.stalled {
                return Poll::Ready(Some(
                    "no reply came while a command waited out its timeout; the connection \
                     is given up and a new one opened"
                        .to_owned(),
                ));
            }
            if written == out.len() {
                out.clear();
                written = 0;
                if state.closed && state.waiting.is_empty() {
                    return Poll::Ready(None);
                }
                std::mem::swap(&mut out, &mut state.out);
                state.unsent = 0;
            }
            // Woken for new commands and for a stall while the socket waits.
            if !state
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.driver = Some(cx.waker().clone());
            }
        }
        while written < out.len() {
            match stream.as_mut().poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some("sending: the connection took nothing".to_owned()))
                }
                Poll::Ready(Ok(n)) => {
                    written += n;
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(format!("sending: {e}"))),
                Poll::Pending => break,
            }
        }
        if progressed && written == out.len() {
            if let Poll::Ready(Err(e)) = stream.as_mut().poll_flush(cx) {
                return Poll::Ready(Some(format!("sending: {e}")));
            }
        }
        let mut read = ReadBuf::new(&mut buf);
        match stream.as_mut().poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                return Poll::Ready(Some("the server closed the connection".to_owned()))
            }
            Poll::Ready(Ok(())) => {
                decoder.push(read.filled());
                progressed = true;
                loop {
                    match decoder.next_value() {
                        Ok(Some(value)) => replies.push(value),
                        Ok(None) => break,
                        Err(e) => {
                            return Poll::Ready(Some(format!(
                                "the server's reply is not RESP: {e}"
                            )))
                        }
                    }
                }
                if !replies.is_empty() {
                    let slots: Vec<Arc<ReplySlot>> = {
                        let mut state = lock(&conn.state);
                        let sent = state.waiting.len() - state.unsent;
                        if replies.len() > sent {
                            return Poll::Ready(Some(
                                "the server sent a reply no command asked for".to_owned(),
                            ));
                        }
                        state.replies += replies.len() as u64;
                        state.waiting.drain(..replies.len()).collect()
                    };
                    for (slot, value) in slots.into_iter().zip(replies.drain(..)) {
                        slot.put(Ok(value));
                    }
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Some(format!("receiving: {e}"))),
            Poll::Pending => {}
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await
}

/// A new connection, logged in (`AUTH`, `SELECT`).
async fn open<R: Runtime>(
    rt: &R,
    url: &RedisUrl,
) -> Result<(Box<dyn ByteStream>, Decoder), RedisError> {
    let addrs: Vec<SocketAddr> = match url.host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, url.port)],
        Err(_) => rt
            .resolve(&url.host, url.port)
            .await
            .map_err(|e| unavailable(url, &format!("resolving {}: {e}", url.host)))?,
    };
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match rt.connect_tcp(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(format!("connecting to {addr}: {e}")),
        }
    }
    let Some(stream) = stream else {
        return Err(unavailable(
            url,
            &last.unwrap_or_else(|| format!("{} has no address", url.host)),
        ));
    };
    // `rediss://`: TLS over the TCP stream (the handshake's error says what to fix), before
    // `AUTH`, so the password only ever travels inside it.
    let mut stream: Box<dyn ByteStream> = match &url.tls {
        Some(tls) => match tls.handshake(Box::new(stream)).await {
            Ok(stream) => Box::new(stream),
            Err(why) => return Err(unavailable(url, &why)),
        },
        None => Box::new(stream),
    };
    let mut decoder = Decoder::new();
    if let Some(password) = &url.password {
        let mut auth: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &url.username {
            auth.push(user.as_bytes());
        }
        auth.push(password.as_bytes());
        match exchange(&mut *stream, &mut decoder, &encode_command(&auth)).await {
            Exchange::Reply(Value::Error(e)) => {
                return Err(unavailable(
                    url,
                    &format!(
                        "the login was refused ({e}); check the user and password in \
                         store.redis_url"
                    ),
                ))
            }
            Exchange::Reply(_) => {}
            Exchange::Broken(why) => return Err(unavailable(url, &why)),
        }
    }
    if url.db != 0 {
        let db = url.db.to_string();
        match exchange(
            &mut *stream,
            &mut decoder,
            &encode_command(&[b"SELECT".as_slice(), db.as_bytes()]),
        )
        .await
        {
            Exchange::Reply(Value::Error(e)) => {
                return Err(unavailable(url, &format!("SELECT {db} was refused: {e}")))
            }
            Exchange::Reply(_) => {}
            Exchange::Broken(why) => return Err(unavailable(url, &why)),
        }
    }
    Ok((stream, decoder))
}

/// Writes `bytes` and reads one reply.
async fn exchange(stream: &mut dyn ByteStream, decoder: &mut Decoder, bytes: &[u8]) -> Exchange {
    if let Err(e) = stream.write_all(bytes).await {
        return Exchange::Broken(format!("sending: {e}"));
    }
    if let Err(e) = stream.flush().await {
        return Exchange::Broken(format!("sending: {e}"));
    }
    let mut buf = [0u8; 4096];
    loop {
        match decoder.next_value() {
            Ok(Some(value)) => return Exchange::Reply(value),
            Ok(None) => {}
            Err(e) => return Exchange::Broken(format!("the server's reply is not RESP: {e}")),
        }
        match stream.read(&mut buf).await {
            Ok(0) => return Exchange::Broken("the server closed the connection".to_owned()),
            Ok(n) => decoder.push(&buf[..n]),
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
