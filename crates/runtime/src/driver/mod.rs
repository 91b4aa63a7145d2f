//! The driver: carries out the scheduler's decisions on this host.
//!
//! Continuous profiling takes one of two forms. With no continuous rules in the config, every
//! process is profiled by a chain of *host* continuous runs, one per window, with weight 1.
//! With rules, only the rules run: each rule draws once per slot against its tuned probability
//! `p`, and a drawn run profiles the service's processes with every sample weighted `1 / p`.
//! On-demand and triggered runs preempt continuous ones (the CPU profiler holds the PMU
//! exclusively), which resume when they end. Every run but the host chain has its own targeted
//! collector. The collectors are dropped at the end, which detaches every BPF program.
//!
//! By concern: `pass` is the loop (one pass: scheduler, decisions, draws, tuning, triggers,
//! discovery, the nap); `continuous` the host chain, the rules' draws and the tuner;
//! `targeted` every other run's collector; `budget` the write budgets every batch goes
//! through; `guard` the overhead guard.

mod budget;
mod continuous;
mod guard;
mod pass;
mod targeted;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use baton_agent::{AgentMetrics, Collector, CollectorOptions};
use baton_model::sync;
use baton_profilers::StartOptions;
use baton_scheduler::continuous::host_key;
use baton_scheduler::{Observation, ProfilerSpec, Scheduler, Tuner, WriteBudgets};
use baton_server::api::Profiling;
use baton_server::LiveConfig;

use crate::remote::RemoteRuns;
use crate::sink::Sink;
use crate::stop::stop_requested;
use crate::triggers::{scrape_loop, TriggerWatch};
use crate::Error;

pub use continuous::{is_host_chain, load_tuner, window_for, TUNER_FILE};
use guard::OverheadGuard;

/// The scheduler's name for this host in `baton up` (and for the agent's own scheduler).
pub const LOCAL_HOST: &str = "local";

/// The pseudo-service of the whole-host continuous chain.
const HOST_CHAIN: &str = baton_scheduler::fleet_tuner::HOST_CHAIN_SERVICE;

/// The frequency continuous profiling wants now (flag, config or default).
pub type DesiredFrequency = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Everything the driver thread needs.
pub struct DriverSetup {
    pub opts: CollectorOptions,
    pub scheduler: Arc<Mutex<Scheduler>>,
    pub live: Option<Arc<RwLock<LiveConfig>>>,
    pub sink: Sink,
    pub metrics: Arc<AgentMetrics>,
    pub desired: DesiredFrequency,
    pub status: Arc<RwLock<Profiling>>,
    pub window_flag: Option<Duration>,
    pub scraped: Arc<Mutex<Vec<Observation>>>,
    pub tuner: Tuner,
    pub tuner_file: PathBuf,
    pub host_name: String,
    pub remote: Option<Arc<Mutex<RemoteRuns>>>,
    /// CPU (ns) the store's worker threads spent on API queries, which the overhead guard
    /// leaves out (`baton up`; it stays 0 in `baton agent`, which has no store).
    pub store_during_api: Arc<AtomicU64>,
}

/// `flag`, else the config's `[profilers.cpu] frequency`, else the continuous default: read
/// again on every pass, so a config change applies without a restart.
pub fn desired_frequency(
    flag: Option<u64>,
    live: Option<Arc<RwLock<LiveConfig>>>,
) -> DesiredFrequency {
    Arc::new(move || {
        flag.or_else(|| {
            let l = sync::read(live.as_ref()?);
            l.config.as_ref()?.profilers.get("cpu")?.frequency
        })
        .unwrap_or(baton_profilers::cpu::DEFAULT_CONTINUOUS_HZ)
    })
}

/// The whole-host CPU collector's options. Continuous profiling does not attach to JVMs.
pub fn continuous_options(
    frequency_hz: u64,
    force_cpu_clock: bool,
    dwarf: bool,
    host: String,
    defer_symbols: bool,
) -> CollectorOptions {
    CollectorOptions {
        profiler: "cpu".into(),
        start: StartOptions {
            frequency_hz,
            targets: None,
            follow_forks: false,
            force_cpu_clock,
            dwarf,
            options: Default::default(),
            pending_exec: None,
            attach_in_background: true,
        },
        host,
        jvm_perf_maps: false,
        defer_discovery: false,
        defer_symbols,
        pods: None,
    }
}

/// A scheduler for this host, with every profiler of the registry and the config's limits.
pub fn new_scheduler(config: &baton_config::Config) -> Arc<Mutex<Scheduler>> {
    let specs = baton_profilers::registry::infos()
        .into_iter()
        .map(ProfilerSpec::from_info)
        .collect();
    Arc::new(Mutex::new(Scheduler::new(config, specs)))
}

/// Starts the thread that scrapes the Prometheus endpoints the config's triggers name; its
/// observations reach the driver through `scraped`.
pub fn spawn_scraper(
    live: Arc<RwLock<LiveConfig>>,
    scraped: Arc<Mutex<Vec<Observation>>>,
    metrics: Arc<AgentMetrics>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("baton-scrape".into())
        .spawn(move || scrape_loop(&live, &scraped, &metrics, LOCAL_HOST, stop_requested))
        .map_err(Error::io("starting the trigger scraper"))?;
    Ok(())
}

/// The collector thread, which returns when a stop is asked for.
pub type DriverThread = std::thread::JoinHandle<Result<(), Error>>;

/// Starts the collector thread and its driver; returns it and the perf event it samples on.
/// The symbolizer and BPF skeleton are not Send, so the collector is built on its own thread
/// and reports how its start went.
pub fn start_driver(setup: DriverSetup) -> Result<(DriverThread, String), Error> {
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let worker = std::thread::Builder::new()
        .name("baton-collector".into())
        .spawn(move || -> Result<(), Error> {
            let collector = match Collector::start(&setup.opts) {
                Ok(c) => {
                    let _ = started_tx.send(Ok(c.event_name()));
                    c
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return Ok(());
                }
            };
            Driver::new(setup, collector).run();
            Ok(())
        })
        .map_err(Error::io("starting the collector thread"))?;
    let event = started_rx.recv().map_err(|_| Error::CollectorDied)??;
    Ok((worker, event))
}

/// Carries out the scheduler's decisions on this host (see the module's documentation).
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
    /// When each targeted run's profiler was attached (its collector started).
    profiling_since: HashMap<u64, Instant>,
    /// The config version the scheduler was last given.
    config_version: Option<String>,
    scheduler: Arc<Mutex<Scheduler>>,
    sink: Sink,
    /// Fleet mode: the server's ids of the runs it placed here.
    remote: Option<Arc<Mutex<RemoteRuns>>>,
    metrics: Arc<AgentMetrics>,
    /// `--window`, which wins over the config's `[profilers.cpu] window`.
    window_flag: Option<Duration>,
    desired: DesiredFrequency,
    status: Arc<RwLock<Profiling>>,
    live: Option<Arc<RwLock<LiveConfig>>>,
    triggers: TriggerWatch,
    budgets: WriteBudgets,
    guard: OverheadGuard,
    /// Run probabilities of the config's continuous rules, re-tuned from what this host saw.
    tuner: Tuner,
    /// Where the tuner's state is kept across restarts.
    tuner_file: PathBuf,
    /// The last slot drawn for each continuous rule.
    drawn: HashMap<(String, usize), u64>,
    /// Continuous rules whose profiler this host cannot run, already said.
    said_unavailable: std::collections::HashSet<(String, usize)>,
    host_key: u64,
    /// Fleet mode: when the whole-host chain draws its next window.
    chain_next_ms: u64,
    /// The weight of the whole-host window under way (`1 / p` of its draw).
    chain_weight: f64,
    /// Sample rows stored of the whole-host window under way.
    chain_rows: u64,
}

impl Driver {
    fn new(setup: DriverSetup, collector: Collector) -> Driver {
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
        Driver {
            opts,
            continuous: Some(collector),
            continuous_run: None,
            targeted: BTreeMap::new(),
            flush_due: HashMap::new(),
            flushed: HashMap::new(),
            profiling_since: HashMap::new(),
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
            guard: OverheadGuard::new(store_during_api),
            tuner,
            tuner_file,
            drawn: HashMap::new(),
            said_unavailable: Default::default(),
            host_key: host_key(&host_name),
            chain_next_ms: 0,
            chain_weight: 1.0,
            chain_rows: 0,
        }
    }

    /// The live config, if there is one.
    fn config(&self) -> Option<baton_config::Config> {
        self.live
            .as_ref()
            .and_then(|l| sync::read(l).config.clone())
    }
}
