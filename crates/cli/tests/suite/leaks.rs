//! Leaks: a process whose memory grows steadily starts a heap (malloc) run by itself, whose
//! live bytes name the leaking function and read as a level over time; and Go's heap profiles
//! land under the heap profiler's value names.

use std::process::Command;

use crate::harness::fleet::start_server;
use crate::harness::*;

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn a_steady_leak_starts_a_heap_run_by_itself() {
    require_root();
    let leak = workload("leak");
    // The same program under another name: it grows for 2 s only, then holds still.
    let spike = scratch("leak-spike").join("spike");
    std::fs::copy(&leak, &spike).expect("copy leak");
    let cfg = scratch("leak-trigger-config");
    let rule = |service: &str| {
        format!(
            r#"
[services.{service}]
selector = {{ comm = "{service}" }}
[[services.{service}.triggers]]
kind = "rss_growth"
bytes_per_second = 2097152
for = "8s"
profiler = "malloc"
duration = "8s"
cooldown = "10m"
max_per_hour = 1
options = {{ mode = "uprobe" }}
"#
        )
    };
    // Windows of 2 s, so that the run's live heap is a series of levels.
    let windows = "[profilers.malloc]\nwindow = \"2s\"\n".to_string();
    std::fs::write(cfg.join("t.toml"), windows + &rule("leak") + &rule("spike"))
        .expect("write config");
    let data = scratch("leak-trigger-data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let burst = Workload::spawn(Command::new(&spike).args(["2", "45"]));
    // About 10 MiB/s for 40 s against a rule of 2 MiB/s held for 8 s.
    let w = Workload::spawn(Command::new(&leak).args(["40", "45"]));
    let run = eventually(40, "the leak's malloc run to start by itself", || {
        triggered(&up.addr, "trigger:leak#0").into_iter().next()
    });
    eprintln!("run: {run}");
    assert_eq!(run["profiler"], "malloc", "{run}");
    assert_eq!(run["target"], "service:leak", "{run}");
    let id = run["id"].as_u64().expect("id");
    let run = eventually(40, "the heap run to finish", || {
        triggered(&up.addr, "trigger:leak#0").into_iter().find(|r| {
            r["id"] == id
                && ["done", "failed", "cancelled"].contains(&r["state"].as_str().unwrap_or(""))
        })
    });
    assert_eq!(run["state"], "done", "{run}");

    // Its live bytes: leak_site holds nearly all of them.
    let top = http_json(
        &up.addr,
        &format!("/api/v1/top?profiler=malloc&value=live_bytes&since=10m&filter=run%3D{id}"),
    );
    eprintln!("top: {top}");
    let share = self_percent(&top["rows"], "leak_site");
    assert!(
        share > 80.0,
        "leak_site holds {share:.1}% of live bytes: {top}"
    );

    // The live heap over time, per process: one series, the leaking pid's, growing; a level,
    // so one point over the whole run is about what leaked during it (8 s at 10 MiB/s), never
    // the sum of its windows.
    let ts = http_json(
        &up.addr,
        &format!("/api/v1/timeseries?profiler=malloc&value=live_bytes&since=10m&step=1s&group_by=pid&filter=run%3D{id}"),
    );
    eprintln!("series: {ts}");
    assert_eq!(ts["level"], true, "{ts}");
    let series = ts["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "{ts}");
    assert_eq!(series[0]["key"], w.id().to_string().as_str(), "{ts}");
    let points: Vec<f64> = series[0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .collect();
    assert!(points.len() >= 3, "{ts}");
    let (first, last) = (points[0], points[points.len() - 1]);
    assert!(
        last > first + 20.0 * MIB,
        "the live heap grew from {first} to {last}"
    );
    let whole = http_json(
        &up.addr,
        &format!("/api/v1/timeseries?profiler=malloc&value=live_bytes&since=10m&step=1h&filter=run%3D{id}"),
    );
    let level = whole["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .fold(0.0, f64::max);
    assert!(
        (5.0 * MIB..=last * 1.05).contains(&level),
        "one step over the run reads {:.1} MiB; the last window held {:.1} MiB",
        level / MIB,
        last / MIB
    );
    // In the UI, Explore split by pid draws the leaking process's live heap as a line, and
    // says it is a level.
    let dom = chromium_dom(&format!(
        "http://{}/explore?profiler=malloc&value=live_bytes&since=10m&split=pid&run={id}",
        up.addr
    ));
    assert!(
        dom.contains(&format!("class=\"split\" data-key=\"{}\"", w.id())),
        "no live-heap line for pid {} in the DOM",
        w.id()
    );
    assert!(
        dom.contains("live_bytes held at each window's end") && dom.contains("by pid over time"),
        "the chart does not say what it shows"
    );
    assert!(
        dom.contains(&format!("pid={}: ", w.id())),
        "no legend entry"
    );
    // The flame graph of a level is a mean over the windows too, not their sum.
    let total = top["total"].as_f64().expect("total");
    assert!(
        total <= last * 1.05,
        "live bytes over the run read {:.1} MiB in the top table; the last window held {:.1} MiB",
        total / MIB,
        last / MIB
    );
    // A 2 s burst of growth is not a leak: its rule never fired.
    assert!(
        triggered(&up.addr, "trigger:spike#0").is_empty(),
        "a 2 s burst started a heap run"
    );
    drop(w);
    drop(burst);
    assert!(up.stop().success());
}

/// A Go heap profile (`runtime/pprof.WriteHeapProfile`, every allocation sampled) posted to
/// the ingest without a profiler name is stored under `malloc`, its `alloc_space`,
/// `alloc_objects`, `inuse_space` and `inuse_objects` as `alloc_bytes`, `alloc_count`,
/// `live_bytes` and `live_count`, with the allocating function on top.
#[test]
fn a_go_heap_profile_lands_under_the_heap_value_names() {
    let dir = scratch("go-heap");
    let server = start_server(&dir.join("data"), "127.0.0.1:0", &["--insecure-local"]);
    let prof = dir.join("go-heap.pb.gz");
    go_run(
        &dir,
        "heap",
        r#"package main

import (
	"os"
	"runtime"
	"runtime/pprof"
)

var kept [][]byte

// 200 blocks of 64 KiB: 100 kept (in use), 100 dropped (allocated only).
//go:noinline
func leakyGo(i int) []byte {
	b := make([]byte, 64<<10)
	b[i%len(b)] = byte(i)
	return b
}

func main() {
	runtime.MemProfileRate = 1
	for i := 0; i < 200; i++ {
		b := leakyGo(i)
		if i%2 == 0 {
			kept = append(kept, b)
		}
	}
	runtime.GC()
	f, _ := os.Create(os.Args[1])
	pprof.WriteHeapProfile(f)
	f.Close()
	runtime.KeepAlive(kept)
}
"#,
        &[&prof],
    );
    let bytes = std::fs::read(&prof).expect("profile");
    let (code, out) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?service=goheap&host=go1",
        None,
        &bytes,
    );
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
    let block = 64.0 * 1024.0;
    for (value, unit, want) in [
        ("alloc_bytes", "bytes", 200.0 * block),
        ("alloc_count", "count", 200.0),
        ("live_bytes", "bytes", 100.0 * block),
        ("live_count", "count", 100.0),
    ] {
        let top = http_json(
            &server.addr,
            &format!("/api/v1/top?profiler=malloc&value={value}&since=1h&filter=service%3Dgoheap&limit=50"),
        );
        assert_eq!(top["unit"], unit, "{value}: {top}");
        let row = top["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["function"] == "main.leakyGo")
            .cloned()
            .unwrap_or_else(|| panic!("{value}: no main.leakyGo in {top}"));
        let got = row["total_value"].as_f64().expect("total");
        assert!(
            (want * 0.95..=want * 1.05).contains(&got),
            "{value} of main.leakyGo: {got}, want about {want}: {row}"
        );
    }
}

/// `heap_growth` reads the live heap itself: a malloc run started when the program starts
/// stores a window every 2 s, its `live_bytes` grow window after window, and after 4 s of that
/// the rule fires a heap run of its own on the service.
#[test]
fn sustained_live_heap_growth_fires_a_heap_growth_rule() {
    require_root();
    let leak = scratch("leak-heap").join("leakheap");
    std::fs::copy(workload("leak"), &leak).expect("copy leak");
    let cfg = scratch("heap-trigger-config");
    std::fs::write(
        cfg.join("t.toml"),
        r#"
[profilers.malloc]
window = "2s"

[services.leakheap]
selector = { comm = "leakheap" }
[[services.leakheap.triggers]]
kind = "exec"
pattern = "*/leakheap"
profiler = "malloc"
duration = "14s"
cooldown = "10m"
max_per_hour = 1
options = { mode = "uprobe" }
[[services.leakheap.triggers]]
kind = "heap_growth"
bytes_per_second = 2097152
for = "4s"
profiler = "malloc"
duration = "3s"
cooldown = "10m"
max_per_hour = 1
options = { mode = "uprobe" }
"#,
    )
    .expect("write config");
    let data = scratch("heap-trigger-data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let w = Workload::spawn(Command::new(&leak).args(["45", "45"]));
    let first = eventually(20, "the exec rule's malloc run", || {
        triggered(&up.addr, "trigger:leakheap#0").into_iter().next()
    });
    assert_eq!(
        first["target"],
        format!("pid:{}", w.id()).as_str(),
        "{first}"
    );
    let run = eventually(40, "the heap_growth rule to fire", || {
        triggered(&up.addr, "trigger:leakheap#1").into_iter().next()
    });
    eprintln!("heap_growth run: {run}");
    assert_eq!(run["profiler"], "malloc", "{run}");
    assert_eq!(run["target"], "service:leakheap", "{run}");
    // It fired only once the first run's windows had grown for 4 s (3 windows of 2 s).
    let fired = run["queued_at_ms"].as_u64().expect("queued_at_ms");
    let started = first["started_at_ms"].as_u64().unwrap_or(fired);
    assert!(
        fired >= started + 4_000,
        "fired {} ms after the first run started",
        fired as i64 - started as i64
    );
    let id = run["id"].as_u64().expect("id");
    let run = eventually(40, "the heap_growth run to finish", || {
        triggered(&up.addr, "trigger:leakheap#1")
            .into_iter()
            .find(|r| r["id"] == id && r["state"] == "done")
    });
    let top = http_json(
        &up.addr,
        &format!("/api/v1/top?profiler=malloc&value=live_bytes&since=10m&filter=run%3D{id}"),
    );
    assert!(
        self_percent(&top["rows"], "leak_site") > 80.0,
        "{run}: {top}"
    );
    drop(w);
    assert!(up.stop().success());
}
