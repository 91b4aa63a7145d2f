//! `baton record`: profile local processes for a while, with no server.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_agent::CollectorOptions;
use baton_model::export::{self, Format};
use baton_model::{parse_duration, Profile};
use baton_profilers::cpu::MAX_FREQUENCY_HZ;
use baton_profilers::{ProfilerError, StartOptions};
use baton_runtime::record::{record, Progress, RecordOptions, Recording};
use indicatif::{ProgressBar, ProgressStyle};

use crate::common::{print_top, usage};
use crate::RecordArgs;

/// The progress bar: up to the duration, or a spinner until the command exits.
struct Bar {
    duration: Option<Duration>,
    bar: Option<ProgressBar>,
}

impl Progress for Bar {
    fn started(&mut self) {
        let b = match self.duration {
            Some(d) => {
                let b = ProgressBar::new(d.as_millis() as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} recording {bar:30} {elapsed}/{duration} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} recording until the command exits {elapsed} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b
            }
        };
        self.bar = Some(b);
    }

    fn tick(&mut self, elapsed: Duration, samples: u64) {
        if let Some(b) = &self.bar {
            b.set_position(elapsed.as_millis() as u64);
            b.set_message(format!("{samples} samples"));
        }
    }
}

/// `record adhoc --script FILE` or `-e PROGRAM`: validates the script as a one-file tree and
/// registers it. A script without a `// baton:` header gets one inferred from its maps, and
/// what was inferred is said.
fn register_script(path: &Path, program: Option<&str>) -> anyhow::Result<String> {
    let mut text = match program {
        Some(p) => p.to_string(),
        None => std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?,
    };
    if !baton_config::infer::has_header(&text) {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("oneliner");
        let name = baton_config::infer::key_name(stem);
        let owner = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "record".into());
        let owner: String = owner
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        let (with_header, notes) = baton_config::infer::infer_header(&text, &name, &owner)
            .map_err(|e| usage(format!("{}: {e}", path.display())))?;
        eprintln!("no `// baton:` header: map kinds inferred from the script:");
        for n in notes {
            eprintln!("  {n}");
        }
        text = with_header;
    }
    let file = baton_config::SourceFile {
        path: path.to_path_buf(),
        text,
    };
    let cfg =
        baton_config::load(&[file], &baton_profilers::registry::builtin_names()).map_err(|e| {
            match e {
                baton_config::ConfigError::Invalid(problems) => usage(
                    problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                other => usage(other.to_string()),
            }
        })?;
    let name = cfg
        .adhoc
        .keys()
        .next()
        .cloned()
        .ok_or_else(|| usage(format!("{} defines no ad-hoc profiler", path.display())))?;
    baton_profilers::registry::set_adhoc(cfg.adhoc.values());
    Ok(name)
}

pub fn run(a: RecordArgs) -> anyhow::Result<ExitCode> {
    let adhoc = match (&a.script, a.profiler.as_str()) {
        (Some(path), "adhoc") => Some(register_script(path, None)?),
        (None, "adhoc") if a.program.is_some() => Some(register_script(
            Path::new("oneliner.bt"),
            a.program.as_deref(),
        )?),
        (Some(_), other) => {
            return Err(usage(format!(
                "--script goes with the profiler `adhoc` (baton record adhoc --script FILE.bt), not {other}"
            )))
        }
        (None, "adhoc") => {
            return Err(usage(
                "baton record adhoc needs --script FILE.bt or -e 'PROGRAM': a bpftrace script",
            ))
        }
        (None, other) if a.program.is_some() => {
            return Err(usage(format!(
                "-e goes with the profiler `adhoc` (baton record adhoc -e 'PROGRAM'), not {other}"
            )))
        }
        (None, _) => None,
    };
    let profiler = adhoc.clone().unwrap_or_else(|| a.profiler.clone());
    let info = baton_profilers::registry::find(&profiler)?.info;
    let mut options = crate::common::parse_options(&a.opt)?;
    if let Some(d) = &a.min_block {
        parse_duration(d).map_err(|e| usage(format!("--min-block: {e}")))?;
        options.insert("min_block".into(), d.clone());
    }
    info.check_options(&options).map_err(usage)?;
    let costly_options = options.clone();
    if let Some(v) = &a.value {
        info.value_index(v).map_err(usage)?;
    }
    let modes =
        usize::from(!a.pid.is_empty()) + usize::from(a.all) + usize::from(!a.command.is_empty());
    if modes != 1 && !(adhoc.is_some() && modes == 0) {
        return Err(usage(
            "say what to profile, once: --pid PID[,PID…], --all, or -- CMD ARGS…",
        ));
    }
    let duration = match &a.duration {
        Some(d) => Some(parse_duration(d).map_err(|e| usage(format!("--duration: {e}")))?),
        None if a.command.is_empty() => Some(Duration::from_secs(10)),
        None => None,
    };
    if duration == Some(Duration::ZERO) {
        return Err(usage("--duration must be more than zero"));
    }
    if a.frequency == 0 || a.frequency > MAX_FREQUENCY_HZ {
        return Err(ProfilerError::BadFrequency(a.frequency).into());
    }
    let format = match (&a.format, &a.output) {
        (Some(f), _) => Some(Format::parse(f).ok_or_else(|| {
            usage(format!(
                "unknown --format {f:?}; use one of {}",
                Format::NAMES
            ))
        })?),
        (None, Some(path)) => Some(Format::from_path(path).ok_or_else(|| {
            usage(format!(
                "cannot tell the format of {} from its extension; add --format ({})",
                path.display(),
                Format::NAMES
            ))
        })?),
        (None, None) => None,
    };
    if !baton_profilers::sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission.into());
    }
    for &p in &a.pid {
        if !baton_profilers::sys::process_alive(p) {
            return Err(ProfilerError::NoSuchProcess(p).into());
        }
    }

    let targets = if a.all || (adhoc.is_some() && modes == 0) {
        None
    } else {
        Some(a.pid.clone())
    };
    let opts = CollectorOptions {
        profiler: info.name.into(),
        start: StartOptions {
            frequency_hz: a.frequency,
            targets,
            follow_forks: true,
            force_cpu_clock: a.cpu_clock,
            dwarf: a.unwind == crate::UnwindMode::Auto,
            options,
            pending_exec: None,
            attach_in_background: false,
        },
        host: baton_agent::hostname(),
        jvm_perf_maps: !a.no_jvm_perf_map,
        defer_discovery: false,
        defer_symbols: false,
        pods: crate::common::pods(a.kubelet.as_deref())?,
    };
    let mut bar = Bar {
        duration,
        bar: None,
    };
    let Recording {
        collector,
        report,
        elapsed,
        ended_early,
        command_status,
    } = record(
        RecordOptions {
            collector: opts,
            command: a.command.clone(),
            duration,
        },
        &mut bar,
    )?;
    if let Some(b) = &bar.bar {
        b.finish_and_clear();
    }
    let stats = report.stats;
    let processes: std::collections::HashSet<&str> = report
        .batch
        .samples
        .iter()
        .filter_map(|s| s.labels.get("pid").map(String::as_str))
        .collect();
    if collector.frequency_hz() > 0 {
        eprintln!(
            "recorded {:.1}s of {} at {} Hz on {}: {} samples from {} processes \
             (lost {}, kernel-stack failures {}, user-stack failures {})",
            elapsed.as_secs_f64(),
            info.name,
            collector.frequency_hz(),
            collector.event_name(),
            report.sample_count,
            processes.len(),
            stats.lost(),
            stats.kernel_stack_failed,
            stats.user_stack_failed,
        );
    } else {
        let totals: Vec<String> = report
            .batch
            .value_types()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let sum: f64 = report
                    .batch
                    .samples
                    .iter()
                    .filter(|s| usize::from(s.value_index) == i)
                    .map(|s| s.weighted())
                    .sum();
                format!("{} {}", crate::common::format_value(sum, &t.unit), t.kind)
            })
            .collect();
        eprintln!(
            "recorded {:.1}s of {} on {}: {} events from {} processes: {} \
             (lost {}, kernel-stack failures {}, user-stack failures {})",
            elapsed.as_secs_f64(),
            info.name,
            collector.event_name(),
            report.sample_count,
            processes.len(),
            totals.join(", "),
            stats.lost(),
            stats.kernel_stack_failed,
            stats.user_stack_failed,
        );
    }
    if stats.traps > 0 {
        // What the probes cost the targets: one trap per hit.
        match info.costly_mode(&costly_options) {
            Some(m) => eprintln!(
                "{}={}: {} calls trapped, about {:.2} s of the targets' time at {:.1} µs each \
                 (bench/malloc.sh measures it)",
                m.option,
                m.value,
                stats.traps,
                stats.traps as f64 * m.per_call_ns as f64 / 1e9,
                m.per_call_ns as f64 / 1e3
            ),
            None => eprintln!("{} probe hits trapped in the targets", stats.traps),
        }
    }
    if stats.rate_limited > 0 {
        eprintln!(
            "{} events past the rate limit were left out; the ones kept past it are weighted to \
             stand for them",
            stats.rate_limited
        );
    }
    let c = stats.context;
    if c.processes > 0 || c.read > 0 || c.failed > 0 {
        eprintln!(
            "thread context: {} processes publish it; {} samples or events read it ({} reads \
             failed); {} labels cut to {} bytes, {} dropped as invalid, {} over the cap of {} \
             values per key and window, {} rows lost theirs (evicted before the drain), {} \
             processes not read (their pointer's offset varies by thread)",
            c.processes,
            c.read,
            c.failed,
            c.cut,
            baton_profilers::threadctx::MAX_VALUE_BYTES,
            c.invalid,
            c.over_cap,
            baton_profilers::threadctx::DEFAULT_VALUES_PER_KEY,
            c.missing,
            c.offset_varies,
        );
    }
    print_histograms(&report.batch.histograms);
    // Always said where DWARF unwinding is on, so "none copied" reads as 0, not as silence.
    if stats.dwarf_copied > 0 || a.unwind == crate::UnwindMode::Auto {
        eprintln!(
            "user stacks without frame pointers: {} unwound from DWARF CFI ({} to the outermost \
             frame, {} fell back to frame pointers); unwind tables: {:.2} MiB at most",
            stats.unwind.stacks,
            stats.unwind.complete,
            stats.dwarf_ring_full + stats.dwarf_no_regs,
            stats.unwind.peak_unwind_bytes as f64 / 1048576.0,
        );
    }
    let interp = baton_profilers::interp::stats();
    if interp.stacks > 0 {
        eprintln!(
            "interpreter frames: {} Python frames merged into {} stacks ({} stacks left native: \
             their frames could not be read; {} deeper than {} frames, cut at the root)",
            interp.frames,
            interp.stacks,
            interp.failed,
            interp.truncated,
            baton_profilers::interp::MAX_FRAMES,
        );
    }
    for f in baton_profilers::interp::fallbacks() {
        eprintln!(
            "pid {} ({}): Python frames left out, native frames only: {}{}",
            f.pid,
            f.comm,
            f.reason,
            if f.samples > 0 {
                format!(" ({} stacks)", f.samples)
            } else {
                String::new()
            }
        );
    }
    if let Some(why) = ended_early {
        eprintln!("ended early: {why}; the profile holds the data gathered so far");
    }
    if let Some(st) = command_status {
        eprintln!("command ended: {st}");
    }

    let mut profile = Profile::new(report.batch.value_type.clone());
    profile.more_value_types = report.batch.more_value_types.clone();
    profile.period_ns = (collector.period_ns() > 0).then(|| collector.period_ns());
    profile.event = Some(collector.event_name().to_string());
    profile.start_unix_ns = (report.batch.ts_ms - elapsed.as_millis() as i64) * 1_000_000;
    profile.duration_ns = elapsed.as_nanos() as i64;
    profile.samples = report.batch.samples;
    drop(collector);

    if profile.samples.is_empty() {
        eprintln!("no samples: the targets did nothing this profiler measures while recording");
    }
    // pprof carries every value type; the other outputs show one.
    let full = profile.clone();
    let profile = profile.select(a.value.as_deref()).map_err(usage)?;
    let histograms = report.batch.histograms;
    match (&a.output, format) {
        (Some(path), Some(f)) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut w = BufWriter::new(file);
            write_output(&full, &profile, &histograms, f, &mut w)?;
            w.flush()?;
            print_top(&profile.top_functions(), a.top);
            eprintln!("wrote {} ({})", path.display(), f.name());
        }
        (None, Some(f)) => {
            if f == Format::Pprof && std::io::stdout().is_terminal() {
                return Err(usage("pprof is binary; write it with --output FILE.pb.gz"));
            }
            let mut out = std::io::stdout().lock();
            write_output(&full, &profile, &histograms, f, &mut out)?;
            out.flush()?;
        }
        _ => print_top(&profile.top_functions(), a.top),
    }
    Ok(ExitCode::SUCCESS)
}

/// pprof gets every value type; the other formats the selected one. JSON also carries the
/// histograms.
fn write_output(
    full: &Profile,
    selected: &Profile,
    histograms: &[baton_model::Histogram],
    f: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match f {
        Format::Pprof => export::write(full, f, out)?,
        Format::Json if !histograms.is_empty() => {
            let mut buf = Vec::new();
            export::write(selected, f, &mut buf)?;
            let mut doc: serde_json::Value = serde_json::from_slice(&buf)?;
            doc["histograms"] = serde_json::to_value(histograms)?;
            serde_json::to_writer(&mut *out, &doc)?;
        }
        _ => export::write(selected, f, out)?,
    }
    Ok(())
}

/// The histograms as a table, most values first (at most 10 rows; `--format json` has them
/// all, with their buckets). One histogram is drawn in full.
fn print_histograms(hs: &[baton_model::Histogram]) {
    if hs.is_empty() {
        return;
    }
    let mut rows: Vec<&baton_model::Histogram> = hs.iter().collect();
    rows.sort_by(|a, b| b.total().total_cmp(&a.total()));
    if rows.len() == 1 {
        let h = rows[0];
        eprintln!(
            "{} of {} (pid {}):\n{}",
            h.name,
            if h.key.is_empty() { "all" } else { &h.key },
            h.labels.get("pid").map(String::as_str).unwrap_or("?"),
            h.render()
        );
        return;
    }
    let unit = |v: Option<u64>, u: &str| match v {
        Some(v) => crate::common::format_value(v as f64, u),
        None => "-".into(),
    };
    eprintln!(
        "{:<16} {:<20} {:>8} {:>10} {:>10} {:>10}",
        "HISTOGRAM", "OF", "COUNT", "P50", "P90", "P99"
    );
    for h in rows.iter().take(10) {
        eprintln!(
            "{:<16} {:<20} {:>8} {:>10} {:>10} {:>10}",
            h.name,
            if h.key.is_empty() { "all" } else { &h.key },
            h.total(),
            unit(h.quantile(0.5), &h.unit),
            unit(h.quantile(0.9), &h.unit),
            unit(h.quantile(0.99), &h.unit),
        );
    }
    if rows.len() > 10 {
        eprintln!(
            "… and {} more (--format json has them all)",
            rows.len() - 10
        );
    }
}
