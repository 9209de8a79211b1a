//! Shared state on existing servers, for daemons and relays that run as several processes
//! (issue 15). [`postgres`]: the PostgreSQL client glue both binaries use; [`redis`]: a small
//! Redis client for the daemon's shared rate limits and budget reservations.
//!
//! Owns: connecting through the [`crate::Runtime`] (so it runs on tokio and smol alike),
//! reconnecting with backoff, versioned migrations that two processes starting together run
//! once, and errors that never carry the URL's password. Must not: hold what is stored (each
//! binary keeps its own tables and queries) or decide anything on the stored data.

pub mod postgres;
pub mod redis;
pub mod tls;

pub use postgres::{Migration, PgUrl, Postgres, Schema, StoreError, TlsMode};
pub use redis::{Redis, RedisError, RedisUrl, Script};
pub use tls::{StoreKind, StoreTls, Verify};
/// Parameter values of [`Postgres::query`] and [`Postgres::execute`].
pub use tokio_postgres::types::ToSql;
/// The rows [`Postgres::query`] returns.
pub use tokio_postgres::Row;
