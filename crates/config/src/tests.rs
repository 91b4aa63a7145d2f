//! Unit tests of whole-tree validation.

use super::*;

const KNOWN: &[&str] = &["cpu", "offcpu"];

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: PathBuf::from(path),
        text: text.to_string(),
    }
}

fn problems(files: &[SourceFile]) -> Vec<String> {
    match load(files, KNOWN) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

const GOOD: &str = r#"
[host]
max_concurrent = 3
overhead_budget_percent = 0.5

[host.concurrency_groups.sched]
max = 1
profilers = ["cpu", "offcpu"]

[profilers.cpu]
frequency = 49
max_duration = "10m"

[services.checkout]
selector = { cgroup = "/system.slice/checkout.service" }
labels = { team = "payments" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 100000, duration = "30s" }]

[[services.checkout.triggers]]
kind = "process_cpu"
above_percent = 90.0
for = "30s"
profiler = "cpu"
duration = "20s"
cooldown = "10m"
max_per_hour = 2
"#;

#[test]
fn a_good_tree_loads() {
    let cfg = load(&[file("baton.toml", GOOD)], KNOWN).expect("valid");
    assert_eq!(cfg.host.max_concurrent, 3);
    assert_eq!(cfg.profilers["cpu"].frequency, Some(49));
    let svc = &cfg.services["checkout"];
    assert_eq!(svc.continuous[0].target_samples_per_hour, 100_000);
    assert_eq!(
        svc.continuous[0].duration,
        std::time::Duration::from_secs(30)
    );
    assert!(matches!(
        svc.triggers[0].condition,
        TriggerCondition::ProcessCpu { .. }
    ));
    assert_eq!(cfg.version.len(), 16);
}

#[test]
fn a_mistyped_key_is_named_with_file_line_col_and_a_hint() {
    let p = problems(&[file(
        "profilers/cpu.toml",
        "[profilers.cpu]\nfrequncy = 49\n",
    )]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("profilers/cpu.toml:2:1: unknown key `frequncy`"),
        "{}",
        p[0]
    );
    assert!(p[0].contains("did you mean `frequency`?"), "{}", p[0]);
}

#[test]
fn every_problem_in_the_tree_is_reported_at_once() {
    let bad = r#"
[services.api]
selector = { cgroup = "system.slice/api.service", unit = "api" }
continuous = [{ profiler = "cpux", target_samples_per_hour = 0, duration = "ten seconds" }]
"#;
    let p = problems(&[
        file("a.toml", bad),
        file("b.toml", "[profilers.gpu]\nfrequency = 99999\n"),
    ]);
    let all = p.join("\n");
    for needle in [
        "a.toml:3:23: bad selector cgroup",
        "bad selector unit `api`",
        "unknown profiler `cpux`",
        "did you mean `cpu`?",
        "target_samples_per_hour must be at least 1",
        "duration: bad duration",
        "b.toml:1:12: unknown profiler `gpu`",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn duplicates_across_files_name_both_places() {
    let p = problems(&[
        file("a.toml", "[host]\nmax_concurrent = 2\n"),
        file("b.toml", "\n[host]\nmax_concurrent = 3\n"),
    ]);
    assert!(
        p.iter()
            .any(|m| m.starts_with("b.toml:") && m.contains("first at a.toml:1")),
        "{p:?}"
    );
}

#[test]
fn triggers_need_their_fields_and_refuse_others() {
    let t = r#"
[services.s]
selector = { comm = "app" }
[[services.s.triggers]]
kind = "host_cpu"
pattern = "/usr/bin/*"
profiler = "cpu"
duration = "10s"
cooldown = "1m"
max_per_hour = 1
"#;
    let p = problems(&[file("t.toml", t)]).join("\n");
    assert!(
        p.contains("a `host_cpu` trigger needs `above_percent`"),
        "{p}"
    );
    assert!(
        p.contains("`pattern` does not apply to a `host_cpu` trigger"),
        "{p}"
    );
    let t2 = t.replace("host_cpu", "hots_cpu");
    let p = problems(&[file("t.toml", &t2)]).join("\n");
    assert!(
        p.contains("unknown trigger kind `hots_cpu`") && p.contains("did you mean `host_cpu`?"),
        "{p}"
    );
}

#[test]
fn syntax_errors_have_a_location() {
    let p = problems(&[file("x.toml", "[host\nmax_concurrent = 2\n")]);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("x.toml:1:"), "{}", p[0]);
}

#[test]
fn the_version_changes_with_content() {
    let a = version_of(&[file("a.toml", "[host]\n")]);
    let b = version_of(&[file("a.toml", "[host]\nmax_concurrent = 1\n")]);
    assert_ne!(a, b);
}

#[test]
fn suggestions_stay_close() {
    assert_eq!(
        validate::suggest("frequncy", ["frequency", "window"].into_iter()),
        Some("frequency")
    );
    assert_eq!(
        validate::suggest("zzz", ["frequency", "window"].into_iter()),
        None
    );
}

#[test]
fn selectors_match_subtrees_units_names_and_paths() {
    let s = Selector {
        cgroup: Some("/kubepods/burstable".into()),
        unit: Some("nginx.service".into()),
        comm: Some("redis-server".into()),
        exe: Some("/usr/bin/envoy".into()),
    };
    assert!(s.matches(Some("/kubepods/burstable"), None, None));
    assert!(s.matches(Some("/kubepods/burstable/pod1/c2"), None, None));
    assert!(!s.matches(Some("/kubepods/burstable2"), None, None));
    assert!(s.matches(Some("/system.slice/nginx.service"), None, None));
    assert!(s.matches(Some("/user.slice/nginx.service/x"), None, None));
    assert!(!s.matches(Some("/system.slice/nginx.service2"), None, None));
    assert!(s.matches(None, Some("redis-server"), None));
    assert!(s.matches(None, None, Some("/usr/bin/envoy")));
    assert!(!s.matches(Some("/"), Some("bash"), Some("/bin/bash")));
    let root = Selector {
        cgroup: Some("/".into()),
        ..Default::default()
    };
    assert!(root.matches(Some("/anything/at/all"), None, None));
}

#[test]
fn a_service_write_budget_is_validated() {
    let ok = load(
        &[file(
            "s.toml",
            "[services.a]\nselector = { comm = \"a\" }\nwrite_budget_rows_per_minute = 500\n",
        )],
        &["cpu"],
    )
    .expect("valid");
    assert_eq!(ok.services["a"].write_budget_rows_per_minute, Some(500));
    let p = problems(&[file(
        "s.toml",
        "[services.a]\nselector = { comm = \"a\" }\nwrite_budget_rows_per_minute = 0\n",
    )]);
    assert!(
        p.iter()
            .any(|p| p.starts_with("s.toml:3:") && p.contains("at least 1")),
        "{p:?}"
    );
}

#[test]
fn profiler_resources_are_checked_and_typed() {
    let ok = load(
        &[file(
            "p.toml",
            "[profilers.cpu]\nresources = [{ name = \"pmu\", shared = 2 }, { name = \"tracepoint:sched:sched_switch\" }, { name = \"gpu:0\" }, { name = \"cupti\" }]\n",
        )],
        KNOWN,
    )
    .expect("valid");
    let r = ok.profilers["cpu"].resources.as_ref().expect("resources");
    assert_eq!(
        r,
        &vec![
            ResourceSpec {
                name: "pmu".into(),
                shared: Some(2)
            },
            ResourceSpec {
                name: "tracepoint:sched:sched_switch".into(),
                shared: None
            },
            ResourceSpec {
                name: "gpu:0".into(),
                shared: None
            },
            ResourceSpec {
                name: "cupti".into(),
                shared: None
            },
        ]
    );
    let p = problems(&[file(
        "p.toml",
        "[profilers.cpu]\nresources = [{ name = \"pmv\" }, { name = \"uprobe:\" }, { name = \"pmu\", shared = 0 }]\n",
    )]);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].starts_with("p.toml:2:23: bad resource `pmv`"),
        "{}",
        p[0]
    );
    assert!(p[0].contains("did you mean `pmu`?"), "{}", p[0]);
    assert!(p[1].contains("bad resource `uprobe:`"), "{}", p[1]);
    assert!(p[2].contains("shared must be at least 1"), "{}", p[2]);
}

#[test]
fn trigger_frequency_url_and_metric_are_checked() {
    let base = |extra: &str| {
        format!(
            "[services.a]\nselector = {{ comm = \"a\" }}\n[[services.a.triggers]]\nkind = \"prometheus\"\nprofiler = \"cpu\"\nduration = \"5s\"\ncooldown = \"1m\"\nmax_per_hour = 1\nabove = 1.0\n{extra}"
        )
    };
    let ok = load(
        &[file(
            "t.toml",
            &base("url = \"http://h:9/metrics\"\nmetric = 'lat{route=\"/a\",code=\"200\"}'\nfrequency = 49\n"),
        )],
        KNOWN,
    )
    .expect("valid");
    assert_eq!(ok.services["a"].triggers[0].frequency, Some(49));
    let p = problems(&[file(
        "t.toml",
        &base("url = \"https://h:9/metrics\"\nmetric = \"lat\"\n"),
    )]);
    assert!(
        p.len() == 1 && p[0].starts_with("t.toml:10:7:") && p[0].contains("TLS"),
        "{p:?}"
    );
    let p = problems(&[file(
        "t.toml",
        &base("url = \"http://h:9/metrics\"\nmetric = \"9lat\"\n"),
    )]);
    assert!(p.len() == 1 && p[0].contains("bad metric `9lat`"), "{p:?}");
    let p = problems(&[file(
        "t.toml",
        &base("url = \"http://h:9/metrics\"\nmetric = \"lat{route=a}\"\n"),
    )]);
    assert!(p.len() == 1 && p[0].contains("label matchers"), "{p:?}");
    let p = problems(&[file(
        "t.toml",
        &base("url = \"http://h:9/metrics\"\nmetric = \"lat\"\nfrequency = 100000\n"),
    )]);
    assert!(p.len() == 1 && p[0].starts_with("t.toml:12:"), "{p:?}");
}

#[test]
fn profiler_options_are_checked_against_the_names_given() {
    let files = vec![SourceFile {
        path: "p.toml".into(),
        text: "[profilers.calls]\noptions = { probes = \"handle_*\", latency = true }\n".into(),
    }];
    let names = |p: &str| (p == "calls").then(|| vec!["probe", "latency", "stacks"]);
    let e = crate::load_checked(&files, &["calls"], &names)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("p.toml:2:22") && e.contains("did you mean `probe`"),
        "{e}"
    );
    let ok = vec![SourceFile {
        path: "p.toml".into(),
        text: "[profilers.calls]\noptions = { probe = \"handle_*\", latency = true }\n".into(),
    }];
    let cfg = crate::load_checked(&ok, &["calls"], &names).expect("valid");
    assert_eq!(cfg.profilers["calls"].options["latency"], "true");
}

#[test]
fn the_fleet_host_row_budget_has_a_default_and_is_validated() {
    let none = load(&[file("b.toml", "[host]\nmax_concurrent = 2\n")], KNOWN).expect("valid");
    assert_eq!(none.tuner.host_rows_per_hour, 1_000_000);
    let set = load(
        &[file(
            "b.toml",
            "[tuner]\ninterval = \"30s\"\nhost_rows_per_hour = 5000\n",
        )],
        KNOWN,
    )
    .expect("valid");
    assert_eq!(set.tuner.host_rows_per_hour, 5000);
    assert_eq!(set.tuner.interval, std::time::Duration::from_secs(30));
    let p = problems(&[file("b.toml", "[tuner]\n\nhost_rows_per_hour = 0\n")]);
    assert!(
        p.iter()
            .any(|p| p.starts_with("b.toml:3:")
                && p.contains("host_rows_per_hour must be at least 1")),
        "{p:?}"
    );
}

#[test]
fn growth_triggers_take_a_for_and_the_runs_options() {
    let text = r#"[services.api]
selector = { comm = "api" }

[[services.api.triggers]]
kind = "heap_growth"
bytes_per_second = 1048576
for = "30s"
profiler = "malloc"
duration = "20s"
cooldown = "10m"
max_per_hour = 2
options = { mode = "uprobe", sample_bytes = 0 }

[[services.api.triggers]]
kind = "rss_growth"
bytes_per_second = 1048576
profiler = "malloc"
duration = "20s"
cooldown = "10m"
max_per_hour = 2
"#;
    let names = |p: &str| (p == "malloc").then(|| vec!["mode", "sample_bytes"]);
    let cfg = crate::load_checked(&[file("g.toml", text)], &["malloc"], &names).expect("valid");
    let t = &cfg.services["api"].triggers;
    assert_eq!(
        t[0].condition,
        TriggerCondition::HeapGrowth {
            bytes_per_second: 1 << 20,
            for_: Some(std::time::Duration::from_secs(30)),
        }
    );
    assert_eq!(t[0].options["mode"], "uprobe");
    assert_eq!(t[0].options["sample_bytes"], "0");
    assert_eq!(
        t[1].condition,
        TriggerCondition::RssGrowth {
            bytes_per_second: 1 << 20,
            for_: None,
        }
    );
    assert!(t[1].options.is_empty());

    // A misspelt option, a bad `for` and a `for`-less kind's `for`, each at its line.
    let bad = text
        .replace("sample_bytes = 0", "sample_byte = 0")
        .replace("for = \"30s\"", "for = \"soon\"")
        .replace(
            "kind = \"rss_growth\"",
            "kind = \"host_cpu\"\nabove_percent = 50.0\nfor = \"1m\"",
        )
        .replace(
            "bytes_per_second = 1048576\nprofiler = \"malloc\"\nduration",
            "profiler = \"malloc\"\nduration",
        );
    let e = crate::load_checked(&[file("g.toml", &bad)], &["malloc"], &names)
        .unwrap_err()
        .to_string();
    assert!(e.contains("g.toml:7:") && e.contains("for: "), "{e}");
    assert!(
        e.contains("g.toml:12:") && e.contains("did you mean `sample_bytes`"),
        "{e}"
    );
    assert!(
        e.contains("g.toml:17:") && e.contains("`for` does not apply to a `host_cpu` trigger"),
        "{e}"
    );
}

#[test]
fn fdo_refresh_is_read_and_checked_on_cpu_rules_only() {
    let ok = file(
        "svc.toml",
        r#"
[services.app]
selector = { comm = "app" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 1000, duration = "10s", fdo = "24h", fdo_every = "30m" }]
"#,
    );
    let cfg = load(&[ok], KNOWN).expect("valid");
    let fdo = cfg.services["app"].continuous[0].fdo.clone().expect("fdo");
    assert_eq!(fdo.window, std::time::Duration::from_secs(86_400));
    assert_eq!(fdo.every, std::time::Duration::from_secs(1_800));
    let bad = file(
        "svc.toml",
        r#"
[services.app]
selector = { comm = "app" }
continuous = [
  { profiler = "offcpu", target_samples_per_hour = 1000, duration = "10s", fdo = "24h" },
  { profiler = "cpu", target_samples_per_hour = 1000, duration = "10s", fdo_every = "1h" },
  { profiler = "cpu", target_samples_per_hour = 1000, duration = "10s", fdo = "soon" },
]
"#,
    );
    let p = problems(&[bad]);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].starts_with("svc.toml:5:") && p[0].contains("cpu rule"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("svc.toml:6:") && p[1].contains("needs fdo"),
        "{p:?}"
    );
    assert!(
        p[2].starts_with("svc.toml:7:") && p[2].contains("fdo:"),
        "{p:?}"
    );
}

#[test]
fn service_labels_must_be_storable_names_that_are_not_columns() {
    let text = "[services.a]\nselector = { comm = \"a\" }\nlabels = { team = \"pay\", Tier = \"1\", pid = \"2\" }\n";
    let p = problems(&[file("s.toml", text)]);
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].starts_with("s.toml:3:") && p[0].contains("`Tier`"),
        "{p:?}"
    );
    assert!(p[1].contains("`pid` is one Baton sets itself"), "{p:?}");
}

#[test]
fn stack_schema_rules_load_global_and_per_service() {
    let text = r#"
[[stack_schema]]
match = "^sqlite3_"
tag = "component=db"

[[stack_schema]]
collapse = "^std::"

[services.web]
selector = { comm = "web" }

[[services.web.stack_schema]]
match = "^SSL_"
frame_tag = "layer=tls"
"#;
    let cfg = load(&[file("s.toml", text)], KNOWN).expect("valid");
    let rules: Vec<String> = cfg
        .stack_schema
        .rules
        .iter()
        .map(|r| r.describe())
        .collect();
    assert_eq!(
        rules,
        vec![
            "[web] frame_tag layer=tls at ^SSL_",
            "tag component=db when ^sqlite3_",
            "collapse ^std::"
        ]
    );
}

#[test]
fn a_broken_stack_schema_rule_is_rejected_at_its_line_and_column() {
    let text = "[[stack_schema]]\nmatch = \"^(sqlite\"\ntag = \"component=db\"\n\n[[stack_schema]]\ndrop = \"x\"\ncollapse = \"y\"\n\n[[stack_schema]]\nmatch = \"a\"\ntag = \"Pid=1\"\n";
    let p = problems(&[file("s.toml", text)]);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].starts_with("s.toml:2:9: regular expression"), "{p:?}");
    assert!(
        p[1].starts_with("s.toml:5:1:") && p[1].contains("exactly one"),
        "{p:?}"
    );
    assert!(
        p[2].starts_with("s.toml:11:7:") && p[2].contains("`Pid`"),
        "{p:?}"
    );
}

#[test]
fn a_trace_url_needs_an_http_address_with_the_trace_id() {
    let ok = load(
        &[file(
            "ui.toml",
            "[ui]\ntrace_url = \"https://t.example/trace/{trace_id}?s={span_id}\"\n",
        )],
        KNOWN,
    )
    .expect("valid");
    assert_eq!(
        ok.trace_url.as_deref(),
        Some("https://t.example/trace/{trace_id}?s={span_id}")
    );
    let p = problems(&[file(
        "ui.toml",
        "[ui]\ntrace_url = \"https://t.example/trace\"\n",
    )]);
    assert!(
        p.len() == 1 && p[0].starts_with("ui.toml:2:13: trace_url"),
        "{p:?}"
    );
}
