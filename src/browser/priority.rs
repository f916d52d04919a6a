//! CPU priority of the launched Chromium's GPU process.
//!
//! poed reads what the site says from the page's network traffic, not from its pixels, yet
//! Chromium's GPU process composites every frame of every tab's window. On a small machine
//! it competes for the cores with the processes that carry a request: the tab's renderer
//! (the prompt's input, the page's scripts), the network service and the browser process.
//! poed lowers its priority (`browser.gpu_process_nice`, default 19: it runs when a core is
//! free) and looks again whenever the supervisor checks the browser's health, since Chromium
//! starts a new GPU process after a crash and the process starts new threads. It only ever
//! lowers a priority, never raises one, and leaves a browser with a window (`poectl login`,
//! whose frames someone looks at) and a browser it attached to alone.

use std::path::Path;

use tracing::debug;

/// The `--type` of Chromium's GPU process on its command line.
const GPU_PROCESS: &str = "--type=gpu-process";

/// Lowers the priority of every thread of `browser_pid`'s GPU process to `nice` where it is
/// higher. Returns how many threads were changed.
pub fn lower_gpu_process(browser_pid: u32, nice: i32) -> usize {
    if nice <= 0 {
        return 0;
    }
    let mut total = 0;
    for pid in descendants(Path::new("/proc"), browser_pid) {
        if !is_gpu_process(pid) {
            continue;
        }
        let mut changed = 0;
        for tid in threads(pid) {
            let Some(now) = thread_nice(pid, tid) else {
                continue;
            };
            if now >= nice {
                continue;
            }
            // SAFETY: setpriority has no memory effects; a thread that ended meanwhile only
            // makes it fail with ESRCH.
            let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
            if set == 0 {
                changed += 1;
            } else {
                let err = std::io::Error::last_os_error();
                // Only the speed is at stake: say so, and leave the rest as it is.
                if err.raw_os_error() != Some(libc::ESRCH) {
                    debug!(pid, tid, error = %err, "cannot lower the priority of Chromium's GPU process");
                    break;
                }
            }
        }
        if changed > 0 {
            debug!(
                pid,
                threads = changed,
                nice,
                "lowered the priority of Chromium's GPU process"
            );
        }
        total += changed;
    }
    total
}

/// The processes below `root` (children, their children, ...), from `/proc/*/stat`. The GPU
/// process is not always the browser's own child: Chromium may start it from a zygote.
fn descendants(proc_root: &Path, root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat =
                std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
            let parent = u32::try_from(stat_field(&stat, STAT_PPID)?).ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn is_gpu_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            cmdline
                .split(|b| *b == 0 || *b == b' ')
                .any(|arg| arg == GPU_PROCESS.as_bytes())
        })
        .unwrap_or(false)
}

fn threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

fn thread_nice(pid: u32, tid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat_field(&stat, STAT_NICE).and_then(|n| i32::try_from(n).ok())
}

/// Fields of `/proc/PID/stat` counted from the state (the one after the command name),
/// which is 0: the parent is field 4 of the file, the nice value field 19.
const STAT_PPID: usize = 1;
const STAT_NICE: usize = 16;

/// A numeric field of a `stat` line. The command name, in parentheses, may hold spaces and
/// parentheses itself: fields are counted after its last `)`.
fn stat_field(stat: &str, index: usize) -> Option<i64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(index)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (Chrome_Child (x) 1) S 4200 4200 4200 0 -1 4194560 3178 0 0 0 12 4 0 0 20 0 18 0 1000 0 0";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        assert_eq!(stat_field(STAT, STAT_PPID), Some(4200));
        assert_eq!(stat_field(STAT, STAT_NICE), Some(0));
        assert_eq!(stat_field("garbage", STAT_PPID), None);
        assert_eq!(stat_field("1 (x) S", STAT_NICE), None);
    }

    #[test]
    fn this_process_is_found_below_its_ancestors_and_its_nice_value_read() {
        let me = std::process::id();
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let parent = stat_field(&stat, STAT_PPID).expect("ppid") as u32;
        assert!(descendants(Path::new("/proc"), parent).contains(&me));
        assert!(descendants(Path::new("/proc"), 1).contains(&me));
        assert!(!descendants(Path::new("/proc"), me).contains(&me));
        assert!(!is_gpu_process(me));
        assert!(threads(me).contains(&me));
        // SAFETY: getpriority only reads.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(thread_nice(me, me), Some(nice));
    }

    #[test]
    fn nothing_is_changed_when_lowering_is_off() {
        assert_eq!(lower_gpu_process(std::process::id(), 0), 0);
    }
}
