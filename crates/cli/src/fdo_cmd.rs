//! `baton fdo`: an LLVM sample profile and a BOLT profile for one binary, from the CPU samples
//! of its build ID in `baton record` outputs or in stores (a `baton up` or fleet server).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use baton_symbolizer::fdo::{Coverage, FdoBinary, FdoError, SampleProfile, Samples};
use clap::Args;
use serde_json::json;

use crate::common::usage;

#[derive(Args)]
pub struct FdoArgs {
    /// The binary the samples were taken from (its build ID selects them). Build it with
    /// -gline-tables-only -fdebug-info-for-profiling -funique-internal-linkage-names.
    #[arg(long, value_name = "PATH")]
    pub binary: PathBuf,
    /// The build ID to select; an error unless it is the binary's own.
    #[arg(long, value_name = "HEX")]
    pub build_id: Option<String>,
    /// A pprof file to read samples from, as `baton record cpu --output FILE.pb.gz` writes
    /// (repeatable; merged). Without it, samples come from --server.
    #[arg(long, value_name = "FILE")]
    pub input: Vec<PathBuf>,
    /// A running `baton up` or fleet server to read samples from (repeatable; merged). Without
    /// --input or --server: $BATON_SERVER, else http://127.0.0.1:7070.
    #[arg(long, value_name = "URL")]
    pub server: Vec<String>,
    /// How far back to read from servers, e.g. 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// A label filter for servers, repeatable: service=NAME, comm=NAME, host=NAME…
    #[arg(long)]
    pub filter: Vec<String>,
    /// Write the LLVM sample profile here (else to stdout, unless --bolt is given).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// text (LLVM's text format), or extbinary / binary (converted with llvm-profdata).
    #[arg(long, default_value = "text")]
    pub profile_format: String,
    /// Also write a BOLT profile (the `perf2bolt -nl` form) here, for `llvm-bolt -data`.
    #[arg(long, value_name = "FILE")]
    pub bolt: Option<PathBuf>,
    /// The report: text (on stderr) or json (on stdout; needs --output or --bolt).
    #[arg(long, default_value = "text")]
    pub format: String,
    /// Hottest functions listed in the report.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

pub fn run(a: FdoArgs) -> anyhow::Result<ExitCode> {
    let json_out = match a.format.as_str() {
        "text" => false,
        "json" => true,
        f => return Err(usage(format!("unknown --format {f:?}; use text or json"))),
    };
    if !matches!(a.profile_format.as_str(), "text" | "extbinary" | "binary") {
        return Err(usage(format!(
            "unknown --profile-format {:?}; use text, extbinary or binary",
            a.profile_format
        )));
    }
    if json_out && a.output.is_none() && a.bolt.is_none() {
        return Err(usage(
            "--format json prints the report on stdout: write the profile with --output",
        ));
    }
    if a.profile_format != "text" && a.output.is_none() {
        return Err(usage("a binary profile needs --output FILE"));
    }
    baton_model::parse_duration(&a.since).map_err(|e| usage(format!("--since: {e}")))?;
    let bin = FdoBinary::open_for(&a.binary, a.build_id.as_deref()).map_err(|e| match e {
        FdoError::Binary(_) | FdoError::BuildIdMismatch { .. } | FdoError::NoBuildId(_) => {
            usage(e.to_string())
        }
    })?;
    let build_id = bin.build_id.clone().unwrap_or_default();

    let (samples, sources, elsewhere) = gather(&a, &build_id)?;
    if samples.stacks.is_empty() {
        let hint = if elsewhere.is_empty() {
            String::new()
        } else {
            format!("; the samples read are of {}", elsewhere.join(", "))
        };
        eprintln!(
            "baton fdo: no CPU samples of build ID {build_id} ({}) in {sources}{hint}; \
             nothing written",
            a.binary.display()
        );
        return Ok(ExitCode::from(1));
    }
    let (profile, cov) = SampleProfile::build(&bin, &samples);
    if profile.functions.is_empty() {
        eprintln!(
            "baton fdo: none of the {:.0} µs sampled in {} maps to a function; nothing written",
            cov.samples + cov.leaf_elsewhere,
            a.binary.display()
        );
        report_text(&cov, &profile, &build_id, &a, &sources);
        return Ok(ExitCode::from(1));
    }
    let mut text = Vec::new();
    profile.write_text(&mut text)?;
    match &a.output {
        Some(p) if a.profile_format == "text" => write_file(p, &text)?,
        Some(p) => convert(&text, p, &a.profile_format)?,
        None if a.bolt.is_none() => std::io::stdout().lock().write_all(&text)?,
        None => {}
    }
    if let Some(p) = &a.bolt {
        write_file(p, bin.bolt_profile(&samples, "cpu-clock").as_bytes())?;
    }
    if json_out {
        let hot: Vec<_> = profile
            .hottest()
            .iter()
            .take(a.top)
            .map(|f| json!({"function": f.name, "samples": f.total.round(), "share": f.total / profile.total()}))
            .collect();
        let doc = json!({
            "build_id": build_id,
            "binary": a.binary,
            "sources": sources,
            "coverage": cov,
            "functions": profile.functions.len(),
            "hottest": hot,
            "output": a.output,
            "bolt": a.bolt,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        report_text(&cov, &profile, &build_id, &a, &sources);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and merges the samples of every input and server. Also answers, when none are of the
/// build ID, which build IDs the inputs did have.
fn gather(a: &FdoArgs, build_id: &str) -> anyhow::Result<(Samples, String, Vec<String>)> {
    let mut all = Samples {
        build_id: build_id.to_string(),
        stacks: Vec::new(),
    };
    let mut elsewhere = Vec::new();
    let mut names = Vec::new();
    for input in &a.input {
        let bytes =
            std::fs::read(input).map_err(|e| usage(format!("--input {}: {e}", input.display())))?;
        let batch =
            baton_model::wire::decode_batch(&bytes, None, &Default::default(), 0).map_err(|e| {
                usage(format!(
                    "--input {}: not a pprof profile ({e}); write one with `baton record cpu \
                     --output FILE.pb.gz`",
                    input.display()
                ))
            })?;
        // CPU time when the file has it (Baton's pprof has samples and cpu), else CPU samples.
        let types: Vec<_> = std::iter::once(&batch.value_type)
            .chain(&batch.more_value_types)
            .collect();
        let Some(index) = types
            .iter()
            .position(|t| t.kind == "cpu")
            .or_else(|| types.iter().position(|t| t.kind == "samples"))
        else {
            return Err(usage(format!(
                "--input {}: a {} profile; FDO needs CPU samples",
                input.display(),
                batch.value_type.kind
            )));
        };
        let s = Samples::from_stacks(&types[index].unit, index as u8, &batch.samples, build_id);
        if s.stacks.is_empty() {
            elsewhere.extend(
                Samples::build_ids(&batch.samples)
                    .into_iter()
                    .take(3)
                    .map(|(b, m, _)| format!("{b} ({m})")),
            );
        }
        all.merge(&s);
        names.push(input.display().to_string());
    }
    let mut servers = a.server.clone();
    if a.input.is_empty() && servers.is_empty() {
        servers
            .push(std::env::var("BATON_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7070".into()));
    }
    for server in &servers {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("build_id", build_id)
            .append_pair("format", "samples")
            .append_pair("since", &a.since);
        for f in &a.filter {
            q.append_pair("filter", f);
        }
        let (status, body) = crate::query::get(server, &format!("/api/v1/fdo?{}", q.finish()))?;
        names.push(server.clone());
        match status {
            200 => {
                let s: Samples = serde_json::from_slice(&body)
                    .with_context(|| format!("decoding the samples from {server}"))?;
                all.merge(&s);
            }
            404 => {}
            _ => return Err(crate::query::answer_error(server, status, &body)),
        }
    }
    Ok((all, names.join(" + "), elsewhere))
}

fn report_text(cov: &Coverage, p: &SampleProfile, build_id: &str, a: &FdoArgs, sources: &str) {
    let pct = |v: f64| {
        if cov.samples > 0.0 {
            100.0 * v / cov.samples
        } else {
            0.0
        }
    };
    eprintln!(
        "build ID {build_id} ({}): {:.0} µs of CPU sampled in it, from {sources}",
        a.binary.display(),
        cov.samples
    );
    eprintln!(
        "  mapped to source        {:>12.0}  {:5.1}%",
        cov.mapped,
        pct(cov.mapped)
    );
    eprintln!(
        "  no line table           {:>12.0}  {:5.1}%{}",
        cov.no_line_table,
        pct(cov.no_line_table),
        if cov.binary_has_lines {
            ""
        } else {
            "  (the binary has no line tables: build with -gline-tables-only)"
        }
    );
    eprintln!(
        "  line 0 (no source line) {:>12.0}  {:5.1}%",
        cov.line_zero,
        pct(cov.line_zero)
    );
    if cov.no_start_line > 0.0 {
        eprintln!(
            "  no start line           {:>12.0}  {:5.1}%  (build with -fdebug-info-for-profiling)",
            cov.no_start_line,
            pct(cov.no_start_line)
        );
    }
    eprintln!(
        "  outside every function  {:>12.0}  {:5.1}%",
        cov.outside_functions,
        pct(cov.outside_functions)
    );
    if cov.leaf_elsewhere > 0.0 {
        eprintln!(
            "  (and {:.0} µs in other modules called from it, not counted)",
            cov.leaf_elsewhere
        );
    }
    let total = p.total();
    let hot: Vec<String> = p
        .hottest()
        .iter()
        .take(a.top)
        .map(|f| format!("{} {:.1}%", f.name, 100.0 * f.total / total.max(1.0)))
        .collect();
    if !hot.is_empty() {
        eprintln!("  hottest: {}", hot.join(", "));
    }
    if let Some(o) = &a.output {
        eprintln!(
            "wrote {} (LLVM sample profile, {}, {} functions): clang -fprofile-sample-use={}",
            o.display(),
            a.profile_format,
            p.functions.len(),
            o.display()
        );
    }
    if let Some(b) = &a.bolt {
        eprintln!(
            "wrote {} (BOLT profile, no LBR): llvm-bolt BINARY -o BINARY.bolt -data={}",
            b.display(),
            b.display()
        );
    }
}

fn write_file(p: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
}

/// The text profile converted by `llvm-profdata merge --sample`.
fn convert(text: &[u8], out: &Path, format: &str) -> anyhow::Result<()> {
    let tool = [
        "/usr/lib/llvm-16/bin/llvm-profdata",
        "llvm-profdata-16",
        "llvm-profdata",
    ]
    .into_iter()
    .find(|t| {
        std::process::Command::new(t)
            .args(["merge", "--help"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .ok_or_else(|| {
        anyhow::anyhow!(
            "llvm-profdata is not installed: write --profile-format text (clang reads it too)"
        )
    })?;
    let tmp = out.with_extension("baton-tmp.txt");
    write_file(&tmp, text)?;
    let st = std::process::Command::new(tool)
        .args(["merge", "--sample", &format!("--{format}")])
        .arg(&tmp)
        .arg("-o")
        .arg(out)
        .status();
    let _ = std::fs::remove_file(&tmp);
    match st {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => anyhow::bail!("{tool} merge --sample failed ({s})"),
        Err(e) => anyhow::bail!("{tool}: {e}"),
    }
}
