//! `baton up`: continuous profiling of this host into the embedded store, with the API and UI.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_agent::{AgentMetrics, CollectorOptions, CpuCollector};
use baton_config::ConfigError;
use baton_model::parse_duration;
use baton_profilers::cpu::MAX_FREQUENCY_HZ;
use baton_profilers::{CpuOptions, ProfilerError};
use baton_server::{AppState, LiveConfig, MetricsFn};
use baton_store::{DuckDbStore, Store};
use serde_json::json;

use crate::common::{default_data_dir, usage};
use crate::record::{install_stop_handler, stop_requested};
use crate::UpArgs;

pub fn run(a: UpArgs) -> anyhow::Result<ExitCode> {
    let window = parse_duration(&a.window).map_err(|e| usage(format!("--window: {e}")))?;
    if window < Duration::from_secs(1) {
        return Err(usage("--window must be at least 1s"));
    }
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
    let data = a.data.clone().unwrap_or_else(default_data_dir);
    let store = DuckDbStore::open(&data)?;
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

    let opts = CollectorOptions {
        cpu: CpuOptions {
            frequency_hz: desired(),
            targets: None,
            follow_forks: false,
            force_cpu_clock: a.cpu_clock,
        },
        host: baton_agent::hostname(),
    };
    install_stop_handler();
    // The symbolizer and BPF skeleton are not Send, so the collector is built on its own thread
    // and reports how its start went.
    let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(Box::new(store)));
    let metrics = Arc::new(AgentMetrics::default());
    let status = Arc::new(RwLock::new(json!({})));
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let worker = {
        let store = store.clone();
        let metrics = metrics.clone();
        let opts = opts.clone();
        let desired = desired.clone();
        let status = status.clone();
        std::thread::Builder::new()
            .name("baton-collector".into())
            .spawn(move || -> anyhow::Result<()> {
                let collector = match CpuCollector::start(&opts) {
                    Ok(c) => {
                        let _ = started_tx.send(Ok(c.event().name()));
                        c
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return Ok(());
                    }
                };
                collect_loop(collector, opts, store, metrics, window, desired, status)
            })
            .context("starting the collector thread")?
    };
    let event = started_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the collector thread died while starting"))??;
    eprintln!(
        "baton up: profiling every process at {} Hz on {event}, {}s windows; data in {}; UI at http://{addr}/",
        opts.cpu.frequency_hz,
        window.as_secs(),
        data.display()
    );

    let m2 = metrics.clone();
    let metrics_fn: MetricsFn = Arc::new(move || m2.export());
    {
        let mut st = status.write().unwrap_or_else(|p| p.into_inner());
        *st = json!({
            "profiler": "cpu",
            "event": event,
            "frequency_hz": opts.cpu.frequency_hz,
            "window_s": window.as_secs(),
            "data_dir": data.display().to_string(),
            "schema_version": baton_store::SCHEMA_VERSION,
            "host": opts.host,
            "config_dir": a.config.as_ref().map(|d| d.display().to_string()),
        });
    }
    if let (Some(dir), Some(live)) = (&a.config, &live) {
        let dir = dir.clone();
        let live = live.clone();
        std::thread::Builder::new()
            .name("baton-config-watch".into())
            .spawn(move || watch_config(&dir, &live))
            .context("starting the config watcher")?;
    }
    let state = AppState::new(
        store.clone(),
        Some(metrics_fn),
        status.clone(),
        live.clone(),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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

fn write(store: &Mutex<Box<dyn Store>>, metrics: &AgentMetrics, report: baton_agent::WindowReport) {
    let rows = report.batch.samples.len() as u64;
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

/// Discovers processes often, drains a window every `window`, restarts the profiler when the
/// desired frequency changes (a config reload), and flushes the last window on stop. The
/// collector is dropped at the end, which detaches every BPF program.
fn collect_loop(
    mut collector: CpuCollector,
    mut opts: CollectorOptions,
    store: Arc<Mutex<Box<dyn Store>>>,
    metrics: Arc<AgentMetrics>,
    window: Duration,
    desired: Arc<dyn Fn() -> u64 + Send + Sync>,
    status: Arc<RwLock<serde_json::Value>>,
) -> anyhow::Result<()> {
    let mut last = Instant::now();
    while !stop_requested() {
        std::thread::sleep(Duration::from_millis(250));
        collector.discover();
        let want = desired();
        if want != opts.cpu.frequency_hz {
            // Flush what the old rate gathered, then start again at the new one.
            match collector.collect(Some(&metrics)) {
                Ok(r) => write(&store, &metrics, r),
                Err(e) => tracing::error!(error = %e, "draining before a restart failed"),
            }
            let previous = opts.cpu.frequency_hz;
            opts.cpu.frequency_hz = want;
            drop(collector);
            collector = match CpuCollector::start(&opts) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "restarting at {want} Hz failed; staying at {previous} Hz");
                    opts.cpu.frequency_hz = previous;
                    CpuCollector::start(&opts)?
                }
            };
            eprintln!(
                "baton up: sampling frequency now {} Hz",
                opts.cpu.frequency_hz
            );
            status.write().unwrap_or_else(|p| p.into_inner())["frequency_hz"] =
                json!(opts.cpu.frequency_hz);
            last = Instant::now();
        }
        if last.elapsed() >= window {
            last = Instant::now();
            match collector.collect(Some(&metrics)) {
                Ok(r) => write(&store, &metrics, r),
                Err(e) => tracing::error!(error = %e, "draining a window failed"),
            }
        }
    }
    let r = collector.collect(Some(&metrics))?;
    write(&store, &metrics, r);
    drop(collector);
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn known_profilers() -> Vec<&'static str> {
    baton_profilers::ProfilerKind::ALL
        .iter()
        .map(|k| k.name())
        .collect()
}

/// Loads the tree at start; a broken tree stops `baton up` before anything runs.
fn load_initial_config(dir: &Path) -> anyhow::Result<LiveConfig> {
    match baton_config::load_dir(dir, &known_profilers()) {
        Ok(cfg) => {
            eprintln!("baton up: config {} version {}", dir.display(), cfg.version);
            Ok(LiveConfig {
                dir: dir.display().to_string(),
                config: Some(cfg),
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

/// Polls the directory every second. A changed tree is validated whole: a good one replaces the
/// live config, a broken one is logged with every problem and counted, and the last good one
/// stays live.
fn watch_config(dir: &Path, live: &RwLock<LiveConfig>) {
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
        match baton_config::load(&files, &known_profilers()) {
            Ok(cfg) => {
                eprintln!("baton up: config reloaded, version {}", cfg.version);
                l.config = Some(cfg);
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
                eprintln!(
                    "baton up: config version {version} rejected; keeping version {}",
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
