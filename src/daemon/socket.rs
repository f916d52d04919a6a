//! Binding the IPC socket.
//!
//! The socket lives in a directory of its own, mode 0700, and is itself mode 0600: only the
//! user can talk to the daemon. Before binding, an existing socket file is probed: if a
//! daemon answers, starting a second one is refused; if nobody answers, the file is stale
//! (a crashed daemon) and is replaced.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use tracing::warn;

/// Binds `path`, creating its directory (0700) and replacing a stale socket file.
pub async fn bind(path: &Path) -> Result<Listener, String> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create socket directory {}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot restrict socket directory {}: {e}", dir.display()))?;
        }
    }
    if path.symlink_metadata().is_ok() {
        let name = path
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| format!("bad socket path {}: {e}", path.display()))?;
        if Stream::connect(name).await.is_ok() {
            return Err(format!(
                "another poed is already running on {}; stop it first (systemctl --user stop poed) or pass another --socket",
                path.display()
            ));
        }
        warn!(socket = %path.display(), "replacing a stale socket file");
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let name = path
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| format!("bad socket path {}: {e}", path.display()))?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .create_tokio()
        .map_err(|e| format!("cannot bind {}: {e}", path.display()))
}
