//! A config tree's TOML: loading and validating it whole must answer with problems, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = [baton_config::SourceFile {
        path: "fuzz.toml".into(),
        text: text.to_string(),
    }];
    let _ = baton_config::load(&files, &["cpu", "offcpu", "malloc", "syscalls"]);
});
