//! `gate-relay`: the public entry point. Reads the SNI of incoming TLS connections
//! without terminating them and forwards the bytes over QUIC to the daemon that owns the
//! name (DESIGN.md §4). Written once over [`gate_rt::Runtime`].
//!
//! Code map:
//! - [`identity`], [`client`], [`state`], [`support`]: re-exports of `gate_rt::tunnel` (node
//!   identity, the daemon's relay client, state-directory files, shutdown/race/streams), which
//!   both binaries share.
//! - [`server`]: `gate-relay serve`: HTTPS listener, SNI routing, QUIC endpoints, daemon
//!   sessions, forwarding, limits, name persistence, metrics.
//! - `forward`: one forwarded connection's copy loop, TCP <-> QUIC stream, without buffers
//!   of its own while idle.
//! - [`settings`]: the relay's settings and their defaults.
//! - [`status`]: `gate-relay status`: the status snapshot a running relay writes into its
//!   state directory, liveness, and rendering.
//! - [`dns`]: the DNS provider (Cloudflare) and the ACME challenge records it writes.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod cli;
pub mod dns;
mod forward;
pub mod server;
pub mod settings;
pub mod status;

// Shared with the daemon; they live in `gate_rt::tunnel` so that the daemon does not depend on
// this crate. Re-exported under their old paths.
pub use gate_rt::tunnel::{client, identity, state, support};
