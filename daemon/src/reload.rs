//! Applying configuration changes to a running daemon: the one reload path.
//!
//! [`Reloader`] owns the last good configuration and the last reload error. Two things
//! drive it: [`Reloader::watch`], which polls the runtime file (`<state_dir>/config.toml`)
//! and the API key store (`tokens.json`) every second and picks up changes made by hand or
//! by a CLI that found no daemon; and the admin API, which edits the runtime file through
//! [`Reloader::edit_runtime`] and applies the result at once, without waiting for the poll.
//!
//! Invariants: a change that does not load keeps the last good configuration running; the
//! error is logged and kept for `status` and the web UI; the file is never rewritten or
//! dropped because it is bad. Edits are serialised by one lock, each validated by the core
//! before it is written, and written atomically ([`state::write_atomic`]).
//!
//! Polling (a stat per file per second) is used rather than inotify: it is portable,
//! costs nothing measurable, and also notices files replaced by rename.

use gate_rt::tunnel::support::unix_now;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use gate_core::config::{ConfigError, ConfigSources, DaemonConfig, Loaded};
use gate_rt::Runtime;

use crate::auth::TokenStore;
use crate::gateway::Gateway;
use crate::{settings, state};

/// How often the files are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp(Option<(SystemTime, u64)>);

fn stamp(path: &Path) -> Stamp {
    Stamp(
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
    )
}

/// Why the last reload was refused.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadError {
    /// What was wrong, naming file, line, key and what was expected (never a secret).
    pub message: String,
    /// When it was noticed, seconds since the Unix epoch.
    pub at_unix: u64,
}

/// Why an edit of the runtime layer did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The change itself is invalid; nothing was written.
    #[error("{0}")]
    Refused(ConfigError),
    /// Reading or writing a file failed.
    #[error("{0:#}")]
    Io(anyhow::Error),
}

/// The daemon's live configuration: last good config, last error, and the apply path.
pub struct Reloader<R: Runtime> {
    rt: R,
    gateway: Arc<Gateway<R>>,
    config_files: Vec<PathBuf>,
    state_dir: PathBuf,
    current: Mutex<Loaded<DaemonConfig>>,
    last_error: Mutex<Option<ReloadError>>,
    /// Serialises edits of the runtime file and of the key store.
    write_lock: Mutex<()>,
    /// The runtime file and key store as last applied, so the poller does not apply an
    /// admin edit a second time.
    seen: Mutex<(Stamp, Stamp)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<R: Runtime> Reloader<R> {
    /// A reloader for a gateway started with `loaded`.
    pub fn new(
        rt: R,
        gateway: Arc<Gateway<R>>,
        config_files: Vec<PathBuf>,
        state_dir: PathBuf,
        loaded: Loaded<DaemonConfig>,
    ) -> Self {
        Self {
            rt,
            gateway,
            config_files,
            current: Mutex::new(loaded),
            last_error: Mutex::new(None),
            write_lock: Mutex::new(()),
            seen: Mutex::new((
                stamp(&settings::runtime_file(&state_dir)),
                stamp(&TokenStore::path_in(&state_dir)),
            )),
            state_dir,
        }
    }

    /// The gateway this reloader feeds.
    pub fn gateway(&self) -> &Arc<Gateway<R>> {
        &self.gateway
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The `--config` files the daemon was started with.
    pub fn config_files(&self) -> &[PathBuf] {
        &self.config_files
    }

    /// The configuration in effect (the last one that loaded).
    pub fn current(&self) -> Loaded<DaemonConfig> {
        lock(&self.current).clone()
    }

    /// Why the last reload was refused, if it was (cleared by the next good one).
    pub fn last_error(&self) -> Option<ReloadError> {
        lock(&self.last_error).clone()
    }

    /// Reads every layer again and applies the result; on error keeps the last good
    /// configuration, logs and records the error, and returns it.
    pub fn apply_config_from_disk(&self) -> Result<(), String> {
        let result = settings::load(&self.config_files, &self.state_dir).and_then(|loaded| {
            self.gateway.reload(&loaded.config)?;
            Ok(loaded)
        });
        match result {
            Ok(loaded) => {
                *lock(&self.current) = loaded;
                *lock(&self.last_error) = None;
                tracing::info!(
                    file = %settings::runtime_file(&self.state_dir).display(),
                    "configuration reloaded"
                );
                Ok(())
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(error = %message, "the changed configuration does not load; keeping the last good one");
                *lock(&self.last_error) = Some(ReloadError {
                    message: message.clone(),
                    at_unix: unix_now(),
                });
                Err(message)
            }
        }
    }

    /// Reloads the API key store into the gateway.
    pub fn apply_tokens_from_disk(&self) -> anyhow::Result<()> {
        if self.gateway.shared().is_some() {
            // The keys are the shared store's (`[store] url`); tokens.json is not read.
            return Ok(());
        }
        match TokenStore::load(&self.state_dir) {
            Ok(store) => {
                self.gateway.set_tokens(store);
                tracing::info!("API keys reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the API key file does not load; keeping the previous keys");
                Err(e)
            }
        }
    }

    /// Edits the runtime file with a core editing helper (which validates the whole
    /// resulting configuration), writes it atomically and applies it at once. A refused
    /// edit changes nothing.
    pub fn edit_runtime(
        &self,
        edit: impl FnOnce(&ConfigSources) -> Result<String, ConfigError>,
    ) -> Result<(), EditError> {
        let _guard = lock(&self.write_lock);
        state::ensure_dir(&self.state_dir).map_err(EditError::Io)?;
        let path = settings::runtime_file(&self.state_dir);
        // The file lock also keeps out CLI edits made without the daemon.
        let _file_lock = state::lock(&path).map_err(EditError::Io)?;
        let sources =
            settings::read_sources(&self.config_files, &self.state_dir).map_err(EditError::Io)?;
        let text = edit(&sources).map_err(EditError::Refused)?;
        state::write_atomic(&path, text.as_bytes())
            .map_err(|e| EditError::Io(anyhow::anyhow!("writing {}: {e}", path.display())))?;
        lock(&self.seen).0 = stamp(&path);
        self.apply_config_from_disk()
            .map_err(|e| EditError::Io(anyhow::anyhow!("saved, but not applied: {e}")))
    }

    /// Changes the API key store under the edit lock, then applies it.
    pub fn edit_tokens<T>(
        &self,
        edit: impl FnOnce(&mut TokenStore) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if self.gateway.shared().is_some() {
            anyhow::bail!("the keys are in the shared store ([store] url), not in tokens.json");
        }
        let _guard = lock(&self.write_lock);
        state::ensure_dir(&self.state_dir)?;
        let mut store = TokenStore::load(&self.state_dir)?;
        let result = edit(&mut store)?;
        lock(&self.seen).1 = stamp(&TokenStore::path_in(&self.state_dir));
        self.gateway.set_tokens(store);
        Ok(result)
    }

    /// Returns once no runtime-file or API-key write is in progress (the daemon calls it last
    /// when it stops, so that an edit made from the web UI is on disk before it exits).
    pub fn wait_for_writes(&self) {
        drop(lock(&self.write_lock));
    }

    /// Watches the files forever, applying changes.
    pub async fn watch(self: Arc<Self>) {
        let rt = self.rt.clone();
        let runtime_path = settings::runtime_file(&self.state_dir);
        let tokens_path = TokenStore::path_in(&self.state_dir);
        loop {
            rt.sleep(POLL_INTERVAL).await;
            let (runtime_now, tokens_now) = (stamp(&runtime_path), stamp(&tokens_path));
            let (runtime_changed, tokens_changed) = {
                let mut seen = lock(&self.seen);
                let changed = (seen.0 != runtime_now, seen.1 != tokens_now);
                *seen = (runtime_now, tokens_now);
                changed
            };
            if runtime_changed {
                let _ = self.apply_config_from_disk();
            }
            if tokens_changed {
                let _ = self.apply_tokens_from_disk();
            }
        }
    }
}
