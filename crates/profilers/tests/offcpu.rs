//! The off-CPU profiler against a program whose blocking is known: 10 sleeps of 200 ms. Needs
//! root (real BPF); without it the test fails, loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_profilers::offcpu::{BlockState, OffCpuOptions, OffCpuProfiler};
use baton_symbolizer::HostSymbolizer;

/// Builds `tests/workloads/sleeper.c` with frame pointers into a scratch directory.
fn sleeper(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("baton-offcpu-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let bin = dir.join("sleeper");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/sleeper.c");
    let st = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
        ])
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("clang must be installed (scripts/install-deps.sh)");
    assert!(st.success(), "compiling sleeper.c failed");
    (dir, bin)
}

/// What one profiled run of the sleeper gave.
struct SleeperRun {
    dir: PathBuf,
    pid: u32,
    blocks: Vec<baton_profilers::offcpu::Block>,
    stats: baton_profilers::offcpu::OffProfilerStats,
    /// Knows the sleeper; its binary stays in `dir` until the test removes it.
    sym: HostSymbolizer,
}

/// Starts the sleeper (a 0.5 s warm-up, then 10 sleeps of 200 ms), attaches the off-CPU
/// profiler during the warm-up, and drains it until the sleeper exits. Nothing calls
/// `observe_maps`: with `dwarf`, the profiler's own planning of its targets is all there is.
fn profile_sleeper(tag: &str, dwarf: bool) -> SleeperRun {
    assert!(
        baton_profilers::sys::has_profiling_privileges(),
        "this test loads BPF: run it as root"
    );
    let (dir, bin) = sleeper(tag);
    let mut child = Command::new(&bin)
        .arg("0.5")
        .spawn()
        .expect("start sleeper");
    let pid = child.id();
    // Long enough for the loader to have mapped libc; the warm-up sleep lasts 0.5 s.
    std::thread::sleep(Duration::from_millis(100));
    let mut prof = OffCpuProfiler::start(&OffCpuOptions {
        targets: Some(vec![pid]),
        follow_forks: false,
        min_block_ns: 1_000_000,
        max_tracked_per_sec: baton_profilers::offcpu::DEFAULT_MAX_TRACKED_PER_SEC,
        dwarf,
        timeline: true,
    })
    .expect("offcpu profiler starts");
    let mut sym = HostSymbolizer::new();
    sym.observe_process(pid);
    let mut blocks = Vec::new();
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(300));
        blocks.extend(prof.drain().expect("drain"));
    }
    std::thread::sleep(Duration::from_millis(50));
    blocks.extend(prof.drain().expect("drain"));
    let stats = prof.stats();
    SleeperRun {
        dir,
        pid,
        blocks,
        stats,
        sym,
    }
}

#[test]
fn ten_sleeps_of_200_ms_show_2_seconds_blocked_in_nanosleep() {
    // Frame pointers only: this test checks the BPF side's blocks and stack ids.
    let SleeperRun {
        dir,
        pid,
        blocks,
        stats,
        mut sym,
    } = profile_sleeper("fp", false);

    let mut in_sleep = 0u64;
    let mut sleeps = 0u64;
    let mut total = 0u64;
    for b in blocks.iter().filter(|b| b.pid == pid) {
        total += b.ns;
        let kernel: Vec<String> = sym
            .kernel_frames(&b.kernel)
            .into_iter()
            .filter_map(|f| f.function)
            .collect();
        let user: Vec<String> = sym
            .user_frames(pid, &b.user)
            .into_iter()
            .filter_map(|f| f.function)
            .collect();
        let in_nanosleep = kernel.iter().any(|f| f.contains("nanosleep"));
        eprintln!(
            "block {} ns x{}: user {user:?} kernel {kernel:?}",
            b.ns, b.count
        );
        // Frame pointers only: Debian's libc has none, so the walk from its clock_nanosleep
        // skips `wait_here` (the DWARF test below reaches it). The kernel stack is complete.
        if b.state == BlockState::Sleeping
            && in_nanosleep
            && user.first().is_some_and(|f| f == "clock_nanosleep")
        {
            in_sleep += b.ns;
            sleeps += b.count;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let secs = in_sleep as f64 / 1e9;
    eprintln!(
        "blocked in clock_nanosleep: {secs:.3} s in {sleeps} sleeps; all blocks of the pid {:.3} s; {stats:?}",
        total as f64 / 1e9
    );
    assert!(
        (secs - 2.0).abs() <= 0.2,
        "blocked {secs:.3} s in clock_nanosleep, not 2.0 ± 10%"
    );
    assert_eq!(sleeps, 10, "{sleeps} sleeps, not 10");
    // The warm-up sleep began before the profiler attached: it is not seen, and nothing else is.
    assert!(
        (total as f64 / 1e9 - secs).abs() < 0.05,
        "{:.3} s blocked outside the 10 sleeps",
        total as f64 / 1e9 - secs
    );
}

/// With DWARF unwinding on, a target's blocks are unwound through libc (which has no frame
/// pointers) from the first one: the profiler plans the targets it is given before it tracks
/// them, so nothing here ever calls `observe_maps`. Every one of the 10 sleeps names
/// `clock_nanosleep`, `wait_here` and `main`.
#[test]
fn a_targets_first_blocks_are_unwound_through_libc() {
    let SleeperRun {
        dir,
        pid,
        blocks,
        stats,
        mut sym,
    } = profile_sleeper("dwarf", true);

    let (mut whole, mut sleeps) = (0u64, 0u64);
    for b in blocks.iter().filter(|b| b.pid == pid) {
        let user: Vec<String> = sym
            .user_frames(pid, &b.user)
            .into_iter()
            .filter_map(|f| f.function)
            .collect();
        eprintln!("block {} ns x{}: user {user:?}", b.ns, b.count);
        let at = |name: &str| user.iter().position(|f| f == name);
        if b.state == BlockState::Sleeping && b.ns >= 150_000_000 * b.count {
            sleeps += b.count;
            if matches!(
                (at("clock_nanosleep"), at("wait_here"), at("main")),
                (Some(a), Some(w), Some(m)) if a < w && w < m
            ) {
                whole += b.count;
            }
        }
    }
    // Symbols are read from the binary: remove it only now.
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{whole} of {sleeps} sleeps unwound through libc; {stats:?}");
    assert_eq!(sleeps, 10, "{sleeps} sleeps of 200 ms, not 10");
    assert_eq!(whole, 10, "{whole} of 10 sleeps reach wait_here and main");
}
