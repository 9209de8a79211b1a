//! The running daemon (`gate serve`): everything one needs is started by
//! [`RunningDaemon::start`] (listener bound, gateway, config reloader, model discovery,
//! relay client, web UI login link) and stopped, in order, by [`RunningDaemon::shutdown`].
//! Mirrors the relay's `RunningRelay`: one [`Shutdown`] broadcast that every accept loop and
//! connection watches.
//!
//! The stop sequence (each step logged): stop accepting (local listener closed, relayed
//! connections refused), leave the relays ([`Remote::leave`]), let requests and streams in
//! flight go on for `server.shutdown_grace_secs`, then end the streams still open with an
//! error event in their client's protocol, wait briefly for those to be written, close the
//! relay tunnels ([`Remote::shutdown`]), wait for config writes in progress, give the Redis
//! leases back (`Gateway::give_back_leases`: the unused part of each to the budget nobody
//! holds, the settled costs to the spend), and write the usage records still waiting
//! ([`UsageLog::flush_and_close`]: every request, streams included, has handed its record
//! over by then). The CLI turns SIGTERM / SIGINT into this, and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gate_core::config::{DaemonConfig, Loaded};
use gate_rt::tunnel::support::{race, Either, Shutdown};
use gate_rt::Runtime;

use crate::app::App;
use crate::auth::TokenStore;
use crate::gateway::Gateway;
use crate::reload::Reloader;
use crate::remote::{RelayedListener, Remote};
use crate::server::{self, ConnectionCap};
use crate::shared::{SharedStore, SharedUsageLog};
use crate::state;
use crate::usage::{MetricsOnly, UsageLog};

/// How long connections get to write the error events of the streams ended at the end of
/// the grace before the daemon stops without them.
const STREAM_END_FLUSH: Duration = Duration::from_secs(5);

/// What [`RunningDaemon::start`] needs besides the runtime.
#[derive(Debug)]
pub struct DaemonOptions {
    /// The address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// The merged configuration.
    pub loaded: Loaded<DaemonConfig>,
    /// The API keys.
    pub tokens: TokenStore,
    /// The `--config` files (reloaded on change).
    pub config_files: Vec<PathBuf>,
    /// The state directory.
    pub state_dir: PathBuf,
}

/// A started daemon: its address, and the way to stop it.
pub struct RunningDaemon<R: Runtime> {
    gateway: Arc<Gateway<R>>,
    reloader: Arc<Reloader<R>>,
    remote: Option<Arc<Remote<R>>>,
    addr: SocketAddr,
    stop: Shutdown,
    local: Arc<ConnectionCap>,
    relayed: Arc<ConnectionCap>,
    grace: Duration,
    state_dir: std::path::PathBuf,
    /// The usage log (None when `usage.enabled` is false or the store holds it).
    usage: Option<Arc<UsageLog>>,
    /// The shared usage log (`[store] url` with `usage.enabled`).
    shared_usage: Option<Arc<SharedUsageLog>>,
    rt: R,
}

impl<R: Runtime> std::fmt::Debug for RunningDaemon<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningDaemon")
            .field("addr", &self.addr)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> RunningDaemon<R> {
    /// Binds the listener and starts every task. Returns once the port is open. With
    /// `[store] url`, connects to the store first (migrating it) and reads the keys and
    /// spend from it; a store that cannot be reached then stops the start.
    pub async fn start(rt: R, options: DaemonOptions) -> anyhow::Result<Self> {
        let DaemonOptions {
            addr,
            loaded,
            tokens,
            config_files,
            state_dir,
        } = options;
        let config = &loaded.config;
        let limits = config.server.listen.clone();
        let settings = server::server_settings(&limits, false);
        let budgeted: Vec<(String, gate_core::accounting::Period)> = tokens
            .list()
            .iter()
            .filter_map(|t| t.policy.budget.map(|b| (t.id.clone(), b.period)))
            .collect();
        let gateway = Arc::new(Gateway::new(rt.clone(), config, tokens)?);
        let stop = Shutdown::new();
        let shared = match &config.store.url {
            Some(url) => Some(connect_shared(&rt, &gateway, url.expose(), config).await?),
            None => None,
        };
        if shared.is_none() {
            // Budgets go on where they were: spend this period read back from the usage log
            // (what a kill -9 lost is at most its last second).
            restore_spend(&gateway, &state_dir, &budgeted)?;
        }
        let retention_days = config.usage.retention_days;
        let mut shared_usage = None;
        // Before any port is bound: a usage log that cannot be opened stops the start.
        let usage = if let (Some(store), true) = (&shared, config.usage.enabled) {
            let log = store.start_usage_log(&state_dir, gateway.metrics.clone());
            gateway.set_usage_sink(log.clone());
            shared_usage = Some(log);
            tracing::info!(store = %store.describe(), "usage log: in the shared store");
            None
        } else if config.usage.enabled {
            let log = UsageLog::open(
                &state_dir,
                config.usage.retention_days,
                gateway.metrics.clone(),
            )?;
            gateway.set_usage_sink(log.clone());
            Some(log)
        } else {
            tracing::info!("usage log off (usage.enabled = false): per-key metrics only");
            gateway.set_usage_sink(Arc::new(MetricsOnly(gateway.metrics.clone())));
            None
        };
        let admin_token = crate::admin::session::load_or_create_admin_token(&state_dir)?;
        gateway.protect_secret(&admin_token);
        let listener = server::bind(&rt, addr)?;
        let bound = server::local_addr::<R>(&listener).unwrap_or(addr);
        let upstream_count = config.upstreams.len();
        let reloader = Arc::new(Reloader::new(
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
        if let Some(store) = shared {
            rt.spawn(crate::shared::retention(
                rt.clone(),
                store.clone(),
                retention_days,
                stop.clone(),
            ));
            rt.spawn(crate::shared::sync(
                rt.clone(),
                store,
                gateway.clone(),
                stop.clone(),
            ));
        }
        rt.spawn(reloader.clone().watch());
        // Routing's third tier: the models upstreams without an explicit list say they serve.
        let discovery = gateway.clone();
        let discovery_rt = rt.clone();
        let discovery_stop = stop.clone();
        rt.spawn(async move {
            loop {
                discovery.discover_models().await;
                let pause = discovery_rt.sleep(Duration::from_secs(60));
                if let Either::Left(()) = race(discovery_stop.wait(), pause).await {
                    return;
                }
            }
        });
        let app = Arc::new(App::new(gateway.clone()).with_admin(admin.clone()));
        crate::admin::socket::serve(&rt, &state_dir, admin.clone())?;
        // After the socket: a second daemon refused there must not overwrite the address.
        if let Err(e) = state::write_atomic(
            &crate::admin::client::addr_file(&state_dir),
            format!("{bound}\n").as_bytes(),
        ) {
            tracing::warn!(error = %e, "cannot record the listen address in the state directory; daemon.addr, for people and tools");
        }
        let local = ConnectionCap::new("local", limits.max_connections);
        let relayed = ConnectionCap::new("relayed", limits.max_connections);
        let remote = Remote::start(
            &rt,
            &reloader.current().config,
            &state_dir,
            app.clone(),
            RelayedListener {
                settings: server::server_settings(&limits, true),
                cap: relayed.clone(),
                stop: stop.clone(),
            },
        )?;
        if let Some(remote) = &remote {
            gateway.set_relay_gauges(remote.clone());
            admin.set_remote(remote.clone());
        }
        rt.spawn(server::serve(
            rt.clone(),
            listener,
            app,
            settings,
            local.clone(),
            stop.clone(),
        ));
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
        Ok(Self {
            gateway,
            reloader,
            remote,
            addr: bound,
            stop,
            local,
            relayed,
            grace: limits.shutdown_grace,
            state_dir,
            usage,
            shared_usage,
            rt,
        })
    }

    /// The address the local listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway all listeners serve.
    pub fn gateway(&self) -> &Arc<Gateway<R>> {
        &self.gateway
    }

    /// The usage log, when it is on and local.
    pub fn usage_log(&self) -> Option<&Arc<UsageLog>> {
        self.usage.as_ref()
    }

    /// The shared usage log, when `[store] url` holds it.
    pub fn shared_usage_log(&self) -> Option<&Arc<SharedUsageLog>> {
        self.shared_usage.as_ref()
    }

    /// Open connections now: (local listener, through relays).
    pub fn open_connections(&self) -> (usize, usize) {
        (self.local.open(), self.relayed.open())
    }

    /// The stop sequence (see the module docs); returns when the daemon may exit.
    pub async fn shutdown(self) {
        let started = Instant::now();
        let (local, relayed) = self.open_connections();
        tracing::info!(
            open_local = local,
            open_relayed = relayed,
            "stopping: no new connections; requests in flight may finish within {:?} (server.shutdown_grace_secs)",
            self.grace
        );
        self.stop.trigger();
        self.local.stop_admitting();
        self.relayed.stop_admitting();
        if let Some(remote) = &self.remote {
            let left = gate_rt::timeout(&self.rt, self.grace, remote.leave()).await;
            if left.is_ok() {
                tracing::info!("stopping: left the relays (they route no new connection here)");
            } else {
                tracing::warn!("stopping: the relay client did not stop within the grace");
            }
        }
        let drained = async {
            self.local.closed().await;
            self.relayed.closed().await;
        };
        let remaining = self.grace.saturating_sub(started.elapsed());
        if gate_rt::timeout(&self.rt, remaining, drained).await.is_ok() {
            tracing::info!("stopping: every connection has finished");
        } else {
            let (local, relayed) = self.open_connections();
            tracing::warn!(
                open_local = local,
                open_relayed = relayed,
                "stopping: the grace of {:?} is over; ending the streams still open with an error event",
                self.grace
            );
            self.gateway.end_streams();
            let flushed = async {
                self.local.closed().await;
                self.relayed.closed().await;
            };
            if gate_rt::timeout(&self.rt, STREAM_END_FLUSH, flushed)
                .await
                .is_ok()
            {
                tracing::info!("stopping: the remaining connections have closed");
            } else {
                let (local, relayed) = self.open_connections();
                tracing::warn!(
                    open_local = local,
                    open_relayed = relayed,
                    "stopping: connections still open after {STREAM_END_FLUSH:?}; dropping them"
                );
            }
        }
        if let Some(remote) = &self.remote {
            if gate_rt::timeout(&self.rt, STREAM_END_FLUSH, remote.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    "stopping: the relay tunnels did not close within {STREAM_END_FLUSH:?}"
                );
            }
        }
        self.reloader.wait_for_writes();
        match self.gateway.give_back_leases().await {
            Some(true) => tracing::info!("stopping: the Redis leases are given back"),
            Some(false) => tracing::warn!(
                "stopping: Redis did not take back every lease in time; what they hold is charged to their keys at their deadline"
            ),
            None => {}
        }
        if let Some(log) = &self.shared_usage {
            if log.flush_and_close().await {
                tracing::info!("stopping: usage records written to the shared store");
            } else {
                tracing::warn!(
                    "stopping: the shared store is unreachable; the usage records not yet written are spooled to {} in the state directory and written at the next start",
                    crate::shared::SPOOL_FILE
                );
            }
        }
        if let Some(usage) = self.usage.clone() {
            match crate::usage::blocking(move || usage.flush_and_close()).await {
                Ok(()) => tracing::info!("stopping: usage log written and closed"),
                Err(e) => tracing::error!(error = %e, "stopping: the usage log was not closed"),
            }
        }
        // This process still holds the socket's lock, so both files are ours: a CLI run after
        // the stop finds no socket and edits the files, and nothing claims a daemon is here.
        for file in [
            crate::admin::socket::socket_path(&self.state_dir),
            crate::admin::client::addr_file(&self.state_dir),
        ] {
            if let Err(e) = std::fs::remove_file(&file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(path = %file.display(), error = %e, "cannot remove on stop");
                }
            }
        }
        tracing::info!(elapsed = ?started.elapsed(), "gate stopped");
    }
}

/// Connects to the shared store, makes its keys and spend the gateway's, and hands it the
/// store. Before any port is bound: without its keys the daemon could only refuse.
async fn connect_shared<R: Runtime>(
    rt: &R,
    gateway: &Arc<Gateway<R>>,
    url: &str,
    config: &DaemonConfig,
) -> anyhow::Result<Arc<SharedStore<R>>> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gate".to_owned());
    let daemon_id = format!("{host}/{}", std::process::id());
    let store = SharedStore::connect(rt.clone(), url, config.store.on_unavailable, daemon_id)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; the daemon reads its keys from the shared store ([store] url) at start: \
             check that PostgreSQL runs and the URL's host, port, user and password"
            )
        })?;
    gateway.set_shared(store.clone());
    crate::shared::sync_once(&store, gateway, &mut None)
        .await
        .map_err(|e| anyhow::anyhow!("reading the keys and spend from the shared store: {e}"))?;
    if !config.usage.enabled {
        tracing::warn!("usage.enabled = false with [store] url: spend is not recorded, so budgets are not shared between daemons");
    }
    tracing::info!(
        store = %store.describe(),
        keys = gateway.key_records().len(),
        on_unavailable = ?config.store.on_unavailable,
        "keys, usage and spend: in the shared store"
    );
    Ok(store)
}

/// Restores each budgeted key's (and each JWT subject's) spend in its current period from
/// the usage log, before any request is served.
fn restore_spend<R: Runtime>(
    gateway: &Gateway<R>,
    state_dir: &std::path::Path,
    budgeted: &[(String, gate_core::accounting::Period)],
) -> anyhow::Result<()> {
    let path = crate::usage::UsageDb::path_in(state_dir);
    let Some(db) = crate::usage::UsageDb::open_read_only(&path)? else {
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut restored = 0usize;
    for (key_id, period) in budgeted {
        let spent = db.spent_in_current_period(key_id, *period, now)?;
        if spent > gate_core::accounting::Usd::ZERO {
            gateway.restore_spend(key_id, spent);
            restored += 1;
        }
    }
    for key_id in db
        .last_used()?
        .into_keys()
        .filter(|k| k.starts_with("jwt:"))
    {
        let (_, period) = gateway.key_spend(&key_id);
        let spent = db.spent_in_current_period(&key_id, period, now)?;
        if spent > gate_core::accounting::Usd::ZERO {
            gateway.restore_spend(&key_id, spent);
            restored += 1;
        }
    }
    if restored > 0 {
        tracing::info!(
            keys = restored,
            "budgets: spend this period restored from the usage log"
        );
    }
    Ok(())
}
