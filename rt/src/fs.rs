//! State files on disk, the same way for both binaries: the one atomic write
//! ([`write_atomic`]), the one exclusive lock for read-modify-write cycles ([`lock_exclusive`])
//! and the one rule for a private state directory ([`ensure_private_dir`]).
//!
//! Owns: how a state file is replaced (temporary file in the same directory created with its
//! final mode, write, fsync, rename over the target, fsync of the directory) and how
//! concurrent writers of one file are serialised (an `flock` on a lock file beside it).
//! Must not: know what the files contain. Blocking calls: use them from CLI code or from
//! the few places the daemon and relay already do file I/O (small files, rare writes).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How much a write must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync of the file before the rename and of the directory after it: after a crash
    /// or power loss the file holds the old or the new content (every state file).
    Durable,
    /// The rename only: readers never see a mix, but a crash may lose the write. Only for
    /// files rewritten every few seconds whose loss does not matter (the relay's
    /// `status.json` snapshot).
    RenameOnly,
}

/// Distinguishes temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically: a temporary file in the same directory created
/// with `mode` (set exactly, whatever the umask), write, fsync, rename over `path`, fsync of
/// the directory ([`Durability::Durable`]). A reader or a crash sees the old content or the
/// new one, never a torn file. On error the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        // create + truncate rather than create_new: a temporary file left by a crashed
        // process whose pid was reused must not block the write (the directory is private).
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| annotate(e, "create", &temp))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| annotate(e, "chmod", &temp))?;
        file.write_all(bytes)
            .map_err(|e| annotate(e, "write", &temp))?;
        if durability == Durability::Durable {
            file.sync_all().map_err(|e| annotate(e, "fsync", &temp))?;
        }
        drop(file);
        fs::rename(&temp, path).map_err(|e| annotate(e, "rename over", path))?;
        if durability == Durability::Durable {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| annotate(e, "fsync the directory", dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// An exclusive lock on a state file, held until dropped.
#[derive(Debug)]
pub struct FileLock {
    // Closing the descriptor releases the flock.
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file that guards `path`: `.<name>.lock` beside it.
pub fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    parent_dir(path).join(format!(".{name}.lock"))
}

/// Takes the exclusive lock that every read-modify-write of `path` holds (blocking until
/// other holders, in this or another process, release it). Read `path` after this returns,
/// write it with [`write_atomic`], then drop the lock.
pub fn lock_exclusive(path: &Path) -> io::Result<FileLock> {
    let lock = lock_path(path);
    let file = open_lock_file(&lock)?;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(annotate(e.into(), "lock", &lock)),
        }
    }
    Ok(FileLock {
        _file: file,
        path: lock,
    })
}

/// Like [`lock_exclusive`] but does not wait: `Ok(None)` when another holder has it.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
    let lock = lock_path(path);
    let file = open_lock_file(&lock)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(FileLock {
            _file: file,
            path: lock,
        })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(annotate(e.into(), "lock", &lock)),
    }
}

fn open_lock_file(lock: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock)
        .map_err(|e| annotate(e, "open the lock file", lock))
}

/// What [`ensure_private_dir`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirOutcome {
    /// The directory was created with mode 0700.
    Created,
    /// It existed with mode 0700 (or narrower).
    AlreadyPrivate,
    /// It existed with a broader mode (given) and was changed to 0700.
    Tightened(u32),
}

/// Makes `dir` a private state directory: created (with parents) with mode 0700 when
/// missing; an existing one whose mode lets group or others in is changed to 0700. Fails
/// with a message saying what to do when that is not possible (not a directory, not
/// ours to chmod).
pub fn ensure_private_dir(dir: &Path) -> io::Result<DirOutcome> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 == 0 {
                return Ok(DirOutcome::AlreadyPrivate);
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "the state directory {} has mode {mode:04o} (others may read the keys in it) \
                         and could not be changed to 0700: {e}; run `chmod 700 {}` as its owner \
                         or choose another state directory",
                        dir.display(),
                        dir.display()
                    ),
                )
            })?;
            Ok(DirOutcome::Tightened(mode))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "the state directory {} exists but is not a directory; remove it or choose \
                 another state directory",
                dir.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| annotate(e, "create the state directory", dir))?;
            // The mode given to mkdir() is filtered by the umask; set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| annotate(e, "set mode 0700 on", dir))?;
            Ok(DirOutcome::Created)
        }
        Err(e) => Err(annotate(e, "inspect the state directory", dir)),
    }
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// An I/O error that says what was being done and where (the OS error alone names neither).
fn annotate(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gate-rt-fs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_atomic_replaces_with_exact_mode_and_leaves_no_temp() {
        let dir = temp_dir("write");
        let path = dir.join("state.json");
        for (i, durability) in [Durability::Durable, Durability::RenameOnly]
            .into_iter()
            .enumerate()
        {
            write_atomic(&path, format!("v{i}").as_bytes(), 0o600, durability).unwrap();
            assert_eq!(fs::read(&path).unwrap(), format!("v{i}").as_bytes());
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        write_atomic(&path, b"public", 0o644, Durability::Durable).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["state.json".to_owned()]);
        // A write into a missing directory fails, naming the path, and leaves nothing.
        let err = write_atomic(&dir.join("no/such"), b"x", 0o600, Durability::Durable)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no/"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_serialises_read_modify_write_across_threads() {
        let dir = temp_dir("lock");
        let path = dir.join("counter");
        write_atomic(&path, b"0", 0o600, Durability::RenameOnly).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let _lock = lock_exclusive(&path).unwrap();
                        let n: u32 = fs::read_to_string(&path).unwrap().parse().unwrap();
                        write_atomic(
                            &path,
                            (n + 1).to_string().as_bytes(),
                            0o600,
                            Durability::RenameOnly,
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "80");
        let held = lock_exclusive(&path).unwrap();
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop(held);
        assert!(try_lock_exclusive(&path).unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_dir_is_created_or_tightened() {
        let base = temp_dir("dir");
        let fresh = base.join("a/b");
        assert_eq!(ensure_private_dir(&fresh).unwrap(), DirOutcome::Created);
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            ensure_private_dir(&fresh).unwrap(),
            DirOutcome::AlreadyPrivate
        );
        fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            ensure_private_dir(&fresh).unwrap(),
            DirOutcome::Tightened(0o755)
        );
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = base.join("file");
        fs::write(&file, b"x").unwrap();
        assert!(ensure_private_dir(&file).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
