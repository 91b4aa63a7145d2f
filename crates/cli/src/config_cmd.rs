//! `baton config check|show DIR`: validate a config tree as CI would, or print its effective form.

use std::path::Path;
use std::process::ExitCode;

use baton_config::ConfigError;

use crate::common::usage;

fn known_profilers() -> Vec<&'static str> {
    baton_profilers::registry::builtin_names()
}

/// Where and over what `check` counts the matches of the tree's Stack Schema rules.
pub struct SchemaCount {
    pub url: String,
    pub since: String,
    pub profiler: String,
}

/// The server's count of what each of the tree's Stack Schema rules matches.
fn count_matches(cfg: &baton_config::Config, c: &SchemaCount) -> anyhow::Result<serde_json::Value> {
    let rules: Vec<_> = cfg.stack_schema.rules.iter().map(|r| r.spec()).collect();
    let body = serde_json::json!({ "rules": rules });
    let path = format!(
        "/api/v1/schema/check?profiler={}&since={}",
        form_urlencoded::byte_serialize(c.profiler.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(c.since.as_bytes()).collect::<String>()
    );
    let (status, answer) = crate::client::Client::new(&c.url)?
        .post_json(&path, &body)
        .map_err(|e| anyhow::anyhow!("{e} (is `baton up` or `baton server` running?)"))?;
    if !(200..300).contains(&status) {
        return Err(crate::query::answer_error("server", status, &answer));
    }
    Ok(serde_json::from_slice(&answer)?)
}

/// Exit 0 on a good tree; exit 1 with one `file:line:col: message` line per problem. With a
/// server, also the stacks each Stack Schema rule matches there.
pub fn check(dir: &Path, json: bool, count: Option<SchemaCount>) -> anyhow::Result<ExitCode> {
    match baton_config::load_dir_checked(
        dir,
        &known_profilers(),
        &baton_runtime::config_watch::registry_options,
    ) {
        Ok(cfg) => {
            // Ad-hoc scripts are also compiled and attached by bpftrace itself, where it can.
            let mut failed = Vec::new();
            let mut skipped = Vec::new();
            for def in cfg.adhoc.values() {
                match baton_profilers::adhoc::dry_run(def) {
                    Ok(None) => {}
                    Ok(Some(why)) => skipped.push(format!("{}: {why}", def.file.display())),
                    Err(msg) => failed.push(format!(
                        "{}: bpftrace rejects it:\n{msg}",
                        dir.join(&def.file).display()
                    )),
                }
            }
            let matches = match &count {
                Some(c) if !cfg.stack_schema.is_empty() => Some(count_matches(&cfg, c)?),
                _ => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": failed.is_empty(), "version": cfg.version,
                                        "problems": failed, "dry_run_skipped": skipped,
                                        "stack_schema": matches })
                );
            } else {
                for f in &failed {
                    eprintln!("{f}");
                }
                for s in &skipped {
                    eprintln!("note: bpftrace did not check {s}");
                }
                if failed.is_empty() {
                    println!(
                        "{}: ok ({} services, {} profiler overrides, {} ad-hoc profilers; version {})",
                        dir.display(),
                        cfg.services.len(),
                        cfg.profilers.len(),
                        cfg.adhoc.len(),
                        cfg.version
                    );
                } else {
                    eprintln!("{} problem(s); the tree is rejected", failed.len());
                }
                if let (Some(m), Some(c)) = (&matches, &count) {
                    println!(
                        "stack schema rules against {}'s {} stacks of the last {}:",
                        c.url, c.profiler, c.since
                    );
                    for r in m["rules"].as_array().into_iter().flatten() {
                        println!(
                            "  {:>7} stacks {:>6.1}%  {}",
                            r["stacks"].as_u64().unwrap_or(0),
                            r["share"].as_f64().unwrap_or(0.0),
                            r["rule"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(ConfigError::Invalid(problems)) => {
            if json {
                let list: Vec<_> = problems
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "file": dir.join(&p.file).display().to_string(),
                            "line": p.line, "col": p.col, "message": p.message,
                        })
                    })
                    .collect();
                println!("{}", serde_json::json!({ "ok": false, "problems": list }));
            } else {
                for p in &problems {
                    eprintln!(
                        "{}:{}:{}: {}",
                        dir.join(&p.file).display(),
                        p.line,
                        p.col,
                        p.message
                    );
                }
                eprintln!("{} problem(s); the tree is rejected", problems.len());
            }
            Ok(ExitCode::from(1))
        }
        Err(e @ ConfigError::Io { .. }) => Err(usage(e.to_string())),
    }
}

/// Prints the effective config (defaults filled in) and its version, as JSON.
pub fn show(dir: &Path) -> anyhow::Result<ExitCode> {
    match baton_config::load_dir_checked(
        dir,
        &known_profilers(),
        &baton_runtime::config_watch::registry_options,
    ) {
        Ok(cfg) => {
            println!("{}", serde_json::to_string_pretty(&cfg)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(usage(e.to_string())),
    }
}

/// Prints the config in force in a running `baton up`, with its version and reload history.
pub fn show_server(url: &str) -> anyhow::Result<ExitCode> {
    let (status, body) = crate::query::get(url, "/api/v1/config")?;
    if !(200..300).contains(&status) {
        return Err(anyhow::anyhow!(
            "server answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}
