//! A Rust program with a known truth: 3 of every 4 slices of 5 ms run with endpoint=/a, the
//! 4th with endpoint=/b and a fixed trace. `endpoints SECONDS`.

use std::time::{Duration, Instant};

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let endpoint = baton_threadctx::key("endpoint").expect("a key");
    let trace = [
        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31,
        0x9c,
    ];
    let span = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];
    let start = Instant::now();
    let slice = Duration::from_millis(5);
    let mut sink = 0u64;
    let mut i: u32 = 0;
    loop {
        let end = slice * (i + 1);
        if end.as_secs_f64() > secs {
            break;
        }
        if i % 4 == 3 {
            baton_threadctx::set(endpoint, "/b");
            baton_threadctx::set_trace(trace, span, 1);
        } else {
            baton_threadctx::set(endpoint, "/a");
            baton_threadctx::set_trace([0; 16], [0; 8], 0);
        }
        while start.elapsed() < end {
            for k in 0..1000u64 {
                sink = std::hint::black_box(sink.wrapping_add(k * 7));
            }
        }
        i += 1;
    }
    baton_threadctx::clear();
    std::hint::black_box(sink);
}
