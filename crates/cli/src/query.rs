//! `baton query`: read profiles from a running `baton up` or server over HTTP.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use baton_model::TopEntry;

use crate::common::{print_top, usage};
use crate::QueryArgs;

pub fn run(a: QueryArgs) -> anyhow::Result<ExitCode> {
    baton_model::parse_duration(&a.since).map_err(|e| usage(format!("--since: {e}")))?;
    if let Some(label) = &a.by {
        return by_label(&a, label);
    }
    let (path, export_format) = match a.format.as_str() {
        "top" => ("/api/v1/top", None),
        "json" => ("/api/v1/flamegraph", None),
        "collapsed" | "folded" => ("/api/v1/export", Some("collapsed")),
        "pprof" => ("/api/v1/export", Some("pprof")),
        "hist" | "histogram" | "histograms" => ("/api/v1/histograms", None),
        other => {
            return Err(usage(format!(
                "unknown --format {other:?}; use top, collapsed, pprof, json or hist"
            )))
        }
    };
    if export_format == Some("pprof") && a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(usage("pprof is binary; write it with --output FILE.pb.gz"));
    }
    let mut q = form_query(&a, export_format);
    if a.format == "top" {
        q.push_str(&format!("&limit={}", a.top));
    }
    let (status, body) = get(&a.server, &format!("{path}?{q}"))?;
    if !(200..300).contains(&status) {
        return Err(answer_error("server", status, &body));
    }
    if path == "/api/v1/histograms" && a.output.is_none() {
        let v: serde_json::Value =
            serde_json::from_slice(&body).context("decoding the histograms")?;
        let hs = v["histograms"].as_array().cloned().unwrap_or_default();
        if hs.is_empty() {
            eprintln!("no histograms for {} in the last {}", a.profiler, a.since);
        }
        for h in hs {
            let mut hist = baton_model::Histogram::new(
                h["name"].as_str().unwrap_or("?"),
                h["unit"].as_str().unwrap_or(""),
                h["key"].as_str().unwrap_or(""),
                Default::default(),
            );
            hist.buckets = serde_json::from_value(h["buckets"].clone()).unwrap_or_default();
            println!(
                "{} of {}: {} values, p50 {}, p90 {}, p99 {}\n{}",
                hist.name,
                if hist.key.is_empty() {
                    "all"
                } else {
                    &hist.key
                },
                hist.total(),
                h["p50"],
                h["p90"],
                h["p99"],
                hist.render()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.format == "top" && a.output.is_none() {
        let v: serde_json::Value =
            serde_json::from_slice(&body).context("decoding the top table")?;
        let rows: Vec<TopEntry> =
            serde_json::from_value(v["rows"].clone()).context("decoding rows")?;
        print_top(&rows, a.top);
        return Ok(ExitCode::SUCCESS);
    }
    match &a.output {
        Some(p) => {
            std::fs::write(p, &body).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {} ({} bytes)", p.display(), body.len());
        }
        None => std::io::stdout().lock().write_all(&body)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A server's error answer as an error: its JSON `error` (else the body), a usage error (exit 2)
/// for a 4xx.
pub fn answer_error(who: &str, status: u16, body: &[u8]) -> anyhow::Error {
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let e = format!("{who} answered {status}: {msg}");
    if (400..500).contains(&status) {
        usage(e)
    } else {
        anyhow::anyhow!(e)
    }
}

/// GET `path` from a baton server: (status, body).
pub fn get(server: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    crate::client::Client::new(server)?
        .get(path)
        .map_err(|e| anyhow::anyhow!("{e} (is `baton up` or `baton server` running?)"))
}

/// `--by LABEL`: the label's values with their totals and shares, or the server's JSON.
fn by_label(a: &QueryArgs, label: &str) -> anyhow::Result<ExitCode> {
    if !matches!(a.format.as_str(), "top" | "json") {
        return Err(usage(
            "--by prints a table (--format top) or JSON (--format json)",
        ));
    }
    let mut q = form_query(a, None);
    q.push_str(&format!("&limit={}", a.top));
    let path = format!(
        "/api/v1/labels/{}?{q}",
        form_urlencoded::byte_serialize(label.as_bytes()).collect::<String>()
    );
    let (status, body) = get(&a.server, &path)?;
    if !(200..300).contains(&status) {
        return Err(answer_error("server", status, &body));
    }
    if a.format == "json" || a.output.is_some() {
        match &a.output {
            Some(p) => {
                std::fs::write(p, &body).with_context(|| format!("writing {}", p.display()))?
            }
            None => std::io::stdout().lock().write_all(&body)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value = serde_json::from_slice(&body).context("decoding label values")?;
    let values = v["values"].as_array().cloned().unwrap_or_default();
    if values.is_empty() {
        eprintln!(
            "no {} samples carry {label} in the last {}",
            a.profiler, a.since
        );
        return Ok(ExitCode::SUCCESS);
    }
    let total: f64 = values.iter().filter_map(|r| r["total"].as_f64()).sum();
    println!("{:>8}  {:>14}  {label}", "share", "total");
    for r in &values {
        let t = r["total"].as_f64().unwrap_or(0.0);
        println!(
            "{:>7.1}%  {:>14.0}  {}",
            100.0 * t / total.max(f64::MIN_POSITIVE),
            t,
            r["value"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn form_query(a: &QueryArgs, format: Option<&str>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("profiler", &a.profiler);
    s.append_pair("since", &a.since);
    if let Some(v) = &a.value {
        s.append_pair("value", v);
    }
    for f in &a.filter {
        s.append_pair("filter", f);
    }
    if let Some(f) = format {
        s.append_pair("format", f);
    }
    s.finish()
}
