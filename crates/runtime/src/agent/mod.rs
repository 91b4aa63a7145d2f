//! `baton agent`: the per-host half of fleet mode.
//!
//! It profiles this host exactly as `baton up` does (the same driver: continuous windows or the
//! config's rules, triggers, the tuner, the host's own scheduler for its safety rules), but
//! its batches go to the outbox, which ships them to the server, and its on-demand runs come
//! from the server. A control thread registers, then long-polls the server's heartbeat (see
//! `control`). Native frames are shipped unnamed (build ID + offset); the server names them,
//! and asks for the debug info it lacks.

mod control;
mod metrics_http;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use baton_agent::AgentMetrics;
use baton_profilers::ProfilerError;
use baton_scheduler::Tuner;
use baton_server::api::Profiling;
use baton_server::LiveConfig;

use crate::client::Client;
use crate::config_watch::default_config;
use crate::driver::{
    continuous_options, desired_frequency, new_scheduler, spawn_scraper, start_driver, DriverSetup,
};
use crate::outbox::Outbox;
use crate::remote::RemoteRuns;
use crate::sink::Sink;
use crate::stop::{install_stop_handler, request_stop, stop_requested};
use crate::{scheduler_clock, Error};
use control::Control;

/// What `baton agent` runs with.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The server's base URL.
    pub server: String,
    /// Where batches wait until the server has them.
    pub buffer_dir: PathBuf,
    /// The most the buffer holds, in bytes.
    pub buffer_max: u64,
    /// This host's labels.
    pub labels: BTreeMap<String, String>,
    /// This host's name.
    pub host: String,
    /// Address of the agent's own `/metrics`.
    pub listen: String,
    /// The token `/metrics` asks for, when given.
    pub metrics_token: Option<String>,
    /// Continuous frequency; wins over the config's.
    pub frequency: Option<u64>,
    /// Whole-host window length; wins over the config's.
    pub window: Option<Duration>,
    pub cpu_clock: bool,
    /// Name native frames here instead of leaving them to the server.
    pub symbolize_locally: bool,
    /// Upload binaries the server's symbolizer asks for.
    pub debuginfo_upload: bool,
    /// At stop, how long to keep sending what is buffered.
    pub drain_timeout: Duration,
    /// The kubelet's pod list, for pod and container names.
    pub pods: Option<Arc<baton_agent::k8s::PodDirectory>>,
}

/// Runs `baton agent` until SIGINT or SIGTERM; what the server has not taken stays on disk.
pub fn run(a: AgentOptions) -> Result<(), Error> {
    if !baton_profilers::sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission.into());
    }
    let host = a.host.clone();
    let started_ms = scheduler_clock();
    let instance = format!("{}-{started_ms}", std::process::id());
    let client = Client::with_timeout(&a.server, Duration::from_secs(90))?;
    let outbox = Arc::new(Outbox::open(
        &a.buffer_dir,
        a.buffer_max,
        format!("{host}-{started_ms}"),
    )?);
    install_stop_handler();

    let live: Arc<RwLock<LiveConfig>> = Arc::new(RwLock::new(LiveConfig {
        dir: format!("{}/config", client.base()),
        ..Default::default()
    }));
    let metrics = Arc::new(AgentMetrics::default());
    let status = Arc::new(RwLock::new(Profiling::default()));
    let scheduler = new_scheduler(&default_config());
    let desired = desired_frequency(a.frequency, Some(live.clone()));
    let mut opts = continuous_options(
        desired(),
        a.cpu_clock,
        true,
        host.clone(),
        !a.symbolize_locally,
    );
    opts.pods = a.pods.clone();
    let remote = Arc::new(Mutex::new(RemoteRuns::default()));
    let scraped = Arc::default();
    spawn_scraper(live.clone(), Arc::clone(&scraped), metrics.clone())?;
    let (worker, event) = start_driver(DriverSetup {
        opts,
        scheduler: scheduler.clone(),
        live: Some(live.clone()),
        sink: Sink::Ship(outbox.clone()),
        metrics: metrics.clone(),
        desired,
        status: status.clone(),
        window_flag: a.window,
        scraped,
        tuner: Tuner::new(300_000, 1.0, started_ms),
        tuner_file: a.buffer_dir.join("tuner.json"),
        host_name: host.clone(),
        remote: Some(remote.clone()),
        store_during_api: Arc::default(),
    })?;
    eprintln!(
        "baton agent: {host} profiling on {event}; shipping to {} (buffer {} up to {} bytes)",
        client.base(),
        a.buffer_dir.display(),
        a.buffer_max
    );
    let shipper = {
        let outbox = outbox.clone();
        let client = client.clone();
        let host = host.clone();
        let upload = a.debuginfo_upload;
        std::thread::Builder::new()
            .name("baton-shipper".into())
            .spawn(move || outbox.ship_loop(&client, &host, upload, stop_requested))
            .map_err(Error::io("starting the shipper"))?
    };
    let (metrics_server, metrics_addr) = metrics_http::serve(
        &a.listen,
        metrics.clone(),
        outbox.clone(),
        a.metrics_token.clone(),
    )?;
    eprintln!("baton agent: metrics at http://{metrics_addr}/metrics");
    let control = Control {
        client: client.clone(),
        host: host.clone(),
        instance,
        labels: a.labels.clone(),
        live,
        scheduler,
        remote,
        registered: false,
        heartbeat_s: 5,
        beats: 1,
        reported_done: BTreeSet::new(),
        refused: Vec::new(),
        status,
    };
    let control = std::thread::Builder::new()
        .name("baton-control".into())
        .spawn(move || control.run())
        .map_err(Error::io("starting the control thread"))?;
    let _ = control.join();
    request_stop();
    let flushed = worker.join().map_err(|_| Error::CollectorPanicked)?;
    let _ = shipper.join();
    // The driver wrote its last window at stop: give the server a few seconds to take what is
    // left; the rest stays on disk for the next start.
    let deadline = Instant::now() + a.drain_timeout;
    outbox.ship_loop(&client, &host, false, || {
        Instant::now() >= deadline || outbox.pending().0 == 0
    });
    let (left, bytes) = outbox.pending();
    metrics_server.shutdown();
    flushed?;
    let st = &outbox.stats;
    eprintln!(
        "baton agent: stopped; BPF detached; sample rows produced {}, shipped {}, dropped {}; {left} batch(es) ({bytes} bytes) wait in {}",
        st.produced_rows.load(Ordering::Relaxed),
        st.shipped_rows.load(Ordering::Relaxed),
        st.dropped_rows.load(Ordering::Relaxed),
        a.buffer_dir.display()
    );
    Ok(())
}
