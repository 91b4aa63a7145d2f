//! `baton up`: continuous profiling of this host into the embedded store, with the API and UI.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_agent::{AgentMetrics, CollectorOptions, CpuCollector};
use baton_model::parse_duration;
use baton_profilers::cpu::MAX_FREQUENCY_HZ;
use baton_profilers::{CpuOptions, ProfilerError};
use baton_server::{AppState, MetricsFn};
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
    if a.frequency == 0 || a.frequency > MAX_FREQUENCY_HZ {
        return Err(ProfilerError::BadFrequency(a.frequency).into());
    }
    if !baton_profilers::sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission.into());
    }
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
            frequency_hz: a.frequency,
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
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
    let worker = {
        let store = store.clone();
        let metrics = metrics.clone();
        let opts = opts.clone();
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
                collect_loop(collector, store, metrics, window)
            })
            .context("starting the collector thread")?
    };
    let event = started_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the collector thread died while starting"))??;
    eprintln!(
        "baton up: profiling every process at {} Hz on {event}, {}s windows; data in {}; UI at http://{addr}/",
        a.frequency,
        window.as_secs(),
        data.display()
    );

    let m2 = metrics.clone();
    let metrics_fn: MetricsFn = Arc::new(move || m2.export());
    let status = json!({
        "profiler": "cpu",
        "event": event,
        "frequency_hz": a.frequency,
        "window_s": window.as_secs(),
        "data_dir": data.display().to_string(),
        "schema_version": baton_store::SCHEMA_VERSION,
        "host": opts.host,
    });
    let state = AppState::new(store.clone(), Some(metrics_fn), status);

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

/// Discovers processes often, drains a window every `window`, and flushes the last one on stop.
/// The collector is dropped at the end, which detaches every BPF program.
fn collect_loop(
    mut collector: CpuCollector,
    store: Arc<Mutex<Box<dyn Store>>>,
    metrics: Arc<AgentMetrics>,
    window: Duration,
) -> anyhow::Result<()> {
    let mut last = Instant::now();
    while !stop_requested() {
        std::thread::sleep(Duration::from_millis(250));
        collector.discover();
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
