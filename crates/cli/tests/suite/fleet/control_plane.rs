//! The control plane survives: a server killed with runs queued resumes them from its store,
//! and of two servers sharing one ClickHouse, the one left takes the control plane over when
//! the other is killed, with no run lost.

use std::time::{Duration, Instant};

use baton_store::testserver::ClickHouseServer;

use crate::harness::fleet::*;
use crate::harness::*;

/// Submits a CPU run of `secs` on `host`'s `pid`; returns its id.
fn submit(addr: &str, host: &str, pid: u32, secs: u64) -> u64 {
    let body = format!(
        r#"{{"profiler":"cpu","target":"pid:{pid}","duration":"{secs}s","frequency":99,"host":"{host}"}}"#
    );
    let (code, v) = json_req(addr, "POST", "/api/v1/runs", None, &body);
    assert_eq!(code, 201, "{v}");
    v["id"].as_u64().expect("id")
}

/// Hosts up, as the server holding the control plane sees them (None from another server).
fn hosts_up(addr: &str) -> Option<Vec<String>> {
    let (code, v) = json_req(addr, "GET", "/api/v1/hosts", None, "");
    if code != 200 {
        return None;
    }
    let mut up: Vec<String> = v["hosts"]
        .as_array()?
        .iter()
        .filter(|h| h["state"] == "up")
        .filter_map(|h| h["host"].as_str().map(str::to_string))
        .collect();
    up.sort();
    Some(up)
}

/// Three runs queued, the server killed with `kill -9` and started again on the same data: all
/// three end `done` with samples, and the run that had ended before is still listed.
#[test]
fn a_restarted_server_resumes_its_queue() {
    require_root();
    let dir = scratch("fleet-restart");
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.join("data");
    let mut server = start_server(&data, &listen, &["--insecure-local"]);
    let url = format!("http://{listen}");
    let _agent = start_agent("r1", &url, &dir.join("buf"), &[], None);
    let mut split = spawn_split("120");
    eventually(20, "host r1 up", || {
        (hosts_up(&listen)? == ["r1"]).then_some(())
    });
    let before = submit(&listen, "r1", split.id(), 1);
    let r = wait_run(&listen, None, before, 30);
    assert_eq!(r["state"], "done", "{r}");
    // Three runs of 4 s: the host runs one CPU run at a time, so they take 12 s.
    let ids: Vec<u64> = (0..3)
        .map(|_| submit(&listen, "r1", split.id(), 4))
        .collect();
    server.proc.signal(libc::SIGKILL);
    let _ = server.proc.wait_exit(10);
    eprintln!("server killed with runs {ids:?} queued");
    std::thread::sleep(Duration::from_secs(2));
    let server = start_server(&data, &listen, &["--insecure-local"]);
    server.proc.wait_line("holding the control plane", 20);
    for id in &ids {
        let r = wait_run(&listen, None, *id, 60);
        assert_eq!(r["state"], "done", "run {id} after the restart: {r}");
        assert!(
            r["samples"].as_u64().unwrap_or(0) > 100,
            "run {id} has its samples: {r}"
        );
    }
    // The run list of the new process still has the run that ended before the kill.
    let out = run_cli(&["runs", "list", "--server", &url, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let listed: Vec<u64> = v["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    for id in std::iter::once(before).chain(ids.iter().copied()) {
        assert!(listed.contains(&id), "run {id} is listed: {listed:?}");
    }
    let _ = split.kill();
    let _ = split.wait();
}

/// Two servers share one ClickHouse and an etcd; agents are split between them. Either answers
/// queries with every host's samples; one holds the control plane and the other points to it.
/// Killed, the holder's runs go on under the other, which takes over within the host timeout.
#[test]
fn two_servers_share_one_clickhouse_and_fail_over() {
    require_root();
    let dir = scratch("fleet-two");
    let ch = ClickHouseServer::start("two").unwrap_or_else(|e| panic!("{e}"));
    let etcd = start_etcd(&dir);
    let store = ch.url("two");
    let (la, lb) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let start = |name: &str, listen: &str| {
        start_server(
            &dir.join(name),
            listen,
            &[
                "--insecure-local",
                "--store",
                &store,
                "--etcd",
                &etcd.url,
                "--advertise",
                &format!("http://{listen}"),
            ],
        )
    };
    let a = start("a", &la);
    let b = start("b", &lb);
    let (ua, ub) = (format!("http://{la}"), format!("http://{lb}"));
    let _x = start_agent("x", &format!("{ua},{ub}"), &dir.join("bx"), &[], None);
    let _y = start_agent("y", &format!("{ub},{ua}"), &dir.join("by"), &[], None);
    // One of them holds the control plane; the other points to it.
    let (leader, other) = eventually(30, "one server holding the control plane", || {
        match (hosts_up(&la), hosts_up(&lb)) {
            (Some(h), None) if h.len() == 2 => Some((la.clone(), lb.clone())),
            (None, Some(h)) if h.len() == 2 => Some((lb.clone(), la.clone())),
            _ => None,
        }
    });
    let (code, v) = json_req(&other, "GET", "/api/v1/hosts", None, "");
    assert_eq!(code, 503, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains(&leader)),
        "the other server names the leader: {v}"
    );
    // Queries on either server see both hosts' samples, whichever server took them.
    for addr in [&la, &lb] {
        eventually(60, "both hosts' samples on each server", || {
            let (_, v) = json_req(
                addr,
                "GET",
                "/api/v1/labels/host?profiler=cpu&since=10m",
                None,
                "",
            );
            let hosts: Vec<&str> = v["values"]
                .as_array()?
                .iter()
                .filter_map(|x| x["value"].as_str())
                .collect();
            (hosts.contains(&"x") && hosts.contains(&"y")).then_some(())
        });
    }
    // Runs on both hosts, then the control plane's server is killed mid-run.
    let mut split = spawn_split("120");
    let ids = [
        submit(&leader, "x", split.id(), 8),
        submit(&leader, "y", split.id(), 8),
        submit(&leader, "x", split.id(), 3),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    if leader == la {
        a.proc.signal(libc::SIGKILL);
    } else {
        b.proc.signal(libc::SIGKILL);
    }
    eprintln!("killed the control plane's server {leader}");
    eventually(
        6 + 4,
        "the other server to take the control plane over",
        || (hosts_up(&other)?.len() == 2).then_some(()),
    );
    let took = killed.elapsed();
    eprintln!("took over in {took:?}");
    assert!(
        took <= Duration::from_secs(6),
        "taking over took {took:?}, over the host timeout of 6 s"
    );
    for id in ids {
        let r = wait_run(&other, None, id, 60);
        assert_eq!(r["state"], "done", "run {id} after the fail-over: {r}");
        assert!(
            r["samples"].as_u64().unwrap_or(0) > 50,
            "run {id} kept its samples: {r}"
        );
    }
    let _ = split.kill();
    let _ = split.wait();
}
