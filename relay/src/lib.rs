//! `gate-relay`: the public entry point. Reads the SNI of incoming TLS connections
//! without terminating them and forwards the bytes over QUIC to the daemon that owns the
//! name (DESIGN.md §4). Written once over [`gate_rt::Runtime`].

pub mod cli;
pub mod dns;
