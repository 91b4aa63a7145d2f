//! Scheduler unit and property tests: exclusivity, caps, preemption, ceilings, triggers, tuner.

use baton_config::{load, SourceFile};
use proptest::prelude::*;

use super::*;

fn config(text: &str) -> Config {
    load(
        &[SourceFile {
            path: "t.toml".into(),
            text: text.to_string(),
        }],
        &["cpu"],
    )
    .expect("valid config")
}

/// The CPU profiler as the registry declares it (this crate does not depend on the registry).
fn cpu_spec() -> ProfilerSpec {
    ProfilerSpec {
        name: "cpu".into(),
        claims: vec![ResourceClaim {
            resource: "pmu".into(),
            sharing: Sharing::Exclusive,
        }],
        default_frequency: 19,
        max_frequency: 999,
        max_duration_ms: 3_600_000,
        costly_modes: Vec::new(),
    }
}

fn basic() -> Config {
    config("[host]\nmax_concurrent = 2\n[profilers.cpu]\nmax_duration = \"10m\"\nmax_frequency = 999\n")
}

fn sched(cfg: &Config) -> Scheduler {
    Scheduler::new(cfg, vec![cpu_spec()])
}

fn req(mode: Mode, secs: u64) -> JobRequest {
    JobRequest {
        profiler: "cpu".into(),
        host: "h1".into(),
        target: "pid:1".into(),
        mode,
        duration_ms: secs * 1000,
        frequency: None,
        priority: 0,
        force: false,
        owner: "test".into(),
        not_before: 0,
        weight: 1.0,
        options: Default::default(),
    }
}

#[test]
fn pmu_is_exclusive_second_run_waits_for_the_first() {
    let cfg = basic();
    let mut s = sched(&cfg);
    let a = s.submit(req(Mode::OnDemand, 10), 0).expect("a");
    let b = s.submit(req(Mode::OnDemand, 10), 0).expect("b");
    let d = s.tick(0);
    assert_eq!(
        d,
        vec![Decision::Start {
            run: a,
            host: "h1".into()
        }]
    );
    assert_eq!(s.run(b).expect("b").state, RunState::Queued);
    assert!(s.tick(5_000).is_empty());
    let d = s.tick(10_000);
    assert_eq!(
        d,
        vec![
            Decision::Stop {
                run: a,
                host: "h1".into()
            },
            Decision::Start {
                run: b,
                host: "h1".into()
            }
        ]
    );
    let (ra, rb) = (s.run(a).expect("a"), s.run(b).expect("b"));
    assert!(rb.started_at.expect("b started") >= ra.ended_at.expect("a ended"));
}

#[test]
fn on_demand_preempts_continuous_which_resumes_with_its_remaining_time() {
    let cfg = basic();
    let mut s = sched(&cfg);
    let cont = s
        .submit(
            req(
                Mode::Continuous {
                    service: "svc".into(),
                    rule: 0,
                },
                30,
            ),
            0,
        )
        .expect("c");
    s.tick(0);
    let od = s.submit(req(Mode::OnDemand, 5), 10_000).expect("od");
    let d = s.tick(10_000);
    assert_eq!(
        d,
        vec![
            Decision::Preempt {
                run: cont,
                host: "h1".into(),
                by: od
            },
            Decision::Start {
                run: od,
                host: "h1".into()
            }
        ]
    );
    assert_eq!(s.run(cont).expect("c").state, RunState::Suspended);
    assert_eq!(s.run(cont).expect("c").remaining_ms, 20_000);
    let d = s.tick(15_000);
    assert_eq!(
        d,
        vec![
            Decision::Stop {
                run: od,
                host: "h1".into()
            },
            Decision::Resume {
                run: cont,
                host: "h1".into()
            }
        ]
    );
    // 20 s left: it ends at 35 s, not 30 s.
    assert!(!s
        .tick(34_000)
        .iter()
        .any(|d| matches!(d, Decision::Stop { .. })));
    assert_eq!(
        s.tick(35_000),
        vec![Decision::Stop {
            run: cont,
            host: "h1".into()
        }]
    );
}

/// `next_end` is when the driver must tick next: the earliest end among running runs, which a
/// preemption moves and a resume counts from the resume with the time left.
#[test]
fn next_end_follows_preemption_and_resume() {
    let cfg = basic();
    let mut s = sched(&cfg);
    assert_eq!(s.next_end(), None);
    let cont = s
        .submit(
            req(
                Mode::Continuous {
                    service: "svc".into(),
                    rule: 0,
                },
                30,
            ),
            0,
        )
        .expect("c");
    assert_eq!(s.next_end(), None, "queued is not running");
    s.tick(0);
    assert_eq!(s.next_end(), Some(30_000));
    s.submit(req(Mode::OnDemand, 5), 10_000).expect("od");
    s.tick(10_000);
    assert_eq!(s.next_end(), Some(15_000), "the preempting run's end");
    s.tick(15_000);
    assert_eq!(s.run(cont).expect("c").state, RunState::Running);
    assert_eq!(s.next_end(), Some(35_000), "20 s left from the resume");
    s.tick(35_000);
    assert_eq!(s.next_end(), None);
}

#[test]
fn continuous_never_preempts() {
    let cfg = basic();
    let mut s = sched(&cfg);
    let od = s.submit(req(Mode::OnDemand, 30), 0).expect("od");
    s.tick(0);
    let c = s
        .submit(
            req(
                Mode::Continuous {
                    service: "s".into(),
                    rule: 0,
                },
                10,
            ),
            0,
        )
        .expect("c");
    assert!(s.tick(1_000).is_empty());
    assert_eq!(s.run(od).expect("od").state, RunState::Running);
    assert_eq!(s.run(c).expect("c").state, RunState::Queued);
}

#[test]
fn priority_then_fifo() {
    let cfg = basic();
    let mut s = sched(&cfg);
    let first = s.submit(req(Mode::OnDemand, 1), 0).expect("1");
    let low = s.submit(req(Mode::OnDemand, 1), 0).expect("2");
    let mut hi = req(Mode::OnDemand, 1);
    hi.priority = 9;
    let high = s.submit(hi, 0).expect("3");
    assert_eq!(
        s.tick(0),
        vec![Decision::Start {
            run: high,
            host: "h1".into()
        }]
    );
    assert!(s.tick(1_000).contains(&Decision::Start {
        run: first,
        host: "h1".into()
    }));
    assert!(s.tick(2_000).contains(&Decision::Start {
        run: low,
        host: "h1".into()
    }));
}

#[test]
fn hard_ceilings_hold_even_when_forced() {
    let cfg = basic();
    let mut s = sched(&cfg);
    let mut r = req(Mode::OnDemand, 3600);
    r.force = true;
    assert!(matches!(
        s.submit(r, 0),
        Err(SubmitError::DurationCeiling { .. })
    ));
    let mut r = req(Mode::OnDemand, 10);
    r.force = true;
    r.frequency = Some(5000);
    assert!(matches!(
        s.submit(r, 0),
        Err(SubmitError::FrequencyCeiling { .. })
    ));
}

#[test]
fn a_costly_mode_has_its_own_ceiling() {
    let cfg = basic();
    let mut spec = cpu_spec();
    spec.costly_modes.push(CostlyModeSpec {
        option: "mode".into(),
        value: "uprobe".into(),
        max_duration_ms: 300_000,
    });
    let mut s = Scheduler::new(&cfg, vec![spec]);
    let mut r = req(Mode::OnDemand, 400);
    r.options.insert("mode".into(), "uprobe".into());
    r.force = true;
    assert!(matches!(
        s.submit(r.clone(), 0),
        Err(SubmitError::CostlyModeCeiling {
            max_ms: 300_000,
            ..
        })
    ));
    r.duration_ms = 300_000;
    assert!(s.submit(r.clone(), 0).is_ok());
    // The default mode keeps the profiler's own ceiling.
    r.options.clear();
    r.duration_ms = 400_000;
    assert!(s.submit(r, 0).is_ok());
}

#[test]
fn groups_and_cap_are_soft_but_resources_are_hard() {
    // A made-up second profiler sharing nothing, to exercise the cap and groups.
    let cfg = config("[host]\nmax_concurrent = 1\n");
    let mut specs = vec![cpu_spec()];
    specs.push(ProfilerSpec {
        name: "calls".into(),
        claims: vec![ResourceClaim {
            resource: "uprobe:libc".into(),
            sharing: Sharing::SharedUpTo(2),
        }],
        default_frequency: 1,
        max_frequency: 1,
        max_duration_ms: 60_000,
        costly_modes: Vec::new(),
    });
    let mut s = Scheduler::new(&cfg, specs);
    s.submit(req(Mode::OnDemand, 10), 0).expect("cpu");
    let mut calls = req(Mode::OnDemand, 10);
    calls.profiler = "calls".into();
    let c = s.submit(calls.clone(), 0).expect("calls");
    s.tick(0);
    assert_eq!(
        s.run(c).expect("c").state,
        RunState::Queued,
        "the cap of 1 holds"
    );
    calls.force = true;
    let forced = s.submit(calls, 0).expect("forced");
    s.tick(1);
    assert_eq!(
        s.run(forced).expect("f").state,
        RunState::Running,
        "force passes the cap"
    );
    let mut cpu2 = req(Mode::OnDemand, 10);
    cpu2.force = true;
    let second_pmu = s.submit(cpu2, 1).expect("pmu2");
    s.tick(2);
    assert_eq!(
        s.run(second_pmu).expect("p").state,
        RunState::Queued,
        "force never double-books the PMU"
    );
}

#[test]
fn cancel_stops_and_frees() {
    let cfg = basic();
    let mut s = sched(&cfg);
    let a = s.submit(req(Mode::OnDemand, 10), 0).expect("a");
    let b = s.submit(req(Mode::OnDemand, 10), 0).expect("b");
    s.tick(0);
    assert_eq!(
        s.cancel(a, 1_000, "user").expect("ok"),
        Some(Decision::Stop {
            run: a,
            host: "h1".into()
        })
    );
    assert_eq!(s.run(a).expect("a").state, RunState::Cancelled);
    assert_eq!(
        s.tick(1_000),
        vec![Decision::Start {
            run: b,
            host: "h1".into()
        }]
    );
}

#[test]
fn trigger_fires_after_its_window_and_its_cooldown_holds() {
    let cfg = config(
        r#"
[services.web]
selector = { comm = "web" }
[[services.web.triggers]]
kind = "process_cpu"
above_percent = 80.0
for = "30s"
profiler = "cpu"
duration = "10s"
cooldown = "5m"
max_per_hour = 3
"#,
    );
    let mut t = TriggerEngine::default();
    let busy = |pct: f64| Observation::ProcessCpu {
        host: "h1".into(),
        service: "web".into(),
        percent: pct,
    };
    assert!(
        t.observe(&cfg, &busy(95.0), 0).is_empty(),
        "not yet held for 30 s"
    );
    assert!(t.observe(&cfg, &busy(95.0), 20_000).is_empty());
    let fired = t.observe(&cfg, &busy(95.0), 30_000);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].duration_ms, 10_000);
    // Held high again for 30 s, but within the 5 min cooldown: suppressed.
    assert!(t.observe(&cfg, &busy(95.0), 40_000).is_empty());
    assert!(t.observe(&cfg, &busy(95.0), 80_000).is_empty());
    assert!(t.suppressed[&("web".to_string(), 0)] >= 1);
    // A dip resets the window.
    assert!(t.observe(&cfg, &busy(10.0), 300_000).is_empty());
    assert!(t.observe(&cfg, &busy(95.0), 310_000).is_empty());
    assert_eq!(
        t.observe(&cfg, &busy(95.0), 345_000).len(),
        1,
        "fires again after cooldown + window"
    );
}

#[test]
fn trigger_hourly_cap_holds() {
    let cfg = config(
        r#"
[services.web]
selector = { comm = "web" }
[[services.web.triggers]]
kind = "host_cpu"
above_percent = 50.0
profiler = "cpu"
duration = "10s"
cooldown = "1s"
max_per_hour = 2
"#,
    );
    let mut t = TriggerEngine::default();
    let hot = Observation::HostCpu {
        host: "h".into(),
        service: "web".into(),
        percent: 99.0,
    };
    let fired: usize = (0..60)
        .map(|m| t.observe(&cfg, &hot, m * 60_000).len())
        .sum();
    assert_eq!(fired, 2);
    assert_eq!(
        t.observe(&cfg, &hot, 3_600_000 + 1).len(),
        1,
        "the hour rolls over"
    );
}

#[test]
fn tuner_converges_for_very_different_loads() {
    // Three services whose hosts yield 10, 1,000 and 100,000 samples per run: the tuner must
    // land each within ±10% of its target over simulated days.
    let cfg = config(
        r#"
[services.tiny]
selector = { comm = "tiny" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 20000, duration = "10s" }]
[services.mid]
selector = { comm = "mid" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 200000, duration = "10s" }]
[services.huge]
selector = { comm = "huge" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 500000, duration = "10s" }]
"#,
    );
    let fleet = Fleet::parse(
        r#"
[[group]]
name = "a"
count = 400
cpus = 64
services = { tiny = 0.05, mid = 2.0, huge = 40.0 }
"#,
    )
    .expect("fleet");
    // Four simulated days from an unseeded 5% start, re-tuned every 6 hours; judge the last day.
    let r = simulate(
        &cfg,
        vec![cpu_spec()],
        &fleet,
        4 * 86_400_000,
        10_000,
        6 * 3_600_000,
        false,
    )
    .expect("sim");
    assert_eq!(r.conflicts, 0);
    for s in &r.services {
        let ratio = s.settled_samples as f64 / s.settled_target as f64;
        eprintln!(
            "{}: last day {} of target {} ({ratio:.3}), p = {:?}",
            s.name, s.settled_samples, s.settled_target, s.probabilities
        );
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{}: last day {} vs target {} ({ratio:.3})",
            s.name,
            s.settled_samples,
            s.settled_target
        );
    }
}

/// Replays what a plan gave its tuner into a fresh fleet tuner, as the server would be fed.
fn replayed(r: &PlanReport, inputs: &[TunerInput], interval: Millis) -> FleetTuner {
    let mut t = FleetTuner::new(interval, 0.05, 0);
    for i in inputs {
        i.apply(&mut t, &r.tuned_rules);
    }
    t
}

#[test]
fn a_plan_reports_the_probabilities_the_fleet_tuner_computes_from_the_same_inputs() {
    let cfg = config(
        r#"
[services.web]
selector = { comm = "web" }
continuous = [
  { profiler = "cpu", target_samples_per_hour = 30000, duration = "10s" },
  { profiler = "cpu", target_samples_per_hour = 5000, duration = "20s" },
]
[services.db]
selector = { comm = "db" }
continuous = [{ profiler = "cpu", target_samples_per_hour = 40000, duration = "10s" }]
"#,
    );
    let fleet = Fleet::parse(
        "[[group]]\nname = \"a\"\ncount = 60\ncpus = 16\nservices = { web = 3.0, db = 1.0 }\n\
         [[group]]\nname = \"b\"\ncount = 25\ncpus = 8\nservices = { web = 0.5 }\n",
    )
    .expect("fleet");
    let hour = 3_600_000;
    for seed in [false, true] {
        let span = Span {
            span_ms: 8 * hour,
            tick_ms: 10_000,
            tuner_interval_ms: hour,
        };
        let (r, inputs) =
            simulate_recorded(&cfg, vec![cpu_spec()], &fleet, span, seed).expect("sim");
        assert!(
            r.host_chain.is_none(),
            "CPU rules apply: no whole-host chain"
        );
        assert!(inputs
            .iter()
            .any(|i| matches!(i, TunerInput::Observe { .. })));
        let t = replayed(&r, &inputs, span.tuner_interval_ms);
        for s in &r.services {
            for (i, p) in s.probabilities.iter().enumerate() {
                assert_eq!(*p, t.probability(&(s.name.clone(), i)), "{} #{i}", s.name);
                assert!(*p < 1.0, "{} #{i}: {p}", s.name);
            }
            // Tuned within the first slots and held, the fleet meets its targets.
            let ratio = s.settled_samples as f64 / s.settled_target as f64;
            assert!(
                (0.85..=1.15).contains(&ratio),
                "{}: {ratio:.3} (seed {seed})",
                s.name
            );
        }
    }
}

#[test]
fn whole_host_volume_stays_within_the_fleet_budget_as_hosts_are_added() {
    // No CPU rule: the whole-host chain runs, under a fleet budget of 2,000,000 rows an hour.
    // One host writes up to 99 Hz × 4 busy CPUs × 3,600 s = 1.4 million rows an hour.
    let cfg = config(
        "[tuner]\nhost_rows_per_hour = 2000000\n[profilers.cpu]\nfrequency = 99\n\
         [services.app]\nselector = { comm = \"app\" }\n",
    );
    let hour = 3_600_000;
    let span = Span {
        span_ms: 4 * hour,
        tick_ms: 10_000,
        tuner_interval_ms: hour,
    };
    let mut last = f64::INFINITY;
    for count in [20, 200, 2000] {
        let fleet = Fleet::parse(&format!(
            "[[group]]\nname = \"h\"\ncount = {count}\ncpus = 8\nservices = {{ app = 4.0 }}\n"
        ))
        .expect("fleet");
        let (r, inputs) =
            simulate_recorded(&cfg, vec![cpu_spec()], &fleet, span, false).expect("sim");
        let c = r
            .host_chain
            .clone()
            .expect("no CPU rule: the whole-host chain runs");
        eprintln!("{count} hosts: {c:?}");
        assert_eq!(c.window_seconds, 10);
        assert_eq!(c.target_rows_per_hour, 2_000_000);
        // The plan's probability is the fleet tuner's for the same inputs.
        let t = replayed(&r, &inputs, span.tuner_interval_ms);
        assert_eq!(c.probability, t.probability(&host_chain_key()));
        // More hosts, each drawn less often: the fleet stays within its budget (+15%).
        assert!(c.probability < last, "{count} hosts: p {}", c.probability);
        last = c.probability;
        let ratio = c.settled_rows as f64 / c.settled_target as f64;
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{count} hosts: {ratio:.3} of the budget"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random streams of submissions, cancellations, trigger observations and config changes
    /// (host cap, PMU sharing): no resource is held beyond its limit, no soft cap is passed
    /// without force, and every run ends within its hard ceiling (duration plus the time it
    /// spent preempted).
    #[test]
    fn invariants_hold_under_random_streams(
        ops in proptest::collection::vec((0u8..7, 0u8..3, 1u64..120, -2i32..3, any::<bool>(), 1u32..4), 1..120)
    ) {
        let limits = |cap: u32, shared: u32| config(&format!(
            "[host]\nmax_concurrent = {cap}\n[profilers.cpu]\nmax_duration = \"10m\"\nmax_frequency = 999\nresources = [{{ name = \"pmu\", shared = {shared} }}]\n\
             [services.s]\nselector = {{ comm = \"s\" }}\n[[services.s.triggers]]\nkind = \"process_cpu\"\nabove_percent = 50.0\nfor = \"1s\"\nprofiler = \"cpu\"\nduration = \"20s\"\ncooldown = \"30s\"\nmax_per_hour = 20\n"
        ));
        let mut cfg = limits(2, 1);
        let mut pmu_limit = 1usize;
        let mut s = sched(&cfg);
        let mut engine = TriggerEngine::default();
        let hosts = ["h0", "h1", "h2"];
        // Runs that were going when a config change lowered a limit may finish their time.
        let mut grandfathered = [0usize; 3];
        let mut over_cap = [0usize; 3];
        let mut now = 0;
        let mut submitted = Vec::new();
        for (op, host, secs, prio, force, cap) in ops {
            match op {
                0..=2 => {
                    let mode = match op {
                        0 => Mode::OnDemand,
                        1 => Mode::Continuous { service: "s".into(), rule: 0 },
                        _ => Mode::Triggered { service: "s".into(), rule: 0 },
                    };
                    let mut r = req(mode, secs);
                    r.host = hosts[host as usize].into();
                    r.priority = prio;
                    r.force = force && op == 0;
                    if let Ok(id) = s.submit(r, now) { submitted.push(id); }
                }
                3 => { if let Some(id) = submitted.get(secs as usize % submitted.len().max(1)) { let _ = s.cancel(*id, now, "test"); } }
                4 => {
                    let shared = if prio > 0 { 2 } else { 1 };
                    cfg = limits(cap, shared);
                    s.reconfigure(&cfg);
                    pmu_limit = shared as usize;
                    for (i, h) in hosts.iter().enumerate() {
                        grandfathered[i] = s.running_on(h).len();
                        over_cap[i] = s.running_on(h).len();
                    }
                }
                5 => {
                    let obs = Observation::ProcessCpu {
                        host: hosts[host as usize].into(),
                        service: "s".into(),
                        percent: (secs % 100) as f64,
                    };
                    for r in engine.observe(&cfg, &obs, now) {
                        if let Ok(id) = s.submit(r, now) { submitted.push(id); }
                    }
                }
                _ => {}
            }
            now += secs * 250;
            s.tick(now);
            for (i, h) in hosts.iter().enumerate() {
                let running = s.running_on(h);
                let pmu = running.iter().filter(|id| s.run(**id).is_some_and(|r| r.request.profiler == "cpu")).count();
                prop_assert!(pmu <= pmu_limit.max(grandfathered[i]), "PMU over its limit on {h}: {pmu} > {pmu_limit}");
                grandfathered[i] = grandfathered[i].min(pmu);
                let forced = running.iter().any(|id| s.run(*id).is_some_and(|r| r.request.force));
                let cap = (cfg.host.max_concurrent as usize).max(over_cap[i]);
                prop_assert!(forced || running.len() <= cap, "cap {cap} passed on {h}: {}", running.len());
                over_cap[i] = over_cap[i].min(running.len());
            }
            for r in s.runs() {
                if r.state == RunState::Running {
                    let ran = now - r.resumed_at.expect("running has resumed_at");
                    prop_assert!(ran <= r.remaining_ms + 250 * 120, "run {} overran", r.id);
                    prop_assert!(r.request.duration_ms <= s.spec("cpu").expect("spec").max_duration_ms);
                }
            }
        }
        // Drain: one start per host and tick at most, so tick until the queues are empty;
        // every run must end.
        for _ in 0..400 {
            now += 11 * 60_000;
            s.tick(now);
        }
        for r in s.runs() {
            prop_assert!(
                !matches!(r.state, RunState::Running | RunState::Queued | RunState::Suspended),
                "run {} never ended ({:?})", r.id, r.state
            );
        }
    }
}
