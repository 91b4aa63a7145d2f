//! Writes a synthetic profile of N distinct stacks (deep call-tree paths sharing prefixes, as
//! real stacks do) into a DuckDB data directory, for `bench/ui.sh` to draw in the UI.
//!
//! Usage: ui-data N DATA_DIR

use baton_model::{Batch, Frame, FrameKind, Labels, StackSample, ValueType};
use baton_store::{DuckDbStore, Store};

#[path = "synth.rs"]
#[allow(dead_code)]
mod synth;
use synth::Lcg;

const DEPTH: usize = 28;
const FUNCTIONS: usize = 5_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().unwrap_or_else(|| "100000".into()).parse()?;
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/baton-ui-bench".into()));
    let mut store = DuckDbStore::open(&dir)?;
    let mut rng = Lcg(7);
    let now = baton_model::time::now_ms();
    let mut labels = Labels::new();
    labels.insert("comm".into(), "synthetic".into());
    labels.insert("pid".into(), "4242".into());
    let mut seen = std::collections::HashSet::new();
    let mut batch = Batch::new("cpu", vec![ValueType::cpu_nanoseconds()], now - 60_000);
    while seen.len() < n {
        // A path down a tree of fan-out 4 for the first levels, wider below: distinct leaves.
        let mut caller = 0usize;
        let mut ids = Vec::with_capacity(DEPTH);
        for level in 0..DEPTH {
            let fan = if level < 6 { 4 } else { 12 };
            let pick = (rng.next() as usize) % fan;
            caller = (caller
                .wrapping_mul(131)
                .wrapping_add(pick * 7919 + level + 1))
                % FUNCTIONS;
            ids.push(caller);
        }
        if !seen.insert(ids.clone()) {
            continue;
        }
        let stack: Vec<Frame> = ids
            .iter()
            .rev()
            .map(|&f| Frame {
                kind: FrameKind::User,
                function: Some(format!("synthetic::module_{}::function_{f}", f % 37)),
                module: "/usr/bin/synthetic".into(),
                build_id: Some("0123456789abcdef".into()),
                address: f as u64 * 64,
                file: None,
                line: None,
            })
            .collect();
        batch.samples.push(StackSample {
            stack,
            labels: labels.clone(),
            value: 10_101_010 * (1 + (rng.next() % 20) as i64),
            weight: 1.0,
            value_index: 0,
        });
        if batch.samples.len() == 20_000 {
            store.write_batch(&batch)?;
            batch.samples.clear();
        }
    }
    store.write_batch(&batch)?;
    println!(
        "ui-data: {n} distinct stacks of {DEPTH} frames in {}",
        dir.display()
    );
    Ok(())
}
