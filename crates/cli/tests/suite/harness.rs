//! Shared helpers: root check, workload builds, running baton, HTTP on loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod fleet;

pub fn baton() -> Command {
    Command::new(env!("CARGO_BIN_EXE_baton"))
}

/// Fails the test with a reason when not root: BPF tests never pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs and needs root (or CAP_BPF + CAP_PERFMON); run the suite as root"
    );
}

/// A scratch directory for this test process.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join(format!("baton-suite-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Where tests keep artifacts (screenshots): `$BATON_ARTIFACTS` or `target/test-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let d = std::env::var_os("BATON_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts")
        });
    std::fs::create_dir_all(&d).expect("create artifacts dir");
    d
}

/// Compiles `tests/workloads/NAME.c` with frame pointers (leaf frames and no sibling calls too,
/// so the truth of the stacks is known) and returns the binary.
pub fn workload(name: &str) -> PathBuf {
    workload_with(
        name,
        "",
        &[
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
    )
}

/// Compiles `tests/workloads/NAME.c` at -O2 without frame pointers, as distributions build.
pub fn workload_without_frame_pointers(name: &str) -> PathBuf {
    workload_with(name, "-nofp", &["-fomit-frame-pointer"])
}

/// Compiles `tests/workloads/NAME.c` linked statically (libc's malloc inside the binary).
pub fn workload_static(name: &str) -> PathBuf {
    workload_with(name, "-static", &["-static", "-fno-omit-frame-pointer"])
}

/// Compiles `tests/workloads/NAME.c` (or `.cc`) with `-O2 -g` plus `flags` into `NAME{suffix}`.
fn workload_with(name: &str, suffix: &str, flags: &[&str]) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| scratch("workloads"));
    let out = dir.join(format!("{name}{suffix}"));
    if out.exists() {
        return out;
    }
    let dir_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads");
    let (src, compiler) = if dir_src.join(format!("{name}.cc")).exists() {
        (dir_src.join(format!("{name}.cc")), "clang++")
    } else {
        (dir_src.join(format!("{name}.c")), "clang")
    };
    let tmp = dir.join(
        format!("{name}{suffix}.tmp{:?}", std::thread::current().id()).replace(['(', ')'], ""),
    );
    let st = Command::new(compiler)
        .args(["-O2", "-g"])
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("clang must be installed to build the test workloads (scripts/install-deps.sh)");
    assert!(st.success(), "compiling {} failed", src.display());
    std::fs::rename(&tmp, &out).expect("rename workload");
    out
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run baton");
    eprintln!(
        "--- {:?}\n--- status {:?}\n--- stderr\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running `baton up` on a free loopback port, killed on drop if still running.
pub struct Up {
    pub child: Child,
    pub addr: String,
    /// Kept so the thread that echoes stderr keeps running.
    _stderr_lines: std::sync::mpsc::Receiver<String>,
}

impl Up {
    pub fn start(data: &Path) -> Up {
        Up::start_with(data, &[])
    }

    /// Starts `baton up` with 1 s windows and `extra` flags.
    pub fn start_with(data: &Path, extra: &[&str]) -> Up {
        let mut args = vec!["--window", "1s"];
        args.extend_from_slice(extra);
        Up::start_raw(data, &args)
    }

    /// Starts `baton up` with only `extra` flags (the window comes from the config or the default).
    pub fn start_raw(data: &Path, extra: &[&str]) -> Up {
        Up::start_env(data, extra, &[])
    }

    /// Starts `baton up` with only `extra` flags and `env` added to its environment.
    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Up {
        let mut child = baton()
            .args(["up", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start baton up");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[baton up] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("baton up did not announce its address within 30 s");
            if let Some(rest) = line.split("UI at http://").nth(1) {
                break rest.trim_end_matches('/').to_string();
            }
        };
        if t0.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "baton up took {:.1} s to announce its address",
                t0.elapsed().as_secs_f64()
            );
        }
        Up {
            child,
            addr,
            _stderr_lines: rx,
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "baton up did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET on loopback; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    http_req(addr, "GET", path, None, b"")
}

/// A minimal HTTP/1.1 request with an optional bearer token; returns (status, body).
pub fn http_req(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("write");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < eol + 4 + n {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

/// Seconds of off-CPU time the store holds for the samples matching `filter` (e.g. `run%3D7`).
pub fn offcpu_seconds(addr: &str, filter: &str) -> f64 {
    let fg = http_json(
        addr,
        &format!("/api/v1/flamegraph?profiler=offcpu&since=10m&filter={filter}"),
    );
    fg["total"].as_f64().unwrap_or(0.0) / 1e9
}

/// An HTTP call with an optional bearer token: the status, and the body as JSON (null if it
/// is not JSON).
pub fn json_req(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let (code, out) = http_req(addr, method, path, token, body.as_bytes());
    (code, serde_json::from_slice(&out).unwrap_or_default())
}

pub fn http_json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("json body")
}

/// The runs that one trigger rule (`trigger:SERVICE#N`) fired, as `/api/v1/runs` lists them.
pub fn triggered(addr: &str, owner: &str) -> Vec<serde_json::Value> {
    http_json(addr, "/api/v1/runs")["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["mode"] == "triggered" && r["owner"] == owner)
        .collect()
}

/// Writes `program` (Go, standard library only) as `NAME.go` in `dir` and runs it offline with
/// `args`, with its build cache and GOPATH in `dir`; fails loudly if Go is missing or the
/// program fails.
pub fn go_run(dir: &Path, name: &str, program: &str, args: &[&Path]) {
    let src = dir.join(format!("{name}.go"));
    std::fs::write(&src, program).expect("write go");
    let st = Command::new("go")
        .arg("run")
        .arg(&src)
        .args(args)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .status()
        .expect("go (scripts/install-deps.sh installs golang-go)");
    assert!(st.success(), "go run {name}.go failed");
}

/// Polls `f` until it returns Some or `secs` pass.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Shares of `self_percent` for a function in a JSON top table.
pub fn self_percent(top: &serde_json::Value, function: &str) -> f64 {
    top.as_array()
        .expect("top array")
        .iter()
        .find(|r| r["function"] == function)
        .and_then(|r| r["self_percent"].as_f64())
        .unwrap_or(0.0)
}

/// Ids of the BPF programs a process holds (through program or link descriptors).
pub fn bpf_prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in rd.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("prog_id:") {
                    if let Ok(id) = v.trim().parse() {
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
            }
        }
    }
    ids
}

/// Whether a BPF program id is still loaded in the kernel.
pub fn bpf_prog_loaded(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool must be installed (scripts/install-deps.sh)")
        .success()
}

/// The DOM of `url` after headless Chromium ran its scripts (up to 8 s of virtual time).
pub fn chromium_dom(url: &str) -> String {
    let chromium = "/usr/bin/chromium";
    assert!(
        Path::new(chromium).exists(),
        "Debian's chromium is needed for the UI tests (scripts/install-deps.sh)"
    );
    let profile_dir = scratch("chromium-dom-profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,900",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile_dir.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A workload process killed when the test ends, passed or not, so a failed test leaves no
/// workload running into the next one.
pub struct Workload(pub std::process::Child);

impl Workload {
    pub fn spawn(cmd: &mut std::process::Command) -> Workload {
        Workload(cmd.spawn().expect("start the workload"))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn wait(&mut self) {
        let _ = self.0.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sample of `go tool pprof -raw`: its values, its stack (function names, leaf first) and
/// its labels.
#[derive(Debug)]
pub struct RawSample {
    pub values: Vec<f64>,
    pub stack: Vec<String>,
    pub labels: HashMap<String, String>,
}

/// The samples of a pprof file, as `go tool pprof -raw` reads them.
pub fn pprof_samples(pb: &Path) -> Vec<RawSample> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(pb)
        .output()
        .expect("go tool pprof (scripts/install-deps.sh installs golang-go)");
    assert!(out.status.success(), "go tool pprof -raw failed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (samples, rest) = text
        .split_once("\nLocations\n")
        .expect("a Locations section");
    let locations = rest.split("\nMappings\n").next().unwrap_or_default();
    let mut functions: HashMap<u64, String> = HashMap::new();
    for line in locations.lines() {
        // "     1: 0x11e0 M=1 cuLaunchKernelEx /path/cuda.c:58 s=0"
        let mut parts = line.split_whitespace();
        let (Some(id), Some(_addr), Some(_m), Some(f)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(Ok(id)) = id.strip_suffix(':').map(str::parse::<u64>) {
            functions.insert(id, f.to_string());
        }
    }
    let mut out: Vec<RawSample> = Vec::new();
    for line in samples
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .skip(2)
    {
        if let Some((values, locs)) = line
            .split_once(": ")
            .filter(|(v, _)| v.split_whitespace().all(|x| x.parse::<f64>().is_ok()))
        {
            out.push(RawSample {
                values: values
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect(),
                stack: locs
                    .split_whitespace()
                    .filter_map(|l| l.parse::<u64>().ok())
                    .map(|l| functions.get(&l).cloned().unwrap_or_default())
                    .collect(),
                labels: HashMap::new(),
            });
        } else if let Some(s) = out.last_mut() {
            // "key:[value] key:[value]" (values may hold spaces, never brackets).
            let mut rest = line.trim();
            while let Some((key, after)) = rest.split_once(":[") {
                let Some((value, tail)) = after.split_once(']') else {
                    break;
                };
                s.labels.insert(key.trim().to_string(), value.to_string());
                rest = tail;
            }
        }
    }
    out
}

/// A sample's label, '' when it has none.
pub fn label<'a>(s: &'a RawSample, key: &str) -> &'a str {
    s.labels.get(key).map_or("", String::as_str)
}

/// The samples of process `pid`.
pub fn samples_of(samples: &[RawSample], pid: u32) -> Vec<&RawSample> {
    samples
        .iter()
        .filter(|s| label(s, "pid") == pid.to_string())
        .collect()
}
