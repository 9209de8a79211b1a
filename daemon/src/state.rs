//! The daemon's state directory: where it is, and writing files in it safely.
//!
//! Rule (DESIGN.md §6): `$GATE_STATE_DIR`, else `--state-dir`, else `$STATE_DIRECTORY`
//! (set by systemd for the system service, i.e. `/var/lib/gate`), else
//! `$XDG_STATE_HOME/gate`, else `~/.local/state/gate`. The directory is kept at mode 0700;
//! every file in it is written through [`gate_rt::fs::write_atomic`] and every
//! read-modify-write holds [`lock`].

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Resolves the state directory from the environment and the `--state-dir` flag.
pub fn resolve_state_dir(flag: Option<&Path>) -> Result<PathBuf> {
    resolve_state_dir_from(flag, |name| std::env::var_os(name))
}

/// [`resolve_state_dir`] with the environment passed in (for tests).
pub fn resolve_state_dir_from(
    flag: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty("GATE_STATE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    if let Some(dirs) = env("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        // systemd may list several directories separated by ':'; the first is ours.
        let first = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !first.is_empty() {
            return Ok(PathBuf::from(first));
        }
    }
    if let Some(dir) = non_empty("XDG_STATE_HOME") {
        return Ok(dir.join("gate"));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(home.join(".local/state/gate"));
    }
    anyhow::bail!(
        "cannot choose a state directory: set GATE_STATE_DIR or pass --state-dir DIR \
         (neither XDG_STATE_HOME nor HOME is set)"
    )
}

/// Creates the state directory with mode 0700, or tightens an existing one whose mode lets
/// group or others in to 0700 (logged); fails with a message when neither is possible.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match gate_rt::fs::ensure_private_dir(dir)? {
        gate_rt::fs::DirOutcome::Tightened(mode) => {
            tracing::warn!(
                dir = %dir.display(),
                "the state directory had mode {mode:04o}; changed it to 0700 (it holds keys)"
            );
            // Logging may not be set up yet (CLI commands): say it on stderr too.
            eprintln!(
                "gate: the state directory {} had mode {mode:04o}; changed it to 0700",
                dir.display()
            );
        }
        gate_rt::fs::DirOutcome::Created | gate_rt::fs::DirOutcome::AlreadyPrivate => {}
    }
    Ok(())
}

/// Writes a state file atomically with mode 0600 and full durability (the one
/// implementation: [`gate_rt::fs::write_atomic`]).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    gate_rt::fs::write_atomic(path, contents, 0o600, gate_rt::fs::Durability::Durable)
}

/// Holds the exclusive lock of a state file for a read-modify-write cycle
/// ([`gate_rt::fs::lock_exclusive`]).
pub fn lock(path: &Path) -> Result<gate_rt::fs::FileLock> {
    gate_rt::fs::lock_exclusive(path).with_context(|| {
        format!(
            "cannot lock {} for a change (is the state directory writable?)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn state_dir_priority() {
        let flag = Path::new("/flag");
        let all = env_of(&[
            ("GATE_STATE_DIR", "/env"),
            ("STATE_DIRECTORY", "/var/lib/gate"),
            ("XDG_STATE_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            resolve_state_dir_from(Some(flag), &all).unwrap(),
            Path::new("/env")
        );
        let no_env = env_of(&[
            ("STATE_DIRECTORY", "/var/lib/gate"),
            ("XDG_STATE_HOME", "/xdg"),
        ]);
        assert_eq!(
            resolve_state_dir_from(Some(flag), &no_env).unwrap(),
            Path::new("/flag")
        );
        assert_eq!(
            resolve_state_dir_from(None, &no_env).unwrap(),
            Path::new("/var/lib/gate")
        );
        let xdg = env_of(&[("XDG_STATE_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(
            resolve_state_dir_from(None, &xdg).unwrap(),
            Path::new("/xdg/gate")
        );
        let home = env_of(&[("HOME", "/home/u")]);
        assert_eq!(
            resolve_state_dir_from(None, &home).unwrap(),
            Path::new("/home/u/.local/state/gate")
        );
        assert!(resolve_state_dir_from(None, env_of(&[])).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = std::env::temp_dir().join(format!("gate-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        write_atomic(&path, b"a = 1\n").unwrap();
        write_atomic(&path, b"a = 2\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"a = 2\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
