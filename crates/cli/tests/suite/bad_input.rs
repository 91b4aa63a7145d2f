//! Bad input: one-line errors that say what to do, meaningful exit codes, no panics.

use crate::harness::*;

fn check(args: &[&str], code: i32, needle: &str) {
    let out = run(baton().args(args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{args:?} panicked");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: error is not one line: {err}"
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    check(
        &["record", "gpu", "--all"],
        2,
        "unknown profiler \"gpu\"; available profilers: cpu",
    );
    check(
        &["record", "cpu", "--all", "--duration", "10x"],
        2,
        "--duration",
    );
    check(
        &["record", "cpu", "--all", "--frequency", "0"],
        2,
        "out of range",
    );
    check(&["record", "cpu"], 2, "say what to profile");
    check(
        &["record", "cpu", "--all", "--output", "x.txt"],
        2,
        "cannot tell the format",
    );
    check(&["up", "--window", "soon"], 2, "--window");
    check(
        &["record", "malloc", "--all", "--opt", "sample_byte=0"],
        2,
        "profiler malloc has no option \"sample_byte\"; its options are mode, sample_bytes, lib",
    );
    check(
        &["record", "malloc", "--all", "--value", "rss"],
        2,
        "its values are alloc_bytes, alloc_count, live_bytes, live_count",
    );
    check(
        &["record", "calls", "--all", "--opt", "probe"],
        2,
        "KEY=VALUE",
    );
}

#[test]
fn missing_pid_and_unwritable_data_dir() {
    require_root();
    check(
        &["record", "cpu", "--pid", "999999999"],
        2,
        "process 999999999 does not exist",
    );
    check(
        &[
            "up",
            "--data",
            "/proc/baton-cannot-write",
            "--listen",
            "127.0.0.1:0",
        ],
        2,
        "not writable",
    );
    check(
        &["record", "calls", "--", "true"],
        2,
        "say which functions to count with probe=[BINARY:]PATTERN",
    );
    check(
        &[
            "record",
            "calls",
            "--opt",
            "probe=no_such_function_here",
            "--",
            "true",
        ],
        2,
        "matches \"no_such_function_here\"",
    );
    check(
        &[
            "record",
            "latency",
            "--opt",
            "begin=a",
            "--opt",
            "end=b",
            "--opt",
            "match=arg9",
            "--",
            "true",
        ],
        2,
        "match must be thread or arg1…arg6",
    );
}

#[test]
fn no_permission_names_what_is_needed() {
    require_root();
    // Run as nobody: no root, no capabilities.
    let out = run(std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_baton"))
        .args(["record", "cpu", "--all", "--duration", "1s"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("root") && err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
        "{err}"
    );
}
