//! The orchestrator's decision logic, as pure code with the time injected.
//!
//! [`Scheduler`] holds the runs of a fleet and decides, at each [`Scheduler::tick`], which runs
//! start, which are preempted, which resume and which end. It never reads a clock, a file or a
//! socket: `baton up` drives it with the wall clock, `baton plan` with a simulated one.
//!
//! Safety rules:
//! - a resource claimed *exclusive* (the PMU) is never held by two runs on one host, and a
//!   resource *shared up to N* never by more than N: even a forced run cannot break this;
//! - the per-host cap and the concurrency groups are soft limits: only a forced run bypasses them;
//! - duration and frequency never pass a profiler's hard ceilings, forced or not;
//! - on-demand and triggered runs preempt continuous ones that stand in their way; the
//!   continuous run resumes with its remaining time once it can.

pub mod budget;
pub mod continuous;
pub mod fleet_tuner;
mod sim;
mod triggers;
mod tuner;

use std::collections::{BTreeMap, HashMap};

use baton_config::{Config, HostLimits};
use serde::Serialize;

pub use budget::{keep_row, Admission, BudgetStats, WriteBudgets};
pub use fleet_tuner::{
    fleet_probability, host_chain_key, tuned_rules, FleetTuner, FleetTunerState, RuleKey,
    RuleState, TunedRule,
};
pub use sim::{
    simulate, simulate_recorded, Fleet, FleetError, HostChainPlan, HostGroup, PlanReport,
    ServicePlan, Span, TunerInput,
};
pub use triggers::{Observation, TriggerEngine};
pub use tuner::Tuner;

/// Milliseconds on the scheduler's clock (wall or simulated).
pub type Millis = u64;

/// How a resource may be shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Sharing {
    Exclusive,
    SharedUpTo(u32),
}

/// A host resource a profiler claims while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceClaim {
    /// E.g. `pmu`, `tracepoint:sched_switch`, `uprobe:libc`, `gpu:0`.
    pub resource: String,
    pub sharing: Sharing,
}

impl ResourceClaim {
    /// A claim on `resource`, shared by at most `shared` runs, or exclusive when `None` (as
    /// profilers, ad-hoc headers and the config declare it).
    pub fn new(resource: impl Into<String>, shared: Option<u32>) -> ResourceClaim {
        ResourceClaim {
            resource: resource.into(),
            sharing: match shared {
                None => Sharing::Exclusive,
                Some(n) => Sharing::SharedUpTo(n),
            },
        }
    }
}

/// What the scheduler needs to know about a profiler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfilerSpec {
    pub name: String,
    pub claims: Vec<ResourceClaim>,
    pub default_frequency: u64,
    /// Hard ceilings: no run passes them, forced or not.
    pub max_frequency: u64,
    pub max_duration_ms: Millis,
    /// Modes an option selects that cost more, each with its own longest run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub costly_modes: Vec<CostlyModeSpec>,
}

/// A costly mode (`mode=uprobe`) and the longest run the scheduler accepts in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostlyModeSpec {
    pub option: String,
    pub value: String,
    pub max_duration_ms: Millis,
}

impl ProfilerSpec {
    /// The spec a registered profiler declares (claims, frequencies), before config.
    pub fn from_info(info: &baton_model::ProfilerInfo) -> ProfilerSpec {
        ProfilerSpec {
            name: info.name.into(),
            claims: info
                .claims
                .iter()
                .map(|c| ResourceClaim::new(c.resource, c.shared))
                .collect(),
            default_frequency: info.default_frequency,
            max_frequency: info.max_frequency,
            max_duration_ms: 3_600_000,
            costly_modes: info
                .costly_modes
                .iter()
                .map(|m| CostlyModeSpec {
                    option: m.option.into(),
                    value: m.value.into(),
                    max_duration_ms: m.max_duration_s * 1000,
                })
                .collect(),
        }
    }

    /// The spec an ad-hoc profiler's header declares: its resources and its longest run.
    pub fn from_adhoc(def: &baton_config::adhoc::AdhocDef) -> ProfilerSpec {
        ProfilerSpec {
            name: def.name.clone(),
            claims: def
                .resources
                .iter()
                .map(|r| ResourceClaim::new(r.name.as_str(), r.shared))
                .collect(),
            default_frequency: 0,
            max_frequency: 0,
            max_duration_ms: def.max_duration.as_millis() as Millis,
            costly_modes: Vec::new(),
        }
    }

    /// This spec with the config's `[profilers.NAME]` overrides applied.
    pub fn configured(&self, config: &Config) -> ProfilerSpec {
        let mut spec = self.clone();
        let name = self.name.as_str();
        if let Some(o) = config.profilers.get(name) {
            if let Some(f) = o.frequency {
                spec.default_frequency = f;
            }
            if let Some(f) = o.max_frequency {
                spec.max_frequency = f;
            }
            if let Some(d) = o.max_duration {
                spec.max_duration_ms = d.as_millis() as Millis;
            }
            if let Some(list) = &o.resources {
                spec.claims = list
                    .iter()
                    .map(|r| ResourceClaim::new(r.name.as_str(), r.shared))
                    .collect();
            }
        }
        spec
    }
}

/// Why a run exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    Continuous { service: String, rule: usize },
    OnDemand,
    Triggered { service: String, rule: usize },
}

/// A request for a run on one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRequest {
    pub profiler: String,
    pub host: String,
    /// What to profile: `pid:1234`, `comm:NAME`, `exe:PATH`, `cgroup:PATH`, `service:NAME`.
    pub target: String,
    pub mode: Mode,
    pub duration_ms: Millis,
    pub frequency: Option<u64>,
    /// Higher runs first; FIFO within a priority.
    pub priority: i32,
    /// Bypass the soft limits (cap, groups). Audited by the caller.
    pub force: bool,
    pub owner: String,
    /// Do not start before this time (spreads continuous runs across their slot).
    pub not_before: Millis,
    /// The weight every sample of the run carries: `slot / (duration × p)` (`10 / p`) for a
    /// continuous run drawn with probability `p`, as it covers a tenth of its slot; `1 / p`
    /// for a whole-host window drawn at `p` (windows tile time); 1 for the rest.
    pub weight: f64,
    /// Profiler-specific options (`sample_bytes`, `probe`…), checked by the profiler.
    pub options: std::collections::BTreeMap<String, String>,
}

/// A run's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    /// Preempted; resumes with its remaining time.
    Suspended,
    Processing,
    Done,
    Failed,
    Cancelled,
}

impl RunState {
    /// The state as the API and the agents' reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Suspended => "suspended",
            RunState::Processing => "processing",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Done | RunState::Failed | RunState::Cancelled
        )
    }
}

/// A run and its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: u64,
    pub request: JobRequest,
    pub frequency: u64,
    pub state: RunState,
    pub reason: Option<String>,
    pub queued_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// Profiling time still owed (less than the duration after a preemption).
    pub remaining_ms: Millis,
    /// When the current stretch of running began.
    resumed_at: Option<Millis>,
    pub preemptions: u32,
    pub samples: u64,
    seq: u64,
}

/// What a tick decided, for the driver to carry out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Decision {
    Start {
        run: u64,
        host: String,
    },
    Preempt {
        run: u64,
        host: String,
        by: u64,
    },
    Resume {
        run: u64,
        host: String,
    },
    /// The run's time is up; the driver drains and stores it, then calls `finish`.
    Stop {
        run: u64,
        host: String,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown profiler {0:?}")]
    UnknownProfiler(String),
    #[error("duration {asked_ms} ms is above {profiler}'s hard ceiling of {max_ms} ms (not even --force passes it)")]
    DurationCeiling {
        profiler: String,
        asked_ms: Millis,
        max_ms: Millis,
    },
    #[error("{profiler} with {mode} traps every call in its targets: runs of it are capped at {max_ms} ms, and {asked_ms} ms was asked (not even --force passes it)")]
    CostlyModeCeiling {
        profiler: String,
        mode: String,
        asked_ms: Millis,
        max_ms: Millis,
    },
    #[error("frequency {asked} Hz is above {profiler}'s hard ceiling of {max} Hz (not even --force passes it)")]
    FrequencyCeiling {
        profiler: String,
        asked: u64,
        max: u64,
    },
    #[error("duration must be more than zero")]
    ZeroDuration,
    #[error("no run {0}")]
    NoSuchRun(u64),
}

/// The scheduler of one fleet (or of one host, in `baton up`).
#[derive(Debug)]
pub struct Scheduler {
    /// As the registry declares them; `specs` are these with the config applied.
    bases: Vec<ProfilerSpec>,
    specs: HashMap<String, ProfilerSpec>,
    limits: HostLimits,
    runs: BTreeMap<u64, Run>,
    /// Queued and suspended runs, ordered on demand.
    waiting: Vec<u64>,
    running: HashMap<String, Vec<u64>>,
    next_id: u64,
    next_seq: u64,
}

impl Scheduler {
    /// A scheduler for the profilers `bases` (as declared, see [`ProfilerSpec::from_info`]),
    /// with the config's overrides applied to them.
    pub fn new(config: &Config, bases: Vec<ProfilerSpec>) -> Scheduler {
        Scheduler {
            specs: bases
                .iter()
                .map(|s| (s.name.clone(), s.configured(config)))
                .collect(),
            bases,
            limits: config.host.clone(),
            runs: BTreeMap::new(),
            waiting: Vec::new(),
            running: HashMap::new(),
            next_id: 1,
            next_seq: 0,
        }
    }

    /// Sets the weight a run's samples were stored with (a continuous run's weight, corrected
    /// for the time its profiler really ran).
    pub fn set_weight(&mut self, id: u64, weight: f64) {
        if let Some(r) = self.runs.get_mut(&id) {
            if weight.is_finite() && weight > 0.0 {
                r.request.weight = weight;
            }
        }
    }

    /// Run ids go on after `last` (the largest in a run history this scheduler's runs join).
    pub fn continue_ids_after(&mut self, last: u64) {
        self.next_id = self.next_id.max(last + 1);
    }

    /// Takes a new config's limits; runs already going keep going.
    pub fn reconfigure(&mut self, config: &Config) {
        self.limits = config.host.clone();
        self.specs = self
            .bases
            .iter()
            .map(|s| (s.name.clone(), s.configured(config)))
            .collect();
        // Ad-hoc profilers come and go with the tree; their header declares what a built-in
        // profiler's registry entry does.
        for def in config.adhoc.values() {
            self.specs
                .entry(def.name.clone())
                .or_insert_with(|| ProfilerSpec::from_adhoc(def).configured(config));
        }
    }

    pub fn spec(&self, profiler: &str) -> Option<&ProfilerSpec> {
        self.specs.get(profiler)
    }

    pub fn run(&self, id: u64) -> Option<&Run> {
        self.runs.get(&id)
    }

    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.values()
    }

    /// Runs currently holding resources on `host`.
    pub fn running_on(&self, host: &str) -> &[u64] {
        self.running.get(host).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Queues a run. Hard ceilings are checked here, so a forced request cannot pass them.
    pub fn submit(&mut self, req: JobRequest, now: Millis) -> Result<u64, SubmitError> {
        let spec = self
            .specs
            .get(&req.profiler)
            .ok_or_else(|| SubmitError::UnknownProfiler(req.profiler.clone()))?;
        if req.duration_ms == 0 {
            return Err(SubmitError::ZeroDuration);
        }
        if req.duration_ms > spec.max_duration_ms {
            return Err(SubmitError::DurationCeiling {
                profiler: spec.name.clone(),
                asked_ms: req.duration_ms,
                max_ms: spec.max_duration_ms,
            });
        }
        if let Some(m) = spec.costly_modes.iter().find(|m| {
            req.options.get(&m.option) == Some(&m.value) && req.duration_ms > m.max_duration_ms
        }) {
            return Err(SubmitError::CostlyModeCeiling {
                profiler: spec.name.clone(),
                mode: format!("{}={}", m.option, m.value),
                asked_ms: req.duration_ms,
                max_ms: m.max_duration_ms,
            });
        }
        let frequency = req.frequency.unwrap_or(spec.default_frequency);
        if frequency > spec.max_frequency {
            return Err(SubmitError::FrequencyCeiling {
                profiler: spec.name.clone(),
                asked: frequency,
                max: spec.max_frequency,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.next_seq += 1;
        let run = Run {
            id,
            remaining_ms: req.duration_ms,
            request: req,
            frequency,
            state: RunState::Queued,
            reason: None,
            queued_at: now,
            started_at: None,
            ended_at: None,
            resumed_at: None,
            preemptions: 0,
            samples: 0,
            seq: self.next_seq,
        };
        self.runs.insert(id, run);
        self.waiting.push(id);
        Ok(id)
    }

    /// Cancels a run that has not ended.
    pub fn cancel(
        &mut self,
        id: u64,
        now: Millis,
        reason: &str,
    ) -> Result<Option<Decision>, SubmitError> {
        let run = self.runs.get(&id).ok_or(SubmitError::NoSuchRun(id))?;
        if run.state.is_terminal() {
            return Ok(None);
        }
        let was_running = run.state == RunState::Running;
        let host = run.request.host.clone();
        self.release(id);
        self.waiting.retain(|w| *w != id);
        if let Some(r) = self.runs.get_mut(&id) {
            r.state = RunState::Cancelled;
            r.reason = Some(reason.to_string());
            r.ended_at = Some(now);
        }
        Ok(was_running.then_some(Decision::Stop { run: id, host }))
    }

    /// Ends a running run before its time (its targets exited, or it failed to start); the
    /// driver then stores what it has and calls [`Scheduler::finish`].
    pub fn end_early(&mut self, id: u64, now: Millis, reason: &str) -> Option<Decision> {
        let state = self.runs.get(&id)?.state;
        if state.is_terminal() || state == RunState::Processing {
            return None;
        }
        self.release(id);
        self.waiting.retain(|w| *w != id);
        let r = self.runs.get_mut(&id)?;
        r.state = RunState::Processing;
        r.reason = Some(reason.to_string());
        r.ended_at = Some(now);
        if r.started_at.is_none() {
            r.started_at = Some(now);
        }
        Some(Decision::Stop {
            run: id,
            host: r.request.host.clone(),
        })
    }

    /// Records the options a run starts with, once the config's `[profilers.NAME] options` are
    /// merged into the request's, so the run says what it ran with.
    pub fn set_options(&mut self, id: u64, options: BTreeMap<String, String>) {
        if let Some(r) = self.runs.get_mut(&id) {
            r.request.options = options;
        }
    }

    /// Lowers a run's frequency (the overhead guard's cap); never raises it.
    pub fn lower_frequency(&mut self, id: u64, hz: u64) {
        if let Some(r) = self.runs.get_mut(&id) {
            r.frequency = r.frequency.min(hz.max(1));
        }
    }

    /// Counts samples a run stored before it ended (e.g. when it was preempted).
    pub fn add_samples(&mut self, id: u64, samples: u64) {
        if let Some(r) = self.runs.get_mut(&id) {
            r.samples += samples;
        }
    }

    /// The driver reports that a stopped run's data is stored.
    pub fn finish(&mut self, id: u64, samples: u64, failure: Option<String>) {
        if let Some(r) = self.runs.get_mut(&id) {
            if r.state == RunState::Processing {
                r.samples += samples;
                r.state = if failure.is_some() {
                    RunState::Failed
                } else {
                    RunState::Done
                };
                r.reason = failure.or(r.reason.take());
            }
        }
    }

    /// Marks every run on `host` failed, e.g. when the host's agent disappeared.
    pub fn fail_host(&mut self, host: &str, now: Millis, reason: &str) {
        let ids: Vec<u64> = self
            .runs
            .values()
            .filter(|r| r.request.host == host && !r.state.is_terminal())
            .map(|r| r.id)
            .collect();
        for id in ids {
            self.release(id);
            self.waiting.retain(|w| *w != id);
            if let Some(r) = self.runs.get_mut(&id) {
                r.state = RunState::Failed;
                r.reason = Some(reason.to_string());
                r.ended_at = Some(now);
            }
        }
    }

    /// Drops terminal runs that ended before `before`, to bound memory in long simulations.
    pub fn forget_ended(&mut self, before: Millis) {
        self.runs
            .retain(|_, r| !(r.state.is_terminal() && r.ended_at.is_some_and(|e| e < before)));
    }

    /// Drops terminal continuous runs that ended before `before`; on-demand and triggered runs
    /// stay in the history.
    pub fn forget_continuous_ended(&mut self, before: Millis) {
        self.runs.retain(|_, r| {
            !(matches!(r.request.mode, Mode::Continuous { .. })
                && r.state.is_terminal()
                && r.ended_at.is_some_and(|e| e < before))
        });
    }

    fn release(&mut self, id: u64) {
        if let Some(r) = self.runs.get(&id) {
            if let Some(list) = self.running.get_mut(&r.request.host) {
                list.retain(|x| *x != id);
            }
        }
    }

    /// Whether `run` may start on its host now, with `ignoring` runs treated as absent.
    fn admissible(&self, run: &Run, ignoring: &[u64]) -> bool {
        let Some(spec) = self.specs.get(&run.request.profiler) else {
            return false;
        };
        let others: Vec<&Run> = self
            .running_on(&run.request.host)
            .iter()
            .filter(|id| !ignoring.contains(id))
            .filter_map(|id| self.runs.get(id))
            .collect();
        // Hard: resources.
        for claim in &spec.claims {
            let holders = others
                .iter()
                .filter(|o| {
                    self.specs
                        .get(&o.request.profiler)
                        .is_some_and(|s| s.claims.iter().any(|c| c.resource == claim.resource))
                })
                .count() as u32;
            let limit = match claim.sharing {
                Sharing::Exclusive => 1,
                Sharing::SharedUpTo(n) => n,
            };
            if holders >= limit {
                return false;
            }
        }
        if run.request.force {
            return true;
        }
        // Soft: the host cap and the concurrency groups.
        if others.len() as u32 >= self.limits.max_concurrent {
            return false;
        }
        for g in self.limits.concurrency_groups.values() {
            if g.profilers.contains(&run.request.profiler) {
                let in_group = others
                    .iter()
                    .filter(|o| g.profilers.contains(&o.request.profiler))
                    .count();
                if in_group as u32 >= g.max {
                    return false;
                }
            }
        }
        true
    }

    fn start(&mut self, id: u64, now: Millis, out: &mut Vec<Decision>) {
        let Some(r) = self.runs.get_mut(&id) else {
            return;
        };
        let resumed = r.state == RunState::Suspended;
        r.state = RunState::Running;
        r.resumed_at = Some(now);
        if r.started_at.is_none() {
            r.started_at = Some(now);
        }
        let host = r.request.host.clone();
        self.running.entry(host.clone()).or_default().push(id);
        out.push(if resumed {
            Decision::Resume { run: id, host }
        } else {
            Decision::Start { run: id, host }
        });
    }

    /// When the first running run's time is up (the `tick` that ends it should come then), or
    /// `None` when nothing runs.
    pub fn next_end(&self) -> Option<Millis> {
        self.running
            .values()
            .flatten()
            .filter_map(|id| self.runs.get(id))
            .filter_map(|r| r.resumed_at.map(|t| t + r.remaining_ms))
            .min()
    }

    /// Advances to `now`: ends runs whose time is up, then starts, preempts and resumes.
    pub fn tick(&mut self, now: Millis) -> Vec<Decision> {
        let mut out = Vec::new();
        // 1. End runs whose time is up.
        let mut ended = Vec::new();
        for ids in self.running.values() {
            for id in ids {
                if let Some(r) = self.runs.get(id) {
                    if r.resumed_at.is_some_and(|t| now >= t + r.remaining_ms) {
                        ended.push(*id);
                    }
                }
            }
        }
        ended.sort_unstable();
        for id in ended {
            self.release(id);
            if let Some(r) = self.runs.get_mut(&id) {
                r.remaining_ms = 0;
                r.state = RunState::Processing;
                r.ended_at = Some(now);
                out.push(Decision::Stop {
                    run: id,
                    host: r.request.host.clone(),
                });
            }
        }
        // 2. Start what can start, by priority then arrival; suspended continuous runs keep
        //    their place by their original arrival.
        let mut order: Vec<(i32, u64, u64)> = self
            .waiting
            .iter()
            .filter_map(|id| self.runs.get(id))
            .filter(|r| r.request.not_before <= now)
            .map(|r| (-r.request.priority, r.seq, r.id))
            .collect();
        order.sort_unstable();
        for (_, _, id) in order {
            let Some(run) = self.runs.get(&id) else {
                continue;
            };
            if self.admissible(run, &[]) {
                self.waiting.retain(|w| *w != id);
                self.start(id, now, &mut out);
                continue;
            }
            if matches!(run.request.mode, Mode::Continuous { .. }) {
                continue;
            }
            // On-demand and triggered runs may preempt continuous runs in their way.
            let host = run.request.host.clone();
            let continuous: Vec<u64> = self
                .running_on(&host)
                .iter()
                .copied()
                .filter(|c| {
                    self.runs
                        .get(c)
                        .is_some_and(|r| matches!(r.request.mode, Mode::Continuous { .. }))
                })
                .collect();
            if continuous.is_empty() || !self.admissible(run, &continuous) {
                continue;
            }
            // Preempt the fewest needed: try them one by one, newest first.
            let mut victims = Vec::new();
            for c in continuous.iter().rev() {
                victims.push(*c);
                if self.admissible(self.runs.get(&id).expect("run exists"), &victims) {
                    break;
                }
            }
            for v in victims {
                self.release(v);
                if let Some(r) = self.runs.get_mut(&v) {
                    let ran = now.saturating_sub(r.resumed_at.unwrap_or(now));
                    r.remaining_ms = r.remaining_ms.saturating_sub(ran);
                    r.state = RunState::Suspended;
                    r.resumed_at = None;
                    r.preemptions += 1;
                    r.reason = Some(format!("preempted by run {id}"));
                }
                self.waiting.push(v);
                out.push(Decision::Preempt {
                    run: v,
                    host: host.clone(),
                    by: id,
                });
            }
            self.waiting.retain(|w| *w != id);
            self.start(id, now, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests;
