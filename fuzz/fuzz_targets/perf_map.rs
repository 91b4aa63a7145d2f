//! A JIT's perf map (`/tmp/perf-PID.map`): parsing and lookups.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let m = baton_symbolizer::perfmap::PerfMap::parse(&text);
    for addr in [0u64, 1, 0x1000, 0x7fff_0000_0000, u64::MAX] {
        let _ = m.lookup(addr);
    }
    let _ = m.len();
});
