//! Known-split Rust workload: `hot_leaf` does three times the work of `cold_leaf`, both called
//! from `middle`, called from `main`. Runs for argv[1] seconds (default 5). Built as a release
//! binary without frame pointers, as Rust builds by default.
use std::hint::black_box;
use std::time::{Duration, Instant};

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

#[inline(never)]
fn middle() -> u64 {
    let a = hot_leaf(300_000);
    let b = cold_leaf(100_000);
    // Work after the last call keeps it a real call, so `middle` stays on the stack.
    black_box(a ^ b)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut acc = 0u64;
    while Instant::now() < end {
        acc ^= middle();
    }
    black_box(acc);
}
