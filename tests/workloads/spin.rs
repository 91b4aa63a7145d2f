//! Known-split Rust workload: `hot_leaf` burns three times the CPU time of `cold_leaf`, both
//! called from `middle`, called from `main`. Runs for argv[1] seconds (default 5). Built as a
//! release binary without frame pointers, as Rust builds by default.
//!
//! The split is held in CPU time, not in counts of iterations: the two loops are the same code at
//! different addresses, and on some CPUs their alignment alone made one run twice as fast per
//! iteration (a CI run saw 87/13 from a 3:1 count). So `middle` reads the thread's CPU clock
//! around each leaf, learns each loop's pace, and sizes the next round's counts to a 3:1 split
//! of CPU time. It reads the clock outside the loops, a few times per round: a clock read in the
//! loop is a syscall here, and it skewed what a cpu-clock sampler saw.
use std::hint::black_box;
use std::time::{Duration, Instant};

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CLOCK_THREAD_CPUTIME_ID, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock 3 is CLOCK_THREAD_CPUTIME_ID on Linux.
    unsafe { clock_gettime(3, &mut ts) };
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}

#[inline(never)]
fn hot_leaf(n: u64) -> u64 {
    let mut x = black_box(1u64);
    for _ in 0..n {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    x
}

#[inline(never)]
fn cold_leaf(n: u64) -> u64 {
    let mut x = black_box(3u64);
    for _ in 0..n {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    x
}

/// One leaf's pace: nanoseconds of thread CPU time per iteration, smoothed over its calls.
struct Pace {
    ns_per_iter: f64,
}

impl Pace {
    /// Iterations for `want` ns at the current pace.
    fn count(&self, want: f64) -> u64 {
        ((want / self.ns_per_iter) as u64).clamp(1_000, 100_000_000)
    }

    /// Learns from a call of `n` iterations that took `took` ns: halfway toward it, so one
    /// preempted or interrupted call cannot swing the pace.
    fn learn(&mut self, n: u64, took: u64) {
        let seen = took.max(1) as f64 / n as f64;
        self.ns_per_iter = (self.ns_per_iter + seen) / 2.0;
    }
}

/// Runs one round: `unit` ns of CPU in `cold_leaf` and three times that in `hot_leaf`.
#[inline(never)]
fn middle(pace: &mut (Pace, Pace), unit: f64) -> u64 {
    let (nh, nc) = (pace.0.count(3.0 * unit), pace.1.count(unit));
    let t0 = thread_cpu_ns();
    let a = hot_leaf(nh);
    let t1 = thread_cpu_ns();
    let b = cold_leaf(nc);
    let t2 = thread_cpu_ns();
    pace.0.learn(nh, t1 - t0);
    pace.1.learn(nc, t2 - t1);
    // Work after the last call keeps it a real call, so `middle` stays on the stack.
    black_box(a ^ b)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut pace = (Pace { ns_per_iter: 1.0 }, Pace { ns_per_iter: 1.0 });
    let mut acc = 0u64;
    // Each round's length is drawn from 0.6 to 3.4 ms (a quarter of it cold): a fixed 4 ms
    // round is a multiple of a 499 Hz sampler's period, and the two locked in phase (a run
    // saw 83/17).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    while Instant::now() < end {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = 150_000.0 + (seed >> 33) as f64 % 700_000.0;
        acc ^= middle(&mut pace, unit);
    }
    black_box(acc);
}
