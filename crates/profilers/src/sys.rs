//! Host facts a profiler needs: privileges, online CPUs, BPF run-time statistics.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// True when this process may load BPF and open system-wide perf events.
pub fn has_profiling_privileges() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    caps & (1 << CAP_BPF) != 0 && caps & (1 << CAP_PERFMON) != 0
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// The CPUs that are online now.
pub fn online_cpus() -> io::Result<Vec<u32>> {
    Ok(parse_cpu_list(&std::fs::read_to_string(
        "/sys/devices/system/cpu/online",
    )?))
}

/// Turns on per-program run-time accounting (`BPF_ENABLE_STATS`) for as long as the returned
/// descriptor lives, without touching the `kernel.bpf_stats_enabled` sysctl.
pub fn enable_bpf_run_time_stats() -> io::Result<OwnedFd> {
    // SAFETY: plain libbpf call with a valid enum value; it returns a new fd or a negative errno.
    let fd = unsafe {
        libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME)
    };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A process's name (`/proc/PID/comm`), empty when it is gone.
pub(crate) fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// Whether a process exists (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the parenthesised comm, which may itself contain ')'.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }
}
