//! The `gate-relay` command line (DESIGN.md §7).
//!
//! Owns: argument parsing, logging setup, choosing the runtime, and turning errors into
//! messages and exit codes. Must not: contain relay logic (that is [`crate::server`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::identity::Identity;
use crate::settings::RelaySettings;
use crate::state;

/// gate-relay: gives Gate daemons a public HTTPS address. Reads the server name of each
/// TLS connection without decrypting it and forwards the bytes over QUIC to the daemon
/// that owns the name.
#[derive(Debug, Parser)]
#[command(name = "gate-relay", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The async runtime to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum RuntimeChoice {
    /// tokio, multi-threaded.
    #[default]
    Tokio,
    /// smol, one executor thread per core.
    Smol,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: HTTPS on `https_port` (TCP), daemon tunnels on `p2p_port` and
    /// `https_port` (UDP).
    Serve {
        /// A TOML settings file; repeat to layer several (later ones win).
        #[arg(long = "config", value_name = "FILE")]
        config: Vec<PathBuf>,
        /// State directory (key, name claims). Default: $STATE_DIRECTORY, else
        /// $XDG_STATE_HOME/gate-relay.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Async runtime.
        #[arg(long, value_enum, default_value_t = RuntimeChoice::Tokio)]
        runtime: RuntimeChoice,
    },
    /// Read and validate the settings, then exit (non-zero with the reason when invalid).
    CheckConfig {
        /// A TOML settings file; repeat to layer several (later ones win).
        #[arg(long = "config", value_name = "FILE")]
        config: Vec<PathBuf>,
    },
    /// Show whether the relay runs (pid, uptime, runtime), its node id and addresses, the
    /// connected daemons, name claims with their lapse dates, open connections and limits, and
    /// the DNS provider's state. Reads the status the running relay keeps in its state
    /// directory; exits with 3 when the relay is not running (the persisted claims are shown
    /// anyway) and 1 when it does not respond.
    Status {
        /// The relay's TOML settings files (for the domain suffix and the claim lapse period
        /// when the relay is not running).
        #[arg(long = "config", value_name = "FILE")]
        config: Vec<PathBuf>,
        /// State directory of the relay. Default: $STATE_DIRECTORY, else
        /// $XDG_STATE_HOME/gate-relay.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the relay's node id (what daemons pin as `<id>@host:port`), creating the key on
    /// first use.
    Id {
        /// State directory. Default: $STATE_DIRECTORY, else $XDG_STATE_HOME/gate-relay.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
        Some(Command::Id { state_dir }) => print_id(state_dir.as_deref()),
        Some(Command::Status {
            config,
            state_dir,
            json,
        }) => match status(&config, state_dir.as_deref(), json) {
            Ok(code) => return code,
            Err(error) => Err(error),
        },
        Some(Command::CheckConfig { config }) => check_config(&config),
        Some(Command::Serve {
            config,
            state_dir,
            runtime,
        }) => serve(&config, state_dir.as_deref(), runtime),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gate-relay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_id(state_dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = state::relay_state_dir(state_dir)?;
    let identity = Identity::load_or_create(&dir)?;
    println!("{}", identity.node_id());
    Ok(())
}

/// The merged configuration: `--config` files, then the `RELAY_` environment.
fn load_settings(config: &[PathBuf]) -> anyhow::Result<RelaySettings> {
    let (settings, _) = crate::settings::load(config, std::env::vars().collect())?;
    gate_core::tunnel::NameTableConfig::new(&settings.domain_suffix)
        .map_err(|e| anyhow::anyhow!("domain_suffix: {e}"))?;
    Ok(settings)
}

fn status(config: &[PathBuf], state_dir: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    use crate::status::{self, Liveness};
    let dir = state::relay_state_dir(state_dir)?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let snapshot = status::read(&dir).map_err(anyhow::Error::msg)?;
    let now = crate::support::unix_now();
    let alive = snapshot
        .as_ref()
        .is_some_and(|s| status::is_relay_process(s.pid));
    let liveness = status::liveness(snapshot.as_ref(), now, alive);
    if let (Liveness::Running, Some(snapshot)) = (liveness, &snapshot) {
        if json {
            let mut value = serde_json::to_value(snapshot)?;
            value["running"] = true.into();
            value["state"] = "running".into();
            value["state_dir"] = dir.display().to_string().into();
            value["uptime_secs"] = now.saturating_sub(snapshot.started_at).into();
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            print!("{}", status::render_running(snapshot, &dir, now));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Not running: what is on disk. The domain suffix and lapse period come from the settings
    // given, else from the relay's last snapshot (also when the settings do not load here,
    // e.g. because the DNS token lives only in the service's environment).
    let (suffix, lapse_days) = match (&snapshot, config.is_empty()) {
        (Some(last), true) => (last.domain_suffix.clone(), last.claim_lapse_days),
        (last, _) => match (load_settings(config), last) {
            (Ok(settings), _) => (settings.domain_suffix, settings.claim_lapse_days),
            (Err(_), Some(last)) => (last.domain_suffix.clone(), last.claim_lapse_days),
            (Err(e), None) => return Err(e),
        },
    };
    let names_path = dir.join(crate::server::NAMES_FILE_NAME);
    let names = match std::fs::read(&names_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a name table: {e}", names_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => anyhow::bail!("could not read {}: {e}", names_path.display()),
    };
    let claims = status::claims_from_names(&names, &suffix, lapse_days, |_| false);
    let state = match liveness {
        Liveness::NotResponding => "not responding",
        _ => "not running",
    };
    if json {
        let value = serde_json::json!({
            "running": false,
            "state": state,
            "state_dir": dir.display().to_string(),
            "last_status": snapshot,
            "domain_suffix": suffix,
            "claim_lapse_days": lapse_days,
            "claims": claims,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!(
            "{}",
            status::render_not_running(liveness, snapshot.as_ref(), &dir, &claims, lapse_days, now)
        );
    }
    Ok(match liveness {
        Liveness::NotResponding => ExitCode::FAILURE,
        _ => ExitCode::from(status::EXIT_NOT_RUNNING),
    })
}

fn check_config(config: &[PathBuf]) -> anyhow::Result<()> {
    let settings = load_settings(config)?;
    let metrics = settings
        .metrics_port
        .map(|port| format!(", metrics on 127.0.0.1:{port}"))
        .unwrap_or_default();
    // The whole URL is parsed as the relay will (the schema checks only its shape); what is
    // shown of it never includes the password.
    let store = match &settings.store_url {
        Some(url) => {
            let url = gate_rt::store::PgUrl::parse(url.expose())?;
            format!(", name claims shared through {url}")
        }
        None => String::new(),
    };
    eprintln!(
        "configuration is valid: HTTPS on {}:{} (TCP), QUIC on UDP {} and {}, names under {}{metrics}{store}",
        settings.bind_address,
        settings.https_port,
        settings.p2p_port,
        settings.https_port,
        settings.domain_suffix
    );
    Ok(())
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn serve(
    config: &[PathBuf],
    state_dir: Option<&Path>,
    runtime: RuntimeChoice,
) -> anyhow::Result<()> {
    let settings = load_settings(config)?;
    init_logging(&settings.log_level);
    let dir = state::relay_state_dir(state_dir)?;
    let identity = Identity::load_or_create(&dir)?;
    match runtime {
        // The relay forwards on the shared runtime (its connections are QUIC streams, not
        // accepted sockets to hand to a core): no serving cores.
        RuntimeChoice::Tokio => {
            gate_runtime_tokio::block_on_without_cores(|rt| run(rt, settings, identity, dir))?
        }
        RuntimeChoice::Smol => gate_runtime_smol::block_on(|rt| run(rt, settings, identity, dir))?,
    }
}

async fn run<R: gate_rt::Runtime>(
    rt: R,
    settings: RelaySettings,
    identity: Identity,
    dir: PathBuf,
) -> anyhow::Result<()> {
    let mut signals = gate_rt::signal::StopSignals::install()
        .map_err(|e| anyhow::anyhow!("could not install signal handlers: {e}"))?;
    let relay = crate::server::start(rt, settings, &identity, &dir).await?;
    // SIGTERM / SIGINT: tell the daemons, save the claims, release the ports.
    match signals.next().await {
        Ok(signal) => tracing::info!(%signal, "stopping"),
        Err(e) => tracing::warn!(error = %e, "stopping: the signal handler failed"),
    }
    relay.shutdown().await;
    Ok(())
}
