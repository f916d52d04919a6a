//! Chromium's profile lock (`SingletonLock`, a symlink to `HOSTNAME-PID`).
//!
//! A Chromium that died without cleaning up leaves the lock behind, and the next launch on
//! that profile then fails with an empty stderr. Before launching, poed clears a lock whose
//! owner is dead, and refuses with a clear message when a live process holds the profile.

use std::path::Path;

const LOCK_FILES: [&str; 3] = ["SingletonLock", "SingletonSocket", "SingletonCookie"];

/// Who holds a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwner {
    pub host: String,
    pub pid: i32,
}

/// What [`check_and_clear`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    Free,
    /// A stale lock of a dead process was removed.
    ClearedStale(LockOwner),
}

/// Reads the lock's owner, if there is a lock.
pub fn read_owner(profile: &Path) -> Option<LockOwner> {
    let target = std::fs::read_link(profile.join("SingletonLock")).ok()?;
    let target = target.to_string_lossy();
    let (host, pid) = target.rsplit_once('-')?;
    Some(LockOwner {
        host: host.to_owned(),
        pid: pid.parse().ok()?,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Whether a process with this pid exists on this machine.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The command name of a process, for messages.
pub fn process_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Clears a stale lock; refuses when a live process on this host holds the profile.
pub fn check_and_clear(profile: &Path) -> Result<LockState, String> {
    let Some(owner) = read_owner(profile) else {
        // A lock that is not a readable symlink, or none: remove leftovers of other files.
        if profile.join("SingletonLock").symlink_metadata().is_err() {
            return Ok(LockState::Free);
        }
        remove_lock_files(profile)?;
        return Ok(LockState::Free);
    };
    let same_host = owner.host == hostname();
    if same_host && pid_alive(owner.pid) {
        return Err(format!(
            "the browser profile {} is in use by process {} ({}); stop that browser or poed, or pass another --profile",
            profile.display(),
            owner.pid,
            process_name(owner.pid)
        ));
    }
    if !same_host {
        return Err(format!(
            "the browser profile {} is locked by host {:?} (pid {}); if that host no longer uses it, delete {}",
            profile.display(),
            owner.host,
            owner.pid,
            profile.join("SingletonLock").display()
        ));
    }
    remove_lock_files(profile)?;
    Ok(LockState::ClearedStale(owner))
}

fn remove_lock_files(profile: &Path) -> Result<(), String> {
    for name in LOCK_FILES {
        let path = profile.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove stale lock {}: {e}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(dir: &Path, target: &str) {
        std::os::unix::fs::symlink(target, dir.join("SingletonLock")).expect("symlink");
    }

    #[test]
    fn no_lock_is_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(check_and_clear(dir.path()), Ok(LockState::Free));
    }

    #[test]
    fn a_dead_owner_is_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Pid numbers this high are above the kernel's pid_max, so nobody owns them.
        lock(dir.path(), &format!("{}-2147483000", hostname()));
        std::fs::write(dir.path().join("SingletonCookie"), "x").expect("write");
        let state = check_and_clear(dir.path()).expect("cleared");
        assert!(matches!(
            state,
            LockState::ClearedStale(LockOwner {
                pid: 2147483000,
                ..
            })
        ));
        assert!(dir.path().join("SingletonLock").symlink_metadata().is_err());
        assert!(!dir.path().join("SingletonCookie").exists());
    }

    #[test]
    fn a_live_owner_is_refused_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        lock(
            dir.path(),
            &format!("{}-{}", hostname(), std::process::id()),
        );
        let e = check_and_clear(dir.path()).expect_err("live");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        assert!(dir.path().join("SingletonLock").symlink_metadata().is_ok());
    }
}
