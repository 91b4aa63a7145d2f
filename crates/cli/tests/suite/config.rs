//! `baton config check` on the shipped example tree and on a broken copy of it.

use std::path::Path;

use crate::harness::*;

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read example dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config")
}

#[test]
fn the_example_tree_is_valid() {
    let out = run(baton().args(["config", "check"]).arg(examples()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 services"));
}

#[test]
fn a_broken_tree_is_rejected_with_file_line_col() {
    let dir = scratch("broken-config");
    copy_tree(&examples(), &dir);
    let cpu = dir.join("profilers/cpu.toml");
    let text = std::fs::read_to_string(&cpu)
        .expect("read")
        .replace("frequency = 19 ", "frequncy = 19 ");
    std::fs::write(&cpu, text).expect("write");
    let search = dir.join("services/search.toml");
    let text = std::fs::read_to_string(&search)
        .expect("read")
        .replacen("profiler = \"cpu\"", "profiler = \"cpux\"", 1)
        .replacen("duration = \"30s\"", "duration = \"soon\"", 1);
    std::fs::write(&search, text).expect("write");

    let out = run(baton().args(["config", "check"]).arg(&dir));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let cpu_at = format!("{}:3:1: unknown key `frequncy`", cpu.display());
    assert!(err.contains(&cpu_at), "{err}");
    assert!(err.contains("did you mean `frequency`?"), "{err}");
    assert!(
        err.contains(&format!(
            "{}:5:16: unknown profiler `cpux`",
            search.display()
        )),
        "{err}"
    );
    assert!(err.contains("duration: bad duration \"soon\""), "{err}");

    let out = run(baton().args(["config", "check", "--json"]).arg(&dir));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"].as_array().expect("problems").len(), 3);
}
