//! The CPU profiler's unwinding of a target without frame pointers from its first sample.
//! Needs root (real BPF); without it the test fails, loudly.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_profilers::cpu::{CpuOptions, CpuProfiler, UserStackOrigin};
use baton_symbolizer::HostSymbolizer;

/// `split` built without frame pointers, sampled with DWARF on and no `plan_unwinding` call:
/// the profiler plans its targets before it samples them, so every sample in `split`'s code is
/// unwound from DWARF CFI and reaches `main`.
#[test]
fn a_targets_samples_are_unwound_from_dwarf_without_a_plan_call() {
    assert!(
        baton_profilers::sys::has_profiling_privileges(),
        "this test loads BPF: run it as root"
    );
    let dir = std::env::temp_dir().join(format!("baton-cpu-dwarf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let bin = dir.join("split-nofp");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/split.c");
    let st = Command::new("clang")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("clang must be installed (scripts/install-deps.sh)");
    assert!(st.success(), "compiling split.c failed");
    let mut child = Command::new(&bin).arg("3").spawn().expect("start split");
    let pid = child.id();
    // Long enough for the loader to have mapped libc.
    std::thread::sleep(Duration::from_millis(100));
    let mut prof = CpuProfiler::start(&CpuOptions {
        frequency_hz: 499,
        targets: Some(vec![pid]),
        follow_forks: false,
        force_cpu_clock: true,
        dwarf: true,
        timeline: false,
    })
    .expect("cpu profiler starts");
    let mut sym = HostSymbolizer::new();
    sym.observe_process(pid);
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(300));
        samples.extend(prof.drain().expect("drain").samples);
    }
    let (mut leaf, mut dwarf, mut to_main) = (0u64, 0u64, 0u64);
    for s in samples.iter().filter(|s| s.event.pid == pid) {
        let user: Vec<String> = sym
            .user_frames(pid, &s.event.user)
            .into_iter()
            .filter_map(|f| f.function)
            .collect();
        if !user
            .first()
            .is_some_and(|f| f == "leaf_hot" || f == "leaf_cold")
        {
            continue;
        }
        leaf += s.event.count;
        if s.user_origin == UserStackOrigin::Dwarf {
            dwarf += s.event.count;
        }
        if user.iter().any(|f| f == "main") {
            to_main += s.event.count;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{leaf} samples in the leaves: {dwarf} unwound from DWARF, {to_main} reach main");
    assert!(leaf > 200, "only {leaf} samples in the leaves");
    assert_eq!(dwarf, leaf, "samples walked by frame pointers");
    assert!(
        to_main as f64 >= 0.98 * leaf as f64,
        "{to_main} of {leaf} reach main"
    );
}
