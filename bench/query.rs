//! Query benchmark: latency of a flame-graph query over N synthetic sample rows (default 10 M)
//! in the embedded DuckDB store, with the bare SQL group-by over the same rows as the reference.
//!
//! Usage: cargo run --release -p baton-bench --bin query-bench -- [ROWS] [DIR]

use std::time::Instant;

use anyhow::Context;
use baton_model::{Batch, Frame, FrameKind, StackSample, ValueType};
use baton_store::{DuckDbStore, Query, Store};

const DISTINCT_STACKS: usize = 20_000;
const FUNCTIONS: usize = 2_000;
const DEPTH: usize = 24;
const COMMS: usize = 200;
const ROWS_PER_BATCH: usize = 20_000;
const DAY_MS: i64 = 86_400_000;

/// A small deterministic generator, so every run stores the same rows.
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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000_000);
    let dir = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("baton-query-bench"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = DuckDbStore::open(&dir).context("open store")?;

    let mut rng = Lcg(42);
    let stacks: Vec<Vec<Frame>> = (0..DISTINCT_STACKS)
        .map(|_| {
            (0..DEPTH)
                .map(|_| {
                    let f = (rng.next() as usize) % FUNCTIONS;
                    Frame {
                        kind: FrameKind::User,
                        function: Some(format!("function_{f}")),
                        module: "/usr/bin/synthetic".into(),
                        build_id: Some("0123456789abcdef".into()),
                        address: f as u64 * 64,
                        file: None,
                        line: None,
                    }
                })
                .collect()
        })
        .collect();

    let start_ms: i64 = 1_700_000_000_000;
    let t = Instant::now();
    let mut written = 0;
    while written < rows {
        let n = ROWS_PER_BATCH.min(rows - written);
        let ts = start_ms + (written as i64 * DAY_MS) / rows as i64;
        let samples = (0..n)
            .map(|_| {
                let s = (rng.next() as usize) % DISTINCT_STACKS;
                let c = (rng.next() as usize) % COMMS;
                StackSample {
                    stack: stacks[s].clone(),
                    labels: [
                        ("comm".to_string(), format!("comm{c}")),
                        ("pid".to_string(), (1000 + c).to_string()),
                    ]
                    .into(),
                    value: 10_101_010,
                    weight: 1.0,
                }
            })
            .collect();
        store.write_batch(&Batch {
            profiler: "cpu".into(),
            value_type: ValueType::cpu_nanoseconds(),
            ts_ms: ts,
            samples,
        })?;
        written += n;
    }
    let load_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "loaded {rows} rows in {load_s:.1} s ({:.0} rows/s); file {:.1} MiB, {:.1} bytes/row",
        rows as f64 / load_s,
        size as f64 / 1048576.0,
        size as f64 / rows as f64
    );
    drop(store);

    // Fresh process state: reopen, so caches are cold for the first query.
    let mut store = DuckDbStore::open(&dir)?;
    let q = Query {
        profiler: "cpu".into(),
        from_ms: start_ms,
        to_ms: start_ms + DAY_MS + 1,
        filters: vec![],
    };
    let mut times = Vec::new();
    let mut nodes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let p = store.profile(&q)?;
        let tree = p.flame_tree();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        nodes = tree.children.len();
    }
    let reference = store.bench_group_by_ms(&q, 5)?;
    let cold = times[0];
    times.sort_by(f64::total_cmp);
    let warm = times[2];
    println!("flame-graph query over 24 h, {rows} rows: cold {cold:.0} ms, warm median {warm:.0} ms ({nodes} root children)");
    println!("reference: bare SQL group-by-stack over the same rows, median {reference:.0} ms");
    println!(
        "ratio flame/warm to bare group-by: {:.2}x",
        warm / reference
    );
    Ok(())
}
