//! `gate-core`: the protocol logic of Gate as plain data and state machines.
//!
//! Nothing in this crate performs I/O. There are no sockets, files, clocks, threads,
//! async runtimes or global randomness here: time arrives as a `now: Instant` argument,
//! randomness as a seed, bytes as slices the caller owns. Results come back as return
//! values or from `poll_*` methods the caller drains. The runtime crates (`runtime-tokio`,
//! `runtime-smol`) and the binaries (`daemon/`, `relay/`) own every socket and buffer.
//!
//! Modules:
//! - [`accounting`]: key policies, money, budget periods, usage records.
//! - [`sni`]: incremental TLS ClientHello reader (server name and ALPN).
//! - [`tunnel`]: the relay <-> daemon wire protocol: frames, decoder, sessions.
//! - [`route`]: model routing with a circuit breaker, and the relay's name table.
//! - [`config`]: layered configuration (defaults < nix files < runtime < environment) with provenance.
//! - [`llm`]: OpenAI / Anthropic wire types, SSE parsing and encoding, protocol conversion.
//! - [`resp`]: the Redis protocol (RESP2/RESP3): commands encoded, replies decoded.

#![forbid(unsafe_code)]

pub mod accounting;
pub mod config;
pub mod llm;
pub mod resp;
pub mod route;
pub mod sni;
pub mod tunnel;
