//! Reading the daemon's configuration layers from disk and the environment, and handing
//! them to `gate_core::config` (which merges and validates them without I/O).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gate_core::config::{self, ConfigSources, DaemonConfig, Loaded, SourceText};

/// The runtime layer's file in a state directory.
pub fn runtime_file(state_dir: &Path) -> PathBuf {
    state_dir.join("config.toml")
}

/// Reads every layer: the `--config` files, the runtime file and the environment.
pub fn read_sources(config_files: &[PathBuf], state_dir: &Path) -> Result<ConfigSources> {
    let runtime_path = runtime_file(state_dir);
    let mut sources = ConfigSources::new(runtime_path.display().to_string());
    for file in config_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the config file {}", file.display()))?;
        sources
            .nix_files
            .push(SourceText::new(file.display().to_string(), text));
    }
    match std::fs::read_to_string(&runtime_path) {
        Ok(text) => sources.runtime.text = text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read the runtime config file {}",
                    runtime_path.display()
                )
            })
        }
    }
    sources.env = std::env::vars().collect();
    Ok(sources)
}

/// Reads, merges and validates the daemon's configuration.
pub fn load(config_files: &[PathBuf], state_dir: &Path) -> Result<Loaded<DaemonConfig>> {
    let sources = read_sources(config_files, state_dir)?;
    let loaded =
        config::load_daemon(&sources).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    // Logging is set up from this configuration, so warnings go to stderr directly.
    for warning in &loaded.merged.warnings {
        eprintln!("gate: warning: {warning}");
    }
    Ok(loaded)
}
