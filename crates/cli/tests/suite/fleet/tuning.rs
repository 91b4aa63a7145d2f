//! The fleet's tuner: a rule's target holds for the whole fleet, not per host; weighted sums
//! estimate true CPU time; a host that joins is absorbed within a period; whole-host profiling
//! stays within a fleet-wide budget of rows as hosts are added. What is stored is read straight
//! from ClickHouse, not through the server.

use std::path::Path;
use std::time::{Duration, Instant};

use baton_store::testserver::ClickHouseServer;

use crate::harness::fleet::*;
use crate::harness::*;

/// The tuner's period in these tests.
const PERIOD_S: u64 = 30;

/// The rule's sampling frequency.
const HZ: f64 = 199.0;

/// The whole-host windows of the budget test, in seconds.
const WINDOW_S: f64 = 3.0;

/// Writes a config tree and returns its directory.
fn config(dir: &Path, text: &str) -> String {
    let c = dir.join("config");
    std::fs::create_dir_all(&c).expect("config dir");
    std::fs::write(c.join("baton.toml"), text).expect("config");
    c.display().to_string()
}

/// (Σ value, Σ value × weight) of CPU samples of `where_` with ts in `[from, to)`, from
/// ClickHouse: CPU nanoseconds, raw and weighted.
fn stored(ch: &ClickHouseServer, db: &str, where_: &str, from: i64, to: i64) -> (f64, f64) {
    let out = ch
        .exec(&format!(
            "SELECT sum(value), sum(value * weight) FROM {db}.samples_local WHERE profiler = 'cpu' \
             AND value_index = 0 AND ts_ms >= {from} AND ts_ms < {to} AND {where_}"
        ))
        .unwrap_or_else(|e| panic!("ClickHouse: {e}"));
    let mut f = out
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    (f.next().unwrap_or(0.0), f.next().unwrap_or(0.0))
}

/// Sample rows of whole-host windows with ts in `[from, to)`.
fn host_rows(ch: &ClickHouseServer, db: &str, from: i64, to: i64) -> u64 {
    ch.count(&format!(
        "SELECT count() FROM {db}.samples_local WHERE profiler = 'cpu' AND value_index = 0 \
         AND service = '' AND ts_ms >= {from} AND ts_ms < {to}"
    ))
    .expect("count")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// The fleet tuner's view of a rule (service, rule index), from `/api/v1/tuner`.
fn tuned(addr: &str, service: &str) -> Option<serde_json::Value> {
    let (code, v) = json_req(addr, "GET", "/api/v1/tuner", Some(VIEWER), "");
    assert_eq!(code, 200, "{v}");
    v["rules"]
        .as_array()?
        .iter()
        .find(|r| r["service"] == service)
        .cloned()
}

/// Starts an agent for host `i` in its namespace, seeing only slice `h{i}` as its processes.
fn agent(i: usize, lan: &Lan, slices: &Slices, url: &str, dir: &Path) -> Agent {
    agent_with(i, lan, slices, url, dir, &[])
}

fn agent_with(
    i: usize,
    lan: &Lan,
    slices: &Slices,
    url: &str,
    dir: &Path,
    extra: &[&str],
) -> Agent {
    let token = dir.join("agent.token");
    let scope = slices.scope(&format!("h{i}"));
    let mut args = vec![
        "--token-file",
        token.to_str().expect("path"),
        "--cgroup-scope",
        &scope,
    ];
    args.extend_from_slice(extra);
    start_agent(
        &format!("h{i}"),
        url,
        &dir.join(format!("buf{i}")),
        &args,
        Some((&lan.spaces[i - 1], &format!("10.77.0.1{i}"))),
    )
}

/// A server on the LAN's bridge, with tokens, storing into `store`, with the config tree `cfg`.
fn server_on(data: &Path, tokens: &Path, store: &str, cfg: &str) -> Server {
    start_server(
        data,
        &format!("10.77.0.1:{}", free_port()),
        &[
            "--auth",
            tokens.to_str().expect("path"),
            "--store",
            store,
            "--config",
            cfg,
        ],
    )
}

/// Waits until `secs` past `since`.
fn sleep_until(since: Instant, secs: u64) {
    let left = Duration::from_secs(secs).saturating_sub(since.elapsed());
    std::thread::sleep(left);
}

/// Three hosts run the same service at 30% of a CPU each; its CPU rule's target is T samples a
/// period. Once tuned, the fleet stores T ± 20% (not 3T), the weighted CPU time is the true
/// CPU time ± 15%, and after a fourth host joins the total is back within ± 20% two periods
/// later.
#[test]
fn a_rules_target_holds_for_the_whole_fleet() {
    require_root();
    let tag = format!("{}", std::process::id() % 10000);
    let dir = scratch("fleet-target");
    let tokens = tokens_file(&dir);
    let ch = ClickHouseServer::start("target").unwrap_or_else(|e| panic!("{e}"));
    let db = "target";
    let lan = Lan::new(&tag, 4);
    let mut slices = Slices::new(&format!("target-{tag}"));
    // One host's run: 1 s at 199 Hz of 30% of a CPU, about 60 samples; a host has 360 slots an
    // hour, so three hosts at p = 1 would store about 64,800 an hour. The target asks for
    // 60% of that: p settles near 0.6, and with a fourth host near 0.45. Four agents share two
    // cores here: the overhead guard is set high so that it never lowers the rule's frequency
    // (that would change the yield under the tuner; the guard has tests of its own).
    let per_hour = 38_880u64;
    let cfg = config(
        &dir,
        &format!(
            "[host]\noverhead_budget_percent = 50.0\n\n[tuner]\ninterval = \"{PERIOD_S}s\"\n\n\
             [services.web]\nselector = {{ comm = \"duty\" }}\n\
             continuous = [{{ profiler = \"cpu\", duration = \"1s\", frequency = 199, \
             target_samples_per_hour = {per_hour} }}]\n"
        ),
    );
    let server = server_on(&dir.join("data"), &tokens, &ch.url(db), &cfg);
    let url = format!("http://{}", server.addr);
    let mut pids: Vec<u32> = (1..=3)
        .map(|i| slices.spawn(&format!("h{i}"), &mut duty(900, 30)))
        .collect();
    let _agents: Vec<Agent> = (1..=3)
        .map(|i| agent(i, &lan, &slices, &url, &dir))
        .collect();
    // The first quick re-tune learns what a run yields, then the period's re-tunes hold it.
    let settled = eventually(150, "the tuner to re-tune twice with 3 hosts", || {
        let r = tuned(&server.addr, "web")?;
        (r["retunes"].as_u64()? >= 2 && r["hosts"].as_u64()? == 3).then_some(r)
    });
    eprintln!("tuned with 3 hosts: {settled}");
    let p3 = settled["probability"].as_f64().expect("p");
    assert!(p3 < 0.95, "the target binds: p = {p3}");

    // Measure four periods: the raw samples stored against the target, and the weighted CPU
    // time against the true one.
    let window = Duration::from_secs(4 * PERIOD_S);
    let target = per_hour as f64 * window.as_secs_f64() / 3600.0;
    let measure = |what: &str, pids: &[u32]| {
        let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
        let from = now_ms();
        std::thread::sleep(window);
        let to = now_ms();
        let cpu = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
        // Let the last runs' batches arrive (runs end, agents ship within a second or two).
        std::thread::sleep(Duration::from_secs(5));
        let (raw_ns, weighted_ns) = stored(&ch, db, "service = 'web'", from, to);
        // A CPU sample's value is its period, 1/199 s: raw samples, and weighted CPU seconds.
        let (raw, estimated_cpu) = (raw_ns * HZ / 1e9, weighted_ns / 1e9);
        eprintln!(
            "{what}: stored {raw:.0} raw samples against a target of {target:.0}; weighted CPU {estimated_cpu:.1} s, true {cpu:.1} s"
        );
        // Four agents, four workloads, ClickHouse and the server share two cores here: what a
        // 1 s run yields and how long its profiler takes to attach move with the load, so one
        // measurement of about 25 runs per host tells the target within 20% and the weighted
        // CPU within 15%. Without the tuner, four hosts would store 2.3 times the target.
        assert!(
            (raw / target - 1.0).abs() <= 0.20,
            "{what}: the fleet stored {raw:.0} samples in {window:?}, target {target:.0} (± 20%)"
        );
        assert!(
            (estimated_cpu / cpu - 1.0).abs() <= 0.15,
            "{what}: weighted CPU {estimated_cpu:.2} s against a true {cpu:.2} s (± 15%)"
        );
    };
    measure("3 hosts", &pids);

    // A fourth host joins: its registration adds it to the service's hosts and the tuner
    // rescales at once; one period later the fleet is back at its target.
    pids.push(slices.spawn("h4", &mut duty(900, 30)));
    let _fourth = agent(4, &lan, &slices, &url, &dir);
    let joined = Instant::now();
    let four = eventually(60, "the tuner to count 4 hosts", || {
        let r = tuned(&server.addr, "web")?;
        (r["hosts"].as_u64()? == 4).then_some(r)
    });
    let p4 = four["probability"].as_f64().expect("p");
    eprintln!("tuned with 4 hosts: {four}");
    assert!(p4 < p3, "a fourth host lowers p: {p3} -> {p4}");
    // The fourth workload loads the machine more, so each run yields more: give the tuner two
    // periods to learn the new yield.
    sleep_until(joined, 2 * PERIOD_S);
    measure("4 hosts", &pids);
}

/// With no rules, whole-host profiling runs under the fleet's budget of rows: two hosts and
/// then four store no more than the budget per window (+15%), not twice as much, and use most of
/// it.
#[test]
fn whole_host_profiling_stays_within_the_fleet_budget() {
    require_root();
    let tag = format!("{}", std::process::id() % 10000 + 1);
    let dir = scratch("fleet-budget");
    let tokens = tokens_file(&dir);
    let ch = ClickHouseServer::start("budget").unwrap_or_else(|e| panic!("{e}"));
    let db = "budget";
    let lan = Lan::new(&tag, 4);
    let mut slices = Slices::new(&format!("budget-{tag}"));
    // Two processes keep the machine busy (80% of a CPU in all), and each agent profiles this
    // whole machine at 99 Hz in windows of 3 s (attaching the profiler again after a window that
    // was not drawn takes a good part of a second on this loaded 2-core machine: in 1 s windows
    // that would eat the windows); the budget is set below what two of them write at p = 1, so
    // it binds from the start.
    for _ in 0..2 {
        slices.spawn("load", &mut duty(900, 40));
    }
    let whole = ["--frequency", "99", "--window", "3s"];
    // The overhead guard is set high so that it never lowers the frequency (that would change
    // what a window holds under the tuner; the guard has tests of its own).
    let guard = "[host]\noverhead_budget_percent = 50.0\n";
    let probe_cfg = config(&dir.join("probe-config"), guard);
    let probe_server = server_on(&dir.join("probe"), &tokens, &ch.url("probe"), &probe_cfg);
    // First learn what one host writes per window, unbudgeted.
    let url = format!("http://{}", probe_server.addr);
    let a = agent_with(1, &lan, &slices, &url, &dir, &whole);
    // Past its start (it uploads debug info, which the windows would see as load).
    std::thread::sleep(Duration::from_secs(20));
    let from = now_ms();
    std::thread::sleep(Duration::from_secs(20));
    let per_window = host_rows(&ch, "probe", from, now_ms()) as f64 / 20.0 * WINDOW_S;
    drop(a);
    drop(probe_server);
    assert!(
        per_window > 5.0,
        "one host writes {per_window} rows a window"
    );
    // The budget: what 1.2 hosts would write.
    let budget_per_window = (per_window * 1.2).round();
    let per_hour = (budget_per_window * 3600.0 / WINDOW_S) as u64;
    let cfg = config(
        &dir,
        &format!("{guard}\n[tuner]\ninterval = \"{PERIOD_S}s\"\nhost_rows_per_hour = {per_hour}\n"),
    );
    let server = server_on(&dir.join("data"), &tokens, &ch.url(db), &cfg);
    let url = format!("http://{}", server.addr);
    let mut agents: Vec<Agent> = (1..=2)
        .map(|i| agent_with(i, &lan, &slices, &url, &dir, &whole))
        .collect();
    let measure = |what: &str| {
        let from = now_ms();
        std::thread::sleep(Duration::from_secs(2 * PERIOD_S));
        let to = now_ms();
        std::thread::sleep(Duration::from_secs(3));
        let rows = host_rows(&ch, db, from, to) as f64 / (2 * PERIOD_S) as f64 * WINDOW_S;
        let windows = ch
            .count(&format!(
                "SELECT uniqExact(host, ts_ms) FROM {db}.samples_local WHERE profiler = 'cpu' \
                 AND service = '' AND ts_ms >= {from} AND ts_ms < {to}"
            ))
            .unwrap_or(0);
        eprintln!(
            "{what}: {rows:.1} rows a {WINDOW_S} s window against a budget of {budget_per_window}; {windows} windows stored; tuner {:?}",
            tuned(&server.addr, "host")
        );
        rows
    };
    eventually(120, "the host chain tuned with 2 hosts", || {
        let r = tuned(&server.addr, "host")?;
        (r["retunes"].as_u64()? >= 3 && r["hosts"].as_u64()? == 2).then_some(())
    });
    let two = measure("2 hosts");
    agents.extend((3..=4).map(|i| agent_with(i, &lan, &slices, &url, &dir, &whole)));
    // Four agents load the machine more than two, so each window holds more rows: give the
    // tuner two periods to learn the new yield.
    let before = eventually(60, "the host chain tuned with 4 hosts", || {
        let r = tuned(&server.addr, "host")?;
        (r["hosts"].as_u64()? == 4).then_some(r["retunes"].as_u64()?)
    });
    eventually(3 * PERIOD_S, "two re-tunes with 4 hosts", || {
        let r = tuned(&server.addr, "host")?;
        (r["retunes"].as_u64()? >= before + 2).then_some(())
    });
    let four = measure("4 hosts");
    // Each measurement holds about 20 stored windows (60 s, 3 s windows, p of 0.3 to 0.6), and
    // what a window holds moves with the load of six processes on two cores: ±30% is what one
    // measurement can tell on this machine. Without the budget, four hosts would store 3.3
    // times it, so the bound still shows the budget holding.
    for (n, rows) in [(2, two), (4, four)] {
        assert!(
            rows <= budget_per_window * 1.3,
            "{n} hosts stored {rows:.1} rows a window, over the budget of {budget_per_window} (+30%)"
        );
        assert!(
            rows >= budget_per_window * 0.5,
            "{n} hosts stored {rows:.1} rows a window: the budget of {budget_per_window} is not used"
        );
    }
}
