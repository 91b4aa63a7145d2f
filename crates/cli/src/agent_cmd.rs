//! `baton agent`: checks the flags and runs [`baton_runtime::agent`], the per-host half of
//! fleet mode.

use std::process::ExitCode;
use std::time::Duration;

use baton_runtime::agent::AgentOptions;

use crate::common::{parse_duration_flag, parse_size, usage};
use crate::AgentArgs;

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let buffer_max = parse_size(&a.buffer_max).map_err(|e| usage(format!("--buffer-max: {e}")))?;
    let mut labels = std::collections::BTreeMap::new();
    for l in &a.label {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| usage(format!("--label {l:?}: write it as key=value")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let window = match &a.window {
        Some(w) => Some(parse_duration_flag(w, "--window")?.max(Duration::from_secs(1))),
        None => None,
    };
    let drain_timeout = parse_duration_flag(&a.drain_timeout, "--drain-timeout")?;
    if let Some(scope) = &a.cgroup_scope {
        if !scope.starts_with('/') {
            return Err(usage(format!(
                "--cgroup-scope {scope:?}: give a cgroup v2 path such as /machines/h1"
            )));
        }
        baton_agent::targets::set_scope(scope);
    }
    let metrics_token = match &a.metrics_token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .map_err(|e| usage(format!("--metrics-token-file {}: {e}", f.display())))?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                return Err(usage(format!(
                    "--metrics-token-file {}: the token is shorter than 16 characters",
                    f.display()
                )));
            }
            Some(t)
        }
        None => None,
    };
    let loopback = a
        .listen
        .parse::<std::net::SocketAddr>()
        .map(|s| s.ip().is_loopback())
        .unwrap_or_else(|_| a.listen.starts_with("localhost:"));
    if !loopback && metrics_token.is_none() {
        return Err(usage(format!(
            "--listen {} is beyond loopback: give --metrics-token-file FILE, so that /metrics \
             asks for a token",
            a.listen
        )));
    }
    if baton_runtime::client::split_servers(&a.server.join(",")).is_empty() {
        return Err(usage("--server: give at least one URL"));
    }
    baton_runtime::agent::run(AgentOptions {
        // A comma-separated list: the client fails over between them.
        server: a.server.join(","),
        buffer_dir: a.buffer_dir,
        buffer_max,
        labels,
        host: a.host.unwrap_or_else(baton_agent::hostname),
        listen: a.listen,
        metrics_token,
        frequency: a.frequency,
        window,
        cpu_clock: a.cpu_clock,
        symbolize_locally: a.symbolize_locally,
        debuginfo_upload: !a.no_debuginfo_upload,
        drain_timeout,
        pods: crate::common::pods(a.kubelet.as_deref())?,
    })?;
    Ok(ExitCode::SUCCESS)
}
