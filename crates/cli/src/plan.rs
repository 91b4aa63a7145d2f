//! `baton plan`: run the real scheduler over a simulated fleet before committing a config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use baton_model::parse_duration;
use baton_scheduler::{simulate, Fleet};

use crate::common::usage;

pub struct PlanArgs {
    pub config: PathBuf,
    pub fleet: PathBuf,
    pub simulate: String,
    pub tick: String,
    pub tuner_interval: Option<String>,
    pub json: bool,
}

pub fn run(a: PlanArgs) -> anyhow::Result<ExitCode> {
    let known: Vec<&str> = baton_profilers::registry::builtin_names();
    let config = baton_config::load_dir_checked(
        &a.config,
        &known,
        &baton_runtime::config_watch::registry_options,
    )
    .map_err(|e| usage(e.to_string()))?;
    let text = std::fs::read_to_string(&a.fleet)
        .with_context(|| format!("reading {}", a.fleet.display()))
        .map_err(|e| usage(format!("{e:#}")))?;
    let fleet = Fleet::parse(&text).map_err(|e| usage(e.to_string()))?;
    let span = parse_duration(&a.simulate).map_err(|e| usage(format!("--simulate: {e}")))?;
    let tick = parse_duration(&a.tick).map_err(|e| usage(format!("--tick: {e}")))?;
    if tick.as_millis() == 0 || span < tick {
        return Err(usage(
            "--tick must be more than zero and no longer than --simulate",
        ));
    }
    let interval = match &a.tuner_interval {
        Some(s) => parse_duration(s).map_err(|e| usage(format!("--tuner-interval: {e}")))?,
        None => config.tuner.interval,
    };
    let t = Instant::now();
    let report = simulate(
        &config,
        baton_profilers::registry::infos()
            .into_iter()
            .map(baton_scheduler::ProfilerSpec::from_info)
            .collect(),
        &fleet,
        span.as_millis() as u64,
        tick.as_millis() as u64,
        interval.as_millis() as u64,
        true,
    )
    .map_err(|e| usage(e.to_string()))?;
    let wall = t.elapsed();
    let ticks = span.as_millis() as u64 / tick.as_millis() as u64;
    let ns_per_host_tick = wall.as_nanos() as f64 / (ticks as f64 * report.hosts.max(1) as f64);
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["config_version"] = serde_json::json!(config.version);
        v["wall_seconds"] = serde_json::json!(wall.as_secs_f64());
        v["ns_per_host_tick"] = serde_json::json!(ns_per_host_tick);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "plan: {} hosts, {} simulated in {:.2}s ({:.0} ns per host per {} tick); config {}",
            report.hosts,
            a.simulate,
            wall.as_secs_f64(),
            ns_per_host_tick,
            a.tick,
            config.version
        );
        println!(
            "conflicts: {}   peak concurrent profilers per host: {}   preemptions: {}",
            report.conflicts, report.peak_concurrent_per_host, report.preemptions
        );
        println!(
            "{:<16} {:>7} {:>14} {:>14} {:>7} {:>9} {:>9} {:>12} {:>10}",
            "SERVICE",
            "HOSTS",
            "TARGET",
            "EXPECTED",
            "RATIO",
            "RUNS",
            "TRIGGERS",
            "ROWS/MIN/H",
            "BUDGET%"
        );
        for s in &report.services {
            println!(
                "{:<16} {:>7} {:>14} {:>14} {:>7.3} {:>9} {:>9} {:>12} {:>9.1}%",
                s.name,
                s.hosts,
                s.target_samples,
                s.expected_samples,
                if s.target_samples > 0 {
                    s.expected_samples as f64 / s.target_samples as f64
                } else {
                    0.0
                },
                s.continuous_runs,
                s.trigger_firings,
                s.peak_rows_per_minute_per_host,
                100.0 * s.peak_rows_per_minute_per_host as f64
                    / s.write_budget_rows_per_minute.max(1) as f64,
            );
        }
        if let Some(c) = &report.host_chain {
            println!(
                "whole-host chain (no CPU rule): {} rows expected of a fleet budget of {} ({:.3}); windows of {}s stored with p = {:.6}",
                c.expected_rows,
                c.target_rows,
                c.expected_rows as f64 / c.target_rows.max(1) as f64,
                c.window_seconds,
                c.probability
            );
        }
    }
    Ok(if report.conflicts == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
