//! Chromium's processes as /proc shows them: a daemon's main Chromium process, a process
//! tree, parents, command lines (Chromium's helpers rewrite theirs into one string), the GPU
//! process, and each thread's nice value.

use super::Daemon;

/// The main Chromium process of a daemon: poed's child whose command line names its profile
/// (a zombie's command line is empty).
pub fn chromium_main(daemon: &Daemon) -> i32 {
    let poed = daemon.pid().expect("poed pid") as i32;
    let profile = daemon.profile.display().to_string();
    tree(poed)
        .into_iter()
        .find(|pid| {
            parent_of(*pid) == Some(poed) && cmdline(*pid).iter().any(|a| a.contains(&profile))
        })
        .unwrap_or_else(|| panic!("no Chromium under poed {poed}\n{}", daemon.log()))
}

/// The parent pid of `pid`.
pub fn parent_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()?
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `pid` and all its descendants (from /proc/<pid>/task/*/children).
pub fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", out[i]))
            .into_iter()
            .flatten()
            .flatten();
        for task in tasks {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    out
}

pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The GPU processes below `browser` (Chromium's helpers rewrite their command line into one
/// string, words separated by spaces).
pub fn gpu_processes(browser: i32) -> Vec<i32> {
    tree(browser)
        .into_iter()
        .filter(|pid| {
            cmdline(*pid)
                .iter()
                .flat_map(|a| a.split(' '))
                .any(|a| a == "--type=gpu-process")
        })
        .collect()
}

/// The nice value of each thread of `pid`.
pub fn thread_nices(pid: i32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        // The nice value is the 19th field; fields are counted after the command's `)`.
        .filter_map(|stat| {
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(16)?
                .parse()
                .ok()
        })
        .collect()
}
