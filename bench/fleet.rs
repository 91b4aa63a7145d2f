//! Fleet benchmarks against running `baton server`s, speaking their real protocol.
//!
//! `ingest URL [BATCHES=200] [ROWS=2000] [CLIENTS=1]`: posts gzip pprof batches (the agents'
//! wire format) and prints sample rows per second, against the reference measured in the same
//! run: the same batches written straight into a DuckDB store file (no HTTP, no decode).
//!
//! `agents URL[,URL…] [AGENTS=200] [SECONDS=60] [ROWS=200] [--label L] [--watch NAME=PID,…]
//! [--json FILE]`: that many simulated agents ([`fleet_agents`]) register, then each
//! long-polls a heartbeat every 5 s and ships one batch every 10 s, as a real agent does.
//! Prints heartbeat and ingest latencies (p50, p99, max) overall and per server, errors by
//! kind, the hosts the control plane lists as up, and the CPU (share of one core, over the run
//! after the warm-up) and memory (idle, peak, end) of the watched processes and of itself.
//!
//! `report FILE…`: one table of the `--json` files of several `agents` runs, with figures per
//! 1,000 agents and a linear projection to 10,000, and a `FLEET_BENCH_JSON {…}` line.
//!
//! `clickhouse DB`: starts a private `clickhouse-server` (the store's test server), prints
//! `CLICKHOUSE <store URL> <pid> <http port> <dir>` and stays until killed.
//! `bench/fleet.sh` runs them all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_model::time::now_ms;
use baton_model::{Batch, Frame, FrameKind, StackSample, ValueType};
use baton_store::{DuckDbStore, Store};
use serde_json::{json, Value};

mod fleet_agents;
mod fleet_report;
use fleet_agents::{http_agent, Plan, Tally};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A window of `rows` samples of one host (none when `host` is empty): 24-deep stacks over
/// 2,000 functions.
fn batch(host: &str, seed: u64, rows: usize, ts_ms: i64) -> Batch {
    let mut rng = Lcg(seed);
    let mut b = Batch::new("cpu", vec![ValueType::new("cpu", "nanoseconds")], ts_ms);
    for _ in 0..rows {
        let mut stack = Vec::with_capacity(24);
        let mut f = rng.next() % 64;
        for _ in 0..24 {
            f = (f * 3 + rng.next() % 3) % 2000;
            stack.push(Frame {
                kind: FrameKind::User,
                function: Some(format!("app::module{}::function_{f}", f % 17)),
                module: "/usr/bin/app".into(),
                build_id: Some("00deadbeef00".into()),
                address: 0x1000 + f * 64,
                file: None,
                line: None,
            });
        }
        b.samples.push(StackSample {
            stack,
            labels: [
                ("host".to_string(), host.to_string()),
                ("pid".to_string(), (1000 + rng.next() % 50).to_string()),
                ("comm".to_string(), format!("worker{}", rng.next() % 8)),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect(),
            value: 10_101_010,
            weight: 1.0,
            value_index: 0,
        });
    }
    b
}

fn post(a: &ureq::Agent, url: &str, body: &[u8], json: bool) -> anyhow::Result<u16> {
    let ctype = if json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let r = a.post(url).header("content-type", ctype).send(body)?;
    let code = r.status().as_u16();
    r.into_body().read_to_vec()?;
    Ok(code)
}

fn ingest(url: &str, batches: usize, rows: usize, clients: usize) -> anyhow::Result<()> {
    let now = now_ms();
    let made: Vec<Batch> = (0..batches)
        .map(|i| batch(&format!("bench{}", i % 16), i as u64, rows, now))
        .collect();
    let encoded: Vec<Vec<u8>> = made.iter().map(baton_model::wire::encode_batch).collect();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    // Reference: the same batches into a DuckDB file directly, as the server's store writes.
    let dir = std::env::temp_dir().join(format!("fleet-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = DuckDbStore::open(&dir)?;
    let t = Instant::now();
    for b in &made {
        store.write_batch(b)?;
    }
    let direct = t.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let total_rows = (batches * rows) as f64;
    let run = format!("{:x}", now);
    let queue = Arc::new(Mutex::new((0..batches).collect::<Vec<_>>()));
    let encoded = Arc::new(encoded);
    let t = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (queue, encoded, url, run) =
                (queue.clone(), encoded.clone(), url.to_string(), run.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let a = http_agent(Duration::from_secs(60));
                loop {
                    let Some(i) = queue.lock().map_err(|_| anyhow::anyhow!("lock"))?.pop() else {
                        return Ok(());
                    };
                    let code = post(
                        &a,
                        &format!("{url}/api/v1/ingest?batch_id=bench-{run}-{i}"),
                        &encoded[i],
                        false,
                    )?;
                    anyhow::ensure!(code == 201, "ingest answered {code}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    let http = t.elapsed().as_secs_f64();
    println!(
        "ingest: {batches} batches x {rows} rows ({:.1} MB of gzip pprof), {clients} client(s)",
        bytes as f64 / 1e6
    );
    println!(
        "  over HTTP      {:>10.0} rows/s  ({http:.2}s)",
        total_rows / http
    );
    println!(
        "  direct to DuckDB {:>8.0} rows/s  ({direct:.2}s, in-process writes to a store file: the reference)",
        total_rows / direct
    );
    println!("  ratio HTTP/direct {:.2}", direct / http);
    Ok(())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Count, p50, p99 and max (ms) of latencies in seconds.
fn latency(v: &[f64]) -> Value {
    let mut v = v.to_vec();
    let ms = |x: f64| (x * 100_000.0).round() / 100.0;
    json!({
        "count": v.len(),
        "p50_ms": ms(percentile(&mut v, 0.5)),
        "p99_ms": ms(percentile(&mut v, 0.99)),
        "max_ms": ms(percentile(&mut v, 1.0)),
    })
}

/// User and system CPU ticks of a process, from `/proc/PID/stat`.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process in MB, from `/proc/PID/status`.
fn rss_mb(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// A watched process: its memory over the run and its CPU after the warm-up.
struct Watched {
    name: String,
    pid: String,
    idle_mb: f64,
    peak_mb: f64,
    end_mb: f64,
    from: Option<(u64, Instant)>,
    cpu_pct: Option<f64>,
}

/// Samples the processes every 250 ms until `end`; CPU counts from `warm` on.
fn watch(
    procs: Vec<(String, String)>,
    warm: Instant,
    end: Instant,
) -> std::thread::JoinHandle<Vec<Watched>> {
    let mut ws: Vec<Watched> = procs
        .into_iter()
        .map(|(name, pid)| {
            let idle = rss_mb(&pid).unwrap_or(0.0);
            Watched {
                name,
                pid,
                idle_mb: idle,
                peak_mb: idle,
                end_mb: 0.0,
                from: None,
                cpu_pct: None,
            }
        })
        .collect();
    // SAFETY: sysconf only reads a constant of the system.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::thread::spawn(move || loop {
        let now = Instant::now();
        for w in &mut ws {
            let rss = rss_mb(&w.pid).unwrap_or(0.0);
            w.peak_mb = w.peak_mb.max(rss);
            if w.from.is_none() && now >= warm {
                w.from = cpu_ticks(&w.pid).map(|c| (c, now));
            }
            if now >= end {
                w.end_mb = rss;
                w.cpu_pct = w.from.and_then(|(c0, t0)| {
                    let c1 = cpu_ticks(&w.pid)?;
                    let secs = now.duration_since(t0).as_secs_f64();
                    Some((c1.saturating_sub(c0)) as f64 / tck / secs * 100.0)
                });
            }
        }
        if now >= end {
            return ws;
        }
        std::thread::sleep(Duration::from_millis(250));
    })
}

/// Positional arguments, and `--key value` options.
fn split_args(args: &[String]) -> (Vec<String>, BTreeMap<String, String>) {
    let (mut pos, mut opts) = (Vec::new(), BTreeMap::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.strip_prefix("--") {
            Some(k) => {
                opts.insert(k.to_string(), it.next().cloned().unwrap_or_default());
            }
            None => pos.push(a.clone()),
        }
    }
    (pos, opts)
}

fn agents(args: &[String]) -> anyhow::Result<()> {
    let (pos, opts) = split_args(args);
    let num = |i: usize, d: usize| -> anyhow::Result<usize> {
        pos.get(i)
            .map(|s| s.parse().context("a number"))
            .unwrap_or(Ok(d))
    };
    let urls: Vec<String> = pos
        .first()
        .context("URL[,URL…]")?
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let (n, secs, rows) = (num(1, 200)?.max(1), num(2, 60)? as u64, num(3, 200)?);
    let label = opts
        .get("label")
        .cloned()
        .unwrap_or_else(|| "agents".into());
    let mut procs: Vec<(String, String)> = opts
        .get("watch")
        .map(|w| {
            w.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    procs.push(("fleet-bench".into(), std::process::id().to_string()));
    // 32 distinct windows, shared by all agents as a fleet running the same binaries would.
    let bodies: Vec<Vec<u8>> = (0..32)
        .map(|k| baton_model::wire::encode_batch(&batch("", k * 7919 + 1, rows, 0)))
        .collect();
    let warm = Duration::from_secs((secs / 3).min(10));
    let start = Instant::now();
    let watcher = watch(procs, start + warm, start + Duration::from_secs(secs));
    let plan = Plan {
        urls: urls.clone(),
        agents: n,
        secs,
        warm,
    };
    let tally = fleet_agents::run(plan, bodies)?;
    let watched = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
    let up = fleet_agents::hosts_up(&urls[0]);
    let out = summary(&label, &urls, n, secs, rows, warm, &tally, &watched, up);
    print_agents(&out);
    if let Some(f) = opts.get("json") {
        std::fs::write(f, format!("{out}\n")).with_context(|| format!("writing {f}"))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summary(
    label: &str,
    urls: &[String],
    n: usize,
    secs: u64,
    rows: usize,
    warm: Duration,
    t: &Tally,
    watched: &[Watched],
    up: Option<usize>,
) -> Value {
    let all =
        |m: &BTreeMap<String, Vec<f64>>| -> Vec<f64> { m.values().flatten().copied().collect() };
    let mut servers: BTreeMap<String, Value> = BTreeMap::new();
    for (name, v) in &t.heartbeats {
        servers.entry(name.clone()).or_insert_with(|| json!({}))["heartbeat"] = latency(v);
    }
    for (name, v) in &t.ingests {
        servers.entry(name.clone()).or_insert_with(|| json!({}))["ingest"] = latency(v);
    }
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let procs: BTreeMap<String, Value> = watched
        .iter()
        .map(|w| {
            (
                w.name.clone(),
                json!({
                    "cpu_pct": w.cpu_pct.map(r1),
                    "rss_idle_mb": r1(w.idle_mb),
                    "rss_peak_mb": r1(w.peak_mb),
                    "rss_end_mb": r1(w.end_mb),
                }),
            )
        })
        .collect();
    json!({
        "label": label,
        "urls": urls,
        "agents": n,
        "seconds": secs,
        "warm_s": warm.as_secs(),
        "rows_per_batch": rows,
        "heartbeat_s": fleet_agents::HEARTBEAT_S,
        "batch_every_s": fleet_agents::BATCH_EVERY.as_secs(),
        "heartbeat": latency(&all(&t.heartbeats)),
        "ingest": latency(&all(&t.ingests)),
        "per_server": servers,
        "errors": t.errors,
        "redirects": t.redirects,
        "registered": t.registered,
        "batches_stored": t.stored,
        "duplicates": t.duplicates,
        "hosts_up": up,
        "processes": procs,
    })
}

fn print_agents(v: &Value) {
    let lat = |l: &Value| {
        format!(
            "{:>6}  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
            l["count"], l["p50_ms"], l["p99_ms"], l["max_ms"]
        )
    };
    println!(
        "{}: {} simulated agents for {}s against {}; heartbeat long-poll every {}s, a {}-row batch every {}s; latencies after {}s",
        v["label"].as_str().unwrap_or(""),
        v["agents"],
        v["seconds"],
        v["urls"].as_array().map(|u| u.len()).unwrap_or(0),
        v["heartbeat_s"],
        v["rows_per_batch"],
        v["batch_every_s"],
        v["warm_s"],
    );
    println!("  heartbeats {}", lat(&v["heartbeat"]));
    println!("  ingests    {}", lat(&v["ingest"]));
    if let Some(m) = v["per_server"].as_object().filter(|m| m.len() > 1) {
        for (name, s) in m {
            for (what, key) in [("heartbeats", "heartbeat"), ("ingests   ", "ingest")] {
                if !s[key].is_null() {
                    println!("  {name}: {what} {}", lat(&s[key]));
                }
            }
        }
    }
    println!(
        "  registered {}, redirects to the leader {}, batches stored {}, duplicates {}, hosts up {}, errors {}",
        v["registered"], v["redirects"], v["batches_stored"], v["duplicates"], v["hosts_up"], v["errors"]
    );
    if let Some(m) = v["processes"].as_object() {
        for (name, p) in m {
            println!(
                "  {name}: CPU {}% of one core, RSS idle {} MB, peak {} MB, end {} MB",
                p["cpu_pct"], p["rss_idle_mb"], p["rss_peak_mb"], p["rss_end_mb"]
            );
        }
    }
}

fn clickhouse(db: &str) -> anyhow::Result<()> {
    let s = baton_store::testserver::ClickHouseServer::start("fleet-bench")
        .map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "CLICKHOUSE {} {} {} {}",
        s.url(db),
        s.pid().unwrap_or(0),
        s.http_port,
        s.dir.display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| -> anyhow::Result<usize> {
        args.get(i)
            .map(|s| s.parse().context("a number"))
            .unwrap_or(Ok(d))
    };
    match args.first().map(String::as_str) {
        Some("ingest") => ingest(
            args.get(1).context("URL")?,
            num(2, 200)?,
            num(3, 2000)?,
            num(4, 1)?,
        ),
        Some("agents") => agents(&args[1..]),
        Some("report") => fleet_report::report(&args[1..]),
        Some("clickhouse") => clickhouse(args.get(1).map_or("baton", String::as_str)),
        _ => anyhow::bail!(
            "usage: fleet-bench ingest URL [BATCHES ROWS CLIENTS] | agents URL[,URL…] [AGENTS SECONDS ROWS] [--label L] [--watch NAME=PID,…] [--json FILE] | report FILE… | clickhouse DB"
        ),
    }
}
