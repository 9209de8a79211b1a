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
use crate::{commands, server, settings, state};

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
    Set {
        /// Dotted key path.
        key: String,
        /// The value (lists: comma-separated or a TOML array).
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
    Create {
        /// A label for the key.
        #[arg(long, default_value = "default")]
        name: String,
        /// Lifetime such as 30d, 12h or 90m (default: no expiry).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// The state directory (see `gate serve --help`).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// List API keys (ids and names; keys themselves are never stored).
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
    match args.runtime {
        RuntimeChoice::Tokio => gate_runtime_tokio::block_on(|rt| {
            run(rt, addr, loaded, tokens, args.config, state_dir)
        })?,
        RuntimeChoice::Smol => {
            gate_runtime_smol::block_on(|rt| run(rt, addr, loaded, tokens, args.config, state_dir))?
        }
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

async fn run<R: gate_rt::Runtime>(
    rt: R,
    addr: std::net::SocketAddr,
    loaded: gate_core::config::Loaded<DaemonConfig>,
    tokens: TokenStore,
    config_files: Vec<PathBuf>,
    state_dir: PathBuf,
) -> anyhow::Result<()> {
    let config = &loaded.config;
    let gateway = Arc::new(Gateway::new(rt.clone(), config, tokens)?);
    let admin_token = crate::admin::session::load_or_create_admin_token(&state_dir)?;
    gateway.protect_secret(&admin_token);
    let listener = server::bind(&rt, addr)?;
    let bound = server::local_addr::<R>(&listener).unwrap_or(addr);
    let upstream_count = config.upstreams.len();
    let reloader = Arc::new(crate::reload::Reloader::new(
        rt.clone(),
        gateway.clone(),
        config_files,
        state_dir.clone(),
        loaded,
    ));
    let admin = Arc::new(crate::admin::Admin::new(
        reloader.clone(),
        admin_token,
        bound,
    ));
    if let Err(e) = state::write_atomic(
        &crate::admin::client::addr_file(&state_dir),
        format!("{bound}\n").as_bytes(),
    ) {
        tracing::warn!(error = %e, "cannot record the listen address in the state directory; the CLI will look at the configured host:port");
    }
    tracing::info!(
        address = %bound,
        runtime = R::NAME,
        upstreams = upstream_count,
        "gate listening on http://{bound}"
    );
    // Printed whatever the log level: it is how a person gets into the web UI.
    match admin.login_url() {
        Ok(url) => eprintln!(
            "gate: web UI: open {url} to sign in (works once, for 15 minutes; `gate status` prints a new one)"
        ),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "no web UI login link"),
    }
    rt.spawn(reloader.clone().watch());
    // Routing's third tier: the models upstreams without an explicit list say they serve.
    let discovery = gateway.clone();
    let discovery_rt = rt.clone();
    rt.spawn(async move {
        loop {
            discovery.discover_models().await;
            discovery_rt.sleep(std::time::Duration::from_secs(60)).await;
        }
    });
    let app = Arc::new(App::new(gateway.clone()).with_admin(admin));
    if let Some(remote) =
        crate::remote::Remote::start(&rt, &reloader.current().config, &state_dir, app.clone())?
    {
        gateway.set_remote(remote);
    }
    server::serve(rt, listener, app).await;
    Ok(())
}
