//! The state directory: where it is, creating it private, and replacing files in it atomically.
//!
//! Owns: the state directory rule of `gate-relay` (`--state-dir`, else `$STATE_DIRECTORY`, else
//! `$XDG_STATE_HOME/gate-relay`, else `~/.local/state/gate-relay`), and the relay's error
//! wrapping of the shared state-file rules in [`crate::fs`] (private directory, atomic
//! replacement). Must not: know what the files contain.

use std::io;
use std::path::{Path, PathBuf};

use crate::fs::Durability;

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

/// Creates `dir` (and parents) with mode 0700 if missing; an existing directory whose mode
/// lets group or others in is tightened to 0700 (logged), or refused with a message when that
/// is not possible ([`crate::fs::ensure_private_dir`]).
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateError> {
    match crate::fs::ensure_private_dir(dir).map_err(io_error("prepare", dir))? {
        crate::fs::DirOutcome::Tightened(mode) => {
            tracing::warn!(
                dir = %dir.display(),
                "the state directory had mode {mode:04o}; changed it to 0700 (it holds keys)"
            );
        }
        crate::fs::DirOutcome::Created | crate::fs::DirOutcome::AlreadyPrivate => {}
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically with `mode`, durably (the one implementation:
/// [`crate::fs::write_atomic`] with [`Durability::Durable`]).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    crate::fs::write_atomic(path, bytes, mode, Durability::Durable)
        .map_err(io_error("replace", path))
}

/// Replaces `path` with `bytes` like [`write_atomically`] (readers never see a mix), without
/// the fsyncs ([`Durability::RenameOnly`]): for files rewritten every few seconds whose loss
/// in a crash does not matter (the status snapshot).
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    crate::fs::write_atomic(path, bytes, mode, Durability::RenameOnly)
        .map_err(io_error("replace", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn an_existing_open_state_dir_is_made_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("mkdir");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_private_dir(&state).expect("tighten");
        let mode = fs::metadata(&state).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
