//! Live trigger observation in a real `baton up`: a process exec'ing a matching binary (even one
//! that lives a millisecond), RSS growing faster than a rate, and a threshold on a Prometheus
//! metric scraped from a URL.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::harness::*;

/// A tiny HTTP server answering every request with a Prometheus page whose latency gauge is
/// the current value of `value`.
fn metrics_server(value: Arc<AtomicU64>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let v = f64::from_bits(value.load(Ordering::Relaxed));
            let body = format!(
                "# TYPE app_latency_p99_seconds gauge\napp_latency_p99_seconds{{route=\"/other\"}} 9\napp_latency_p99_seconds{{route=\"/checkout\"}} {v}\n"
            );
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn metric(addr: &str, name: &str) -> f64 {
    let (_, m) = http_get(addr, "/metrics");
    String::from_utf8_lossy(&m)
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

#[test]
fn exec_rss_growth_and_prometheus_triggers_fire_from_live_observations() {
    require_root();
    let split = workload("split");
    let grow = workload("grow");
    let value = Arc::new(AtomicU64::new(0.1f64.to_bits()));
    let server = metrics_server(value.clone());
    let cfg = scratch("live-trigger-config");
    std::fs::write(
        cfg.join("t.toml"),
        format!(
            r#"
[services.fresh]
selector = {{ comm = "baton-probe" }}
[[services.fresh.triggers]]
kind = "exec"
pattern = "*/baton-exec-probe"
profiler = "cpu"
duration = "1s"
cooldown = "10m"
max_per_hour = 1

[services.quick]
selector = {{ comm = "baton-probe" }}
[[services.quick.triggers]]
kind = "exec"
pattern = "*/baton-exec-quick"
profiler = "cpu"
duration = "1s"
cooldown = "10m"
max_per_hour = 1

[services.grower]
selector = {{ comm = "grow" }}
[[services.grower.triggers]]
kind = "rss_growth"
bytes_per_second = 5242880
profiler = "cpu"
duration = "1s"
cooldown = "10m"
max_per_hour = 1

[services.latency]
selector = {{ comm = "split" }}
[[services.latency.triggers]]
kind = "prometheus"
url = "http://{server}/metrics"
metric = 'app_latency_p99_seconds{{route="/checkout"}}'
above = 0.5
profiler = "cpu"
frequency = 49
duration = "1s"
cooldown = "10m"
max_per_hour = 1
[[services.latency.triggers]]
kind = "prometheus"
url = "http://127.0.0.1:1/metrics"
metric = "never_there"
above = 1.0
profiler = "cpu"
duration = "1s"
cooldown = "10m"
max_per_hour = 1
"#
        ),
    )
    .expect("write config");
    let data = scratch("live-trigger-data");
    let mut busy = Command::new(&split).arg("60").spawn().expect("split");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);

    // Exec: a copy of `sleep` under a matching name, started after baton up.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let probe = scratch("exec-probe").join("baton-exec-probe");
    std::fs::copy("/bin/sleep", &probe).expect("copy sleep");
    let mut p = Command::new(&probe).arg("30").spawn().expect("probe");
    let run = eventually(20, "the exec trigger's run", || {
        triggered(&up.addr, "trigger:fresh#0").into_iter().next()
    });
    assert_eq!(run["target"], format!("pid:{}", p.id()).as_str(), "{run}");

    // Exec of a process that lives about a millisecond: BPF exec events still see it (polling
    // /proc would almost never). Its run then finds no process to profile.
    let quick = scratch("exec-quick").join("baton-exec-quick");
    std::fs::copy("/bin/true", &quick).expect("copy true");
    let q = Command::new(&quick).spawn().expect("quick");
    let quick_pid = q.id();
    let mut q = q;
    assert!(q.wait().expect("wait quick").success());
    let run = eventually(20, "the short-lived exec's trigger to fire", || {
        triggered(&up.addr, "trigger:quick#0").into_iter().next()
    });
    assert_eq!(run["target"], format!("pid:{quick_pid}").as_str(), "{run}");

    // RSS growth: about 20 MiB/s against a 5 MiB/s rule.
    let mut g = Command::new(&grow).arg("12").spawn().expect("grow");
    let run = eventually(20, "the rss_growth trigger's run", || {
        triggered(&up.addr, "trigger:grower#0").into_iter().next()
    });
    assert_eq!(run["target"], "service:grower", "{run}");

    // Prometheus: below the threshold for a few scrapes, nothing fires; the unreachable
    // endpoint is counted; above it, the rule fires.
    eventually(20, "a counted scrape error", || {
        (metric(&up.addr, "baton_trigger_scrape_errors_total") >= 1.0).then_some(())
    });
    assert!(
        triggered(&up.addr, "trigger:latency#0").is_empty(),
        "fired below the threshold"
    );
    value.store(0.9f64.to_bits(), Ordering::Relaxed);
    let run = eventually(20, "the prometheus trigger's run", || {
        triggered(&up.addr, "trigger:latency#0").into_iter().next()
    });
    assert_eq!(run["target"], "service:latency", "{run}");
    assert_eq!(run["frequency_hz"], 49, "the rule's frequency: {run}");
    // Every run ends cleanly, even the one on an idle process.
    for owner in ["trigger:fresh#0", "trigger:grower#0", "trigger:latency#0"] {
        eventually(20, &format!("{owner}'s run to end"), || {
            triggered(&up.addr, owner)
                .into_iter()
                .find(|r| r["state"] == "done")
        });
    }
    assert!(triggered(&up.addr, "trigger:latency#1").is_empty());
    for c in [&mut busy, &mut p, &mut g] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(up.stop().success());
}

#[test]
fn an_exec_trigger_starts_an_offcpu_run() {
    require_root();
    let sleeper = workload("sleeper");
    let cfg = scratch("offcpu-trigger-config");
    std::fs::write(
        cfg.join("t.toml"),
        r#"
[services.sleepers]
selector = { comm = "sleeper" }
[[services.sleepers.triggers]]
kind = "exec"
pattern = "*/sleeper"
profiler = "offcpu"
duration = "3s"
cooldown = "10m"
max_per_hour = 1
"#,
    )
    .expect("write config");
    let data = scratch("offcpu-trigger-data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    // 200 ms sleeps for 10 s, after a 0.3 s warm-up.
    let mut w = Command::new(&sleeper)
        .args(["0.3", "50"])
        .spawn()
        .expect("sleeper");
    let run = eventually(30, "the exec trigger's offcpu run to finish", || {
        triggered(&up.addr, "trigger:sleepers#0")
            .into_iter()
            .find(|r| r["state"] == "done")
    });
    eprintln!("run: {run}");
    assert_eq!(run["profiler"], "offcpu", "{run}");
    assert_eq!(run["target"], format!("pid:{}", w.id()).as_str(), "{run}");
    let id = run["id"].as_u64().expect("id");
    let secs = offcpu_seconds(&up.addr, &format!("run%3D{id}"));
    assert!(
        (1.5..=3.3).contains(&secs),
        "a 3 s triggered run stored {secs:.3} s off CPU"
    );
    let _ = w.kill();
    let _ = w.wait();
    up.stop();
}

#[test]
fn an_exec_trigger_starts_a_calls_run_with_the_configs_probe() {
    require_root();
    let calls = workload("calls");
    let cfg = scratch("calls-trigger-config");
    std::fs::write(
        cfg.join("t.toml"),
        r#"
[profilers.calls]
options = { probe = "counted" }

[services.counters]
selector = { comm = "calls" }
[[services.counters.triggers]]
kind = "exec"
pattern = "*/calls"
profiler = "calls"
duration = "4s"
cooldown = "10m"
max_per_hour = 1
"#,
    )
    .expect("write config");
    let data = scratch("calls-trigger-data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    // 1.5 s before its 12,345 calls: time for the trigger to fire and attach.
    let mut w = Command::new(&calls).arg("1.5").spawn().expect("calls");
    let run = eventually(30, "the exec trigger's calls run to finish", || {
        triggered(&up.addr, "trigger:counters#0")
            .into_iter()
            .find(|r| r["state"] == "done")
    });
    eprintln!("run: {run}");
    assert_eq!(run["profiler"], "calls", "{run}");
    let id = run["id"].as_u64().expect("id");
    let fg = http_json(
        &up.addr,
        &format!("/api/v1/flamegraph?profiler=calls&since=10m&filter=run%3D{id}"),
    );
    assert_eq!(fg["total"].as_f64(), Some(12_345.0), "{fg}");
    let _ = w.wait();
    up.stop();
}
