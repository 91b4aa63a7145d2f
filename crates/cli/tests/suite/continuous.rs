//! Per-service continuous profiling in a real `baton up`: slots drawn against the tuned
//! probability, samples weighted `slot / (duration × p)` (`10 / p`) in the store, so weighted
//! sums estimate the service's whole time, the tuner acting on what it saw, and
//! per-service write budgets.

use std::process::Command;

use crate::harness::*;

fn runs_of(addr: &str, service: &str) -> Vec<serde_json::Value> {
    let v = http_json(addr, "/api/v1/runs?all=1");
    v["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["target"] == format!("service:{service}").as_str())
        .collect()
}

/// The weighted total (sum of value × weight) the store holds for one run.
fn stored_total(addr: &str, run: u64) -> f64 {
    let v = http_json(
        addr,
        &format!("/api/v1/labels/service?since=1h&filter=run%3D{run}"),
    );
    v["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|x| x["total"].as_f64().expect("total"))
        .sum()
}

#[test]
fn service_rules_draw_runs_weighted_by_their_tuned_probability() {
    require_root();
    let split = workload("split");
    let cfg = scratch("continuous-config");
    // One busy CPU at 99 Hz for 1 s per 10 s slot yields about 35,000 samples an hour at
    // p = 1; the target is about half that, so the tuner must lower p to about 0.5. The
    // interval spans two slots, so it sees two draws.
    std::fs::write(
        cfg.join("svc.toml"),
        r#"
[tuner]
interval = "20s"

[services.burner]
selector = { comm = "split" }
labels = { team = "test" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 18000, duration = "1s", frequency = 99 }]
"#,
    )
    .expect("write config");
    let data = scratch("continuous-data");
    let mut w = Command::new(&split).arg("150").spawn().expect("workload");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);

    // p starts at 1: the first slot runs, and a run covers a tenth of its slot: weight 10, a
    // little more for the time its profiler took to attach.
    let first = eventually(30, "a first continuous run of the service", || {
        runs_of(&up.addr, "burner")
            .into_iter()
            .find(|r| r["state"] == "done")
    });
    eprintln!("first: {first}");
    assert_eq!(first["mode"], "continuous");
    let first_weight = first["weight"].as_f64().expect("weight");
    assert!((10.0..12.0).contains(&first_weight), "{first}");
    let samples = first["samples"].as_u64().expect("samples");
    assert!(samples > 30, "{first}");
    let period = 1e9 / 99.0;
    let total = stored_total(&up.addr, first["id"].as_u64().expect("id"));
    assert!(
        (total / (samples as f64 * period * first_weight) - 1.0).abs() < 0.02,
        "stored {total} for {samples} samples at weight {first_weight}"
    );

    // No whole-host profiling while the config has continuous rules.
    let v = http_json(&up.addr, "/api/v1/runs?all=1");
    assert!(
        !v["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .any(|r| r["target"] == "host" && r["state"] == "running"),
        "{v}"
    );

    // After a tuner interval the probability drops below 1 and the weight rises to match.
    let p = eventually(40, "the tuner to lower the probability", || {
        let st = http_json(&up.addr, "/api/v1/status");
        let rule = st["continuous"]["rules"].get(0)?.clone();
        let p = rule["probability"].as_f64()?;
        (p < 0.99).then_some(p)
    });
    eprintln!("tuned probability {p}");
    let tuned_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(p > 0.05, "the tuner overshot: {p}");
    // A run drawn after that carries weight 10/p, and the store sums it weighted.
    // The host draws its 10 s slots by a low-discrepancy sequence: at p ≈ 0.27 it runs about
    // one slot in four, never many in a row without one.
    let later = eventually(
        180,
        "a continuous run drawn at the tuned probability",
        || {
            runs_of(&up.addr, "burner").into_iter().find(|r| {
                r["state"] == "done"
                    && r["queued_at_ms"].as_u64().is_some_and(|t| t > tuned_at)
                    && r["weight"].as_f64().is_some_and(|w| w > 10.1)
            })
        },
    );
    eprintln!("later: {later}");
    let weight = later["weight"].as_f64().expect("weight");
    let samples = later["samples"].as_u64().expect("samples");
    // The overhead guard may have lowered the frequency since the first run (it did once in
    // CI, to 49 Hz): a sample stands for the period of the run's own frequency.
    let period = 1e9 / later["frequency_hz"].as_f64().expect("frequency_hz");
    let total = stored_total(&up.addr, later["id"].as_u64().expect("id"));
    assert!(
        (total / (samples as f64 * period * weight) - 1.0).abs() < 0.02,
        "stored {total} for {samples} samples at weight {weight}"
    );
    // Every sample of the service is labelled with it.
    let v = http_json(&up.addr, "/api/v1/labels/service?since=1h");
    assert!(
        v["values"]
            .as_array()
            .expect("values")
            .iter()
            .any(|x| x["value"] == "burner"),
        "{v}"
    );
    // A service's config labels filter through to its samples.
    let by_team = |team: &str| {
        let v = http_json(
            &up.addr,
            &format!("/api/v1/labels/service?since=1h&filter=team%3D{team}"),
        );
        v["values"].as_array().expect("values").len()
    };
    assert_eq!(by_team("test"), 1);
    assert_eq!(by_team("nobody"), 0);
    assert!(up.stop().success());

    // What the tuner learnt is kept in the data directory and taken back on restart.
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("tuner.json")).expect("tuner.json after a re-tune"),
    )
    .expect("tuner.json is JSON");
    let saved_p = saved[0]["probability"].as_f64().expect("probability");
    assert!(saved_p < 0.99, "{saved}");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    let p_now = eventually(10, "the restored probability in the status", || {
        http_json(&up.addr, "/api/v1/status")["continuous"]["rules"][0]["probability"].as_f64()
    });
    assert!(
        (p_now - saved_p).abs() < 1e-9,
        "restored {p_now}, saved {saved_p}"
    );
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn the_overhead_guard_caps_then_pauses_the_continuous_runs_of_services() {
    require_root();
    let split = workload("split");
    let cfg = scratch("continuous-guard-config");
    // A budget nothing can meet: the guard must act on service runs. Checked every 3 s, so the
    // seven halvings from 99 Hz take about 20 s and the 10 s slots run some capped runs first.
    std::fs::write(
        cfg.join("svc.toml"),
        r#"
[host]
overhead_budget_percent = 0.0001
overhead_check_interval = "3s"

[services.burner]
selector = { comm = "split" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 1000000, duration = "1s", frequency = 99 }]
"#,
    )
    .expect("write config");
    let data = scratch("continuous-guard-data");
    let mut w = Command::new(&split).arg("90").spawn().expect("workload");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    // First the frequency comes down: a later run samples below the rule's 99 Hz.
    let capped = eventually(40, "a service run at a capped frequency", || {
        runs_of(&up.addr, "burner")
            .into_iter()
            .find(|r| r["state"] == "done" && r["frequency_hz"].as_u64().is_some_and(|f| f < 99))
    });
    eprintln!("capped: {capped}");
    // Then continuous profiling pauses: runs drawn now end at once, with the guard's reason.
    let paused = eventually(60, "a service run held back by the guard", || {
        runs_of(&up.addr, "burner").into_iter().find(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("overhead guard"))
        })
    });
    eprintln!("paused: {paused}");
    let (_, m) = http_get(&up.addr, "/metrics");
    let m = String::from_utf8_lossy(&m).to_string();
    let stopped = m
        .lines()
        .find_map(|l| l.strip_prefix("baton_overhead_stopped_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(stopped >= 1.0, "{m}");
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn an_offcpu_continuous_rule_runs_beside_whole_host_cpu_profiling() {
    require_root();
    let sleeper = workload("sleeper");
    let cfg = scratch("continuous-offcpu-config");
    // A 2 s run per 20 s slot, drawn at p = 1 (the target is far above what it yields).
    std::fs::write(
        cfg.join("svc.toml"),
        r#"
[services.sleepers]
selector = { comm = "sleeper" }
continuous = [{ profiler = "offcpu", target_samples_per_hour = 1000000, duration = "2s" }]
"#,
    )
    .expect("write config");
    let data = scratch("continuous-offcpu-data");
    // 200 ms sleeps for 60 s.
    // Killed even when the test fails: a sleeper left running would join the next test's
    // service (it selects by command name).
    let _w = Workload::spawn(Command::new(&sleeper).args(["0", "300"]));
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    let run = eventually(
        40,
        "a finished continuous offcpu run of the service",
        || {
            runs_of(&up.addr, "sleepers")
                .into_iter()
                .find(|r| r["state"] == "done")
        },
    );
    eprintln!("run: {run}");
    assert_eq!(run["profiler"], "offcpu");
    let id = run["id"].as_u64().expect("id");
    // Sums are weighted by the run's weight (10 at p = 1: a run covers a tenth of its slot);
    // the run's own time off CPU is the sum over its weight.
    let weight = run["weight"].as_f64().expect("weight");
    let secs = offcpu_seconds(&up.addr, &format!("run%3D{id}")) / weight;
    // The sleeps that ended inside the 2 s run: 9 to 11 of them.
    assert!(
        (1.6..=2.4).contains(&secs),
        "a 2 s continuous run stored {secs:.3} s off CPU"
    );
    // Whole-host CPU profiling went on beside it.
    let status = http_json(&up.addr, "/api/v1/status");
    assert_eq!(status["continuous"]["mode"], "host", "{status}");
    up.stop();
}

#[test]
fn a_syscalls_continuous_rule_uses_the_configs_profiler_options() {
    require_root();
    let sleeper = workload("sleeper");
    let cfg = scratch("continuous-syscalls-config");
    std::fs::write(
        cfg.join("svc.toml"),
        r#"
[profilers.syscalls]
options = { max_stacks_per_sec = 5 }

[services.sleepers]
selector = { comm = "sleeper" }
continuous = [{ profiler = "syscalls", target_samples_per_hour = 1000000, duration = "2s" }]
"#,
    )
    .expect("write config");
    let data = scratch("continuous-syscalls-data");
    // Killed even when the test fails: a sleeper left running would join the next test's
    // service (it selects by command name).
    let _w = Workload::spawn(Command::new(&sleeper).args(["0", "300"]));
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    let run = eventually(40, "a finished continuous syscalls run", || {
        runs_of(&up.addr, "sleepers")
            .into_iter()
            .find(|r| r["state"] == "done")
    });
    eprintln!("run: {run}");
    assert_eq!(run["profiler"], "syscalls");
    // The run started with the config's option, and says so.
    assert_eq!(
        run["options"]["max_stacks_per_sec"], "5",
        "the config's profiler option is not the run's: {run}"
    );
    let id = run["id"].as_u64().expect("id");
    let h = http_json(
        &up.addr,
        &format!(
            "/api/v1/histograms?profiler=syscalls&since=10m&filter=run%3D{id}&filter=syscall%3Dclock_nanosleep"
        ),
    );
    let h = &h["histograms"][0];
    // 200 ms sleeps during a 2 s run: 9 to 11, their median in [2^27, 2^28) ns. Counts are
    // weighted by the run's weight (10 at p = 1): the run's own count is the sum over it.
    // Rounded: the quotient of two weighted floats lands a hair off the whole count.
    let n = (h["count"].as_f64().expect("count") / run["weight"].as_f64().expect("weight")).round();
    assert!((8.0..=11.0).contains(&n), "{n} clock_nanosleep calls: {h}");
    let p50 = h["p50"].as_u64().unwrap_or(0);
    assert!((134_217_728..=268_435_455).contains(&p50), "p50 {p50} ns");
    up.stop();
}
