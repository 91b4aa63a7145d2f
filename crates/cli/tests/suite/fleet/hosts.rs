//! Several hosts: three agents in their own network namespaces, and an agent killed mid-run.

use std::process::Command;

use crate::harness::fleet::*;
use crate::harness::*;

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
