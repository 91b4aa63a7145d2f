//! The profiler suite beyond CPU and off-CPU: each profiler against a program whose truth is
//! known, through `baton record -- CMD` and through `baton run` against a live `baton up`.

use std::process::Command;

use crate::harness::*;

/// Runs `baton record PROFILER ARGS… --format collapsed -- CMD…` and returns (collapsed text,
/// stderr).
fn record_collapsed(profiler: &str, args: &[&str], cmd: &[&str]) -> (String, String) {
    let out = run(baton()
        .args(["record", profiler, "--format", "collapsed"])
        .args(args)
        .arg("--")
        .args(cmd));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "baton record {profiler} failed:\n{log}"
    );
    (String::from_utf8_lossy(&out.stdout).to_string(), log)
}

/// Sum of the collapsed values of stacks that contain `frame`.
fn sum_with(collapsed: &str, frame: &str) -> f64 {
    collapsed
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(stack, _)| stack.split(';').any(|f| f == frame))
        .map(|(_, v)| v.parse::<f64>().expect("a value"))
        .sum()
}

/// The `self_value` of `function` in a JSON top table of the store.
fn self_value(addr: &str, query: &str, function: &str) -> f64 {
    let top = http_json(addr, &format!("/api/v1/top?since=10m&limit=50&{query}"));
    top["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["function"] == function)
        // A function not in the table has 0; a row without the field is a broken table.
        .map_or(0.0, |r| {
            r["self_value"].as_f64().expect("a row's self_value")
        })
}

/// `baton run PROFILER --target pid:PID --wait` with `opts`; returns the run's JSON.
fn run_and_wait(up: &Up, profiler: &str, pid: u32, duration: &str, opts: &[&str]) -> String {
    let mut c = baton();
    c.args(["run", profiler, "--target", &format!("pid:{pid}")])
        .args(["--duration", duration, "--wait", "--format", "json"])
        .args(["--server", &format!("http://{}", up.addr)]);
    for o in opts {
        c.args(["--opt", o]);
    }
    let out = run(&mut c);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "baton run {profiler} failed: {stdout}"
    );
    stdout
}

#[test]
fn malloc_exact_mode_counts_every_allocation_and_the_live_half() {
    require_root();
    let w = workload("alloc");
    let cmd = [w.to_str().expect("path"), "0.3"];
    let exact = ["--opt", "sample_bytes=0"];
    let (bytes, log) = record_collapsed("malloc", &exact, &cmd);
    assert!(log.contains("every allocation"), "summary: {log}");
    let (count, _) = record_collapsed(
        "malloc",
        &[&exact[..], &["--value", "alloc_count"]].concat(),
        &cmd,
    );
    let (live, _) = record_collapsed(
        "malloc",
        &[&exact[..], &["--value", "live_bytes"]].concat(),
        &cmd,
    );
    eprintln!("alloc_bytes:\n{bytes}\nalloc_count:\n{count}\nlive_bytes:\n{live}");
    assert_eq!(sum_with(&bytes, "alloc_site_a"), 4_096_000.0);
    assert_eq!(sum_with(&count, "alloc_site_a"), 1_000.0);
    assert_eq!(sum_with(&live, "alloc_site_a"), 2_048_000.0);
    // The stack goes on to the caller.
    assert!(
        live.lines().any(|l| l.contains("main;alloc_site_a")),
        "no main;alloc_site_a stack:\n{live}"
    );
}

/// Both sampled modes estimate the truth within 10%: the sampler preloaded into the command
/// (Poisson sampling, 1 in 4 KiB on average here: about 630 of the 1,000 blocks of 4 KiB are
/// sampled, weighing 1 / (1 - e^-1) each), and the uprobe mode (1 in 64 KiB, each sample
/// carrying its thread's bytes since the previous one).
#[test]
fn malloc_sampled_modes_are_within_ten_percent_with_weights() {
    require_root();
    let w = workload("alloc");
    let cmd = [w.to_str().expect("path"), "0.3"];
    for (opts, summary) in [
        (
            &["--opt", "sample_bytes=4096"][..],
            "sampled in the process, 1 sample per 4 KiB",
        ),
        (
            &["--opt", "mode=uprobe", "--opt", "sample_bytes=65536"][..],
            "libc malloc uprobes, 1 sample per 64 KiB",
        ),
    ] {
        for (value, truth) in [
            ("alloc_bytes", 4_096_000.0),
            ("alloc_count", 1_000.0),
            ("live_bytes", 2_048_000.0),
        ] {
            let (text, log) =
                record_collapsed("malloc", &[opts, &["--value", value]].concat(), &cmd);
            let got = sum_with(&text, "alloc_site_a");
            eprintln!("{opts:?} {value}: {got} (truth {truth})");
            assert!(log.contains(summary), "summary: {log}");
            assert!(
                (got - truth).abs() <= 0.1 * truth,
                "{opts:?}: {value} at alloc_site_a is {got}, not {truth} ± 10%"
            );
        }
    }
}

/// `alloc` built without frame pointers: with `--unwind auto` (the default) each sampled
/// allocation's stack is unwound from DWARF CFI and reaches `main`; `--unwind fp` stops at
/// `alloc_site_a`, as the frame-pointer walk has nothing to follow.
#[test]
fn malloc_unwinds_allocations_in_code_without_frame_pointers() {
    require_root();
    let w = workload_without_frame_pointers("alloc");
    let cmd = [w.to_str().expect("path"), "0.3"];
    // About 630 of the 1,000 blocks are sampled at a mean of 4 KiB.
    let (text, log) = record_collapsed("malloc", &["--opt", "sample_bytes=4096"], &cmd);
    eprintln!("{text}\n{log}");
    let site = sum_with(&text, "alloc_site_a");
    let via_main: f64 = text
        .lines()
        .filter(|l| l.contains("main;alloc_site_a;") || l.contains("main;alloc_site_a "))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse::<f64>().expect("a value"))
        .sum();
    assert!(
        (site - 4_096_000.0).abs() <= 409_600.0,
        "{site} bytes at alloc_site_a, not 4,096,000 ± 10%"
    );
    assert_eq!(via_main, site, "not every allocation reaches main:\n{text}");
    assert!(
        log.contains("unwound from DWARF CFI"),
        "no DWARF summary: {log}"
    );
    let (fp, _) = record_collapsed(
        "malloc",
        &["--unwind", "fp", "--opt", "sample_bytes=4096"],
        &cmd,
    );
    assert!(
        !fp.contains("main;alloc_site_a"),
        "frame pointers alone reached main, so this test shows nothing:\n{fp}"
    );
}

#[test]
fn malloc_pprof_carries_the_four_values() {
    require_root();
    let w = workload("alloc");
    let dir = scratch("malloc-pprof");
    let pb = dir.join("malloc.pb.gz");
    let out = run(baton()
        .args(["record", "malloc", "--opt", "sample_bytes=0", "--output"])
        .arg(&pb)
        .args(["--", w.to_str().expect("path"), "0.3"]));
    assert!(out.status.success());
    for (index, truth) in [
        ("alloc_bytes", 4_096_000u64),
        ("alloc_count", 1_000),
        ("live_bytes", 2_048_000),
        ("live_count", 500),
    ] {
        let p = Command::new("go")
            .args(["tool", "pprof", "-top", "-sample_index", index])
            .arg(&pb)
            .output()
            .expect("go tool pprof (scripts/install-deps.sh installs Go)");
        let text = String::from_utf8_lossy(&p.stdout);
        eprintln!("{index}:\n{text}{}", String::from_utf8_lossy(&p.stderr));
        assert!(p.status.success(), "pprof failed on {index}");
        let row = text
            .lines()
            .find(|l| l.trim_end().ends_with("alloc_site_a"))
            .unwrap_or_else(|| panic!("no alloc_site_a row for {index}:\n{text}"));
        // The cumulative column: the stack goes on past alloc_site_a into the sampler's
        // `malloc`, where the flat value is.
        let flat = row.split_whitespace().nth(3).unwrap_or("");
        let digits: String = flat
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let unit_scale = if flat.ends_with("kB") {
            1024.0
        } else if flat.ends_with("MB") {
            1048576.0
        } else {
            1.0
        };
        let v = digits.parse::<f64>().unwrap_or(0.0) * unit_scale;
        assert!(
            (v - truth as f64).abs() <= truth as f64 * 0.01,
            "{index}: pprof says {flat} at alloc_site_a, not {truth}"
        );
    }
}

#[test]
fn malloc_uprobe_run_through_up_sees_the_live_half() {
    require_root();
    let data = scratch("malloc-up");
    let up = Up::start(&data);
    // One second to attach before it allocates, then it holds the live half for three.
    let mut w = Command::new(workload("alloc"))
        .args(["1", "3"])
        .spawn()
        .expect("alloc");
    // A process Baton did not start, and that loads no sampler: the uprobe mode.
    let json = run_and_wait(
        &up,
        "malloc",
        w.id(),
        "3s",
        &["sample_bytes=0", "mode=uprobe"],
    );
    let _ = w.wait();
    assert!(json.contains("\"done\""), "run: {json}");
    let live = self_value(
        &up.addr,
        "profiler=malloc&value=live_bytes&filter=comm%3Dalloc",
        "alloc_site_a",
    );
    let count = self_value(
        &up.addr,
        "profiler=malloc&value=alloc_count&filter=comm%3Dalloc",
        "alloc_site_a",
    );
    let bytes = self_value(
        &up.addr,
        "profiler=malloc&filter=comm%3Dalloc",
        "alloc_site_a",
    );
    eprintln!("through up: alloc_bytes {bytes}, alloc_count {count}, live_bytes {live}");
    assert_eq!(bytes, 4_096_000.0);
    assert_eq!(count, 1_000.0);
    // Live bytes are a level at each window's end: the windows while it held them each say
    // 2,048,000, and the store sums them, so take one window's worth by the count of windows.
    assert!(
        live >= 2_048_000.0 && (live / 2_048_000.0).fract() == 0.0,
        "live_bytes {live} is not a whole number of windows of 2,048,000"
    );
    // The UI shows the value asked for: its menu offers malloc's three, and the flame graph
    // of live bytes has the allocation site.
    let dom = chromium_dom(&format!(
        "http://{}/?profiler=malloc&value=live_bytes&since=15m",
        up.addr
    ));
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never loaded its data"
    );
    for v in ["alloc_bytes", "alloc_count", "live_bytes"] {
        assert!(
            dom.contains(&format!("<option value=\"{v}\"")),
            "no {v} in the value menu"
        );
    }
    assert!(
        dom.contains(">alloc_site_a<"),
        "the flame graph lacks alloc_site_a"
    );
    up.stop();
}

#[test]
fn calls_counts_a_function_called_12345_times_exactly() {
    require_root();
    let w = workload("calls");
    let (text, log) = record_collapsed(
        "calls",
        &["--opt", "probe=counted"],
        &[w.to_str().expect("path"), "0.2"],
    );
    assert!(log.contains("12345 calls"), "summary: {log}");
    assert_eq!(sum_with(&text, "counted"), 12_345.0, "{text}");
    // Stacks reach the caller.
    assert!(
        text.lines().any(|l| l.contains("main;counted ")),
        "no main;counted stack:\n{text}"
    );
}

#[test]
fn calls_latency_puts_3_ms_calls_in_their_bucket() {
    require_root();
    let w = workload("calls");
    let out = run(baton()
        .args([
            "record",
            "calls",
            "--opt",
            "probe=slow_call",
            "--opt",
            "latency=true",
        ])
        .args(["--format", "json", "--", w.to_str().expect("path"), "0.2"]));
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let h = &doc["histograms"][0];
    assert_eq!(h["name"], "call_latency", "{doc}");
    assert_eq!(h["key"], "slow_call");
    let buckets = h["buckets"].as_array().expect("buckets");
    let total: f64 = buckets.iter().filter_map(|b| b["count"].as_f64()).sum();
    assert_eq!(total, 20.0, "{h}");
    // 3 ms (plus wake-up latency) lies in [2^21, 2^22) ns.
    let in_bucket: f64 = buckets
        .iter()
        .filter(|b| b["le"] == 4_194_303u64)
        .filter_map(|b| b["count"].as_f64())
        .sum();
    assert!(
        in_bucket >= 19.0,
        "3 ms calls outside [2.1 ms, 4.2 ms): {h}"
    );
}

#[test]
fn calls_run_through_up_counts_exactly_and_stores_the_histogram() {
    require_root();
    let data = scratch("calls-up");
    let up = Up::start(&data);
    let mut w = Command::new(workload("calls"))
        .arg("1.5")
        .spawn()
        .expect("calls workload");
    let json = run_and_wait(
        &up,
        "calls",
        w.id(),
        "4s",
        &["probe=*", "latency=true", "stacks=false"],
    );
    let _ = w.wait();
    assert!(json.contains("\"done\""), "run: {json}");
    let counted = self_value(
        &up.addr,
        "profiler=calls&filter=function%3Dcounted",
        "counted",
    );
    assert_eq!(counted, 12_345.0);
    let h = http_json(
        &up.addr,
        "/api/v1/histograms?profiler=calls&since=10m&filter=function%3Dslow_call",
    );
    let hs = h["histograms"].as_array().expect("histograms");
    assert_eq!(hs.len(), 1, "{h}");
    assert_eq!(hs[0]["count"], 20.0, "{h}");
    let p50 = hs[0]["p50"].as_u64().unwrap_or(0);
    assert!(
        (2_097_152..=4_194_303).contains(&p50),
        "median of 3 ms calls is {p50} ns"
    );
    // The CLI reads the same.
    let out = run(baton().args([
        "query",
        "--profiler",
        "calls",
        "--format",
        "hist",
        "--since",
        "10m",
        "--server",
        &format!("http://{}", up.addr),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("call_latency of slow_call: 20 values"),
        "{text}"
    );
    // The UI lists the profiler, its value, and draws the histogram.
    let dom = chromium_dom(&format!("http://{}/?profiler=calls&since=15m", up.addr));
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never loaded its data"
    );
    assert!(
        dom.contains(">counted<"),
        "the flame graph lacks counted:\n{dom}"
    );
    assert!(
        dom.contains("<option value=\"calls\""),
        "no calls value in the menu"
    );
    assert!(
        dom.contains("call_latency of slow_call: 20 values"),
        "no histogram in the DOM"
    );
    up.stop();
}

/// `baton record PROFILER --format json -- CMD…`: the document, with its histograms.
fn record_json(profiler: &str, args: &[&str], cmd: &[&str]) -> serde_json::Value {
    let out = run(baton()
        .args(["record", profiler, "--format", "json"])
        .args(args)
        .arg("--")
        .args(cmd));
    assert!(out.status.success(), "baton record {profiler} failed");
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Total count of the histogram `key` in a record's JSON document.
fn hist_count(doc: &serde_json::Value, key: &str) -> f64 {
    doc["histograms"]
        .as_array()
        .expect("histograms")
        .iter()
        .filter(|h| h["key"] == key)
        .flat_map(|h| h["buckets"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["count"].as_f64())
        .sum()
}

#[test]
fn syscalls_counts_5000_writes_exactly_and_by_stack_within_ten_percent() {
    require_root();
    let w = workload("writes");
    let cmd = [w.to_str().expect("path"), "0.2", "5000"];
    // The histograms time every syscall: exact.
    let doc = record_json("syscalls", &[], &cmd);
    assert_eq!(hist_count(&doc, "write"), 5_000.0, "{}", doc["histograms"]);
    // Stacks are sampled beyond 1,000 syscalls/s, 1 in N at random with weight N: the 5,000
    // writes come in a burst, so N is about 10 and the weighted count has a standard deviation
    // of about 4%; ±15% is 3.5 of them.
    let (text, _) = record_collapsed("syscalls", &["--value", "syscalls"], &cmd);
    let by_stack = sum_with(&text, "main");
    eprintln!("{text}");
    // main's writes, plus the few syscalls it makes itself (open, exit).
    assert!(
        (by_stack - 5_000.0).abs() <= 750.0,
        "{by_stack} syscalls under main, not 5,000 ± 15%"
    );
    // With a budget above the rate, every syscall has its stack: exact but for main's own few.
    let (text, _) = record_collapsed(
        "syscalls",
        &[
            "--value",
            "syscalls",
            "--opt",
            "max_stacks_per_sec=10000000",
        ],
        &cmd,
    );
    let exact = sum_with(&text, "main");
    assert!(
        (5_000.0..=5_020.0).contains(&exact),
        "{exact} syscalls under main with every stack taken:\n{text}"
    );
    // Copies unwound through libc (no frame pointers) reach write_many; in a burst this fast
    // the copy ring overflows and the rest fall back to frame pointers, which skip it.
    assert!(
        sum_with(&text, "write_many") > 0.0,
        "no stack reaches write_many:\n{text}"
    );
}

#[test]
fn io_sees_8_mib_written_by_fsync() {
    require_root();
    let w = workload("fsync");
    // A file on the root file system, which sits on a block device (not tmpfs).
    let file = format!("/var/tmp/baton-io-test-{}", std::process::id());
    let cmd = [w.to_str().expect("path"), file.as_str(), "0.2"];
    let (text, log) = record_collapsed("io", &["--value", "io_bytes"], &cmd);
    assert!(log.contains("block_io_start"), "summary: {log}");
    let synced = sum_with(&text, "sync_file");
    eprintln!("{text}");
    // The 8 MiB of data, plus the inode and bitmap blocks the fsync writes (a few KiB).
    assert!(
        (8_388_608.0..=8_388_608.0 * 1.1).contains(&synced),
        "{synced} bytes of block I/O under sync_file, not 8 MiB (+ up to 10% of metadata)"
    );
    let doc = record_json("io", &[], &cmd);
    assert!(hist_count(&doc, "write") >= 1.0, "{}", doc["histograms"]);
}

#[test]
fn locks_measures_two_threads_contending_for_900_ms() {
    require_root();
    let w = workload("contend");
    let (text, _) = record_collapsed("locks", &[], &[w.to_str().expect("path"), "0.2"]);
    eprintln!("{text}");
    // Ten turns of 100 ms; every turn but the first waits for the other's (0.9 s), less the
    // 1 ms each holder naps after unlocking.
    // Through libc's pthread_mutex_lock (no frame pointers, unwound from its CFI).
    let waited = sum_with(&text, "hold_lock") / 1e9;
    assert!(
        (0.81..=0.99).contains(&waited),
        "{waited:.3} s of futex waits under hold_lock, not 0.9 s ± 10%"
    );
}

#[test]
fn syscalls_locks_and_io_run_through_up() {
    require_root();
    let data = scratch("events-up");
    let up = Up::start(&data);
    let writes = workload("writes");
    let mut w = Command::new(&writes)
        .args(["1.5", "5000"])
        .spawn()
        .expect("writes");
    let json = run_and_wait(&up, "syscalls", w.id(), "3s", &[]);
    let _ = w.wait();
    assert!(json.contains("\"done\""), "run: {json}");
    let h = http_json(
        &up.addr,
        "/api/v1/histograms?profiler=syscalls&since=10m&filter=syscall%3Dwrite&filter=comm%3Dwrites",
    );
    assert_eq!(h["histograms"][0]["count"], 5_000.0, "{h}");

    let mut c = Command::new(workload("contend"))
        .arg("1.5")
        .spawn()
        .expect("contend");
    let json = run_and_wait(&up, "locks", c.id(), "4s", &[]);
    let _ = c.wait();
    assert!(json.contains("\"done\""), "run: {json}");
    let fg = http_json(
        &up.addr,
        "/api/v1/flamegraph?profiler=locks&since=10m&filter=comm%3Dcontend",
    );
    let total = fg["total"].as_f64().unwrap_or(0.0) / 1e9;
    // The 0.9 s of contention plus main's wait in pthread_join (about 1 s).
    assert!((1.6..=2.2).contains(&total), "{total:.3} s of futex waits");

    let file = format!("/var/tmp/baton-io-up-{}", std::process::id());
    let mut f = Command::new(workload("fsync"))
        .args([file.as_str(), "1.5"])
        .spawn()
        .expect("fsync");
    let json = run_and_wait(&up, "io", f.id(), "4s", &[]);
    let _ = f.wait();
    assert!(json.contains("\"done\""), "run: {json}");
    let fg = http_json(
        &up.addr,
        "/api/v1/flamegraph?profiler=io&value=io_bytes&since=10m&filter=comm%3Dfsync&filter=op%3Dwrite",
    );
    let bytes = fg["total"].as_f64().unwrap_or(0.0);
    assert!(
        (8_388_608.0..=8_388_608.0 * 1.1).contains(&bytes),
        "{bytes} bytes written through up"
    );
    up.stop();
}

/// Weighted count of the histogram buckets ending at `le` in a JSON histogram.
fn bucket(h: &serde_json::Value, le: u64) -> f64 {
    h["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter(|b| b["le"] == le)
        .filter_map(|b| b["count"].as_f64())
        .sum()
}

/// server.c's 30 requests of 3 ms of CPU belong in [2^21, 2^22) ns and its 10 of 50 ms in
/// [2^25, 2^26). A request preempted for over a millisecond on this 2-CPU VM (the profiler's own
/// threads run too) lands one bucket up: at most 2 of the 30 may.
fn fast_and_slow_buckets(h: &serde_json::Value) {
    let fast = bucket(h, 4_194_303);
    assert!(
        fast >= 28.0 && fast + bucket(h, 8_388_607) == 30.0,
        "3 ms requests: {h}"
    );
    assert_eq!(bucket(h, 67_108_863), 10.0, "50 ms requests: {h}");
}

#[test]
fn latency_buckets_requests_and_keeps_cpu_stacks_of_slow_ones() {
    require_root();
    let w = workload("server");
    let cmd = [w.to_str().expect("path"), "0.2"];
    let opts = [
        "--opt",
        "begin=request_begin",
        "--opt",
        "end=request_end",
        "--opt",
        "threshold=20ms",
    ];
    let doc = record_json("latency", &opts, &cmd);
    let h = &doc["histograms"][0];
    assert_eq!(h["name"], "request_latency", "{doc}");
    // 30 requests of 3 ms in [2^21, 2^22) ns, 10 of 50 ms in [2^25, 2^26).
    fast_and_slow_buckets(h);
    let (text, _) = record_collapsed("latency", &opts, &cmd);
    eprintln!("{text}");
    let slow = sum_with(&text, "slow_work");
    let all: f64 = text
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    // 10 × 50 ms at 99 Hz: about 50 samples, nearly all in slow_work.
    assert!((30.0..=70.0).contains(&slow), "{slow} samples in slow_work");
    assert!(slow >= 0.9 * all, "{slow} of {all} samples in slow_work");
    // Fast requests' samples (30 × 3 ms of CPU) are dropped.
    assert_eq!(
        sum_with(&text, "fast_work"),
        0.0,
        "fast requests kept:\n{text}"
    );

    // Built without frame pointers, the slow requests' samples are copied and unwound from
    // DWARF CFI: the stacks still go from slow_work up through handle_request to main.
    let nofp = workload_without_frame_pointers("server");
    let (text, log) = record_collapsed("latency", &opts, &[nofp.to_str().expect("path"), "0.2"]);
    eprintln!("{text}");
    assert!(log.contains("unwound from DWARF CFI"), "summary: {log}");
    let full: f64 = text
        .lines()
        .filter(|l| l.contains("main;handle_request;slow_work"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        full >= 0.9 * sum_with(&text, "slow_work") && full > 0.0,
        "slow requests' stacks without frame pointers do not reach main:\n{text}"
    );
}

#[test]
fn latency_through_up_with_usdt_probes_matched_by_argument() {
    require_root();
    let data = scratch("latency-up");
    let up = Up::start(&data);
    let mut w = Command::new(workload("server"))
        .arg("1.5")
        .spawn()
        .expect("server");
    let json = run_and_wait(
        &up,
        "latency",
        w.id(),
        "4s",
        &[
            "begin=usdt:server:request__start",
            "end=usdt:server:request__done",
            "match=arg1",
            "threshold=20ms",
        ],
    );
    let _ = w.wait();
    assert!(json.contains("\"done\""), "run: {json}");
    let h = http_json(
        &up.addr,
        "/api/v1/histograms?profiler=latency&since=10m&filter=comm%3Dserver",
    );
    fast_and_slow_buckets(&h["histograms"][0]);
    let top = http_json(
        &up.addr,
        "/api/v1/top?profiler=latency&since=10m&limit=20&filter=comm%3Dserver",
    );
    let rows = top["rows"].as_array().expect("rows");
    let slow = rows.iter().find(|r| r["function"] == "slow_work");
    assert!(
        slow.map_or(0.0, |r| r["total_percent"].as_f64().expect("total_percent")) >= 90.0,
        "slow requests' stacks are not in slow_work: {top}"
    );
    assert!(
        !rows.iter().any(|r| r["function"] == "fast_work"),
        "fast requests kept: {top}"
    );
    up.stop();
}
