//! The relay <-> daemon tunnel's runtime side, shared by both binaries (`gate` and
//! `gate-relay`) so that the daemon does not depend on the relay crate.
//!
//! Owns: the node identity (Ed25519 key, node id, self-signed QUIC certificate, peer
//! verifiers: [`identity`]), the state-directory file helpers the identity is stored with
//! ([`state`]), the runtime-independent pieces both ends use (shutdown signal, race, replaying
//! stream, QUIC endpoint with a stable reset key: [`support`]), the tunnel over TLS/TCP with
//! HTTP/2 streams for networks that drop UDP ([`tcp`]), the one control-stream driver
//! both ends run ([`driver`]) and the daemon's relay client ([`client`]).
//!
//! Must not: make protocol decisions (those are `gate_core::tunnel`'s: the driver only moves
//! frames between the QUIC control stream and a core session), route HTTPS clients or talk to
//! DNS providers (the relay's `server`), or terminate TLS (the daemon's `remote`).

pub mod client;
pub mod driver;
pub mod identity;
pub mod state;
pub mod support;
pub mod tcp;
