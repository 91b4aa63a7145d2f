//! Observations for triggers: CPU use of a set of processes and of the whole host, from /proc.

use std::collections::HashMap;
use std::time::Instant;

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU% of processes between two calls (100 = one full CPU).
#[derive(Debug, Default)]
pub struct ProcessCpu {
    last: HashMap<u32, (u64, Instant)>,
}

impl ProcessCpu {
    /// The busiest of `pids` since the previous call, in percent of one CPU. A pid seen for the
    /// first time has no rate yet.
    pub fn busiest(&mut self, pids: &[u32]) -> Option<f64> {
        let now = Instant::now();
        let tck = clk_tck();
        let mut best: Option<f64> = None;
        let mut seen = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let Some(t) = process_ticks(pid) else {
                continue;
            };
            if let Some((t0, i0)) = self.last.get(&pid) {
                let secs = now.duration_since(*i0).as_secs_f64();
                if secs > 0.0 {
                    let pct = 100.0 * t.saturating_sub(*t0) as f64 / tck / secs;
                    best = Some(best.map_or(pct, |b: f64| b.max(pct)));
                }
            }
            seen.insert(pid, (t, now));
        }
        self.last = seen;
        best
    }
}

/// Whole-host CPU% between two calls, from /proc/stat.
#[derive(Debug, Default)]
pub struct HostCpu {
    last: Option<(u64, u64)>,
}

impl HostCpu {
    pub fn percent(&mut self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        let out = self.last.and_then(|(t0, i0)| {
            let dt = total.saturating_sub(t0);
            (dt > 0).then(|| 100.0 * (dt - idle.saturating_sub(i0).min(dt)) as f64 / dt as f64)
        });
        self.last = Some((total, idle));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_reads_near_100_percent() {
        let mut p = ProcessCpu::default();
        let me = std::process::id();
        assert_eq!(p.busiest(&[me]), None);
        let end = Instant::now() + std::time::Duration::from_millis(300);
        let mut x = 1u64;
        while Instant::now() < end {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let pct = p.busiest(&[me]).expect("a rate");
        assert!(pct > 50.0, "busy loop read {pct:.1}%");
        let mut h = HostCpu::default();
        assert!(h.percent().is_none());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(h.percent().is_some_and(|v| (0.0..=100.0).contains(&v)));
    }
}
