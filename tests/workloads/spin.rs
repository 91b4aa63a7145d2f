//! Known-split Rust workload: `hot_leaf` burns three times the CPU time of `cold_leaf`, both
//! called from `middle`, called from `main`. Runs for argv[1] seconds (default 5). Built as a
//! release binary without frame pointers, as Rust builds by default.
//!
//! The split is held in CPU time, not in counts of iterations: the two loops are the same code at
//! different addresses, and on some CPUs their alignment alone made one run twice as fast per
//! iteration (a CI run saw 87/13 from a 3:1 count). So `middle` reads the thread's CPU clock
//! around each leaf and scales the next call's count toward 3 ms and 1 ms. It reads the clock
//! outside the loops, four times per 4 ms: a clock read in the loop is a syscall here, and it
//! skewed what a cpu-clock sampler saw.
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

/// The next count for a leaf that took `took` ns for `n` iterations and should take `want` ns.
fn rescale(n: u64, took: u64, want: u64) -> u64 {
    let next = (n as u128 * want as u128 / took.max(1) as u128) as u64;
    // Move halfway, so one preempted or interrupted call cannot swing the count.
    ((n + next) / 2).clamp(1_000, 100_000_000)
}

#[inline(never)]
fn middle(counts: &mut (u64, u64)) -> u64 {
    let t0 = thread_cpu_ns();
    let a = hot_leaf(counts.0);
    let t1 = thread_cpu_ns();
    let b = cold_leaf(counts.1);
    let t2 = thread_cpu_ns();
    counts.0 = rescale(counts.0, t1 - t0, 3_000_000);
    counts.1 = rescale(counts.1, t2 - t1, 1_000_000);
    // Work after the last call keeps it a real call, so `middle` stays on the stack.
    black_box(a ^ b)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut counts = (300_000u64, 100_000u64);
    let mut acc = 0u64;
    while Instant::now() < end {
        acc ^= middle(&mut counts);
    }
    black_box(acc);
}
