//! `baton up` end to end: continuous profiling, HTTP API, restart persistence, clean detach, UI.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn wait_for_split(addr: &str) -> serde_json::Value {
    eventually(40, "the workload's stacks in /api/v1/top", || {
        let v = http_json(addr, "/api/v1/top?since=10m&filter=comm%3Dsplit");
        (self_percent(&v["rows"], "leaf_hot") > 0.0).then_some(v)
    })
}

#[test]
fn up_serves_queries_survives_restart_and_detaches() {
    require_root();
    let split = workload("split");
    let data = scratch("up-data");
    let up = Up::start(&data);
    let addr = up.addr.clone();
    let mut w = Command::new(&split).arg("4").spawn().expect("workload");
    let top = wait_for_split(&addr);
    let _ = w.wait();
    eprintln!("top: {top}");

    let fg = http_json(&addr, "/api/v1/flamegraph?since=10m&filter=comm%3Dsplit");
    assert!(fg["total"].as_f64().unwrap_or(0.0) > 0.0);
    let ts = http_json(&addr, "/api/v1/timeseries?since=10m&filter=comm%3Dsplit");
    assert!(!ts["points"].as_array().expect("points").is_empty());
    let (st, folded) = http_get(
        &addr,
        "/api/v1/export?since=10m&format=collapsed&filter=comm%3Dsplit",
    );
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&folded).contains("mid;leaf_hot"));
    let (st, pprof) = http_get(&addr, "/api/v1/export?since=10m&format=pprof");
    assert_eq!(st, 200);
    assert_eq!(&pprof[..2], &[0x1f, 0x8b], "pprof export is gzip");
    let (_, metrics) = http_get(&addr, "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    for name in [
        "baton_samples_total",
        "baton_lost_samples_total",
        "baton_windows_total",
        "baton_agent_cpu_seconds_total",
        "baton_bpf_run_time_seconds_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    // Labels: the executable path and the cgroup of the workload are recorded.
    let exes = http_json(&addr, "/api/v1/labels/exe?since=10m&filter=comm%3Dsplit");
    let split_path = split.display().to_string();
    assert!(
        exes["values"]
            .as_array()
            .expect("values")
            .iter()
            .any(|v| v["value"] == split_path.as_str()),
        "exe label lacks {split_path}: {exes}"
    );
    let cgroups = http_json(&addr, "/api/v1/labels/cgroup?since=10m&filter=comm%3Dsplit");
    assert!(
        cgroups["values"]
            .as_array()
            .expect("values")
            .iter()
            .any(|v| v["value"].as_str().is_some_and(|c| c.starts_with('/'))),
        "no cgroup label: {cgroups}"
    );
    let (st, _) = http_get(&addr, "/api/v1/top?filter=Colour%3Dred");
    assert_eq!(st, 400, "a bad filter is a client error");
    // A label no built-in profiler has is a stored label (an ad-hoc script's key): no match.
    let v = http_json(&addr, "/api/v1/top?since=10m&filter=colour%3Dred");
    assert_eq!(v["total"], 0.0, "{v}");

    // baton query, the CLI client, sees the same data.
    let out = run(baton().args([
        "query",
        "--server",
        &format!("http://{addr}"),
        "--since",
        "10m",
        "--filter",
        "comm=split",
    ]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("leaf_hot"));

    // Clean stop: BPF detached (its programs unloaded), exit 0.
    let ids = bpf_prog_ids_of(up.child.id());
    assert!(!ids.is_empty(), "baton up holds no BPF program?");
    let st = up.stop();
    assert!(st.success(), "baton up exited with {st:?}");
    for id in &ids {
        assert!(
            !bpf_prog_loaded(*id),
            "BPF program {id} is still loaded after stop"
        );
    }

    // Restart on the same data: the earlier data is still there.
    let up = Up::start(&data);
    let v = http_json(&up.addr, "/api/v1/top?since=10m&filter=comm%3Dsplit");
    assert!(
        self_percent(&v["rows"], "leaf_hot") > 0.0,
        "data lost across restart: {v}"
    );

    // A second up on the same port is refused with a clear error.
    let other = scratch("up-data-2");
    let out = run(baton()
        .args(["up", "--listen", &up.addr, "--data"])
        .arg(&other));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));

    // A killed agent leaves no BPF program behind.
    let ids = bpf_prog_ids_of(up.child.id());
    let mut up = up;
    up.child.kill().expect("kill -9");
    let _ = up.child.wait();
    std::thread::sleep(Duration::from_millis(500));
    for id in &ids {
        assert!(
            !bpf_prog_loaded(*id),
            "BPF program {id} survived SIGKILL of its agent"
        );
    }
}

#[test]
fn ui_shows_the_workload_in_headless_chromium() {
    require_root();
    let chromium = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(chromium).exists(),
        "Debian's chromium is needed for the UI test (scripts/install-deps.sh)"
    );
    let split = workload("split");
    let data = scratch("ui-data");
    let up = Up::start(&data);
    let mut w = Command::new(&split).arg("3").spawn().expect("workload");
    wait_for_split(&up.addr);
    let _ = w.wait();
    let url = format!("http://{}/", up.addr);
    let profile_dir = scratch("chromium-profile");
    let base = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,900",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile_dir.display()));
    };
    let mut c = Command::new(chromium);
    base(&mut c);
    let dom = c
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never finished loading its data"
    );
    for f in ["leaf_hot", "leaf_cold", "mid", "main"] {
        assert!(dom.contains(&format!(">{f}<")), "the DOM does not show {f}");
    }
    let shot = artifacts_dir().join("ui.png");
    let mut c = Command::new(chromium);
    base(&mut c);
    let st = c
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("screenshot");
    assert!(
        st.status.success() && shot.exists(),
        "no screenshot written"
    );
    eprintln!("screenshot kept at {}", shot.display());
    up.stop();
}

/// A fork storm (a process about every millisecond, each exec'ing `/bin/true`, for 8 s) beside
/// the split workload under `baton up` at 99 Hz, whole host: `baton up` keeps answering, writes
/// every window it closes (no write errors, and its written rows are the store's), still
/// profiles the workload, and its memory stays bounded.
#[test]
fn a_fork_storm_is_survived() {
    use crate::harness::fleet::metric;
    require_root();
    let data = scratch("fork-storm");
    let up = Up::start_with(&data, &["--frequency", "99"]);
    let mut w = Command::new(workload("split"))
        .arg("14")
        .spawn()
        .expect("split");
    wait_for_split(&up.addr);
    let windows = metric(&up.addr, "baton_windows_total");
    let out = Command::new(workload("forkstorm"))
        .arg("8")
        .output()
        .expect("forkstorm");
    let started: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("started=")
        .and_then(|n| n.parse().ok())
        .expect("forkstorm's count");
    let _ = w.wait();
    let after = metric(&up.addr, "baton_windows_total");
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", up.child.id()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    eprintln!(
        "{started} processes started; windows {windows} -> {after}; baton up RSS {} MB",
        rss_kb / 1024
    );
    assert!(
        started >= 1000,
        "the storm started only {started} processes"
    );
    assert!(after >= windows + 6.0, "windows stopped during the storm");
    assert_eq!(metric(&up.addr, "baton_batch_write_errors_total"), 0.0);
    // Windows go on being written (the host is profiled whole): the two counts agree between
    // two writes.
    eventually(20, "rows written = rows in the store", || {
        let stored = http_json(&up.addr, "/api/v1/status")["sample_rows"]
            .as_u64()
            .expect("sample_rows") as f64;
        (metric(&up.addr, "baton_sample_rows_written_total") == stored).then_some(())
    });
    let top = http_json(&up.addr, "/api/v1/top?since=1m&filter=comm%3Dsplit");
    assert!(
        top["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r["function"] == "leaf_hot"),
        "split was not profiled through the storm: {top}"
    );
    assert!(rss_kb < 600 * 1024, "baton up grew to {} MB", rss_kb / 1024);
    assert!(up.stop().success());
}
