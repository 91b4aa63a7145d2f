//! pprof from the network: bounded decompression, the element count, protobuf decode and the
//! conversion into a batch must refuse bad input with an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = baton_model::limits::Limits {
        max_bytes: 1 << 20,
        ..Default::default()
    };
    let labels = baton_model::Labels::new();
    let _ = baton_model::wire::decode_batch_within(data, None, &labels, 0, &limits);
});
