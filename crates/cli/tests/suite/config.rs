//! `baton config check` on the shipped example tree and on a broken copy of it.

use std::path::Path;

use crate::harness::*;

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read example dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config")
}

#[test]
fn the_example_tree_is_valid() {
    let out = run(baton().args(["config", "check"]).arg(examples()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 services"));
}

#[test]
fn a_broken_tree_is_rejected_with_file_line_col() {
    let dir = scratch("broken-config");
    copy_tree(&examples(), &dir);
    let cpu = dir.join("profilers/cpu.toml");
    let text = std::fs::read_to_string(&cpu)
        .expect("read")
        .replace("frequency = 19 ", "frequncy = 19 ");
    std::fs::write(&cpu, text).expect("write");
    let search = dir.join("services/search.toml");
    let text = std::fs::read_to_string(&search)
        .expect("read")
        .replacen("profiler = \"cpu\"", "profiler = \"cpux\"", 1)
        .replacen("duration = \"30s\"", "duration = \"soon\"", 1);
    std::fs::write(&search, text).expect("write");

    let out = run(baton().args(["config", "check"]).arg(&dir));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let cpu_at = format!("{}:3:1: unknown key `frequncy`", cpu.display());
    assert!(err.contains(&cpu_at), "{err}");
    assert!(err.contains("did you mean `frequency`?"), "{err}");
    assert!(
        err.contains(&format!(
            "{}:5:16: unknown profiler `cpux`",
            search.display()
        )),
        "{err}"
    );
    assert!(err.contains("duration: bad duration \"soon\""), "{err}");

    let out = run(baton().args(["config", "check", "--json"]).arg(&dir));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"].as_array().expect("problems").len(), 3);
}

#[test]
fn up_reloads_a_good_edit_and_keeps_the_last_good_config_on_a_bad_one() {
    require_root();
    let dir = scratch("live-config");
    copy_tree(&examples(), &dir);
    let data = scratch("live-config-data");
    let up = Up::start_with(&data, &["--config", dir.to_str().expect("utf-8 path")]);
    let first = http_json(&up.addr, "/api/v1/config");
    let v1 = first["version"].as_str().expect("version").to_string();
    assert_eq!(http_json(&up.addr, "/api/v1/status")["frequency_hz"], 19);

    // A broken edit: rejected with file:line, counted, and the old version stays live.
    let cpu = dir.join("profilers/cpu.toml");
    let good = std::fs::read_to_string(&cpu).expect("read");
    std::fs::write(&cpu, good.replace("frequency = 19 ", "frequncy = 49 ")).expect("write");
    let cfg = eventually(20, "the bad edit to be rejected", || {
        let c = http_json(&up.addr, "/api/v1/config");
        (c["rejected"] == 1).then_some(c)
    });
    assert_eq!(
        cfg["version"],
        v1.as_str(),
        "the last good config must stay live"
    );
    let errors = cfg["last_errors"].to_string();
    assert!(
        errors.contains("profilers/cpu.toml:3:1: unknown key `frequncy`"),
        "{errors}"
    );
    let (_, metrics) = http_get(&up.addr, "/metrics");
    assert!(String::from_utf8_lossy(&metrics).contains("baton_config_rejected_total 1"));
    assert_eq!(http_json(&up.addr, "/api/v1/status")["frequency_hz"], 19);

    // A good edit: picked up without a restart, and the profiler runs at the new rate.
    std::fs::write(&cpu, good.replace("frequency = 19 ", "frequency = 49 ")).expect("write");
    eventually(20, "the good edit to apply", || {
        let c = http_json(&up.addr, "/api/v1/config");
        let s = http_json(&up.addr, "/api/v1/status");
        (c["version"] != v1.as_str() && c["reloads"] == 1 && s["frequency_hz"] == 49).then_some(())
    });
    let out = run(baton().args(["config", "show", "--server", &format!("http://{}", up.addr)]));
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["config"]["profilers"]["cpu"]["frequency"], 49);
    assert!(up.stop().success());
    // Both changes are in the audit log: the rejected one and the accepted one.
    let audit = std::fs::read_to_string(data.join("audit.log")).expect("audit log");
    let changes: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "config_change")
        .collect();
    assert_eq!(changes.len(), 2, "{audit}");
    assert_eq!(changes[0]["accepted"], false);
    assert_eq!(changes[1]["accepted"], true);
}

#[test]
fn up_refuses_to_start_on_a_broken_tree() {
    require_root();
    let dir = scratch("broken-start");
    std::fs::write(dir.join("baton.toml"), "[host]\nmax_concurent = 2\n").expect("write");
    let data = scratch("broken-start-data");
    let out = run(baton()
        .args(["up", "--listen", "127.0.0.1:0", "--config"])
        .arg(&dir)
        .arg("--data")
        .arg(&data));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("baton.toml:2:1: unknown key `max_concurent`")
            && err.contains("did you mean `max_concurrent`?"),
        "{err}"
    );
}

#[test]
fn a_write_budget_over_limit_downsamples_or_refuses_and_counts_it() {
    require_root();
    let split = workload("split");
    let dir = scratch("budget-config");
    // One row per second: every window of the busy host is over budget.
    std::fs::write(
        dir.join("baton.toml"),
        "[host]\nwrite_budget_rows_per_minute = 60\n",
    )
    .expect("write");
    let data = scratch("budget-data");
    let up = Up::start_with(
        &data,
        &[
            "--config",
            dir.to_str().expect("utf-8"),
            "--frequency",
            "99",
        ],
    );
    let mut w = std::process::Command::new(&split)
        .arg("30")
        .spawn()
        .expect("workload");
    let metric = |name: &str| -> f64 {
        let (_, m) = http_get(&up.addr, "/metrics");
        String::from_utf8_lossy(&m)
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name} "))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0.0)
    };
    eventually(40, "a down-sampled or refused batch", || {
        (metric("baton_write_budget_downsampled_batches_total")
            + metric("baton_write_budget_refused_batches_total")
            >= 1.0)
            .then_some(())
    });
    // A down-sampled batch may by chance keep every row; the host stays over budget, so rows
    // are dropped soon enough.
    eventually(40, "dropped rows to be counted", || {
        (metric("baton_write_budget_dropped_rows_total") >= 1.0).then_some(())
    });
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn a_service_over_its_own_write_budget_is_cut_alone() {
    require_root();
    let split = workload("split");
    let dir = scratch("service-budget-config");
    // No continuous rules: the whole host is profiled, and rows of `split` are attributed to
    // the service by its selector, then held to the service's tiny budget.
    std::fs::write(
        dir.join("svc.toml"),
        "[services.busy]\nselector = { comm = \"split\" }\nwrite_budget_rows_per_minute = 20\n",
    )
    .expect("write");
    let data = scratch("service-budget-data");
    let up = Up::start_with(
        &data,
        &[
            "--config",
            dir.to_str().expect("utf-8"),
            "--frequency",
            "99",
        ],
    );
    // `split` makes two or three distinct rows a window: it runs until the end of the test, so
    // the 20-row bucket (full at the start, refilled by one row every 3 s) surely runs out. At 8 s
    // of work it sometimes never did.
    let mut w = std::process::Command::new(&split)
        .arg("60")
        .spawn()
        .expect("workload");
    let budgets = eventually(40, "the service budget to act", || {
        let st = http_json(&up.addr, "/api/v1/status");
        let b = st["write_budgets"].clone();
        let svc = &b["service:busy"];
        let acted = svc["batches_downsampled"].as_u64()? + svc["batches_refused"].as_u64()?;
        (acted >= 1 && svc["rows_dropped"].as_u64()? >= 1).then_some(b)
    });
    eprintln!("budgets: {budgets}");
    // The host's own budget was never touched: only the service was cut.
    // (No `cpu` entry yet means no batch reached it: nothing cut there either.)
    let host_cut = |k: &str| {
        budgets
            .get("cpu")
            .map_or(0, |c| c[k].as_u64().expect("a write budget's counter"))
    };
    assert_eq!(host_cut("batches_refused"), 0, "{budgets}");
    assert_eq!(host_cut("batches_downsampled"), 0, "{budgets}");
    // Rows kept are labelled with the service.
    eventually(20, "rows labelled with the service", || {
        let v = http_json(&up.addr, "/api/v1/labels/service?since=10m");
        v["values"]
            .as_array()?
            .iter()
            .any(|x| x["value"] == "busy")
            .then_some(())
    });
    let _ = w.kill();
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn the_overhead_guard_lowers_the_frequency_then_stops_when_over_budget() {
    require_root();
    let dir = scratch("guard-config");
    // A budget no profiler can meet: the guard must act, and say so.
    std::fs::write(
        dir.join("baton.toml"),
        "[host]\noverhead_budget_percent = 0.0001\noverhead_check_interval = \"2s\"\n",
    )
    .expect("write");
    let data = scratch("guard-data");
    let up = Up::start_with(
        &data,
        &[
            "--config",
            dir.to_str().expect("utf-8"),
            "--frequency",
            "99",
        ],
    );
    let split = workload("split");
    let mut w = std::process::Command::new(&split)
        .arg("8")
        .spawn()
        .expect("workload");
    // It halves the frequency at each check over budget (99, 49, 24, …, 1): the first lower
    // frequency seen is one of those halvings, and not 1 (the checks are 2 s apart, the status
    // is read every 0.5 s).
    let chain: Vec<u64> =
        std::iter::successors(Some(99u64), |f| (*f > 1).then(|| (f / 2).max(1))).collect();
    let first = eventually(40, "the guard to lower the frequency", || {
        let s = http_json(&up.addr, "/api/v1/status");
        s["frequency_hz"].as_u64().filter(|&f| f < 99)
    });
    eprintln!("first lowered frequency: {first} Hz (halvings: {chain:?})");
    assert!(
        chain.contains(&first) && first > 1,
        "the guard went from 99 Hz to {first} Hz, not by halving"
    );
    let (_, m) = http_get(&up.addr, "/metrics");
    let m = String::from_utf8_lossy(&m).to_string();
    let throttled: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("baton_overhead_throttled_total ")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0);
    assert!(throttled >= 1.0, "{m}");
    assert!(m.contains("baton_overhead_percent "));
    // Still over budget at 1 Hz: continuous profiling stops, with its own counter.
    eventually(60, "the guard to stop continuous profiling", || {
        let (_, m) = http_get(&up.addr, "/metrics");
        String::from_utf8_lossy(&m)
            .lines()
            .find_map(|l| {
                l.strip_prefix("baton_overhead_stopped_total ")
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .filter(|v| *v >= 1.0)
    });
    assert_eq!(http_json(&up.addr, "/api/v1/status")["frequency_hz"], 1);
    let _ = w.wait();
    assert!(up.stop().success());
}

#[test]
fn service_labels_are_stored_with_samples_so_queries_answer_as_the_config_was_then() {
    require_root();
    let split = workload("split");
    let dir = scratch("service-labels-config");
    let svc = dir.join("svc.toml");
    let text = |team: &str| {
        format!("[services.spin]\nselector = {{ comm = \"split\" }}\nlabels = {{ team = \"{team}\" }}\n")
    };
    std::fs::write(&svc, text("red")).expect("write");
    let data = scratch("service-labels-data");
    let up = Up::start_with(&data, &["--config", dir.to_str().expect("utf-8")]);
    let w = Workload::spawn(std::process::Command::new(&split).arg("60"));
    let teams = |up: &Up| -> Vec<String> {
        let v = http_json(&up.addr, "/api/v1/labels/team?since=10m");
        v["values"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["value"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually(30, "samples labelled team=red", || {
        teams(&up).contains(&"red".to_string()).then_some(())
    });
    std::fs::write(&svc, text("blue")).expect("write");
    eventually(30, "samples labelled team=blue after the edit", || {
        teams(&up).contains(&"blue".to_string()).then_some(())
    });
    // The samples written before the edit keep the label they had: both answer.
    let both = teams(&up);
    assert!(both.contains(&"red".to_string()), "{both:?}");
    let red = http_json(&up.addr, "/api/v1/top?since=10m&filter=team%3Dred&limit=1");
    assert!(red["total"].as_f64().unwrap_or(0.0) > 0.0, "{red}");
    drop(w);
    assert!(up.stop().success());
}

#[test]
fn stack_schema_rules_tag_collapse_and_count_at_query_time() {
    require_root();
    let split = workload("split");
    let dir = scratch("schema-config");
    let rules = dir.join("schema.toml");
    let good = "[[stack_schema]]\nmatch = \"^leaf_hot$\"\ntag = \"component=hot\"\n\n\
                [[stack_schema]]\ncollapse = \"^(mid|main)$\"\n";
    std::fs::write(&rules, good).expect("write");
    let data = scratch("schema-data");
    let up = Up::start_with(&data, &["--config", dir.to_str().expect("utf-8")]);
    let server = format!("http://{}", up.addr);
    let mut w = Workload::spawn(std::process::Command::new(&split).arg("4"));
    let pid = w.id();
    let out = run(baton()
        .args(["run", "cpu", "--target", &format!("pid:{pid}")])
        .args([
            "--duration",
            "3s",
            "--wait",
            "--format",
            "json",
            "--server",
            &server,
        ]));
    assert!(
        out.status.success(),
        "run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    w.wait();
    // The run's own samples (the whole-host profile of the same process goes on being
    // written) no longer change once it is done.
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run json");
    let id = done["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no run id: {done}"));
    let filter = format!("filter=run%3D{id}");
    let top = eventually(10, "the run's samples", || {
        let t = http_json(
            &up.addr,
            &format!("/api/v1/top?since=10m&{filter}&limit=50"),
        );
        (t["total"].as_f64()? > 0.0).then_some(t)
    });
    let rows = top["rows"].as_array().cloned().unwrap_or_default();
    let row = |f: &str| rows.iter().find(|r| r["function"] == f).cloned();
    let hot = row("leaf_hot").expect("leaf_hot in the top table");
    // The tagged share equals the function's total share.
    let tags = http_json(
        &up.addr,
        &format!("/api/v1/labels/component?since=10m&{filter}"),
    );
    let tagged = tags["values"][0]["total"].as_f64().unwrap_or(0.0);
    let total = top["total"].as_f64().unwrap_or(0.0);
    let want = hot["total_value"].as_f64().unwrap_or(-1.0);
    assert!(
        (tagged - want).abs() < 1e-6 * total.max(1.0),
        "tagged {tagged}, leaf_hot {want}: {tags}"
    );
    assert!(
        (60.0..90.0).contains(&(100.0 * tagged / total)),
        "{tags} of {total}"
    );
    // Filtered by the tag: only leaf_hot's stacks.
    let only = http_json(
        &up.addr,
        &format!("/api/v1/top?since=10m&{filter}&filter=component%3Dhot"),
    );
    assert!(
        (only["total"].as_f64().unwrap_or(0.0) - want).abs() < 1e-6 * total.max(1.0),
        "{only}"
    );
    // The collapse removes mid (main stays, where the run was entered) and keeps the total.
    assert!(row("mid").is_none(), "mid was not collapsed: {rows:?}");
    assert!(row("main").is_some(), "{rows:?}");
    let comms = http_json(&up.addr, &format!("/api/v1/labels/comm?since=10m&{filter}"));
    let by_comm: f64 = comms["values"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["total"].as_f64()).sum())
        .unwrap_or(0.0);
    assert!(
        (by_comm - total).abs() < 1e-6 * total.max(1.0),
        "{by_comm} vs {total}"
    );
    // The UI groups by the tag, and offers pods and namespaces as filters.
    let dom = chromium_dom(&format!(
        "http://{}/explore?profiler=cpu&since=10m&{filter}&by=component",
        up.addr
    ));
    assert!(
        dom.contains("data-by-value=\"hot\""),
        "no group-by row for the tag:\n{dom}"
    );
    assert!(
        dom.contains("id=\"f-pod\"") && dom.contains("id=\"f-namespace\""),
        "{dom}"
    );
    // `baton config check --server` counts what each rule matches there.
    let out = run(baton().args([
        "config",
        "check",
        dir.to_str().expect("utf-8"),
        "--server",
        &server,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("tag component=hot when ^leaf_hot$"))
        .unwrap_or_else(|| panic!("no count of the tag rule:\n{text}"));
    let stacks: u64 = line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(stacks >= 1, "{line}");
    // A broken rule is rejected with file:line:col, and the last good rules stay live.
    std::fs::write(&rules, good.replace("^leaf_hot$", "^(leaf_hot")).expect("write");
    let cfg = eventually(20, "the broken rule to be rejected", || {
        let c = http_json(&up.addr, "/api/v1/config");
        (c["rejected"] == 1).then_some(c)
    });
    let errors = cfg["last_errors"].to_string();
    assert!(
        errors.contains("schema.toml:2:9: regular expression"),
        "{errors}"
    );
    let again = http_json(
        &up.addr,
        &format!("/api/v1/labels/component?since=10m&{filter}"),
    );
    assert_eq!(
        again["values"][0]["total"], tags["values"][0]["total"],
        "{again}"
    );
    assert!(up.stop().success());
}
