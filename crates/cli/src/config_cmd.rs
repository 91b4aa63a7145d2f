//! `baton config check|show DIR`: validate a config tree as CI would, or print its effective form.

use std::path::Path;
use std::process::ExitCode;

use baton_config::ConfigError;

use crate::common::usage;

fn known_profilers() -> Vec<&'static str> {
    baton_profilers::registry::builtin_names()
}

/// Exit 0 on a good tree; exit 1 with one `file:line:col: message` line per problem.
pub fn check(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
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
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": failed.is_empty(), "version": cfg.version,
                                        "problems": failed, "dry_run_skipped": skipped })
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
