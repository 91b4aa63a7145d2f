//! Helpers shared by the subcommands: logging, data directory, exit codes, tables.

use std::path::{Path, PathBuf};

use anyhow::Context;

use baton_model::TopEntry;
use baton_profilers::ProfilerError;

/// Input the user can fix: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The error chain on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// 77 (EX_NOPERM) for missing privileges, 2 for bad input, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for c in e.chain() {
        // The agent and the runtime wrap the profiler's errors transparently: look inside.
        let runtime = c.downcast_ref::<baton_runtime::Error>();
        let inner = match c.downcast_ref::<baton_agent::AgentError>() {
            Some(baton_agent::AgentError::Profiler(p)) => Some(p),
            None => runtime
                .and_then(|r| r.profiler())
                .or_else(|| c.downcast_ref::<ProfilerError>()),
        };
        if let Some(p) = inner {
            return match p {
                ProfilerError::Permission => 77,
                ProfilerError::UnknownProfiler { .. }
                | ProfilerError::BadFrequency(_)
                | ProfilerError::NoSuchProcess(_)
                | ProfilerError::BadOption { .. }
                | ProfilerError::Attach(_) => 2,
                _ => 1,
            };
        }
        if c.downcast_ref::<UsageError>().is_some() || runtime.is_some_and(|r| r.is_bad_input()) {
            return 2;
        }
        if let Some(
            baton_store::StoreError::NotWritable { .. } | baton_store::StoreError::Locked { .. },
        ) = c.downcast_ref()
        {
            return 2;
        }
    }
    1
}

/// `/var/lib/baton` for root, else `$XDG_DATA_HOME/baton` or `~/.local/share/baton`.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/baton");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("baton");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/baton")
}

/// Prints the top-functions table.
pub fn print_top(rows: &[TopEntry], limit: usize) {
    println!("{:>7} {:>7}  FUNCTION", "SELF%", "TOTAL%");
    for r in rows.iter().take(limit) {
        println!(
            "{:>7.2} {:>7.2}  {}",
            r.self_percent, r.total_percent, r.function
        );
    }
}

/// `KEY=VALUE` profiler options from the command line.
pub fn parse_options(
    list: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for o in list {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| usage(format!("--opt {o:?}: write it as KEY=VALUE")))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// A total in its unit, for summaries: seconds for nanoseconds, KiB/MiB for bytes.
pub fn format_value(v: f64, unit: &str) -> String {
    let v = v.max(0.0);
    match unit {
        "nanoseconds" if v < 1e6 => format!("{:.1}us", v / 1e3),
        "nanoseconds" if v < 1e9 => format!("{:.2}ms", v / 1e6),
        "nanoseconds" => format!("{:.3}s", v / 1e9),
        "bytes" if v >= 1048576.0 => format!("{:.2} MiB", v / 1048576.0),
        "bytes" if v >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        "bytes" => format!("{v:.0} B"),
        _ => format!("{v:.0}"),
    }
}

/// `baton preload`: installs the allocation sampler into `dir` and says how to start a service
/// with it (a shell, a systemd drop-in, a container).
pub fn preload(dir: &Path, quiet: bool, json: bool) -> anyhow::Result<std::process::ExitCode> {
    use baton_profilers::preload;
    let lib = preload::install(Some(dir)).with_context(|| {
        format!(
            "installing {} into {}",
            preload::MALLOC_LIBRARY_NAME,
            dir.display()
        )
    })?;
    let lib = lib.display();
    let mean = preload::DEFAULT_SAMPLE_BYTES;
    let env = preload::SAMPLE_BYTES_ENV;
    if quiet {
        println!("{lib}");
    } else if json {
        let v = serde_json::json!({
            "library": lib.to_string(),
            "environment": { "LD_PRELOAD": lib.to_string(), env: mean.to_string() },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "installed {lib}\n\n\
             Start a service with it, and Baton's malloc profiler reads its samples:\n\n\
             \x20 shell:      LD_PRELOAD={lib} ./server\n\n\
             \x20 systemd:    systemctl edit myservice, then\n\
             \x20               [Service]\n\
             \x20               Environment=LD_PRELOAD={lib}\n\n\
             \x20 container:  mount {dir} read-only into it, and set\n\
             \x20               LD_PRELOAD={lib}\n\n\
             It samples 1 allocation per {kib} KiB on average ({env} sets the mean in bytes), \
             costs nanoseconds per allocation, and traps only on samples while Baton profiles \
             the process: baton run malloc --target pid:PID",
            dir = dir.display(),
            kib = mean / 1024
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `baton profilers`: the registry, as a table or JSON.
pub fn list_profilers(json: bool) -> anyhow::Result<std::process::ExitCode> {
    let infos = baton_profilers::registry::infos();
    if json {
        let mut list = Vec::new();
        for p in &infos {
            let mut v = serde_json::to_value(p)?;
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "unavailable".into(),
                    baton_profilers::registry::unavailable(p.name).into(),
                );
            }
            list.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    for p in infos {
        println!("{}  ({} cost)", p.name, p.cost.name());
        println!("    {}", p.description);
        if let Some(why) = baton_profilers::registry::unavailable(p.name) {
            println!("    unavailable here: {why}");
        }
        let values: Vec<String> = p
            .values
            .iter()
            .map(|v| format!("{} ({})", v.kind, v.unit))
            .collect();
        println!("    values: {}", values.join(", "));
        if !p.histograms.is_empty() {
            println!("    histograms: {}", p.histograms.join(", "));
        }
        if !p.labels.is_empty() {
            println!("    labels: {}", p.labels.join(", "));
        }
        println!("    default rate: {}", p.default_rate);
        for m in p.costly_modes {
            println!(
                "    {}={}: {} cost: {}; runs capped at {} s",
                m.option,
                m.value,
                m.cost.name(),
                m.per_call,
                m.max_duration_s
            );
        }
        let claims: Vec<String> = p
            .claims
            .iter()
            .map(|c| match c.shared {
                None => format!("{} (exclusive)", c.resource),
                Some(n) => format!("{} (shared by {n})", c.resource),
            })
            .collect();
        println!("    claims: {}", claims.join(", "));
        for o in p.options {
            let default = if o.default.is_empty() {
                String::new()
            } else {
                format!(" [default {}]", o.default)
            };
            println!("    --opt {}=…  {}{default}", o.name, o.help);
        }
        println!();
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Parses a size such as `1GiB`, `512MiB`, `64KiB`, `10MB` or a byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    baton_model::duration::parse_size(s)
}

/// Parses a duration flag, naming the flag in the error.
pub fn parse_duration_flag(v: &str, flag: &str) -> anyhow::Result<std::time::Duration> {
    baton_model::parse_duration(v).map_err(|e| usage(format!("{flag}: {e}")))
}

/// The kubelet's pod list for `--kubelet URL`, read on a thread from now on.
pub fn pods(
    url: Option<&str>,
) -> anyhow::Result<Option<std::sync::Arc<baton_agent::k8s::PodDirectory>>> {
    url.map(|u| baton_agent::k8s::PodDirectory::start(u).map_err(usage))
        .transpose()
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(super::parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(super::parse_size("10MB"), Ok(10_000_000));
        assert_eq!(super::parse_size("4096"), Ok(4096));
        assert!(super::parse_size("lots").is_err());
    }
}
