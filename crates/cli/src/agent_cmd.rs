//! `baton agent`: the per-host half of fleet mode.
//!
//! It profiles this host exactly as `baton up` does (the same driver: continuous windows or the
//! config's rules, triggers, the tuner, the host's own scheduler for its safety rules), but
//! its batches go to the outbox, which ships them to the server, and its on-demand runs come
//! from the server. A control thread registers, then long-polls the server's heartbeat: it
//! reports the states of the server's runs, queues the runs assigned to this host, cancels
//! what the server cancels, and applies each new config the server sends. Native frames are
//! shipped unnamed (build ID + offset); the server names them, and asks for the debug info it
//! lacks.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_agent::targets::selector_pids;
use baton_agent::{AgentMetrics, CollectorOptions};
use baton_profilers::{ProfilerError, StartOptions};
use baton_scheduler::{JobRequest, Mode, ProfilerSpec, Scheduler, Tuner};
use baton_server::fleet::{Heartbeat, HeartbeatReply, Registration, RunReport};
use baton_server::LiveConfig;
use serde_json::json;

use crate::client::Client;
use crate::outbox::Outbox;
use crate::record::{install_stop_handler, request_stop, stop_requested};
use crate::up::{start_driver, DriverSetup, RemoteRuns, Sink};
use crate::AgentArgs;

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    if !baton_profilers::sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission.into());
    }
    let max = crate::common::parse_size(&a.buffer_max)
        .map_err(|e| crate::common::usage(format!("--buffer-max: {e}")))?;
    let mut labels = std::collections::BTreeMap::new();
    for l in &a.label {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| crate::common::usage(format!("--label {l:?}: write it as key=value")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let host = a.host.clone().unwrap_or_else(baton_agent::hostname);
    let started_ms = crate::up::now_ms_u64();
    let instance = format!("{}-{started_ms}", std::process::id());
    let client = Client::with_timeout(&a.server, Duration::from_secs(90))?;
    let outbox = Arc::new(Outbox::open(
        &a.buffer_dir,
        max,
        format!("{host}-{started_ms}"),
    )?);
    install_stop_handler();

    let live: Arc<RwLock<LiveConfig>> = Arc::new(RwLock::new(LiveConfig {
        dir: format!("{}/config", client.base()),
        ..Default::default()
    }));
    let metrics = Arc::new(AgentMetrics::default());
    let status = Arc::new(RwLock::new(json!({})));
    let specs = baton_profilers::registry::infos()
        .into_iter()
        .map(ProfilerSpec::from_info)
        .collect();
    let scheduler = Arc::new(Mutex::new(Scheduler::new(
        &baton_config::load(&[], &[]).expect("an empty tree is valid"),
        specs,
    )));
    let frequency = a.frequency;
    let desired: Arc<dyn Fn() -> u64 + Send + Sync> = {
        let live = live.clone();
        Arc::new(move || {
            frequency
                .or_else(|| {
                    let l = live.read().unwrap_or_else(|p| p.into_inner());
                    l.config.as_ref()?.profilers.get("cpu")?.frequency
                })
                .unwrap_or(baton_profilers::cpu::DEFAULT_CONTINUOUS_HZ)
        })
    };
    let opts = CollectorOptions {
        profiler: "cpu".into(),
        start: StartOptions {
            frequency_hz: desired(),
            targets: None,
            follow_forks: false,
            force_cpu_clock: a.cpu_clock,
            dwarf: true,
            options: Default::default(),
            pending_exec: None,
            attach_in_background: true,
        },
        host: host.clone(),
        jvm_perf_maps: false,
        defer_discovery: false,
        defer_symbols: !a.symbolize_locally,
    };
    let remote = Arc::new(Mutex::new(RemoteRuns::default()));
    let scraped: Arc<Mutex<Vec<baton_scheduler::Observation>>> = Arc::default();
    {
        let live = live.clone();
        let out = scraped.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("baton-scrape".into())
            .spawn(move || {
                crate::watch::scrape_loop(&live, &out, &metrics, "local", stop_requested)
            })
            .context("starting the trigger scraper")?;
    }
    let window_flag = match &a.window {
        Some(w) => Some(
            baton_model::parse_duration(w)
                .map_err(|e| crate::common::usage(format!("--window: {e}")))?
                .max(Duration::from_secs(1)),
        ),
        None => None,
    };
    let (worker, event) = start_driver(DriverSetup {
        opts,
        scheduler: scheduler.clone(),
        live: Some(live.clone()),
        sink: Sink::Ship(outbox.clone()),
        metrics: metrics.clone(),
        desired,
        status: status.clone(),
        window_flag,
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
        max
    );
    let drain_client = client.clone();
    let host_for_drain = host.clone();
    let shipper = {
        let outbox = outbox.clone();
        let client = client.clone();
        let host = host.clone();
        let upload = !a.no_debuginfo_upload;
        std::thread::Builder::new()
            .name("baton-shipper".into())
            .spawn(move || outbox.ship_loop(&client, &host, upload, stop_requested))
            .context("starting the shipper")?
    };
    let (metrics_server, metrics_addr) = serve_metrics(&a.listen, metrics.clone(), outbox.clone())?;
    eprintln!("baton agent: metrics at http://{metrics_addr}/metrics");
    let control = Control {
        client,
        host,
        instance,
        labels,
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
        .context("starting the control thread")?;
    let _ = control.join();
    request_stop();
    let flushed = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the collector thread panicked"))?;
    let _ = shipper.join();
    // The driver wrote its last window at stop: give the server a few seconds to take what is
    // left; the rest stays on disk for the next start.
    let drain = crate::common::parse_duration_flag(&a.drain_timeout, "--drain-timeout")?;
    let deadline = Instant::now() + drain;
    outbox.ship_loop(&drain_client, &host_for_drain, false, || {
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
    Ok(ExitCode::SUCCESS)
}

/// The agent's side of the conversation with the server.
struct Control {
    client: Client,
    host: String,
    instance: String,
    labels: std::collections::BTreeMap<String, String>,
    live: Arc<RwLock<LiveConfig>>,
    scheduler: Arc<Mutex<Scheduler>>,
    remote: Arc<Mutex<RemoteRuns>>,
    registered: bool,
    heartbeat_s: u64,
    beats: u64,
    /// Server runs whose end was reported already.
    reported_done: BTreeSet<u64>,
    /// Server runs this host could not queue, with the reason, to report once.
    refused: Vec<RunReport>,
    /// The driver's status (overhead, write budgets, frequency), sent with each heartbeat.
    status: Arc<RwLock<serde_json::Value>>,
}

impl Control {
    fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        while !stop_requested() {
            let ok = if self.registered {
                self.heartbeat()
            } else {
                self.register()
            };
            match ok {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    tracing::info!(error = %e, "the server is unreachable; profiling goes on");
                    sleep_unless_stopped(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn registration(&self) -> Registration {
        Registration {
            host: self.host.clone(),
            instance: self.instance.clone(),
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpus: baton_profilers::sys::online_cpus()
                .map(|c| c.len() as u32)
                .unwrap_or(0),
            labels: self.labels.clone(),
            services: self.services(),
            containers: containers(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Config services with processes on this host.
    fn services(&self) -> Vec<String> {
        let l = self.live.read().unwrap_or_else(|p| p.into_inner());
        let Some(c) = &l.config else {
            return Vec::new();
        };
        c.services
            .iter()
            .filter(|(_, s)| !selector_pids(&s.selector).is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn register(&mut self) -> anyhow::Result<()> {
        let body = serde_json::to_value(self.registration())?;
        let (code, out) = self.client.post_json("/api/v1/agents/register", &body)?;
        if code != 200 {
            anyhow::bail!("register: {code} {}", String::from_utf8_lossy(&out));
        }
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        self.heartbeat_s = v["heartbeat_s"].as_u64().unwrap_or(5).max(1);
        if let Ok(Some(c)) = serde_json::from_value(v["config"].clone()) {
            self.apply_config(c);
        }
        self.registered = true;
        eprintln!(
            "baton agent: registered {} with {} (heartbeat every {}s)",
            self.host,
            self.client.base(),
            self.heartbeat_s
        );
        Ok(())
    }

    /// States of the server's runs on this host, for the heartbeat.
    fn reports(&mut self) -> Vec<RunReport> {
        let mut out = std::mem::take(&mut self.refused);
        let map: Vec<(u64, u64)> = self
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .server_id
            .iter()
            .map(|(l, s)| (*l, *s))
            .collect();
        let s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        for (local, server) in map {
            if self.reported_done.contains(&server) {
                continue;
            }
            if let Some(r) = s.run(local) {
                let state = serde_json::to_value(r.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "running".into());
                out.push(RunReport {
                    id: server,
                    state,
                    reason: r.reason.clone(),
                    samples: r.samples,
                    started_at_ms: r.started_at,
                    ended_at_ms: r.ended_at,
                });
            }
        }
        out
    }

    fn heartbeat(&mut self) -> anyhow::Result<()> {
        let reports = self.reports();
        let hb = Heartbeat {
            host: self.host.clone(),
            instance: self.instance.clone(),
            runs: reports.clone(),
            config_version: self
                .live
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .config
                .as_ref()
                .map(|c| c.version.clone()),
            wait_s: self.heartbeat_s,
            // Services come and go with their processes: look again every 30 heartbeats.
            services: (self.beats % 30 == 0).then(|| self.services()),
            health: {
                let st = self.status.read().unwrap_or_else(|p| p.into_inner());
                Some(json!({
                    "overhead": st.get("overhead"),
                    "write_budgets": st.get("write_budgets"),
                    "frequency_hz": st.get("frequency_hz"),
                    "continuous": st.get("continuous").and_then(|c| c.get("mode")),
                }))
            },
        };
        self.beats += 1;
        let (code, out) = self
            .client
            .post_json("/api/v1/agents/heartbeat", &serde_json::to_value(&hb)?)?;
        if code == 404 || code == 409 {
            // The server restarted (or another agent took the name): register again.
            self.registered = false;
            return Ok(());
        }
        if code != 200 {
            anyhow::bail!("heartbeat: {code} {}", String::from_utf8_lossy(&out));
        }
        for r in &reports {
            if matches!(r.state.as_str(), "done" | "failed" | "cancelled") {
                self.reported_done.insert(r.id);
            }
        }
        let reply: HeartbeatReply = serde_json::from_slice(&out)?;
        self.heartbeat_s = reply.heartbeat_s.max(1);
        if let Some(c) = reply.config {
            self.apply_config(c);
        }
        let now = crate::up::now_ms_u64();
        for asg in reply.assign {
            let req = JobRequest {
                profiler: asg.profiler.clone(),
                host: "local".into(),
                target: asg.target.clone(),
                mode: Mode::OnDemand,
                duration_ms: asg.duration_ms,
                frequency: asg.frequency,
                priority: asg.priority,
                force: asg.force,
                owner: asg.owner.clone(),
                not_before: now,
                weight: 1.0,
                options: asg.options.clone(),
            };
            let submitted = self
                .scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .submit(req, now);
            match submitted {
                Ok(local) => {
                    self.remote
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .server_id
                        .insert(local, asg.id);
                    eprintln!(
                        "baton agent: run {} ({} on {}) queued here as {local}",
                        asg.id, asg.profiler, asg.target
                    );
                }
                Err(e) => self.refused.push(RunReport {
                    id: asg.id,
                    state: "failed".into(),
                    reason: Some(format!("this host refused the run: {e}")),
                    samples: 0,
                    started_at_ms: None,
                    ended_at_ms: None,
                }),
            }
        }
        for id in reply.cancel {
            let local = self
                .remote
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .server_id
                .iter()
                .find(|(_, s)| **s == id)
                .map(|(l, _)| *l);
            if let Some(local) = local {
                let mut s = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = s.cancel(local, now, "cancelled through the server") {
                    tracing::warn!(run = id, error = %e, "cancel failed");
                }
            }
        }
        Ok(())
    }

    /// Validates the server's config tree with this agent's registry and makes it live; a tree
    /// this agent cannot run is logged and the last good one stays.
    fn apply_config(&self, c: baton_server::fleet::ConfigFiles) {
        let files: Vec<baton_config::SourceFile> = c
            .files
            .iter()
            .map(|(p, t)| baton_config::SourceFile {
                path: p.into(),
                text: t.clone(),
            })
            .collect();
        let mut l = self.live.write().unwrap_or_else(|p| p.into_inner());
        match baton_config::load_checked(
            &files,
            &baton_profilers::registry::builtin_names(),
            &crate::common::registry_options,
        ) {
            Ok(cfg) => {
                eprintln!(
                    "baton agent: config version {} from the server",
                    cfg.version
                );
                l.config = Some(cfg);
                l.files = c.files;
                l.reloads += 1;
                l.loaded_at_ms = crate::up::now_ms_u64() as i64;
            }
            Err(e) => {
                l.rejected += 1;
                eprintln!(
                    "baton agent: the server's config version {} does not validate here; keeping the last good one",
                    c.version
                );
                for p in e.problems() {
                    eprintln!("  {}:{}:{}: {}", p.file.display(), p.line, p.col, p.message);
                }
            }
        }
    }
}

fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop_requested() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Container cgroups on this host (Docker, containerd, CRI-O, Podman), by their cgroup path.
fn containers() -> Vec<String> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("cgroup")) else {
            continue;
        };
        for line in text.lines() {
            let path = line.rsplit(':').next().unwrap_or("");
            if [
                "docker-",
                "cri-containerd-",
                "crio-",
                "libpod-",
                "/docker/",
                "/kubepods",
            ]
            .iter()
            .any(|m| path.contains(m))
            {
                out.insert(path.to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// The agent's own `/metrics` (and `/healthz`), on `--listen`.
struct MetricsServer {
    rt: tokio::runtime::Runtime,
}

impl MetricsServer {
    fn shutdown(self) {
        self.rt.shutdown_timeout(Duration::from_millis(200));
    }
}

fn serve_metrics(
    listen: &str,
    metrics: Arc<AgentMetrics>,
    outbox: Arc<Outbox>,
) -> anyhow::Result<(MetricsServer, std::net::SocketAddr)> {
    use axum::routing::get;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| crate::common::usage(format!("cannot listen on {listen}: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let text = move || {
        let mut lines = metrics.export();
        let s = &outbox.stats;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let (pending, bytes) = outbox.pending();
        lines.extend([
            (
                "baton_agent_samples_produced_total",
                "Sample rows the agent's profilers produced (put in the outbox).",
                "counter",
                g(&s.produced_rows),
            ),
            (
                "baton_agent_samples_shipped_total",
                "Sample rows the server acknowledged.",
                "counter",
                g(&s.shipped_rows),
            ),
            (
                "baton_agent_samples_dropped_total",
                "Sample rows dropped: the buffer was full, or the server refused the batch.",
                "counter",
                g(&s.dropped_rows),
            ),
            (
                "baton_agent_batches_shipped_total",
                "Batches the server acknowledged.",
                "counter",
                g(&s.shipped_batches),
            ),
            (
                "baton_agent_batches_dropped_total",
                "Batches dropped (buffer full or refused).",
                "counter",
                g(&s.dropped_batches),
            ),
            (
                "baton_agent_batches_refused_total",
                "Batches the server refused as malformed.",
                "counter",
                g(&s.refused_batches),
            ),
            (
                "baton_agent_batches_duplicate_total",
                "Batches the server had already (a retry after a lost answer).",
                "counter",
                g(&s.duplicate_batches),
            ),
            (
                "baton_agent_send_errors_total",
                "Failed attempts to send a batch (server down or erroring).",
                "counter",
                g(&s.send_errors),
            ),
            (
                "baton_agent_debuginfo_uploads_total",
                "Binaries uploaded for the server's symbolizer.",
                "counter",
                g(&s.debuginfo_uploads),
            ),
            (
                "baton_agent_buffer_batches",
                "Batches waiting on disk.",
                "gauge",
                pending as f64,
            ),
            (
                "baton_agent_buffer_bytes",
                "Bytes waiting on disk.",
                "gauge",
                bytes as f64,
            ),
        ]);
        let mut out = String::new();
        for (name, help, kind, value) in lines {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    };
    let text = Arc::new(text);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let t = text.clone();
                async move { t() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    rt.spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics server failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "the metrics listener failed"),
        }
    });
    Ok((MetricsServer { rt }, addr))
}
