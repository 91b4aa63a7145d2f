//! `fleet-bench report FILE…`: one table of several `agents` runs (their `--json` files), with
//! each process's CPU and memory per 1,000 agents and a linear projection to 10,000 agents, and
//! the same as one `FLEET_BENCH_JSON {…}` line for machines.

use anyhow::Context;
use serde_json::{json, Map, Value};

/// The agents the projection is for.
const TARGET: f64 = 10_000.0;

/// The projection's assumption, printed with it.
pub const ASSUMPTION: &str = "linear in agents at this cadence. CPU: a process's CPU divided by \
the agents served (agents x the share of due batches that were stored during the measured span; \
when the servers fall behind, this charges the heartbeats of all agents to fewer, an upper bound), \
times 10,000. RSS: idle RSS plus the growth during the run x 10,000 / agents (the growth holds \
batches waiting for the store, so it is an upper bound too). The split between processes stays as \
measured: the control plane's holder takes every register and heartbeat, each server the batches \
of its share of the agents";

/// The share of the batches due during the measured span that were stored.
fn served(v: &Value) -> f64 {
    let agents = v["agents"].as_f64().unwrap_or(0.0);
    let span = v["seconds"].as_f64().unwrap_or(0.0) - v["warm_s"].as_f64().unwrap_or(0.0);
    let due = agents * span / v["batch_every_s"].as_f64().unwrap_or(10.0);
    let stored = v["ingest"]["count"].as_f64().unwrap_or(0.0);
    if due > 0.0 {
        (stored / due).min(1.0)
    } else {
        0.0
    }
}

/// One process's figures, per 1,000 agents and at 10,000: CPU over the `served` agents, memory
/// over all.
fn scaled(p: &Value, agents: f64, served: f64) -> Value {
    let cpu = p["cpu_pct"].as_f64().unwrap_or(0.0);
    let idle = p["rss_idle_mb"].as_f64().unwrap_or(0.0);
    let peak = p["rss_peak_mb"].as_f64().unwrap_or(0.0);
    let grow = (peak - idle).max(0.0);
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "cpu_pct": r1(cpu),
        "rss_idle_mb": r1(idle),
        "rss_peak_mb": r1(peak),
        "cpu_pct_per_1k_agents": r1(cpu / served * 1000.0),
        "rss_mb_per_1k_agents": r1(grow / agents * 1000.0),
        "cores_at_10k": (cpu / served * TARGET).round() / 100.0,
        "rss_mb_at_10k": r1(idle + grow / agents * TARGET),
    })
}

/// `p50 / p99` of a latency summary, or `-` when there is none.
fn ms(l: &Value) -> String {
    if l.is_null() {
        return "-".into();
    }
    format!("{} / {}", l["p50_ms"], l["p99_ms"])
}

pub fn report(files: &[String]) -> anyhow::Result<()> {
    let mut phases = Vec::new();
    println!(
        "| phase | agents (batches stored/due) | process | heartbeat p50 / p99 ms | ingest p50 / p99 ms | errors | CPU, % of one core | RSS idle / peak MB | per 1,000 agents served: CPU %, RSS growth MB | 10,000 agents (linear): cores, RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {f}"))?;
        let agents = v["agents"].as_f64().context("agents")?.max(1.0);
        let share = served(&v);
        let served_agents = (agents * share).max(1.0);
        let procs: Map<String, Value> = v["processes"]
            .as_object()
            .context("processes")?
            .iter()
            .filter(|(name, _)| name.as_str() != "fleet-bench")
            .map(|(name, p)| (name.clone(), scaled(p, agents, served_agents)))
            .collect();
        let errors: u64 = v["errors"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        // The phase's row (all servers' calls together), then one per process.
        println!(
            "| {} | {} ({:.0}%) | all | {} | {} | {errors} | | | | |",
            v["label"].as_str().unwrap_or(""),
            v["agents"],
            share * 100.0,
            ms(&v["heartbeat"]),
            ms(&v["ingest"]),
        );
        for (name, p) in &procs {
            let calls = &v["per_server"][name];
            println!(
                "| | | {name} | {} | {} | | {} | {} / {} | {}, {} | {}, {} |",
                ms(&calls["heartbeat"]),
                ms(&calls["ingest"]),
                p["cpu_pct"],
                p["rss_idle_mb"],
                p["rss_peak_mb"],
                p["cpu_pct_per_1k_agents"],
                p["rss_mb_per_1k_agents"],
                p["cores_at_10k"],
                p["rss_mb_at_10k"],
            );
        }
        phases.push(json!({
            "label": v["label"],
            "agents": v["agents"],
            "batches_stored_of_due": (share * 1000.0).round() / 1000.0,
            "seconds": v["seconds"],
            "rows_per_batch": v["rows_per_batch"],
            "heartbeat": v["heartbeat"],
            "ingest": v["ingest"],
            "per_server": v["per_server"],
            "errors": v["errors"],
            "hosts_up": v["hosts_up"],
            "processes": procs,
            "bench_cpu_pct": v["processes"]["fleet-bench"]["cpu_pct"],
        }));
    }
    println!("10,000 agents: {ASSUMPTION}.");
    println!(
        "FLEET_BENCH_JSON {}",
        json!({"phases": phases, "projection_to": TARGET as u64, "assumption": ASSUMPTION})
    );
    Ok(())
}
