//! `baton up`: continuous profiling of this host into the embedded store, with the API and UI:
//! the store, the driver, the scraper and config-watch threads, and the HTTP server, until a
//! stop is asked for.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use baton_agent::AgentMetrics;
use baton_model::sync;
use baton_profilers::ProfilerError;
use baton_scheduler::continuous::slot_rules;
use baton_scheduler::Tuner;
use baton_server::api::{Facts, Profiling, UpFacts};
use baton_server::auth::{Audit, Tokens};
use baton_server::runs::RunsHandle;
use baton_server::{AppState, MetricsFn};
use baton_store::{DuckDbStore, Store};

use crate::config_watch::{default_config, load_initial_config, spawn_config_watch};
use crate::driver::{
    continuous_options, desired_frequency, load_tuner, new_scheduler, spawn_scraper, start_driver,
    window_for, DriverSetup, LOCAL_HOST, TUNER_FILE,
};
use crate::sink::Sink;
use crate::stop::{install_stop_handler, request_stop, until_stopped};
use crate::{scheduler_clock, Error};

/// What `baton up` runs with.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Address for the API and UI.
    pub listen: String,
    /// Data directory.
    pub data: PathBuf,
    /// Continuous frequency; wins over the config's.
    pub frequency: Option<u64>,
    /// The config-as-code directory, watched.
    pub config: Option<PathBuf>,
    /// Whole-host window length; wins over the config's.
    pub window: Option<Duration>,
    pub cpu_clock: bool,
    /// Unwind user stacks without frame pointers from DWARF CFI.
    pub dwarf: bool,
    /// Tokens file; needed when `listen` is not loopback.
    pub auth: Option<PathBuf>,
    /// The kubelet's pod list, for pod and container names.
    pub pods: Option<Arc<baton_agent::k8s::PodDirectory>>,
}

/// Runs `baton up` until SIGINT or SIGTERM: BPF is detached and the last window written.
pub fn run(a: UpOptions) -> Result<(), Error> {
    if !baton_profilers::sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission.into());
    }
    let live = match &a.config {
        Some(dir) => Some(Arc::new(RwLock::new(load_initial_config(dir)?))),
        None => None,
    };
    // --frequency wins over the config's [profilers.cpu] frequency, which wins over the default.
    let desired = desired_frequency(a.frequency, live.clone());
    let window = window_for(a.window, live.as_deref());
    let data = a.data.clone();
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
    let listener = std::net::TcpListener::bind(&a.listen).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse(a.listen.clone())
        } else {
            Error::Listen {
                addr: a.listen.clone(),
                error,
            }
        }
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    // Loopback needs no token (--insecure-local); any other address does.
    let tokens = match &a.auth {
        Some(f) => Some(Arc::new(Tokens::load(f).map_err(Error::Tokens)?)),
        None if addr.ip().is_loopback() => None,
        None => return Err(Error::NeedsAuth(addr)),
    };

    let mut opts = continuous_options(
        desired(),
        a.cpu_clock,
        a.dwarf,
        baton_agent::hostname(),
        false,
    );
    opts.pods = a.pods.clone();
    install_stop_handler();
    let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(store)));
    let metrics = Arc::new(AgentMetrics::default());
    let status = Arc::new(RwLock::new(Profiling::default()));
    let effective = live
        .as_ref()
        .and_then(|l| sync::read(l).config.clone())
        .unwrap_or_else(default_config);
    let scheduler = new_scheduler(&effective);
    let tuner_interval = effective.tuner.interval.as_millis() as u64;
    let host_name = opts.host.clone();
    let service_rules = slot_rules(&effective)
        .into_iter()
        .filter(|r| r.profiler == "cpu")
        .count();
    let tuner_file = data.join(TUNER_FILE);
    let mut tuner = Tuner::new(tuner_interval, 1.0, scheduler_clock());
    match load_tuner(&tuner_file) {
        Ok(Some(state)) => {
            eprintln!(
                "baton up: tuner: {} rule(s) restored from {}",
                state.len(),
                tuner_file.display()
            );
            tuner.restore(&state);
        }
        Ok(None) => {}
        Err(e) => eprintln!("baton up: tuner: ignoring {}: {e}", tuner_file.display()),
    }
    // Runs that end go to the store's run history, and ids go on after it.
    if let Err(e) = crate::history::continue_ids(&scheduler, &store) {
        tracing::warn!(error = %e, "reading the run history failed; run ids start at 1");
    }
    let history = crate::history::spawn(scheduler.clone(), store.clone(), opts.host.clone())?;
    let scraped = Arc::default();
    if let Some(live) = &live {
        spawn_scraper(live.clone(), Arc::clone(&scraped), metrics.clone())?;
    }
    let (worker, event) = start_driver(DriverSetup {
        opts: opts.clone(),
        scheduler: scheduler.clone(),
        live: live.clone(),
        sink: Sink::Store(store.clone()),
        metrics: metrics.clone(),
        desired: desired.clone(),
        status: status.clone(),
        window_flag: a.window,
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
    let metrics_fn: MetricsFn = Arc::new(move || m2.lines());
    sync::write(&status).frequency_hz = Some(opts.start.frequency_hz);
    let facts = Facts::Up(UpFacts {
        profiler: "cpu",
        event: event.to_string(),
        window_s: window.as_secs(),
        data_dir: data.display().to_string(),
        schema_version: baton_store::SCHEMA_VERSION,
        host: opts.host.clone(),
        config_dir: a.config.as_ref().map(|d| d.display().to_string()),
        profilers: baton_profilers::registry::infos(),
    });
    let audit = Arc::new(Audit::new(data.join("audit.log")));
    if let (Some(dir), Some(live)) = (&a.config, &live) {
        spawn_config_watch(dir.clone(), live.clone(), audit.clone(), None)?;
    }
    let mut state = AppState::new(
        store.clone(),
        Some(metrics_fn),
        facts,
        status.clone(),
        live.clone(),
    );
    state.audit = Some(audit);
    state.tokens = tokens;
    state.store_cpu = Some(store_cpu.clone());
    state.runs = Some(RunsHandle {
        scheduler: scheduler.clone(),
        host: LOCAL_HOST.to_string(),
        clock: scheduler_clock,
        check_options: |profiler, options| match baton_profilers::registry::find(profiler) {
            Ok(r) => r.info.check_options(options),
            // The scheduler refuses unknown profilers with its own message.
            Err(_) => Ok(()),
        },
    });

    // FDO profiles that continuous rules ask to keep fresh.
    state.fdo_dir = Some(data.join("fdo"));
    baton_server::fdo_fresh::spawn(state.clone(), data.join("fdo"), crate::stop::stop_requested)
        .map_err(Error::io("starting the FDO refresher"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(baton_agent::metrics::API_THREAD_NAME)
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        baton_server::serve(listener, state, until_stopped()).await
    });
    // Make sure the collector stops even if the server failed.
    request_stop();
    let flushed = worker.join().map_err(|_| Error::CollectorPanicked)?;
    // The collector ended its runs: the history thread writes them before it returns.
    let _ = history.join();
    served.map_err(Error::io("HTTP server"))?;
    flushed?;
    eprintln!(
        "baton up: stopped; BPF detached, last window written to {}",
        data.display()
    );
    Ok(())
}
