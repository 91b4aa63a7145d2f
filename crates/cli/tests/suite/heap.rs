//! The malloc profiler's default mode, the sampler inside the process: its estimates against
//! programs whose allocations are known, a service started with the library and read by
//! `baton run`, and what happens when the sampler cannot work.

use std::process::Command;

use crate::harness::*;

/// Runs `baton record malloc ARGS… --format collapsed -- CMD…`: (collapsed text, stderr).
fn record_malloc(args: &[&str], cmd: &[&str]) -> (String, String) {
    let out = run(baton()
        .args(["record", "malloc", "--format", "collapsed"])
        .args(args)
        .arg("--")
        .args(cmd));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "baton record malloc failed:\n{log}");
    (String::from_utf8_lossy(&out.stdout).to_string(), log)
}

/// Sum of the collapsed values of stacks through `frame`.
fn through(collapsed: &str, frame: &str) -> f64 {
    collapsed
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(stack, _)| stack.split(';').any(|f| f == frame))
        .map(|(_, v)| v.parse::<f64>().expect("a value"))
        .sum()
}

/// The `twosites` workload allocates 300 MiB at site_a (4 KiB blocks) and 100 MiB at site_b
/// (1 KiB blocks), interleaved, and frees every other block of site_a. Sampled at a mean of
/// 64 KiB (about 4,700 samples at A and 1,600 at B), every estimate is within 10% of the truth
/// and each site's share within 5 points.
#[test]
fn sampled_estimates_of_two_sites_are_within_ten_percent() {
    require_root();
    let w = workload("twosites");
    let cmd = [w.to_str().expect("path")];
    const MIB: f64 = 1048576.0;
    for (value, a_truth, b_truth) in [
        ("alloc_bytes", 300.0 * MIB, 100.0 * MIB),
        ("alloc_count", 76_800.0, 102_400.0),
        ("live_bytes", 150.0 * MIB, 100.0 * MIB),
        ("live_count", 38_400.0, 102_400.0),
    ] {
        let (text, log) = record_malloc(&["--opt", "sample_bytes=65536", "--value", value], &cmd);
        let (a, b) = (through(&text, "site_a"), through(&text, "site_b"));
        eprintln!(
            "{value}: site_a {a:.0} (truth {a_truth}), site_b {b:.0} (truth {b_truth})\n{log}"
        );
        assert!(
            log.contains("sampled in the process, 1 sample per 64 KiB"),
            "summary: {log}"
        );
        for (site, got, truth) in [("site_a", a, a_truth), ("site_b", b, b_truth)] {
            assert!(
                (got - truth).abs() <= 0.1 * truth,
                "{value} at {site}: {got:.0}, not {truth} ± 10%"
            );
        }
        let share = 100.0 * a / (a + b);
        let truth = 100.0 * a_truth / (a_truth + b_truth);
        assert!(
            (share - truth).abs() <= 5.0,
            "{value}: site_a has {share:.1}% of the two sites, not {truth:.1}% ± 5 points"
        );
        // Every sample has its full chain, down to the sampler's entry point.
        for site in ["site_a", "site_b"] {
            assert!(
                text.contains(&format!("main;{site};malloc ")),
                "no main;{site};malloc stack:\n{text}"
            );
        }
    }
}

/// A service started with the sampler (as a systemd drop-in would start it) is read by a
/// `baton run` in the default mode, through `baton up`: exact mode here, so the numbers are
/// the truth: 1,000 blocks of 4 KiB at alloc_site_a, half of them live.
#[test]
fn a_service_started_with_the_sampler_is_read_by_baton_run() {
    require_root();
    let out = run(baton().args(["preload", "--quiet"]));
    assert!(out.status.success(), "baton preload failed");
    let lib = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(lib.ends_with("libbaton_malloc.so"), "{lib}");
    let data = scratch("heap-up");
    let up = Up::start(&data);
    // One second to attach before it allocates, then it holds the live half for three.
    let mut w = Command::new(workload("alloc"))
        .args(["1", "3"])
        .env("LD_PRELOAD", &lib)
        .env("BATON_MALLOC_SAMPLE_BYTES", "0")
        .spawn()
        .expect("alloc");
    let out = run(baton()
        .args(["run", "malloc", "--target", &format!("pid:{}", w.id())])
        .args(["--duration", "3s", "--wait", "--format", "json"])
        .args(["--server", &format!("http://{}", up.addr)]));
    let _ = w.wait();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && json.contains("\"done\""),
        "run: {json}"
    );
    let folded = |value: &str| {
        let (st, body) = http_get(
            &up.addr,
            &format!(
                "/api/v1/export?since=10m&format=collapsed&profiler=malloc&value={value}\
                 &filter=comm%3Dalloc"
            ),
        );
        assert_eq!(st, 200);
        String::from_utf8_lossy(&body).to_string()
    };
    let bytes = through(&folded("alloc_bytes"), "alloc_site_a");
    let count = through(&folded("alloc_count"), "alloc_site_a");
    let live = folded("live_bytes");
    eprintln!("through up: alloc_bytes {bytes}, alloc_count {count}\nlive_bytes:\n{live}");
    assert_eq!(bytes, 4_096_000.0);
    assert_eq!(count, 1_000.0);
    // Live bytes are a level at each window's end, and the store sums windows: a whole number
    // of windows of 2,048,000.
    let live = through(&live, "alloc_site_a");
    assert!(
        live >= 2_048_000.0 && (live / 2_048_000.0).fract() == 0.0,
        "live_bytes {live} is not a whole number of windows of 2,048,000"
    );
    up.stop();
}

/// A statically linked program has its malloc inside the binary: nothing can be preloaded into
/// it, and the error says so and what to do, whether Baton starts it or finds it running.
#[test]
fn a_static_binary_is_refused_with_what_is_missing() {
    require_root();
    let w = workload_static("alloc");
    let out = run(baton()
        .args(["record", "malloc", "--format", "collapsed", "--"])
        .arg(&w)
        .arg("0.2"));
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(
        !out.status.success(),
        "a static command was recorded: {err}"
    );
    assert!(
        err.contains("statically linked") && err.contains("mode=uprobe"),
        "the error does not say what is missing: {err}"
    );
    let mut running = Command::new(&w).args(["5"]).spawn().expect("static alloc");
    let out = run(baton()
        .args(["record", "malloc", "--duration", "1s", "--pid"])
        .arg(running.id().to_string()));
    let _ = running.kill();
    let _ = running.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(
        !out.status.success(),
        "a static process was recorded: {err}"
    );
    assert!(
        err.contains("statically") && err.contains("mode=uprobe"),
        "the error does not say what is missing: {err}"
    );
}

/// The sampler never stops a program: a preload path that does not exist is skipped by the
/// loader, and where the sampler cannot reserve its region (an address-space limit) it stops
/// sampling and the program runs to its end.
#[test]
fn a_sampler_that_cannot_work_never_stops_the_program() {
    require_root();
    let w = workload("alloc");
    let st = Command::new(&w)
        .env("LD_PRELOAD", "/nonexistent/libbaton_malloc.so")
        .status()
        .expect("alloc");
    assert!(
        st.success(),
        "a missing preload library stopped the program: {st}"
    );
    let script = format!("ulimit -v 300000; exec {}", w.display());
    let (_, log) = record_malloc(&["--opt", "sample_bytes=4096"], &["sh", "-c", &script]);
    eprintln!("{log}");
    assert!(
        log.contains("command ended: exit code 0"),
        "the program did not run to its end under the sampler: {log}"
    );
}

/// The same two sites in a program linked with jemalloc (Debian's libjemalloc.so.2): `baton
/// record` starts it with the jemalloc shim and jemalloc's own sampling (`prof`,
/// `lg_prof_sample` 16 for a mean of 64 KiB), and the estimates are within 10% again.
#[test]
fn jemalloc_programs_are_sampled_by_jemalloc_itself() {
    require_root();
    let dir = scratch("heap-jemalloc");
    let exe = dir.join("twosites-jemalloc");
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/twosites.c");
    let st = Command::new("clang")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
        .status()
        .expect("clang");
    assert!(
        st.success(),
        "building twosites against libjemalloc.so.2 failed (libjemalloc2 installed?)"
    );
    two_sites_within_ten_percent(&exe, "jemalloc", "main;site_a;malloc ");
}

/// Records `twosites` built as `exe` at a mean of 64 KiB, and checks the estimates of
/// allocated and live bytes at both sites within 10%, and a stack ending in `tail`.
fn two_sites_within_ten_percent(exe: &std::path::Path, what: &str, tail: &str) {
    let cmd = [exe.to_str().expect("path")];
    const MIB: f64 = 1048576.0;
    for (value, a_truth, b_truth) in [
        ("alloc_bytes", 300.0 * MIB, 100.0 * MIB),
        ("live_bytes", 150.0 * MIB, 100.0 * MIB),
    ] {
        let (text, log) = record_malloc(&["--opt", "sample_bytes=65536", "--value", value], &cmd);
        let (a, b) = (through(&text, "site_a"), through(&text, "site_b"));
        eprintln!("{what} {value}: site_a {a:.0} (truth {a_truth}), site_b {b:.0} (truth {b_truth})\n{log}");
        for (site, got, truth) in [("site_a", a, a_truth), ("site_b", b, b_truth)] {
            assert!(
                (got - truth).abs() <= 0.1 * truth,
                "{what} {value} at {site}: {got:.0}, not {truth} ± 10%"
            );
        }
        assert!(text.contains(tail), "no {tail:?} stack:\n{text}");
    }
}

/// The same two sites in a program that carries jemalloc inside it (linked with Debian's
/// `libjemalloc.a`), where nothing can be preloaded. `baton record` turns jemalloc's own
/// sampling on (`MALLOC_CONF`) and probes the profiling functions jemalloc calls for its samples
/// alone; the stacks end in the jemalloc function the program entered (`malloc` reaches
/// `malloc_default` by a tail call). A running process is read the same way when it was started
/// with jemalloc's profiling on, and refused with what to do when it was not.
#[test]
fn statically_linked_jemalloc_is_sampled_by_jemalloc_itself() {
    require_root();
    let dir = scratch("heap-jemalloc-static");
    let exe = dir.join("twosites-jemalloc-static");
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/twosites.c");
    let st = Command::new("clang")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src)
        .args([
            "/usr/lib/x86_64-linux-gnu/libjemalloc.a",
            "-lpthread",
            "-ldl",
            "-lm",
        ])
        .status()
        .expect("clang");
    assert!(
        st.success(),
        "building twosites against libjemalloc.a failed (libjemalloc-dev installed?)"
    );
    two_sites_within_ten_percent(&exe, "static jemalloc", "main;site_a;je_malloc_default ");

    // Running, started without jemalloc's profiling: refused, naming the variable to set.
    let mut plain = Command::new(&exe).args(["5"]).spawn().expect("twosites");
    let out = run(baton()
        .args(["record", "malloc", "--duration", "1s", "--pid"])
        .arg(plain.id().to_string()));
    let _ = plain.kill();
    let _ = plain.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(
        !out.status.success(),
        "a process without profiling was recorded: {err}"
    );
    assert!(
        err.contains("MALLOC_CONF=") && err.contains("prof:true"),
        "the error does not say what to set: {err}"
    );

    // Running, started with it: its samples are read. It waits 3 s before allocating.
    let mut running = Command::new(&exe)
        .args(["3"])
        .env("MALLOC_CONF", "prof:true,lg_prof_sample:16")
        .spawn()
        .expect("twosites");
    let out = run(baton()
        .args([
            "record",
            "malloc",
            "--duration",
            "20s",
            "--format",
            "collapsed",
        ])
        .args(["--value", "alloc_bytes", "--pid"])
        .arg(running.id().to_string()));
    let text = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    let _ = running.kill();
    let _ = running.wait();
    let a = through(&text, "site_a");
    eprintln!("running static jemalloc: site_a {a:.0}\n{log}");
    assert!(
        out.status.success(),
        "recording the running process failed: {log}"
    );
    let truth = 300.0 * 1048576.0;
    assert!(
        (a - truth).abs() <= 0.1 * truth,
        "running static jemalloc alloc_bytes at site_a: {a:.0}, not {truth} ± 10%"
    );
}

/// The allocation-heavy loop of bench/malloc.sh (mixed sizes, 16 B to 2 KiB) under the default
/// mode, with glibc and with jemalloc: its samples are there and weigh up to the bytes and
/// allocations it counted itself, within 10% (jemalloc's bytes are usable sizes). (Its throughput against bare is the benchmark's
/// to measure, not a test's.)
#[test]
fn the_allocation_loop_is_sampled_and_weighted_to_its_own_counts() {
    require_root();
    let dir = scratch("heap-loop");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/allocloop.c");
    for (name, extra) in [
        ("glibc", None),
        (
            "jemalloc",
            Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        ),
    ] {
        let exe = dir.join(format!("allocloop-{name}"));
        let st = Command::new("clang")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
            .arg(&exe)
            .arg(&src)
            .args(extra)
            .status()
            .expect("clang");
        assert!(st.success(), "building allocloop ({name}) failed");
        let out = run(baton()
            .args([
                "record",
                "malloc",
                "--format",
                "collapsed",
                "--value",
                "alloc_bytes",
            ])
            .arg("--")
            .arg(&exe)
            .arg("1"));
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {log}");
        let text = String::from_utf8_lossy(&out.stdout);
        let printed = |key: &str| -> f64 {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("the loop printed no {key}: {text}"))
        };
        let (bytes, pairs) = (printed("bytes"), printed("pairs"));
        let estimated = through(&text, "main");
        eprintln!(
            "{name}: {estimated:.0} bytes estimated, {bytes} allocated in {pairs} pairs\n{log}"
        );
        // jemalloc reports usable sizes: its size classes round a request up by at most 25%
        // (a few percent on this mix), so its bytes lie between the requested total and 1.25
        // times it, within the same 10%.
        let (low, high) = match extra {
            None => (0.9 * bytes, 1.1 * bytes),
            Some(_) => (0.9 * bytes, 1.25 * 1.1 * bytes),
        };
        assert!(
            (low..=high).contains(&estimated),
            "{name}: the samples weigh {estimated:.0} bytes, the loop allocated {bytes}"
        );
        let summary = log
            .lines()
            .find(|l| l.starts_with("recorded"))
            .unwrap_or("");
        let count: f64 = summary
            .split(", ")
            .find_map(|p| p.strip_suffix(" alloc_count"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no alloc_count in the summary: {summary}"));
        assert!(
            (count - pairs).abs() <= 0.1 * pairs,
            "{name}: the samples weigh {count} allocations, the loop made {pairs}"
        );
    }
}

/// A process Baton did not start and that loads no sampler: the default mode says what is
/// missing, and `mode=uprobe` profiles it, reporting the calls it trapped and what they cost.
#[test]
fn the_uprobe_mode_profiles_a_running_process_and_reports_its_cost() {
    require_root();
    let w = workload("alloc");
    // Three seconds before it allocates, for both attempts to attach; it exits a second after.
    let mut running = Command::new(&w).args(["3", "1"]).spawn().expect("alloc");
    let pid = running.id().to_string();
    let out = run(baton().args(["record", "malloc", "--duration", "1s", "--pid", &pid]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the default mode profiled a process without a sampler"
    );
    assert!(
        err.contains("loads no allocation sampler") && err.contains("mode=uprobe"),
        "the error does not say what is missing: {err}"
    );
    let out = run(baton()
        .args([
            "record",
            "malloc",
            "--opt",
            "mode=uprobe",
            "--opt",
            "sample_bytes=0",
        ])
        .args(["--format", "collapsed", "--duration", "20s", "--pid", &pid]));
    let _ = running.wait();
    let log = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{log}\n{text}");
    assert!(out.status.success(), "{log}");
    assert_eq!(through(&text, "alloc_site_a"), 4_096_000.0, "{text}");
    // 1,000 mallocs (entry and return) and 500 frees, each a trap.
    let trapped: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("mode=uprobe: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cost line in the summary: {log}"));
    assert!(
        trapped >= 2_500,
        "{trapped} calls trapped, not at least 2,500: {log}"
    );
    assert!(log.contains("of the targets' time at 2.4 µs each"), "{log}");
}
