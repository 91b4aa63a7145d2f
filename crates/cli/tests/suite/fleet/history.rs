//! The run history lives in the store and outlives the server process.

use std::time::Duration;
use std::time::Instant;

use crate::harness::fleet::*;
use crate::harness::*;

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
