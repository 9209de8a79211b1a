//! The `gate-relay` command line (DESIGN.md §7).

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// gate-relay: gives Gate daemons a public HTTPS address. Reads the server name of each
/// TLS connection without decrypting it and forwards the bytes over QUIC to the daemon
/// that owns the name.
#[derive(Debug, Parser)]
#[command(name = "gate-relay", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => {
            let _ = Cli::command().print_help();
            ExitCode::from(2)
        }
        Some(command) => match command {},
    }
}
