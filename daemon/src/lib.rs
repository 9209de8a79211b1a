//! `gate-daemon`: the Gate AI gateway (`gate` binary) as a library.
//!
//! The daemon logic is written once, generic over [`gate_rt::Runtime`], and driven by
//! `gate-runtime-tokio` or `gate-runtime-smol` (`--runtime tokio|smol`). Protocol logic
//! (routing, SSE, conversion, config layering) lives in `gate-core`; this crate does the
//! I/O around it: sockets, files, the environment, logs.
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod app;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod commands;
pub mod convert;
pub mod daemon;
pub mod errors;
pub mod gateway;
pub mod metrics;
pub mod reload;
pub mod remote;
pub mod server;
pub mod settings;
pub mod shared;
pub mod state;
pub mod usage;
pub mod web;
