//! Ad-hoc profilers: a bpftrace script from the config tree, run as `bpftrace -f json`, whose
//! printed maps become the same events and histograms the built-in profilers hand back.
//!
//! Baton appends two probes to the script: `interval:s:1` prints and clears every declared map
//! and then prints a window marker, and `END` does the same once more (so a stop loses nothing)
//! and clears the scratch maps. A reader thread parses bpftrace's JSON lines; a window is
//! complete at its marker. bpftrace runs in its own process group with `PR_SET_PDEATHSIG`, so it
//! dies with the agent, and is stopped with SIGINT (its END runs), then SIGKILL.

#[cfg(test)]
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use baton_config::adhoc::{AdhocDef, AdhocMap, MapKey, MapKind};
use baton_model::{Claim, CostClass, Frame, FrameKind, OptionInfo, ProfilerInfo, ValueInfo};

use crate::profiler::{Drained, Event, Profiler, ProfilerStats, RawHistogram, StartOptions};
use crate::ProfilerError;

/// What marks the end of one print of every map.
const MARKER: &str = "baton-window-end";
/// How long bpftrace may take to compile and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// The options every ad-hoc profiler takes.
static OPTIONS: &[OptionInfo] = &[OptionInfo {
    name: "args",
    default: "",
    help:
        "positional parameters $1, $2… of the script, space-separated (default: the header's args)",
}];

/// Interns a string for the `'static` declarations the registry hands out. Each distinct
/// string is leaked once; a tree's names and units are few.
fn intern(s: &str) -> &'static str {
    static SEEN: OnceLock<Mutex<std::collections::HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(s) = seen.get(s) {
        return s;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    seen.insert(leaked);
    leaked
}

/// The registry declaration of an ad-hoc profiler, built from its header. Leaked: call once per
/// distinct definition (the registry keeps them by content).
pub fn info_of(def: &AdhocDef) -> &'static ProfilerInfo {
    let claims: Vec<Claim> = def
        .resources
        .iter()
        .map(|r| Claim {
            resource: intern(&r.name),
            shared: r.shared,
        })
        .collect();
    let values: Vec<ValueInfo> = def
        .value_maps()
        .map(|m| ValueInfo {
            kind: intern(&m.value),
            unit: intern(&m.unit),
            help: intern(&format!(
                "@{} ({})",
                m.name,
                if m.kind == MapKind::Series {
                    "a scalar, one point per window"
                } else {
                    "per stack"
                }
            )),
        })
        .collect();
    let histograms: Vec<&'static str> = def
        .maps
        .iter()
        .filter(|m| m.kind == MapKind::Histogram)
        .map(|m| intern(&m.name))
        .collect();
    let mut labels: Vec<&'static str> = Vec::new();
    for m in &def.maps {
        for k in &m.keys {
            if let MapKey::Label(l) = k {
                let l = intern(l);
                if !labels.contains(&l) {
                    labels.push(l);
                }
            }
        }
    }
    let values = if values.is_empty() {
        // Histograms only: the stacks side still needs a value type to exist.
        vec![ValueInfo {
            kind: "events",
            unit: "count",
            help: "unused: this script stores histograms only",
        }]
    } else {
        values
    };
    Box::leak(Box::new(ProfilerInfo {
        name: intern(&def.name),
        description: intern(&format!(
            "{} (bpftrace script {}, owner {})",
            def.description,
            def.file.display(),
            def.owner
        )),
        claims: Box::leak(claims.into_boxed_slice()),
        values: Box::leak(values.into_boxed_slice()),
        histograms: Box::leak(histograms.into_boxed_slice()),
        labels: Box::leak(labels.into_boxed_slice()),
        default_frequency: 0,
        max_frequency: 0,
        default_rate:
            "what the script does (ad-hoc bpftrace), bounded by its max_duration and max_output",
        cost: CostClass::High,
        options: OPTIONS,
    }))
}

/// The script bpftrace runs: the user's, plus the printing probes.
pub fn wrapped_script(def: &AdhocDef) -> String {
    let mut print = String::new();
    for m in def.maps.iter().filter(|m| m.kind != MapKind::Scratch) {
        print.push_str(&format!(" print(@{0}); clear(@{0});", m.name));
    }
    print.push_str(&format!(" printf(\"{MARKER}\\n\");"));
    let mut scratch = String::new();
    for m in def.maps.iter().filter(|m| m.kind == MapKind::Scratch) {
        scratch.push_str(&format!(" clear(@{});", m.name));
    }
    format!(
        "{}\n// Added by Baton: print every window, and once more at the end.\ninterval:s:1 {{{print} }}\nEND {{{print}{scratch} }}\n",
        def.script
    )
}

/// What the reader thread shares with the profiler.
#[derive(Default)]
struct Shared {
    /// Windows complete so far.
    ready: Drained,
    /// The window being printed.
    pending: Drained,
    /// Output bytes read.
    bytes: u64,
    windows: u64,
    attached: Option<u64>,
    lost_events: u64,
    /// Why the output cannot be stored, or the output ceiling was passed.
    error: Option<String>,
    /// The process closed its output (exited, or killed).
    eof: bool,
}

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

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    let c = costs().lock().unwrap_or_else(|p| p.into_inner());
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
    costs()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .live
        .push(child.id());
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
                        let mut s = stderr.lock().unwrap_or_else(|p| p.into_inner());
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
        let text = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
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
            let mut c = costs().lock().unwrap_or_else(|p| p.into_inner());
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

/// One row per (thread, stack, labels) and one histogram per (name, key, process) over the
/// windows of one drain: bpftrace prints every second, a drain may span several prints.
fn merge_windows(d: Drained) -> Drained {
    let mut out = Drained::default();
    let mut rows: std::collections::HashMap<String, usize> = Default::default();
    for e in d.events {
        let key = format!(
            "{}\0{}\0{}\0{:?}\0{:?}",
            e.pid,
            e.tid,
            e.comm,
            e.labels,
            e.frames
                .iter()
                .map(|f| (f.kind.as_u8(), f.address))
                .collect::<Vec<_>>()
        );
        match rows.get(&key) {
            Some(&i) => {
                let r: &mut Event = &mut out.events[i];
                r.count += e.count;
                for (a, b) in r.values.iter_mut().zip(&e.values) {
                    *a += b;
                }
            }
            None => {
                rows.insert(key, out.events.len());
                out.events.push(e);
            }
        }
    }
    let mut hists: std::collections::HashMap<(String, String, u32, String), usize> =
        Default::default();
    for h in d.histograms {
        let key = (h.name.to_string(), h.key.clone(), h.pid, h.comm.clone());
        match hists.get(&key) {
            Some(&i) => {
                let m = &mut out.histograms[i];
                m.le_buckets.extend(h.le_buckets);
            }
            None => {
                hists.insert(key, out.histograms.len());
                out.histograms.push(h);
            }
        }
    }
    // Buckets of one bound added together, in order.
    for h in &mut out.histograms {
        h.le_buckets.sort_by_key(|b| b.0);
        h.le_buckets.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 += b.1;
                true
            } else {
                false
            }
        });
    }
    out
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

/// One line of `bpftrace -f json` into the shared state.
fn parse_line(line: &str, def: &AdhocDef, targets: &[u32], s: &mut Shared) -> Result<(), String> {
    if line.is_empty() {
        return Ok(());
    }
    let v: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        // Not JSON: a `system()` call or a stray print; it counts toward the output only.
        Err(_) => return Ok(()),
    };
    let ty = v["type"].as_str().unwrap_or("");
    let data = &v["data"];
    match ty {
        "attached_probes" => s.attached = Some(data["probes"].as_u64().unwrap_or(0)),
        "printf" if data.as_str().is_some_and(|t| t.trim_end() == MARKER) => {
            let p = std::mem::take(&mut s.pending);
            s.ready.events.extend(p.events);
            s.ready.histograms.extend(p.histograms);
            s.windows += 1;
        }
        "lost_events" => s.lost_events += data["events"].as_u64().unwrap_or(0),
        "map" | "hist" | "stats" => {
            let Some(obj) = data.as_object() else {
                return Ok(());
            };
            for (name, value) in obj {
                let bare = name.trim_start_matches('@');
                let Some(map) = def.map(bare) else {
                    return Err(format!(
                        "map {name} printed by {} is not declared in its header; add `// [maps.{bare}]` with its kind",
                        def.file.display()
                    ));
                };
                if map.kind == MapKind::Scratch {
                    continue;
                }
                let mut pending = std::mem::take(&mut s.pending);
                let r = map_output(def, map, ty, value, targets, &mut pending);
                s.pending = pending;
                r.map_err(|e| format!("map @{bare} of {}: {e}", def.file.display()))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One printed map into events or histograms.
fn map_output(
    def: &AdhocDef,
    map: &AdhocMap,
    ty: &str,
    value: &serde_json::Value,
    targets: &[u32],
    out: &mut Drained,
) -> Result<(), String> {
    let value_index = def.value_maps().position(|m| m.name == map.name);
    let nvalues = def.value_maps().count();
    match map.kind {
        MapKind::Series => {
            if ty == "hist" {
                return Err("declared a series but printed a histogram".into());
            }
            let n = match value {
                serde_json::Value::Number(n) => n.as_f64().unwrap_or(0.0),
                serde_json::Value::Object(o) if o.is_empty() => return Ok(()),
                serde_json::Value::Object(_) => {
                    return Err(
                        "declared a series (a scalar) but printed a keyed map; declare it as stacks or drop the keys"
                            .into(),
                    )
                }
                _ => return Err("its value is not a number".into()),
            };
            if n <= 0.0 {
                return Ok(());
            }
            let mut values = vec![0; nvalues];
            values[value_index.unwrap_or(0)] = n as u64;
            out.events.push(Event {
                comm: format!("@{}", map.name),
                count: 1,
                values,
                weight: 1.0,
                frames: vec![named_frame(&format!("@{}", map.name), "[bpftrace]")],
                ..Default::default()
            });
        }
        MapKind::Stacks => {
            if ty == "hist" {
                return Err(
                    "declared stacks but printed a histogram; declare it as a histogram".into(),
                );
            }
            let obj = match value {
                serde_json::Value::Object(o) => o,
                _ => {
                    return Err(
                        "declared stacks but printed a scalar; declare it as a series".into(),
                    )
                }
            };
            for (key, v) in obj {
                let n = v
                    .as_f64()
                    .ok_or_else(|| "a stack's value is not a number (stats() and avg() maps are not supported; use count() or sum())".to_string())?;
                if n <= 0.0 {
                    continue;
                }
                let mut e = keyed_event(map, key)?;
                if !targets.is_empty() && e.pid != 0 && !targets.contains(&e.pid) {
                    continue;
                }
                e.values = vec![0; nvalues];
                e.values[value_index.unwrap_or(0)] = n as u64;
                // Events behind the row: the value itself for a count, else one row.
                e.count = if map.unit == "count" { n as u64 } else { 1 };
                e.weight = 1.0;
                out.events.push(e);
            }
        }
        MapKind::Histogram => {
            if ty != "hist" {
                return Err(format!(
                    "declared a histogram but printed a {ty}; use hist() or lhist()"
                ));
            }
            let name: &'static str = intern(&map.name);
            let unit: &'static str = intern(&map.unit);
            let mut push = |key: &str, buckets: &serde_json::Value| -> Result<(), String> {
                let list = buckets
                    .as_array()
                    .ok_or_else(|| "histogram buckets are not a list".to_string())?;
                let mut h = RawHistogram {
                    name,
                    unit,
                    key: String::new(),
                    pid: 0,
                    comm: String::new(),
                    buckets: Vec::new(),
                    le_buckets: Vec::new(),
                };
                if !key.is_empty() {
                    let e = keyed_event(map, key)?;
                    if !targets.is_empty() && e.pid != 0 && !targets.contains(&e.pid) {
                        return Ok(());
                    }
                    h.pid = e.pid;
                    h.comm = e.comm;
                    h.key = e
                        .labels
                        .iter()
                        .map(|(_, v)| v.as_str())
                        .collect::<Vec<_>>()
                        .join(",");
                    if h.key.is_empty() {
                        h.key = if h.comm.is_empty() {
                            h.pid.to_string()
                        } else {
                            h.comm.clone()
                        };
                    }
                }
                for b in list {
                    let count = b["count"].as_f64().unwrap_or(0.0);
                    if count <= 0.0 {
                        continue;
                    }
                    // [min, max]; the last bucket of an lhist has no max (values ≥ min), and a
                    // bucket of negative values has no min; they are kept at the ends.
                    let le = match (b["min"].as_i64(), b["max"].as_i64()) {
                        (_, Some(max)) if max >= 0 => max as u64,
                        (_, Some(_)) => 0,
                        (Some(_), None) => u64::MAX,
                        (None, None) => continue,
                    };
                    h.le_buckets.push((le, count));
                }
                if !h.le_buckets.is_empty() {
                    out.histograms.push(h);
                }
                Ok(())
            };
            match value {
                serde_json::Value::Array(_) => push("", value)?,
                serde_json::Value::Object(o) => {
                    if map.keys.is_empty() && !o.is_empty() {
                        return Err("printed a keyed histogram; declare its keys".into());
                    }
                    for (k, b) in o {
                        push(k, b)?;
                    }
                }
                _ => return Err("histogram output is neither a list nor keyed lists".into()),
            }
        }
        MapKind::Scratch => {}
    }
    Ok(())
}

/// A frame already named (bpftrace symbolizes its stacks itself). bpftrace gives no file
/// offset, and the store keys frames by (kind, module, build ID, address), so the address is a
/// hash of the name: one frame per distinct function.
fn named_frame(function: &str, module: &str) -> Frame {
    Frame {
        kind: FrameKind::User,
        function: Some(function.to_string()),
        module: module.to_string(),
        build_id: None,
        address: baton_model::batch::fnv1a(&[module.as_bytes(), function.as_bytes()]),
        file: None,
        line: None,
    }
}

/// Splits a printed key by the declared keys into an event's stacks, pid, comm and labels.
/// bpftrace joins the parts of a key with `,`; a stack part is `\n` + one indented line per
/// frame, each ending in `\n`, so it ends at the first `\n` followed by `,` or the end.
fn keyed_event(map: &AdhocMap, key: &str) -> Result<Event, String> {
    let mut e = Event::default();
    let mut rest = key;
    let mut kernel: Vec<Frame> = Vec::new();
    let mut user: Vec<Frame> = Vec::new();
    let n = map.keys.len();
    if n == 0 {
        return Err(format!(
            "printed keys (e.g. {:?}) but the header declares none; add `keys = [...]`",
            key.chars().take(40).collect::<String>()
        ));
    }
    for (i, k) in map.keys.iter().enumerate() {
        let last = i + 1 == n;
        let part: &str = match k {
            MapKey::Ustack | MapKey::Kstack => {
                let end = stack_end(rest).ok_or_else(|| {
                    format!(
                        "key {:?} has no stack where the header declares key {} as one",
                        key.chars().take(60).collect::<String>(),
                        i + 1
                    )
                })?;
                let (p, r) = rest.split_at(end);
                rest = r.strip_prefix(',').unwrap_or(r);
                p
            }
            _ if last => std::mem::take(&mut rest),
            _ => {
                let end = rest.find(',').ok_or_else(|| {
                    format!(
                        "key {:?} has fewer parts than the {n} the header declares",
                        key.chars().take(60).collect::<String>()
                    )
                })?;
                let (p, r) = rest.split_at(end);
                rest = &r[1..];
                p
            }
        };
        match k {
            MapKey::Ustack => user = stack_frames(part, FrameKind::User),
            MapKey::Kstack => kernel = stack_frames(part, FrameKind::Kernel),
            MapKey::Pid => {
                e.pid = part
                    .trim()
                    .parse()
                    .map_err(|_| format!("pid key {part:?} is not a number"))?
            }
            MapKey::Tid => e.tid = part.trim().parse().unwrap_or(0),
            MapKey::Comm => e.comm = part.to_string(),
            MapKey::Label(l) => e.labels.push((intern(l), part.to_string())),
        }
    }
    e.frames = kernel;
    e.frames.extend(user);
    if e.tid == 0 {
        e.tid = e.pid;
    }
    Ok(e)
}

/// Where the stack at the start of `s` ends (after its last `\n`).
fn stack_end(s: &str) -> Option<usize> {
    if !s.starts_with('\n') {
        // An empty stack prints as nothing.
        return (s.is_empty() || s.starts_with(',')).then_some(0);
    }
    let b = s.as_bytes();
    (0..b.len())
        .find(|&i| b[i] == b'\n' && (i + 1 == b.len() || b[i + 1] == b','))
        .map(|i| i + 1)
}

/// The frames of a printed stack, leaf first: `symbol+offset`, a bare hex address, or perf's
/// `address symbol+offset (module)` form.
fn stack_frames(text: &str, kind: FrameKind) -> Vec<Frame> {
    let module_default = if kind == FrameKind::Kernel {
        baton_model::frame::KERNEL_MODULE
    } else {
        "[unknown]"
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (sym, module) = match l.rsplit_once(" (") {
                Some((head, m)) if m.ends_with(')') => {
                    let sym = head.split_once(' ').map(|(_, s)| s).unwrap_or(head);
                    (sym, m.trim_end_matches(')'))
                }
                _ => (l, module_default),
            };
            if let Some(hex) = sym.strip_prefix("0x") {
                let address = u64::from_str_radix(hex, 16).unwrap_or(0);
                return Frame {
                    kind,
                    function: None,
                    module: module.to_string(),
                    build_id: None,
                    address,
                    file: None,
                    line: None,
                };
            }
            let name = match sym.rsplit_once('+') {
                Some((n, off)) if off.chars().all(|c| c.is_ascii_digit()) => n,
                _ => sym,
            };
            let mut f = named_frame(&demangle(name), module);
            f.kind = kind;
            f.address =
                baton_model::batch::fnv1a(&[&[kind.as_u8()], module.as_bytes(), name.as_bytes()]);
            f
        })
        .collect()
}

/// Rust (legacy and v0) and C++ names as people read them.
fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name.as_bytes()) {
            if let Ok(s) = sym.demangle() {
                return s;
            }
        }
    }
    name.to_string()
}

/// The values a drained window adds up to, per value index.
#[cfg(test)]
fn totals(d: &Drained) -> HashMap<usize, u64> {
    let mut t = HashMap::new();
    for e in &d.events {
        for (i, v) in e.values.iter().enumerate() {
            *t.entry(i).or_insert(0) += v;
        }
    }
    t
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

#[cfg(test)]
mod tests {
    use super::*;

    fn def(header: &str, body: &str) -> AdhocDef {
        let text = format!("// baton:\n{header}\n{body}\n");
        let f = baton_config::SourceFile {
            path: "t.bt".into(),
            text,
        };
        baton_config::load(&[f], &["cpu"])
            .map_err(|e| e.to_string())
            .expect("valid")
            .adhoc
            .into_values()
            .next()
            .expect("one")
    }

    #[test]
    fn composite_keys_split_into_stacks_pid_and_labels() {
        let d = def(
            "// name = \"s\"\n// owner = \"o\"\n// [maps.st]\n// kind = \"stacks\"\n// keys = [\"kstack\", \"ustack\", \"pid\", \"comm\"]",
            "profile:hz:99 { @st[kstack, ustack, pid, comm] = count(); }",
        );
        let m = d.map("st").expect("map");
        let key = "\n    do_syscall_64+579\n    entry_SYSCALL_64+118\n,\n    leaf_hot+23\n    _ZN4spin6middle17h0123456789abcdefE+5\n    0x7fde65ed5aef\n,4242,spl,it";
        let e = keyed_event(m, key).expect("split");
        assert_eq!(e.pid, 4242);
        assert_eq!(e.comm, "spl,it");
        let names: Vec<String> = e.frames.iter().map(Frame::display_name).collect();
        assert_eq!(
            names,
            [
                "do_syscall_64",
                "entry_SYSCALL_64",
                "leaf_hot",
                "spin::middle",
                "[unknown] [unknown]+0x7fde65ed5aef"
            ]
        );
        assert_eq!(e.frames[0].kind, FrameKind::Kernel);
        assert_eq!(e.frames[2].kind, FrameKind::User);
    }

    #[test]
    fn printed_maps_become_windows_and_errors_name_the_map() {
        let d = def(
            "// name = \"r\"\n// owner = \"o\"\n// [maps.sizes]\n// kind = \"histogram\"\n// keys = [\"comm\"]\n// unit = \"bytes\"\n// [maps.n]\n// kind = \"series\"",
            "t:syscalls:sys_exit_read { @sizes[comm] = hist(args->ret); @n = count(); }",
        );
        let mut s = Shared::default();
        for l in [
            r#"{"type": "attached_probes", "data": {"probes": 2}}"#,
            r#"{"type": "hist", "data": {"@sizes": {"cat": [{"min": 64, "max": 127, "count": 3}, {"min": 128, "max": 255, "count": 0}, {"min": 4096, "max": 8191, "count": 10}]}}}"#,
            r#"{"type": "map", "data": {"@n": 13}}"#,
        ] {
            parse_line(l, &d, &[], &mut s).expect("parse");
        }
        assert!(s.ready.events.is_empty(), "not a window before its marker");
        parse_line(
            &format!(r#"{{"type": "printf", "data": "{MARKER}\n"}}"#),
            &d,
            &[],
            &mut s,
        )
        .expect("marker");
        assert_eq!(s.windows, 1);
        assert_eq!(totals(&s.ready)[&0], 13);
        let h = &s.ready.histograms[0];
        assert_eq!((h.name, h.key.as_str()), ("sizes", "cat"));
        assert_eq!(h.le_buckets, vec![(127, 3.0), (8191, 10.0)]);
        let e = parse_line(r#"{"type": "map", "data": {"@other": 1}}"#, &d, &[], &mut s)
            .expect_err("undeclared");
        assert!(
            e.contains("map @other") && e.contains("not declared"),
            "{e}"
        );
        let e = parse_line(
            r#"{"type": "map", "data": {"@n": {"a": 1}}}"#,
            &d,
            &[],
            &mut s,
        )
        .expect_err("keyed series");
        assert!(e.starts_with("map @n of t.bt: declared a series"), "{e}");
    }

    #[test]
    fn windows_of_one_drain_merge() {
        let d = def(
            "// name = \"r\"\n// owner = \"o\"\n// [maps.sizes]\n// kind = \"histogram\"\n// keys = [\"comm\"]\n// [maps.n]\n// kind = \"series\"",
            "t:syscalls:sys_exit_read { @sizes[comm] = hist(args->ret); @n = count(); }",
        );
        let mut s = Shared::default();
        for _ in 0..2 {
            for l in [
                r#"{"type": "hist", "data": {"@sizes": {"cat": [{"min": 64, "max": 127, "count": 3}]}}}"#,
                r#"{"type": "map", "data": {"@n": 5}}"#,
            ] {
                parse_line(l, &d, &[], &mut s).expect("parse");
            }
            parse_line(
                &format!(r#"{{"type": "printf", "data": "{MARKER}\n"}}"#),
                &d,
                &[],
                &mut s,
            )
            .expect("marker");
        }
        let m = merge_windows(std::mem::take(&mut s.ready));
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.events[0].values, vec![10]);
        assert_eq!(m.histograms.len(), 1);
        assert_eq!(m.histograms[0].le_buckets, vec![(127, 6.0)]);
    }

    #[test]
    fn the_wrapper_prints_and_clears_every_stored_map() {
        let d = def(
            "// name = \"o\"\n// owner = \"o\"\n// [maps.start]\n// kind = \"scratch\"\n// [maps.off]\n// kind = \"stacks\"\n// keys = [\"ustack\"]",
            "t:sched:sched_switch { @start[tid] = nsecs; @off[ustack] = sum(1); }",
        );
        let w = wrapped_script(&d);
        assert!(w.contains("interval:s:1 { print(@off); clear(@off); printf("));
        assert!(w.contains("clear(@start); }"));
        assert!(!w.contains("print(@start)"));
    }
}
