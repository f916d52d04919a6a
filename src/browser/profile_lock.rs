//! The profile directory before a launch: private modes, Chromium's lock, stale files.
//!
//! The profile holds the signed-in session's cookies, so it is the user's alone: created
//! 0700 (never briefly wider), and an existing one with group or other bits is tightened
//! (the supervisor warns). Chromium's profile lock (`SingletonLock`, a symlink to
//! `HOSTNAME-PID`) is left behind by a Chromium that died without cleaning up, and the next
//! launch on that profile then fails with an empty stderr: poed clears a lock whose owner is
//! dead, and refuses with a clear message when a live process holds the profile. A
//! `DevToolsActivePort` file left by a Chromium that ran with a debugging port is removed.

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

const LOCK_FILES: [&str; 3] = ["SingletonLock", "SingletonSocket", "SingletonCookie"];
/// Written by Chromium when it listens on a debugging port; over a pipe it writes none.
const PORT_FILE: &str = "DevToolsActivePort";

/// Creates `profile` (and missing parents) with mode 0700, or tightens an existing profile
/// whose mode has group or other bits to 0700. Returns the old mode when it tightened one.
pub fn make_private(profile: &Path) -> Result<Option<u32>, String> {
    // The mode is given at creation, so the directory is never visible with a wider one.
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(profile)
        .map_err(|e| {
            format!(
                "cannot create the profile directory {}: {e}; check --profile and the rights on its parent",
                profile.display()
            )
        })?;
    let meta = std::fs::metadata(profile).map_err(|e| {
        format!(
            "cannot read the profile directory {}: {e}",
            profile.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "the profile {} is not a directory; pass another --profile",
            profile.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(profile, Permissions::from_mode(0o700)).map_err(|e| {
        format!(
            "the profile directory {} is readable by others (mode {mode:o}) and cannot be made private: {e}; run `chmod 700 {}` as its owner",
            profile.display(),
            profile.display()
        )
    })?;
    Ok(Some(mode))
}

/// Removes a stale `DevToolsActivePort` file; returns whether there was one.
pub fn remove_port_file(profile: &Path) -> Result<bool, String> {
    let path = profile.join(PORT_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot remove the stale {}: {e}", path.display())),
    }
}

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

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_new_profile_and_its_missing_parents_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("share").join("poed").join("profile");
        assert_eq!(make_private(&profile), Ok(None));
        assert_eq!(mode(&profile), 0o700);
        assert_eq!(mode(profile.parent().expect("parent")), 0o700);
        // Again: nothing to do.
        assert_eq!(make_private(&profile), Ok(None));
    }

    #[test]
    fn a_wide_profile_is_tightened_and_its_old_mode_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).expect("mkdir");
        std::fs::set_permissions(&profile, Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(make_private(&profile), Ok(Some(0o755)));
        assert_eq!(mode(&profile), 0o700);
    }

    #[test]
    fn a_file_is_not_a_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("profile");
        std::fs::write(&file, "").expect("write");
        let e = make_private(&file).expect_err("a file");
        assert!(e.contains("--profile"), "{e}");
    }

    #[test]
    fn a_stale_port_file_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(remove_port_file(dir.path()), Ok(false));
        std::fs::write(dir.path().join(PORT_FILE), "9222\n/devtools/browser/x").expect("write");
        assert_eq!(remove_port_file(dir.path()), Ok(true));
        assert!(!dir.path().join(PORT_FILE).exists());
    }

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
