//! The state directory: where it is, creating it private, and replacing files in it atomically.
//!
//! Owns: the state directory rule of `gate-relay` (`--state-dir`, else `$STATE_DIRECTORY`, else
//! `$XDG_STATE_HOME/gate-relay`, else `~/.local/state/gate-relay`), directory creation with mode
//! 0700, and atomic file replacement (temp file, fsync, rename, fsync of the directory). Must
//! not: know what the files contain.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors on the state directory, naming the path and the action.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file system call failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create`, ...).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No state directory could be determined.
    #[error(
        "no state directory: pass --state-dir, or set STATE_DIRECTORY, XDG_STATE_HOME or HOME"
    )]
    NoStateDir,
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The relay's state directory: `explicit` (from `--state-dir`), else `$STATE_DIRECTORY` (set
/// by systemd's `StateDirectory=`; the first entry when it lists several), else
/// `$XDG_STATE_HOME/gate-relay`, else `$HOME/.local/state/gate-relay`.
pub fn relay_state_dir(explicit: Option<&Path>) -> Result<PathBuf, StateError> {
    resolve_state_dir(explicit, "gate-relay", |name| std::env::var_os(name))
}

/// [`relay_state_dir`] with the environment passed in (for tests and the daemon).
pub fn resolve_state_dir(
    explicit: Option<&Path>,
    app: &str,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, StateError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dirs) = non_empty("STATE_DIRECTORY") {
        let dirs = dirs.to_string_lossy().into_owned();
        if let Some(first) = dirs.split(':').find(|d| !d.is_empty()) {
            return Ok(PathBuf::from(first));
        }
    }
    if let Some(xdg) = non_empty("XDG_STATE_HOME") {
        return Ok(PathBuf::from(xdg).join(app));
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".local/state").join(app));
    }
    Err(StateError::NoStateDir)
}

/// Creates `dir` (and parents) if missing; a directory created here gets mode 0700. An existing
/// directory keeps its mode, because systemd or the operator chose it.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error("chmod", dir))
}

/// Replaces `path` with `bytes` atomically: a temp file with `mode` in the same directory,
/// fsync, rename over `path`, fsync of the directory. Readers see the old or the new content,
/// never a mix, even after a crash.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    replace(path, bytes, mode, true)
}

/// Replaces `path` with `bytes` like [`write_atomically`] (readers never see a mix), without
/// the fsyncs: for files rewritten every few seconds whose loss in a crash does not matter
/// (the status snapshot).
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    replace(path, bytes, mode, false)
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<(), StateError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let temp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)
            .map_err(io_error("create", &temp))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("chmod", &temp))?;
        file.write_all(bytes).map_err(io_error("write", &temp))?;
        if !durable {
            return fs::rename(&temp, path).map_err(io_error("replace", path));
        }
        file.sync_all().map_err(io_error("sync", &temp))?;
        fs::rename(&temp, path).map_err(io_error("replace", path))?;
        let dir_handle = fs::File::open(dir).map_err(io_error("open", dir))?;
        dir_handle.sync_all().map_err(io_error("sync", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn state_dir_priority() {
        let all = [
            ("STATE_DIRECTORY", "/var/lib/gate-relay-a:/other"),
            ("XDG_STATE_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ];
        let explicit = Path::new("/explicit");
        assert_eq!(
            resolve_state_dir(Some(explicit), "gate-relay", env(&all)).ok(),
            Some(PathBuf::from("/explicit"))
        );
        assert_eq!(
            resolve_state_dir(None, "gate-relay", env(&all)).ok(),
            Some(PathBuf::from("/var/lib/gate-relay-a"))
        );
        assert_eq!(
            resolve_state_dir(None, "gate-relay", env(&all[1..])).ok(),
            Some(PathBuf::from("/xdg/gate-relay"))
        );
        assert_eq!(
            resolve_state_dir(None, "gate-relay", env(&all[2..])).ok(),
            Some(PathBuf::from("/home/u/.local/state/gate-relay"))
        );
        assert!(resolve_state_dir(None, "gate-relay", env(&[])).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("names.json");
        write_atomically(&path, b"one", 0o600).expect("first");
        write_atomically(&path, b"two", 0o600).expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
