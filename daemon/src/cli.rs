//! The `gate` command line (DESIGN.md §7): argument parsing, and the glue from each
//! subcommand to the library. Errors are printed for a person at a terminal and turned
//! into a non-zero exit code here, at the binary's edge.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use gate_core::config::DaemonConfig;

use crate::app::App;
use crate::auth::TokenStore;
use crate::gateway::Gateway;
use crate::{server, settings, state};

/// Gate: a self-hosted AI gateway in front of OpenAI, Anthropic and every
/// OpenAI-compatible provider.
#[derive(Debug, Parser)]
#[command(name = "gate", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Which async runtime drives the daemon.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// tokio's multi-threaded runtime (default).
    #[default]
    Tokio,
    /// smol's executor, one thread per core.
    Smol,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: the HTTP API (OpenAI and Anthropic) and web UI.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A configuration file (TOML); repeat for several, later files win. This is the
    /// "Nix" layer: environment > runtime file > these files > defaults.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// The state directory (runtime config, keys, tokens). `GATE_STATE_DIR` overrides it;
    /// default `$XDG_STATE_HOME/gate` (or `/var/lib/gate` under systemd).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The async runtime.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Tokio)]
    pub runtime: RuntimeChoice,
    /// Address to listen on (overrides the config's `host`).
    #[arg(long, value_name = "ADDR", hide = true)]
    pub host: Option<std::net::IpAddr>,
    /// Port to listen on (overrides the config's `port`).
    #[arg(long, value_name = "PORT", hide = true)]
    pub port: Option<u16>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let state_dir = state::resolve_state_dir(args.state_dir.as_deref())?;
    // Configuration errors end the program before any port is bound.
    let loaded = settings::load(&args.config, &state_dir)?;
    let config = loaded.config;
    init_logging(&config.log_level);
    state::ensure_dir(&state_dir)?;
    let host: std::net::IpAddr = match args.host {
        Some(host) => host,
        None => config
            .host
            .parse()
            .map_err(|_| anyhow::anyhow!("`host` = {:?} is not an IP address", config.host))?,
    };
    let port = args.port.unwrap_or(config.port);
    let addr = std::net::SocketAddr::new(host, port);
    let tokens = TokenStore::load(&state_dir)?;
    match args.runtime {
        RuntimeChoice::Tokio => gate_runtime_tokio::block_on(|rt| run(rt, addr, config, tokens))?,
        RuntimeChoice::Smol => gate_runtime_smol::block_on(|rt| run(rt, addr, config, tokens))?,
    }
}

async fn run<R: gate_rt::Runtime>(
    rt: R,
    addr: std::net::SocketAddr,
    config: DaemonConfig,
    tokens: TokenStore,
) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway::new(rt.clone(), &config, tokens)?);
    let listener = server::bind(&rt, addr)?;
    let bound = server::local_addr::<R>(&listener).unwrap_or(addr);
    tracing::info!(
        address = %bound,
        runtime = R::NAME,
        upstreams = config.upstreams.len(),
        "gate listening on http://{bound}"
    );
    let app = Arc::new(App::new(gateway));
    server::serve(rt, listener, app).await;
    Ok(())
}
