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
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
