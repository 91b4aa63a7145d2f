//! Ad-hoc profilers end to end: the three shipped bpftrace examples against workloads of known
//! shape, through `baton up` + `baton run` + `baton query` and through `baton record adhoc`; a
//! broken script, the output ceiling, the PMU claim, and the admin role.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

const OPERATOR: &str = "op-0123456789abcdef";
const ADMIN: &str = "adm-0123456789abcdef";

fn require_bpftrace() {
    let ok = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "bpftrace is not installed: the ad-hoc tests need Debian's bpftrace (scripts/install-deps.sh)"
    );
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config/adhoc")
}

/// A config tree holding the shipped examples plus `extra` scripts `(file name, text)`.
fn tree(name: &str, extra: &[(&str, &str)]) -> PathBuf {
    let dir = scratch(name).join("config");
    std::fs::create_dir_all(dir.join("adhoc")).expect("config dir");
    for e in std::fs::read_dir(examples_dir())
        .expect("examples")
        .flatten()
    {
        std::fs::copy(e.path(), dir.join("adhoc").join(e.file_name())).expect("copy");
    }
    for (f, text) in extra {
        std::fs::write(dir.join("adhoc").join(f), text).expect("script");
    }
    dir
}

fn submit(up: &Up, token: Option<&str>, body: &str) -> u64 {
    let (code, v) = json_req(&up.addr, "POST", "/api/v1/runs", token, body);
    assert_eq!(code, 201, "{v}");
    v["id"].as_u64().expect("id")
}

fn run_state(up: &Up, token: Option<&str>, id: u64) -> serde_json::Value {
    json_req(&up.addr, "GET", &format!("/api/v1/runs/{id}"), token, "").1
}

fn wait_done(up: &Up, token: Option<&str>, id: u64, secs: u64) -> serde_json::Value {
    eventually(secs, &format!("run {id} to end"), || {
        let r = run_state(up, token, id);
        matches!(r["state"].as_str(), Some("done" | "failed" | "cancelled")).then_some(r)
    })
}

fn top(up: &Up, query: &str) -> serde_json::Value {
    http_json(
        &up.addr,
        &format!("/api/v1/top?since=10m&limit=100&{query}"),
    )["rows"]
        .clone()
}

fn total_value(rows: &serde_json::Value, function: &str) -> f64 {
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| r["function"] == function)
        // A function not in the table has 0; a row without the field is a broken table.
        .map_or(0.0, |r| {
            r["total_value"].as_f64().expect("a row's total_value")
        })
}

/// bpftrace processes running one of Baton's wrapped scripts.
/// Whether process `pid` holds a loaded BPF program (bpftrace attaches it right after).
fn has_bpf_prog(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-prog"))
            })
        })
        .unwrap_or(false)
}

fn baton_bpftraces() -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("bpftrace") && cmd.contains("baton-adhoc") {
            out.push(pid);
        }
    }
    out
}

/// The three examples through `baton up`: each run's data is queryable and shows what its
/// workload did.
#[test]
fn the_three_examples_run_through_up_and_show_their_workloads() {
    require_root();
    require_bpftrace();
    let cfg = tree("adhoc-examples", &[]);
    let data = cfg.with_file_name("data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);

    // CPU stacks of one command: split burns 75% in leaf_hot and 25% in leaf_cold.
    let split = Workload::spawn(Command::new(workload("split")).arg("12"));
    let t0 = Instant::now();
    let id = submit(
        &up,
        None,
        &format!(
            r#"{{"profiler":"cpu_stacks","target":"pid:{}","duration":"6s","options":{{"args":"split"}}}}"#,
            split.id()
        ),
    );
    // Its first data is stored while it runs.
    eventually(30, "the first cpu_stacks data", || {
        (total_value(
            &top(&up, &format!("profiler=cpu_stacks&filter=run%3D{id}")),
            "mid",
        ) > 0.0)
            .then_some(())
    });
    eprintln!(
        "adhoc: first data of run {id} queryable {:.2} s after it was submitted",
        t0.elapsed().as_secs_f64()
    );
    let r = wait_done(&up, None, id, 60);
    assert_eq!(r["state"], "done", "{r}");
    let rows = top(&up, &format!("profiler=cpu_stacks&filter=run%3D{id}"));
    let hot = self_percent(&rows, "leaf_hot");
    let cold = self_percent(&rows, "leaf_cold");
    let share = 100.0 * hot / (hot + cold);
    assert!(
        (68.0..82.0).contains(&share),
        "leaf_hot {hot}% leaf_cold {cold}%: {rows}"
    );
    assert!(
        total_value(&rows, "main") > 0.9 * (hot + cold) / 100.0 * total_value(&rows, "mid"),
        "stacks reach main: {rows}"
    );
    drop(split);
    // And through the CLI.
    let out = run(baton().args([
        "query",
        "--profiler",
        "cpu_stacks",
        "--since",
        "10m",
        "--filter",
        &format!("run={id}"),
        "--server",
        &format!("http://{}", up.addr),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leaf_hot"), "{text}");

    // read() sizes: 1,000 reads of 4,096 bytes and 300 of 100 bytes.
    let id = submit(
        &up,
        None,
        r#"{"profiler":"read_sizes","target":"pid:1","duration":"5s"}"#,
    );
    eventually(20, "the read_sizes run to start", || {
        (run_state(&up, None, id)["state"] == "running").then_some(())
    });
    let st = Command::new(workload("reads"))
        .arg("1")
        .status()
        .expect("reads");
    assert!(st.success());
    let r = wait_done(&up, None, id, 60);
    assert_eq!(r["state"], "done", "{r}");
    let h = http_json(
        &up.addr,
        &format!("/api/v1/histograms?profiler=read_sizes&since=10m&filter=run%3D{id}"),
    );
    let hs: Vec<&serde_json::Value> = h["histograms"]
        .as_array()
        .expect("histograms")
        .iter()
        .filter(|x| x["key"] == "reads")
        .collect();
    assert_eq!(hs.len(), 1, "{h}");
    let bucket = |le: u64| -> f64 {
        hs[0]["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .find(|b| b["le"] == le)
            .and_then(|b| b["count"].as_f64())
            .unwrap_or(0.0)
    };
    assert_eq!(bucket(8191), 1000.0, "{}", hs[0]);
    assert_eq!(bucket(127), 300.0, "{}", hs[0]);
    // Beyond those, only the dynamic loader's read of libc's ELF header (832 bytes).
    let other = hs[0]["count"].as_f64().unwrap_or(0.0) - 1300.0;
    assert!((0.0..=2.0).contains(&other), "{}", hs[0]);
    let out = run(baton().args([
        "query",
        "--profiler",
        "read_sizes",
        "--format",
        "hist",
        "--since",
        "10m",
        "--filter",
        &format!("run={id}"),
        "--server",
        &format!("http://{}", up.addr),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("read_bytes of reads: {} values", 1300.0 + other)),
        "{text}"
    );
    // The host's reads per window, as a series: the workload's 1,300 at least, over several
    // points.
    let ts = http_json(
        &up.addr,
        &format!("/api/v1/timeseries?profiler=read_sizes&value=reads&since=10m&step=1s&filter=run%3D{id}"),
    );
    let points = ts["points"].as_array().expect("points");
    let total: f64 = points.iter().filter_map(|p| p["value"].as_f64()).sum();
    assert!(points.len() >= 2, "{ts}");
    assert!(total >= 1300.0, "{ts}");

    // Off-CPU stacks of one process. bpftrace took from 2 s to over 6 s to compile and attach
    // in loaded CI runs, so the workload waits, stopped, until bpftrace has loaded its program
    // and a second more has passed; then it runs: 10 × 200 ms asleep in wait_here. Its stopped
    // time began before the attach, so it is never counted.
    let sh = format!("kill -STOP $$; exec {} 0 10", workload("sleeper").display());
    let mut sleeper = Workload::spawn(Command::new("sh").args(["-c", &sh]));
    let pid = sleeper.id();
    eventually(10, "the workload to stop itself", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        state.starts_with('T').then_some(())
    });
    let id = submit(
        &up,
        None,
        &format!(
            r#"{{"profiler":"offcpu_pid","target":"pid:{pid}","duration":"15s","options":{{"args":"{pid}"}}}}"#
        ),
    );
    eventually(12, "bpftrace to load its program", || {
        baton_bpftraces()
            .into_iter()
            .any(has_bpf_prog)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let r = wait_done(&up, None, id, 60);
    sleeper.wait();
    assert_eq!(r["state"], "done", "{r}");
    let fg = http_json(
        &up.addr,
        &format!("/api/v1/flamegraph?profiler=offcpu_pid&since=10m&filter=run%3D{id}"),
    );
    let total = fg["total"].as_f64().unwrap_or(0.0) / 1e9;
    assert!((1.8..2.4).contains(&total), "{total} s off CPU: {fg}");
    // bpftrace walks user stacks by frame pointers, so libc's clock_nanosleep (built without
    // them) hides wait_here; what it names reaches main. Stacks printed after the process
    // exited keep hex addresses (bpftrace symbolizes when it prints).
    let rows = top(&up, &format!("profiler=offcpu_pid&filter=run%3D{id}"));
    let under_main = total_value(&rows, "main") / 1e9;
    assert!(under_main >= 1.2, "{under_main} s under main: {rows}");
    assert!(baton_bpftraces().is_empty(), "a bpftrace was left running");
    up.stop();
}

/// `baton record adhoc --script`: the read-size example, with no server, as JSON.
#[test]
fn record_adhoc_script_writes_the_histogram() {
    require_root();
    require_bpftrace();
    let script = examples_dir().join("read_sizes.bt");
    let mut reads = Workload::spawn(Command::new(workload("reads")).args(["2", "500", "200"]));
    let out = run(baton()
        .args(["record", "adhoc", "--script"])
        .arg(&script)
        .args(["--duration", "4s", "--format", "json"]));
    reads.wait();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let h = doc["histograms"]
        .as_array()
        .expect("histograms")
        .iter()
        .find(|h| h["key"] == "reads")
        .cloned()
        .unwrap_or_else(|| panic!("no histogram for reads: {doc}"));
    let count = |le: u64| -> f64 {
        h["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .find(|b| b["le"] == le)
            .and_then(|b| b["count"].as_f64())
            .unwrap_or(0.0)
    };
    assert_eq!((count(8191), count(127)), (500.0, 200.0), "{h}");
    // A script with a bad header is refused with its line.
    let dir = scratch("adhoc-record-bad");
    let bad = dir.join("bad.bt");
    std::fs::write(
        &bad,
        "// baton:\n// name = \"bad\"\n// owner = \"me\"\n// [maps.x]\n// kind = \"stack\"\nprofile:hz:9 { @x[ustack] = count(); }\n",
    )
    .expect("write");
    let out = run(baton().args(["record", "adhoc", "--script"]).arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.bt:5:") && err.contains("did you mean `stacks`"),
        "{err}"
    );
}

const BROKEN: &str = "// baton:\n// name = \"broken\"\n// owner = \"me\"\n// [maps.n]\n// kind = \"series\"\nprofile:hz:9 { @n = count() \nnot bpftrace at all\n";

const FLOOD: &str = "// baton:\n// name = \"flood\"\n// owner = \"me\"\n// max_output = \"64KiB\"\n// [maps.n]\n// kind = \"series\"\ninterval:ms:1 { @n = count(); printf(\"%s\\n\", \"an endless stream of output, far past the ceiling\"); }\n";

/// A broken script fails its run with bpftrace's message and leaves no bpftrace behind; a script
/// that prints without end is stopped at its output ceiling; `config check` compiles scripts.
#[test]
fn broken_and_flooding_scripts_fail_their_runs_cleanly() {
    require_root();
    require_bpftrace();
    let cfg = tree("adhoc-bad", &[("broken.bt", BROKEN), ("flood.bt", FLOOD)]);
    // `config check` runs bpftrace over every script: the broken one is named with its error.
    let out = run(baton().args(["config", "check"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("adhoc/broken.bt: bpftrace rejects it") && err.contains("ERROR"),
        "{err}"
    );
    assert!(!err.contains("flood.bt: bpftrace rejects"), "{err}");
    let data = cfg.with_file_name("data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    let id = submit(
        &up,
        None,
        r#"{"profiler":"broken","target":"pid:1","duration":"5s"}"#,
    );
    let r = wait_done(&up, None, id, 60);
    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("bpftrace failed on adhoc/broken.bt") && reason.contains("ERROR"),
        "{r}"
    );
    assert!(baton_bpftraces().is_empty(), "a bpftrace was left running");

    let t0 = Instant::now();
    let id = submit(
        &up,
        None,
        r#"{"profiler":"flood","target":"pid:1","duration":"60s"}"#,
    );
    let r = wait_done(&up, None, id, 40);
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("output ceiling: the script printed more than 65536 bytes"),
        "{r}"
    );
    assert!(t0.elapsed() < Duration::from_secs(40));
    eventually(10, "no bpftrace left", || {
        baton_bpftraces().is_empty().then_some(())
    });
    up.stop();
}

/// The cpu_stacks example claims the PMU: it waits while an on-demand CPU run holds it. With
/// auth on, an operator may not start an ad-hoc profiler and an admin may; both are audited.
#[test]
fn an_adhoc_script_claiming_the_pmu_waits_for_a_cpu_run_and_needs_admin() {
    require_root();
    require_bpftrace();
    let cfg = tree("adhoc-pmu", &[]);
    let base = cfg.parent().expect("base").to_path_buf();
    let tokens = base.join("tokens");
    std::fs::write(
        &tokens,
        format!("operator olga {OPERATOR}\nadmin ada {ADMIN}\n"),
    )
    .expect("tokens");
    let data = base.join("data");
    let up = Up::start_with(
        &data,
        &[
            "--config",
            cfg.to_str().expect("utf-8"),
            "--auth",
            tokens.to_str().expect("utf-8"),
        ],
    );
    let split = Workload::spawn(Command::new(workload("split")).arg("30"));
    let target = format!("pid:{}", split.id());
    let cpu = submit(
        &up,
        Some(OPERATOR),
        &format!(r#"{{"profiler":"cpu","target":"{target}","duration":"8s","frequency":99}}"#),
    );
    eventually(20, "the cpu run to hold the PMU", || {
        (run_state(&up, Some(OPERATOR), cpu)["state"] == "running").then_some(())
    });
    let body = format!(
        r#"{{"profiler":"cpu_stacks","target":"{target}","duration":"2s","options":{{"args":"split"}}}}"#
    );
    let (code, v) = json_req(&up.addr, "POST", "/api/v1/runs", Some(OPERATOR), &body);
    assert_eq!(code, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("admin"), "{v}");
    let adhoc = submit(&up, Some(ADMIN), &body);
    // Queued while the CPU run holds the PMU.
    std::thread::sleep(Duration::from_secs(2));
    let cpu_state = run_state(&up, Some(ADMIN), cpu);
    let adhoc_state = run_state(&up, Some(ADMIN), adhoc);
    assert_eq!(cpu_state["state"], "running", "{cpu_state}");
    assert_eq!(adhoc_state["state"], "queued", "{adhoc_state}");
    let cpu_run = wait_done(&up, Some(ADMIN), cpu, 60);
    assert_eq!(cpu_run["state"], "done", "{cpu_run}");
    let adhoc_run = wait_done(&up, Some(ADMIN), adhoc, 60);
    assert_eq!(adhoc_run["state"], "done", "{adhoc_run}");
    let started = adhoc_run["started_at"].as_str().unwrap_or("");
    let ended = cpu_run["ended_at"].as_str().unwrap_or("");
    assert!(
        !started.is_empty() && started >= ended,
        "the ad-hoc run started at {started}, before the CPU run ended at {ended}"
    );
    drop(split);
    let audit = std::fs::read_to_string(data.join("audit.log")).expect("audit log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"profiler\":\"cpu_stacks\"") && l.contains("\"who\":\"ada\"")),
        "{audit}"
    );
    up.stop();
}

/// Under `baton up` bpftrace compiles and attaches in the background: a script slow to attach
/// holds up no other run's end, and a run that ends before its script attached fails saying so.
#[test]
fn a_slow_bpftrace_attach_holds_up_no_other_run() {
    require_root();
    require_bpftrace();
    let cfg = tree("adhoc-slow", &[]);
    let data = cfg.with_file_name("data");
    // A bpftrace that takes 4 s to attach: a large script's compile, stood in for by a sleep.
    let slow = cfg.with_file_name("slow-bpftrace");
    std::fs::write(&slow, "#!/bin/sh\nsleep 4\nexec bpftrace \"$@\"\n").expect("write");
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let up = Up::start_env(
        &data,
        &["--window", "1s", "--config", cfg.to_str().expect("utf-8")],
        &[("BATON_BPFTRACE", slow.as_path())],
    );
    let split = Workload::spawn(Command::new(workload("split")).arg("30"));
    let script = submit(
        &up,
        None,
        r#"{"profiler":"read_sizes","target":"pid:1","duration":"2s"}"#,
    );
    let cpu = submit(
        &up,
        None,
        &format!(
            r#"{{"profiler":"cpu","target":"pid:{}","duration":"1s"}}"#,
            split.id()
        ),
    );
    let c = wait_done(&up, None, cpu, 30);
    assert_eq!(c["state"], "done", "{c}");
    let held =
        c["ended_at_ms"].as_u64().expect("ended") - c["started_at_ms"].as_u64().expect("started");
    eprintln!("the 1 s cpu run beside a 4 s attach held {held} ms");
    // Waiting for the attach, the driver would have held it over 4 s.
    assert!(held < 2_500, "the 1 s cpu run held {held} ms: {c}");
    let r = wait_done(&up, None, script, 30);
    assert_eq!(r["state"], "failed", "{r}");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("before it had compiled and attached"),
        "{reason}"
    );
    assert!(baton_bpftraces().is_empty(), "a bpftrace was left running");
    drop(split);
    up.stop();
}

/// In the config tree, ad-hoc profilers also run on a schedule and from triggers: a continuous
/// rule of `read_sizes` for a service of readers, and an exec trigger that starts `cpu_stacks`
/// on a new `split`.
#[test]
fn continuous_rules_and_triggers_start_adhoc_runs() {
    require_root();
    require_bpftrace();
    let rules = r#"
[services.readers]
selector = { comm = "reads" }
continuous = [{ profiler = "read_sizes", target_samples_per_hour = 1000000, duration = "3s" }]

[services.splitters]
selector = { comm = "split" }
[[services.splitters.triggers]]
kind = "exec"
pattern = "*/split"
profiler = "cpu_stacks"
duration = "3s"
cooldown = "10m"
max_per_hour = 1
"#;
    let cfg = tree("adhoc-rules", &[]);
    std::fs::write(cfg.join("services.toml"), rules).expect("rules");
    let data = cfg.with_file_name("data");
    // 100 reads of 4 KiB every 100 ms for 90 s.
    let reads = Workload::spawn(Command::new(workload("reads")).args(["0", "100", "0", "900"]));
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    let runs = |mode: &str, service: &str| -> Vec<serde_json::Value> {
        http_json(&up.addr, "/api/v1/runs?all=1")["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["mode"] == mode && r["service"] == service)
            .collect()
    };
    // The exec watcher attaches as `up` starts; give it the time the other exec-trigger tests
    // give it.
    std::thread::sleep(Duration::from_secs(2));
    let mut split = Workload::spawn(Command::new(workload("split")).arg("6"));
    let trig = eventually(40, "the exec trigger's cpu_stacks run to finish", || {
        runs("triggered", "splitters")
            .into_iter()
            .find(|r| r["state"] == "done")
    });
    assert_eq!(trig["profiler"], "cpu_stacks", "{trig}");
    let id = trig["id"].as_u64().expect("id");
    let rows = top(&up, &format!("profiler=cpu_stacks&filter=run%3D{id}"));
    assert!(self_percent(&rows, "leaf_hot") > 50.0, "{rows}");
    split.wait();
    let cont = eventually(60, "a continuous read_sizes run to finish", || {
        runs("continuous", "readers")
            .into_iter()
            .find(|r| r["state"] == "done" && r["profiler"] == "read_sizes")
    });
    let id = cont["id"].as_u64().expect("id");
    let h = http_json(
        &up.addr,
        &format!("/api/v1/histograms?profiler=read_sizes&since=10m&filter=run%3D{id}"),
    );
    let big: f64 = h["histograms"]
        .as_array()
        .expect("histograms")
        .iter()
        .filter(|x| x["key"] == "reads")
        .flat_map(|x| x["buckets"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["le"] == 8191)
        .filter_map(|b| b["count"].as_f64())
        .sum::<f64>()
        // Counts are weighted by the run's weight (a run covers a tenth of its slot): the run's
        // own count is the sum over its weight.
        / cont["weight"].as_f64().expect("weight");
    // 100 reads per 100 ms round, over at most the time the run held (3 s, or more where a
    // pass of the collector loop ran long: `baton up` logs such a pass), less bpftrace's attach.
    let held = cont["ended_at_ms"].as_f64().expect("ended")
        - cont["started_at_ms"].as_f64().expect("started");
    // (A round cut by the start or the end may count in part: one more round at most.)
    let most = 100.0 * ((held / 100.0).floor() + 2.0);
    eprintln!("read_sizes run {id}: held {held} ms, {big} 4 KiB reads (at most {most})");
    assert!(
        held < 3_000.0 + 2_000.0,
        "the 3 s run held {held} ms: {cont}"
    );
    assert!(
        (1_000.0..=most).contains(&big),
        "{big} 4 KiB reads in {held} ms: {h}"
    );
    drop(reads);
    up.stop();
}

/// Stacks of a collapsed output with at least 5% of the total, as (stack, share).
fn main_stacks(collapsed: &str) -> Vec<(String, f64)> {
    let rows: Vec<(String, f64)> = collapsed
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(s, v)| (s.to_string(), v.parse::<f64>().expect("a value")))
        .collect();
    let total: f64 = rows.iter().map(|r| r.1).sum();
    let mut out: Vec<(String, f64)> = rows
        .into_iter()
        .map(|(s, v)| (s, v / total))
        .filter(|r| r.1 >= 0.05)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A bpftrace one-liner with no header, under `baton record adhoc -e`, has its map's kind
/// inferred (and says so), and gives the same stacks as the same script with a header, in the
/// same shares within 15 points (about four standard deviations of the difference at 300
/// samples each).
#[test]
fn a_headerless_one_liner_gives_the_same_stacks_as_with_a_header() {
    require_root();
    let mut w = Command::new(workload("split"))
        .arg("12")
        .spawn()
        .expect("split");
    let prog = format!(
        "profile:hz:99 /pid == {}/ {{ @hot[ustack] = count(); }}",
        w.id()
    );
    let record = |args: &[&str]| {
        let out = run(baton()
            .args([
                "record",
                "adhoc",
                "--duration",
                "3s",
                "--format",
                "collapsed",
            ])
            .args(args));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        (String::from_utf8_lossy(&out.stdout).to_string(), err)
    };
    let (bare, said) = record(&["-e", &prog]);
    assert!(said.contains("@hot: stacks (keyed by ustack)"), "{said}");
    let dir = scratch("adhoc-one-liner");
    let script = dir.join("hot.bt");
    std::fs::write(
        &script,
        format!(
            "// baton:\n// name = \"hot\"\n// owner = \"test\"\n// [maps.hot]\n\
             // kind = \"stacks\"\n// keys = [\"ustack\"]\n{prog}\n"
        ),
    )
    .expect("script");
    let (headed, said) = record(&["--script", script.to_str().expect("path")]);
    assert!(!said.contains("inferred"), "{said}");
    let _ = w.kill();
    let _ = w.wait();
    let (a, b) = (main_stacks(&bare), main_stacks(&headed));
    eprintln!("one-liner: {a:?}\nwith a header: {b:?}");
    assert_eq!(
        a.iter().map(|r| &r.0).collect::<Vec<_>>(),
        b.iter().map(|r| &r.0).collect::<Vec<_>>(),
        "different stacks"
    );
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 0.15, "{s}: {x:.2} against {y:.2}");
    }
    assert!(
        a.iter()
            .any(|(s, x)| s.ends_with("leaf_hot") && (0.6..=0.9).contains(x)),
        "{a:?}"
    );
}
