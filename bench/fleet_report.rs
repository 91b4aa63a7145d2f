//! `fleet-bench report FILE…`: one table of several `agents` runs (their `--json` files), with
//! each process's CPU and memory per 1,000 agents and a linear projection to 10,000 agents, and
//! the same as one `FLEET_BENCH_JSON {…}` line for machines.

use anyhow::Context;
use serde_json::{json, Map, Value};

/// The agents the projection is for.
const TARGET: f64 = 10_000.0;

/// The projection's assumption, printed with it.
pub const ASSUMPTION: &str = "linear in agents at this cadence: a process's CPU is multiplied by \
10,000 / agents, its RSS is its idle RSS plus its growth during the run multiplied by 10,000 / \
agents, and the split between servers stays as measured (the control plane's holder takes every \
register and heartbeat, each server the ingest of its share of agents)";

/// One process's figures, per 1,000 agents and at 10,000.
fn scaled(p: &Value, agents: f64) -> Value {
    let cpu = p["cpu_pct"].as_f64().unwrap_or(0.0);
    let idle = p["rss_idle_mb"].as_f64().unwrap_or(0.0);
    let peak = p["rss_peak_mb"].as_f64().unwrap_or(0.0);
    let grow = (peak - idle).max(0.0);
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "cpu_pct": r1(cpu),
        "rss_idle_mb": r1(idle),
        "rss_peak_mb": r1(peak),
        "cpu_pct_per_1k_agents": r1(cpu / agents * 1000.0),
        "rss_mb_per_1k_agents": r1(grow / agents * 1000.0),
        "cores_at_10k": (cpu / agents * TARGET).round() / 100.0,
        "rss_mb_at_10k": r1(idle + grow / agents * TARGET),
    })
}

/// One cell: `name <figures>` of each process, joined by `sep`.
fn each(procs: &Map<String, Value>, sep: &str, cell: impl Fn(&Value) -> String) -> String {
    procs
        .iter()
        .map(|(name, p)| format!("{name} {}", cell(p)))
        .collect::<Vec<_>>()
        .join(sep)
}

pub fn report(files: &[String]) -> anyhow::Result<()> {
    let mut phases = Vec::new();
    println!(
        "| phase | agents | heartbeat p50 / p99 | ingest p50 / p99 | errors | CPU, % of one core | RSS peak | per 1,000 agents: CPU, RSS growth | 10,000 agents (linear) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {f}"))?;
        let agents = v["agents"].as_f64().context("agents")?.max(1.0);
        let procs: Map<String, Value> = v["processes"]
            .as_object()
            .context("processes")?
            .iter()
            .filter(|(name, _)| name.as_str() != "fleet-bench")
            .map(|(name, p)| (name.clone(), scaled(p, agents)))
            .collect();
        let errors: u64 = v["errors"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let ms = |l: &Value| format!("{} / {} ms", l["p50_ms"], l["p99_ms"]);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v["label"].as_str().unwrap_or(""),
            v["agents"],
            ms(&v["heartbeat"]),
            ms(&v["ingest"]),
            errors,
            each(&procs, " + ", |p| format!("{}%", p["cpu_pct"])),
            each(&procs, " + ", |p| format!("{} MB", p["rss_peak_mb"])),
            each(&procs, "; ", |p| format!(
                "{}%, {} MB",
                p["cpu_pct_per_1k_agents"], p["rss_mb_per_1k_agents"]
            )),
            each(&procs, "; ", |p| format!(
                "{} cores, {} MB",
                p["cores_at_10k"], p["rss_mb_at_10k"]
            )),
        );
        phases.push(json!({
            "label": v["label"],
            "agents": v["agents"],
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
