//! `baton server`: the central server of a fleet: hosts and their runs, ingest, the store,
//! delayed symbolization by build ID, auth, audit, and the same API and UI as `baton up`.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use baton_model::{parse_duration, sync};
use baton_runtime::config_watch::{load_initial_config, spawn_config_watch};
use baton_runtime::leader::spawn_campaign;
use baton_runtime::stop::{install_stop_handler, request_stop, stop_requested, until_stopped};
use baton_server::api::{Facts, ServerFacts};
use baton_server::auth::{Audit, Tokens};
use baton_server::fleet::Fleet;
use baton_server::ingest::{default_debug_dirs, symbolizer_loop, DebugInfo};
use baton_server::leader::Leadership;
use baton_server::AppState;
use baton_store::{DuckDbStore, Store};

use crate::common::{default_data_dir, usage};
use crate::ServerArgs;

pub fn run(a: ServerArgs) -> anyhow::Result<ExitCode> {
    let host_timeout =
        parse_duration(&a.host_timeout).map_err(|e| usage(format!("--host-timeout: {e}")))?;
    let heartbeat = parse_duration(&a.heartbeat).map_err(|e| usage(format!("--heartbeat: {e}")))?;
    if heartbeat < Duration::from_secs(1) || host_timeout <= heartbeat {
        return Err(usage(
            "--heartbeat must be at least 1s and --host-timeout longer than it",
        ));
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(baton_server::tls::server_config(c, k).map_err(usage)?),
        (None, None) => None,
        _ => return Err(usage("--tls-cert and --tls-key go together")),
    };
    let tokens = match &a.auth {
        Some(f) => Some(Arc::new(Tokens::load(f).map_err(usage)?)),
        None => None,
    };
    let listen: std::net::SocketAddr = a
        .listen
        .parse()
        .map_err(|e| usage(format!("--listen {}: {e}", a.listen)))?;
    if tokens.is_none() {
        if !a.insecure_local {
            return Err(usage(
                "give --auth FILE (lines of ROLE NAME TOKEN), or --insecure-local to serve \
                 loopback without tokens",
            ));
        }
        if !listen.ip().is_loopback() {
            return Err(usage(format!(
                "--insecure-local serves loopback only, not {listen}; use --auth FILE"
            )));
        }
    }
    let leadership = leadership(&a)?;
    let data = a.data.clone().unwrap_or_else(default_data_dir);
    let retention = a
        .retention
        .as_deref()
        .map(|r| crate::common::parse_duration_flag(r, "--retention"))
        .transpose()?;
    let (store, store_desc): (Box<dyn Store>, String) = if a.store == "duckdb" {
        (
            Box::new(DuckDbStore::open(&data)?),
            format!("DuckDB in {}", data.display()),
        )
    } else {
        let mut url = baton_store::ClickHouseUrl::parse(&a.store).map_err(usage)?;
        if let Some(f) = &a.store_credentials {
            url = url.with_credentials_file(f).map_err(usage)?;
        }
        let desc = format!("ClickHouse {}/{}", url.base, url.database);
        let ch = baton_store::ClickHouseStore::open(url)
            .map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
        (Box::new(ch), desc)
    };
    std::fs::create_dir_all(&data)
        .map_err(|e| usage(format!("data directory {}: {e}", data.display())))?;
    eprintln!("baton server: store {store_desc}");
    let store: Arc<Mutex<Box<dyn Store>>> = Arc::new(Mutex::new(store));
    if let Some(keep) = retention {
        // At start, then hourly.
        baton_runtime::server::spawn_retention(store.clone(), keep)?;
    }
    let audit = Arc::new(Audit::new(data.join("audit.log")));
    let live = match &a.config {
        Some(dir) => Some(Arc::new(RwLock::new(load_initial_config(dir)?))),
        None => None,
    };
    let fleet = Arc::new(
        Fleet::new(
            host_timeout,
            heartbeat,
            live.clone(),
            baton_runtime::scheduler_clock,
            |profiler, options| {
                let r = baton_profilers::registry::find(profiler).map_err(|e| e.to_string())?;
                r.info.check_options(options)
            },
        )
        .with_leadership(leadership.clone()),
    );
    // Alone, this server holds the control plane from the start: read it back before serving
    // (hosts, unfinished runs, run ids, the tuner). With etcd, the control-plane loop reads it
    // whenever this server comes to lead.
    if leadership.is_leader() {
        let r = baton_runtime::control_plane::load(&fleet, sync::lock(&store).as_mut())
            .map_err(|e| anyhow::anyhow!("reading the control plane from the store: {e}"))?;
        fleet.set_loaded(leadership.epoch());
        if r.hosts + r.runs > 0 {
            eprintln!(
                "baton server: holding the control plane: {} hosts and {} runs read from the store ({} to send again)",
                r.hosts, r.runs, r.requeued
            );
        }
    }
    let history_store = store.clone();
    let debuginfo = {
        let mut dirs = a.debug_dir.clone();
        if dirs.is_empty() {
            dirs = default_debug_dirs();
        }
        Arc::new(
            DebugInfo::new(data.join("debuginfo"), dirs, a.debuginfod.clone())
                .with_limits(a.limits.max_debuginfo_bytes, a.limits.debuginfo_space),
        )
    };
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| usage(format!("cannot listen on {listen}: {e}")))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    install_stop_handler();
    // With etcd: the campaign for the control plane, on a lease of a third of the host
    // timeout, so a dead leader is replaced well before its hosts are given up.
    let campaign = match leadership.self_url() {
        Some(url) => Some(spawn_campaign(
            a.etcd.clone(),
            a.cluster.clone(),
            url.to_string(),
            (host_timeout / 3).max(Duration::from_secs(2)),
            leadership.clone(),
        )?),
        None => None,
    };
    if let (Some(dir), Some(live)) = (&a.config, &live) {
        spawn_config_watch(
            dir.clone(),
            live.clone(),
            audit.clone(),
            Some(fleet.clone()),
        )?;
    }
    let symbolizer = {
        let store = store.clone();
        let d = debuginfo.clone();
        std::thread::Builder::new()
            .name("baton-symbolizer".into())
            .spawn(move || symbolizer_loop(&store, &d, stop_requested))
            .context("starting the symbolizer")?
    };
    let facts = Facts::Server(ServerFacts {
        mode: "server",
        data_dir: data.display().to_string(),
        schema_version: baton_store::SCHEMA_VERSION,
        config_dir: a.config.as_ref().map(|d| d.display().to_string()),
        profilers: baton_profilers::registry::infos(),
        tls: tls.is_some(),
        auth: tokens.is_some(),
    });
    let mut state = AppState::new(store.clone(), None, facts, Arc::default(), live.clone());
    state.fleet = Some(fleet.clone());
    state.leadership = leadership.clone();
    state.tokens = tokens.clone();
    state.audit = Some(audit.clone());
    state.debuginfo = Some(debuginfo.clone());
    state.limits = baton_model::limits::Limits {
        max_bytes: a.limits.max_body_bytes,
        max_samples: a.limits.max_samples,
        max_locations: a.limits.max_locations,
        max_strings: a.limits.max_strings,
        max_sample_entries: a.limits.max_sample_entries,
    };
    // A gzip upload is at most its decompressed cap as sent.
    state.debuginfo_body_limit = a.limits.max_debuginfo_bytes;
    if a.limits.rate_limit > 0.0 {
        state.rate = Some(Arc::new(baton_server::auth::RateLimit::new(
            a.limits.rate_limit,
            a.limits.rate_burst,
        )));
    }
    // Ingested batches are written by one writer thread, grouped by size and time.
    let linger = crate::common::parse_duration_flag(&a.ingest_linger, "--ingest-linger")?;
    let queue = Arc::new(baton_server::ingest::IngestQueue::new(
        a.ingest_queue_rows,
        50_000,
        linger,
    ));
    state.ingest_queue = Some(queue.clone());
    // FDO profiles that continuous rules ask to keep fresh.
    state.fdo_dir = Some(data.join("fdo"));
    baton_server::fdo_fresh::spawn(state.clone(), data.join("fdo"), stop_requested)
        .context("starting the FDO refresher")?;
    let writer = {
        let (queue, store) = (queue.clone(), store.clone());
        std::thread::Builder::new()
            .name("baton-ingest".into())
            .spawn(move || queue.run(&store, stop_requested))
            .context("starting the ingest writer")?
    };
    eprintln!(
        "baton server: listening on {}://{addr}/ ({}); data in {}; hosts gone after {}s without a heartbeat",
        if tls.is_some() { "https" } else { "http" },
        if tokens.is_some() { "tokens required" } else { "insecure-local: no tokens" },
        data.display(),
        host_timeout.as_secs()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    let served = rt.block_on(async move {
        let reaper = tokio::spawn(baton_runtime::control_plane::run(fleet, history_store));
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let r = match tls {
            Some(cfg) => baton_server::serve_tls(listener, cfg, state, until_stopped()).await,
            None => baton_server::serve(listener, state, until_stopped()).await,
        };
        // The control-plane loop writes the last changes and ended runs as it stops.
        let _ = tokio::time::timeout(Duration::from_secs(5), reaper).await;
        r
    });
    request_stop();
    debuginfo.wake();
    let _ = symbolizer.join();
    let _ = writer.join();
    // The campaign revokes its lease as it stops, so another server takes over at once.
    if let Some(c) = campaign {
        let _ = c.join();
    }
    served.context("HTTP server")?;
    eprintln!("baton server: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Solo without `--etcd`; with it, a follower at `--advertise` until its campaign wins.
fn leadership(a: &ServerArgs) -> anyhow::Result<Arc<Leadership>> {
    let etcd = a.etcd.iter().any(|e| !e.trim().is_empty());
    match (etcd, &a.advertise) {
        (false, None) => Ok(Leadership::solo()),
        (false, Some(_)) => Err(usage(
            "--advertise names this server to the others sharing its store; it goes with --etcd",
        )),
        (true, None) => Err(usage(
            "--etcd needs --advertise URL: the URL agents and the other servers reach this one by",
        )),
        (true, Some(url)) => {
            let url = url.trim().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(usage(format!(
                    "--advertise {url:?}: write it as http://HOST:PORT (or https://)"
                )));
            }
            if a.cluster.is_empty() || a.cluster.contains('/') {
                return Err(usage(format!(
                    "--cluster {:?}: a name without '/'",
                    a.cluster
                )));
            }
            Ok(Leadership::follower(url.to_string()))
        }
    }
}
