//! Query benchmark: latency of a flame-graph query over N synthetic sample rows (default 10 M)
//! in the embedded DuckDB store, with the bare SQL group-by over the same rows as the reference.
//!
//! Usage: cargo run --release -p baton-bench --bin query-bench -- [ROWS] [DIR]

use std::time::Instant;

use anyhow::Context;
use baton_model::{Batch, StackSample, ValueType};
use baton_store::{DuckDbStore, Query, Store};

#[path = "synth.rs"]
mod synth;
use synth::{stacks as synthetic_stacks, COMMS, DAY_MS, DISTINCT_STACKS};

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

    let stacks = synthetic_stacks();

    let start_ms: i64 = 1_700_000_000_000;
    let t = Instant::now();
    // The dictionaries (frames, symbols, stacks) go through the real write path, one batch of
    // one row per distinct stack; the bulk of the sample rows is then generated inside DuckDB
    // from those rows, spread over 24 hours and COMMS processes.
    let samples = stacks
        .iter()
        .map(|st| StackSample {
            stack: st.clone(),
            labels: [("comm".to_string(), "comm0".to_string())].into(),
            value: 10_101_010,
            weight: 1.0,
            value_index: 0,
        })
        .collect();
    let mut batch = Batch::new("cpu", vec![ValueType::cpu_nanoseconds()], start_ms);
    batch.samples = samples;
    store.write_batch(&batch)?;
    let extra = rows.saturating_sub(DISTINCT_STACKS);
    store.connection().execute_batch(&format!(
        "INSERT INTO samples (ts_ms, profiler, value_type, unit, host, pid, tid, comm, exe,
                              cgroup, stack_id, value, weight)
         SELECT {start_ms} + (i * {DAY_MS}) // {extra}, 'cpu', 'cpu', 'nanoseconds', 'bench',
                1000 + (hash(i) % {COMMS}), 1000 + (hash(i) % {COMMS}), 'comm' || (hash(i) % {COMMS}),
                '/usr/bin/synthetic', '/', s.stack_id, 10101010, 1.0
         FROM range({extra}) r(i)
         JOIN (SELECT stack_id, row_number() OVER (ORDER BY stack_id) - 1 AS n FROM stacks) s
           ON s.n = hash(i * 7) % {DISTINCT_STACKS}"
    ))?;
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
        value: None,
        from_ms: start_ms,
        to_ms: start_ms + DAY_MS + 1,
        filters: vec![],
        schema: None,
    };
    let mut times = Vec::new();
    let mut tree_ms = Vec::new();
    let mut nodes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let named = store.named_stacks(&q)?;
        let t_tree = Instant::now();
        let tree = named.flame_tree();
        tree_ms.push(t_tree.elapsed().as_secs_f64() * 1000.0);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        nodes = count_nodes(&tree);
    }
    tree_ms.sort_by(f64::total_cmp);
    let reference = store.bench_group_by_ms(&q, 5)?;
    let cold = times[0];
    times.sort_by(f64::total_cmp);
    let warm = times[2];
    println!(
        "flame-graph query over 24 h, {rows} rows: cold {cold:.0} ms, warm median {warm:.0} ms \
         (of which building the {nodes}-node tree {:.0} ms)",
        tree_ms[2]
    );
    println!("reference: bare SQL group-by-stack over the same rows, median {reference:.0} ms");
    println!(
        "ratio flame/warm to bare group-by: {:.2}x",
        warm / reference
    );

    // The same query with a Stack Schema: a stack tag, a frame tag, a collapse and a drop,
    // each matching some of the synthetic functions; then the totals per tag value.
    let rule = |p: &str, action| baton_model::SchemaRule {
        pattern: regex::Regex::new(p).expect("pattern"),
        action,
        service: None,
    };
    let tag = |k: &str, v: &str| baton_model::SchemaAction::TagStack {
        key: k.into(),
        value: v.into(),
    };
    let schema = baton_model::StackSchema {
        rules: vec![
            rule("^function_1[0-9]$", tag("component", "db")),
            rule(
                "^function_2[0-9]{2}$",
                baton_model::SchemaAction::TagFrame {
                    key: "layer".into(),
                    value: "io".into(),
                },
            ),
            rule("^function_3", baton_model::SchemaAction::Collapse),
            rule("^function_4[0-9]$", baton_model::SchemaAction::Drop),
        ],
    };
    let mut with_schema = q.clone();
    with_schema.schema = Some(std::sync::Arc::new(schema));
    let mut schema_ms = Vec::new();
    let mut tag_ms = Vec::new();
    let mut tagged = 0.0;
    for _ in 0..5 {
        let t = Instant::now();
        let named = store.named_stacks(&with_schema)?;
        let _ = named.flame_tree();
        schema_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let by = store.label_values(&with_schema, "component", 10)?;
        tag_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        tagged = by.iter().map(|(_, v)| v).sum::<f64>();
    }
    schema_ms.sort_by(f64::total_cmp);
    tag_ms.sort_by(f64::total_cmp);
    let total: f64 = store
        .label_values(&q, "comm", 1000)?
        .iter()
        .map(|(_, v)| v)
        .sum();
    println!(
        "with a Stack Schema (4 rules): flame-graph query warm median {:.0} ms, {:.2}x the query \
         without; totals per tag value {:.0} ms ({:.1}% of the time tagged component=db)",
        schema_ms[2],
        schema_ms[2] / warm,
        tag_ms[2],
        100.0 * tagged / total.max(1.0)
    );
    Ok(())
}

fn count_nodes(n: &baton_model::FlameNode) -> usize {
    1 + n.children.iter().map(count_nodes).sum::<usize>()
}
