//! systemd's notify protocol (`Type=notify`): one datagram per message to `$NOTIFY_SOCKET`.
//!
//! `READY=1` is sent only once the socket is bound and the browser is up; `STATUS=` lines
//! show in `systemctl --user status poed`. Without `$NOTIFY_SOCKET` (not under systemd)
//! every call does nothing. Abstract socket names (`@...`) are supported.

use std::os::unix::net::UnixDatagram;

/// Sends `message` (e.g. `"READY=1\nSTATUS=serving"`) if running under systemd.
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
    } else {
        sock.send_to(message.as_bytes(), &path)
    };
    if let Err(e) = result {
        // Said once: a notify socket that went away stays away.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// The listening socket passed by systemd socket activation (`LISTEN_FDS`, fd 3), if any.
/// The variables are removed so that Chromium does not inherit them. Call before the
/// runtime starts; turn the fd into a listener with [`activated_listener`] inside it.
pub fn activated_fd() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    // Called at start-up before any other thread exists (see `poed`'s main).
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !pid_matches || fds == 0 {
        return None;
    }
    const SD_LISTEN_FDS_START: i32 = 3;
    // SAFETY: systemd passes fd 3 open and owned by this process when LISTEN_FDS >= 1.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(SD_LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC) };
    Some(fd)
}

/// The listener for a socket-activation fd (needs the Tokio runtime).
pub fn activated_listener(
    fd: std::os::fd::OwnedFd,
) -> Result<interprocess::local_socket::tokio::Listener, String> {
    interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(fd)
        .map(Into::into)
        .map_err(|e| format!("the socket passed by systemd (LISTEN_FDS) is unusable: {e}"))
}
