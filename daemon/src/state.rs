//! The daemon's state directory: where it is, and writing files in it safely.
//!
//! Rule (DESIGN.md §6): `$GATE_STATE_DIR`, else `--state-dir`, else `$STATE_DIRECTORY`
//! (set by systemd for the system service, i.e. `/var/lib/gate`), else
//! `$XDG_STATE_HOME/gate`, else `~/.local/state/gate`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

/// Creates the state directory (mode 0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically with mode 0600: a temporary file in the same
/// directory, fsync, rename over the target, fsync of the directory. A crash at any point
/// leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

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
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
