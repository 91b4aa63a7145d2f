//! An ingest call's query string.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = baton_model::wire::parse_ingest_query(&text, None);
});
