//! Thread context: labels threads publish through Baton's helpers (C and Python), read in BPF
//! at each sample and event, stored with them, grouped and filtered on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

/// The helper's C library, built once, for the Python helper to load.
fn helper_library() -> &'static PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let out = scratch("threadctx-lib").join("libbaton_threadctx.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helpers/c/baton_threadctx.c");
        let st = Command::new("clang")
            .args(["-O2", "-fPIC", "-shared", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("clang");
        assert!(st.success(), "building the thread-context helper failed");
        out
    })
}

/// `baton record PROFILER -o FILE.pb EXTRA -- CMD...`: the samples and the summary.
fn record(
    profiler: &str,
    extra: &[&str],
    cmd: &mut Vec<String>,
    env: &[(&str, &Path)],
) -> (Vec<RawSample>, String) {
    let pb = scratch(&format!("threadctx-{profiler}")).join("out.pb");
    let out = run(baton()
        .args(["record", profiler, "-o"])
        .arg(&pb)
        .args(extra)
        .arg("--")
        .args(cmd.drain(..))
        .envs(env.iter().copied()));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "baton record {profiler} failed:\n{log}"
    );
    (pprof_samples(&pb), log)
}

/// Weighted totals per value of `key` (samples without it under "").
fn totals_by(samples: &[RawSample], key: &str) -> HashMap<String, f64> {
    let mut out: HashMap<String, f64> = HashMap::new();
    for s in samples {
        // The last value is the one that adds up (CPU or blocked nanoseconds).
        let v = s.values.get(1).or(s.values.first()).copied().unwrap_or(0.0);
        *out.entry(label(s, key).to_string()).or_default() += v;
    }
    out
}

/// Checks that /a holds 75% ± 5 of what carries an endpoint, /b the rest, /b's samples carry
/// the trace and /a's none, and nearly everything carries an endpoint.
fn check_split(what: &str, samples: &[RawSample], log: &str) {
    let by = totals_by(samples, "endpoint");
    let (a, b) = (
        by.get("/a").copied().unwrap_or(0.0),
        by.get("/b").copied().unwrap_or(0.0),
    );
    let all: f64 = by.values().sum();
    assert!(a + b > 0.0, "{what}: no endpoint labels: {by:?}\n{log}");
    let share = 100.0 * a / (a + b);
    assert!(
        (70.0..=80.0).contains(&share),
        "{what}: /a has {share:.1}% (want 75 ± 5): {by:?}"
    );
    assert!(
        (a + b) / all > 0.9,
        "{what}: only {:.2} labelled: {by:?}",
        (a + b) / all
    );
    assert_eq!(
        by.len(),
        2 + usize::from(by.contains_key("")),
        "{what}: {by:?}"
    );
    for s in samples.iter().filter(|s| label(s, "endpoint") == "/b") {
        assert_eq!(label(s, "trace_id"), TRACE, "{what}: {:?}", s.labels);
        assert_eq!(label(s, "span_id"), SPAN, "{what}: {:?}", s.labels);
    }
    for s in samples.iter().filter(|s| label(s, "endpoint") == "/a") {
        assert_eq!(label(s, "trace_id"), "", "{what}: {:?}", s.labels);
    }
    assert!(
        log.contains("thread context: 1 processes publish it"),
        "{what}:\n{log}"
    );
}

#[test]
fn labels_from_c_split_cpu_and_offcpu_time_75_25() {
    require_root();
    let w = workload("threadctx");
    for profiler in ["cpu", "offcpu"] {
        let mode = profiler.to_string();
        let mut cmd = vec![w.display().to_string(), mode, "4".into()];
        let (samples, log) = record(profiler, &[], &mut cmd, &[]);
        check_split(&format!("C {profiler}"), &samples, &log);
    }
}

#[test]
fn labels_from_python_split_cpu_and_offcpu_time_75_25() {
    require_root();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/python/threadctx.py");
    for profiler in ["cpu", "offcpu"] {
        let mut cmd = vec![
            "python3".to_string(),
            script.display().to_string(),
            profiler.to_string(),
            "4".into(),
        ];
        let (samples, log) = record(
            profiler,
            &[],
            &mut cmd,
            &[("BATON_THREADCTX_LIB", helper_library().as_path())],
        );
        check_split(&format!("Python {profiler}"), &samples, &log);
    }
}

#[test]
fn labels_reach_the_store_and_group_and_filter_there() {
    require_root();
    let w = workload("threadctx");
    let data = scratch("threadctx-up");
    let up = Up::start(&data);
    let mut child = Workload::spawn(Command::new(&w).args(["cpu", "8"]));
    let pid = child.id();
    let out = run(baton()
        .args(["run", "cpu", "--target", &format!("pid:{pid}")])
        .args(["--duration", "4s", "--wait", "--format", "json"])
        .args(["--server", &format!("http://{}", up.addr)]));
    assert!(
        out.status.success(),
        "run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let server = format!("http://{}", up.addr);
    let by = eventually(10, "endpoint totals in the store", || {
        let out = run(baton()
            .args(["query", "--server", &server, "--since", "5m"])
            .args([
                "--filter",
                &format!("pid={pid}"),
                "--by",
                "endpoint",
                "--format",
                "json",
            ]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = v["values"].as_array()?.clone();
        (rows.len() >= 2).then_some(rows)
    });
    let total = |name: &str| {
        by.iter()
            .find(|r| r["value"] == name)
            .and_then(|r| r["total"].as_f64())
            .unwrap_or(0.0)
    };
    let share = 100.0 * total("/a") / (total("/a") + total("/b"));
    assert!((70.0..=80.0).contains(&share), "/a has {share:.1}%: {by:?}");
    // The table form says the same.
    let out = run(baton()
        .args([
            "query", "--server", &server, "--since", "5m", "--by", "endpoint",
        ])
        .args(["--filter", &format!("pid={pid}")]));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("/a") && table.contains("/b") && table.contains('%'),
        "{table}"
    );
    // The trace ID round-trips: only /b's samples carry it, and it filters.
    let traces = http_json(
        &up.addr,
        &format!("/api/v1/labels/trace_id?profiler=cpu&since=5m&filter=pid%3D{pid}"),
    );
    let values = traces["values"].as_array().cloned().unwrap_or_default();
    assert_eq!(values.len(), 1, "{traces}");
    assert_eq!(values[0]["value"], TRACE);
    let on_trace = http_json(
        &up.addr,
        &format!("/api/v1/labels/endpoint?profiler=cpu&since=5m&filter=trace_id%3D{TRACE}"),
    );
    let names: Vec<_> = on_trace["values"]
        .as_array()
        .map(|v| v.iter().map(|r| r["value"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec![serde_json::json!("/b")], "{on_trace}");
    child.wait();
    up.stop();
}

#[test]
fn garbage_in_a_thread_context_is_counted_and_never_reaches_another_process() {
    require_root();
    let w = workload("threadctx");
    let mut bad = Workload::spawn(Command::new(&w).args(["garbage", "6"]));
    let mut good = Workload::spawn(Command::new(&w).args(["cpu", "6"]));
    let pb = scratch("threadctx-garbage").join("out.pb");
    let out = run(baton()
        .args(["record", "cpu", "--duration", "4s", "-o"])
        .arg(&pb)
        .args([
            "--pid",
            &bad.id().to_string(),
            "--pid",
            &good.id().to_string(),
        ]));
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "record failed:\n{log}");
    let samples = pprof_samples(&pb);
    let of = |pid: u32| samples_of(&samples, pid);
    let (bad_samples, good_samples) = (of(bad.id()), of(good.id()));
    assert!(!bad_samples.is_empty() && !good_samples.is_empty(), "{log}");
    // The good process's labels are exactly its own.
    for s in &good_samples {
        let e = label(s, "endpoint");
        assert!(e.is_empty() || e == "/a" || e == "/b", "{:?}", s.labels);
        let t = label(s, "trace_id");
        assert!(t.is_empty() || t == TRACE, "{:?}", s.labels);
    }
    // The garbage process gets no key it did not register, and nothing unprintable.
    let known = [
        "cgroup", "comm", "exe", "host", "pid", "tid", "endpoint", "trace_id", "span_id",
    ];
    for s in &bad_samples {
        for (k, v) in &s.labels {
            assert!(known.contains(&k.as_str()), "unexpected label {k}={v:?}");
            assert!(!v.chars().any(char::is_control), "{k}={v:?}");
        }
    }
    // Its wild pointers failed to read, counted; both processes still run.
    let failed = log
        .split("reads failed")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failed > 0, "no failed reads counted:\n{log}");
    assert!(log.contains("2 processes publish it"), "{log}");
    for w in [&mut bad, &mut good] {
        let st = w.0.wait().expect("wait");
        assert!(st.success(), "a profiled process did not end well: {st}");
    }
}

#[test]
fn long_invalid_and_too_many_values_are_cut_dropped_and_counted() {
    require_root();
    let w = workload("threadctx");
    let mut cmd = vec![w.display().to_string(), "many".into(), "4".into()];
    // At 999 Hz, more endpoints are seen than the cap of 1,000 keeps.
    let (samples, log) = record("cpu", &["--frequency", "999"], &mut cmd, &[]);
    let blob: Vec<_> = samples
        .iter()
        .map(|s| label(s, "blob"))
        .filter(|b| !b.is_empty())
        .collect();
    assert!(!blob.is_empty(), "no blob label:\n{log}");
    assert!(
        blob.iter().all(|b| *b == "x".repeat(128)),
        "{:?}",
        blob.first()
    );
    assert!(
        samples.iter().all(|s| label(s, "raw").is_empty()),
        "a non-UTF-8 value was kept"
    );
    let endpoints: std::collections::HashSet<_> =
        samples.iter().map(|s| label(s, "endpoint")).collect();
    assert!(
        endpoints.len() <= 1001,
        "{} distinct endpoints",
        endpoints.len()
    );
    let count = |what: &str| -> u64 {
        log.split(what)
            .next()
            .and_then(|s| s.rsplit([',', ';', ' ']).find(|w| !w.is_empty()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(count(" labels cut") > 0, "{log}");
    assert!(count(" dropped as invalid") > 0, "{log}");
    assert!(count(" over the cap") > 0, "{log}");
}

#[test]
fn trace_ids_link_samples_to_their_span_in_explore_and_timeline() {
    require_root();
    let w = workload("threadctx");
    let dir = scratch("threadctx-ui-config");
    std::fs::write(
        dir.join("ui.toml"),
        "[ui]\ntrace_url = \"http://traces.example/trace/{trace_id}?span={span_id}\"\n",
    )
    .expect("write");
    let data = scratch("threadctx-ui");
    let up = Up::start_with(&data, &["--config", dir.to_str().expect("utf-8")]);
    let mut child = Workload::spawn(Command::new(&w).args(["cpu", "5"]));
    let pid = child.id();
    let out = run(baton()
        .args(["run", "cpu", "--target", &format!("pid:{pid}")])
        .args(["--duration", "3s", "--wait", "--format", "json"])
        .args(["--server", &format!("http://{}", up.addr)]));
    assert!(
        out.status.success(),
        "run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run json");
    let id = done["id"].as_u64().expect("run id");
    child.wait();
    let link = format!("href=\"http://traces.example/trace/{TRACE}?span={SPAN}\"");
    let explore = chromium_dom(&format!(
        "http://{}/explore?profiler=cpu&since=10m&filter=run%3D{id}",
        up.addr
    ));
    assert!(
        explore.contains(&link),
        "no span link in Explore:\n{explore}"
    );
    let timeline = chromium_dom(&format!("http://{}/timeline?pid={pid}&since=5m", up.addr));
    assert!(
        timeline.contains(&link),
        "no span link on the Timeline:\n{timeline}"
    );
    up.stop();
}

#[test]
fn labels_from_rust_split_cpu_time_75_25() {
    require_root();
    // Built with the workspace's tests (cargo test --workspace builds every example).
    let bin = Path::new(env!("CARGO_BIN_EXE_baton"))
        .parent()
        .expect("target dir")
        .join("examples/endpoints");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p baton-threadctx --examples (cargo test \
         --workspace builds it)",
        bin.display()
    );
    let mut cmd = vec![bin.display().to_string(), "4".into()];
    let (samples, log) = record("cpu", &[], &mut cmd, &[]);
    check_split("Rust cpu", &samples, &log);
}

/// /a's share of `index`'s value among samples labelled /a or /b.
fn share_of_a(samples: &[RawSample], index: usize) -> (f64, f64) {
    let (mut a, mut b) = (0.0, 0.0);
    for s in samples {
        let v = s.values.get(index).copied().unwrap_or(0.0);
        match label(s, "endpoint") {
            "/a" => a += v,
            "/b" => b += v,
            _ => {}
        }
    }
    (100.0 * a / (a + b).max(f64::MIN_POSITIVE), a + b)
}

#[test]
fn labels_split_allocations_and_calls_too() {
    require_root();
    let w = workload("threadctx").display().to_string();
    // malloc: 3 MiB under /a for each 1 MiB under /b, sampled in the process.
    let mut cmd = vec![w.clone(), "alloc".into(), "2".into()];
    let (samples, log) = record("malloc", &["--opt", "sample_bytes=65536"], &mut cmd, &[]);
    let (share, total) = share_of_a(&samples, 0);
    assert!(total > 0.0, "no labelled allocations:\n{log}");
    assert!(
        (70.0..=80.0).contains(&share),
        "malloc: /a has {share:.1}% of the bytes\n{log}"
    );
    // calls: burn_until runs once a slice, 3 of 4 slices under /a: exactly 75%.
    let mut cmd = vec![w, "cpu".into(), "2".into()];
    let (samples, log) = record("calls", &["--opt", "probe=burn_until"], &mut cmd, &[]);
    let (share, total) = share_of_a(&samples, 0);
    assert!(total >= 300.0, "{total} labelled calls:\n{log}");
    assert!(
        (74.0..=76.0).contains(&share),
        "calls: /a has {share:.1}% of the calls\n{log}"
    );
}
