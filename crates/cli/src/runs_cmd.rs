//! `baton run` and `baton runs`: on-demand runs through a running `baton up`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_model::TopEntry;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::common::{print_top, usage};
use crate::query::get;

pub struct RunArgs {
    pub profiler: String,
    pub target: String,
    pub duration: String,
    pub frequency: Option<u64>,
    pub priority: i32,
    pub force: bool,
    /// `KEY=VALUE` profiler options.
    pub options: Vec<String>,
    pub wait: bool,
    pub server: String,
    pub host: Option<String>,
    pub top: usize,
    pub json: bool,
}

fn post(server: &str, path: &str, body: &Value) -> anyhow::Result<(u16, Vec<u8>)> {
    crate::client::Client::new(server)?
        .post_json(path, body)
        .map_err(|e| anyhow::anyhow!("{e} (is `baton up` or `baton server` running?)"))
}

fn answer(status: u16, body: &[u8]) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(body) }));
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        let msg = v["error"].as_str().unwrap_or("request failed").to_string();
        Err(if (400..500).contains(&status) {
            usage(msg)
        } else {
            anyhow::anyhow!("server answered {status}: {msg}")
        })
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    baton_model::parse_duration(&a.duration).map_err(|e| usage(format!("--duration: {e}")))?;
    let mut body = json!({
        "profiler": a.profiler, "target": a.target, "duration": a.duration,
        "priority": a.priority, "force": a.force,
    });
    if let Some(h) = &a.host {
        body["host"] = json!(h);
    }
    if let Some(f) = a.frequency {
        body["frequency"] = json!(f);
    }
    body["options"] = json!(crate::common::parse_options(&a.options)?);
    let (status, out) = post(&a.server, "/api/v1/runs", &body)?;
    let id = answer(status, &out)?["id"]
        .as_u64()
        .context("the server returned no run id")?;
    if !a.wait {
        if a.json {
            println!("{}", json!({ "id": id }));
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("run {id} queued");
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} run {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let run = loop {
        let (status, out) = get(&a.server, &format!("/api/v1/runs/{id}"))?;
        let r = answer(status, &out)?;
        let state = r["state"].as_str().unwrap_or("?").to_string();
        bar.set_message(format!("{id} {state}"));
        bar.tick();
        if matches!(state.as_str(), "done" | "failed" | "cancelled") {
            break r;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    bar.finish_and_clear();
    if a.json {
        println!("{run}");
    } else {
        eprintln!(
            "run {id} {}: {} samples{}",
            run["state"].as_str().unwrap_or("?"),
            run["samples"],
            run["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        let (status, out) = get(
            &a.server,
            &format!(
                "/api/v1/top?profiler={}&since=7d&filter=run%3D{id}&limit={}",
                a.profiler, a.top
            ),
        )?;
        let top = answer(status, &out)?;
        let rows: Vec<TopEntry> = serde_json::from_value(top["rows"].clone()).unwrap_or_default();
        print_top(&rows, a.top);
    }
    Ok(if run["state"] == "done" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn list(server: &str, json_out: bool, all: bool) -> anyhow::Result<ExitCode> {
    let path = if all {
        "/api/v1/runs?all=1"
    } else {
        "/api/v1/runs"
    };
    let (status, out) = get(server, path)?;
    let v = answer(status, &out)?;
    if json_out {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<10} {:<10} {:<8} {:<22} {:>8} {:>7}  {:<24} REASON",
        "ID", "STATE", "MODE", "PROFILER", "TARGET", "SAMPLES", "WEIGHT", "STARTED"
    );
    for r in v["runs"].as_array().into_iter().flatten() {
        println!(
            "{:>6}  {:<10} {:<10} {:<8} {:<22} {:>8} {:>7.2}  {:<24} {}",
            r["id"].as_u64().unwrap_or(0),
            r["state"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            r["profiler"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            r["samples"].as_u64().unwrap_or(0),
            r["weight"].as_f64().unwrap_or(1.0),
            r["started_at"].as_str().unwrap_or("-"),
            r["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(server: &str, id: u64) -> anyhow::Result<ExitCode> {
    let (status, out) = get(server, &format!("/api/v1/runs/{id}"))?;
    println!("{}", serde_json::to_string_pretty(&answer(status, &out)?)?);
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(server: &str, id: u64) -> anyhow::Result<ExitCode> {
    let (status, out) = post(server, &format!("/api/v1/runs/{id}/cancel"), &json!({}))?;
    let v = answer(status, &out)?;
    println!("run {id}: {}", v["state"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

/// `baton hosts`: the hosts of a fleet server.
pub fn hosts(server: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let (status, out) = get(server, "/api/v1/hosts")?;
    let v = answer(status, &out)?;
    if json_out {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let now = baton_model::time::now_ms() as u64;
    println!(
        "{:<24} {:<6} {:>9} {:>5} {:<20} LABELS",
        "HOST", "STATE", "LAST SEEN", "CPUS", "KERNEL"
    );
    for h in v["hosts"].as_array().into_iter().flatten() {
        let seen = now.saturating_sub(h["last_seen_ms"].as_u64().unwrap_or(0)) as f64 / 1000.0;
        let labels: Vec<String> = h["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!(
            "{:<24} {:<6} {:>8.1}s {:>5} {:<20} {}",
            h["host"].as_str().unwrap_or("?"),
            h["state"].as_str().unwrap_or("?"),
            seen,
            h["cpus"],
            h["kernel"].as_str().unwrap_or(""),
            labels.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}
