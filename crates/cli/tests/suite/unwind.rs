//! Complete stacks without frame pointers: DWARF unwinding against workloads whose call chains
//! are known, and against `perf record --call-graph dwarf` on a Debian binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// Stacks of a collapsed profile: (frames root first, count).
fn collapsed(path: &Path) -> Vec<(Vec<String>, u64)> {
    parse_collapsed(&std::fs::read_to_string(path).expect("read collapsed output"))
}

/// Stacks of collapsed text: (frames root first, count).
fn parse_collapsed(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((
                stack.split(';').map(str::to_string).collect(),
                n.parse().ok()?,
            ))
        })
        .collect()
}

/// Records `cmd` with the CPU profiler into a collapsed profile and returns its stacks and what
/// baton printed.
fn record_collapsed(tag: &str, args: &[&str], cmd: &[&str]) -> (Vec<(Vec<String>, u64)>, String) {
    record_with("cpu", tag, args, cmd)
}

/// [`record_collapsed`] with `profiler`.
fn record_with(
    profiler: &str,
    tag: &str,
    args: &[&str],
    cmd: &[&str],
) -> (Vec<(Vec<String>, u64)>, String) {
    require_root();
    let dir = scratch(&format!("unwind-{tag}"));
    let out_file = dir.join("profile.folded");
    let mut c = baton();
    c.current_dir(&dir)
        .args(["record", profiler, "--format", "collapsed", "--output"])
        .arg(&out_file)
        .args(args)
        .arg("--")
        .args(cmd);
    let out = run(&mut c);
    assert!(out.status.success(), "baton record failed");
    (
        collapsed(&out_file),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Whether `frames` holds `chain` as consecutive frames.
fn has_chain(frames: &[String], chain: &[&str]) -> bool {
    frames
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(f, c)| f == c))
}

/// Share (percent) of samples for which `pred` holds.
fn share(stacks: &[(Vec<String>, u64)], pred: impl Fn(&[String]) -> bool) -> f64 {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    assert!(total > 0, "no samples");
    let hit: u64 = stacks.iter().filter(|(f, _)| pred(f)).map(|(_, n)| n).sum();
    100.0 * hit as f64 / total as f64
}

/// Self share (percent) of the stacks whose leaf is `leaf`.
fn leaf_share(stacks: &[(Vec<String>, u64)], leaf: &str) -> f64 {
    share(stacks, |f| f.last().is_some_and(|l| l == leaf))
}

#[test]
fn split_without_frame_pointers_has_the_full_chain() {
    let split = workload_without_frame_pointers("split");
    let bin = split.to_str().expect("path");
    let (stacks, log) = record_collapsed("split-nofp", &["--frequency", "499"], &[bin, "5"]);
    let full = share(&stacks, |f| {
        has_chain(f, &["main", "mid", "leaf_hot"]) || has_chain(f, &["main", "mid", "leaf_cold"])
    });
    let hot = leaf_share(&stacks, "leaf_hot");
    let cold = leaf_share(&stacks, "leaf_cold");
    eprintln!("full chains {full:.1}%, leaf_hot {hot:.1}%, leaf_cold {cold:.1}%\n{log}");
    assert!(
        full >= 95.0,
        "only {full:.1}% of samples carry leaf_* <- mid <- main"
    );
    assert!(
        (hot - 75.0).abs() <= 5.0,
        "leaf_hot {hot:.1}% is not 75 ± 5"
    );
    assert!(
        (cold - 25.0).abs() <= 5.0,
        "leaf_cold {cold:.1}% is not 25 ± 5"
    );
    assert!(
        log.contains("unwound from DWARF CFI"),
        "the summary does not report DWARF unwinding:\n{log}"
    );

    // The same binary with frame pointers only loses the chain: the DWARF unwinder is what
    // makes it complete.
    let (fp, _) = record_collapsed(
        "split-nofp-fp",
        &["--frequency", "499", "--unwind", "fp"],
        &[bin, "2"],
    );
    let fp_full = share(&fp, |f| {
        has_chain(f, &["main", "mid", "leaf_hot"]) || has_chain(f, &["main", "mid", "leaf_cold"])
    });
    eprintln!("with --unwind fp: full chains {fp_full:.1}%");
    assert!(
        fp_full < 50.0,
        "frame pointers alone gave {fp_full:.1}% full chains on a binary without them"
    );
}

#[test]
fn frame_pointer_code_stays_on_frame_pointers() {
    // Built with frame pointers in every function: BPF walks them, and only the odd sample
    // whose leaf is in libc or the loader (no frame pointers there) is copied.
    let split = workload("split");
    let (stacks, log) = record_collapsed(
        "split-fp",
        &["--frequency", "499"],
        &[split.to_str().expect("path"), "3"],
    );
    let full = share(&stacks, |f| {
        has_chain(f, &["main", "mid", "leaf_hot"]) || has_chain(f, &["main", "mid", "leaf_cold"])
    });
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let copied: u64 = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("user stacks without frame pointers: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("record's summary says nothing of copied stacks:\n{log}"));
    eprintln!("full chains {full:.1}%, {copied} of {total} samples copied\n{log}");
    assert!(full >= 95.0, "only {full:.1}% full chains");
    assert!(
        (copied as f64) < 0.05 * total as f64,
        "{copied} of {total} samples were copied for DWARF although the code has frame pointers"
    );
}

/// Functions at which a stack has reached its process's entry.
const ENTRY: &[&str] = &[
    "main",
    "_start",
    "__libc_start_call_main",
    "__libc_start_main",
    "__libc_start_main_impl",
    "clone",
    "clone3",
    "start_thread",
];

fn reaches_entry(frames: &[String]) -> bool {
    frames.iter().any(|f| {
        let name = f.split(" (inlined)").next().unwrap_or(f).trim();
        ENTRY.contains(&name)
    })
}

/// A file of about 27 MB that gzip takes a few seconds on.
fn gzip_input() -> PathBuf {
    let dir = scratch("gzip-input");
    let f = dir.join("input.txt");
    if !f.exists() {
        let mut text = String::with_capacity(28 << 20);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while text.len() < (27 << 20) {
            // Pseudo-random words: compressible, but not trivially.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let word = format!("{:x} ", x % 100_000_007);
            text.push_str(&word);
            if x % 11 == 0 {
                text.push('\n');
            }
        }
        std::fs::write(&f, text).expect("write gzip input");
    }
    f
}

#[test]
fn debian_gzip_reaches_its_entry_as_often_as_perf() {
    require_root();
    let gzip = Path::new("/usr/bin/gzip");
    assert!(gzip.exists(), "Debian's gzip is not installed");
    let input = gzip_input();
    let inp = input.to_str().expect("path");

    let (stacks, log) = record_collapsed(
        "gzip",
        &["--frequency", "499"],
        &["/usr/bin/gzip", "-9", "-f", "-k", inp],
    );
    let ours = share(&stacks, reaches_entry);

    // perf, on the same command, at the same frequency, with its DWARF unwinder.
    let dir = scratch("unwind-gzip-perf");
    let data = dir.join("perf.data");
    let st = Command::new("perf")
        .args(["record", "-q", "-F", "499", "--call-graph", "dwarf", "-o"])
        .arg(&data)
        .args(["--", "/usr/bin/gzip", "-9", "-f", "-k", inp])
        .status()
        .expect("perf must be installed (scripts/install-deps.sh installs linux-perf)");
    assert!(st.success(), "perf record failed");
    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(&data)
        .output()
        .expect("perf script");
    assert!(script.status.success(), "perf script failed");
    let text = String::from_utf8_lossy(&script.stdout);
    let perf_stacks: Vec<(Vec<String>, u64)> = text
        .split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let frames = s
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .collect();
            (frames, 1)
        })
        .collect();
    let theirs = share(&perf_stacks, reaches_entry);
    eprintln!(
        "gzip samples reaching the entry: baton {ours:.1}% of {}, perf {theirs:.1}% of {}\n{log}",
        stacks.iter().map(|(_, n)| n).sum::<u64>(),
        perf_stacks.len()
    );
    assert!(
        ours >= 90.0,
        "only {ours:.1}% of baton's gzip samples reach the entry"
    );
    assert!(
        ours >= theirs - 5.0,
        "baton {ours:.1}% is more than 5 points below perf {theirs:.1}%"
    );
}

#[test]
fn rust_release_binary_without_frame_pointers_has_full_demangled_stacks() {
    require_root();
    let dir = scratch("rust-spin");
    let bin = dir.join("spin");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/spin.rs");
    let st = Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=3",
            "-C",
            "force-frame-pointers=no",
            "-C",
            "debuginfo=line-tables-only",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("rustc (the toolchain building these tests) runs");
    assert!(st.success(), "rustc failed");
    let (stacks, log) = record_collapsed(
        "rust",
        &["--frequency", "499"],
        &[bin.to_str().expect("path"), "4"],
    );
    let full = share(&stacks, |f| {
        let has = |n: &str| f.iter().any(|x| x == n);
        has("spin::main")
            && has("spin::middle")
            && (has("spin::hot_leaf") || has("spin::cold_leaf"))
            && reaches_entry(f)
    });
    let hot = share(&stacks, |f| f.iter().any(|x| x == "spin::hot_leaf"));
    eprintln!("full demangled chains {full:.1}%, hot_leaf {hot:.1}%\n{log}");
    assert!(
        full >= 95.0,
        "only {full:.1}% of samples carry spin::hot_leaf|cold_leaf <- spin::middle <- spin::main"
    );
    assert!(
        (hot - 75.0).abs() <= 7.0,
        "hot_leaf {hot:.1}% is not about 75"
    );
}

#[test]
fn up_unwinds_a_process_without_frame_pointers_through_dwarf() {
    require_root();
    let split = workload_without_frame_pointers("split");
    let data = scratch("up-unwind-data");
    let up = Up::start(&data);
    let mut w = Command::new(&split).arg("8").spawn().expect("workload");
    // comm is the binary's name, `split-nofp`, truncated by the kernel to 15 bytes.
    let filter = "filter=comm%3Dsplit-nofp";
    let stacks = eventually(40, "the workload's DWARF stacks in the store", || {
        let (st, body) = http_get(
            &up.addr,
            &format!("/api/v1/export?since=10m&format=collapsed&{filter}"),
        );
        let text = String::from_utf8_lossy(&body).to_string();
        (st == 200 && text.contains("main;mid;leaf_hot")).then_some(text)
    });
    let _ = w.wait();
    // Everything the workload ran, now that it has ended.
    let (_, body) = http_get(
        &up.addr,
        &format!("/api/v1/export?since=10m&format=collapsed&{filter}"),
    );
    let all = String::from_utf8_lossy(&body).to_string();
    let parsed = parse_collapsed(&all);
    let full = share(&parsed, |f| {
        has_chain(f, &["main", "mid", "leaf_hot"]) || has_chain(f, &["main", "mid", "leaf_cold"])
    });
    eprintln!("full chains in baton up: {full:.1}%\nfirst seen:\n{stacks}");
    // The first ~250 ms of a new process, before it is planned, are walked with frame pointers.
    assert!(full >= 85.0, "only {full:.1}% full chains:\n{all}");
    let (_, metrics) = http_get(&up.addr, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    let copied = metrics
        .lines()
        .find_map(|l| l.strip_prefix("baton_dwarf_stacks_copied_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(copied > 0.0, "no DWARF copies counted in /metrics");
    assert!(
        metrics.contains("baton_unwind_table_bytes"),
        "/metrics lacks baton_unwind_table_bytes"
    );
    up.stop();
}

/// Compiles a C file with `clang -O2 -g` and `flags` into `dir/out`.
fn cc(src: &Path, out: &Path, flags: &[&str]) {
    let st = Command::new("clang")
        .args(["-O2", "-g"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("clang must be installed (scripts/install-deps.sh)");
    assert!(st.success(), "compiling {} failed", src.display());
}

fn source(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn a_dlopened_library_without_frame_pointers_is_unwound() {
    require_root();
    let dir = scratch("dlopen-workload");
    let lib = dir.join("libplugin.so");
    cc(
        &source("tests/workloads/plugin.c"),
        &lib,
        &["-shared", "-fPIC", "-fomit-frame-pointer"],
    );
    // The program keeps frame pointers: only the library's code is copied, once Baton has seen
    // it mapped (the library arrives half a second after the start).
    let prog = workload("dlopen");
    let (stacks, log) = record_collapsed(
        "dlopen",
        &["--frequency", "499"],
        &[
            prog.to_str().expect("path"),
            lib.to_str().expect("path"),
            "0.5",
            "3",
        ],
    );
    let in_plugin = |f: &[String]| f.last().is_some_and(|l| l == "plugin_leaf");
    let plugin = share(&stacks, in_plugin);
    let plugin_stacks: Vec<(Vec<String>, u64)> = stacks
        .iter()
        .filter(|(f, _)| in_plugin(f))
        .cloned()
        .collect();
    let full = share(&plugin_stacks, |f| {
        has_chain(f, &["main", "call_plugin", "plugin_burn", "plugin_leaf"])
    });
    eprintln!("plugin_leaf {plugin:.1}% of samples, {full:.1}% of them with the full chain\n{log}");
    assert!(
        plugin > 50.0,
        "plugin_leaf has only {plugin:.1}% of the samples"
    );
    assert!(
        full >= 85.0,
        "only {full:.1}% of plugin_leaf samples carry main <- call_plugin <- plugin_burn"
    );
}

#[test]
fn threads_without_frame_pointers_reach_their_thread_entry() {
    require_root();
    let dir = scratch("threads-workload");
    let burn = dir.join("burn-nofp");
    cc(
        &source("bench/burn.c"),
        &burn,
        &["-fomit-frame-pointer", "-pthread"],
    );
    let (stacks, log) = record_collapsed(
        "threads",
        &["--frequency", "499"],
        &[burn.to_str().expect("path"), "3"],
    );
    let in_work = |f: &[String]| f.last().is_some_and(|l| l == "work");
    let work = share(&stacks, in_work);
    let work_stacks: Vec<(Vec<String>, u64)> =
        stacks.iter().filter(|(f, _)| in_work(f)).cloned().collect();
    let full = share(&work_stacks, |f| {
        has_chain(f, &["run", "work"]) && f.iter().any(|x| x == "start_thread" || x == "clone3")
    });
    eprintln!("work {work:.1}% of samples, {full:.1}% of them reach the thread entry\n{log}");
    assert!(work > 80.0, "work has only {work:.1}%");
    assert!(
        full >= 95.0,
        "only {full:.1}% of thread samples carry clone3/start_thread ... run <- work"
    );
}

#[test]
fn vdso_frames_unwind_into_their_callers() {
    require_root();
    let prog = workload_without_frame_pointers("vdso");
    let (stacks, log) = record_collapsed(
        "vdso",
        &["--frequency", "499"],
        &[prog.to_str().expect("path"), "3"],
    );
    // The vDSO's own function is named from its image: `clock_gettime` (or `__vdso_…`), as the
    // leaf under libc's `clock_gettime`.
    let in_vdso = |f: &[String]| {
        f.last()
            .is_some_and(|l| l.contains("clock_gettime") || l.contains("[vdso]"))
    };
    let vdso = share(&stacks, in_vdso);
    let vdso_stacks: Vec<(Vec<String>, u64)> =
        stacks.iter().filter(|(f, _)| in_vdso(f)).cloned().collect();
    let full = share(&vdso_stacks, |f| has_chain(f, &["main", "tick"]));
    eprintln!("vDSO leaves {vdso:.1}% of samples, {full:.1}% of them under main <- tick\n{log}");
    assert!(vdso > 20.0, "only {vdso:.1}% of samples are in the vDSO");
    assert!(
        !stacks
            .iter()
            .any(|(f, _)| f.iter().any(|x| x.contains("[vdso]"))),
        "vDSO frames are not named"
    );
    assert!(
        full >= 90.0,
        "only {full:.1}% of vDSO samples unwind to main <- tick"
    );
}

/// Exact malloc profiling under a burst: `burst` (no frame pointers) allocates 1,000 times in a
/// tight loop from `burst_site`, far faster than the copy ring is read, so every copy of the
/// user stack must fit the ring at once. Each allocation is counted, and each keeps its caller
/// chain `main -> burst_site` (then the allocator's leaf, if the profiler adds one).
#[test]
fn a_burst_of_allocations_without_frame_pointers_keeps_every_chain() {
    let burst = workload_without_frame_pointers("burst");
    let (stacks, log) = record_with(
        "malloc",
        "burst",
        &["--opt", "sample_bytes=0", "--value", "alloc_count"],
        // A second first, so the process is planned (its code lacks frame pointers) before the
        // burst: a miss would then be the copy ring's alone.
        &[burst.to_str().expect("path"), "1"],
    );
    let count = |pred: &dyn Fn(&[String]) -> bool| -> u64 {
        stacks.iter().filter(|(f, _)| pred(f)).map(|(_, n)| n).sum()
    };
    let at_site = count(&|f| f.iter().any(|x| x == "burst_site"));
    let chained = count(&|f| has_chain(f, &["main", "burst_site"]));
    let text: String = stacks
        .iter()
        .map(|(f, n)| format!("{} {n}\n", f.join(";")))
        .collect();
    eprintln!("{at_site} allocations at burst_site, {chained} under main;burst_site\n{text}{log}");
    assert_eq!(at_site, 1_000, "allocations counted at burst_site:\n{text}");
    assert_eq!(
        chained, 1_000,
        "allocations at burst_site that keep main;burst_site:\n{text}"
    );
    assert!(
        log.contains("unwound from DWARF CFI"),
        "the summary does not report DWARF unwinding:\n{log}"
    );
}
