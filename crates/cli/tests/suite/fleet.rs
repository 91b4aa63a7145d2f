//! Fleet mode: `baton server` with `baton agent`s, each host in its own network namespace;
//! runs placed on one host, a server outage with nothing lost, an agent killed mid-run, late
//! symbols, tokens and roles, TLS, and pprof from other producers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

const VIEWER: &str = "viewer-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const AGENT: &str = "agent-token-0123456789";

/// A child process whose stderr is echoed and kept.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
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

    fn text(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// The first stderr line containing `pat`, waiting up to `secs`.
    fn wait_line(&self, pat: &str, secs: u64) -> String {
        eventually(secs, &format!("a line with {pat:?}"), || {
            self.lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(pat))
                .cloned()
        })
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
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

fn tokens_file(dir: &Path) -> PathBuf {
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

struct Server {
    proc: Proc,
    addr: String,
}

fn start_server(data: &Path, listen: &str, extra: &[&str]) -> Server {
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

struct Agent {
    proc: Proc,
    metrics: String,
}

/// Starts an agent named `host`; in `netns`, it runs in that network namespace with its own
/// host name (a UTS namespace), as on a separate machine.
fn start_agent(
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
        "--window".into(),
        "1s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = match netns {
        Some((ns, ip)) => {
            args.extend(["--listen".into(), format!("{ip}:7071")]);
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
fn metric(addr: &str, name: &str) -> f64 {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} at {addr}"))
}

fn json_req(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let (code, out) = http_req(addr, method, path, token, body.as_bytes());
    (code, serde_json::from_slice(&out).unwrap_or_default())
}

/// Three network namespaces on a bridge, like three hosts on a LAN; removed on drop.
struct Lan {
    bridge: String,
    spaces: Vec<String>,
}

impl Lan {
    fn new(tag: &str, hosts: usize) -> Lan {
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

fn wait_run(addr: &str, token: Option<&str>, id: u64, secs: u64) -> serde_json::Value {
    eventually(secs, &format!("run {id} to end"), || {
        let (_, r) = json_req(addr, "GET", &format!("/api/v1/runs/{id}"), token, "");
        matches!(r["state"].as_str(), Some("done" | "failed" | "cancelled")).then_some(r)
    })
}

fn spawn_split(secs: &str) -> Child {
    Command::new(workload("split"))
        .arg(secs)
        .spawn()
        .expect("start split")
}

/// Three agents, each in its own network namespace with its own host name, and one server:
/// continuous data arrives from all three labelled by host, and a run placed on one host runs
/// only there.
#[test]
fn three_hosts_in_network_namespaces() {
    require_root();
    let dir = scratch("fleet-lan");
    let tokens = tokens_file(&dir);
    let lan = Lan::new(&format!("{}", std::process::id() % 10000), 3);
    let port = free_port();
    let server = start_server(
        &dir.join("data"),
        &format!("10.77.0.1:{port}"),
        &["--auth", tokens.to_str().expect("path")],
    );
    let url = format!("http://{}", server.addr);
    let agent_token = dir.join("agent.token");
    let agents: Vec<Agent> = (1..=3)
        .map(|i| {
            start_agent(
                &format!("h{i}"),
                &url,
                &dir.join(format!("buf{i}")),
                &["--token-file", agent_token.to_str().expect("path")],
                Some((&lan.spaces[i - 1], &format!("10.77.0.1{i}"))),
            )
        })
        .collect();
    // All three register and heartbeat.
    eventually(30, "three hosts up", || {
        let (_, v) = json_req(&server.addr, "GET", "/api/v1/hosts", Some(VIEWER), "");
        let up: Vec<String> = v["hosts"]
            .as_array()?
            .iter()
            .filter(|h| h["state"] == "up")
            .filter_map(|h| h["host"].as_str().map(str::to_string))
            .collect();
        (up.len() == 3).then_some(up)
    });
    // Continuous data from every host, labelled by its host name.
    eventually(60, "continuous samples from h1, h2 and h3", || {
        let (_, v) = json_req(
            &server.addr,
            "GET",
            "/api/v1/labels/host?profiler=cpu&since=10m",
            Some(VIEWER),
            "",
        );
        let hosts: Vec<String> = v["values"]
            .as_array()?
            .iter()
            .filter_map(|x| x["value"].as_str().map(str::to_string))
            .collect();
        (["h1", "h2", "h3"]
            .iter()
            .all(|h| hosts.contains(&h.to_string())))
        .then_some(())
    });
    // A run placed on h2 runs only there.
    let mut split = spawn_split("120");
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"3s","frequency":99,"host":"h2"}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", Some(OPERATOR), &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    let run = wait_run(&server.addr, Some(VIEWER), id, 60);
    assert_eq!(run["state"], "done", "{run}");
    assert_eq!(run["host"], "h2");
    assert!(run["samples"].as_u64().unwrap_or(0) > 50, "{run}");
    let (_, v) = json_req(
        &server.addr,
        "GET",
        &format!("/api/v1/labels/host?profiler=cpu&since=10m&filter=run%3D{id}"),
        Some(VIEWER),
        "",
    );
    let hosts: Vec<&str> = v["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(|x| x["value"].as_str())
        .collect();
    assert_eq!(hosts, vec!["h2"], "the run's samples come from h2 only");
    let top = eventually(20, "the run's stacks to be named", || {
        let (_, top) = json_req(
            &server.addr,
            "GET",
            &format!("/api/v1/top?profiler=cpu&since=10m&filter=run%3D{id}&limit=50"),
            Some(VIEWER),
            "",
        );
        (self_percent(&top["rows"], "leaf_hot") > 0.0).then_some(top)
    });
    let hot = self_percent(&top["rows"], "leaf_hot");
    let cold = self_percent(&top["rows"], "leaf_cold");
    assert!(
        hot > 2.0 * cold && cold > 0.0,
        "leaf_hot {hot}% vs leaf_cold {cold}%"
    );
    // The names came from what an agent uploaded: the symbol and debug sections only, with
    // no code (`.text` is NOBITS), uploaded once for three hosts.
    let split_bin = workload("split");
    let split_id = build_id_of(&split_bin);
    let stored = dir.join("data/debuginfo").join(&split_id);
    let headers = String::from_utf8(
        Command::new("readelf")
            .arg("-SW")
            .arg(&stored)
            .output()
            .expect("readelf")
            .stdout,
    )
    .expect("utf8");
    let text = headers
        .lines()
        .find(|l| l.contains(" .text "))
        .unwrap_or_else(|| panic!("no .text header in the upload:\n{headers}"));
    assert!(text.contains("NOBITS"), "{text}");
    assert!(headers.contains(".symtab"), "{headers}");
    assert!(
        std::fs::metadata(&stored).expect("stored").len()
            < std::fs::metadata(&split_bin).expect("split").len()
    );
    let uploaders = agents
        .iter()
        .filter(|a| a.proc.text().contains(&format!("({split_id})")))
        .count();
    assert_eq!(uploaders, 1, "one agent of three uploads a build ID");
    // The UI, with the token in its URL fragment (kept in localStorage, sent as a bearer).
    let dom = chromium_dom(&format!("http://{}/?since=15m#token={VIEWER}", server.addr));
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never loaded its data"
    );
    assert!(
        dom.contains("leaf_hot"),
        "the flame graph lacks the run's hot function"
    );
    let dom = chromium_dom(&format!("http://{}/?since=15m", server.addr));
    assert!(
        !dom.contains("data-loaded=\"1\""),
        "the page loaded data with no token"
    );
    assert!(
        dom.contains("token-input"),
        "the page asks for a token after a 401"
    );
    // The Fleet page: every agent with its overhead against its budget (measured every 30 s)
    // and its write budgets; a viewer is offered no run button and no force switch.
    eventually(70, "every agent to report its overhead", || {
        let (_, v) = json_req(&server.addr, "GET", "/api/v1/hosts", Some(VIEWER), "");
        let hosts = v["hosts"].as_array()?;
        (hosts.len() == 3 && hosts.iter().all(|h| h["health"]["overhead"].is_object()))
            .then_some(())
    });
    crate::ui::drive(
        "fleet",
        &server.addr,
        &serde_json::json!({ "token": VIEWER, "names": ["h1", "h2", "h3"], "hosts": 3 }),
    );
    crate::ui::drive(
        "viewer",
        &server.addr,
        &serde_json::json!({ "token": VIEWER }),
    );
    assert!(agents[1].proc.text().contains(&format!("run {id} (cpu")));
    assert!(!agents[0].proc.text().contains(&format!("run {id} (cpu")));
    assert!(!agents[2].proc.text().contains(&format!("run {id} (cpu")));
    // A run for a host that does not exist is refused.
    let body = r#"{"profiler":"cpu","target":"pid:1","duration":"1s","host":"nope"}"#;
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", Some(OPERATOR), body);
    assert_eq!(code, 400, "{v}");
    // A long run on h1, then every agent dies: the hosts are gone and the run fails so.
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"60s","host":"h1"}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", Some(OPERATOR), &body);
    assert_eq!(code, 201, "{v}");
    let long = v["id"].as_u64().expect("id");
    eventually(20, "the long run to be running", || {
        let (_, r) = json_req(
            &server.addr,
            "GET",
            &format!("/api/v1/runs/{long}"),
            Some(VIEWER),
            "",
        );
        (r["state"] == "running").then_some(())
    });
    drop(agents);
    eventually(30, "hosts gone after their agents died", || {
        let (_, v) = json_req(&server.addr, "GET", "/api/v1/hosts", Some(VIEWER), "");
        v["hosts"]
            .as_array()?
            .iter()
            .all(|h| h["state"] == "gone")
            .then_some(())
    });
    let run = wait_run(&server.addr, Some(VIEWER), long, 10);
    assert_eq!(run["state"], "failed", "{run}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap_or("")
            .contains("host h1 is gone"),
        "{run}"
    );
    let _ = split.kill();
    let _ = split.wait();
}

/// The GNU build ID of an ELF file, as `readelf -n` prints it.
fn build_id_of(bin: &Path) -> String {
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
fn agent_totals(a: &Agent) -> (u64, u64, u64, u64) {
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

/// The server is down for 30 s while two agents profile, and one of them restarts during the
/// outage; once the server is back, every sample row the agents produced is stored, exactly
/// once, the restarted agent's included (it resumes from its disk buffer).
#[test]
fn server_outage_loses_nothing() {
    require_root();
    let dir = scratch("fleet-outage");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.join("data");
    let server = start_server(&data, &listen, &["--insecure-local"]);
    let url = format!("http://{listen}");
    let mut split = spawn_split("120");
    let flags = ["--frequency", "99", "--drain-timeout", "2s"];
    let start = |h: &str| start_agent(h, &url, &dir.join(format!("buf-{h}")), &flags, None);
    let mut agents: Vec<Agent> = vec![start("o1"), start("o2")];
    for a in &agents {
        eventually(30, "a first batch shipped", || {
            (metric(&a.metrics, "baton_agent_samples_shipped_total") > 0.0).then_some(())
        });
    }
    drop(server);
    let down = Instant::now();
    // While it is down, batches wait on disk; o2 restarts with what it buffered.
    std::thread::sleep(Duration::from_secs(12));
    let earlier;
    {
        let o2 = &mut agents[1];
        o2.proc.signal(libc::SIGTERM);
        assert!(o2.proc.wait_exit(60).success());
        let (p, s, d, left) = agent_totals(o2);
        assert_eq!(d, 0);
        assert!(left >= 5, "o2 left its batches on disk: {left}");
        earlier = (p, s);
    }
    agents[1] = start("o2");
    assert!(agents[1]
        .proc
        .wait_line("from before; sending them first", 10)
        .contains("batch"));
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    for a in &agents {
        assert!(metric(&a.metrics, "baton_agent_buffer_batches") >= 5.0);
        assert!(metric(&a.metrics, "baton_agent_send_errors_total") > 0.0);
    }
    let server = start_server(&data, &listen, &["--insecure-local"]);
    eprintln!("server was down for {:.1}s", down.elapsed().as_secs_f64());
    for a in &agents {
        eventually(60, "the buffer to drain", || {
            (metric(&a.metrics, "baton_agent_buffer_batches") == 0.0).then_some(())
        });
    }
    // Stop the agents: each ships its last window, then reports its totals.
    let (mut produced, mut shipped) = earlier;
    for a in &mut agents {
        a.proc.signal(libc::SIGTERM);
        assert!(a.proc.wait_exit(60).success());
        let (p, s, d, left) = agent_totals(a);
        assert_eq!(d, 0, "nothing dropped");
        assert_eq!(left, 0, "nothing left on disk");
        produced += p;
        shipped += s;
    }
    let _ = split.kill();
    let _ = split.wait();
    assert_eq!(produced, shipped);
    let status = http_json(&server.addr, "/api/v1/status");
    let stored = status["sample_rows"].as_u64().expect("sample_rows");
    eprintln!("produced {produced} sample rows, stored {stored}");
    assert!(produced > 300, "{produced} rows produced");
    assert_eq!(stored, produced, "rows stored = rows the agents produced");
}

/// The server stores into ClickHouse, and ClickHouse is stopped for 20 s while two agents
/// profile at 99 Hz, then started again: the agents' buffers absorb the outage, and the sample
/// rows in ClickHouse equal the rows the agents produced.
#[test]
fn clickhouse_outage_loses_nothing() {
    require_root();
    let dir = scratch("fleet-ch-outage");
    let mut ch = baton_store::testserver::ClickHouseServer::start("outage")
        .unwrap_or_else(|e| panic!("{e}"));
    let store = ch.url("outage");
    let server = start_server(
        &dir.join("data"),
        "127.0.0.1:0",
        &["--insecure-local", "--store", &store],
    );
    assert!(server
        .proc
        .text()
        .contains("store ClickHouse http://127.0.0.1:"));
    let url = format!("http://{}", server.addr);
    let mut split = spawn_split("120");
    let flags = ["--frequency", "99", "--drain-timeout", "2s"];
    let start = |h: &str| start_agent(h, &url, &dir.join(format!("buf-{h}")), &flags, None);
    let mut agents: Vec<Agent> = vec![start("c1"), start("c2")];
    for a in &agents {
        eventually(30, "a first batch shipped", || {
            (metric(&a.metrics, "baton_agent_samples_shipped_total") > 0.0).then_some(())
        });
    }
    ch.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    for a in &agents {
        assert!(metric(&a.metrics, "baton_agent_buffer_batches") >= 3.0);
        assert!(metric(&a.metrics, "baton_agent_send_errors_total") > 0.0);
    }
    assert!(metric(&server.addr, "baton_clickhouse_insert_errors_total") > 0.0);
    ch.restart().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "ClickHouse was down for {:.1}s",
        down.elapsed().as_secs_f64()
    );
    for a in &agents {
        eventually(60, "the buffer to drain", || {
            (metric(&a.metrics, "baton_agent_buffer_batches") == 0.0).then_some(())
        });
    }
    let (mut produced, mut shipped) = (0, 0);
    for a in &mut agents {
        a.proc.signal(libc::SIGTERM);
        assert!(a.proc.wait_exit(60).success());
        let (p, s, d, left) = agent_totals(a);
        assert_eq!((d, left), (0, 0), "nothing dropped or left on disk");
        produced += p;
        shipped += s;
    }
    let _ = split.kill();
    let _ = split.wait();
    assert_eq!(produced, shipped);
    let stored = ch
        .count("SELECT count() FROM outage.samples_local")
        .expect("a count");
    eprintln!("produced {produced} sample rows, stored {stored} in ClickHouse");
    assert!(produced > 300, "{produced} rows produced");
    assert_eq!(stored, produced, "rows stored = rows the agents produced");
    let status = http_json(&server.addr, "/api/v1/status");
    assert_eq!(status["sample_rows"].as_u64(), Some(stored));
}

/// A slow ClickHouse (the process stopped with SIGSTOP for 15 s) slows ingest: the server's
/// queue stays within its bound and answers 503 past it, the agents' disk buffers absorb the
/// rest, and once ClickHouse goes on every row is stored.
#[test]
fn a_slow_clickhouse_fills_the_agents_buffers_not_the_server() {
    require_root();
    let dir = scratch("fleet-ch-slow");
    let ch =
        baton_store::testserver::ClickHouseServer::start("slow").unwrap_or_else(|e| panic!("{e}"));
    let store = ch.url("slow");
    let server = start_server(
        &dir.join("data"),
        "127.0.0.1:0",
        // One batch at a time: an agent sends its next batch only after the answer to the
        // last, so with two agents the second is refused while the first waits on the store.
        &[
            "--insecure-local",
            "--store",
            &store,
            "--ingest-queue-rows",
            "1",
        ],
    );
    let url = format!("http://{}", server.addr);
    let mut split = spawn_split("120");
    let flags = ["--frequency", "99", "--drain-timeout", "2s"];
    let start = |h: &str| start_agent(h, &url, &dir.join(format!("buf-{h}")), &flags, None);
    let mut agents: Vec<Agent> = vec![start("s1"), start("s2")];
    for a in &agents {
        eventually(30, "a first batch shipped", || {
            (metric(&a.metrics, "baton_agent_samples_shipped_total") > 0.0).then_some(())
        });
    }
    let pid = ch.pid().expect("pid").to_string();
    let sig = |s: &str| {
        assert!(Command::new("kill")
            .args([s, &pid])
            .status()
            .expect("kill")
            .success());
    };
    sig("-STOP");
    let mut peak = 0.0f64;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(metric(&server.addr, "baton_ingest_queue_rows"));
    }
    let rejected = metric(&server.addr, "baton_ingest_queue_rejected_total");
    let buffered: f64 = agents
        .iter()
        .map(|a| metric(&a.metrics, "baton_agent_buffer_batches"))
        .sum();
    sig("-CONT");
    eprintln!("queue peak {peak} rows, {rejected} ingests refused, {buffered} batches buffered by the agents");
    // One batch is taken past the bound when nothing waits.
    assert!(peak <= 1.0 + 2000.0, "the queue held {peak} rows");
    assert!(
        rejected > 0.0,
        "no ingest was refused while ClickHouse stood still"
    );
    assert!(
        buffered >= 2.0,
        "{buffered} batches waited on the agents' disks"
    );
    for a in &agents {
        eventually(90, "the buffer to drain", || {
            (metric(&a.metrics, "baton_agent_buffer_batches") == 0.0).then_some(())
        });
    }
    let (mut produced, mut shipped) = (0, 0);
    for a in &mut agents {
        a.proc.signal(libc::SIGTERM);
        assert!(a.proc.wait_exit(60).success());
        let (p, s, d, left) = agent_totals(a);
        assert_eq!((d, left), (0, 0), "nothing dropped or left on disk");
        produced += p;
        shipped += s;
    }
    let _ = split.kill();
    let _ = split.wait();
    assert_eq!(produced, shipped);
    let stored = ch
        .count("SELECT count() FROM slow.samples_local")
        .expect("a count");
    eprintln!("produced {produced} sample rows, stored {stored}");
    assert_eq!(stored, produced, "rows stored = rows the agents produced");
    // Every batch went through the writer (grouping is tested with the queue itself).
    assert!(metric(&server.addr, "baton_store_write_batches_total") >= 2.0);
}

/// The run history is in the store: a run that ended is still listed, with its state, by a new
/// server process on the same ClickHouse, and run ids go on after it.
#[test]
fn run_history_outlives_the_server_on_clickhouse() {
    require_root();
    let dir = scratch("fleet-history");
    let ch = baton_store::testserver::ClickHouseServer::start("history")
        .unwrap_or_else(|e| panic!("{e}"));
    let store = ch.url("history");
    let listen = format!("127.0.0.1:{}", free_port());
    let server = start_server(
        &dir.join("data"),
        &listen,
        &["--insecure-local", "--store", &store],
    );
    let url = format!("http://{}", server.addr);
    let _agent = start_agent("r1", &url, &dir.join("buf"), &[], None);
    let mut split = spawn_split("30");
    let spawned = Instant::now();
    eventually(20, "host r1 up", || {
        let v = http_json(&server.addr, "/api/v1/hosts");
        (v["hosts"].as_array()?.len() == 1).then_some(())
    });
    // The run starts within milliseconds of the request: give split a second to be in its loop,
    // or the page's first tick may be in the dynamic loader.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(spawned.elapsed()));
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"1s","frequency":99}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    let run = wait_run(&server.addr, None, id, 30);
    assert_eq!(run["state"], "done", "{run}");
    // The run's CPU samples travelled as timeline spans too (in the wire format's spans
    // comment) and ClickHouse answers the timeline: ticks on split's thread, each with a stack
    // through leaf_hot or leaf_cold.
    let tl = eventually(20, "timeline spans of split on ClickHouse", || {
        let v = http_json(
            &server.addr,
            &format!("/api/v1/timeline?since=5m&filter=pid%3D{}", split.id()),
        );
        (v["spans"].as_array()?.len() >= 50).then_some(v)
    });
    let spans = tl["spans"].as_array().expect("spans");
    let leafy = spans
        .iter()
        .filter(|sp| {
            sp["kind"] == "cpu"
                && sp["tid"] == split.id()
                && sp["stack"].as_str().is_some_and(|k| {
                    tl["stacks"][k]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|n| n == "leaf_hot" || n == "leaf_cold"))
                })
        })
        .count();
    eprintln!(
        "timeline on ClickHouse: {} spans, {leafy} CPU ticks in a leaf",
        spans.len()
    );
    assert!(
        leafy * 10 >= spans.len() * 9,
        "{leafy} of {} spans are split's CPU ticks with a leaf in their stack",
        spans.len()
    );
    // The run's times are the agent's: its own ticks lie between them (a heartbeat's arrival
    // would start it up to a heartbeat late).
    // Its ticks are those of 99 Hz (10.1 ms); whole-host profiling's are of 19 Hz.
    let starts: Vec<u64> = spans
        .iter()
        .filter(|sp| sp["dur_us"].as_u64().is_some_and(|d| d < 20_000))
        .filter_map(|sp| sp["start_us"].as_u64())
        .map(|us| us / 1000)
        .collect();
    let (first, last) = (
        *starts.iter().min().expect("the run's spans"),
        *starts.iter().max().expect("the run's spans"),
    );
    let (from, to) = (
        run["started_at_ms"].as_u64().expect("started"),
        run["ended_at_ms"].as_u64().expect("ended"),
    );
    eprintln!(
        "run {id}: {} ticks from {} to {} ms after its recorded start; it ended at {} ms",
        starts.len(),
        first as i64 - from as i64,
        last as i64 - from as i64,
        to - from
    );
    assert!(
        from <= first && last <= to,
        "run {id} held [{from}, {to}] but its ticks span [{first}, {last}]"
    );
    // And the Timeline page shows them, for this host.
    crate::ui::drive(
        "fleettimeline",
        &server.addr,
        &serde_json::json!({ "pid": split.id(), "host": "r1" }),
    );
    // Recorded within 2 s of ending.
    std::thread::sleep(Duration::from_secs(3));
    drop(server);
    let server = start_server(
        &dir.join("data2"),
        &listen,
        &["--insecure-local", "--store", &store],
    );
    let (code, again) = json_req(&server.addr, "GET", &format!("/api/v1/runs/{id}"), None, "");
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["state"], "done", "{again}");
    assert_eq!(again["samples"], run["samples"], "{again}");
    let list = http_json(&server.addr, "/api/v1/runs");
    assert!(
        list["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .any(|r| r["id"] == id),
        "{list}"
    );
    // The agent comes back to the new server; a new run gets the next id.
    eventually(30, "host r1 up again", || {
        let v = http_json(&server.addr, "/api/v1/hosts");
        (v["hosts"].as_array()?.len() == 1).then_some(())
    });
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    assert!(v["id"].as_u64().expect("id") > id, "{v}");
    let _ = split.kill();
    let _ = split.wait();
}

/// An agent killed with SIGKILL mid-run leaves no BPF program behind, and once it restarts the
/// server marks its run failed with the reason.
#[test]
fn agent_killed_mid_run() {
    require_root();
    let dir = scratch("fleet-kill");
    let server = start_server(&dir.join("data"), "127.0.0.1:0", &["--insecure-local"]);
    let url = format!("http://{}", server.addr);
    let mut agent = start_agent("k1", &url, &dir.join("buf"), &[], None);
    let mut split = spawn_split("60");
    eventually(20, "host k1 up", || {
        let v = http_json(&server.addr, "/api/v1/hosts");
        (v["hosts"].as_array()?.len() == 1).then_some(())
    });
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"60s"}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    eventually(20, "the run to be running", || {
        let (_, r) = json_req(&server.addr, "GET", &format!("/api/v1/runs/{id}"), None, "");
        (r["state"] == "running").then_some(())
    });
    let pid = agent.proc.child.id();
    let progs = bpf_prog_ids_of(pid);
    assert!(!progs.is_empty(), "the agent holds BPF programs");
    agent.proc.signal(libc::SIGKILL);
    agent.proc.wait_exit(10);
    let restarted = start_agent("k1", &url, &dir.join("buf"), &[], None);
    eventually(10, "the killed agent's programs to be gone", || {
        progs.iter().all(|p| !bpf_prog_loaded(*p)).then_some(())
    });
    let listed = Command::new("bpftool")
        .args(["prog", "list", "--json"])
        .output()
        .expect("bpftool");
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("bpftool json");
    for p in list.as_array().expect("list") {
        let id = p["id"].as_u64().unwrap_or(0) as u32;
        assert!(
            !progs.contains(&id),
            "program {id} of the killed agent is still loaded: {p}"
        );
    }
    let run = wait_run(&server.addr, None, id, 30);
    assert_eq!(run["state"], "failed", "{run}");
    let reason = run["reason"].as_str().unwrap_or("");
    assert!(reason.contains("restarted"), "{reason}");
    let _ = split.kill();
    let _ = split.wait();
    drop(restarted);
}

/// Samples of a binary whose debug info reaches the server only later show as `module+0xoff`,
/// then get their names when it arrives, with no re-ingest.
#[test]
fn late_symbols() {
    require_root();
    let dir = scratch("fleet-late");
    let server = start_server(&dir.join("data"), "127.0.0.1:0", &["--insecure-local"]);
    let url = format!("http://{}", server.addr);
    // A copy of the workload under a name of its own: no other test uploads it.
    let bin = dir.join("late-split");
    std::fs::copy(workload("split"), &bin).expect("copy");
    let _agent = start_agent(
        "l1",
        &url,
        &dir.join("buf"),
        &["--no-debuginfo-upload"],
        None,
    );
    let mut split = Command::new(&bin).arg("20").spawn().expect("start");
    eventually(20, "host l1 up", || {
        let v = http_json(&server.addr, "/api/v1/hosts");
        (v["hosts"].as_array()?.len() == 1).then_some(())
    });
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"2s","frequency":99}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    assert_eq!(wait_run(&server.addr, None, id, 30)["state"], "done");
    let top_of_run = || {
        let (_, top) = json_req(
            &server.addr,
            "GET",
            &format!("/api/v1/top?profiler=cpu&since=10m&filter=run%3D{id}&limit=50"),
            None,
            "",
        );
        top["rows"].clone()
    };
    let before = eventually(20, "the run's samples", || {
        let rows = top_of_run();
        (!rows.as_array()?.is_empty()).then_some(rows)
    });
    let names: Vec<&str> = before
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["function"].as_str())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("[unknown] late-split+0x")),
        "unsymbolized frames show module+offset: {names:?}"
    );
    assert!(!names.contains(&"leaf_hot"));
    // The debug info arrives.
    let build_id = build_id_of(&bin);
    let elf = std::fs::read(&bin).expect("read");
    let (code, out) = http_req(
        &server.addr,
        "PUT",
        &format!("/api/v1/debuginfo/{build_id}"),
        None,
        &elf,
    );
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
    // A file under the wrong build ID is refused.
    let (code, _) = http_req(
        &server.addr,
        "PUT",
        "/api/v1/debuginfo/00112233445566778899",
        None,
        &elf,
    );
    assert_eq!(code, 400);
    let after = eventually(30, "the old samples to get their names", || {
        let rows = top_of_run();
        (self_percent(&rows, "leaf_hot") > 0.0).then_some(rows)
    });
    let hot = self_percent(&after, "leaf_hot");
    let cold = self_percent(&after, "leaf_cold");
    assert!(
        (60.0..90.0).contains(&(100.0 * hot / (hot + cold))),
        "hot {hot} cold {cold}"
    );
    assert!(metric(&server.addr, "baton_symbols_late_total") > 0.0);
    let _ = split.kill();
    let _ = split.wait();
}

/// A debuginfod server (here a plain static HTTP server with debuginfod's URL layout) supplies
/// the debug info of a binary no agent uploaded.
#[test]
fn debuginfod_supplies_symbols() {
    require_root();
    let dir = scratch("fleet-debuginfod");
    // A build of the workload with a build ID of its own.
    let build_id = format!("{:08x}{:032x}", std::process::id(), 0xba70_u128);
    let bin = dir.join("dbgd-split");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/workloads/split.c");
    let st = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            &format!("-Wl,--build-id=0x{build_id}"),
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("clang");
    assert!(st.success());
    let served = dir.join("srv/buildid").join(&build_id);
    std::fs::create_dir_all(&served).expect("mkdir");
    std::fs::copy(&bin, served.join("debuginfo")).expect("copy");
    let port = free_port();
    let _debuginfod = Proc::spawn(
        "debuginfod",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir.join("srv")),
    );
    let server = start_server(
        &dir.join("data"),
        "127.0.0.1:0",
        &[
            "--insecure-local",
            "--debuginfod",
            &format!("http://127.0.0.1:{port}"),
        ],
    );
    let url = format!("http://{}", server.addr);
    let _agent = start_agent(
        "d1",
        &url,
        &dir.join("buf"),
        &["--no-debuginfo-upload"],
        None,
    );
    let mut split = Command::new(&bin).arg("20").spawn().expect("start");
    eventually(20, "host d1 up", || {
        let v = http_json(&server.addr, "/api/v1/hosts");
        (v["hosts"].as_array()?.len() == 1).then_some(())
    });
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{}","duration":"2s","frequency":99}}"#,
        split.id()
    );
    let (code, v) = json_req(&server.addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    assert_eq!(wait_run(&server.addr, None, id, 30)["state"], "done");
    eventually(30, "names from debuginfod", || {
        let (_, top) = json_req(
            &server.addr,
            "GET",
            &format!("/api/v1/top?profiler=cpu&since=10m&filter=run%3D{id}&limit=50"),
            None,
            "",
        );
        (self_percent(&top["rows"], "leaf_hot") > 0.0).then_some(())
    });
    assert!(
        dir.join("data/debuginfo").join(&build_id).is_file(),
        "the download is kept"
    );
    let _ = split.kill();
    let _ = split.wait();
}

/// Tokens and roles: a bad token gets 401, a viewer cannot start a run, an operator cannot
/// force one, an admin can, and the audit log has the forced run and the failed auth. The
/// server speaks TLS (rustls) and the agent and CLI trust its CA.
#[test]
fn auth_roles_audit_and_tls() {
    require_root();
    let dir = scratch("fleet-auth");
    let tokens = tokens_file(&dir);
    let (cert, key, ca) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    // A private CA and a server certificate it signed, as a real deployment has.
    let script = format!(
        "cd {d} && \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
           -subj /CN=baton-test-ca -keyout ca.key -out ca.pem && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
           -keyout key.pem -out req.csr && \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
         openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
           -extfile ext.cnf -out cert.pem",
        d = dir.display()
    );
    let st = Command::new("sh")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl could not make the test certificates");
    let data = dir.join("data");
    let server = start_server(
        &data,
        "127.0.0.1:0",
        &[
            "--auth",
            tokens.to_str().expect("p"),
            "--tls-cert",
            cert.to_str().expect("p"),
            "--tls-key",
            key.to_str().expect("p"),
        ],
    );
    assert!(server.proc.text().contains("https://"));
    let url = format!(
        "https://localhost:{}",
        server.addr.rsplit(':').next().expect("port")
    );
    let ca = ca.to_str().expect("p");
    let agent_token = dir.join("agent.token");
    let _agent = start_agent(
        "a1",
        &url,
        &dir.join("buf"),
        &[
            "--token-file",
            agent_token.to_str().expect("p"),
            "--ca-file",
            ca,
        ],
        None,
    );
    let curl = |token: Option<&str>, method: &str, path: &str, body: &str| -> (u16, String) {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
            ca,
            "-X",
            method,
        ]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if !body.is_empty() {
            c.args(["-H", "content-type: application/json", "-d", body]);
        }
        let out = c.arg(format!("{url}{path}")).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').expect("code line");
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    eventually(30, "host a1 up over TLS", || {
        let (code, body) = curl(Some(VIEWER), "GET", "/api/v1/hosts", "");
        (code == 200 && body.contains("\"a1\"")).then_some(())
    });
    assert_eq!(curl(None, "GET", "/api/v1/status", "").0, 401);
    assert_eq!(
        curl(Some("wrong-token-0123456789"), "GET", "/api/v1/top", "").0,
        401
    );
    assert_eq!(curl(Some(AGENT), "GET", "/api/v1/top", "").0, 403);
    let run = r#"{"profiler":"cpu","target":"comm:nothing-here","duration":"1s"}"#;
    assert_eq!(curl(Some(VIEWER), "POST", "/api/v1/runs", run).0, 403);
    let forced = r#"{"profiler":"cpu","target":"comm:nothing-here","duration":"1s","force":true}"#;
    assert_eq!(curl(Some(OPERATOR), "POST", "/api/v1/runs", forced).0, 403);
    let (code, body) = curl(Some(ADMIN), "POST", "/api/v1/runs", forced);
    assert_eq!(code, 201, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = id["id"].as_u64().expect("id");
    assert_eq!(curl(Some(OPERATOR), "POST", "/api/v1/runs", run).0, 201);
    // Plain HTTP to the TLS port gets no answer.
    let plain = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/api/v1/status", server.addr))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
    // The CLI takes --server, --token-file and --ca-file.
    let token = dir.join("viewer.token");
    std::fs::write(&token, VIEWER).expect("token");
    let out = run_cli(&[
        "hosts",
        "--server",
        &url,
        "--token-file",
        token.to_str().expect("p"),
        "--ca-file",
        ca,
    ]);
    assert!(out.contains("a1"), "{out}");
    let audit = std::fs::read_to_string(data.join("audit.log")).expect("audit log");
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "forced_run" && e["run"] == id && e["who"] == "ada"),
        "{audit}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "auth_failed"),
        "{audit}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "run" && e["who"] == "olga"),
        "{audit}"
    );
}

fn run_cli(args: &[&str]) -> String {
    let out = run(baton().args(args));
    assert!(out.status.success(), "baton {args:?} failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// pprof from another producer (Go's runtime profiler, and the same file re-written by
/// `go tool pprof -proto`) is accepted with labels from the query and can be queried; a batch
/// id stores a batch once; a malformed upload is refused and counted.
#[test]
fn foreign_pprof_is_accepted() {
    let dir = scratch("fleet-foreign");
    let server = start_server(&dir.join("data"), "127.0.0.1:0", &["--insecure-local"]);
    let src = dir.join("burn.go");
    std::fs::write(
        &src,
        r#"package main

import (
	"os"
	"runtime/pprof"
	"time"
)

//go:noinline
func burnGo(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i * i % 7
	}
	return s
}

func main() {
	f, _ := os.Create(os.Args[1])
	pprof.StartCPUProfile(f)
	end := time.Now().Add(1500 * time.Millisecond)
	x := 0
	for time.Now().Before(end) {
		x += burnGo(100000)
	}
	pprof.StopCPUProfile()
	f.Close()
	if x == 42 {
		println(x)
	}
}
"#,
    )
    .expect("write go");
    let prof = dir.join("go-cpu.pb.gz");
    let st = Command::new("go")
        .arg("run")
        .arg(&src)
        .arg(&prof)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPROXY", "off")
        .status()
        .expect("go (scripts/install-deps.sh installs golang-go)");
    assert!(st.success(), "go run failed");
    let bytes = std::fs::read(&prof).expect("profile");
    let (code, out) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?profiler=go-cpu&service=checkout&host=go1&batch_id=go-1",
        None,
        &bytes,
    );
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
    let (code, out) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?profiler=go-cpu&service=checkout&host=go1&batch_id=go-1",
        None,
        &bytes,
    );
    assert_eq!(code, 200, "a second copy is acknowledged, not stored");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["duplicate"], true);
    let top = http_json(
        &server.addr,
        "/api/v1/top?profiler=go-cpu&value=cpu&since=1h&filter=service%3Dcheckout&limit=20",
    );
    assert!(
        self_percent(&top["rows"], "main.burnGo") > 50.0,
        "{}",
        top["rows"]
    );
    assert_eq!(top["unit"], "nanoseconds");
    // The same profile as `go tool pprof -proto` writes it.
    let out = Command::new("go")
        .args(["tool", "pprof", "-proto"])
        .arg(&prof)
        .output()
        .expect("go tool pprof");
    assert!(out.status.success());
    let (code, _) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?profiler=go-cpu&host=go2",
        None,
        &out.stdout,
    );
    assert_eq!(code, 201);
    let hosts = http_json(&server.addr, "/api/v1/labels/host?profiler=go-cpu&since=1h");
    assert_eq!(hosts["values"].as_array().map(Vec::len), Some(2), "{hosts}");
    // Malformed uploads are refused and counted.
    let refused = metric(&server.addr, "baton_ingest_refused_batches_total");
    let (code, out) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest",
        None,
        b"\x1f\x8b\x08garbage",
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&out));
    let (code, _) = http_req(
        &server.addr,
        "POST",
        "/api/v1/ingest?Bad-Label=1",
        None,
        &bytes,
    );
    assert_eq!(code, 400);
    assert_eq!(
        metric(&server.addr, "baton_ingest_refused_batches_total"),
        refused + 2.0
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
