//! Hot reload: the daemon watches the runtime file (`<state_dir>/config.toml`) and the API
//! key store (`tokens.json`) and applies changes without a restart. A change that does
//! not load keeps the last good configuration running and is logged.
//!
//! Polling (a stat per file per second) is used rather than inotify: it is portable,
//! costs nothing measurable, and also notices files replaced by rename.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gate_rt::Runtime;

use crate::auth::TokenStore;
use crate::gateway::Gateway;
use crate::settings;

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

/// Watches the files forever, applying changes to `gateway`.
pub async fn watch<R: Runtime>(
    rt: R,
    gateway: Arc<Gateway<R>>,
    config_files: Vec<PathBuf>,
    state_dir: PathBuf,
) {
    let runtime_path = settings::runtime_file(&state_dir);
    let tokens_path = TokenStore::path_in(&state_dir);
    let mut runtime_seen = stamp(&runtime_path);
    let mut tokens_seen = stamp(&tokens_path);
    loop {
        rt.sleep(POLL_INTERVAL).await;
        let now = stamp(&runtime_path);
        if now != runtime_seen {
            runtime_seen = now;
            match settings::load(&config_files, &state_dir) {
                Ok(loaded) => match gateway.reload(&loaded.config) {
                    Ok(()) => {
                        tracing::info!(file = %runtime_path.display(), "configuration reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the new configuration was not applied; keeping the last good one")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the changed configuration does not load; keeping the last good one")
                }
            }
        }
        let now = stamp(&tokens_path);
        if now != tokens_seen {
            tokens_seen = now;
            match TokenStore::load(&state_dir) {
                Ok(store) => {
                    gateway.set_tokens(store);
                    tracing::info!("API keys reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the API key file does not load; keeping the previous keys")
                }
            }
        }
    }
}
