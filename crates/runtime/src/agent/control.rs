//! The agent's side of the conversation with the fleet server: it registers, then long-polls
//! the heartbeat. Each heartbeat reports the states of the server's runs on this host and the
//! driver's health; each reply may queue runs assigned to this host, cancel runs, and carry a
//! new config, which is validated here before it goes live.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use baton_agent::targets::selector_pids;
use baton_model::sync;
use baton_scheduler::{JobRequest, Mode, Scheduler};
use baton_server::api::Profiling;
use baton_server::fleet::{Assignment, Heartbeat, HeartbeatReply, Registration, RunReport};
use baton_server::LiveConfig;

use crate::client::{Client, ClientError};
use crate::config_watch::apply_server_config;
use crate::driver::LOCAL_HOST;
use crate::remote::RemoteRuns;
use crate::scheduler_clock;
use crate::stop::{sleep_unless_stopped, stop_requested};

/// Why a call to the server did not go through.
#[derive(Debug, thiserror::Error)]
pub(super) enum ControlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The server answered with an error status.
    #[error("{call}: {code} {body}")]
    Refused {
        call: &'static str,
        code: u16,
        body: String,
    },
}

/// The agent's side of the conversation with the server.
pub(super) struct Control {
    pub(super) client: Client,
    pub(super) host: String,
    pub(super) instance: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) live: Arc<RwLock<LiveConfig>>,
    pub(super) scheduler: Arc<Mutex<Scheduler>>,
    pub(super) remote: Arc<Mutex<RemoteRuns>>,
    pub(super) registered: bool,
    pub(super) heartbeat_s: u64,
    pub(super) beats: u64,
    /// Server runs whose end was reported already.
    pub(super) reported_done: BTreeSet<u64>,
    /// Server runs this host could not queue, with the reason, to report once.
    pub(super) refused: Vec<RunReport>,
    /// The driver's status (overhead, write budgets, frequency), sent with each heartbeat.
    pub(super) status: Arc<RwLock<Profiling>>,
}

impl Control {
    /// Registers and heartbeats until a stop is asked for; an unreachable server is retried
    /// with a backoff while profiling goes on.
    pub(super) fn run(mut self) {
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
            containers: baton_agent::containers(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Config services with processes on this host.
    fn services(&self) -> Vec<String> {
        let l = sync::read(&self.live);
        let Some(c) = &l.config else {
            return Vec::new();
        };
        c.services
            .iter()
            .filter(|(_, s)| !selector_pids(&s.selector).is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn register(&mut self) -> Result<(), ControlError> {
        let body = serde_json::to_value(self.registration())?;
        let (code, out) = self.client.post_json("/api/v1/agents/register", &body)?;
        if code != 200 {
            return Err(ControlError::Refused {
                call: "register",
                code,
                body: String::from_utf8_lossy(&out).into_owned(),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&out)?;
        self.heartbeat_s = v["heartbeat_s"].as_u64().unwrap_or(5).max(1);
        if let Ok(Some(c)) = serde_json::from_value(v["config"].clone()) {
            apply_server_config(&self.live, c);
        }
        if let Ok(p) = serde_json::from_value(v["probabilities"].clone()) {
            sync::lock(&self.remote).probabilities = Some(p);
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
        let map: Vec<(u64, u64)> = sync::lock(&self.remote)
            .server_id
            .iter()
            .map(|(l, s)| (*l, *s))
            .collect();
        let s = sync::lock(&self.scheduler);
        for (local, server) in map {
            if self.reported_done.contains(&server) {
                continue;
            }
            if let Some(r) = s.run(local) {
                out.push(RunReport {
                    id: server,
                    state: r.state.name().into(),
                    reason: r.reason.clone(),
                    samples: r.samples,
                    started_at_ms: r.started_at,
                    ended_at_ms: r.ended_at,
                });
            }
        }
        out
    }

    fn heartbeat(&mut self) -> Result<(), ControlError> {
        let reports = self.reports();
        let hb = Heartbeat {
            host: self.host.clone(),
            instance: self.instance.clone(),
            runs: reports.clone(),
            config_version: sync::read(&self.live)
                .config
                .as_ref()
                .map(|c| c.version.clone()),
            wait_s: self.heartbeat_s,
            // Services come and go with their processes: look again every 30 heartbeats.
            services: (self.beats % 30 == 0).then(|| self.services()),
            health: Some(sync::read(&self.status).health()),
            yields: sync::lock(&self.remote).take_yields(),
            window_ms: sync::read(&self.status).window_ms,
        };
        self.beats += 1;
        let sent = self
            .client
            .post_json("/api/v1/agents/heartbeat", &serde_json::to_value(&hb)?);
        let (code, out) = match sent {
            Ok(r) if r.0 == 200 => r,
            other => {
                // Not counted by the server: report these yields again next time.
                sync::lock(&self.remote).restore_yields(hb.yields);
                other?
            }
        };
        if code == 404 || code == 409 {
            // The server restarted (or another agent took the name): register again.
            self.registered = false;
            return Ok(());
        }
        if code != 200 {
            return Err(ControlError::Refused {
                call: "heartbeat",
                code,
                body: String::from_utf8_lossy(&out).into_owned(),
            });
        }
        for r in &reports {
            if matches!(r.state.as_str(), "done" | "failed" | "cancelled") {
                self.reported_done.insert(r.id);
            }
        }
        let reply: HeartbeatReply = serde_json::from_slice(&out)?;
        self.heartbeat_s = reply.heartbeat_s.max(1);
        sync::lock(&self.remote).probabilities = Some(reply.probabilities);
        if let Some(c) = reply.config {
            apply_server_config(&self.live, c);
        }
        let now = scheduler_clock();
        for asg in reply.assign {
            self.queue(asg, now);
        }
        for id in reply.cancel {
            let local = sync::lock(&self.remote).local_id(id);
            if let Some(local) = local {
                let mut s = sync::lock(&self.scheduler);
                if let Err(e) = s.cancel(local, now, "cancelled through the server") {
                    tracing::warn!(run = id, error = %e, "cancel failed");
                }
            }
        }
        Ok(())
    }

    /// Queues a run the server assigned to this host; a refusal is reported with the next
    /// heartbeat.
    fn queue(&mut self, asg: Assignment, now: u64) {
        if sync::lock(&self.remote).local_id(asg.id).is_some() {
            // Sent again by a server that took over before this host said it had it.
            return;
        }
        let req = JobRequest {
            profiler: asg.profiler.clone(),
            host: LOCAL_HOST.into(),
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
        let submitted = sync::lock(&self.scheduler).submit(req, now);
        match submitted {
            Ok(local) => {
                sync::lock(&self.remote).server_id.insert(local, asg.id);
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
}
