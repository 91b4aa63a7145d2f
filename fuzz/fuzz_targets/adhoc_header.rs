//! An ad-hoc bpftrace script's header (`// baton:` then TOML in comments) and body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = [baton_config::SourceFile {
        path: "fuzz.bt".into(),
        text: format!("// baton:\n{text}"),
    }];
    let _ = baton_config::load(&files, &["cpu"]);
    let _ = baton_config::adhoc::maps_used(text);
});
