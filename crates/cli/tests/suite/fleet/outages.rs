//! Outages lose nothing: the server down, ClickHouse down, and a slow ClickHouse.

use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use crate::harness::fleet::*;
use crate::harness::*;

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

/// Unmounts a test's tmpfs when dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The agent's buffer is a 64 KiB tmpfs and the server is down: the disk fills, each batch that
/// does not fit is dropped and counted, and the agent goes on. Once the server is back, what
/// was buffered is stored: produced = shipped + dropped, the server holds every shipped row, and
/// no partial file is left behind.
#[test]
fn a_full_buffer_disk_drops_and_counts_what_it_cannot_keep() {
    require_root();
    let dir = scratch("fleet-full-disk");
    let buf = dir.join("buf");
    std::fs::create_dir_all(&buf).expect("buffer dir");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&buf)
        .status()
        .expect("mount");
    assert!(st.success(), "mounting a tmpfs at {} failed", buf.display());
    let _mounted = Tmpfs(buf.clone());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.join("data");
    let server = start_server(&data, &listen, &["--insecure-local"]);
    let url = format!("http://{listen}");
    let mut split = spawn_split("120");
    let flags = [
        "--frequency",
        "99",
        "--drain-timeout",
        "5s",
        "--buffer-max",
        "1GiB",
    ];
    let mut agent = start_agent("f1", &url, &buf, &flags, None);
    eventually(30, "a first batch shipped", || {
        (metric(&agent.metrics, "baton_agent_samples_shipped_total") > 0.0).then_some(())
    });
    drop(server);
    eventually(90, "batches dropped for the full disk", || {
        (metric(&agent.metrics, "baton_agent_samples_dropped_total") > 0.0).then_some(())
    });
    let server = start_server(&data, &listen, &["--insecure-local"]);
    eventually(60, "the buffer to drain", || {
        (metric(&agent.metrics, "baton_agent_buffer_batches") == 0.0).then_some(())
    });
    agent.proc.signal(libc::SIGTERM);
    assert!(agent.proc.wait_exit(60).success());
    let (produced, shipped, dropped, left) = agent_totals(&agent);
    let _ = split.kill();
    let _ = split.wait();
    eprintln!("produced {produced}, shipped {shipped}, dropped {dropped}, {left} batches left");
    assert!(dropped > 0);
    assert_eq!(left, 0);
    assert_eq!(produced, shipped + dropped, "a loss was not counted");
    let stored = http_json(&server.addr, "/api/v1/status")["sample_rows"]
        .as_u64()
        .expect("sample_rows");
    assert_eq!(stored, shipped, "rows stored = rows shipped");
    let partial: Vec<_> = std::fs::read_dir(&buf)
        .expect("buffer")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(partial.is_empty(), "partial files left: {partial:?}");
}
