//! Store benchmark: the same sample rows (default 10 M) on DuckDB, on one ClickHouse, and on two
//! ClickHouse shards behind `Distributed` tables, each behind a real `baton server`:
//! - ingest rate: gzip pprof batches posted to `/api/v1/ingest` by 4 clients (API_ROWS rows);
//! - the rest of the rows up to ROWS generated inside the backend from the same stacks, spread
//!   over the same 24 hours (so the query sees ROWS rows without hours of HTTP);
//! - flame-graph query latency through `/api/v1/flamegraph` over the last hour and the whole
//!   24 hours, cold (first) and warm (median of 4 more);
//! - bytes on disk per sample row (DuckDB's file; ClickHouse's active parts of the database).
//!
//! Usage: cargo run --release -p baton-bench --bin store-bench -- [ROWS=10000000]
//! [API_ROWS=1000000] [BACKENDS=duckdb,clickhouse,shards]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_model::{Batch, StackSample, ValueType};
use baton_store::testserver::{free_port, ClickHouseServer};
use baton_store::{ClickHouseStore, ClickHouseUrl, DuckDbStore};

#[path = "synth.rs"]
mod synth;
use synth::{Lcg, COMMS, DAY_MS, DISTINCT_STACKS};

const BATCH_ROWS: usize = 2_000;
const CLIENTS: usize = 4;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn baton_bin() -> String {
    std::env::var("BATON").unwrap_or_else(|_| {
        let t = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{t}/release/baton")
    })
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the server writes its last state (DuckDB checkpoints) and exits.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn start_server(data: &std::path::Path, store: &str) -> anyhow::Result<Server> {
    let port = free_port();
    let child = Command::new(baton_bin())
        .args(["server", "--insecure-local", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .args(["--store", store])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", baton_bin()))?;
    let url = format!("http://127.0.0.1:{port}");
    let s = Server { child, url };
    let a = agent();
    let t0 = Instant::now();
    loop {
        if let Ok(r) = a.get(&format!("{}/api/v1/status", s.url)).call() {
            if r.status().as_u16() == 200 {
                return Ok(s);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("baton server did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// API_ROWS rows as gzip pprof batches, over the 24 hours from `start_ms`.
fn batches(stacks: &[Vec<baton_model::Frame>], api_rows: usize, start_ms: i64) -> Vec<Vec<u8>> {
    let n = api_rows.div_ceil(BATCH_ROWS);
    let mut rng = Lcg(7);
    (0..n)
        .map(|i| {
            let ts = start_ms + (i as i64 * DAY_MS) / n as i64;
            let mut b = Batch::new("cpu", vec![ValueType::cpu_nanoseconds()], ts);
            for _ in 0..BATCH_ROWS {
                let c = rng.next() as usize % COMMS;
                b.samples.push(StackSample {
                    stack: stacks[rng.next() as usize % DISTINCT_STACKS].clone(),
                    labels: [
                        ("comm".to_string(), format!("comm{c}")),
                        ("pid".to_string(), (1000 + c).to_string()),
                        ("host".to_string(), "bench".to_string()),
                    ]
                    .into(),
                    value: 10_101_010,
                    weight: 1.0,
                    value_index: 0,
                });
            }
            baton_model::wire::encode_batch(&b)
        })
        .collect()
}

fn ingest(url: &str, encoded: &Arc<Vec<Vec<u8>>>) -> anyhow::Result<f64> {
    let queue = Arc::new(Mutex::new((0..encoded.len()).collect::<Vec<_>>()));
    let t = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (queue, encoded, url) = (queue.clone(), encoded.clone(), url.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let a = agent();
                loop {
                    let Some(i) = queue.lock().map_err(|_| anyhow::anyhow!("lock"))?.pop() else {
                        return Ok(());
                    };
                    let r = a
                        .post(&format!("{url}/api/v1/ingest?batch_id=store-bench-{i}"))
                        .header("content-type", "application/octet-stream")
                        .send(&encoded[i][..])?;
                    let code = r.status().as_u16();
                    r.into_body().read_to_vec()?;
                    anyhow::ensure!(code == 201, "ingest answered {code}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Cold and warm (median) milliseconds of a flame-graph request over [from, to).
fn flame(url: &str, from: i64, to: i64) -> anyhow::Result<(f64, f64, f64)> {
    let a = agent();
    let mut times = Vec::new();
    let mut total = 0.0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = a
            .get(&format!(
                "{url}/api/v1/flamegraph?profiler=cpu&from={from}&to={to}"
            ))
            .call()?;
        anyhow::ensure!(
            r.status().as_u16() == 200,
            "flamegraph answered {}",
            r.status()
        );
        let body = r.into_body().with_config().limit(1 << 31).read_to_vec()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        total = v["total"].as_f64().unwrap_or(0.0);
    }
    let cold = times[0];
    let mut warm = times[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    Ok((cold, warm[warm.len() / 2], total))
}

/// Runs SQL on a ClickHouse node's HTTP interface.
fn ch_sql(port: u16, sql: &str, settings: &str) -> anyhow::Result<String> {
    let r = agent()
        .post(&format!("http://127.0.0.1:{port}/?{settings}"))
        .send(sql.as_bytes())?;
    let code = r.status().as_u16();
    let text = r.into_body().read_to_string()?;
    anyhow::ensure!(code == 200, "ClickHouse answered {code}: {text}");
    Ok(text)
}

fn ch_fill(
    port: u16,
    table: &str,
    extra: usize,
    start_ms: i64,
    settings: &str,
) -> anyhow::Result<()> {
    ch_sql(
        port,
        &format!(
            "INSERT INTO {table} (ts_ms, profiler, value_type, unit, host, service, comm, pid, tid,
                                  exe, cgroup, stack_id, value, weight, run, value_index, detail, batch)
             WITH (SELECT groupArray(stack_id) FROM bench.stacks) AS ids
             SELECT {start_ms} + intDiv(number * {DAY_MS}, {extra}), 'cpu', 'cpu', 'nanoseconds',
                    'bench', '', concat('comm', toString(cityHash64(number) % {COMMS})),
                    toInt32(1000 + cityHash64(number) % {COMMS}), toInt32(1000 + cityHash64(number) % {COMMS}),
                    '/usr/bin/synthetic', '/', ids[1 + cityHash64(number * 7) % length(ids)],
                    10101010, 1.0, NULL, 0, NULL, ''
             FROM system.numbers LIMIT {extra}"
        ),
        settings,
    )
    .map(|_| ())
}

fn ch_bytes(port: u16) -> anyhow::Result<u64> {
    Ok(ch_sql(
        port,
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' AND active",
        "",
    )?
    .trim()
    .parse()
    .unwrap_or(0))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000_000);
    let api_rows: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let backends = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "duckdb,clickhouse,shards".into());
    let stacks = synth::stacks();
    let start_ms = baton_model::time::now_ms() / 3_600_000 * 3_600_000 - DAY_MS;
    let encoded = Arc::new(batches(&stacks, api_rows, start_ms));
    let api_rows = encoded.len() * BATCH_ROWS;
    let extra = rows.saturating_sub(api_rows);
    println!(
        "{rows} sample rows: {api_rows} through the API ({} batches of {BATCH_ROWS}, {:.1} MB gzip pprof, {CLIENTS} clients), {extra} generated in the backend; {DISTINCT_STACKS} distinct 24-frame stacks over 24 h",
        encoded.len(),
        encoded.iter().map(Vec::len).sum::<usize>() as f64 / 1e6
    );
    println!(
        "{:<22} {:>12} {:>14} {:>14} {:>14} {:>14} {:>10}",
        "backend",
        "ingest r/s",
        "1h cold ms",
        "1h warm ms",
        "24h cold ms",
        "24h warm ms",
        "bytes/row"
    );
    let tmp = std::env::temp_dir().join(format!("store-bench-{}", std::process::id()));
    for backend in backends.split(',') {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let data = tmp.join("data");
        let mut shards: Vec<ClickHouseServer> = Vec::new();
        let store = match backend {
            "duckdb" => "duckdb".to_string(),
            "clickhouse" => {
                shards.push(ClickHouseServer::start("bench").map_err(anyhow::Error::msg)?);
                shards[0].url("bench")
            }
            "shards" => {
                let (h1, t1, h2, t2) = (free_port(), free_port(), free_port(), free_port());
                let shard = |p: u16| {
                    format!(
                        "<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>"
                    )
                };
                let cluster = format!(
                    "<remote_servers><two>{}{}</two></remote_servers>",
                    shard(t1),
                    shard(t2)
                );
                shards.push(
                    ClickHouseServer::start_on("bench1", h1, t1, &cluster)
                        .map_err(anyhow::Error::msg)?,
                );
                shards.push(
                    ClickHouseServer::start_on("bench2", h2, t2, &cluster)
                        .map_err(anyhow::Error::msg)?,
                );
                // The second shard's local tables.
                drop(ClickHouseStore::open(
                    ClickHouseUrl::parse(&shards[1].url("bench")).map_err(anyhow::Error::msg)?,
                )?);
                format!("{}?cluster=two", shards[0].url("bench"))
            }
            other => bail!("unknown backend {other:?}: duckdb, clickhouse or shards"),
        };
        let server = start_server(&data, &store)?;
        let secs = ingest(&server.url, &encoded)?;
        let rate = api_rows as f64 / secs;
        // The rest of the rows, generated inside the backend.
        let server = if backend == "duckdb" {
            drop(server);
            let s = DuckDbStore::open(&data)?;
            let n: i64 = s
                .connection()
                .query_row("SELECT count(*) FROM stacks", [], |r| r.get(0))?;
            s.connection().execute_batch(&format!(
                "INSERT INTO samples (ts_ms, profiler, value_type, unit, host, pid, tid, comm, exe,
                                      cgroup, stack_id, value, weight)
                 SELECT {start_ms} + (i * {DAY_MS}) // {extra}, 'cpu', 'cpu', 'nanoseconds', 'bench',
                        1000 + (hash(i) % {COMMS}), 1000 + (hash(i) % {COMMS}), 'comm' || (hash(i) % {COMMS}),
                        '/usr/bin/synthetic', '/', s.stack_id, 10101010, 1.0
                 FROM range({extra}) r(i)
                 JOIN (SELECT stack_id, row_number() OVER (ORDER BY stack_id) - 1 AS n FROM stacks) s
                   ON s.n = hash(i * 7) % {n};
                 CHECKPOINT;"
            ))?;
            drop(s);
            start_server(&data, &store)?
        } else {
            let (table, settings) = if backend == "shards" {
                ("bench.samples", "insert_distributed_sync=1")
            } else {
                ("bench.samples_local", "")
            };
            if extra > 0 {
                ch_fill(shards[0].http_port, table, extra, start_ms, settings)?;
            }
            server
        };
        let end = start_ms + DAY_MS;
        let (c1, w1, _) = flame(&server.url, end - 3_600_000, end)?;
        let (c24, w24, total) = flame(&server.url, start_ms, end)?;
        let stored = (total / 10_101_010.0).round() as usize;
        let bytes = if backend == "duckdb" {
            drop(server);
            std::fs::metadata(data.join("baton.duckdb"))
                .map(|m| m.len())
                .unwrap_or(0)
        } else {
            drop(server);
            let mut b = 0;
            for s in &shards {
                b += ch_bytes(s.http_port)?;
            }
            b
        };
        anyhow::ensure!(
            stored == rows.max(api_rows),
            "{backend}: the 24 h query saw {stored} rows, not {rows}"
        );
        println!(
            "{:<22} {:>12.0} {:>14.0} {:>14.0} {:>14.0} {:>14.0} {:>10.1}",
            match backend {
                "duckdb" => "DuckDB (embedded)",
                "clickhouse" => "ClickHouse, 1 server",
                _ => "ClickHouse, 2 shards",
            },
            rate,
            c1,
            w1,
            c24,
            w24,
            bytes as f64 / stored as f64
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
