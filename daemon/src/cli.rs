//! The `gate` command line (DESIGN.md §7): argument parsing, and the glue from each
//! subcommand to the library. Errors are printed for a person at a terminal and turned
//! into a non-zero exit code here, at the binary's edge.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::auth::TokenStore;
use crate::daemon::{DaemonOptions, RunningDaemon};
use crate::{commands, settings, state};

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
    /// tokio's multi-threaded runtime (default): one worker per core, or
    /// `TOKIO_WORKER_THREADS`.
    #[default]
    Tokio,
    /// smol's executor, one thread per core.
    Smol,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: the HTTP API (OpenAI and Anthropic) and web UI.
    Serve(ServeArgs),
    /// Validate the merged configuration (files, runtime file, environment) and exit.
    CheckConfig(ConfigArgs),
    /// Show or change the configuration. `set`/`unset` edit the runtime layer
    /// (`<state_dir>/config.toml`); a running daemon picks changes up within a second.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Add, list and remove upstream providers (runtime layer).
    #[command(subcommand)]
    Upstream(UpstreamCommand),
    /// Create, list and revoke Gate API keys for clients.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print this daemon's node id (its relay name is `<node id>.<domain suffix>`).
    Id {
        /// The state directory holding the node key (created on first use).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Show who used what: requests, tokens and cost from the usage log
    /// (`<state_dir>/usage.db`), summed per key, model, upstream, day or owner. Asks the
    /// running daemon when one answers (with `[store] url`: every daemon's usage, from the
    /// shared store), else reads the file.
    Usage(UsageArgs),
    /// Show the running daemon: upstreams and their health, relay, certificate, and a
    /// fresh one-time web UI login link.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: ConfigArgs,
    },
}

/// Where the configuration comes from (for commands other than `serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// A configuration file (the Nix layer); repeat for several, later files win.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// The state directory (see `gate serve --help`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the merged configuration (secrets redacted).
    Show {
        /// Say which layer (and file/line or variable) each value comes from.
        #[arg(long)]
        origin: bool,
        /// Print JSON: {"key.path": {"value": .., "origin": ..}}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: ConfigArgs,
    },
    /// Print one value (secrets redacted), e.g. `gate config get auth.jwt.issuer`.
    Get {
        /// Dotted key path.
        key: String,
        /// Also print where it comes from.
        #[arg(long)]
        origin: bool,
        #[command(flatten)]
        source: ConfigArgs,
    },
    /// Set a value in the runtime layer, e.g. `gate config set port 8080`.
    ///
    /// Secret keys (`api_key`, `secret`, `*_token`, ...) are never taken from the command
    /// line (shell history, `ps`): give `-` as the value and the secret on standard input,
    /// e.g. `printf %s "$JWT_SECRET" | gate config set auth.jwt.secret -`.
    Set {
        /// Dotted key path.
        key: String,
        /// The value (lists: comma-separated or a TOML array), or `-` to read it from
        /// standard input (required for secret keys; one trailing newline is dropped).
        value: String,
        #[command(flatten)]
        source: ConfigArgs,
    },
    /// Remove a value from the runtime layer (lower layers apply again).
    Unset {
        /// Dotted key path.
        key: String,
        #[command(flatten)]
        source: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Add (or replace) an upstream in the runtime layer.
    ///
    /// A `custom` upstream's base URL must contain a version segment such as `/v1`
    /// (OpenAI-compatible servers serve `/v1/chat/completions`); `--force` accepts one
    /// without, for a server that really has none.
    Add {
        /// Name (a-z, 0-9, `_`, `-`), used in routes and GATE_UPSTREAMS__<NAME>__API_KEY.
        name: String,
        /// openai, anthropic, google, mistral, groq, openrouter or custom (OpenAI-compatible).
        #[arg(long)]
        provider: String,
        /// Base URL as the provider's SDK documents it, e.g. http://127.0.0.1:11434/v1.
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        /// Read the provider API key from standard input (never from the command line).
        #[arg(long)]
        api_key_stdin: bool,
        /// Models this upstream serves (comma-separated).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Accept a `custom` base URL without a version segment such as `/v1`.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        source: ConfigArgs,
    },
    /// List upstreams with their provider, base URL and whether a key is set.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        source: ConfigArgs,
    },
    /// Remove an upstream (also one defined by a --config file: it stays removed).
    Remove {
        name: String,
        #[command(flatten)]
        source: ConfigArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API key; prints the key alone on stdout (details on stderr).
    ///
    /// Without policy options the key may use every model without limit. Example: a key for
    /// CI that may use GPT and Claude models, 60 requests a minute and $20 a month:
    ///   gate token create --name ci --models 'gpt-*,claude-*' --rpm 60 --budget 20 --period month
    Create {
        /// A label for the key.
        #[arg(long, default_value = "default")]
        name: String,
        /// Lifetime such as 30d, 12h or 90m (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The state directory (see `gate serve --help`).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Change a key's name, expiry or policy; options left out stay as they are, `none`
    /// removes a limit (`--rpm none`, `--budget none`, `--models ''`, `--expires never`).
    Update {
        /// The key's id (see `gate token list`).
        id: String,
        /// A new label.
        #[arg(long)]
        name: Option<String>,
        /// A new lifetime counted from now (30d, 12h, 90m), or `never`.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// List API keys: id, name, policy, spend this period, last use, dates (keys themselves
    /// are never stored).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Revoke an API key by id.
    Revoke {
        id: String,
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

/// What a key may do (`gate token create` and `update`).
#[derive(Debug, Default, clap::Args)]
pub struct PolicyArgs {
    /// Models the key may ask for: exact names, aliases or globs, comma-separated
    /// ('gpt-*,claude-*'); '' allows every model.
    #[arg(long, value_name = "LIST")]
    pub models: Option<String>,
    /// Requests per minute, or `none`.
    #[arg(long, value_name = "N")]
    pub rpm: Option<String>,
    /// Tokens (input + output) per minute, or `none`.
    #[arg(long, value_name = "N")]
    pub tpm: Option<String>,
    /// Spend budget in US dollars per period (20, 0.50, $5), or `none`.
    #[arg(long, value_name = "USD")]
    pub budget: Option<String>,
    /// The budget's period: day, week (ISO, from Monday), month or total (default month).
    /// Periods start at 00:00 UTC.
    #[arg(long, value_name = "PERIOD")]
    pub period: Option<String>,
    /// Who the key is for (free text shown in listings and the usage log), or `none`.
    #[arg(long, value_name = "TEXT")]
    pub owner: Option<String>,
}

/// `gate usage`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  gate usage                       per key, the last 7 days\n  gate usage --since 24h --by model\n  gate usage --since 2026-12-01 --by day --csv > december.csv\n  gate usage --since all --by owner --json"
)]
pub struct UsageArgs {
    /// The start of the summed time: a duration back from now (7d, 24h, 90m, 2w), a UTC date
    /// (2026-12-01, from 00:00 UTC), or `all` (everything the log keeps; see
    /// usage.retention_days).
    #[arg(long, value_name = "WHEN", default_value = "7d")]
    pub since: String,
    /// What one row sums: an API key (with its name from tokens.json), the model the client
    /// asked for, the upstream that answered, a UTC day, or the key's owner.
    #[arg(long, value_enum, value_name = "GROUP", default_value_t = crate::usage::GroupBy::Key)]
    pub by: crate::usage::GroupBy,
    /// Print a JSON array of objects (one per row; costs in dollars, with the count of
    /// requests whose cost is unknown).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV with a header line (costs as exact decimal dollars).
    #[arg(long)]
    pub csv: bool,
    /// The state directory holding usage.db (see `gate serve --help`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    /// Address to listen on. Without it: `host` from the configuration, where GATE_HOST
    /// beats the runtime file, which beats the --config files (default 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub host: Option<std::net::IpAddr>,
    /// Port to listen on. Without it: `port` from the configuration, where GATE_PORT beats
    /// the runtime file, which beats the --config files (default 3000). A GATE_PORT of the
    /// form tcp://host:port (a Kubernetes service link) is ignored with a warning.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig(args) => commands::check_config(&args),
        Command::Config(command) => commands::config(command),
        Command::Upstream(command) => commands::upstream(command),
        Command::Token(command) => commands::token(command),
        Command::Id { state_dir } => state::resolve_state_dir(state_dir.as_deref())
            .and_then(|dir| {
                state::ensure_dir(&dir)?;
                crate::remote::node_id(&dir)
            })
            .map(|id| println!("{id}")),
        Command::Usage(args) => usage(&args),
        Command::Status { json, source } => commands::status(&source, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage(args: &UsageArgs) -> anyhow::Result<()> {
    let dir = state::resolve_state_dir(args.state_dir.as_deref())?;
    let format = match (args.json, args.csv) {
        (true, _) => crate::usage::report::Format::Json,
        (_, true) => crate::usage::report::Format::Csv,
        _ => crate::usage::report::Format::Table,
    };
    crate::usage::report::command(&dir, &args.since, args.by, format)
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
    let config = &loaded.config;
    init_logging(&config.log_level);
    state::ensure_dir(&state_dir)?;
    let port = args.port.unwrap_or(config.port);
    let addr = match args.host {
        Some(host) => std::net::SocketAddr::new(host, port),
        None => resolve_listen_addr(&config.host, port)?,
    };
    let tokens = TokenStore::load(&state_dir)?;
    let options = DaemonOptions {
        addr,
        loaded,
        tokens,
        config_files: args.config,
        state_dir,
    };
    match args.runtime {
        RuntimeChoice::Tokio => gate_runtime_tokio::block_on(|rt| run(rt, options))?,
        RuntimeChoice::Smol => gate_runtime_smol::block_on(|rt| run(rt, options))?,
    }
}

/// The address to listen on: an IP literal, or a host name resolved once at start
/// (`localhost` -> 127.0.0.1).
fn resolve_listen_addr(host: &str, port: u16) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(std::net::SocketAddr::new(ip, port));
    }
    let mut addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("`host` = {host:?} does not resolve: {e}"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("`host` = {host:?} resolves to no address"))
}

/// Starts the daemon, waits for SIGTERM or SIGINT, and stops it (DESIGN.md §7).
async fn run<R: gate_rt::Runtime>(rt: R, options: DaemonOptions) -> anyhow::Result<()> {
    // Installed before anything listens, so a signal at any time after "listening" stops the
    // daemon cleanly (and SIGINT is honoured even when the parent shell ignored it).
    let mut signals = gate_rt::signal::StopSignals::install()
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM/SIGINT handlers: {e}"))?;
    let daemon = RunningDaemon::start(rt, options).await?;
    match signals.next().await {
        Ok(signal) => tracing::info!(%signal, "stop requested"),
        Err(e) => tracing::warn!(error = %e, "the signal handler failed; stopping"),
    }
    daemon.shutdown().await;
    Ok(())
}
