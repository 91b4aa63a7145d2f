//! The ELF debug-only cutter, on any bytes an upload could hold.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = baton_symbolizer::debug_only(data);
});
