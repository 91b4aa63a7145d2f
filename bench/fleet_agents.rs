//! Simulated agents for `fleet-bench agents`: each speaks the real protocol (register, long-poll
//! heartbeats, gzip pprof batches) from two threads of its own (control loop and shipper),
//! against one server or several.
//!
//! Agent `i` ships its batches to server `i % n` and sends register and heartbeat to the
//! control plane: first to its own server, then, when that answers 503 (or 421) with
//! `X-Baton-Leader: URL`, to the URL named, which it keeps for later calls. Latencies are kept
//! per server (the one that answered) from the end of the warm-up on; errors are counted by
//! kind over the whole run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What the simulated fleet does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub urls: Vec<String>,
    pub agents: usize,
    pub secs: u64,
    /// Latencies are kept from this long after the start (registrations spread over the first
    /// heartbeat period, and the first batches, are behind by then).
    pub warm: Duration,
}

/// How often an agent ships a batch (the agents' default whole-host window).
pub const BATCH_EVERY: Duration = Duration::from_secs(10);
/// The heartbeat period the agents use until the server's reply says otherwise.
pub const HEARTBEAT_S: u64 = 5;

/// Latencies (seconds) per server name, and what went wrong.
#[derive(Debug, Default)]
pub struct Tally {
    pub heartbeats: BTreeMap<String, Vec<f64>>,
    pub ingests: BTreeMap<String, Vec<f64>>,
    pub errors: BTreeMap<String, u64>,
    /// Calls that a server sent on to the control plane's holder.
    pub redirects: u64,
    pub registered: u64,
    /// Batches stored (201), and sent again and found stored already (200).
    pub stored: u64,
    pub duplicates: u64,
}

struct Shared {
    plan: Plan,
    start: Instant,
    /// Pre-encoded batches without a host label or time: the server stamps them on arrival and
    /// the host comes from the query, so the agents' threads spend nothing on encoding.
    bodies: Vec<Vec<u8>>,
    tally: Mutex<Tally>,
}

impl Shared {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, kind: String) {
        *self.tally().errors.entry(kind).or_default() += 1;
    }

    /// The name of a server in the reports: `server1`… in the order given, else its URL.
    fn name(&self, url: &str) -> String {
        self.plan
            .urls
            .iter()
            .position(|u| u == url)
            .map_or_else(|| url.to_string(), |k| format!("server{}", k + 1))
    }
}

/// An answer, or why none came.
enum Answer {
    Reply(u16, Vec<u8>),
    /// 503 or 421 naming the server that holds the control plane.
    Leader(String),
    Failed(String),
}

fn transport_kind(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("{:?}", io.kind()),
        other => {
            let d = format!("{other:?}");
            d.split(['(', ' ', '{'])
                .next()
                .unwrap_or("error")
                .to_string()
        }
    }
}

pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn call(a: &ureq::Agent, url: &str, body: &[u8], json: bool) -> Answer {
    let ctype = if json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    match a.post(url).header("content-type", ctype).send(body) {
        Err(e) => Answer::Failed(format!("transport {}", transport_kind(&e))),
        Ok(r) => {
            let code = r.status().as_u16();
            let leader = r
                .headers()
                .get("x-baton-leader")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim_end_matches('/').to_string());
            let body = match r.into_body().read_to_vec() {
                Ok(b) => b,
                Err(e) => return Answer::Failed(format!("reading {}", transport_kind(&e))),
            };
            match leader {
                Some(l) if code == 503 || code == 421 => Answer::Leader(l),
                _ => Answer::Reply(code, body),
            }
        }
    }
}

/// The config version a register or heartbeat reply carries, if any.
fn config_version(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("config")?
        .get("version")?
        .as_str()
        .map(str::to_string)
}

/// One simulated agent, until the end of the run: its control loop here, and its shipper in a
/// thread of its own, as a real agent's outbox ships apart from its heartbeats.
fn run_agent(i: usize, sh: &Shared) {
    let plan = &sh.plan;
    let end = sh.start + Duration::from_secs(plan.secs);
    let host = format!("sim{i:05}");
    let instance = format!("{}-{i}", std::process::id());
    let home = plan.urls[i % plan.urls.len()].clone();
    // Agents started over the first heartbeat period.
    std::thread::sleep(Duration::from_millis(
        (i as u64 * HEARTBEAT_S * 1000) / plan.agents as u64,
    ));
    std::thread::scope(|s| {
        let shipper = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn_scoped(s, || ship(i, sh, &home, &host, &instance, end));
        if let Err(e) = shipper {
            sh.error(format!("no shipper thread: {e}"));
        }
        control(i, sh, &home, &host, &instance, end);
    });
}

/// A batch every `BATCH_EVERY` to the agent's own server, in order (a slow one delays the
/// next, as batches wait in a real agent's outbox).
fn ship(i: usize, sh: &Shared, url: &str, host: &str, instance: &str, end: Instant) {
    let a = http_agent(Duration::from_secs(60));
    let mut next = Instant::now() + BATCH_EVERY;
    for seq in 0.. {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        if Instant::now() >= end {
            return;
        }
        ingest(sh, &a, url, host, instance, seq, i);
        next += BATCH_EVERY;
    }
}

/// Register, then heartbeat (long poll) until `end`, at the control plane's holder.
fn control(i: usize, sh: &Shared, home: &str, host: &str, instance: &str, end: Instant) {
    let a = http_agent(Duration::from_secs(60));
    let mut control = home.to_string();
    let reg = json!({
        "host": host, "instance": instance, "machine_id": format!("{i:032x}"),
        "kernel": "6.1.0-sim", "cpus": 64, "labels": {"rack": format!("r{}", i % 20)},
        "version": "sim",
    })
    .to_string();
    let mut registered = false;
    let mut wait_s = HEARTBEAT_S;
    let mut config: Option<String> = None;
    let mut hops = 0;
    while Instant::now() < end {
        let t = Instant::now();
        let (path, body) = if registered {
            let hb = json!({
                "host": host, "instance": instance, "runs": [], "config_version": config,
                "wait_s": wait_s, "yields": [], "window_ms": BATCH_EVERY.as_millis() as u64,
            });
            ("heartbeat", hb.to_string())
        } else {
            ("register", reg.clone())
        };
        let url = format!("{control}/api/v1/agents/{path}");
        match call(&a, &url, body.as_bytes(), true) {
            Answer::Leader(l) => {
                sh.tally().redirects += 1;
                hops += 1;
                if l == control || hops > 3 {
                    sh.error(format!("{path} leader loop"));
                    std::thread::sleep(Duration::from_secs(1));
                    hops = 0;
                }
                control = l;
                continue;
            }
            Answer::Failed(kind) => {
                sh.error(format!("{path} {kind}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Answer::Reply(200, out) if !registered => {
                registered = true;
                hops = 0;
                sh.tally().registered += 1;
                config = config_version(&out).or(config);
                if let Some(s) = serde_json::from_slice::<Value>(&out)
                    .ok()
                    .and_then(|v| v.get("heartbeat_s")?.as_u64())
                {
                    wait_s = s.max(1);
                }
                continue;
            }
            Answer::Reply(200, out) => {
                hops = 0;
                let took = t.elapsed();
                // The server holds a heartbeat for `wait_s` when it has nothing to say (long
                // poll): the latency is what the call took beyond that.
                let held = Duration::from_secs(wait_s);
                let latency = if took >= held { took - held } else { took };
                if t >= sh.start + sh.plan.warm {
                    let name = sh.name(&control);
                    sh.tally()
                        .heartbeats
                        .entry(name)
                        .or_default()
                        .push(latency.as_secs_f64());
                }
                config = config_version(&out).or(config);
                // Keep the cadence when the server answered early.
                std::thread::sleep(held.saturating_sub(took));
            }
            Answer::Reply(code @ (404 | 409), _) if registered => {
                sh.error(format!("heartbeat {code}, registered again"));
                registered = false;
                continue;
            }
            Answer::Reply(code, _) => {
                sh.error(format!("{path} {code}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
    }
}

fn ingest(
    sh: &Shared,
    a: &ureq::Agent,
    url: &str,
    host: &str,
    instance: &str,
    seq: usize,
    i: usize,
) {
    let body = &sh.bodies[(i + seq) % sh.bodies.len()];
    let t = Instant::now();
    let q = format!("{url}/api/v1/ingest?batch_id={host}-{instance}-{seq}&host={host}");
    match call(a, &q, body, false) {
        Answer::Reply(code @ (200 | 201), _) => {
            let mut tally = sh.tally();
            if code == 200 {
                tally.duplicates += 1;
            } else {
                tally.stored += 1;
            }
            if t >= sh.start + sh.plan.warm {
                let name = sh.name(url);
                tally
                    .ingests
                    .entry(name)
                    .or_default()
                    .push(t.elapsed().as_secs_f64());
            }
        }
        Answer::Reply(code, _) => sh.error(format!("ingest {code}")),
        Answer::Leader(_) => sh.error("ingest sent to the leader".into()),
        Answer::Failed(kind) => sh.error(format!("ingest {kind}")),
    }
}

/// Runs the simulated fleet and returns what it saw.
pub fn run(plan: Plan, bodies: Vec<Vec<u8>>) -> anyhow::Result<Tally> {
    let sh = Arc::new(Shared {
        plan,
        start: Instant::now(),
        bodies,
        tally: Mutex::default(),
    });
    let threads = (0..sh.plan.agents)
        .map(|i| {
            let sh = sh.clone();
            std::thread::Builder::new()
                .name(format!("sim{i}"))
                .stack_size(256 * 1024)
                .spawn(move || run_agent(i, &sh))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a simulated agent panicked"))?;
    }
    let tally = std::mem::take(&mut *sh.tally());
    Ok(tally)
}

/// Hosts the control plane lists as up, asked of `url` (following it to the leader).
pub fn hosts_up(url: &str) -> Option<usize> {
    let a = http_agent(Duration::from_secs(30));
    let mut url = url.to_string();
    for _ in 0..3 {
        let r = a.get(format!("{url}/api/v1/hosts")).call().ok()?;
        if let Some(l) = r
            .headers()
            .get("x-baton-leader")
            .and_then(|v| v.to_str().ok())
        {
            if r.status().as_u16() != 200 {
                url = l.trim_end_matches('/').to_string();
                continue;
            }
        }
        let v: Value = serde_json::from_slice(&r.into_body().read_to_vec().ok()?).ok()?;
        return Some(
            v.get("hosts")?
                .as_array()?
                .iter()
                .filter(|h| h.get("state").and_then(Value::as_str) == Some("up"))
                .count(),
        );
    }
    None
}
