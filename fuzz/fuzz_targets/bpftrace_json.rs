//! bpftrace's JSON output (`-f json`), as an ad-hoc profiler's reader parses it: any line, of a
//! script with one map of each kind.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn def() -> &'static baton_config::adhoc::AdhocDef {
    static DEF: OnceLock<baton_config::adhoc::AdhocDef> = OnceLock::new();
    DEF.get_or_init(|| {
        let text = "// baton:\n\
            // name = \"fuzz\"\n\
            // owner = \"fuzz\"\n\
            // description = \"every kind of map\"\n\
            // [maps.stacks]\n// kind = \"stacks\"\n// keys = [\"kstack\", \"ustack\", \"comm\"]\n\
            // [maps.lat]\n// kind = \"histogram\"\n// keys = [\"comm\"]\n\
            // [maps.n]\n// kind = \"series\"\n\
            profile:hz:99 { @stacks[kstack, ustack, comm] = count(); @n = count(); }\n\
            kprobe:vfs_read { @lat[comm] = hist(arg2); }\n";
        let f = baton_config::SourceFile {
            path: "fuzz.bt".into(),
            text: text.into(),
        };
        baton_config::load(&[f], &["cpu"])
            .expect("the fuzz target's own script is valid")
            .adhoc
            .into_values()
            .next()
            .expect("one ad-hoc profiler")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = baton_profilers::adhoc::parse_output(def(), text);
});
