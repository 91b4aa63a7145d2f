//! The bpftrace process behind an ad-hoc profiler: starting it on the wrapped script, waiting
//! for its probes, reading its output on a thread, stopping it (SIGINT, then SIGKILL), and
//! what it costs, for the overhead guard.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use baton_config::adhoc::AdhocDef;
use baton_model::sync::lock;
use baton_model::ProfilerInfo;

use super::def::wrapped_script;
use super::parse::{merge_windows, parse_line, Shared};
use crate::profiler::{Drained, Profiler, ProfilerStats, StartOptions};
use crate::ProfilerError;

/// How long bpftrace may take to compile and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// A running ad-hoc profiler: bpftrace, and the threads reading its output.
pub struct AdhocProfiler {
    def: Arc<AdhocDef>,
    info: &'static ProfilerInfo,
    child: Option<Child>,
    shared: Arc<Mutex<Shared>>,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    targets: Vec<u32>,
    script_path: PathBuf,
    stopped: bool,
    /// When bpftrace was started: it has `ATTACH_TIMEOUT` to compile and attach.
    spawned: Instant,
}

/// What the bpftrace processes this process started have cost: live ones by pid (read from
/// `/proc` when asked), and the total of those that ended.
#[derive(Default)]
struct Costs {
    live: Vec<u32>,
    ended_cpu_s: f64,
    ended_bpf_ns: u64,
}

fn costs() -> &'static Mutex<Costs> {
    static C: OnceLock<Mutex<Costs>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// CPU seconds of a process (user + system), and the run time of the BPF programs it holds
/// (from `/proc/PID/fdinfo`, counted once per program; the kernel keeps it while
/// `BPF_ENABLE_STATS` is on).
fn cost_of(pid: u32) -> (f64, u64) {
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            let rest = st.rsplit_once(')')?.1.to_string();
            let f: Vec<f64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0.0))
                .collect();
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            Some((f.get(11)? + f.get(12)?) / if hz > 0.0 { hz } else { 100.0 })
        })
        .unwrap_or(0.0);
    let mut seen = std::collections::HashSet::new();
    let mut bpf = 0u64;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(ns)) = (field("prog_id:"), field("run_time_ns:")) {
                if seen.insert(id) {
                    bpf += ns;
                }
            }
        }
    }
    (cpu, bpf)
}

/// CPU seconds and BPF run time (ns) of every bpftrace this process started, live or ended:
/// what the overhead guard adds to Baton's own.
pub fn children_cost() -> (f64, u64) {
    let c = lock(costs());
    let (mut cpu, mut bpf) = (c.ended_cpu_s, c.ended_bpf_ns);
    for &pid in &c.live {
        let (a, b) = cost_of(pid);
        cpu += a;
        bpf += b;
    }
    (cpu, bpf)
}

/// Where bpftrace is: `$BATON_BPFTRACE`, else `bpftrace` on the PATH.
pub fn bpftrace_path() -> String {
    std::env::var("BATON_BPFTRACE").unwrap_or_else(|_| "bpftrace".into())
}

/// Starts `bpftrace -f json` on the wrapped script and waits until its probes are attached, or
/// fails with bpftrace's own message.
pub fn start(
    def: Arc<AdhocDef>,
    info: &'static ProfilerInfo,
    opts: &StartOptions,
) -> Result<Box<dyn Profiler>, ProfilerError> {
    if !crate::sys::has_profiling_privileges() {
        return Err(ProfilerError::Permission);
    }
    let dir = std::env::temp_dir().join(format!("baton-adhoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ProfilerError::Attach(format!("cannot write the script: {e}")))?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script_path = dir.join(format!("{}-{seq}.bt", def.name));
    std::fs::write(&script_path, wrapped_script(&def))
        .map_err(|e| ProfilerError::Attach(format!("cannot write the script: {e}")))?;
    let args: Vec<String> = match opts.options.get("args") {
        Some(a) => a.split_whitespace().map(str::to_string).collect(),
        None => def.args.clone(),
    };
    let mut cmd = Command::new(bpftrace_path());
    cmd.arg("-f")
        .arg("json")
        .arg(&script_path)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group (a Ctrl-C of `baton record` reaches Baton, which stops it), and it
    // dies with its parent, so a killed agent leaves no bpftrace and no probe behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        ProfilerError::Attach(format!(
            "cannot start {} (install Debian's bpftrace, or set BATON_BPFTRACE): {e}",
            bpftrace_path()
        ))
    })?;
    lock(costs()).live.push(child.id());
    let shared = Arc::new(Mutex::new(Shared::default()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let err_pipe = child.stderr.take();
    {
        let stderr = stderr.clone();
        std::thread::Builder::new()
            .name("baton-bt-err".into())
            .spawn(move || {
                if let Some(mut e) = err_pipe {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = e.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut s = lock(&stderr);
                        if s.len() < 64 << 10 {
                            s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
            })
            .map_err(|e| ProfilerError::Thread(e.to_string()))?;
    }
    let out = child
        .stdout
        .take()
        .ok_or_else(|| ProfilerError::Attach("bpftrace's output could not be read".into()))?;
    let reader = {
        let shared = shared.clone();
        let def = def.clone();
        let targets = opts.targets.clone().unwrap_or_default();
        let pgid = child.id() as i32;
        std::thread::Builder::new()
            .name("baton-bt-read".into())
            .spawn(move || read_output(out, &def, &targets, &shared, pgid))
            .map_err(|e| ProfilerError::Thread(e.to_string()))?
    };
    let mut p = AdhocProfiler {
        def,
        info,
        child: Some(child),
        shared,
        stderr,
        reader: Some(reader),
        targets: opts.targets.clone().unwrap_or_default(),
        script_path,
        stopped: false,
        spawned: Instant::now(),
    };
    if opts.attach_in_background {
        // The first drain reports a failed compile or attach.
        return Ok(Box::new(p));
    }
    loop {
        if p.attach_state()? {
            return Ok(Box::new(p));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl AdhocProfiler {
    /// Whether bpftrace has attached its probes; an error (and bpftrace stopped) once it has
    /// failed to compile or attach, or has taken longer than `ATTACH_TIMEOUT`.
    fn attach_state(&mut self) -> Result<bool, ProfilerError> {
        let (attached, eof) = {
            let s = lock(&self.shared);
            (s.attached.is_some(), s.eof)
        };
        if attached {
            return Ok(true);
        }
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if eof || exited.is_some() {
            self.stop_child();
            return Err(ProfilerError::Attach(format!(
                "bpftrace failed on {}: {}",
                self.def.file.display(),
                self.bpftrace_message()
            )));
        }
        if self.spawned.elapsed() > ATTACH_TIMEOUT {
            self.stop_child();
            return Err(ProfilerError::Attach(format!(
                "bpftrace did not attach within {} s",
                ATTACH_TIMEOUT.as_secs()
            )));
        }
        Ok(false)
    }

    /// bpftrace's error lines, without its RLIMIT_MEMLOCK warning (which is harmless here),
    /// and with the script path that of the tree.
    fn bpftrace_message(&self) -> String {
        let text = lock(&self.stderr).clone();
        let tmp = self.script_path.display().to_string();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.contains("RLIMIT_MEMLOCK"))
            .map(|l| l.replace(&tmp, &self.def.file.display().to_string()))
            .collect();
        let msg = lines.join("\n").trim().to_string();
        if msg.is_empty() {
            "it exited with no message".into()
        } else {
            msg
        }
    }

    /// SIGINT (bpftrace prints its END), then SIGKILL after 5 s; reaps it and the reader.
    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as i32;
        {
            // Its cost so far stays counted once it is gone.
            let (cpu, bpf) = cost_of(child.id());
            let mut c = lock(costs());
            c.live.retain(|&p| p != child.id());
            c.ended_cpu_s += cpu;
            c.ended_bpf_ns += bpf;
        }
        if child.try_wait().ok().flatten().is_none() {
            unsafe {
                libc::kill(-pgid, libc::SIGINT);
            }
            let t0 = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(5) {
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = std::fs::remove_file(&self.script_path);
    }
}

impl Drop for AdhocProfiler {
    fn drop(&mut self) {
        self.stop_child();
    }
}

impl Profiler for AdhocProfiler {
    fn info(&self) -> &'static ProfilerInfo {
        self.info
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        if lock(&self.shared).attached.is_none() {
            if self.stopped {
                return Err(ProfilerError::Attach(format!(
                    "the run ended {:.1} s after bpftrace started, before it had compiled and attached {}",
                    self.spawned.elapsed().as_secs_f64(),
                    self.def.file.display()
                )));
            }
            // Started in the background and still compiling: nothing yet.
            if !self.attach_state()? {
                return Ok(Drained::default());
            }
        }
        let (out, error, eof) = {
            let mut s = lock(&self.shared);
            (std::mem::take(&mut s.ready), s.error.clone(), s.eof)
        };
        if let Some(e) = error {
            self.stop_child();
            return Err(ProfilerError::Attach(e));
        }
        if eof && !self.stopped {
            // It ended by itself: its own `exit()`, or an error after attaching.
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.wait().ok())
                .map(|s| s.success());
            if status == Some(false) {
                let msg = self.bpftrace_message();
                self.stop_child();
                return Err(ProfilerError::Attach(format!("bpftrace failed: {msg}")));
            }
        }
        Ok(merge_windows(out))
    }

    fn finish(&mut self) {
        self.stopped = true;
        self.stop_child();
        // What END printed after the last complete window.
        let mut s = lock(&self.shared);
        let pending = std::mem::take(&mut s.pending);
        s.ready.events.extend(pending.events);
        s.ready.histograms.extend(pending.histograms);
    }

    fn stats(&self) -> ProfilerStats {
        let s = lock(&self.shared);
        ProfilerStats {
            samples: s.windows,
            lost_map_full: s.lost_events,
            ..Default::default()
        }
    }

    fn target_pids(&self) -> Vec<u32> {
        self.targets.clone()
    }

    fn event_name(&self) -> String {
        format!("bpftrace {}", self.def.file.display())
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(2))
    }
}

/// Reads bpftrace's JSON lines until it closes its output.
fn read_output(
    out: std::process::ChildStdout,
    def: &AdhocDef,
    targets: &[u32],
    shared: &Mutex<Shared>,
    pgid: i32,
) {
    let mut r = BufReader::with_capacity(1 << 16, out);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut s = lock(shared);
                s.bytes += n as u64;
                if s.bytes > def.max_output_bytes && s.error.is_none() {
                    s.error = Some(format!(
                        "output ceiling: the script printed more than {} bytes (max_output); it was stopped",
                        def.max_output_bytes
                    ));
                    drop(s);
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                    continue;
                }
                if s.error.is_some() {
                    continue;
                }
                if let Err(e) = parse_line(line.trim_end(), def, targets, &mut s) {
                    s.error = Some(e);
                    drop(s);
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                }
            }
        }
    }
    lock(shared).eof = true;
}

/// Checks a script with bpftrace itself: `--emit-elf` parses, type-checks and compiles it
/// (bpftrace 0.17 has no `--dry-run`). `Ok(Some(why))` when bpftrace cannot be run here.
pub fn dry_run(def: &AdhocDef) -> Result<Option<String>, String> {
    if !crate::sys::has_profiling_privileges() {
        return Ok(Some("not root: bpftrace needs root even to compile".into()));
    }
    let dir = std::env::temp_dir().join(format!("baton-adhoc-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("{}.bt", def.name));
    std::fs::write(&path, wrapped_script(def)).map_err(|e| e.to_string())?;
    // bpftrace 0.17 has no --dry-run; --emit-elf parses, checks and compiles every probe
    // without loading or attaching anything.
    let elf = dir.join(format!("{}.o", def.name));
    let out = Command::new(bpftrace_path())
        .arg("--emit-elf")
        .arg(&elf)
        .arg(&path)
        .args(&def.args)
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&elf);
    match out {
        Err(e) => Ok(Some(format!("{} cannot run: {e}", bpftrace_path()))),
        Ok(o) if o.status.success() => Ok(None),
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stderr);
            let msg: Vec<String> = text
                .lines()
                .filter(|l| !l.contains("RLIMIT_MEMLOCK"))
                .map(|l| l.replace(&path.display().to_string(), &def.file.display().to_string()))
                .collect();
            Err(msg.join("\n").trim().to_string())
        }
    }
}
