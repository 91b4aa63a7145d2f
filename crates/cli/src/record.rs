//! `baton record`: profile local processes for a while, with no server.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_agent::{Collector, CollectorOptions};
use baton_model::export::{self, Format};
use baton_model::{parse_duration, Profile};
use baton_profilers::cpu::MAX_FREQUENCY_HZ;
use baton_profilers::{ProfilerError, StartOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::common::{print_top, usage};
use crate::RecordArgs;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub(crate) fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub(crate) fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT/SIGTERM end the run, keeping what was gathered.
pub(crate) fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// A child that is forked but blocked before `exec` until profiling is attached, so the profile
/// starts at the command's first instruction. (std's `Command::spawn` waits for the exec, so the
/// fork is done by hand.)
struct GatedChild {
    pid: libc::pid_t,
    gate: Option<OwnedFd>,
    /// Read end of a pipe whose write end the child holds close-on-exec: it reads EOF once the
    /// child has exec'd (or died).
    execd: Option<OwnedFd>,
    status: Option<i32>,
}

/// Finds `prog` the way a shell would: a path as is, a bare name along `$PATH`.
fn resolve_program(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.is_file()
            && p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| executable(p))
}

impl GatedChild {
    fn spawn(argv: &[String]) -> anyhow::Result<GatedChild> {
        let prog = resolve_program(&argv[0])
            .ok_or_else(|| usage(format!("command not found or not executable: {}", argv[0])))?;
        let c_prog = CString::new(prog.as_os_str().as_bytes())
            .map_err(|_| usage("the command contains a NUL byte"))?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| usage("an argument contains a NUL byte"))?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());

        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("creating the start gate");
        }
        // SAFETY: pipe2 returned two new descriptors that we now own.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut efds = [0i32; 2];
        // SAFETY: `efds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(efds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("creating the exec pipe");
        }
        // SAFETY: pipe2 returned two new descriptors that we now own.
        let (exec_rd, exec_wr) =
            unsafe { (OwnedFd::from_raw_fd(efds[0]), OwnedFd::from_raw_fd(efds[1])) };
        // SAFETY: after fork the child only calls async-signal-safe functions (close, read,
        // execv, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: see above; this branch never returns.
            unsafe {
                libc::close(wr.as_raw_fd());
                libc::close(exec_rd.as_raw_fd());
                let mut b = 0u8;
                let n = libc::read(rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                if n != 1 {
                    // The parent gave up before profiling started: do not run the command.
                    libc::_exit(126);
                }
                libc::execv(c_prog.as_ptr(), c_argv.as_ptr());
                libc::_exit(127);
            }
        }
        drop(rd);
        drop(exec_wr);
        Ok(GatedChild {
            pid,
            gate: Some(wr),
            execd: Some(exec_rd),
            status: None,
        })
    }

    fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits up to `timeout` for the released child to exec (or die), and then for its
    /// executable to be mapped: the close-on-exec descriptors close before the kernel maps the
    /// new program.
    fn wait_exec(&mut self, timeout: Duration) {
        let Some(fd) = self.execd.take() else {
            return;
        };
        let t0 = Instant::now();
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor we own, with a valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
        let Ok(exe) = std::fs::read_link(format!("/proc/{}/exe", self.pid)) else {
            return;
        };
        let exe = exe.to_string_lossy().into_owned();
        while t0.elapsed() < timeout {
            match std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) {
                Ok(maps) if !maps.lines().any(|l| l.ends_with(exe.as_str())) => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                _ => break,
            }
        }
    }

    fn release(&mut self) {
        if let Some(gate) = self.gate.take() {
            // SAFETY: writing one byte from a valid buffer to a descriptor we own.
            unsafe { libc::write(gate.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }
    }

    /// The exit status once the child has exited (reaping it), else None.
    fn try_wait(&mut self) -> Option<i32> {
        if self.status.is_none() {
            let mut st = 0;
            // SAFETY: waiting on our own child with a valid status pointer.
            if unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) } == self.pid {
                self.status = Some(st);
            }
        }
        self.status
    }

    fn kill(&mut self) {
        self.gate.take();
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

fn describe_status(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exit code {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("status {st}")
    }
}

/// `record adhoc --script FILE`: validates the script as a one-file tree and registers it.
fn register_script(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
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
        (Some(path), "adhoc") => Some(register_script(path)?),
        (Some(_), other) => {
            return Err(usage(format!(
                "--script goes with the profiler `adhoc` (baton record adhoc --script FILE.bt), not {other}"
            )))
        }
        (None, "adhoc") => {
            return Err(usage(
                "baton record adhoc needs --script FILE.bt: a bpftrace script with a `// baton:` header",
            ))
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

    install_stop_handler();
    let mut child = if a.command.is_empty() {
        None
    } else {
        Some(GatedChild::spawn(&a.command)?)
    };
    let targets = if a.all || (adhoc.is_some() && modes == 0) {
        None
    } else if let Some(c) = &child {
        Some(vec![c.id()])
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
            pending_exec: a.command.first().and_then(|c| which(c)),
            attach_in_background: false,
        },
        host: baton_agent::hostname(),
        jvm_perf_maps: !a.no_jvm_perf_map,
        defer_discovery: child.is_some(),
        defer_symbols: false,
    };
    let mut collector = match Collector::start(&opts) {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = &mut child {
                c.kill();
            }
            return Err(e.into());
        }
    };
    if let Some(c) = &mut child {
        c.release();
        // Look at the command's own mappings as soon as it has exec'd (until then it is this
        // binary, forked), so its unwinding plan is right from its first samples.
        c.wait_exec(Duration::from_millis(500));
        collector.discover();
    }

    let started = Instant::now();
    let bar = match duration {
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
    let mut ended_early = None;
    let mut child_status = None;
    loop {
        // Look often at first, so the libraries a new command's loader maps are seen before a
        // short command exits.
        let first_second = started.elapsed() < Duration::from_secs(1);
        std::thread::sleep(Duration::from_millis(if first_second { 50 } else { 200 }));
        collector.discover();
        let elapsed = started.elapsed();
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(format!("{} samples", collector.stats().samples));
        if STOP.load(Ordering::SeqCst) {
            ended_early = Some("interrupted");
            break;
        }
        if duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        if let Some(c) = &mut child {
            if let Some(st) = c.try_wait() {
                child_status = Some(st);
                // Children it forked may still run; stop once they are gone too.
                if collector.live_targets().is_empty() {
                    break;
                }
            }
        } else if !a.pid.is_empty() && collector.live_targets().is_empty() {
            ended_early = Some("every target process exited");
            break;
        }
    }
    collector.finish();
    let report = collector.collect(None)?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
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
    print_histograms(&report.batch.histograms);
    if stats.dwarf_copied > 0 {
        eprintln!(
            "user stacks without frame pointers: {} unwound from DWARF CFI ({} to the outermost \
             frame, {} fell back to frame pointers); unwind tables: {:.2} MiB at most",
            stats.unwind.stacks,
            stats.unwind.complete,
            stats.dwarf_ring_full + stats.dwarf_no_regs,
            stats.unwind.peak_unwind_bytes as f64 / 1048576.0,
        );
    }
    if let Some(why) = ended_early {
        eprintln!("ended early: {why}; the profile holds the data gathered so far");
    }
    if let Some(st) = child_status {
        eprintln!("command ended: {}", describe_status(st));
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

/// The file `execvp` would run for `cmd`: itself when it has a slash, else the first match on
/// `PATH`.
fn which(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        return std::fs::canonicalize(cmd).ok();
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
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
