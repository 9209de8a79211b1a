//! PostgreSQL for shared state: one multiplexed connection per process, made through the
//! [`Runtime`], re-made with backoff when it breaks, and the schema migrated on every
//! (re)connection under an advisory lock.
//!
//! Why `tokio-postgres` without its `runtime` feature (decision in ARCHITECTURE.md, "Shared
//! store"): `Config::connect_raw` speaks the protocol over any stream with tokio's
//! `AsyncRead`/`AsyncWrite`, which every [`Runtime`] stream already has, and the `Connection`
//! it returns is a plain future that [`Runtime::spawn`] drives on tokio or smol; no tokio
//! reactor or timer is used. Queries from many tasks are pipelined on the one connection, so
//! no pool is needed at the relay's and daemon's rates.
//!
//! Secrets: the URL's password is used only by the client's authentication. What this module
//! shows (the [`PgUrl`]'s `Display`, every [`StoreError`]) names the user, host, port and
//! database, never the password, and any error text that would contain it is scrubbed.
//!
//! Must not: block the caller's executor (every wait is bounded by [`OPERATION_TIMEOUT`] or
//! the connect timeout), or know any binary's tables.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row};

use super::tls::{PgStream, PgTlsConnect, StoreKind, StoreTls, Verify};
use crate::{ByteStream, Runtime};

/// How long one query may take before the store is judged unavailable.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection attempt may take (unless the URL's `connect_timeout` says less).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait after a failed connection attempt; doubled after each further failure.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The advisory lock migrations hold (`pg_advisory_xact_lock`), one for every Gate schema:
/// `0x6761_7465` is "gate".
pub const MIGRATION_LOCK_KEY: i64 = 0x6761_7465;
/// The table that records which migrations ran: (component, version).
pub const MIGRATIONS_TABLE: &str = "gate_schema_migrations";

/// Why the store could not do what was asked. The text never holds the URL's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `[store] url` is not usable.
    #[error("store.url: {0}")]
    Url(String),
    /// The server could not be reached, refused the login, or the connection broke.
    #[error("PostgreSQL at {at} is unavailable: {why}")]
    Unavailable {
        /// user@host:port/database.
        at: String,
        /// What went wrong.
        why: String,
    },
    /// A statement failed on a working connection.
    #[error("PostgreSQL at {at}: {why}")]
    Query {
        /// user@host:port/database.
        at: String,
        /// What went wrong.
        why: String,
    },
}

/// TLS to PostgreSQL, with libpq's meanings (`sslmode=` in the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (the default); the certificate is checked only when
    /// `sslrootcert` names the CA (then as `verify-ca`), as libpq does.
    Prefer,
    /// TLS or no connection; the certificate is checked only when `sslrootcert` names the CA
    /// (then as `verify-ca`), as libpq does.
    Require,
    /// TLS, the certificate's chain checked against `sslrootcert` or the system's roots.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host of the URL.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err(StoreError::Url(
                "sslmode=allow is not supported; use sslmode=prefer (TLS when the server \
                 offers it) or disable"
                    .to_owned(),
            )),
            other => Err(StoreError::Url(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }

    /// Its name in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// A parsed `postgres://` URL; `Display` shows it without the password.
#[derive(Clone)]
pub struct PgUrl {
    config: Config,
    shown: String,
    password: Option<String>,
    tls_mode: TlsMode,
    /// The TLS settings when TLS may be used (not with `disable`, nor over a Unix socket,
    /// where libpq does not use TLS either).
    tls: Option<StoreTls>,
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PgUrl").field(&self.shown).finish()
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgUrl {
    /// Parses `postgres://user:password@host:port/database?options`. A Unix socket directory
    /// is given as `host=/run/postgresql` (query parameter) or a percent-encoded path.
    ///
    /// TLS as libpq: `sslmode=disable|prefer|require|verify-ca|verify-full` (default
    /// `prefer`) and `sslrootcert=PATH` (PEM; the CA certificates to trust) or
    /// `sslrootcert=system` (the system's roots, which libpq allows only with
    /// `verify-full`, the default then). Without `sslrootcert`, `verify-ca` and
    /// `verify-full` trust the system's roots. A root file that cannot be read is an error
    /// here, not at the first connection.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(StoreError::Url(
                "expected a URL starting with postgres:// or postgresql:// \
                 (postgres://user:password@host:5432/database)"
                    .to_owned(),
            ));
        }
        // tokio-postgres knows sslmode disable, prefer and require only, and no sslrootcert:
        // those two are taken out here and the rest is its to parse.
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let mut kept: Vec<&str> = Vec::new();
        let mut mode = None;
        let mut root = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = Some(TlsMode::parse(&super::tls::percent_decode(value))?),
                "sslrootcert" => {
                    let value = super::tls::percent_decode(value);
                    if value.is_empty() {
                        return Err(StoreError::Url(
                            "sslrootcert= names no file (sslrootcert=/path/to/ca.pem)".to_owned(),
                        ));
                    }
                    root = Some(value);
                }
                "sslcert" | "sslkey" | "sslpassword" => {
                    return Err(StoreError::Url(format!(
                        "{key}: client certificates are not supported; log in with a password"
                    )))
                }
                _ => kept.push(pair),
            }
        }
        let system_roots = root.as_deref() == Some("system");
        let mode = match (mode, system_roots) {
            (None, true) => TlsMode::VerifyFull,
            (Some(m), true) if m != TlsMode::VerifyFull => {
                return Err(StoreError::Url(format!(
                    "sslrootcert=system needs sslmode=verify-full (not {}), as in libpq: \
                     trusting every public CA is safe only with the host name checked",
                    m.as_str()
                )))
            }
            (mode, _) => mode.unwrap_or(TlsMode::Prefer),
        };
        kept.push(match mode {
            TlsMode::Disable => "sslmode=disable",
            TlsMode::Prefer => "sslmode=prefer",
            _ => "sslmode=require",
        });
        let rebuilt = format!("{base}?{}", kept.join("&"));
        let mut config: Config = rebuilt.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's messages name options and positions, not values; scrub anyway.
            StoreError::Url(format!(
                "not a valid PostgreSQL URL ({}); check the percent-encoding of the user and \
                 password, the host and the port",
                describe(&e)
            ))
        })?;
        let root_file = root.filter(|_| !system_roots).map(PathBuf::from);
        let verify = match mode {
            TlsMode::VerifyFull => Verify::Full,
            TlsMode::VerifyCa => Verify::Chain,
            // libpq: with a root certificate, prefer and require check the chain too.
            _ if root_file.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        };
        let tls = match config.get_hosts().first() {
            Some(Host::Tcp(host)) if mode != TlsMode::Disable => Some(
                StoreTls::new(StoreKind::Postgres, host, verify, root_file.as_deref()).map_err(
                    |e| StoreError::Url(format!("TLS (sslmode={}): {e}", mode.as_str())),
                )?,
            ),
            Some(Host::Unix(_)) => {
                // libpq does not use TLS on Unix sockets; neither do we.
                config.ssl_mode(SslMode::Disable);
                None
            }
            _ => None,
        };
        if config.get_hosts().is_empty() {
            return Err(StoreError::Url("the URL names no host".to_owned()));
        }
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("(current user)");
        let database = config.get_dbname().unwrap_or(user);
        let shown = format!("postgres://{user}@{host}:{port}/{database}");
        let mut parsed = Self {
            config,
            shown,
            password,
            tls_mode: mode,
            tls,
        };
        parsed.shown = parsed.scrub(&parsed.shown.clone());
        Ok(parsed)
    }

    /// `text` with the password (if any) replaced by `(redacted)`.
    pub fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(password) => text.replace(password.as_str(), "(redacted)"),
            None => text.to_owned(),
        }
    }

    /// The `sslmode` in force (`prefer` when the URL names none).
    pub fn tls_mode(&self) -> TlsMode {
        self.tls_mode
    }

    fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT)
            .min(CONNECT_TIMEOUT)
    }
}

/// One schema change, applied once, in order of `version`, inside the migration transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// 1, 2, 3, ...: never reused, never edited once released.
    pub version: i32,
    /// What it does, recorded beside the version.
    pub description: &'static str,
    /// The SQL (several statements allowed).
    pub sql: &'static str,
}

/// A component's migrations: `component` names its rows in [`MIGRATIONS_TABLE`] (`relay`,
/// `daemon`), so several components can share one database.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The component.
    pub component: &'static str,
    /// Its migrations, by ascending version.
    pub migrations: &'static [Migration],
}

/// The connection as last known.
struct Link {
    client: Option<Arc<Client>>,
    /// No new attempt before this, after a failure.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<StoreError>,
    /// Whether the outage was logged (once per outage, and its end once).
    outage_logged: bool,
}

struct Inner<R: Runtime> {
    rt: R,
    url: PgUrl,
    schema: Schema,
    link: Mutex<Link>,
    /// One connection attempt at a time: holding the token is connecting.
    connect_token: (async_channel::Sender<()>, async_channel::Receiver<()>),
}

/// A PostgreSQL store: cheap to clone, one connection shared by every clone.
pub struct Postgres<R: Runtime> {
    inner: Arc<Inner<R>>,
}

impl<R: Runtime> Clone for Postgres<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime> fmt::Debug for Postgres<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.inner.url)
            .field("component", &self.inner.schema.component)
            .finish_non_exhaustive()
    }
}

fn lock(mutex: &Mutex<Link>) -> MutexGuard<'_, Link> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<R: Runtime> Postgres<R> {
    /// A store for `url`; nothing is connected until first used (or [`Self::connect`]).
    pub fn new(rt: R, url: PgUrl, schema: Schema) -> Self {
        let connect_token = async_channel::bounded(1);
        let _ = connect_token.0.try_send(());
        Self {
            inner: Arc::new(Inner {
                rt,
                url,
                schema,
                link: Mutex::new(Link {
                    client: None,
                    retry_at: None,
                    backoff: BACKOFF_FIRST,
                    last_error: None,
                    outage_logged: false,
                }),
                connect_token,
            }),
        }
    }

    /// The URL without its password.
    pub fn url(&self) -> &PgUrl {
        &self.inner.url
    }

    /// Connects (and migrates) now unless connected; the error says why it could not.
    pub async fn connect(&self) -> Result<(), StoreError> {
        self.client().await.map(drop)
    }

    /// Whether a connection is up now (as last seen; a broken one is noticed on next use).
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.link)
            .client
            .as_ref()
            .is_some_and(|client| !client.is_closed())
    }

    /// Runs one statement and returns its rows, bounded by [`OPERATION_TIMEOUT`]. A broken
    /// connection is dropped, and the next call connects again (after the backoff).
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        match crate::timeout(&self.inner.rt, OPERATION_TIMEOUT, client.query(sql, params)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(self.failed(&client, &e)),
            Err(crate::Elapsed) => {
                self.drop_client(&client);
                Err(self.unavailable(format!(
                    "no answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Runs one statement and returns the number of rows it changed.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        match crate::timeout(
            &self.inner.rt,
            OPERATION_TIMEOUT,
            client.execute(sql, params),
        )
        .await
        {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(e)) => Err(self.failed(&client, &e)),
            Err(crate::Elapsed) => {
                self.drop_client(&client);
                Err(self.unavailable(format!(
                    "no answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                )))
            }
        }
    }

    fn unavailable(&self, why: String) -> StoreError {
        StoreError::Unavailable {
            at: self.inner.url.to_string(),
            why: self.inner.url.scrub(&why),
        }
    }

    /// Classifies a failed statement: a closed connection is an outage (and forgotten).
    fn failed(&self, client: &Arc<Client>, error: &tokio_postgres::Error) -> StoreError {
        let why = self.inner.url.scrub(&describe(error));
        if error.is_closed() || client.is_closed() || error.as_db_error().is_none() {
            self.drop_client(client);
            let error = StoreError::Unavailable {
                at: self.inner.url.to_string(),
                why,
            };
            self.note_outage(&error);
            return error;
        }
        StoreError::Query {
            at: self.inner.url.to_string(),
            why,
        }
    }

    fn drop_client(&self, client: &Arc<Client>) {
        let mut link = lock(&self.inner.link);
        if link
            .client
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, client))
        {
            link.client = None;
        }
    }

    fn note_outage(&self, error: &StoreError) {
        let mut link = lock(&self.inner.link);
        if !link.outage_logged {
            link.outage_logged = true;
            tracing::warn!(
                component = self.inner.schema.component,
                "{error}; retrying in the background, at most every {} s",
                BACKOFF_MAX.as_secs()
            );
        }
    }

    /// The connected client: the current one, or a new connection (one attempt at a time;
    /// during the backoff after a failure, that failure at once).
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        if let Some(client) = self.ready()? {
            return Ok(client);
        }
        // Wait for the connecting token; whoever held it may have connected meanwhile. The
        // guard gives it back also when this future is dropped mid-connect (a caller's
        // timeout), or the next caller would wait forever.
        let _token = match self.inner.connect_token.1.recv().await {
            Ok(()) => TokenGuard(&self.inner.connect_token.0),
            Err(_) => return Err(self.unavailable("the store is closing".to_owned())),
        };
        match self.ready()? {
            Some(client) => Ok(client),
            None => self.connect_once().await,
        }
    }

    /// The current client if it works; the last error while backing off; `None`: connect.
    fn ready(&self) -> Result<Option<Arc<Client>>, StoreError> {
        let link = lock(&self.inner.link);
        if let Some(client) = &link.client {
            if !client.is_closed() {
                return Ok(Some(client.clone()));
            }
        }
        if let (Some(retry_at), Some(error)) = (link.retry_at, &link.last_error) {
            if Instant::now() < retry_at {
                return Err(error.clone());
            }
        }
        Ok(None)
    }

    async fn connect_once(&self) -> Result<Arc<Client>, StoreError> {
        let inner = &self.inner;
        let attempt = crate::timeout(&inner.rt, inner.url.connect_timeout(), self.open()).await;
        let result = match attempt {
            Ok(result) => result,
            Err(crate::Elapsed) => Err(self.unavailable(format!(
                "no connection within {} s",
                inner.url.connect_timeout().as_secs()
            ))),
        };
        let mut link = lock(&inner.link);
        match result {
            Ok(client) => {
                let client = Arc::new(client);
                if link.outage_logged {
                    tracing::info!(
                        component = inner.schema.component,
                        "PostgreSQL at {} is reachable again",
                        inner.url
                    );
                } else {
                    tracing::info!(
                        component = inner.schema.component,
                        "connected to PostgreSQL at {}",
                        inner.url
                    );
                }
                link.client = Some(client.clone());
                link.retry_at = None;
                link.last_error = None;
                link.backoff = BACKOFF_FIRST;
                link.outage_logged = false;
                Ok(client)
            }
            Err(error) => {
                link.client = None;
                link.retry_at = Some(Instant::now() + link.backoff);
                link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
                link.last_error = Some(error.clone());
                if !link.outage_logged {
                    link.outage_logged = true;
                    tracing::warn!(
                        component = inner.schema.component,
                        "{error}; retrying in the background, at most every {} s",
                        BACKOFF_MAX.as_secs()
                    );
                } else {
                    tracing::debug!(component = inner.schema.component, "{error}");
                }
                Err(error)
            }
        }
    }

    /// Opens the stream, logs in, spawns the connection's driver and migrates.
    async fn open(&self) -> Result<Client, StoreError> {
        let inner = &self.inner;
        let stream = self.open_stream().await?;
        let (mut client, connection) = inner
            .url
            .config
            .connect_raw(PgStream(stream), PgTlsConnect(inner.url.tls.clone()))
            .await
            .map_err(|e| {
                let mut why = describe(&e);
                if why.contains("server does not support TLS") {
                    why.push_str(&format!(
                        " (sslmode={}); turn TLS on in the server (ssl = on, ssl_cert_file, \
                         ssl_key_file in postgresql.conf) or use sslmode=prefer",
                        inner.url.tls_mode.as_str()
                    ));
                }
                self.unavailable(why)
            })?;
        let component = inner.schema.component;
        let url = inner.url.clone();
        inner.rt.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(
                    component,
                    "PostgreSQL connection ended: {}",
                    url.scrub(&describe(&e))
                );
            }
        });
        migrate(&mut client, &inner.schema)
            .await
            .map_err(|e| match e {
                MigrateError::Db(e) => StoreError::Query {
                    at: inner.url.to_string(),
                    why: format!("migrating the schema: {}", inner.url.scrub(&describe(&e))),
                },
                MigrateError::Newer { found, known } => StoreError::Query {
                    at: inner.url.to_string(),
                    why: format!(
                        "the database's {component} schema is at version {found}, newer than \
                         this program knows ({known}); upgrade it to match the others"
                    ),
                },
            })?;
        Ok(client)
    }

    async fn open_stream(&self) -> Result<Box<dyn ByteStream>, StoreError> {
        let inner = &self.inner;
        let port = inner.url.port();
        match inner.url.config.get_hosts().first() {
            Some(Host::Tcp(host)) => {
                let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, port)],
                    Err(_) => inner
                        .rt
                        .resolve(host, port)
                        .await
                        .map_err(|e| self.unavailable(format!("resolving {host}: {e}")))?,
                };
                let mut last = None;
                for addr in addrs {
                    match inner.rt.connect_tcp(addr).await {
                        Ok(stream) => return Ok(Box::new(stream)),
                        Err(e) => last = Some(format!("connecting to {addr}: {e}")),
                    }
                }
                Err(self.unavailable(last.unwrap_or_else(|| format!("{host} has no address"))))
            }
            Some(Host::Unix(dir)) => {
                let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
                let stream = inner.rt.connect_unix(&path).await.map_err(|e| {
                    self.unavailable(format!("connecting to {}: {e}", path.display()))
                })?;
                Ok(Box::new(stream))
            }
            None => Err(StoreError::Url("the URL names no host".to_owned())),
        }
    }
}

/// The connecting token, given back when dropped.
struct TokenGuard<'a>(&'a async_channel::Sender<()>);

impl Drop for TokenGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

enum MigrateError {
    Db(tokio_postgres::Error),
    Newer { found: i32, known: i32 },
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

/// Applies the schema's migrations that [`MIGRATIONS_TABLE`] does not list, in one
/// transaction that first takes [`MIGRATION_LOCK_KEY`]: processes that start together wait
/// for each other, and the later ones find everything applied.
async fn migrate(client: &mut Client, schema: &Schema) -> Result<(), MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
            component text NOT NULL,
            version integer NOT NULL,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (component, version)
        )"
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {MIGRATIONS_TABLE} WHERE component = $1"),
            &[&schema.component],
        )
        .await?
        .iter()
        .map(|row| row.get::<_, i32>(0))
        .collect();
    let known = schema
        .migrations
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    if let Some(found) = applied.iter().copied().filter(|v| *v > known).max() {
        return Err(MigrateError::Newer { found, known });
    }
    for migration in schema.migrations {
        if applied.contains(&migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            &format!(
                "INSERT INTO {MIGRATIONS_TABLE} (component, version, description) \
                 VALUES ($1, $2, $3)"
            ),
            &[
                &schema.component,
                &migration.version,
                &migration.description,
            ],
        )
        .await?;
        tracing::info!(
            component = schema.component,
            version = migration.version,
            "applied schema migration: {}",
            migration.description
        );
    }
    tx.commit().await?;
    Ok(())
}

/// An error with its causes (tokio-postgres puts the server's message in the source).
fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_display_and_errors_hide_the_password() {
        let url = PgUrl::parse("postgres://gate:s3cr%40t-pw@db.example:6543/claims").unwrap();
        assert_eq!(url.to_string(), "postgres://gate@db.example:6543/claims");
        assert!(!format!("{url:?}").contains("s3cr"));
        assert_eq!(url.scrub("x s3cr@t-pw y"), "x (redacted) y");
    }

    #[test]
    fn bad_urls_say_what_is_expected() {
        let err = PgUrl::parse("mysql://u:p@h/db").unwrap_err().to_string();
        assert!(err.contains("postgres://"), "{err}");
        let err = PgUrl::parse("postgres://u:hunter2@h:notaport/db")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = PgUrl::parse("postgres://u:p@h/db?sslmode=verify-everything")
            .unwrap_err()
            .to_string();
        assert!(err.contains("verify-full"), "{err}");
        let err =
            PgUrl::parse("postgres://u:p@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("/nonexistent/ca.pem") && !err.contains(":p@"),
            "{err}"
        );
        let err = PgUrl::parse("postgres://u:p@h/db?sslmode=require&sslrootcert=system")
            .unwrap_err()
            .to_string();
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn ssl_modes_as_libpq() {
        let mode = |url: &str| PgUrl::parse(url).unwrap();
        let url = mode("postgres://u:p@h/db");
        assert_eq!(url.tls_mode(), TlsMode::Prefer);
        assert_eq!(
            url.tls.as_ref().map(StoreTls::verify),
            Some(Verify::Nothing)
        );
        let url = mode("postgres://u:p@h/db?sslmode=disable");
        assert!(url.tls.is_none());
        let url = mode("postgres://u:p@h/db?sslmode=require");
        assert_eq!(url.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(
            url.tls.as_ref().map(StoreTls::verify),
            Some(Verify::Nothing)
        );
        let url = mode("postgres://u:p@h/db?connect_timeout=3&sslmode=verify-ca");
        assert_eq!(url.tls.as_ref().map(StoreTls::verify), Some(Verify::Chain));
        assert_eq!(url.connect_timeout(), Duration::from_secs(3));
        let url = mode("postgres://u:p@h/db?sslrootcert=system");
        assert_eq!(url.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(url.tls.as_ref().map(StoreTls::verify), Some(Verify::Full));
        // No TLS over a Unix socket, whatever the mode (libpq's rule).
        let url = mode("postgres://u@%2Frun%2Fpostgresql/db?sslmode=verify-full");
        assert!(url.tls.is_none());
        assert_eq!(url.config.get_ssl_mode(), SslMode::Disable);
    }
}
