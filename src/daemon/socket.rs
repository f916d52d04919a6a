//! The IPC socket's safety: where it is bound, and who may connect.
//!
//! The socket lives in a directory of its own that only the user can enter: poed creates it
//! with mode 0700 in one `mkdir` (no window where it is open), and refuses, without touching
//! it, an existing directory that belongs to someone else or that group or others can
//! access. The socket itself is mode 0600. Before binding, an existing socket file is
//! probed: if a daemon answers, starting a second one is refused; if nobody answers, the
//! file is stale (a crashed daemon) and is replaced. Anything at the path that is not a
//! socket (a file, a symlink, a directory) is never removed.
//!
//! Every accepted connection is then checked ([`admit`]): the kernel's record of the
//! connecting process (`SO_PEERCRED`) must show the daemon's own user or root. This is
//! defence in depth behind the directory's mode; it matters when the socket was passed by
//! a service manager (socket activation), whose directory poed does not choose.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use crate::error::{Error, ErrorKind};
use crate::protocol::{Event, EventLine};

/// How long a refused client gets to take its error line before the connection is closed.
const REFUSAL_WRITE_LIMIT: Duration = Duration::from_secs(1);

/// Binds `path`: makes sure its directory is private (creating it 0700 if missing),
/// replaces a stale socket file, and binds the socket with mode 0600.
pub async fn bind(path: &Path) -> Result<Listener, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    private_dir(dir)?;
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_socket() => {
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
        Ok(meta) => {
            return Err(format!(
                "{} exists and is not a socket (it is a {}); poed leaves it alone: move it away or pass another --socket",
                path.display(),
                kind_of(&meta.file_type())
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    }
    let name = path
        .to_fs_name::<GenericFilePath>()
        .map_err(|e| format!("bad socket path {}: {e}", path.display()))?;
    ListenerOptions::new()
        .name(name)
        // Applied with fchmod before bind: the socket is never reachable with a wider mode.
        .mode(0o600)
        .create_tokio()
        .map_err(|e| format!("cannot bind {}: {e}", path.display()))
}

/// Makes sure `dir` exists, belongs to this user and is closed to group and others.
/// A missing directory (and missing parents) is created with mode 0700 in one step each;
/// an existing one is only inspected, never changed.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| format!("cannot create the directory {}: {e}", parent.display()))?;
        }
    }
    // Not recursive: if the directory appeared meanwhile, it is inspected like any other.
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "cannot create the socket directory {}: {e}",
                dir.display()
            ))
        }
    }
    // Follows a symlink: what counts is the directory the socket would land in.
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot inspect the socket directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "{} is not a directory; pass a --socket path inside a directory of its own",
            dir.display()
        ));
    }
    let me = own_uid();
    if meta.uid() != me {
        return Err(format!(
            "the socket directory {} belongs to uid {}, not to this user (uid {me}); poed does not use it: pass a --socket path in a directory of your own (e.g. $XDG_RUNTIME_DIR/poed/poed.sock)",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the socket directory {} is open to other users (mode {mode:04o}); poed does not use it: make it private (chmod 700 {}) or pass a --socket path in a directory of its own",
            dir.display(),
            dir.display()
        ));
    }
    Ok(())
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_fifo() {
        "fifo"
    } else {
        "special file"
    }
}

fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a process running as `peer` may use a daemon running as `me`: the same user,
/// or root.
pub fn peer_allowed(peer: u32, me: u32) -> bool {
    peer == me || peer == 0
}

/// The effective uid of the process at the other end of a connected Unix socket, as the
/// kernel recorded it when that process connected (`SO_PEERCRED`).
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and `fd` is an open
    // socket for the duration of the borrow.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // No credentials recorded (the peer is gone, or never connected): uid is -1. A peer
    // whose pid is not visible here (another pid namespace) still has a valid uid.
    if len as usize != std::mem::size_of::<libc::ucred>() || cred.uid == u32::MAX {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the peer's credentials are not available",
        ));
    }
    Ok(cred.uid)
}

fn stream_fd(stream: &Stream) -> BorrowedFd<'_> {
    // On Unix a local socket stream is always a Unix domain socket.
    let Stream::UdSocket(s) = stream;
    s.as_fd()
}

/// The error a refused client gets, as the one line it is sent.
pub fn refusal(peer: u32) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "this poed belongs to uid {}; processes of uid {peer} may not use it: run poectl as that user, or start a poed of your own",
            own_uid()
        ),
    )
}

/// Checks a freshly accepted connection before anything is read from it. A process of
/// another user (root aside) gets one `permission_denied` error line and the connection is
/// closed; `None` tells the accept loop to forget it.
pub fn admit(stream: Stream) -> Option<Stream> {
    let peer = match peer_uid(stream_fd(&stream)) {
        Ok(uid) => uid,
        Err(e) => {
            debug!(error = %e, "dropped a connection whose peer is unknown");
            return None;
        }
    };
    if peer_allowed(peer, own_uid()) {
        return Some(stream);
    }
    warn!(peer_uid = peer, "refused a connection from another user");
    let line = EventLine {
        id: None,
        event: Event::error(&refusal(peer)),
    }
    .to_line();
    // Written off the accept loop: a refused client that does not read cannot slow it.
    tokio::spawn(async move {
        let mut writer = &stream;
        let _ = tokio::time::timeout(REFUSAL_WRITE_LIMIT, writer.write_all(line.as_bytes())).await;
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_the_same_user_or_root_may_connect() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn the_peer_uid_comes_from_the_kernel() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert_eq!(peer_uid(a.as_fd()).expect("peer of a"), own_uid());
        assert_eq!(peer_uid(b.as_fd()).expect("peer of b"), own_uid());
        // Not a socket: an error, not a guess.
        let file = tempfile::tempfile().expect("file");
        assert!(peer_uid(file.as_fd()).is_err());
    }

    #[test]
    fn the_refusal_is_one_protocol_error_line() {
        let line = EventLine {
            id: None,
            event: Event::error(&refusal(65534)),
        }
        .to_line();
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["event"], "error");
        assert_eq!(v["kind"], "permission_denied");
        assert!(
            v["message"].as_str().expect("message").contains("65534"),
            "{line}"
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }

    #[test]
    fn a_missing_directory_is_created_private_and_a_shared_one_is_refused_untouched() {
        let root = tempfile::tempdir().expect("tempdir");
        let fresh = root.path().join("a").join("b");
        private_dir(&fresh).expect("created");
        for dir in [root.path().join("a"), fresh.clone()] {
            let mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        private_dir(&fresh).expect("an existing private directory is fine");

        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = private_dir(&shared).expect_err("0755 is refused");
        assert!(
            e.contains("open to other users") && e.contains("0755"),
            "{e}"
        );
        let mode = std::fs::metadata(&shared)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "left unchanged");

        let file = root.path().join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(private_dir(&file)
            .expect_err("a file")
            .contains("not a directory"));
    }

    /// A temporary directory of mode 0700 (`tempfile` leaves the mode to the umask).
    fn private_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        dir
    }

    #[tokio::test]
    async fn a_non_socket_at_the_path_is_never_removed() {
        let root = private_tempdir();
        let path = root.path().join("poed.sock");
        std::fs::write(&path, "keep me").expect("write");
        let e = bind(&path).await.expect_err("a regular file");
        assert!(
            e.contains("not a socket") && e.contains("regular file"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "keep me");

        let link = root.path().join("link.sock");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let e = bind(&link).await.expect_err("a symlink");
        assert!(e.contains("symlink"), "{e}");
        assert!(link.symlink_metadata().is_ok());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let root = private_tempdir();
        let path = root.path().join("poed.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let listener = bind(&path).await.expect("stale socket replaced");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind(&path).await.expect_err("live");
        assert!(e.contains("already running"), "{e}");
        drop(listener);
    }
}
