//! The web UI in headless Chromium (Debian's, driven by playwright-core from `tests/ui`), against
//! a real `baton up` profiling real workloads: Explore, Compare, Timeline, Runs, Fleet and
//! Config. Each scenario saves a screenshot under the artifacts directory (`ui/`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn now_ms() -> u64 {
    baton_model::time::now_ms() as u64
}

/// Where screenshots go: `ARTIFACTS/ui`.
pub fn ui_artifacts() -> PathBuf {
    let d = artifacts_dir().join("ui");
    std::fs::create_dir_all(&d).expect("create ui artifacts dir");
    d
}

/// Runs one scenario of `tests/ui/drive.mjs` and returns what it printed; panics with the
/// reason if a check failed.
pub fn drive(scenario: &str, base: &str, args: &serde_json::Value) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ui");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in tests/ui (scripts/install-deps.sh runs npm ci there)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is needed for the UI tests (scripts/install-deps.sh)"
    );
    let out = Command::new("node")
        .current_dir(&dir)
        .arg("drive.mjs")
        .arg(scenario)
        .arg(format!("http://{base}"))
        .arg(ui_artifacts())
        .arg(args.to_string())
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("[ui {scenario}] {text}");
    let line = text.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the {scenario} scenario printed no result: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && v["ok"] == true,
        "UI {scenario}: {}",
        v["error"]
    );
    assert!(
        ui_artifacts().join(format!("{scenario}.json")).exists(),
        "the {scenario} scenario wrote no result file"
    );
    v
}

fn post_run(addr: &str, body: &str) -> u64 {
    let (code, out) = http_req(addr, "POST", "/api/v1/runs", None, body.as_bytes());
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    v["id"].as_u64().expect("id")
}

#[test]
fn explore_compare_timeline_and_config_in_chromium() {
    require_root();
    let split = workload("split");
    let sleeper = workload("sleeper");
    let cfg = scratch("ui-config");
    std::fs::write(
        cfg.join("svc.toml"),
        "[services.split]\nselector = { comm = \"split\" }\n",
    )
    .expect("write config");
    let data = scratch("ui-data");
    let up = Up::start_with(&data, &["--config", cfg.to_str().expect("utf-8")]);

    // Explore: a 75/25 workload.
    let steady = Workload::spawn(Command::new(&split).arg("40"));
    // Until 4 s of its CPU time are stored (76 ticks at 19 Hz): a sleep of fixed length gave a
    // loaded machine's slow first windows too few ticks for a steady 75/25.
    let waited = std::time::Instant::now();
    eventually(60, "4 s of split's CPU time in the store", || {
        let rows = http_json(
            &up.addr,
            &format!(
                "/api/v1/top?since=15m&limit=20&filter=pid%3D{}",
                steady.id()
            ),
        )["rows"]
            .clone();
        let main =
            rows.as_array()?.iter().find(|r| r["function"] == "main")?["total_value"].as_f64()?;
        (main >= 4e9).then_some(())
    });
    eprintln!(
        "4 s of split's CPU time were stored {:.1} s after it started",
        waited.elapsed().as_secs_f64()
    );
    let v = drive(
        "explore",
        &up.addr,
        &serde_json::json!({ "pid": steady.id() }),
    );
    let share = v["share"].as_f64().expect("share");
    assert!((65.0..85.0).contains(&share), "leaf_hot matched {share}%");
    assert!(ui_artifacts().join("explore.png").exists());
    drop(steady);

    // Compare: 8 s at 75/25, then 8 s at 25/75; A and B are the two halves, a second apart
    // from the flip.
    let t0 = now_ms();
    let mut flip = Workload::spawn(Command::new(&split).args(["17", "8"]));
    let a = [t0 + 500, t0 + 7_000];
    let b = [t0 + 9_500, t0 + 16_000];
    // The sleeper, with an off-CPU run on it, for the timeline.
    let sleepy = Workload::spawn(Command::new(&sleeper).args(["0", "60"]));
    std::thread::sleep(Duration::from_secs(2));
    post_run(
        &up.addr,
        &format!(
            r#"{{"profiler":"offcpu","target":"pid:{}","duration":"5s"}}"#,
            sleepy.id()
        ),
    );
    std::thread::sleep(Duration::from_millis(
        (t0 + 18_000).saturating_sub(now_ms()),
    ));
    let v = drive(
        "compare",
        &up.addr,
        &serde_json::json!({ "pid": flip.id(), "a": a, "b": b }),
    );
    assert!(v["leaf_hot"]["delta"].as_f64().expect("delta") < -20.0);
    flip.wait();

    // Timeline: the sleeping thread's 200 ms intervals, and the CPU ticks of a busy process.
    let busy = Workload::spawn(Command::new(&split).arg("30"));
    std::thread::sleep(Duration::from_secs(4));
    let v = drive(
        "timeline",
        &up.addr,
        &serde_json::json!({ "pid": sleepy.id(), "cpu_pid": busy.id() }),
    );
    assert!(v["cpuTicks"].as_u64().expect("ticks") > 10);
    assert!(ui_artifacts().join("timeline.png").exists());
    drop(busy);
    drop(sleepy);

    // Config: a broken edit is shown with its file and line, the last good version in force.
    std::fs::write(cfg.join("broken.toml"), "[services.x]\nselector = 3\n").expect("write");
    eventually(20, "the broken edit to be rejected", || {
        let c = http_json(&up.addr, "/api/v1/config");
        (c["rejected"].as_u64() > Some(0)).then_some(())
    });
    drive(
        "config",
        &up.addr,
        &serde_json::json!({ "error": "broken.toml:2" }),
    );
    // Fleet, on baton up: this host, its overhead against its budget and its write budgets.
    drive("fleet", &up.addr, &serde_json::json!({}));
    assert!(up.stop().success());
}

#[test]
fn a_run_launched_from_the_form_reaches_done_and_links_to_its_profile() {
    require_root();
    let split = workload("split");
    let data = scratch("ui-runs-data");
    let up = Up::start(&data);
    let w = Workload::spawn(Command::new(&split).arg("60"));
    std::thread::sleep(Duration::from_secs(2));
    let v = drive("runs", &up.addr, &serde_json::json!({ "pid": w.id() }));
    let states: Vec<String> = v["states"]
        .as_array()
        .expect("states")
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    assert!(states.iter().any(|s| s == "done"), "{states:?}");
    assert!(ui_artifacts().join("runs-profile.png").exists());
    drop(w);
    assert!(up.stop().success());
}
