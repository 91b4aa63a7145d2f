//! Observations for triggers, from /proc: CPU use of a set of processes and of the whole host,
//! processes that exec'd a new binary, and RSS growth; and from the stored windows of heap
//! profiling, live-heap growth.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub(crate) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// utime + stime, in clock ticks, from the text of a `/proc/…/stat` file (process or thread).
pub(crate) fn stat_ticks(stat: &str) -> Option<u64> {
    // After the comm (in parentheses, and it may hold spaces): state is field 3, so utime (14)
    // and stime (15) are at 11 and 12 here.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of a process, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
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
        self.busiest_at(pids, Instant::now(), clk_tck(), process_ticks)
    }

    /// [`ProcessCpu::busiest`] at `now`, with `ticks` (at `tck` a second) read by `read`.
    fn busiest_at(
        &mut self,
        pids: &[u32],
        now: Instant,
        tck: f64,
        read: impl Fn(u32) -> Option<u64>,
    ) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut seen = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let Some(t) = read(pid) else {
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

/// Processes that started running a new executable since the last scan, found by polling every
/// pid's `/proc/PID/exe`. The first scan only records what runs; a process that both starts and
/// exits between two scans is not seen.
#[derive(Debug, Default)]
pub struct ExecWatch {
    exes: HashMap<u32, String>,
    primed: bool,
}

impl ExecWatch {
    /// `(pid, exe)` of every process that is new, or runs another executable, since last time.
    pub fn scan(&mut self) -> Vec<(u32, String)> {
        let mut now = HashMap::with_capacity(self.exes.len());
        let mut out = Vec::new();
        for pid in crate::targets::all_pids() {
            // Kernel threads have no exe.
            let Some(exe) = crate::targets::exe_of(pid) else {
                continue;
            };
            if self.primed && self.exes.get(&pid) != Some(&exe) {
                out.push((pid, exe.clone()));
            }
            now.insert(pid, exe);
        }
        self.exes = now;
        self.primed = true;
        out
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Resident set size of a process in bytes, from `/proc/PID/statm`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// RSS growth rate of processes over a sliding window.
#[derive(Debug)]
pub struct RssWatch {
    window: Duration,
    history: HashMap<u32, VecDeque<(Instant, u64)>>,
}

impl Default for RssWatch {
    fn default() -> Self {
        RssWatch::new(Duration::from_secs(5))
    }
}

impl RssWatch {
    /// Rates are measured over at least `window`.
    pub fn new(window: Duration) -> RssWatch {
        RssWatch {
            window,
            history: HashMap::new(),
        }
    }

    /// The fastest-growing of `pids`, in bytes per second over the window; `None` until some pid
    /// has been watched for a whole window. A process that appears or exits is never growth.
    pub fn fastest(&mut self, pids: &[u32]) -> Option<f64> {
        self.fastest_at(pids, Instant::now(), rss_bytes)
    }

    /// [`RssWatch::fastest`] at `now`, with each pid's RSS read by `read`.
    fn fastest_at(
        &mut self,
        pids: &[u32],
        now: Instant,
        read: impl Fn(u32) -> Option<u64>,
    ) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut keep = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let Some(rss) = read(pid) else {
                continue;
            };
            let mut h = self.history.remove(&pid).unwrap_or_default();
            h.push_back((now, rss));
            // Keep the newest sample at least a window old as the base of the rate.
            while h.len() > 2 && now.duration_since(h[1].0) >= self.window {
                h.pop_front();
            }
            if let Some((t0, r0)) = h.front() {
                let secs = now.duration_since(*t0).as_secs_f64();
                if now.duration_since(*t0) >= self.window && secs > 0.0 {
                    let rate = (rss as f64 - *r0 as f64) / secs;
                    best = Some(best.map_or(rate, |b: f64| b.max(rate)));
                }
            }
            keep.insert(pid, h);
        }
        self.history = keep;
        best
    }
}

/// How long [`HeapWatch`] remembers a process's last window.
const HEAP_FORGET_MS: i64 = 600_000;

/// Live-heap growth per service, from the `live_bytes` of the windows the host stores (any
/// profiler whose batches carry that value, with `service` and `pid` labels).
#[derive(Debug, Default)]
pub struct HeapWatch {
    /// Per (service, pid): its latest window's end and live bytes.
    last: HashMap<(String, u32), (i64, f64)>,
    /// Per service: the fastest growth between two windows of one process, not yet taken.
    fresh: HashMap<String, f64>,
}

impl HeapWatch {
    /// Reads one window: each process's live bytes (the weighted sum of its `live_bytes`
    /// rows), and its growth since its previous window.
    pub fn window(&mut self, batch: &baton_model::Batch) {
        let Some(idx) = std::iter::once(&batch.value_type)
            .chain(&batch.more_value_types)
            .position(|v| v.kind == "live_bytes")
        else {
            return;
        };
        let mut level: HashMap<(String, u32), f64> = HashMap::new();
        for s in batch
            .samples
            .iter()
            .filter(|s| s.value_index as usize == idx)
        {
            let (Some(service), Some(pid)) = (
                s.labels.get("service"),
                s.labels.get("pid").and_then(|p| p.parse().ok()),
            ) else {
                continue;
            };
            *level.entry((service.clone(), pid)).or_default() += s.value as f64 * s.weight;
        }
        for (key, live) in level {
            let service = key.0.clone();
            let Some((t0, l0)) = self.last.insert(key, (batch.ts_ms, live)) else {
                continue;
            };
            if batch.ts_ms > t0 {
                let rate = (live - l0) * 1000.0 / (batch.ts_ms - t0) as f64;
                let best = self.fresh.entry(service).or_insert(rate);
                *best = best.max(rate);
            }
        }
        // Processes without a window for 10 minutes (gone, or no longer profiled) are
        // forgotten: their next window starts afresh.
        self.last
            .retain(|_, (t, _)| batch.ts_ms.saturating_sub(*t) < HEAP_FORGET_MS);
    }

    /// The service's fastest live-heap growth (bytes per second) since the last call, if a new
    /// window of one of its processes came.
    pub fn take(&mut self, service: &str) -> Option<f64> {
        self.fresh.remove(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates from given readings and times: nothing here depends on how fast the machine is.
    #[test]
    fn the_busiest_process_is_its_ticks_over_the_time_between_calls() {
        let mut p = ProcessCpu::default();
        let t0 = Instant::now();
        let ticks = |a: u64, b: u64| move |pid: u32| if pid == 1 { Some(a) } else { Some(b) };
        assert_eq!(p.busiest_at(&[1, 2], t0, 100.0, ticks(1_000, 50)), None);
        // 2 s later: pid 1 used 150 ticks (1.5 s of CPU at 100 a second), pid 2 used 20.
        let later = t0 + Duration::from_secs(2);
        let pct = p.busiest_at(&[1, 2], later, 100.0, ticks(1_150, 70));
        assert_eq!(pct, Some(75.0));
        // A pid that cannot be read is skipped; a new one has no rate yet.
        let p3 = p.busiest_at(&[3], later + Duration::from_secs(1), 100.0, |_| None);
        assert_eq!(p3, None);
        // The real reading of this process works.
        assert!(process_ticks(std::process::id()).is_some());
        let mut h = HostCpu::default();
        assert!(h.percent().is_none(), "the first reading only primes");
    }

    #[test]
    fn rss_growth_is_measured_over_a_whole_window() {
        let mut w = RssWatch::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mib = |n: u64| move |_: u32| Some(n << 20);
        assert_eq!(w.fastest_at(&[7], at(0), mib(100)), None);
        assert_eq!(
            w.fastest_at(&[7], at(2), mib(120)),
            None,
            "not a window yet"
        );
        // After 5 s: 50 MiB more, 10 MiB a second.
        assert_eq!(w.fastest_at(&[7], at(5), mib(150)), Some(10.0 * 1048576.0));
        // The base moves up: from the sample at 2 s, 70 MiB over 5 s.
        assert_eq!(w.fastest_at(&[7], at(7), mib(190)), Some(14.0 * 1048576.0));
        // A process that is gone is forgotten.
        assert_eq!(w.fastest_at(&[8], at(8), |_| None), None);
        assert!(w.history.is_empty());
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }

    fn heap_batch(ts_ms: i64, rows: &[(&str, &str, i64)]) -> baton_model::Batch {
        let mut b = baton_model::Batch::new(
            "malloc",
            vec![
                baton_model::ValueType::new("alloc_bytes", "bytes"),
                baton_model::ValueType::new("live_bytes", "bytes"),
            ],
            1,
        );
        b.ts_ms = ts_ms;
        for &(service, pid, live) in rows {
            for (value_index, value) in [(0, 7), (1, live)] {
                b.samples.push(baton_model::StackSample {
                    stack: Vec::new(),
                    labels: [
                        ("service".to_string(), service.to_string()),
                        ("pid".to_string(), pid.to_string()),
                    ]
                    .into(),
                    value,
                    weight: 2.0,
                    value_index,
                });
            }
        }
        b
    }

    #[test]
    fn heap_growth_is_the_fastest_process_between_its_windows() {
        let mut w = HeapWatch::default();
        w.window(&heap_batch(1_000, &[("a", "1", 100), ("a", "2", 100)]));
        assert_eq!(w.take("a"), None, "one window has no growth yet");
        // pid 1 grows by 2 × 1000 weighted bytes in 2 s, pid 2 shrinks.
        w.window(&heap_batch(3_000, &[("a", "1", 1_100), ("a", "2", 50)]));
        assert_eq!(w.take("a"), Some(1_000.0));
        assert_eq!(w.take("a"), None, "taken once per new window");
        w.window(&heap_batch(5_000, &[("a", "1", 1_100)]));
        assert_eq!(w.take("a"), Some(0.0));
        assert_eq!(w.take("b"), None);
        // Ten minutes on, pid 1 grew by 200 weighted bytes in 600 s; pid 2, silent since, is
        // forgotten: its next window has nothing to grow from.
        w.window(&heap_batch(605_000, &[("a", "1", 1_200)]));
        let rate = w.take("a").expect("pid 1's growth");
        assert!((rate - 200.0 / 600.0).abs() < 1e-9, "{rate}");
        w.window(&heap_batch(606_000, &[("a", "2", 9_000)]));
        assert_eq!(w.take("a"), None);
    }

    #[test]
    fn exec_watch_reports_new_processes_after_the_first_scan() {
        let mut w = ExecWatch::default();
        assert!(w.scan().is_empty(), "the first scan only primes");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        // Give the child time to get from fork to exec.
        std::thread::sleep(Duration::from_millis(100));
        let seen = w.scan();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            seen.iter()
                .any(|(pid, exe)| *pid == child.id() && exe.ends_with("sleep")),
            "{seen:?}"
        );
    }
}
