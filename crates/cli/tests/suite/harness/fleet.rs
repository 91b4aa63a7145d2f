//! Fleet-mode helpers: a `baton server` and `baton agent`s as child processes whose stderr is
//! kept, tokens for each role, and network namespaces that stand for separate hosts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

pub const VIEWER: &str = "viewer-token-0123456789";
pub const OPERATOR: &str = "operator-token-0123456789";
pub const ADMIN: &str = "admin-token-0123456789";
pub const AGENT: &str = "agent-token-0123456789";
/// The token an agent's /metrics asks for when it listens beyond loopback (in a namespace).
pub const METRICS: &str = "metrics-token-0123456789";

/// A child process whose stderr is echoed and kept.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let keep = lines.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                keep.lock().expect("lines").push(line);
            }
        });
        Proc { child, lines }
    }

    pub fn text(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// The first stderr line containing `pat`, waiting up to `secs`.
    pub fn wait_line(&self, pat: &str, secs: u64) -> String {
        eventually(secs, &format!("a line with {pat:?}"), || {
            self.lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(pat))
                .cloned()
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tokens_file(dir: &Path) -> PathBuf {
    let p = dir.join("tokens");
    std::fs::write(
        &p,
        format!(
            "# role name token\nviewer vera {VIEWER}\noperator olga {OPERATOR}\nadmin ada {ADMIN}\nagent fleet {AGENT}\n"
        ),
    )
    .expect("tokens");
    let t = dir.join("agent.token");
    std::fs::write(&t, AGENT).expect("agent token");
    p
}

pub struct Server {
    pub proc: Proc,
    pub addr: String,
}

pub fn start_server(data: &Path, listen: &str, extra: &[&str]) -> Server {
    let proc = Proc::spawn(
        "server",
        baton()
            .args(["server", "--listen", listen, "--data"])
            .arg(data)
            .args(["--heartbeat", "1s", "--host-timeout", "6s"])
            .args(extra),
    );
    let line = proc.wait_line("listening on ", 30);
    let addr = line
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("address")
        .to_string();
    Server { proc, addr }
}

pub struct Agent {
    pub proc: Proc,
    pub metrics: String,
}

/// Starts an agent named `host`; in `netns`, it runs in that network namespace with its own
/// host name (a UTS namespace), as on a separate machine.
pub fn start_agent(
    host: &str,
    server: &str,
    buffer: &Path,
    extra: &[&str],
    netns: Option<(&str, &str)>,
) -> Agent {
    let bin = env!("CARGO_BIN_EXE_baton");
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--server".into(),
        server.into(),
        "--buffer-dir".into(),
        buffer.display().to_string(),
    ];
    // Whole-host windows of 1 s, unless the test gives its own.
    if !extra.contains(&"--window") {
        args.extend(["--window".into(), "1s".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = match netns {
        Some((ns, ip)) => {
            // Beyond loopback, /metrics needs a token.
            let token = buffer.with_extension("metrics-token");
            std::fs::write(&token, METRICS).expect("metrics token");
            args.extend([
                "--listen".into(),
                format!("{ip}:7071"),
                "--metrics-token-file".into(),
                token.display().to_string(),
            ]);
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "unshare", "--uts", "--", "sh", "-c"])
                .arg(format!("hostname {host} && exec {bin} \"$@\""))
                .arg("sh")
                .args(&args);
            c
        }
        None => {
            args.extend([
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--host".into(),
                host.into(),
            ]);
            let mut c = baton();
            c.args(&args);
            c
        }
    };
    let proc = Proc::spawn(&format!("agent {host}"), &mut cmd);
    let line = proc.wait_line("metrics at http://", 30);
    let metrics = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("metrics address")
        .to_string();
    Agent { proc, metrics }
}

/// A counter from a `/metrics` page.
pub fn metric(addr: &str, name: &str) -> f64 {
    let (mut code, mut body) = http_get(addr, "/metrics");
    if code == 401 {
        // An agent listening beyond loopback.
        (code, body) = http_req(addr, "GET", "/metrics", Some(METRICS), b"");
    }
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} at {addr}"))
}

/// Three network namespaces on a bridge, like three hosts on a LAN; removed on drop.
pub struct Lan {
    pub bridge: String,
    pub spaces: Vec<String>,
}

impl Lan {
    pub fn new(tag: &str, hosts: usize) -> Lan {
        let sh = |cmd: &str| {
            let st = Command::new("sh").args(["-c", cmd]).status().expect("sh");
            assert!(
                st.success(),
                "`{cmd}` failed (ip netns and veth need root and iproute2)"
            );
        };
        let bridge = format!("btn{tag}");
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        quiet(&["link", "del", &bridge]);
        sh(&format!(
            "ip link add {bridge} type bridge && ip addr add 10.77.0.1/24 dev {bridge} && ip link set {bridge} up"
        ));
        let mut spaces = Vec::new();
        for i in 1..=hosts {
            let ns = format!("baton-{tag}-h{i}");
            quiet(&["netns", "del", &ns]);
            sh(&format!(
                "ip netns add {ns} && ip link add v{tag}{i} type veth peer name eth0 netns {ns} && \
                 ip link set v{tag}{i} master {bridge} up && \
                 ip netns exec {ns} ip addr add 10.77.0.1{i}/24 dev eth0 && \
                 ip netns exec {ns} ip link set eth0 up && ip netns exec {ns} ip link set lo up"
            ));
            spaces.push(ns);
        }
        Lan { bridge, spaces }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.spaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

pub fn wait_run(addr: &str, token: Option<&str>, id: u64, secs: u64) -> serde_json::Value {
    eventually(secs, &format!("run {id} to end"), || {
        let (_, r) = json_req(addr, "GET", &format!("/api/v1/runs/{id}"), token, "");
        matches!(r["state"].as_str(), Some("done" | "failed" | "cancelled")).then_some(r)
    })
}

pub fn spawn_split(secs: &str) -> Child {
    Command::new(workload("split"))
        .arg(secs)
        .spawn()
        .expect("start split")
}

/// The GNU build ID of an ELF file, as `readelf -n` prints it.
pub fn build_id_of(bin: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "readelf -n {} | awk '/Build ID/ {{print $3}}'",
            bin.display()
        ))
        .output()
        .expect("readelf");
    let id = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert!(id.len() >= 16, "build id {id:?}");
    id
}

/// Totals an agent prints when it stops: (produced, shipped, dropped, batches left).
pub fn agent_totals(a: &Agent) -> (u64, u64, u64, u64) {
    let line = a.proc.wait_line("sample rows produced", 5);
    let num = |key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|r| r.trim().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
    };
    let left = line
        .split(" batch(es)")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no batch count in {line:?}"));
    (num("produced "), num("shipped "), num("dropped "), left)
}

pub fn run_cli(args: &[&str]) -> String {
    let out = run(baton().args(args));
    assert!(out.status.success(), "baton {args:?} failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Cgroups that stand for the process trees of separate hosts on this one machine: an agent
/// given `--cgroup-scope` of one sees only that slice's processes as its host's. Each slice's
/// processes are killed and the cgroups removed on drop.
pub struct Slices {
    root: PathBuf,
    pub children: Vec<Child>,
}

impl Slices {
    pub fn new(tag: &str) -> Slices {
        let root = cgroup2_mount().join(format!("baton-{tag}"));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| {
            panic!(
                "creating {}: {e} (cgroup v2 at /sys/fs/cgroup and root are needed)",
                root.display()
            )
        });
        Slices {
            root,
            children: Vec::new(),
        }
    }

    /// The cgroup path of slice `name`, as `--cgroup-scope` takes it.
    pub fn scope(&self, name: &str) -> String {
        let rel = self
            .root
            .strip_prefix(cgroup2_mount())
            .expect("under cgroup2");
        format!("/{}/{name}", rel.display())
    }

    /// Starts `cmd` and moves it into slice `name`; returns its pid.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> u32 {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).expect("create slice cgroup");
        let child = cmd.spawn().expect("start a slice's process");
        let pid = child.id();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move into the slice");
        self.children.push(child);
        pid
    }
}

impl Drop for Slices {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid machine.
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("no cgroup2 mount: slices of simulated hosts need cgroup v2")
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Starts `tests/workloads/duty.c`: `percent` of one CPU for `secs` seconds.
pub fn duty(secs: u64, percent: u32) -> Command {
    let mut c = Command::new(workload("duty"));
    c.args([secs.to_string(), percent.to_string()]);
    c
}

/// A real etcd (Debian's `etcd-server`) on free loopback ports, stopped on drop.
pub struct Etcd {
    /// Kept to stop it on drop.
    _proc: Proc,
    pub url: String,
}

pub fn start_etcd(dir: &Path) -> Etcd {
    assert!(
        Path::new("/usr/bin/etcd").exists(),
        "/usr/bin/etcd is missing: scripts/install-deps.sh installs Debian's etcd-server"
    );
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let proc = Proc::spawn(
        "etcd",
        Command::new("/usr/bin/etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")]),
    );
    proc.wait_line("ready to serve client requests", 30);
    Etcd { _proc: proc, url }
}
