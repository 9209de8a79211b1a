//! The admin API on a Unix socket in the state directory: `<state_dir>/admin.sock`.
//!
//! Owns: binding that socket (mode 0600 inside the 0700 state directory), keeping one
//! daemon per state directory on it (an `flock` held for the daemon's life; a live socket
//! is never taken over, a stale one left by a crash is removed) and serving the admin API
//! routes (`/admin/api/...`) on it. This is the only way the CLI talks to a daemon: the
//! kernel vouches for the listener (only a process that may write the state directory can
//! listen there), so the CLI never sends the admin token or a provider key to whatever
//! holds the TCP port. The web UI stays on the TCP listener.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use gate_rt::hyper_glue::{serve_connection, ServerSettings};
use gate_rt::Runtime;
use http::StatusCode;

use crate::web::Peer;

use super::Admin;

/// The admin socket of a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
}

/// The address admin requests over the socket are attributed to in logs (a Unix socket
/// peer has no IP address).
pub const SOCKET_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Binds `<state_dir>/admin.sock` and serves the admin API of `admin` on it in the
/// background for the rest of the process. Fails when another daemon already serves this
/// state directory (its socket is live) or the socket cannot be made.
pub fn serve<R: Runtime>(rt: &R, state_dir: &Path, admin: Arc<Admin<R>>) -> anyhow::Result<()> {
    let path = socket_path(state_dir);
    // Held for the process's life: a second daemon on the same directory cannot take it,
    // and the lock disappears with the process however it ends.
    let owner = gate_rt::fs::try_lock_exclusive(&path)
        .with_context(|| format!("cannot lock the admin socket {}", path.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "another gate daemon is already running with the state directory {} (it holds \
                 {}); stop it, or give this one its own --state-dir / GATE_STATE_DIR",
                state_dir.display(),
                path.display()
            )
        })?;
    // We hold the lock, so a socket file left here belongs to a daemon that is gone.
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a stale admin socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot remove the stale admin socket {}", path.display())
            })
        }
    }
    let listener = match rt.bind_unix(&path) {
        Ok(listener) => listener,
        Err(e) => {
            // E.g. a state directory path longer than a socket address holds (~107 bytes).
            // The daemon still runs; the CLI then edits the files, which the daemon picks
            // up within a second. The lock stays held: still one daemon per directory.
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot listen on the admin socket; `gate` commands will edit the files of \
                 the state directory instead (applied within a second; `gate status` needs \
                 the socket: use a shorter state directory path)"
            );
            std::mem::forget(owner);
            return Ok(());
        }
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    tracing::info!(path = %path.display(), "admin API listening on the Unix socket");
    let accept_rt = rt.clone();
    rt.spawn(async move {
        let _owner = owner;
        let settings = ServerSettings::default();
        loop {
            let stream = match R::accept_unix(&listener).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    accept_rt.sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = admin.clone();
            let settings = settings.clone();
            let conn_rt = accept_rt.clone();
            accept_rt.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&admin, req).await) }
                });
                if let Err(e) = serve_connection(conn_rt, stream, &settings, service).await {
                    tracing::debug!(error = %e, "admin socket connection ended with an error");
                }
            });
        }
    });
    Ok(())
}

/// Only the admin API is served on the socket (no web UI, no model API).
async fn handle<R: Runtime>(
    admin: &Admin<R>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::web::Body> {
    let peer = Peer {
        addr: SOCKET_PEER,
        remote: false,
    };
    if req.uri().path().starts_with("/admin/api/") {
        return admin.handle(req, peer).await;
    }
    super::api_error(
        StatusCode::NOT_FOUND,
        "the admin socket serves /admin/api/ only; the web UI and the model API are on the \
         TCP listener",
    )
}
