//! `baton up`: continuous profiling of this host into the embedded store, with the API and UI.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_agent::targets::{resolve, selector_pids, Target};
use baton_agent::{AgentMetrics, Collector, CollectorOptions};
use baton_config::ConfigError;
use baton_model::parse_duration;
use baton_profilers::cpu::MAX_FREQUENCY_HZ;
use baton_profilers::{ProfilerError, StartOptions};
use baton_scheduler::continuous::{host_key, slot_rules, SlotRule};
use baton_scheduler::{
    Decision, JobRequest, Mode, ProfilerSpec, RunState, Scheduler, Tuner, WriteBudgets,
};
use baton_server::runs::RunsHandle;
use baton_server::{AppState, LiveConfig, MetricsFn};
use baton_store::{DuckDbStore, Store};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

use crate::common::{default_data_dir, usage};
use crate::record::{install_stop_handler, stop_requested};
use crate::watch::{scrape_loop, TriggerWatch};
use crate::UpArgs;

pub fn run(a: UpArgs) -> anyhow::Result<ExitCode> {
    let window_flag = match &a.window {
        Some(w) => {
            let d = parse_duration(w).map_err(|e| usage(format!("--window: {e}")))?;
            if d < Duration::from_secs(1) {
                return Err(usage("--window must be at least 1s"));
            }
            Some(d)
        }
        None => None,
    };
    if let Some(f) = a.frequency {
        if f == 0 || f > MAX_FREQUENCY_HZ {
            return Err(ProfilerError::BadFrequency(f).into());
        }
    }
    if !baton_profilers::sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission.into());
    }
    let live = match &a.config {
        Some(dir) => Some(Arc::new(RwLock::new(load_initial_config(dir)?))),
        None => None,
    };
    // --frequency wins over the config's [profilers.cpu] frequency, which wins over the default.
    let flag = a.frequency;
    let desired: Arc<dyn Fn() -> u64 + Send + Sync> = {
        let live = live.clone();
        Arc::new(move || {
            flag.or_else(|| {
                live.as_ref().and_then(|l| {
                    let l = l.read().unwrap_or_else(|p| p.into_inner());
                    l.config.as_ref()?.profilers.get("cpu")?.frequency
                })
            })
            .unwrap_or(baton_profilers::cpu::DEFAULT_CONTINUOUS_HZ)
        })
    };
    let window = window_for(window_flag, live.as_deref());
    let data = a.data.clone().unwrap_or_else(default_data_dir);
    // DuckDB starts its worker threads when it opens: they are the threads that appear here.
    let before = baton_agent::metrics::thread_ids();
    let store = DuckDbStore::open(&data)?;
    let store_tids: Vec<u32> = baton_agent::metrics::thread_ids()
        .difference(&before)
        .copied()
        .collect();
    let store_cpu = baton_server::StoreCpu {
        read: Arc::new(move || {
            store_tids
                .iter()
                .map(|&t| baton_agent::metrics::thread_cpu_ns(t))
                .sum()
        }),
        during_api_ns: Arc::default(),
    };
    let listener = std::net::TcpListener::bind(&a.listen).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            usage(format!(
                "{} is already in use; stop the other process or pick another address with --listen",
                a.listen
            ))
        } else {
            usage(format!("cannot listen on {}: {e}", a.listen))
        }
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    // Loopback needs no token (--insecure-local); any other address does.
    let tokens = match &a.auth {
        Some(f) => Some(Arc::new(
            baton_server::auth::Tokens::load(f).map_err(usage)?,
        )),
        None if addr.ip().is_loopback() => None,
        None => {
            return Err(usage(format!(
                "{addr} is not loopback: give --auth FILE (lines of ROLE NAME TOKEN) so every call needs a token"
            )))
        }
    };

    let opts = CollectorOptions {
        profiler: "cpu".into(),
        start: StartOptions {
            frequency_hz: desired(),
            targets: None,
            follow_forks: false,
            force_cpu_clock: a.cpu_clock,
            dwarf: a.unwind == crate::UnwindMode::Auto,
            options: Default::default(),
            pending_exec: None,
            attach_in_background: true,
        },
        host: baton_agent::hostname(),
        // Continuous whole-host profiling does not attach to JVMs.
        jvm_perf_maps: false,
        defer_discovery: false,
        defer_symbols: false,
    };
    install_stop_handler();
    // The symbolizer and BPF skeleton are not Send, so the collector is built on its own thread
    // and reports how its start went.
    let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(store)));
    let metrics = Arc::new(AgentMetrics::default());
    let status = Arc::new(RwLock::new(json!({})));
    let effective = live
        .as_ref()
        .and_then(|l| l.read().unwrap_or_else(|p| p.into_inner()).config.clone())
        .unwrap_or_else(default_config);
    let specs = baton_profilers::registry::infos()
        .into_iter()
        .map(ProfilerSpec::from_info)
        .collect();
    let scheduler = Arc::new(Mutex::new(Scheduler::new(&effective, specs)));
    let tuner_interval = effective.tuner.interval.as_millis() as u64;
    let host_name = opts.host.clone();
    let service_rules = slot_rules(&effective)
        .into_iter()
        .filter(|r| r.profiler == "cpu")
        .count();
    let mut tuner = Tuner::new(tuner_interval, 1.0, now_ms_u64());
    match load_tuner(&data.join(TUNER_FILE)) {
        Ok(Some(state)) => {
            eprintln!(
                "baton up: tuner: {} rule(s) restored from {}",
                state.len(),
                data.join(TUNER_FILE).display()
            );
            tuner.restore(&state);
        }
        Ok(None) => {}
        Err(e) => eprintln!(
            "baton up: tuner: ignoring {}: {e}",
            data.join(TUNER_FILE).display()
        ),
    }
    let tuner_file = data.join(TUNER_FILE);
    let scraped: Arc<Mutex<Vec<baton_scheduler::Observation>>> = Arc::default();
    if let Some(live) = &live {
        let live = live.clone();
        let out = scraped.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("baton-scrape".into())
            .spawn(move || scrape_loop(&live, &out, &metrics, LOCAL_HOST, stop_requested))
            .context("starting the trigger scraper")?;
    }
    let (worker, event) = start_driver(DriverSetup {
        opts: opts.clone(),
        scheduler: scheduler.clone(),
        live: live.clone(),
        sink: Sink::Store(store.clone()),
        metrics: metrics.clone(),
        desired: desired.clone(),
        status: status.clone(),
        window_flag,
        scraped,
        tuner,
        tuner_file,
        host_name: host_name.clone(),
        remote: None,
        store_during_api: store_cpu.during_api_ns.clone(),
    })?;
    if service_rules == 0 {
        eprintln!(
            "baton up: profiling every process at {} Hz on {event}, {}s windows; data in {}; UI at http://{addr}/",
            opts.start.frequency_hz,
            window.as_secs(),
            data.display()
        );
    } else {
        eprintln!(
            "baton up: continuous profiling by {service_rules} service rule(s) of the config, on {event}; data in {}; UI at http://{addr}/",
            data.display()
        );
    }

    let m2 = metrics.clone();
    let metrics_fn: MetricsFn = Arc::new(move || m2.export());
    {
        let mut st = status.write().unwrap_or_else(|p| p.into_inner());
        *st = json!({
            "profiler": "cpu",
            "event": event,
            "frequency_hz": opts.start.frequency_hz,
            "window_s": window.as_secs(),
            "data_dir": data.display().to_string(),
            "schema_version": baton_store::SCHEMA_VERSION,
            "host": opts.host,
            "config_dir": a.config.as_ref().map(|d| d.display().to_string()),
            "profilers": baton_profilers::registry::infos(),
        });
    }
    let audit = Arc::new(baton_server::auth::Audit::new(data.join("audit.log")));
    if let (Some(dir), Some(live)) = (&a.config, &live) {
        let dir = dir.clone();
        let live = live.clone();
        let audit = audit.clone();
        std::thread::Builder::new()
            .name("baton-config-watch".into())
            .spawn(move || {
                watch_config(&dir, &live, &|accepted, version| {
                    audit.record(
                        "config_change",
                        json!({ "version": version, "accepted": accepted }),
                    )
                })
            })
            .context("starting the config watcher")?;
    }
    let mut state = AppState::new(
        store.clone(),
        Some(metrics_fn),
        status.clone(),
        live.clone(),
    );
    state.audit = Some(audit);
    state.tokens = tokens;
    state.store_cpu = Some(store_cpu.clone());
    state.runs = Some(RunsHandle {
        scheduler: scheduler.clone(),
        host: LOCAL_HOST.to_string(),
        clock: now_ms_u64,
        check_options: |profiler, options| match baton_profilers::registry::find(profiler) {
            Ok(r) => r.info.check_options(options),
            // The scheduler refuses unknown profilers with its own message.
            Err(_) => Ok(()),
        },
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(baton_agent::metrics::API_THREAD_NAME)
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        baton_server::serve(listener, state, async {
            while !stop_requested() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    });
    // Make sure the collector stops even if the server failed.
    crate::record::request_stop();
    let flushed = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the collector thread panicked"))?;
    served.context("HTTP server")?;
    flushed?;
    eprintln!(
        "baton up: stopped; BPF detached, last window written to {}",
        data.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Everything the driver thread needs.
pub(crate) struct DriverSetup {
    pub opts: CollectorOptions,
    pub scheduler: Arc<Mutex<Scheduler>>,
    pub live: Option<Arc<RwLock<LiveConfig>>>,
    pub sink: Sink,
    pub metrics: Arc<AgentMetrics>,
    pub desired: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub status: Arc<RwLock<serde_json::Value>>,
    pub window_flag: Option<Duration>,
    pub scraped: Arc<Mutex<Vec<baton_scheduler::Observation>>>,
    pub tuner: Tuner,
    pub tuner_file: std::path::PathBuf,
    pub host_name: String,
    pub remote: Option<Arc<Mutex<RemoteRuns>>>,
    /// CPU (ns) the store's worker threads spent on API queries, which the overhead guard
    /// leaves out (`baton up`; it stays 0 in `baton agent`, which has no store).
    pub store_during_api: Arc<std::sync::atomic::AtomicU64>,
}

/// Where the driver's batches go: the embedded store (`baton up`) or the agent's outbox, which
/// ships them to the server (`baton agent`).
#[derive(Clone)]
pub(crate) enum Sink {
    Store(Arc<Mutex<Box<dyn Store>>>),
    Ship(Arc<crate::outbox::Outbox>),
}

/// Runs the server placed on this host (`baton agent`): their server ids, by local run id.
#[derive(Debug, Default)]
pub(crate) struct RemoteRuns {
    pub server_id: HashMap<u64, u64>,
}

/// Starts the collector thread and its driver; returns it and the perf event it samples on.
/// The symbolizer and BPF skeleton are not Send, so the collector is built on its own thread
/// and reports how its start went.
pub(crate) fn start_driver(
    setup: DriverSetup,
) -> anyhow::Result<(std::thread::JoinHandle<anyhow::Result<()>>, String)> {
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let worker = {
        let DriverSetup {
            opts,
            scheduler,
            live,
            sink,
            metrics,
            desired,
            status,
            window_flag,
            scraped,
            tuner,
            tuner_file,
            host_name,
            remote,
            store_during_api,
        } = setup;
        std::thread::Builder::new()
            .name("baton-collector".into())
            .spawn(move || -> anyhow::Result<()> {
                let collector = match Collector::start(&opts) {
                    Ok(c) => {
                        let _ = started_tx.send(Ok(c.event_name()));
                        c
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let mut d = Driver {
                    opts,
                    continuous: Some(collector),
                    continuous_run: None,
                    targeted: BTreeMap::new(),
                    flush_due: HashMap::new(),
                    flushed: HashMap::new(),
                    config_version: None,
                    scheduler,
                    sink,
                    remote,
                    metrics,
                    window_flag,
                    desired,
                    status,
                    live,
                    triggers: TriggerWatch::new(scraped),
                    budgets: WriteBudgets::default(),
                    guard: OverheadGuard {
                        store_during_api,
                        ..OverheadGuard::default()
                    },
                    tuner,
                    tuner_file,
                    drawn: HashMap::new(),
                    host_key: host_key(&host_name),
                };
                d.run()
            })
            .context("starting the collector thread")?
    };
    let event = started_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the collector thread died while starting"))??;
    Ok((worker, event))
}

fn write(sink: &Sink, metrics: &AgentMetrics, report: baton_agent::WindowReport) {
    let rows = report.batch.samples.len() as u64;
    let store = match sink {
        Sink::Store(s) => s,
        Sink::Ship(outbox) => {
            match outbox.push(&report.batch) {
                Ok(()) => {
                    metrics.batches_written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    metrics.batch_write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, rows, "the outbox refused a batch");
                }
            }
            return;
        }
    };
    let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
    match guard.write_batch(&report.batch) {
        Ok(()) => {
            metrics.batches_written.fetch_add(1, Ordering::Relaxed);
            metrics
                .sample_rows_written
                .fetch_add(rows, Ordering::Relaxed);
        }
        Err(e) => {
            metrics.batch_write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, rows, "the store refused a batch");
        }
    }
}

/// The phases of one pass of the driver loop, timed. A run due to end waits for the pass in
/// progress, so a long pass is logged with what took the time.
struct PassTimer {
    began: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

/// A pass longer than this is logged.
const SLOW_PASS: Duration = Duration::from_millis(750);

impl PassTimer {
    fn start() -> PassTimer {
        let now = Instant::now();
        PassTimer {
            began: now,
            last: now,
            phases: Vec::new(),
        }
    }

    /// Ends the phase `name`.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.last));
        self.last = now;
    }

    fn report(&self) {
        let total = self.began.elapsed();
        if total < SLOW_PASS {
            return;
        }
        let parts: Vec<String> = self
            .phases
            .iter()
            .filter(|(_, d)| *d >= Duration::from_millis(50))
            .map(|(n, d)| format!("{n} {} ms", d.as_millis()))
            .collect();
        tracing::warn!(
            "a collector pass took {} ms ({}): runs due to end waited for it",
            total.as_millis(),
            parts.join(", ")
        );
    }
}

/// The whole-host window: `--window`, else the config's `[profilers.cpu] window`, else 10 s
/// (never under 1 s).
fn window_for(flag: Option<Duration>, live: Option<&RwLock<LiveConfig>>) -> Duration {
    flag.or_else(|| {
        let l = live?.read().unwrap_or_else(|p| p.into_inner());
        l.config.as_ref()?.profilers.get("cpu")?.window
    })
    .unwrap_or(Duration::from_secs(10))
    .max(Duration::from_secs(1))
}

/// The tuner's state under the data directory.
const TUNER_FILE: &str = "tuner.json";

fn load_tuner(path: &Path) -> anyhow::Result<Option<Vec<baton_scheduler::RuleState>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the state to a temporary file and renames it over the old one, so a crash never
/// leaves half a file.
fn save_tuner(path: &Path, state: &[baton_scheduler::RuleState]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The scheduler's name for this host in `baton up`.
const LOCAL_HOST: &str = "local";

/// The pseudo-service of the whole-host continuous chain.
const HOST_CHAIN: &str = "host";

fn is_host_chain(mode: &Mode) -> bool {
    matches!(mode, Mode::Continuous { service, .. } if service == HOST_CHAIN)
}

pub(crate) fn now_ms_u64() -> u64 {
    now_ms() as u64
}

/// An empty config: the defaults of every limit, no services.
fn default_config() -> baton_config::Config {
    baton_config::load(&[], &[]).expect("an empty tree is valid")
}

/// Carries out the scheduler's decisions on this host.
///
/// Continuous profiling takes one of two forms. With no continuous rules in the config, every
/// process is profiled by a chain of *host* continuous runs, one per window, with weight 1.
/// With rules, only the rules run: each rule draws once per slot against its tuned probability
/// `p`, and a drawn run profiles the service's processes with every sample weighted `1 / p`.
/// On-demand and triggered runs preempt continuous ones (the CPU profiler holds the PMU
/// exclusively), which resume when they end. Every run but the host chain has its own targeted
/// collector. The collectors are dropped at the end, which detaches every BPF program.
struct Driver {
    opts: CollectorOptions,
    continuous: Option<Collector>,
    continuous_run: Option<u64>,
    /// The collectors of every running run but the host chain, by run id. The scheduler decides
    /// how many may run at once (resources, cap, groups).
    targeted: BTreeMap<u64, Collector>,
    /// When each running run that flushes while it runs (see `Profiler::flush_interval`) is
    /// next stored, and the samples it stored so far.
    flush_due: HashMap<u64, Instant>,
    flushed: HashMap<u64, u64>,
    /// The config version the scheduler was last given.
    config_version: Option<String>,
    scheduler: Arc<Mutex<Scheduler>>,
    sink: Sink,
    /// Fleet mode: the server's ids of the runs it placed here.
    remote: Option<Arc<Mutex<RemoteRuns>>>,
    metrics: Arc<AgentMetrics>,
    /// `--window`, which wins over the config's `[profilers.cpu] window`.
    window_flag: Option<Duration>,
    desired: Arc<dyn Fn() -> u64 + Send + Sync>,
    status: Arc<RwLock<serde_json::Value>>,
    live: Option<Arc<RwLock<LiveConfig>>>,
    triggers: TriggerWatch,
    budgets: WriteBudgets,
    guard: OverheadGuard,
    /// Run probabilities of the config's continuous rules, re-tuned from what this host saw.
    tuner: Tuner,
    /// Where the tuner's state is kept across restarts.
    tuner_file: std::path::PathBuf,
    /// The last slot drawn for each continuous rule.
    drawn: HashMap<(String, usize), u64>,
    host_key: u64,
}

/// Keeps the profilers' cost (this process's CPU, less what its API threads spend serving
/// queries and the UI, plus its BPF programs' run time) under the host's overhead budget: over
/// it, halve the continuous frequency; at 1 Hz and still over, stop continuous profiling for a
/// while. Each step logs an event and counts.
#[derive(Default)]
struct OverheadGuard {
    last: Option<(Instant, f64, u64)>,
    /// CPU of the `baton-api` threads, left out: a user loading large flame graphs is not
    /// profiling overhead, and used to pause continuous profiling.
    api: baton_agent::metrics::ThreadCpu,
    /// And the CPU DuckDB's worker threads spent on the API's queries (ns).
    store_during_api: Arc<std::sync::atomic::AtomicU64>,
    /// The highest frequency the guard allows, once it has acted.
    cap: Option<u64>,
    stopped_until: Option<Instant>,
}

/// How long continuous profiling stays off after the guard stops it.
const GUARD_PAUSE: Duration = Duration::from_secs(300);

impl Driver {
    /// The live config, if `baton up` has one.
    fn config(&self) -> Option<baton_config::Config> {
        self.live
            .as_ref()
            .and_then(|l| l.read().unwrap_or_else(|p| p.into_inner()).config.clone())
    }

    /// Labels a batch's rows with their service, then writes it through the write budgets (each
    /// service's, then its profiler's): accepted, down-sampled with raised weights, or refused;
    /// each outcome is counted in `/metrics` and, per budget, in `/api/v1/status`.
    fn store_batch(&mut self, mut r: baton_agent::WindowReport) {
        let config = self.config();
        if let Some(c) = &config {
            baton_agent::attribute::attribute(c, &mut r.batch);
        }
        let per_minute = config
            .as_ref()
            .map(|c| c.host.write_budget_rows_per_minute)
            .unwrap_or_else(|| baton_config::HostLimits::default().write_budget_rows_per_minute);
        let rows = r.batch.samples.len() as u64;
        let before = self.budgets.stats;
        self.budgets.admit_batch(
            &mut r.batch,
            |svc| {
                config
                    .as_ref()?
                    .services
                    .get(svc)?
                    .write_budget_rows_per_minute
            },
            per_minute,
            now_ms_u64(),
        );
        let st = self.budgets.stats;
        if st != before {
            let kept = r.batch.samples.len() as u64;
            if st.batches_downsampled > before.batches_downsampled
                || st.batches_refused > before.batches_refused
            {
                tracing::warn!(rows, kept, "write budget: batch down-sampled or refused");
                eprintln!(
                    "baton up: write budget: {kept} of {rows} rows kept ({} budget(s) over)",
                    (st.batches_downsampled - before.batches_downsampled)
                        + (st.batches_refused - before.batches_refused)
                );
            }
        }
        self.metrics
            .batches_downsampled
            .store(st.batches_downsampled, Ordering::Relaxed);
        self.metrics
            .batches_refused_budget
            .store(st.batches_refused, Ordering::Relaxed);
        self.metrics
            .rows_dropped_budget
            .store(st.rows_dropped, Ordering::Relaxed);
        let per_key: serde_json::Map<String, serde_json::Value> = self
            .budgets
            .per_key
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    json!({
                        "batches_accepted": v.batches_accepted,
                        "batches_downsampled": v.batches_downsampled,
                        "batches_refused": v.batches_refused,
                        "rows_dropped": v.rows_dropped,
                    }),
                )
            })
            .collect();
        self.status.write().unwrap_or_else(|p| p.into_inner())["write_budgets"] =
            serde_json::Value::Object(per_key);
        if !r.batch.samples.is_empty() {
            write(&self.sink, &self.metrics, r);
        }
    }

    /// Draws each continuous rule once per slot, for services with processes on this host, and
    /// queues the runs drawn with their weight `1 / p`.
    fn draw_continuous(&mut self, rules: &[SlotRule], config: &baton_config::Config, now: u64) {
        for r in rules {
            let slot = r.slot_of(now);
            if self.drawn.get(&r.key()) == Some(&slot) {
                continue;
            }
            self.drawn.insert(r.key(), slot);
            let Some(svc) = config.services.get(&r.service) else {
                continue;
            };
            if selector_pids(&svc.selector).is_empty() {
                continue;
            }
            self.tuner.drew(&r.service, r.rule, 1);
            let p = self.tuner.probability(&r.service, r.rule);
            let Some(req) = r.draw(self.host_key, LOCAL_HOST, slot, p, now) else {
                continue;
            };
            let weight = req.weight;
            let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
            match s.submit(req, now) {
                Ok(id) => eprintln!(
                    "baton up: continuous run {id} of {}#{} drawn (p = {p:.4}, weight {weight:.2})",
                    r.service, r.rule
                ),
                Err(e) => tracing::error!(error = %e, "a continuous run was refused"),
            }
        }
    }

    /// Re-tunes the continuous rules' probabilities at the end of each tuner interval, and
    /// shows them in `/api/v1/status`.
    fn tune(&mut self, rules: &[SlotRule], config: Option<&baton_config::Config>, now: u64) {
        if let Some(c) = config {
            self.tuner.set_interval(c.tuner.interval.as_millis() as u64);
        }
        let before: Vec<(f64, u64)> = rules
            .iter()
            .map(|r| {
                (
                    self.tuner.probability(&r.service, r.rule),
                    self.tuner.observed(&r.service, r.rule),
                )
            })
            .collect();
        let targets: Vec<((String, usize), u64)> = rules
            .iter()
            .map(|r| (r.key(), r.target_samples_per_hour))
            .collect();
        if self.tuner.maybe_retune(now, &targets) {
            if let Err(e) = save_tuner(&self.tuner_file, &self.tuner.state()) {
                tracing::warn!(error = %e, "saving the tuner state failed");
            }
            for (r, (p, seen)) in rules.iter().zip(&before) {
                eprintln!(
                    "baton up: tuner: {}#{} saw {seen} samples; probability {p:.4} -> {:.4} (target {}/h)",
                    r.service,
                    r.rule,
                    self.tuner.probability(&r.service, r.rule),
                    r.target_samples_per_hour
                );
            }
        }
        let list: Vec<serde_json::Value> = rules
            .iter()
            .map(|r| {
                let p = self.tuner.probability(&r.service, r.rule);
                json!({
                    "service": r.service,
                    "rule": r.rule,
                    "profiler": r.profiler,
                    "probability": p,
                    "weight": 1.0 / p,
                    "duration_s": r.duration_ms as f64 / 1000.0,
                    "slot_s": r.slot_ms as f64 / 1000.0,
                    "target_samples_per_hour": r.target_samples_per_hour,
                    "observed_samples": self.tuner.observed(&r.service, r.rule),
                })
            })
            .collect();
        let mut st = self.status.write().unwrap_or_else(|p| p.into_inner());
        st["continuous"] = json!({
            "mode": if rules.iter().any(|r| r.profiler == "cpu") { "services" } else { "host" },
            "rules": list,
        });
    }

    /// Evaluates the config's triggers and queues the runs they fire.
    fn watch_triggers(&mut self, config: Option<&baton_config::Config>, now: u64) {
        let Some(config) = config else {
            return;
        };
        let requests = self.triggers.poll(config, LOCAL_HOST, now);
        let fired: u64 = self.triggers.engine.fired.values().sum();
        let suppressed: u64 = self.triggers.engine.suppressed.values().sum();
        self.metrics.trigger_firings.store(fired, Ordering::Relaxed);
        self.metrics
            .trigger_suppressed
            .store(suppressed, Ordering::Relaxed);
        if requests.is_empty() {
            return;
        }
        let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        for r in requests {
            let (owner, target) = (r.owner.clone(), r.target.clone());
            match s.submit(r, now) {
                Ok(id) => eprintln!("baton up: {owner} fired run {id} on {target}"),
                Err(e) => tracing::error!(error = %e, "a triggered run was refused"),
            }
        }
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let mut last_prune = Instant::now();
        while !stop_requested() {
            let mut pass = PassTimer::start();
            let now = now_ms_u64();
            let config = self.config();
            let rules: Vec<SlotRule> = config
                .as_ref()
                .map(slot_rules)
                .unwrap_or_default()
                .into_iter()
                .collect();
            // CPU rules replace whole-host CPU profiling; rules of other profilers run beside it.
            let by_services = rules.iter().any(|r| r.profiler == "cpu");
            let decisions = {
                let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                let host_chain: Vec<(u64, RunState)> = s
                    .runs()
                    .filter(|r| is_host_chain(&r.request.mode) && !r.state.is_terminal())
                    .map(|r| (r.id, r.state))
                    .collect();
                let mut out = Vec::new();
                if by_services {
                    // The config's rules replace whole-host profiling.
                    for (id, _) in &host_chain {
                        out.extend(s.end_early(
                            *id,
                            now,
                            "the config's continuous rules replace whole-host profiling",
                        ));
                    }
                } else if host_chain.iter().all(|(_, st)| *st == RunState::Processing) {
                    let req = JobRequest {
                        profiler: "cpu".into(),
                        host: LOCAL_HOST.into(),
                        target: "host".into(),
                        mode: Mode::Continuous {
                            service: HOST_CHAIN.into(),
                            rule: 0,
                        },
                        duration_ms: window_for(self.window_flag, self.live.as_deref()).as_millis()
                            as u64,
                        frequency: Some(self.opts.start.frequency_hz),
                        priority: 0,
                        force: false,
                        owner: "continuous".into(),
                        not_before: now,
                        weight: 1.0,
                        options: Default::default(),
                    };
                    if let Err(e) = s.submit(req, now) {
                        tracing::error!(error = %e, "queueing the continuous run failed");
                    }
                }
                // A new config's limits and profiler specs reach the scheduler.
                if let Some(c) = &config {
                    if self.config_version.as_deref() != Some(c.version.as_str()) {
                        baton_profilers::registry::set_adhoc(c.adhoc.values());
                        s.reconfigure(c);
                        self.config_version = Some(c.version.clone());
                    }
                }
                // A cancelled targeted run stops at once.
                let cancelled: Vec<u64> = self
                    .targeted
                    .keys()
                    .copied()
                    .filter(|id| s.run(*id).is_some_and(|r| r.state == RunState::Cancelled))
                    .collect();
                if !cancelled.is_empty() {
                    drop(s);
                    for id in cancelled {
                        self.stop_targeted(id, false);
                    }
                    s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                }
                // Targets that all exited end their run early.
                for (id, c) in &self.targeted {
                    if c.live_targets().is_empty() {
                        out.extend(s.end_early(*id, now, "every target process exited"));
                    }
                }
                out.extend(s.tick(now));
                if last_prune.elapsed() > Duration::from_secs(60) {
                    s.forget_continuous_ended(now.saturating_sub(600_000));
                    last_prune = Instant::now();
                }
                out
            };
            pass.mark("scheduler");
            // A whole-host window that ends is followed at once by the next, without the nap.
            let window_ended = !by_services
                && decisions
                    .iter()
                    .any(|d| matches!(d, Decision::Stop { run, .. } if self.is_host_chain(*run)));
            for d in decisions {
                self.apply(d, now);
            }
            pass.mark("starting and stopping runs");
            if by_services && self.continuous.is_some() {
                // Whole-host profiling ended: store its last window and detach it.
                self.flush_continuous(None);
                self.continuous = None;
            }
            if let Some(c) = &config {
                self.draw_continuous(&rules, c, now);
            }
            pass.mark("continuous draws");
            self.tune(&rules, config.as_ref(), now);
            self.watch_triggers(config.as_ref(), now);
            self.guard_overhead();
            self.retune_frequency();
            pass.mark("tuning, triggers and the overhead guard");
            if let Some(c) = &mut self.continuous {
                c.discover();
            }
            for c in self.targeted.values_mut() {
                c.discover();
            }
            pass.mark("discovering processes");
            self.flush_running();
            pass.mark("storing running runs' windows");
            pass.report();
            // Up to 250 ms, or until the first running run's time is up, so runs (and windows)
            // end on time rather than up to a nap late.
            let next_end = self
                .scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .next_end();
            let mut nap = Duration::from_millis(250);
            if let Some(end) = next_end {
                nap = nap.min(Duration::from_millis(end.saturating_sub(now_ms_u64())));
            }
            if window_ended {
                nap = Duration::ZERO;
            }
            std::thread::sleep(nap.max(Duration::from_millis(2)));
        }
        self.flush_continuous(None);
        let ids: Vec<u64> = self.targeted.keys().copied().collect();
        for id in ids {
            let now = now_ms_u64();
            self.scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .end_early(id, now, "baton up stopped");
            self.stop_targeted(id, true);
        }
        self.continuous = None;
        Ok(())
    }

    fn is_host_chain(&self, id: u64) -> bool {
        let s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        s.run(id).is_some_and(|r| is_host_chain(&r.request.mode))
    }

    fn apply(&mut self, d: Decision, now: u64) {
        match d {
            Decision::Start { run, .. } | Decision::Resume { run, .. } => {
                if self.is_host_chain(run) {
                    self.continuous_run = Some(run);
                    if self.continuous.is_none() && self.guard.stopped_until.is_none() {
                        match Collector::start(&self.opts) {
                            Ok(c) => self.continuous = Some(c),
                            Err(e) => {
                                tracing::error!(error = %e, "resuming continuous profiling failed")
                            }
                        }
                    }
                } else {
                    self.start_targeted(run, now);
                }
            }
            Decision::Preempt { run, by, .. } => {
                // Free the PMU: store what the preempted run has, then detach it.
                if self.targeted.contains_key(&run) {
                    self.stop_targeted(run, false);
                } else {
                    let samples = self.flush_continuous(None);
                    tracing::info!(run, by, samples, "continuous profiling preempted");
                    self.continuous = None;
                }
            }
            Decision::Stop { run, .. } => {
                if self.targeted.contains_key(&run) {
                    self.stop_targeted(run, true);
                } else if self.is_host_chain(run) {
                    let samples = self.flush_continuous(None);
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .finish(run, samples, None);
                } else {
                    // Ended before its collector started (e.g. ended while suspended).
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .finish(run, 0, None);
                }
            }
        }
    }

    fn start_targeted(&mut self, id: u64, now: u64) {
        let (target, mut frequency, continuous, profiler, mut options) = {
            let s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
            match s.run(id) {
                Some(r) => (
                    r.request.target.clone(),
                    r.frequency,
                    matches!(r.request.mode, Mode::Continuous { .. }),
                    r.request.profiler.clone(),
                    r.request.options.clone(),
                ),
                None => return,
            }
        };
        // The config's `[profilers.NAME] options` apply where the request does not say.
        if let Some(live) = &self.live {
            let l = live.read().unwrap_or_else(|p| p.into_inner());
            if let Some(o) = l.config.as_ref().and_then(|c| c.profilers.get(&profiler)) {
                for (k, v) in &o.options {
                    options.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        // The overhead guard holds continuous runs of services too.
        if continuous {
            if self.guard.stopped_until.is_some() {
                let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                s.end_early(id, now, "overhead guard: continuous profiling is paused");
                s.finish(id, 0, None);
                return;
            }
            if let Some(cap) = self.guard.cap {
                if frequency > cap {
                    frequency = cap;
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .lower_frequency(id, cap);
                }
            }
        }
        let services = |name: &str| {
            let l = self
                .live
                .as_ref()?
                .read()
                .unwrap_or_else(|p| p.into_inner());
            Some(l.config.as_ref()?.services.get(name)?.selector.clone())
        };
        let started = Target::parse(&target)
            .and_then(|t| resolve(&t, &services))
            .and_then(|pids| {
                let opts = CollectorOptions {
                    profiler: profiler.clone(),
                    start: StartOptions {
                        frequency_hz: frequency,
                        targets: Some(pids),
                        follow_forks: true,
                        force_cpu_clock: self.opts.start.force_cpu_clock,
                        dwarf: self.opts.start.dwarf,
                        options,
                        pending_exec: None,
                        attach_in_background: true,
                    },
                    host: self.opts.host.clone(),
                    // On-demand and triggered runs ask JVMs for their JIT maps; continuous
                    // runs do not attach to them.
                    jvm_perf_maps: !continuous,
                    defer_discovery: false,
                    defer_symbols: self.opts.defer_symbols,
                };
                Collector::start(&opts).map_err(|e| e.to_string())
            });
        match started {
            Ok(c) => {
                if frequency > 0 {
                    eprintln!("baton up: run {id} started ({target} at {frequency} Hz)");
                } else {
                    eprintln!("baton up: run {id} started ({profiler} on {target})");
                }
                self.targeted.insert(id, c);
            }
            Err(e) => {
                eprintln!("baton up: run {id} could not start: {e}");
                let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                let continuous = s
                    .run(id)
                    .is_some_and(|r| matches!(r.request.mode, Mode::Continuous { .. }));
                if continuous && e.starts_with("no live process") {
                    // The service's processes left between the draw and the start: nothing
                    // to profile in this slot, which is not a failure.
                    s.end_early(id, now, "no live process of the service at start");
                    s.finish(id, 0, None);
                } else {
                    s.end_early(id, now, "could not start");
                    s.finish(id, 0, Some(e));
                }
            }
        }
    }

    /// Drains a targeted collector into the store under its run id and detaches it. Samples get
    /// the run's weight and, for a service's run, the `service` label; a continuous rule's
    /// samples count toward its tuner. With `finish`, the run is done; without, it was preempted
    /// (or cancelled) and only its samples so far are counted.
    fn stop_targeted(&mut self, id: u64, finish: bool) {
        let Some(mut c) = self.targeted.remove(&id) else {
            return;
        };
        self.flush_due.remove(&id);
        let flushed = self.flushed.remove(&id).unwrap_or(0);
        c.finish();
        let (samples, failure) = match self.store_run_window(id, &mut c) {
            Ok(n) => {
                if let Mode::Continuous { service, rule } = &self.run_mode(id) {
                    self.tuner.observe(service, *rule, flushed + n, finish);
                }
                (n, None)
            }
            Err(e) => (0, Some(e)),
        };
        drop(c);
        let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if finish {
            match &failure {
                Some(e) => eprintln!(
                    "baton up: run {id} failed after {} samples: {e}",
                    flushed + samples
                ),
                None => eprintln!(
                    "baton up: run {id} ended with {} samples",
                    flushed + samples
                ),
            }
            s.finish(id, samples, failure);
        } else {
            eprintln!(
                "baton up: run {id} stopped after {} samples",
                flushed + samples
            );
            s.add_samples(id, samples);
        }
    }

    fn run_mode(&self, id: u64) -> Mode {
        let s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        s.run(id)
            .map(|r| r.request.mode.clone())
            .unwrap_or(Mode::OnDemand)
    }

    /// Drains a targeted run's collector and stores the window under its run id. Samples get
    /// the run's weight and, for a service's run, the `service` label. Returns the raw count.
    fn store_run_window(&mut self, id: u64, c: &mut Collector) -> Result<u64, String> {
        let (mode, weight) = {
            let s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
            match s.run(id) {
                Some(r) => (r.request.mode.clone(), r.request.weight),
                None => (Mode::OnDemand, 1.0),
            }
        };
        let service = match &mode {
            Mode::Continuous { service, .. } | Mode::Triggered { service, .. } => {
                Some(service.clone())
            }
            Mode::OnDemand => None,
        };
        // In fleet mode the samples carry the server's run id.
        let label = self
            .remote
            .as_ref()
            .and_then(|r| {
                r.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .server_id
                    .get(&id)
                    .copied()
            })
            .unwrap_or(id)
            .to_string();
        let mut r = c.collect(Some(&self.metrics)).map_err(|e| e.to_string())?;
        for s in &mut r.batch.samples {
            s.labels.insert("run".into(), label.clone());
            s.weight *= weight;
            if let Some(svc) = &service {
                s.labels.insert("service".into(), svc.clone());
            }
        }
        for h in &mut r.batch.histograms {
            h.labels.insert("run".into(), label.clone());
            if let Some(svc) = &service {
                h.labels.insert("service".into(), svc.clone());
            }
            for b in &mut h.buckets {
                b.count *= weight;
            }
        }
        let n = r.sample_count;
        self.store_batch(r);
        Ok(n)
    }

    /// Stores the windows of running runs whose profiler asks to be flushed while it runs
    /// (ad-hoc scripts), so their data is queryable before the run ends. A window that fails
    /// (the script's output cannot be stored, or passed its ceiling) fails the run.
    fn flush_running(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .targeted
            .iter()
            .filter_map(|(id, c)| {
                let every = c.flush_interval()?;
                let next = *self.flush_due.entry(*id).or_insert(now + every);
                (now >= next).then_some(*id)
            })
            .collect();
        for id in due {
            let Some(mut c) = self.targeted.remove(&id) else {
                continue;
            };
            match self.store_run_window(id, &mut c) {
                Ok(n) => {
                    *self.flushed.entry(id).or_insert(0) += n;
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add_samples(id, n);
                    if let Some(every) = c.flush_interval() {
                        self.flush_due.insert(id, now + every);
                    }
                    self.targeted.insert(id, c);
                }
                Err(e) => {
                    drop(c);
                    self.flush_due.remove(&id);
                    let flushed = self.flushed.remove(&id).unwrap_or(0);
                    eprintln!("baton up: run {id} failed after {flushed} samples: {e}");
                    let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                    s.end_early(id, now_ms_u64(), "failed while running");
                    s.finish(id, 0, Some(e));
                }
            }
        }
    }

    /// Stores the continuous collector's window; returns its raw sample count.
    fn flush_continuous(&mut self, _: Option<u64>) -> u64 {
        let Some(c) = &mut self.continuous else {
            return 0;
        };
        match c.collect(Some(&self.metrics)) {
            Ok(r) => {
                let n = r.sample_count;
                self.store_batch(r);
                n
            }
            Err(e) => {
                tracing::error!(error = %e, "draining a window failed");
                0
            }
        }
    }

    /// Restarts continuous profiling at a new rate after a config reload.
    /// Measures the overhead every `[host] overhead_check_interval` (30 s by default) and acts.
    fn guard_overhead(&mut self) {
        let now = Instant::now();
        if let Some(until) = self.guard.stopped_until {
            if now >= until {
                self.guard.stopped_until = None;
                eprintln!("baton up: overhead guard: resuming continuous profiling");
            }
        }
        // Baton's own CPU (less its API threads', and less what DuckDB's workers spent on
        // the API's queries) and BPF time, plus that of the bpftrace processes of ad-hoc runs.
        let (adhoc_cpu, adhoc_bpf) = baton_profilers::adhoc::children_cost();
        let api = self
            .guard
            .api
            .seconds(baton_agent::metrics::API_THREAD_NAME);
        let store_api = self.guard.store_during_api.load(Ordering::Relaxed) as f64 / 1e9;
        let cpu = baton_agent::metrics::self_cpu_seconds() - api - store_api + adhoc_cpu;
        let bpf = self.metrics.bpf_run_time_ns.load(Ordering::Relaxed) + adhoc_bpf;
        let Some((t0, cpu0, bpf0)) = self.guard.last else {
            self.guard.last = Some((now, cpu, bpf));
            return;
        };
        let limits = self.config().map(|c| c.host).unwrap_or_default();
        let elapsed = now.duration_since(t0).as_secs_f64();
        if elapsed < limits.overhead_check_interval.as_secs_f64().max(1.0) {
            return;
        }
        self.guard.last = Some((now, cpu, bpf));
        let cpus = baton_profilers::sys::online_cpus()
            .map(|c| c.len())
            .unwrap_or(1)
            .max(1) as f64;
        let used = (cpu - cpu0).max(0.0) + bpf.saturating_sub(bpf0) as f64 / 1e9;
        let pct = 100.0 * used / (elapsed * cpus);
        self.metrics
            .overhead_percent_milli
            .store((pct * 1000.0) as u64, Ordering::Relaxed);
        let budget = limits.overhead_budget_percent;
        self.status.write().unwrap_or_else(|p| p.into_inner())["overhead"] = json!({
            "percent": pct,
            "budget_percent": budget,
            "frequency_cap_hz": self.guard.cap,
            "paused": self.guard.stopped_until.is_some(),
            // Left out as the user's, not profiling's: the API threads' CPU and what the
            // store's workers spent on the API's queries, since start.
            "api_cpu_seconds": api,
            "store_cpu_for_api_seconds": store_api,
        });
        if pct <= budget || self.guard.stopped_until.is_some() {
            return;
        }
        let current = self
            .guard
            .cap
            .unwrap_or_else(|| self.highest_continuous_frequency());
        if current > 1 {
            let lower = (current / 2).max(1);
            self.guard.cap = Some(lower);
            self.metrics
                .overhead_throttled
                .fetch_add(1, Ordering::Relaxed);
            eprintln!("baton up: overhead guard: {pct:.2}% of CPU is over the {budget}% budget; lowering the frequency to {lower} Hz");
        } else {
            // Counted first, so anyone who sees a run ended by the guard sees the count too.
            self.guard.stopped_until = Some(now + GUARD_PAUSE);
            self.metrics
                .overhead_stopped
                .fetch_add(1, Ordering::Relaxed);
            self.flush_continuous(None);
            self.continuous = None;
            // Continuous runs of services stop too; on-demand and triggered runs go on.
            let running: Vec<u64> = {
                let s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                self.targeted
                    .keys()
                    .copied()
                    .filter(|id| {
                        s.run(*id)
                            .is_some_and(|r| matches!(r.request.mode, Mode::Continuous { .. }))
                    })
                    .collect()
            };
            for id in running {
                self.scheduler
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .end_early(
                        id,
                        now_ms_u64(),
                        "overhead guard: continuous profiling paused",
                    );
                self.stop_targeted(id, true);
            }
            eprintln!("baton up: overhead guard: {pct:.2}% is still over the {budget}% budget at 1 Hz; continuous profiling stops for {}s", GUARD_PAUSE.as_secs());
        }
    }

    /// The highest frequency continuous profiling uses: that of the fastest continuous rule of
    /// the config, or the whole-host chain's when there is no rule.
    fn highest_continuous_frequency(&self) -> u64 {
        let base = self.opts.start.frequency_hz;
        self.config()
            .map(|c| slot_rules(&c))
            .unwrap_or_default()
            .iter()
            .filter(|r| r.profiler == "cpu")
            .map(|r| r.frequency.unwrap_or(base))
            .max()
            .unwrap_or(base)
    }

    fn retune_frequency(&mut self) {
        let want = (self.desired)().min(self.guard.cap.unwrap_or(u64::MAX));
        if want == self.opts.start.frequency_hz {
            return;
        }
        let previous = self.opts.start.frequency_hz;
        self.opts.start.frequency_hz = want;
        if self.continuous.is_some() && self.guard.stopped_until.is_none() {
            self.flush_continuous(None);
            self.continuous = None;
            match Collector::start(&self.opts) {
                Ok(c) => self.continuous = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "restarting at {want} Hz failed; staying at {previous} Hz");
                    self.opts.start.frequency_hz = previous;
                    self.continuous = Collector::start(&self.opts).ok();
                }
            }
        }
        eprintln!(
            "baton up: sampling frequency now {} Hz",
            self.opts.start.frequency_hz
        );
        self.status.write().unwrap_or_else(|p| p.into_inner())["frequency_hz"] =
            json!(self.opts.start.frequency_hz);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn known_profilers() -> Vec<&'static str> {
    baton_profilers::registry::builtin_names()
}

/// Loads the tree at start; a broken tree stops `baton up` before anything runs.
pub(crate) fn load_initial_config(dir: &Path) -> anyhow::Result<LiveConfig> {
    match baton_config::load_dir_checked(dir, &known_profilers(), &crate::common::registry_options)
    {
        Ok(cfg) => {
            eprintln!("baton: config {} version {}", dir.display(), cfg.version);
            baton_profilers::registry::set_adhoc(cfg.adhoc.values());
            Ok(LiveConfig {
                dir: dir.display().to_string(),
                config: Some(cfg),
                files: baton_config::read_tree(dir)
                    .map(|f| files_text(&f))
                    .unwrap_or_default(),
                loaded_at_ms: now_ms(),
                ..Default::default()
            })
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                eprintln!(
                    "{}",
                    dir.join(&p.file).display().to_string()
                        + &format!(":{}:{}: {}", p.line, p.col, p.message)
                );
            }
            Err(usage(format!(
                "the config in {} has {} problem(s); fix them (baton config check {0} lists them)",
                dir.display(),
                problems.len()
            )))
        }
        Err(e) => Err(usage(e.to_string())),
    }
}

/// The files of a tree as `(path, text)`.
pub(crate) fn files_text(files: &[baton_config::SourceFile]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|f| (f.path.display().to_string(), f.text.clone()))
        .collect()
}

/// Polls the directory every second. A changed tree is validated whole: a good one replaces the
/// live config, a broken one is logged with every problem and counted, and the last good one
/// stays live.
pub(crate) fn watch_config(dir: &Path, live: &RwLock<LiveConfig>, on_change: &dyn Fn(bool, &str)) {
    let mut seen = live
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .config
        .as_ref()
        .map(|c| c.version.clone());
    while !stop_requested() {
        std::thread::sleep(Duration::from_secs(1));
        let files = match baton_config::read_tree(dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "reading the config directory failed");
                continue;
            }
        };
        let version = baton_config::version_of(&files);
        if seen.as_deref() == Some(version.as_str()) {
            continue;
        }
        seen = Some(version.clone());
        let mut l = live.write().unwrap_or_else(|p| p.into_inner());
        match baton_config::load_checked(
            &files,
            &known_profilers(),
            &crate::common::registry_options,
        ) {
            Ok(cfg) => {
                eprintln!("baton: config reloaded, version {}", cfg.version);
                baton_profilers::registry::set_adhoc(cfg.adhoc.values());
                l.config = Some(cfg);
                l.files = files_text(&files);
                on_change(true, &version);
                l.loaded_at_ms = now_ms();
                l.reloads += 1;
                l.last_errors.clear();
            }
            Err(e) => {
                l.rejected += 1;
                l.last_errors = e
                    .problems()
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{}:{}: {}",
                            dir.join(&p.file).display(),
                            p.line,
                            p.col,
                            p.message
                        )
                    })
                    .collect();
                on_change(false, &version);
                eprintln!(
                    "baton: config version {version} rejected; keeping version {}",
                    l.config
                        .as_ref()
                        .map(|c| c.version.as_str())
                        .unwrap_or("none")
                );
                for line in &l.last_errors {
                    eprintln!("  {line}");
                }
            }
        }
    }
}
