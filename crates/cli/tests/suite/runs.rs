//! On-demand runs through a real `baton up`: PMU exclusivity, preemption of continuous
//! profiling and its resumption, `baton run --wait`, forced runs and hard ceilings.

use std::process::Command;

use crate::harness::*;

fn submit(addr: &str, body: &str) -> u64 {
    let out = run(baton()
        .args(["run", "cpu", "--server", &format!("http://{addr}")])
        .args(body.split_whitespace()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("run id")
}

fn wait_done(addr: &str, id: u64) -> serde_json::Value {
    eventually(40, &format!("run {id} to end"), || {
        let r = http_json(addr, &format!("/api/v1/runs/{id}"));
        matches!(r["state"].as_str(), Some("done" | "failed" | "cancelled")).then_some(r)
    })
}

#[test]
fn two_cpu_runs_never_overlap_and_preempted_continuous_profiling_resumes() {
    require_root();
    let split = workload("split");
    let data = scratch("runs-data");
    let up = Up::start(&data);
    let mut w = Command::new(&split).arg("12").spawn().expect("workload");
    let pid = w.id().to_string();
    // Let continuous profiling get going first.
    eventually(20, "a running continuous run", || {
        let v = http_json(&up.addr, "/api/v1/runs?all=1");
        v["runs"]
            .as_array()?
            .iter()
            .any(|r| r["mode"] == "continuous" && r["state"] == "running")
            .then_some(())
    });
    let target = format!("--target pid:{pid} --duration 2s --frequency 99");
    let a = submit(&up.addr, &target);
    let b = submit(&up.addr, &target);
    let (ra, rb) = (wait_done(&up.addr, a), wait_done(&up.addr, b));
    eprintln!("a: {ra}\nb: {rb}");
    assert_eq!(ra["state"], "done");
    assert_eq!(rb["state"], "done");
    let a_end = ra["ended_at_ms"].as_u64().expect("a ended");
    let b_start = rb["started_at_ms"].as_u64().expect("b started");
    assert!(
        b_start >= a_end,
        "the PMU was shared: b started at {b_start}, a ended at {a_end}"
    );
    assert!(ra["samples"].as_u64().expect("samples") > 50, "{ra}");

    // The continuous run in force when `a` arrived was preempted by it, and continuous
    // profiling ran again after `b` ended.
    let all = http_json(&up.addr, "/api/v1/runs?all=1");
    let runs = all["runs"].as_array().expect("runs");
    let preempted = runs
        .iter()
        .filter(|r| r["mode"] == "continuous")
        .find(|r| r["preemptions"].as_u64().unwrap_or(0) >= 1)
        .unwrap_or_else(|| panic!("no continuous run was preempted: {all}"));
    assert!(
        preempted["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("preempted by run"),
        "{preempted}"
    );
    let b_end = rb["ended_at_ms"].as_u64().expect("b ended");
    eventually(20, "continuous profiling to resume", || {
        let v = http_json(&up.addr, "/api/v1/runs?all=1");
        v["runs"]
            .as_array()?
            .iter()
            .any(|r| {
                r["mode"] == "continuous"
                    && r["started_at_ms"]
                        .as_u64()
                        .is_some_and(|s| s >= b_end.saturating_sub(1))
                    || r["mode"] == "continuous"
                        && r["state"] == "running"
                        && r["preemptions"].as_u64().unwrap_or(0) >= 1
            })
            .then_some(())
    });
    // The run's samples are in the store under its id.
    let top = http_json(&up.addr, &format!("/api/v1/top?since=10m&filter=run%3D{a}"));
    assert!(self_percent(&top["rows"], "leaf_hot") > 50.0, "{top}");
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn run_wait_prints_the_top_functions_and_ceilings_hold_even_forced() {
    require_root();
    let split = workload("split");
    let data = scratch("run-wait-data");
    let up = Up::start(&data);
    let mut w = Command::new(&split).arg("8").spawn().expect("workload");
    let server = format!("http://{}", up.addr);
    let out = run(baton().args([
        "run",
        "cpu",
        "--target",
        &format!("pid:{}", w.id()),
        "--duration",
        "2s",
        "--frequency",
        "199",
        "--force",
        "--wait",
        "--server",
        &server,
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.trim_end().ends_with("leaf_hot")),
        "{stdout}"
    );
    // The forced run is in the audit log.
    let audit = std::fs::read_to_string(data.join("audit.log")).expect("audit log written");
    assert!(
        audit.contains("\"event\":\"forced_run\"") && audit.contains("\"profiler\":\"cpu\""),
        "{audit}"
    );
    // A hard ceiling is a clear refusal, forced or not.
    let out = run(baton().args([
        "run",
        "cpu",
        "--target",
        "pid:1",
        "--duration",
        "2h",
        "--force",
        "--server",
        &server,
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hard ceiling"));
    // A bad target is refused before anything runs.
    let out = run(baton().args(["run", "cpu", "--target", "proc:1", "--server", &server]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad target"));
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn a_process_cpu_trigger_fires_for_a_busy_process_and_its_cooldown_holds() {
    require_root();
    let split = workload("split");
    let cfg = scratch("trigger-config");
    std::fs::write(
        cfg.join("busy.toml"),
        r#"
[services.busy]
selector = { comm = "split" }

[[services.busy.triggers]]
kind = "process_cpu"
above_percent = 20.0
for = "2s"
profiler = "cpu"
duration = "2s"
cooldown = "10m"
max_per_hour = 5
"#,
    )
    .expect("write config");
    let data = scratch("trigger-data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    // A busy loop reads near 100% alone and above 20% even on a loaded 2-CPU CI machine.
    let mut w = Command::new(&split).arg("15").spawn().expect("workload");
    let run = eventually(40, "a triggered run to finish", || {
        let v = http_json(&up.addr, "/api/v1/runs");
        v["runs"]
            .as_array()?
            .iter()
            .find(|r| r["mode"] == "triggered" && r["state"] == "done")
            .cloned()
    });
    assert_eq!(run["target"], "service:busy");
    assert!(run["samples"].as_u64().expect("samples") > 0, "{run}");
    // The process stays busy, but the 10 min cooldown holds: no second run, and the held-back
    // condition is counted.
    eventually(20, "a suppressed firing", || {
        let (_, m) = http_get(&up.addr, "/metrics");
        let m = String::from_utf8_lossy(&m).to_string();
        m.lines()
            .find_map(|l| l.strip_prefix("baton_trigger_suppressed_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v >= 1.0)
    });
    let v = http_json(&up.addr, "/api/v1/runs");
    let triggered = v["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["mode"] == "triggered")
        .count();
    assert_eq!(triggered, 1, "the cooldown did not hold: {v}");
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

/// Whether two finished runs overlapped in time.
fn overlapped(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let t = |r: &serde_json::Value, k: &str| r[k].as_u64().expect(k);
    t(a, "started_at_ms") < t(b, "ended_at_ms") && t(b, "started_at_ms") < t(a, "ended_at_ms")
}

#[test]
fn resources_cap_and_groups_from_the_config_decide_what_runs_together() {
    require_root();
    let split = workload("split");
    let cfg = scratch("limits-config");
    let write = |host: &str| {
        std::fs::write(
            cfg.join("limits.toml"),
            format!(
                "[profilers.cpu]\nwindow = \"2s\"\nresources = [{{ name = \"pmu\", shared = 2 }}]\n\n{host}\n"
            ),
        )
        .expect("write config");
    };
    // Phase 1: the PMU shared by two, room for three profilers: two CPU runs go together.
    write("[host]\nmax_concurrent = 3");
    let data = scratch("limits-data");
    // No --window: the config's `[profilers.cpu] window` sets the whole-host run length.
    let up = Up::start_raw(&data, &["--config", cfg.to_str().expect("utf-8")]);
    let mut w = Command::new(&split).arg("40").spawn().expect("workload");
    let target = format!("--target pid:{} --duration 2s --frequency 49", w.id());
    let pair = |up: &Up| {
        let a = submit(&up.addr, &target);
        let b = submit(&up.addr, &target);
        let (ra, rb) = (wait_done(&up.addr, a), wait_done(&up.addr, b));
        assert_eq!(ra["state"], "done", "{ra}");
        assert_eq!(rb["state"], "done", "{rb}");
        assert!(ra["samples"].as_u64().expect("samples") > 0, "{ra}");
        assert!(rb["samples"].as_u64().expect("samples") > 0, "{rb}");
        (ra, rb)
    };
    let (a, b) = pair(&up);
    assert!(overlapped(&a, &b), "a shared PMU ran them apart:\n{a}\n{b}");
    let v = http_json(&up.addr, "/api/v1/runs?all=1");
    let chain = v["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["target"] == "host")
        .cloned()
        .expect("a whole-host run");
    assert_eq!(chain["duration_s"].as_f64(), Some(2.0), "{chain}");

    // Phase 2: the host cap at 1 (hot reload): the same two runs now take turns.
    let version = |up: &Up| http_json(&up.addr, "/api/v1/config")["version"].clone();
    let before = version(&up);
    write("[host]\nmax_concurrent = 1");
    eventually(10, "the cap edit to load", || {
        (version(&up) != before).then_some(())
    });
    let (a, b) = pair(&up);
    assert!(!overlapped(&a, &b), "the cap of 1 was broken:\n{a}\n{b}");

    // Phase 3: room for three, but a concurrency group of one CPU profiler.
    let before = version(&up);
    write("[host]\nmax_concurrent = 3\n[host.concurrency_groups.walkers]\nmax = 1\nprofilers = [\"cpu\"]");
    eventually(10, "the group edit to load", || {
        (version(&up) != before).then_some(())
    });
    let (a, b) = pair(&up);
    assert!(!overlapped(&a, &b), "the group of 1 was broken:\n{a}\n{b}");
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn an_offcpu_run_through_up_measures_ten_sleeps_of_200_ms() {
    require_root();
    let sleeper = workload("sleeper");
    let data = scratch("runs-offcpu-data");
    let up = Up::start(&data);
    // A 2 s warm-up sleep (in `warm_up`) before the ten measured ones (in `wait_here`) leaves
    // time for the run to attach, even on a loaded host; only the time under `wait_here` is
    // measured, so how much of the warm-up the run saw does not matter.
    let mut w = Command::new(&sleeper).arg("2").spawn().expect("sleeper");
    let server = format!("http://{}", up.addr);
    let out = run(baton().args([
        "run",
        "offcpu",
        "--target",
        &format!("pid:{}", w.id()),
        "--duration",
        "7s",
        "--server",
        &server,
        "--wait",
    ]));
    let _ = w.wait();
    assert!(out.status.success(), "baton run offcpu failed");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("do_nanosleep"),
        "the run's top table:\n{table}"
    );
    let total = offcpu_seconds(&up.addr, "comm%3Dsleeper");
    let (st, body) = http_get(
        &up.addr,
        "/api/v1/export?since=10m&format=collapsed&profiler=offcpu&filter=comm%3Dsleeper",
    );
    assert_eq!(st, 200);
    let text = String::from_utf8_lossy(&body);
    let at_wait_here: f64 = text
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(stack, _)| stack.contains("main;wait_here;"))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9;
    eprintln!("offcpu through up: {total:.3} s in all, {at_wait_here:.3} s under wait_here");
    assert!(
        (at_wait_here - 2.0).abs() <= 0.2,
        "{at_wait_here:.3} s off CPU under main;wait_here, not 2.0 ± 10%\n{text}"
    );
    assert!(
        total >= at_wait_here && total <= at_wait_here + 2.2,
        "{total:.3} s off CPU in all: the ten sleeps, plus at most the 2 s warm-up"
    );
    // The CPU profile is not mixed with it.
    let cpu = http_json(&up.addr, "/api/v1/top?since=10m&filter=comm%3Dsleeper");
    assert!(
        cpu["total"].as_f64().expect("the top table's total") < 0.5e9,
        "off-CPU time leaked into the cpu profile: {cpu}"
    );
    up.stop();
}

/// `baton up`'s runs go into the store's run history: after a restart on the same data they are
/// still listed and shown, and new run ids go on after them.
#[test]
fn runs_outlive_a_restart_of_baton_up() {
    require_root();
    let split = workload("split");
    let data = scratch("runs-history");
    let mut w = Command::new(&split).arg("30").spawn().expect("workload");
    let up = Up::start(&data);
    let id = submit(
        &up.addr,
        &format!("--target pid:{} --duration 1s --frequency 99", w.id()),
    );
    let r = wait_done(&up.addr, id);
    assert_eq!(r["state"], "done", "{r}");
    let samples = r["samples"].as_u64().expect("samples");
    assert!(up.stop().success());
    let up = Up::start(&data);
    let v = http_json(&up.addr, "/api/v1/runs");
    let listed = v["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|x| x["id"].as_u64() == Some(id))
        .cloned()
        .unwrap_or_else(|| panic!("run {id} is not listed after the restart: {v}"));
    assert_eq!(listed["state"], "done", "{listed}");
    assert_eq!(listed["samples"].as_u64(), Some(samples), "{listed}");
    let shown = http_json(&up.addr, &format!("/api/v1/runs/{id}"));
    assert_eq!(shown["id"].as_u64(), Some(id), "{shown}");
    let next = submit(
        &up.addr,
        &format!("--target pid:{} --duration 1s --frequency 99", w.id()),
    );
    assert!(
        next > id,
        "run ids go on after the history: {next} after {id}"
    );
    let _ = w.kill();
    let _ = w.wait();
}
