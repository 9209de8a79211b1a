//! `gate-relay`: the public entry point. Reads the SNI of incoming TLS connections
//! without terminating them and forwards the bytes over QUIC to the daemon that owns the
//! name (DESIGN.md §4). Written once over [`gate_rt::Runtime`].
//!
//! Code map:
//! - [`identity`]: Ed25519 node key, node id, self-signed QUIC certificate, peer verifiers
//!   (shared with the daemon).
//! - [`server`]: `gate-relay serve`: HTTPS listener, SNI routing, QUIC endpoints, daemon
//!   sessions, forwarding, limits, name persistence, metrics.
//! - `forward`: one forwarded connection's copy loop, TCP <-> QUIC stream, without buffers
//!   of its own while idle.
//! - [`client`]: the daemon's side: [`client::RelayClient`] keeps a registration with every
//!   configured relay and hands forwarded streams to the daemon.
//! - [`settings`]: the relay's settings and their defaults.
//! - [`state`]: state directory rule and atomic file writes.
//! - [`status`]: `gate-relay status`: the status snapshot a running relay writes into its
//!   state directory, liveness, and rendering.
//! - [`dns`]: the DNS provider (Cloudflare) and the ACME challenge records it writes.
//! - [`support`]: shutdown signal, race, replaying stream wrapper, QUIC endpoint constructor.
//! - [`cli`]: the command line.

pub mod cli;
pub mod client;
pub mod dns;
mod forward;
pub mod identity;
pub mod server;
pub mod settings;
pub mod state;
pub mod status;
pub mod support;
