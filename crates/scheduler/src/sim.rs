//! Fleet simulation for `baton plan`: the real scheduler, tuner and trigger engine over a fleet
//! described in TOML, on a simulated clock.
//!
//! ```toml
//! [[group]]
//! name = "web"            # hosts are named web-0, web-1, …
//! count = 6000
//! cpus = 32
//! services = { checkout = 6.0, search = 1.5 }   # busy CPUs each service uses on each host
//! ```
//!
//! The model: a run of a CPU-style profiler at `f` Hz for `d` seconds on a host where the service
//! keeps `b` CPUs busy yields `f × d × b` samples. Load follows a daily curve (±25% around the
//! given figure, peaking mid-day) so triggers and the tuner see change. When the config has no
//! CPU rule, the whole-host chain runs: each host draws each window against the fleet row budget,
//! and a window stores at most one row per sample (`f × window × all the host's busy CPUs`).
//!
//! The plan tunes with the fleet server's own [`FleetTuner`] and the hosts' own draws, fed as the
//! server feeds it: the hosts per service, then each ended run's samples as the host reports them.

use std::collections::{BTreeMap, HashMap};

use baton_config::Config;
use serde::{Deserialize, Serialize};

use crate::continuous::{host_key, host_window_draw, slot_rules};
use crate::fleet_tuner::{host_chain_key, tuned_rules, FleetTuner, RuleKey, TunedRule};
use crate::{Decision, Millis, Mode, ProfilerSpec, Scheduler, Sharing, TriggerEngine};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(rename = "group")]
    pub groups: Vec<HostGroup>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostGroup {
    pub name: String,
    pub count: u32,
    pub cpus: u32,
    #[serde(default)]
    pub services: BTreeMap<String, f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet file: {0}")]
    Parse(String),
    #[error(
        "fleet file: group {group:?} uses service {service:?}, which the config does not define"
    )]
    UnknownService { group: String, service: String },
}

impl Fleet {
    pub fn parse(text: &str) -> Result<Fleet, FleetError> {
        toml::from_str(text).map_err(|e| FleetError::Parse(e.to_string()))
    }

    pub fn hosts(&self) -> u64 {
        self.groups.iter().map(|g| u64::from(g.count)).sum()
    }
}

/// What the plan says of one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub name: String,
    pub hosts: u64,
    /// Target over the simulated span (per-hour target × hours).
    pub target_samples: u64,
    /// Raw samples the continuous runs would collect over the span.
    pub expected_samples: u64,
    /// Samples over the last 24 h of the span (the whole span if shorter), once tuned.
    pub settled_samples: u64,
    /// The target over that same window.
    pub settled_target: u64,
    pub target_samples_per_hour: u64,
    pub continuous_runs: u64,
    pub triggered_runs: u64,
    pub trigger_firings: u64,
    pub trigger_suppressed: u64,
    /// Final run probability per continuous rule.
    pub probabilities: Vec<f64>,
    /// Peak sample rows per minute one host would write, against the host write budget.
    pub peak_rows_per_minute_per_host: u64,
    pub write_budget_rows_per_minute: u64,
}

/// What the plan says of the whole-host chain, when the config has no CPU rule.
#[derive(Debug, Clone, Serialize)]
pub struct HostChainPlan {
    pub window_seconds: u64,
    /// The fleet budget, `[tuner] host_rows_per_hour`.
    pub target_rows_per_hour: u64,
    /// Rows the fleet would store over the span, and the budget over it.
    pub expected_rows: u64,
    pub target_rows: u64,
    /// Rows over the last 24 h of the span (the whole span if shorter), and the budget over it.
    pub settled_rows: u64,
    pub settled_target: u64,
    pub windows_stored: u64,
    /// Final probability that a host stores a window.
    pub probability: f64,
}

/// One input the plan gave its tuner, in order: replayed into another [`FleetTuner`], it gives
/// the same probabilities.
#[derive(Debug, Clone, PartialEq)]
pub enum TunerInput {
    SeedYield {
        key: RuleKey,
        yield_per_hit: f64,
    },
    Population {
        key: RuleKey,
        hosts: u64,
        now: Millis,
    },
    Observe {
        host: String,
        key: RuleKey,
        hits: u64,
        samples: u64,
        now: Millis,
    },
    Retune {
        now: Millis,
    },
}

impl TunerInput {
    /// Gives this input to `tuner`.
    pub fn apply(&self, tuner: &mut FleetTuner, rules: &[TunedRule]) {
        match self {
            TunerInput::SeedYield { key, yield_per_hit } => tuner.seed_yield(key, *yield_per_hit),
            TunerInput::Population { key, hosts, now } => tuner.set_population(key, *hosts, *now),
            TunerInput::Observe {
                host,
                key,
                hits,
                samples,
                now,
            } => tuner.observe(host, key, *hits, *samples, *now),
            TunerInput::Retune { now } => {
                tuner.maybe_retune(*now, rules);
            }
        }
    }
}

/// The plan's tuner, recording its inputs when asked.
struct SimTuner {
    tuner: FleetTuner,
    rules: Vec<TunedRule>,
    log: Option<Vec<TunerInput>>,
}

impl SimTuner {
    fn give(&mut self, input: TunerInput) {
        input.apply(&mut self.tuner, &self.rules);
        if let Some(log) = &mut self.log {
            log.push(input);
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub hosts: u64,
    pub simulated_seconds: u64,
    pub tick_seconds: u64,
    pub tuner_interval_seconds: u64,
    /// Exclusive resources double-booked or caps exceeded, as checked after every tick. Must be 0.
    pub conflicts: u64,
    pub peak_concurrent_per_host: u32,
    pub preemptions: u64,
    pub services: Vec<ServicePlan>,
    /// The whole-host chain, when the config has no CPU rule.
    pub host_chain: Option<HostChainPlan>,
    /// The rules the tuner tuned, as the fleet server would build them.
    pub tuned_rules: Vec<TunedRule>,
    /// Median scheduler time per host per tick, in nanoseconds (filled by the caller that
    /// times the run).
    pub decisions: u64,
}

struct SimHost {
    name: String,
    cpus: u32,
    services: Vec<(String, f64)>,
}

/// Daily load factor in [0.75, 1.25], peaking at noon.
fn load_factor(t: Millis) -> f64 {
    let day = (t % 86_400_000) as f64 / 86_400_000.0;
    1.0 - 0.25 * (2.0 * std::f64::consts::PI * day).cos()
}

/// Runs the fleet for `span_ms` with a tick of `tick_ms`. The tuner re-tunes every
/// `tuner_interval_ms` (the config's interval, or shorter to plan a day quickly).
///
/// With `seed`, each rule's yield per hit is computed from the fleet's average load (a plan
/// knows the fleet), and the tuner starts from the probability it gives; without it the tuner
/// starts from 5% and must find its own way, which is what the convergence test checks.
pub fn simulate(
    config: &Config,
    specs: Vec<ProfilerSpec>,
    fleet: &Fleet,
    span_ms: Millis,
    tick_ms: Millis,
    tuner_interval_ms: Millis,
    seed: bool,
) -> Result<PlanReport, FleetError> {
    let span = Span {
        span_ms,
        tick_ms,
        tuner_interval_ms,
    };
    run(config, specs, fleet, span, seed, false).map(|(r, _)| r)
}

/// [`simulate`], also returning every input its tuner was given, in order.
pub fn simulate_recorded(
    config: &Config,
    specs: Vec<ProfilerSpec>,
    fleet: &Fleet,
    span: Span,
    seed: bool,
) -> Result<(PlanReport, Vec<TunerInput>), FleetError> {
    run(config, specs, fleet, span, seed, true).map(|(r, log)| (r, log.unwrap_or_default()))
}

/// The simulated time: how long, in which steps, and the tuner's period.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub span_ms: Millis,
    pub tick_ms: Millis,
    pub tuner_interval_ms: Millis,
}

/// The whole-host chain's window: the config's `[profilers.cpu] window`, else 10 s, never under
/// 1 s (as the host's driver has it).
fn host_window_ms(config: &Config) -> Millis {
    config
        .profilers
        .get("cpu")
        .and_then(|p| p.window)
        .map_or(10_000, |w| w.as_millis() as Millis)
        .max(1_000)
}

fn run(
    config: &Config,
    specs: Vec<ProfilerSpec>,
    fleet: &Fleet,
    span: Span,
    seed: bool,
    record: bool,
) -> Result<(PlanReport, Option<Vec<TunerInput>>), FleetError> {
    let Span {
        span_ms,
        tick_ms,
        tuner_interval_ms,
    } = span;
    for g in &fleet.groups {
        for s in g.services.keys() {
            if !config.services.contains_key(s) {
                return Err(FleetError::UnknownService {
                    group: g.name.clone(),
                    service: s.clone(),
                });
            }
        }
    }
    let mut sched = Scheduler::new(config, specs);
    let mut triggers = TriggerEngine::default();
    let window_ms = host_window_ms(config);
    let mut tuner = SimTuner {
        tuner: FleetTuner::new(tuner_interval_ms, 0.05, 0),
        rules: tuned_rules(config, window_ms),
        log: record.then(Vec::new),
    };
    let chain = host_chain_key();
    let chain_on = tuner.rules.iter().any(|r| r.key == chain);
    let cpu_frequency = sched.spec("cpu").map_or(19, |s| s.default_frequency) as f64;

    let mut hosts = Vec::new();
    for g in &fleet.groups {
        for i in 0..g.count {
            hosts.push(SimHost {
                name: format!("{}-{i}", g.name),
                cpus: g.cpus,
                services: g.services.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            });
        }
    }
    let host_keys: Vec<u64> = hosts.iter().map(|h| host_key(&h.name)).collect();
    let host_index: HashMap<String, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.clone(), i))
        .collect();

    let rules = slot_rules(config);
    // Rows one window of the whole-host chain stores on a host at load factor `lf`.
    let window_rows = |h: &SimHost, lf: f64| {
        let busy: f64 = h.services.iter().map(|(_, b)| b * lf).sum();
        (cpu_frequency * window_ms as f64 / 1000.0 * busy.min(f64::from(h.cpus))).round() as u64
    };
    // A plan knows its fleet: seeded, the tuner starts from each rule's mean yield per hit at
    // the day's mean load, so it needs no quick first re-tune and plans the steady state.
    if seed && chain_on && !hosts.is_empty() {
        let rows: u64 = hosts.iter().map(|h| window_rows(h, 1.0)).sum();
        tuner.give(TunerInput::SeedYield {
            key: chain.clone(),
            yield_per_hit: rows as f64 / hosts.len() as f64,
        });
    }
    for r in rules.iter().filter(|_| seed) {
        let freq = r
            .frequency
            .or_else(|| sched.spec(&r.profiler).map(|s| s.default_frequency))
            .unwrap_or(19) as f64;
        let busy: Vec<f64> = hosts
            .iter()
            .filter_map(|h| {
                h.services
                    .iter()
                    .find(|(s, _)| *s == r.service)
                    .map(|(_, b)| b.min(f64::from(h.cpus)))
            })
            .collect();
        if !busy.is_empty() {
            let mean = busy.iter().sum::<f64>() / busy.len() as f64;
            tuner.give(TunerInput::SeedYield {
                key: r.key(),
                yield_per_hit: mean * freq * r.duration_ms as f64 / 1000.0,
            });
        }
    }
    let hosts_of: HashMap<&str, Vec<usize>> = {
        let mut m: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            for (s, _) in &h.services {
                if let Some(name) = config
                    .services
                    .get_key_value(s.as_str())
                    .map(|(k, _)| k.as_str())
                {
                    m.entry(name).or_default().push(i);
                }
            }
        }
        m
    };
    // The hosts of each service, as the server learns them from heartbeats.
    for r in &rules {
        let hosts = hosts_of
            .get(r.service.as_str())
            .map_or(0, |v| v.len() as u64);
        tuner.give(TunerInput::Population {
            key: r.key(),
            hosts,
            now: 0,
        });
    }
    if chain_on {
        tuner.give(TunerInput::Population {
            key: chain.clone(),
            hosts: hosts.len() as u64,
            now: 0,
        });
    }
    // The tuner knows the rules before the first draw.
    tuner.give(TunerInput::Retune { now: 0 });
    let mut rows = Acc::default();
    let mut next_window_end = window_ms;

    #[derive(Default)]
    struct Acc {
        expected: u64,
        settled: u64,
        continuous_runs: u64,
        triggered_runs: u64,
        peak_rows: u64,
    }
    let mut acc: HashMap<String, Acc> = config
        .services
        .keys()
        .map(|k| (k.clone(), Acc::default()))
        .collect();
    let mut conflicts = 0u64;
    let mut peak = 0u32;
    let mut preemptions = 0u64;
    let mut decisions = 0u64;
    let settled_from = span_ms.saturating_sub(86_400_000);
    let settled_hours = (span_ms - settled_from) as f64 / 3_600_000.0;

    let mut now: Millis = 0;
    while now < span_ms {
        // Continuous: at each slot start, each host draws against the tuned probability.
        for r in &rules {
            if now % r.slot_ms >= tick_ms {
                continue;
            }
            let slot_no = r.slot_of(now);
            let p = tuner.tuner.probability(&r.key());
            let Some(list) = hosts_of.get(r.service.as_str()) else {
                continue;
            };
            for &hi in list {
                if let Some(req) = r.draw(host_keys[hi], &hosts[hi].name, slot_no, p, now) {
                    let _ = sched.submit(req, now);
                }
            }
        }
        // Triggers: every minute, per host and service, the observed load.
        if now % 60_000 < tick_ms {
            let lf = load_factor(now);
            for h in &hosts {
                let busy: f64 = h.services.iter().map(|(_, b)| b * lf).sum();
                let host_pct = 100.0 * busy / f64::from(h.cpus.max(1));
                for (svc, b) in &h.services {
                    for obs in [
                        crate::Observation::HostCpu {
                            host: h.name.clone(),
                            service: svc.clone(),
                            percent: host_pct,
                        },
                        crate::Observation::ProcessCpu {
                            host: h.name.clone(),
                            service: svc.clone(),
                            percent: 100.0 * b * lf,
                        },
                    ] {
                        for req in triggers.observe(config, &obs, now) {
                            let _ = sched.submit(req, now);
                        }
                    }
                }
            }
        }
        let out = sched.tick(now);
        decisions += out.len() as u64;
        for d in &out {
            match d {
                Decision::Preempt { .. } => preemptions += 1,
                Decision::Stop { run, host } => {
                    let Some(r) = sched.run(*run).cloned() else {
                        continue;
                    };
                    let hi = host_index[host];
                    let (svc, rule, continuous) = match &r.request.mode {
                        Mode::Continuous { service, rule } => (service.clone(), *rule, true),
                        Mode::Triggered { service, rule } => (service.clone(), *rule, false),
                        Mode::OnDemand => continue,
                    };
                    let busy = hosts[hi]
                        .services
                        .iter()
                        .find(|(s, _)| *s == svc)
                        .map(|(_, b)| b * load_factor(now))
                        .unwrap_or(0.0)
                        .min(f64::from(hosts[hi].cpus));
                    let secs = r.request.duration_ms as f64 / 1000.0;
                    let samples = (r.frequency as f64 * secs * busy).round() as u64;
                    sched.finish(*run, samples, None);
                    let a = acc.get_mut(&svc).expect("service known");
                    let rows_per_min = (samples as f64 / secs.max(1.0) * 60.0) as u64;
                    a.peak_rows = a.peak_rows.max(rows_per_min);
                    if continuous {
                        a.expected += samples;
                        a.continuous_runs += 1;
                        if now >= settled_from {
                            a.settled += samples;
                        }
                        tuner.give(TunerInput::Observe {
                            host: host.clone(),
                            key: (svc, rule),
                            hits: 1,
                            samples,
                            now,
                        });
                    } else {
                        a.triggered_runs += 1;
                    }
                }
                _ => {}
            }
        }
        // Independent check of the safety rules on every host where something started: only
        // a start can break them.
        let mut touched: Vec<&str> = out
            .iter()
            .filter_map(|d| match d {
                Decision::Start { host, .. } | Decision::Resume { host, .. } => Some(host.as_str()),
                _ => None,
            })
            .collect();
        touched.sort_unstable();
        touched.dedup();
        for h in touched {
            let running = sched.running_on(h);
            peak = peak.max(running.len() as u32);
            let forced = running
                .iter()
                .any(|id| sched.run(*id).is_some_and(|r| r.request.force));
            if !forced && running.len() as u32 > config.host.max_concurrent {
                conflicts += 1;
            }
            let mut held: HashMap<&str, u32> = HashMap::new();
            for id in running {
                let Some(r) = sched.run(*id) else { continue };
                let Some(spec) = sched.spec(&r.request.profiler) else {
                    continue;
                };
                for c in &spec.claims {
                    let n = held.entry(c.resource.as_str()).or_default();
                    *n += 1;
                    let limit = match c.sharing {
                        Sharing::Exclusive => 1,
                        Sharing::SharedUpTo(n) => n,
                    };
                    if *n > limit {
                        conflicts += 1;
                    }
                }
            }
        }
        // The whole-host chain: each window that ended, each host stores it if drawn.
        while chain_on && next_window_end <= now {
            let window = next_window_end / window_ms - 1;
            let p = tuner.tuner.probability(&chain);
            let lf = load_factor(next_window_end);
            for (hi, h) in hosts.iter().enumerate() {
                if host_window_draw(host_keys[hi], window, p) {
                    let n = window_rows(h, lf);
                    rows.continuous_runs += 1;
                    rows.expected += n;
                    if next_window_end > settled_from {
                        rows.settled += n;
                    }
                    tuner.give(TunerInput::Observe {
                        host: h.name.clone(),
                        key: chain.clone(),
                        hits: 1,
                        samples: n,
                        now: next_window_end,
                    });
                }
            }
            next_window_end += window_ms;
        }
        tuner.give(TunerInput::Retune { now });
        if now % 3_600_000 < tick_ms {
            sched.forget_ended(now.saturating_sub(600_000));
        }
        now += tick_ms;
    }

    let hours = span_ms as f64 / 3_600_000.0;
    let mut services = Vec::new();
    for (name, svc) in &config.services {
        let a = &acc[name];
        let per_hour: u64 = svc
            .continuous
            .iter()
            .map(|c| c.target_samples_per_hour)
            .sum();
        let fired: u64 = (0..svc.triggers.len())
            .map(|i| triggers.fired.get(&(name.clone(), i)).copied().unwrap_or(0))
            .sum();
        let suppressed: u64 = (0..svc.triggers.len())
            .map(|i| {
                triggers
                    .suppressed
                    .get(&(name.clone(), i))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        services.push(ServicePlan {
            name: name.clone(),
            hosts: hosts_of
                .get(name.as_str())
                .map(|v| v.len() as u64)
                .unwrap_or(0),
            target_samples: (per_hour as f64 * hours).round() as u64,
            expected_samples: a.expected,
            settled_samples: a.settled,
            settled_target: (per_hour as f64 * settled_hours).round() as u64,
            target_samples_per_hour: per_hour,
            continuous_runs: a.continuous_runs,
            triggered_runs: a.triggered_runs,
            trigger_firings: fired,
            trigger_suppressed: suppressed,
            probabilities: (0..svc.continuous.len())
                .map(|i| tuner.tuner.probability(&(name.clone(), i)))
                .collect(),
            peak_rows_per_minute_per_host: a.peak_rows,
            // A service with its own budget is held to it; the rest to the host's.
            write_budget_rows_per_minute: svc
                .write_budget_rows_per_minute
                .unwrap_or(config.host.write_budget_rows_per_minute),
        });
    }
    let host_chain = chain_on.then(|| {
        let per_hour = config.tuner.host_rows_per_hour;
        HostChainPlan {
            window_seconds: window_ms / 1000,
            target_rows_per_hour: per_hour,
            expected_rows: rows.expected,
            target_rows: (per_hour as f64 * hours).round() as u64,
            settled_rows: rows.settled,
            settled_target: (per_hour as f64 * settled_hours).round() as u64,
            windows_stored: rows.continuous_runs,
            probability: tuner.tuner.probability(&chain),
        }
    });
    let report = PlanReport {
        hosts: hosts.len() as u64,
        simulated_seconds: span_ms / 1000,
        tick_seconds: tick_ms / 1000,
        tuner_interval_seconds: tuner_interval_ms / 1000,
        conflicts,
        peak_concurrent_per_host: peak,
        preemptions,
        services,
        host_chain,
        tuned_rules: tuner.rules,
        decisions,
    };
    Ok((report, tuner.log))
}
