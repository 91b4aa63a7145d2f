//! Ad-hoc profilers: a bpftrace script from the config tree, run as `bpftrace -f json`, whose
//! printed maps become the same events and histograms the built-in profilers hand back.
//!
//! Baton appends two probes to the script: `interval:s:1` prints and clears every declared map
//! and then prints a window marker, and `END` does the same once more (so a stop loses nothing)
//! and clears the scratch maps. A reader thread parses bpftrace's JSON lines; a window is
//! complete at its marker. bpftrace runs in its own process group with `PR_SET_PDEATHSIG`, so it
//! dies with the agent, and is stopped with SIGINT (its END runs), then SIGKILL.

mod def;
mod parse;
mod process;

pub use def::{info_of, wrapped_script};
pub(crate) use parse::demangle;
pub use process::{bpftrace_path, children_cost, dry_run, start, AdhocProfiler};

/// Feeds `output`, line by line, to the parser of bpftrace's JSON output as a run of `def`
/// would, and returns the events and histograms it made (or the first error). For the fuzz
/// targets (`fuzz/`) and tests: no bpftrace runs.
pub fn parse_output(def: &baton_config::adhoc::AdhocDef, output: &str) -> Result<usize, String> {
    let mut s = parse::Shared::default();
    for line in output.lines() {
        parse::parse_line(line.trim_end(), def, &[], &mut s)?;
    }
    Ok(s.ready.events.len() + s.ready.histograms.len())
}

#[cfg(test)]
mod tests {
    use baton_config::adhoc::AdhocDef;

    use super::def::{wrapped_script, MARKER};
    use baton_model::{Frame, FrameKind};

    use super::parse::{keyed_event, merge_windows, parse_line, totals, Shared};

    fn def(header: &str, body: &str) -> AdhocDef {
        let text = format!("// baton:\n{header}\n{body}\n");
        let f = baton_config::SourceFile {
            path: "t.bt".into(),
            text,
        };
        baton_config::load(&[f], &["cpu"])
            .map_err(|e| e.to_string())
            .expect("valid")
            .adhoc
            .into_values()
            .next()
            .expect("one")
    }

    #[test]
    fn composite_keys_split_into_stacks_pid_and_labels() {
        let d = def(
            "// name = \"s\"\n// owner = \"o\"\n// [maps.st]\n// kind = \"stacks\"\n// keys = [\"kstack\", \"ustack\", \"pid\", \"comm\"]",
            "profile:hz:99 { @st[kstack, ustack, pid, comm] = count(); }",
        );
        let m = d.map("st").expect("map");
        let key = "\n    do_syscall_64+579\n    entry_SYSCALL_64+118\n,\n    leaf_hot+23\n    _ZN4spin6middle17h0123456789abcdefE+5\n    0x7fde65ed5aef\n,4242,spl,it";
        let e = keyed_event(m, key).expect("split");
        assert_eq!(e.pid, 4242);
        assert_eq!(e.comm, "spl,it");
        let names: Vec<String> = e.frames.iter().map(Frame::display_name).collect();
        assert_eq!(
            names,
            [
                "do_syscall_64",
                "entry_SYSCALL_64",
                "leaf_hot",
                "spin::middle",
                "[unknown] [unknown]+0x7fde65ed5aef"
            ]
        );
        assert_eq!(e.frames[0].kind, FrameKind::Kernel);
        assert_eq!(e.frames[2].kind, FrameKind::User);
    }

    #[test]
    fn printed_maps_become_windows_and_errors_name_the_map() {
        let d = def(
            "// name = \"r\"\n// owner = \"o\"\n// [maps.sizes]\n// kind = \"histogram\"\n// keys = [\"comm\"]\n// unit = \"bytes\"\n// [maps.n]\n// kind = \"series\"",
            "t:syscalls:sys_exit_read { @sizes[comm] = hist(args->ret); @n = count(); }",
        );
        let mut s = Shared::default();
        for l in [
            r#"{"type": "attached_probes", "data": {"probes": 2}}"#,
            r#"{"type": "hist", "data": {"@sizes": {"cat": [{"min": 64, "max": 127, "count": 3}, {"min": 128, "max": 255, "count": 0}, {"min": 4096, "max": 8191, "count": 10}]}}}"#,
            r#"{"type": "map", "data": {"@n": 13}}"#,
        ] {
            parse_line(l, &d, &[], &mut s).expect("parse");
        }
        assert!(s.ready.events.is_empty(), "not a window before its marker");
        parse_line(
            &format!(r#"{{"type": "printf", "data": "{MARKER}\n"}}"#),
            &d,
            &[],
            &mut s,
        )
        .expect("marker");
        assert_eq!(s.windows, 1);
        assert_eq!(totals(&s.ready)[&0], 13);
        let h = &s.ready.histograms[0];
        assert_eq!((h.name, h.key.as_str()), ("sizes", "cat"));
        assert_eq!(h.le_buckets, vec![(127, 3.0), (8191, 10.0)]);
        let e = parse_line(r#"{"type": "map", "data": {"@other": 1}}"#, &d, &[], &mut s)
            .expect_err("undeclared");
        assert!(
            e.contains("map @other") && e.contains("not declared"),
            "{e}"
        );
        let e = parse_line(
            r#"{"type": "map", "data": {"@n": {"a": 1}}}"#,
            &d,
            &[],
            &mut s,
        )
        .expect_err("keyed series");
        assert!(e.starts_with("map @n of t.bt: declared a series"), "{e}");
    }

    #[test]
    fn windows_of_one_drain_merge() {
        let d = def(
            "// name = \"r\"\n// owner = \"o\"\n// [maps.sizes]\n// kind = \"histogram\"\n// keys = [\"comm\"]\n// [maps.n]\n// kind = \"series\"",
            "t:syscalls:sys_exit_read { @sizes[comm] = hist(args->ret); @n = count(); }",
        );
        let mut s = Shared::default();
        for _ in 0..2 {
            for l in [
                r#"{"type": "hist", "data": {"@sizes": {"cat": [{"min": 64, "max": 127, "count": 3}]}}}"#,
                r#"{"type": "map", "data": {"@n": 5}}"#,
            ] {
                parse_line(l, &d, &[], &mut s).expect("parse");
            }
            parse_line(
                &format!(r#"{{"type": "printf", "data": "{MARKER}\n"}}"#),
                &d,
                &[],
                &mut s,
            )
            .expect("marker");
        }
        let m = merge_windows(std::mem::take(&mut s.ready));
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.events[0].values, vec![10]);
        assert_eq!(m.histograms.len(), 1);
        assert_eq!(m.histograms[0].le_buckets, vec![(127, 6.0)]);
    }

    #[test]
    fn the_wrapper_prints_and_clears_every_stored_map() {
        let d = def(
            "// name = \"o\"\n// owner = \"o\"\n// [maps.start]\n// kind = \"scratch\"\n// [maps.off]\n// kind = \"stacks\"\n// keys = [\"ustack\"]",
            "t:sched:sched_switch { @start[tid] = nsecs; @off[ustack] = sum(1); }",
        );
        let w = wrapped_script(&d);
        assert!(w.contains("interval:s:1 { print(@off); clear(@off); printf("));
        assert!(w.contains("clear(@start); }"));
        assert!(!w.contains("print(@start)"));
    }
}
