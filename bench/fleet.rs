//! Fleet benchmarks against a running `baton server`, speaking its real protocol.
//!
//! `ingest URL [BATCHES=200] [ROWS=2000] [CLIENTS=1]`: posts gzip pprof batches (the agents'
//! wire format) and prints sample rows per second, against the reference measured in the same
//! run: the same batches written straight into a DuckDB store file (no HTTP, no decode).
//!
//! `agents URL [AGENTS=200] [SECONDS=60] [ROWS=200]`: that many simulated agents register, then
//! each heartbeats every 5 s and ships one batch every 10 s (a 10 s window), as a real agent
//! does; prints the heartbeat and ingest latencies (p50, p99, max). `bench/fleet.sh` runs it
//! and reads the server's CPU and memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_model::time::now_ms;
use baton_model::{Batch, Frame, FrameKind, StackSample, ValueType};
use baton_store::{DuckDbStore, Store};

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

/// A window of `rows` samples of one host: 24-deep stacks over 2,000 functions.
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
            .into(),
            value: 10_101_010,
            weight: 1.0,
            value_index: 0,
        });
    }
    b
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
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
                let a = agent();
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

fn agents(url: &str, n: usize, secs: u64, rows: usize) -> anyhow::Result<()> {
    let heartbeats: Arc<Mutex<Vec<f64>>> = Arc::default();
    let ingests: Arc<Mutex<Vec<f64>>> = Arc::default();
    let errors: Arc<Mutex<u64>> = Arc::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (url, hb, ing, errors) = (
                url.to_string(),
                heartbeats.clone(),
                ingests.clone(),
                errors.clone(),
            );
            std::thread::spawn(move || {
                let a = agent();
                let host = format!("sim{i:04}");
                let instance = format!("{}-{i}", std::process::id());
                let reg = serde_json::json!({
                    "host": host, "instance": instance, "machine_id": format!("{i:032x}"),
                    "kernel": "6.1.0-sim", "cpus": 64, "labels": {"rack": format!("r{}", i % 20)},
                });
                if post(&a, &format!("{url}/api/v1/agents/register"), reg.to_string().as_bytes(), true).ok() != Some(200) {
                    *errors.lock().expect("lock") += 1;
                    return;
                }
                // Spread the agents over the 5 s heartbeat period.
                std::thread::sleep(Duration::from_millis((i as u64 * 5000) / n as u64));
                let mut seq = 0u64;
                let mut next_batch = Instant::now();
                while Instant::now() < end {
                    let body = serde_json::json!({"host": host, "instance": instance, "runs": [], "wait_s": 0});
                    let t = Instant::now();
                    match post(&a, &format!("{url}/api/v1/agents/heartbeat"), body.to_string().as_bytes(), true) {
                        Ok(200) => hb.lock().expect("lock").push(t.elapsed().as_secs_f64()),
                        _ => *errors.lock().expect("lock") += 1,
                    }
                    if Instant::now() >= next_batch {
                        let b = baton_model::wire::encode_batch(&batch(&host, seq * 1000 + i as u64, rows, now_ms()));
                        let t = Instant::now();
                        match post(&a, &format!("{url}/api/v1/ingest?batch_id={host}-{instance}-{seq}&host={host}"), &b, false) {
                            Ok(201) => ing.lock().expect("lock").push(t.elapsed().as_secs_f64()),
                            _ => *errors.lock().expect("lock") += 1,
                        }
                        seq += 1;
                        next_batch += Duration::from_secs(10);
                    }
                    std::thread::sleep(Duration::from_secs(5).saturating_sub(t.elapsed()));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut hb = heartbeats
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    let mut ing = ingests.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let ms = |v: f64| v * 1000.0;
    println!("agents: {n} simulated agents for {secs}s, heartbeat every 5s, a {rows}-row batch every 10s");
    println!(
        "  heartbeats {:>6}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        hb.len(),
        ms(percentile(&mut hb, 0.5)),
        ms(percentile(&mut hb, 0.99)),
        ms(percentile(&mut hb, 1.0))
    );
    println!(
        "  ingests    {:>6}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        ing.len(),
        ms(percentile(&mut ing, 0.5)),
        ms(percentile(&mut ing, 0.99)),
        ms(percentile(&mut ing, 1.0))
    );
    println!(
        "  errors {}",
        errors.lock().map_err(|_| anyhow::anyhow!("lock"))?
    );
    Ok(())
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
        Some("agents") => agents(
            args.get(1).context("URL")?,
            num(2, 200)?,
            num(3, 60)? as u64,
            num(4, 200)?,
        ),
        _ => anyhow::bail!("usage: fleet-bench ingest URL [BATCHES ROWS CLIENTS] | agents URL [AGENTS SECONDS ROWS]"),
    }
}
