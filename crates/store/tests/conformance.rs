//! One conformance suite, run against both backends: DuckDB (in memory) and a real ClickHouse
//! server (Debian's `clickhouse-server`, started here on free loopback ports with its own config
//! and data directory, stopped by its pid). Every scenario runs on both and, where it says so,
//! checks that the two give the same answer.

use std::sync::OnceLock;

use baton_model::batch::{Span, SpanKind};
use baton_model::sync::lock;
use baton_model::{Batch, Frame, FrameKind, Histogram, Labels, StackSample, ValueType};
use baton_store::{
    ClickHouseStore, ClickHouseUrl, ControlRecord, DuckDbStore, Filter, FilterOp, LateSymbol,
    Point, Query, RunRecord, Store, StoreError, TimelineQuery, WriteItem,
};

use baton_store::testserver::{free_port, ClickHouseServer as ClickHouse};

/// Starts `clickhouse-server` with a config of its own; fails loudly if it is not installed.
fn start_clickhouse(tag: &str) -> ClickHouse {
    ClickHouse::start(tag).unwrap_or_else(|e| panic!("{e}"))
}

fn start_clickhouse_on(tag: &str, http: u16, tcp: u16, extra: &str) -> ClickHouse {
    ClickHouse::start_on(tag, http, tcp, extra).unwrap_or_else(|e| panic!("{e}"))
}

fn server() -> &'static std::sync::Mutex<Option<ClickHouse>> {
    static CH: OnceLock<std::sync::Mutex<Option<ClickHouse>>> = OnceLock::new();
    CH.get_or_init(|| std::sync::Mutex::new(Some(start_clickhouse("conformance"))))
}

/// Runs SQL on the suite's ClickHouse server, as an operator would: its answer.
fn ch_exec(sql: &str) -> String {
    lock(server())
        .as_ref()
        .expect("server")
        .exec(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A fresh database on the suite's ClickHouse server.
fn clickhouse(name: &str) -> ClickHouseStore {
    let port = lock(server())
        .as_ref()
        .map(|c| c.http_port)
        .expect("server");
    let url = ClickHouseUrl::parse(&format!("clickhouse://127.0.0.1:{port}/{name}")).expect("url");
    ClickHouseStore::open(url).expect("open ClickHouse store")
}

fn frame(kind: FrameKind, name: Option<&str>, addr: u64) -> Frame {
    Frame {
        kind,
        function: name.map(str::to_string),
        module: if kind == FrameKind::Kernel {
            "[kernel.kallsyms]".into()
        } else {
            "/bin/app".into()
        },
        build_id: (kind == FrameKind::User).then(|| "beef".to_string()),
        address: addr,
        file: None,
        line: None,
    }
}

fn batch(ts: i64, comm: &str, leaf: &str, value: i64, weight: f64) -> Batch {
    Batch {
        profiler: "cpu".into(),
        value_type: ValueType::cpu_nanoseconds(),
        more_value_types: Vec::new(),
        histograms: Vec::new(),
        spans: Vec::new(),
        ts_ms: ts,
        samples: vec![StackSample {
            stack: vec![
                frame(FrameKind::User, Some(leaf), leaf.len() as u64 * 16),
                frame(FrameKind::User, Some("main"), 1),
                frame(
                    FrameKind::Kernel,
                    Some("do_syscall_64"),
                    0xffff_ffff_8100_0000,
                ),
            ],
            labels: [
                ("comm".to_string(), comm.to_string()),
                ("pid".into(), "7".into()),
                ("host".into(), "h1".into()),
            ]
            .into(),
            value,
            weight,
            value_index: 0,
        }],
    }
}

fn q(from: i64, to: i64) -> Query {
    Query {
        profiler: "cpu".into(),
        value: None,
        from_ms: from,
        to_ms: to,
        filters: vec![],
        schema: None,
    }
}

fn with(mut q: Query, f: &str) -> Query {
    q.filters.push(Filter::parse(f).expect("filter"));
    q
}

/// Sums, weights, filters (columns, sets, regex, not-equal on missing labels), named stacks,
/// time series and label values.
fn sums_filters_series_and_labels(s: &mut dyn Store) {
    s.write_batch(&batch(1000, "a", "hot", 10, 3.0)).expect("w");
    s.write_batch(&batch(2000, "a", "hot", 10, 1.0)).expect("w");
    let mut b = batch(2000, "b", "cold", 5, 1.0);
    b.samples[0].labels.remove("pid");
    b.samples[0]
        .labels
        .insert("service".into(), "checkout".into());
    s.write_batch(&b).expect("w");
    let all = q(0, 10_000);
    let p = s.profile(&all).expect("profile");
    assert_eq!(p.total(), 45.0);
    let top = p.top_functions();
    assert_eq!((top[0].function.as_str(), top[0].self_value), ("hot", 40.0));
    let total = |s: &mut dyn Store, q: &Query| s.profile(q).expect("p").total();
    assert_eq!(total(s, &with(all.clone(), "comm=b")), 5.0);
    assert_eq!(total(s, &with(all.clone(), "comm!=b")), 40.0);
    assert_eq!(total(s, &with(all.clone(), "comm~[ab]")), 45.0);
    assert_eq!(total(s, &with(all.clone(), "comm~a.*x")), 0.0);
    assert_eq!(total(s, &with(all.clone(), "pid=7")), 40.0);
    // A sample without the label is not equal to any value.
    assert_eq!(total(s, &with(all.clone(), "pid!=7")), 5.0);
    assert_eq!(total(s, &with(all.clone(), "service=checkout")), 5.0);
    assert_eq!(total(s, &with(all.clone(), "service!=checkout")), 40.0);
    let set = |op, values: &[&str]| Filter {
        label: "comm".into(),
        op,
        value: String::new(),
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let mut fq = all.clone();
    fq.filters = vec![set(FilterOp::AnyOf, &["a", "zz"])];
    assert_eq!(total(s, &fq), 40.0);
    fq.filters = vec![set(FilterOp::AnyOf, &[])];
    assert_eq!(total(s, &fq), 0.0);
    fq.filters = vec![set(FilterOp::NoneOf, &["a"])];
    assert_eq!(total(s, &fq), 5.0);
    fq.filters = vec![set(FilterOp::NoneOf, &[])];
    assert_eq!(total(s, &fq), 45.0);
    let named = s.named_stacks(&all).expect("named");
    assert_eq!(named.flame_tree(), p.flame_tree());
    assert_eq!(named.top_functions(), top);
    let ts = s.timeseries(&all, 1000).expect("ts");
    assert_eq!(
        ts,
        vec![
            Point {
                ts_ms: 1000,
                value: 30.0
            },
            Point {
                ts_ms: 2000,
                value: 15.0
            }
        ]
    );
    let labels = s.label_values(&all, "comm", 10).expect("labels");
    assert_eq!(
        labels,
        vec![("a".to_string(), 40.0), ("b".to_string(), 5.0)]
    );
    let services = s.label_values(&all, "service", 10).expect("labels");
    assert_eq!(services, vec![("checkout".to_string(), 5.0)]);
    assert_eq!(s.profile(&q(3000, 4000)).expect("p").samples.len(), 0);
    assert_eq!(s.sample_rows().expect("rows"), 3);
}

/// Several values per stack, profiler labels in `detail`, histograms merged per (name, key).
fn values_details_and_histograms(s: &mut dyn Store) {
    let mut b = batch(1_000, "app", "alloc_site_a", 4096, 1.0);
    b.profiler = "malloc".into();
    b.value_type = ValueType::new("alloc_bytes", "bytes");
    b.more_value_types = vec![ValueType::new("alloc_count", "count")];
    let mut second = b.samples[0].clone();
    second.value = 3;
    second.value_index = 1;
    second.labels.insert("op".into(), "write".into());
    second.labels.insert("fd".into(), "3".into());
    b.samples.push(second);
    let mut h = Histogram::new("call_latency", "nanoseconds", "foo", Labels::new());
    h.add(1023, 5.0);
    h.add(2047, 1.0);
    b.histograms.push(h.clone());
    b.histograms.push(h);
    s.write_batch(&b).expect("write");
    let mut q = q(0, 10_000);
    q.profiler = "malloc".into();
    let p = s.profile(&q).expect("p");
    assert_eq!(
        (p.total(), p.value_type.kind.as_str()),
        (4096.0, "alloc_bytes")
    );
    q.value = Some("alloc_count".into());
    let p = s.profile(&q).expect("p");
    assert_eq!(
        (p.total(), p.value_type.kind.as_str()),
        (3.0, "alloc_count")
    );
    assert_eq!(
        s.profile(&with(q.clone(), "op=write")).expect("p").total(),
        3.0
    );
    assert_eq!(
        s.profile(&with(q.clone(), "op=read")).expect("p").total(),
        0.0
    );
    assert_eq!(
        s.profile(&with(q.clone(), "op~wr.*")).expect("p").total(),
        3.0
    );
    assert_eq!(s.profile(&with(q.clone(), "fd=3")).expect("p").total(), 3.0);
    assert_eq!(
        s.profile(&with(q.clone(), "fd!=3")).expect("p").total(),
        0.0
    );
    // Totals per value of a label kept in `detail` (one a thread published, or a profiler's
    // own); rows without it are left out, and a name that is no label is refused.
    assert_eq!(
        s.label_values(&q, "op", 10).expect("labels"),
        vec![("write".to_string(), 3.0)]
    );
    assert!(s.label_values(&q, "state", 10).expect("labels").is_empty());
    assert!(matches!(
        s.label_values(&q, "Op", 10),
        Err(StoreError::UnknownLabel(_))
    ));
    q.value = None;
    let hs = s.histograms(&q).expect("hist");
    assert_eq!(hs.len(), 1);
    assert_eq!((hs[0].key.as_str(), hs[0].total()), ("foo", 12.0));
    assert_eq!(
        hs[0]
            .buckets
            .iter()
            .map(|b| (b.le, b.count))
            .collect::<Vec<_>>(),
        vec![(1023, 10.0), (2047, 2.0)]
    );
    assert!(s
        .histograms(&with(q.clone(), "function=bar"))
        .expect("hist")
        .is_empty());
    assert_eq!(
        s.histograms(&with(q, "function=foo")).expect("hist").len(),
        1
    );
}

/// A malloc window of one process: `live` bytes held at its end over two stacks, and `alloc`
/// bytes allocated in it.
fn heap_window(ts: i64, pid: &str, live: i64, alloc: i64) -> Batch {
    let mut b = batch(ts, "app", "leak_site", alloc, 1.0);
    b.profiler = "malloc".into();
    b.value_type = ValueType::new("alloc_bytes", "bytes");
    b.more_value_types = vec![
        ValueType::new("alloc_count", "count"),
        ValueType::new("live_bytes", "bytes"),
    ];
    b.samples[0].labels.insert("pid".into(), pid.into());
    b.samples[0]
        .labels
        .insert("service".into(), format!("svc{pid}"));
    for (leaf, v) in [("leak_site", live - live / 4), ("other_site", live / 4)] {
        let mut s = b.samples[0].clone();
        s.stack[0] = frame(FrameKind::User, Some(leaf), leaf.len() as u64 * 16);
        s.value = v;
        s.value_index = 2;
        // A profiler's own label, kept in `detail`.
        let arena = if leaf == "leak_site" { "big" } else { "small" };
        s.labels.insert("arena".into(), arena.into());
        b.samples.push(s);
    }
    b
}

/// A level (`live_bytes`) is a window's total, never summed across windows: per process the
/// mean of its windows in a step, summed over the processes of a series. Counts still sum.
fn level_series_per_window_and_group(s: &mut dyn Store) {
    s.write_batch(&heap_window(1_000, "7", 200, 10)).expect("w");
    s.write_batch(&heap_window(2_000, "7", 400, 10)).expect("w");
    s.write_batch(&heap_window(1_500, "8", 1_000, 10))
        .expect("w");
    let mut live = q(0, 10_000);
    live.profiler = "malloc".into();
    live.value = Some("live_bytes".into());
    let pt = |ts_ms, value| Point { ts_ms, value };
    assert_eq!(
        s.timeseries(&live, 10_000).expect("ts"),
        vec![pt(0, 1_300.0)]
    );
    assert_eq!(
        s.timeseries(&live, 1_000).expect("ts"),
        vec![pt(1_000, 1_200.0), pt(2_000, 400.0)]
    );
    let by_pid = s.series(&live, 10_000, Some("pid")).expect("series");
    let keys: Vec<(&str, f64)> = by_pid
        .iter()
        .map(|x| (x.key.as_str(), x.points[0].value))
        .collect();
    assert_eq!(keys, vec![("8", 1_000.0), ("7", 300.0)]);
    let by_service = s.series(&live, 1_000, Some("service")).expect("series");
    assert_eq!(by_service[0].key, "svc8");
    assert_eq!(
        by_service[1].points,
        vec![pt(1_000, 200.0), pt(2_000, 400.0)]
    );
    assert!(matches!(
        s.series(&live, 1_000, Some("Colour")),
        Err(StoreError::UnknownLabel(_))
    ));
    // Grouped by a profiler's own label (in `detail`): pid 7 means 225 and 75, pid 8 750 and
    // 250.
    let by_arena = s.series(&live, 10_000, Some("arena")).expect("series");
    let keys: Vec<(&str, f64)> = by_arena
        .iter()
        .map(|x| (x.key.as_str(), x.points[0].value))
        .collect();
    assert_eq!(keys, vec![("big", 975.0), ("small", 325.0)]);
    assert_eq!(
        s.label_values(&live, "arena", 10).expect("labels"),
        vec![("big".to_string(), 975.0), ("small".to_string(), 325.0)]
    );
    // A level's flame graph: per process the mean of its windows (pid 7: leak_site 150 and
    // 300, other_site 50 and 100), summed over processes.
    let p = s.profile(&live).expect("profile");
    assert_eq!(p.total(), 1_300.0);
    let top = p.top_functions();
    let leak = top
        .iter()
        .find(|t| t.function == "leak_site")
        .expect("leak_site");
    assert_eq!(leak.self_value, 225.0 + 750.0);
    let named = s.named_stacks(&with(live.clone(), "pid=7")).expect("named");
    assert_eq!(named.total(), 300.0);
    assert_eq!(
        s.label_values(&live, "pid", 10).expect("labels"),
        vec![("8".to_string(), 1_000.0), ("7".to_string(), 300.0)]
    );
    let mut alloc = live.clone();
    alloc.value = None;
    assert_eq!(s.timeseries(&alloc, 10_000).expect("ts"), vec![pt(0, 30.0)]);
    let whole = s.series(&alloc, 10_000, None).expect("series");
    assert_eq!((whole.len(), whole[0].key.as_str()), (1, ""));
}

/// Inlined frames keep their names and lines; unknown frames keep module and offset.
fn inlined_and_unknown_frames(s: &mut dyn Store) {
    let mut b = batch(1000, "a", "outer", 10, 1.0);
    let outer = b.samples[0].stack[0].clone();
    let inl = |name: &str, line: u32| Frame {
        kind: FrameKind::Inlined,
        function: Some(name.into()),
        file: Some("/src/x.c".into()),
        line: Some(line),
        ..outer.clone()
    };
    b.samples[0].stack.insert(0, inl("mid_inl", 20));
    b.samples[0].stack.insert(0, inl("leaf_inl", 10));
    s.write_batch(&b).expect("write");
    let mut u = batch(1000, "u", "gone", 1, 1.0);
    u.samples[0].stack[0].function = None;
    u.samples[0].stack[0].build_id = None;
    s.write_batch(&u).expect("write");
    let p = s.profile(&with(q(0, 10_000), "comm=a")).expect("profile");
    let stack = &p.samples[0].stack;
    let names: Vec<String> = stack.iter().map(Frame::display_name).collect();
    assert_eq!(
        names,
        ["leaf_inl", "mid_inl", "outer", "main", "do_syscall_64"]
    );
    assert_eq!(stack[0].kind, FrameKind::Inlined);
    assert_eq!(
        (stack[0].line, stack[1].file.as_deref()),
        (Some(10), Some("/src/x.c"))
    );
    let p = s.profile(&with(q(0, 10_000), "comm=u")).expect("profile");
    assert_eq!(p.samples[0].stack[0].display_name(), "[unknown] app+0x40");
}

/// A batch with an id is stored once; late symbols name old samples, inlined chain included.
fn batch_ids_and_late_symbols(s: &mut dyn Store) {
    let mut b = batch(1000, "a", "hot", 5, 1.0);
    b.samples[0].stack[0].function = None;
    assert!(s.write_batch_once(&b, "h1-1", Some("h1")).expect("w"));
    assert!(!s.write_batch_once(&b, "h1-1", Some("h1")).expect("w"));
    assert_eq!(s.sample_rows().expect("rows"), 1);
    let waiting = s.unsymbolized(100).expect("u");
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (waiting[0].build_id.as_str(), waiting[0].offsets.clone()),
        ("beef", vec![48])
    );
    let late = LateSymbol {
        offset: 48,
        function: "hot_loop".into(),
        file: Some("hot.c".into()),
        line: Some(12),
        inlined: vec![("step".into(), Some("hot.h".into()), Some(3))],
    };
    assert_eq!(
        s.add_symbols("beef", std::slice::from_ref(&late))
            .expect("add"),
        1
    );
    assert_eq!(s.add_symbols("beef", &[late]).expect("add"), 0);
    assert!(s.unsymbolized(100).expect("u").is_empty());
    let p = s.profile(&q(0, 10_000)).expect("p");
    let names: Vec<String> = p.samples[0].stack.iter().map(Frame::display_name).collect();
    assert_eq!(names, ["step", "hot_loop", "main", "do_syscall_64"]);
    assert_eq!(p.samples[0].stack[1].line, Some(12));
}

/// Many stacks over many windows: both backends give the same flame tree, top table, series
/// and histograms for the same batches.
fn same_answers(s: &mut dyn Store) -> (String, String, Vec<Point>, Vec<Histogram>) {
    for w in 0..20i64 {
        let mut b = batch(w * 1000, "app", "leaf0", 1, 1.0);
        b.samples.clear();
        for i in 0..50u64 {
            let leaf = format!("leaf{}", (i * 7 + w as u64) % 13);
            let mut smp = batch(
                0,
                if i % 3 == 0 { "x" } else { "y" },
                &leaf,
                (i + 1) as i64,
                1.0 + (i % 4) as f64,
            )
            .samples
            .remove(0);
            smp.stack.insert(
                1,
                frame(
                    FrameKind::User,
                    Some(&format!("mid{}", i % 5)),
                    1000 + i % 5,
                ),
            );
            b.samples.push(smp);
        }
        let mut h = Histogram::new("lat", "nanoseconds", "k", Labels::new());
        h.add(1023, w as f64);
        b.histograms.push(h);
        s.write_batch(&b).expect("write");
    }
    let all = q(0, 100_000);
    let tree =
        serde_json::to_string(&s.named_stacks(&all).expect("named").flame_tree()).expect("json");
    let top = serde_json::to_string(
        &s.named_stacks(&with(all.clone(), "comm=x"))
            .expect("p")
            .top_functions(),
    )
    .expect("json");
    (
        tree,
        top,
        s.timeseries(&all, 5000).expect("ts"),
        s.histograms(&all).expect("h"),
    )
}

/// Run history: the latest record of each run, newest first.
fn run_history_keeps_the_latest_state(s: &mut dyn Store) {
    let rec = |id: u64, state: &str, at: i64| baton_store::RunRecord {
        id,
        host: "h1".into(),
        profiler: "cpu".into(),
        state: state.into(),
        recorded_ms: at,
        json: format!(r#"{{"id":{id},"state":"{state}","reason":"tab\there"}}"#),
    };
    s.record_runs(&[rec(1, "running", 10), rec(2, "done", 20)])
        .expect("record");
    s.record_runs(&[rec(1, "failed", 30)]).expect("record");
    let h = s.run_history(10).expect("history");
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!((h[0].id, h[0].state.as_str()), (2, "done"));
    assert_eq!(
        (h[1].id, h[1].state.as_str(), h[1].recorded_ms),
        (1, "failed", 30)
    );
    assert!(h[1].json.contains(r"tab\there"), "{}", h[1].json);
    assert_eq!(s.run_history(1).expect("history").len(), 1);
}

/// A run's record that arrives late (from a lagging server) does not replace a newer one.
fn run_history_ignores_an_older_record(s: &mut dyn Store) {
    let rec = |state: &str, at: i64| RunRecord {
        id: 5,
        host: "h1".into(),
        profiler: "cpu".into(),
        state: state.into(),
        recorded_ms: at,
        json: format!(r#"{{"state":"{state}"}}"#),
    };
    s.record_runs(&[rec("running", 10)]).expect("record");
    s.record_runs(&[rec("done", 30)]).expect("record");
    s.record_runs(&[rec("running", 20)]).expect("record");
    let h = s.run_history(10).expect("history");
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!((h[0].state.as_str(), h[0].recorded_ms), ("done", 30));
}

/// Control documents: per key the latest `updated_ms` wins, of equal ones the last written
/// (in one call or over two); a tombstone hides its key from older records and yields to a
/// later one; kinds are apart; JSON with tabs, newlines and non-ASCII survives; retention
/// keeps live documents.
fn control_latest_record_wins(s: &mut dyn Store) {
    let doc = |v: &str| format!("{{\"v\":\"{v}\",\"note\":\"a\tb\nc ü \\\\ d\"}}");
    let put = |s: &mut dyn Store, rs: &[ControlRecord]| s.put_control(rs).expect("put");
    let live = |s: &mut dyn Store, kind: &str| -> Vec<(String, String, i64)> {
        s.control(kind)
            .expect("control")
            .into_iter()
            .map(|r| {
                assert!(!r.deleted && r.kind == kind, "{r:?}");
                (r.key, r.json, r.updated_ms)
            })
            .collect()
    };
    let want = |k: &str, v: &str, at: i64| (k.to_string(), doc(v), at);
    put(
        s,
        &[
            ControlRecord::new("host", "h2", doc("b"), 10),
            ControlRecord::new("host", "h1", doc("a"), 10),
            ControlRecord::new("run", "1", doc("queued"), 10),
            ControlRecord::new("run", "2", doc("queued"), 10),
            ControlRecord::new("run", "1", doc("running"), 11),
            ControlRecord::new("run", "3", doc("x"), 30),
            ControlRecord::deleted("run", "3", 30),
        ],
    );
    assert_eq!(live(s, "host"), [want("h1", "a", 10), want("h2", "b", 10)]);
    assert_eq!(
        live(s, "run"),
        [want("1", "running", 11), want("2", "queued", 10)]
    );
    put(s, &[ControlRecord::new("run", "1", doc("stale"), 5)]);
    put(s, &[ControlRecord::new("run", "1", doc("tie-1"), 11)]);
    put(s, &[ControlRecord::new("run", "1", doc("tie-2"), 11)]);
    put(s, &[ControlRecord::deleted("run", "2", 20)]);
    put(s, &[ControlRecord::new("run", "2", doc("older"), 15)]);
    assert_eq!(live(s, "run"), [want("1", "tie-2", 11)]);
    assert!(live(s, "tuner").is_empty());
    put(s, &[ControlRecord::new("run", "2", doc("again"), 21)]);
    assert_eq!(
        live(s, "run"),
        [want("1", "tie-2", 11), want("2", "again", 21)]
    );
    s.drop_before(baton_model::time::now_ms() + 86_400_000)
        .expect("retention");
    assert_eq!(live(s, "host").len(), 2, "retention kept the hosts");
    assert_eq!(live(s, "run").len(), 2, "retention kept the runs");
}

/// Retention: samples and histograms older than the cut are gone, newer ones stay (ClickHouse
/// drops whole days, so the old batch is days old and the new one is now).
fn retention_drops_old_samples(s: &mut dyn Store) {
    let now = baton_model::time::now_ms();
    let day = 86_400_000;
    let mut old = batch(now - 3 * day, "old", "hot", 7, 1.0);
    let mut h = Histogram::new("lat", "nanoseconds", "k", Labels::new());
    h.add(1023, 1.0);
    old.histograms.push(h.clone());
    let mut new = batch(now, "new", "hot", 5, 1.0);
    new.histograms.push(h);
    s.write_batch(&old).expect("w");
    s.write_batch(&new).expect("w");
    let all = q(now - 4 * day, now + 1);
    assert_eq!(s.profile(&all).expect("p").total(), 12.0);
    assert!(s.drop_before(now - 2 * day).expect("retention") > 0);
    assert_eq!(s.profile(&all).expect("p").total(), 5.0);
    assert_eq!(s.sample_rows().expect("rows"), 1);
    let hs = s.histograms(&all).expect("h");
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].total(), 1.0, "only the new batch's histogram is left");
}

/// Timeline spans: by pid and host over a window, with their stacks (leaf first), kinds,
/// labels and the sample's comm; a span without a sample takes the batch's host; the limit
/// keeps the earliest and says it truncated; retention drops old spans.
fn timeline_spans_by_process_and_window(s: &mut dyn Store) {
    let now = baton_model::time::now_ms();
    let t0 = now * 1000;
    let mut b = batch(now, "app", "hot", 10, 1.0);
    let mut other = b.samples[0].clone();
    other.stack[0].function = Some("cold".into());
    other.stack[0].address = 99;
    other.labels.insert("pid".into(), "8".into());
    b.samples.push(other);
    let span = |kind, pid, tid, start_us, sample, label: &str| Span {
        kind,
        pid,
        tid,
        start_us,
        dur_us: 1000,
        sample,
        label: label.into(),
    };
    b.spans = vec![
        span(SpanKind::Cpu, 7, 71, t0 + 2000, Some(0), ""),
        span(SpanKind::Offcpu, 7, 72, t0, Some(0), "sleeping"),
        span(SpanKind::Request, 7, 71, t0 + 5000, None, "req-1"),
        span(SpanKind::Cpu, 8, 81, t0 + 1000, Some(1), ""),
    ];
    let mut old = batch(now - 3 * 86_400_000, "app", "hot", 1, 1.0);
    old.spans = vec![span(
        SpanKind::Cpu,
        7,
        71,
        (now - 3 * 86_400_000) * 1000,
        Some(0),
        "",
    )];
    s.write_batch(&b).expect("w");
    s.write_batch(&old).expect("w");
    let tq = |pid: Option<u32>, host: Option<&str>, limit: usize| TimelineQuery {
        from_ms: now - 1,
        to_ms: now + 60_000,
        host: host.map(str::to_string),
        pid,
        limit,
    };
    let t = s.timeline(&tq(Some(7), Some("h1"), 100)).expect("timeline");
    // (kind, tid, start from t0, label, comm)
    type Row<'a> = (&'a str, u32, i64, Option<&'a str>, Option<&'a str>);
    let got: Vec<Row> = t
        .spans
        .iter()
        .map(|x| {
            (
                x.kind.as_str(),
                x.tid,
                x.start_us - t0,
                x.label.as_deref(),
                x.comm.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("offcpu", 72, 0, Some("sleeping"), Some("app")),
            ("cpu", 71, 2000, None, Some("app")),
            ("request", 71, 5000, Some("req-1"), None),
        ]
    );
    assert!(!t.truncated);
    let key = t.spans[0].stack.clone().expect("a stack");
    assert_eq!(t.stacks[&key], vec!["hot", "main", "do_syscall_64"]);
    assert_eq!(t.spans[1].stack, t.spans[0].stack);
    assert_eq!(t.spans[2].stack, None);
    let eight = s.timeline(&tq(Some(8), None, 100)).expect("timeline");
    assert_eq!(eight.spans.len(), 1);
    let k8 = eight.spans[0].stack.clone().expect("a stack");
    assert_eq!(eight.stacks[&k8][0], "cold");
    assert!(s
        .timeline(&tq(Some(7), Some("h2"), 100))
        .expect("t")
        .spans
        .is_empty());
    let cut = s.timeline(&tq(None, None, 2)).expect("timeline");
    assert!(cut.truncated);
    assert_eq!(
        cut.spans
            .iter()
            .map(|x| x.start_us - t0)
            .collect::<Vec<_>>(),
        vec![0, 1000]
    );
    let all_old = TimelineQuery {
        from_ms: now - 4 * 86_400_000,
        ..tq(Some(7), None, 100)
    };
    assert_eq!(s.timeline(&all_old).expect("t").spans.len(), 4);
    s.drop_before(now - 2 * 86_400_000).expect("retention");
    assert_eq!(
        s.timeline(&all_old).expect("t").spans.len(),
        3,
        "the old span is gone"
    );
}

/// Stack Schema rules apply as stacks are read: tags group and filter, a collapse keeps the
/// totals, and a service's rule touches its own rows only.
fn stack_schema_tags_filters_and_collapses(s: &mut dyn Store) {
    use baton_model::{SchemaAction, SchemaRule, StackSchema};
    // (leaf, service, value): sqlite3_step under main in two services, and other work.
    for (i, (leaf, service, value)) in [
        ("sqlite3_step", "db", 30),
        ("sqlite3_step", "web", 10),
        ("std::io::write", "web", 40),
        ("render", "web", 20),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = batch(1_000 + i as i64, "app", leaf, value, 1.0);
        b.samples[0].labels.insert("service".into(), service.into());
        if leaf.starts_with("std::") {
            // std::io::write called through std::io::buf: a run of two std frames.
            let buf = frame(FrameKind::User, Some("std::io::buf"), 77);
            b.samples[0].stack.insert(1, buf);
        }
        s.write_batch(&b).expect("write");
    }
    let rule = |p: &str, action, service: Option<&str>| SchemaRule {
        pattern: regex::Regex::new(p).expect("pattern"),
        action,
        service: service.map(String::from),
    };
    let tag = |k: &str, v: &str| SchemaAction::TagStack {
        key: k.into(),
        value: v.into(),
    };
    let mut all = q(0, 10_000);
    all.schema = Some(std::sync::Arc::new(StackSchema {
        rules: vec![
            rule("^sqlite3_", tag("component", "db"), None),
            rule("^std::", SchemaAction::Collapse, None),
            rule("^render$", tag("feature", "ui"), Some("web")),
            rule("^sqlite3_", tag("feature", "cache"), Some("web")),
        ],
    }));
    // Grouped by a tag: the tagged share is the function's total share.
    assert_eq!(
        s.label_values(&all, "component", 10).expect("tags"),
        vec![("db".to_string(), 40.0)]
    );
    assert_eq!(
        s.label_values(&all, "feature", 10).expect("tags"),
        vec![("ui".to_string(), 20.0), ("cache".to_string(), 10.0)]
    );
    // A stored label's totals over the stacks a tag filter keeps.
    assert_eq!(
        s.label_values(&with(all.clone(), "component=db"), "service", 10)
            .expect("filtered"),
        vec![("db".to_string(), 30.0), ("web".to_string(), 10.0)]
    );
    assert_eq!(
        s.label_values(&with(all.clone(), "feature=ui"), "service", 10)
            .expect("filtered by a service's rule"),
        vec![("web".to_string(), 20.0)]
    );
    // What reads no stacks refuses a filter on a tag rather than ignore it.
    assert!(matches!(
        s.series(&with(all.clone(), "component=db"), 1_000, None),
        Err(StoreError::TagFilter { .. })
    ));
    assert!(matches!(
        s.histograms(&with(all.clone(), "component=db")),
        Err(StoreError::TagFilter { .. })
    ));
    // Filtered by a tag, or by its absence.
    assert_eq!(
        s.profile(&with(all.clone(), "component=db"))
            .expect("p")
            .total(),
        40.0
    );
    assert_eq!(
        s.profile(&with(all.clone(), "component!=db"))
            .expect("p")
            .total(),
        60.0
    );
    assert_eq!(
        s.profile(&with(all.clone(), "feature~u."))
            .expect("p")
            .total(),
        20.0
    );
    // The collapse keeps the root-most std frame and every total.
    let p = s.profile(&all).expect("profile");
    assert_eq!(p.total(), 100.0);
    let std_stack = p
        .samples
        .iter()
        .find(|x| {
            x.stack
                .iter()
                .any(|f| f.function.as_deref() == Some("std::io::buf"))
        })
        .expect("the std stack");
    assert!(std_stack
        .stack
        .iter()
        .all(|f| f.function.as_deref() != Some("std::io::write")));
    assert_eq!(std_stack.value, 40);
    let named = s.named_stacks(&all).expect("named");
    assert_eq!(named.total(), 100.0);
    assert!(!named.names.is_empty());
    let tree = named.flame_tree();
    let has = |n: &baton_model::FlameNode, name: &str| -> bool {
        fn walk(n: &baton_model::FlameNode, name: &str) -> bool {
            n.name == name || n.children.iter().any(|c| walk(c, name))
        }
        walk(n, name)
    };
    assert!(has(&tree, "std::io::buf") && !has(&tree, "std::io::write"));
    // The samples carry their tags.
    let tagged = p
        .samples
        .iter()
        .filter(|x| x.labels.get("component").map(String::as_str) == Some("db"))
        .map(|x| x.value)
        .sum::<i64>();
    assert_eq!(tagged, 40);
}

macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod duckdb {
            $(
                #[test]
                fn $name() {
                    let mut s = super::DuckDbStore::in_memory().expect("duckdb");
                    super::$name(&mut s);
                }
            )+
        }
        mod clickhouse {
            $(
                #[test]
                fn $name() {
                    let mut s = super::clickhouse(stringify!($name));
                    super::$name(&mut s);
                }
            )+
        }
    };
}

conformance!(
    sums_filters_series_and_labels,
    values_details_and_histograms,
    level_series_per_window_and_group,
    inlined_and_unknown_frames,
    batch_ids_and_late_symbols,
    run_history_keeps_the_latest_state,
    run_history_ignores_an_older_record,
    control_latest_record_wins,
    retention_drops_old_samples,
    timeline_spans_by_process_and_window,
    stack_schema_tags_filters_and_collapses,
);

#[test]
fn both_backends_give_the_same_answers() {
    let mut d = DuckDbStore::in_memory().expect("duckdb");
    let mut c = clickhouse("same_answers");
    let a = same_answers(&mut d);
    let b = same_answers(&mut c);
    assert_eq!(a.0, b.0, "flame trees differ");
    assert_eq!(a.1, b.1, "top tables differ");
    assert_eq!(a.2, b.2, "series differ");
    assert_eq!(a.3, b.3, "histograms differ");
}

#[test]
fn a_reopened_clickhouse_store_knows_its_dictionaries_and_batches() {
    {
        let mut s = clickhouse("reopen");
        let mut b = batch(1000, "a", "hot", 5, 1.0);
        b.samples[0].stack[0].function = None;
        assert!(s.write_batch_once(&b, "r-1", Some("h")).expect("w"));
    }
    let mut s = clickhouse("reopen");
    assert_eq!(
        s.schema_version().expect("v"),
        baton_store::CLICKHOUSE_SCHEMA_VERSION
    );
    let b = batch(1000, "a", "hot", 5, 1.0);
    assert!(
        !s.write_batch_once(&b, "r-1", Some("h")).expect("w"),
        "the batch id survives"
    );
    assert_eq!(s.unsymbolized(10).expect("u").len(), 1);
    s.write_batch(&batch(2000, "a", "hot", 5, 1.0)).expect("w");
    assert_eq!(s.sample_rows().expect("rows"), 2);
}

/// ClickHouse has no transaction over tables: a batch whose insert fails part-way (here, a
/// table taken away under it) keeps what was stored, and its retry writes each table's rows
/// exactly once. Each of the three sharded tables fails in turn, and each is retried both by
/// the same store and by a reopened one (a server restarted between the two attempts).
#[test]
fn a_retried_batch_stores_each_table_once_on_clickhouse() {
    let mut s = clickhouse("retry");
    let ch = |sql: &str| {
        lock(server())
            .as_ref()
            .expect("server")
            .exec(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    let count = |table: &str, bid: &str| -> u64 {
        ch(&format!(
            "SELECT count() FROM retry.{table}_local WHERE batch = '{bid}'"
        ))
        .trim()
        .parse()
        .expect("a count")
    };
    let now = baton_model::time::now_ms();
    let cases = ["samples", "histograms", "spans"]
        .into_iter()
        .flat_map(|t| [(t, false), (t, true)]);
    for (i, (broken, reopen)) in cases.enumerate() {
        let bid = format!(
            "retry-{broken}-{}",
            if reopen { "reopened" } else { "same" }
        );
        let mut b = batch(now + i as i64, "app", "hot", 10, 1.0);
        b.samples.push(b.samples[0].clone());
        b.samples[1].labels.insert("tid".into(), "9".into());
        b.histograms = vec![Histogram {
            name: "syscall_latency".into(),
            unit: "nanoseconds".into(),
            key: "read".into(),
            labels: b.samples[0].labels.clone(),
            buckets: vec![
                baton_model::Bucket {
                    le: 1023,
                    count: 3.0,
                },
                baton_model::Bucket {
                    le: 2047,
                    count: 1.0,
                },
            ],
        }];
        b.spans = (0..3)
            .map(|k| Span {
                kind: SpanKind::Cpu,
                pid: 7,
                tid: 71,
                start_us: (now + k) * 1000,
                dur_us: 1000,
                sample: Some(0),
                label: String::new(),
            })
            .collect();
        ch(&format!(
            "RENAME TABLE retry.{broken}_local TO retry.{broken}_away"
        ));
        let e = s.write_batch_once(&b, &bid, Some("h1"));
        ch(&format!(
            "RENAME TABLE retry.{broken}_away TO retry.{broken}_local"
        ));
        assert!(e.is_err(), "the write without {broken} succeeded");
        if reopen {
            s = clickhouse("retry");
        }
        assert!(
            s.write_batch_once(&b, &bid, Some("h1")).expect("retry"),
            "the retry after {broken} failed was taken as a duplicate"
        );
        assert!(!s.write_batch_once(&b, &bid, Some("h1")).expect("again"));
        assert_eq!(
            (
                count("samples", &bid),
                count("histograms", &bid),
                count("spans", &bid)
            ),
            (2, 2, 3),
            "rows of {bid} after its {broken} insert failed and it was retried"
        );
    }
}

#[test]
fn clickhouse_down_is_a_clear_error() {
    let port = free_port();
    let url = ClickHouseUrl::parse(&format!("clickhouse://127.0.0.1:{port}/x")).expect("url");
    let e = ClickHouseStore::open(url)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.starts_with("ClickHouse: http://127.0.0.1:"), "{e}");
}

/// Two ClickHouse servers as two shards behind `Distributed` tables: Baton writes and reads
/// through them, and the answers match one server's. Rows land on both shards.
#[test]
fn two_shards_answer_as_one_server_does() {
    let (h1, t1, h2, t2) = (free_port(), free_port(), free_port(), free_port());
    let shard = |port: u16| {
        format!("<shard><replica><host>127.0.0.1</host><port>{port}</port></replica></shard>")
    };
    let cluster = format!(
        "<remote_servers><two>{}{}</two></remote_servers>",
        shard(t1),
        shard(t2)
    );
    let _a = start_clickhouse_on("shard1", h1, t1, &cluster);
    let _b = start_clickhouse_on("shard2", h2, t2, &cluster);
    let open = |port: u16, db: &str| {
        ClickHouseStore::open(
            ClickHouseUrl::parse(&format!("clickhouse://127.0.0.1:{port}/{db}")).expect("url"),
        )
        .expect("open")
    };
    // Each shard gets its local tables; then Baton opens the first through the cluster.
    drop(open(h2, "sharded"));
    let mut dist = open(h1, "sharded?cluster=two");
    let mut single = clickhouse("single_for_shards");
    let a = same_answers(&mut dist);
    let b = same_answers(&mut single);
    assert_eq!(a.0, b.0, "flame trees differ");
    assert_eq!(a.1, b.1, "top tables differ");
    assert_eq!(a.2, b.2, "series differ");
    assert_eq!(a.3, b.3, "histograms differ");
    let count = |c: &ClickHouse| -> u64 {
        c.count("SELECT count() FROM sharded.samples_local")
            .expect("a count")
    };
    let (n1, n2) = (count(&_a), count(&_b));
    assert_eq!(n1 + n2, 1000, "shard 1 {n1}, shard 2 {n2}");
    assert!(n1 > 0 && n2 > 0, "rows on both shards: {n1} and {n2}");
}

/// Control documents read the same once ClickHouse has merged their rows (`OPTIMIZE … FINAL`)
/// as before: the `FINAL` read and the merge pick the same row of each key, ties included.
#[test]
fn control_records_read_the_same_after_clickhouse_merges_them() {
    let mut s = clickhouse("control_merged");
    control_latest_record_wins(&mut s);
    let before = (s.control("host").expect("c"), s.control("run").expect("c"));
    ch_exec("OPTIMIZE TABLE control_merged.control FINAL");
    let rows = ch_exec("SELECT count() FROM control_merged.control");
    assert_eq!(rows.trim(), "5", "one row per key after the merge");
    let after = (s.control("host").expect("c"), s.control("run").expect("c"));
    assert_eq!(before, after);
}

/// One host's batch: the stack of `batch` (so two hosts' batches share frames and stacks).
fn host_batch(host: &str, ts: i64, leaf: &str, value: i64) -> Batch {
    let mut b = batch(ts, "app", leaf, value, 2.0);
    b.samples[0].labels.insert("host".into(), host.into());
    b
}

/// Two servers on one ClickHouse database, as two stores opened before either wrote: each
/// writes its own hosts' batches, with the same frames and stacks (so both write those rows:
/// merges are stopped, so the duplicates are there when the reads run); a batch retried
/// through the other store is a duplicate; both stores answer every query alike, counting each
/// sample once; symbols, run records and control documents written through one are seen
/// through the other.
#[test]
fn two_stores_share_one_clickhouse_database() {
    let mut stores = [clickhouse("shared"), clickhouse("shared")];
    let merges = |what: &str| {
        for t in [
            "frames",
            "stacks",
            "symbols",
            "batches",
            "samples_local",
            "runs",
            "control",
        ] {
            ch_exec(&format!("SYSTEM {what} MERGES shared.{t}"));
        }
    };
    merges("STOP");
    let once = |s: &mut ClickHouseStore, bt: &Batch, id: &str, host: &str| {
        s.write_batch_once(bt, id, Some(host)).expect("write")
    };
    // (store, host, time, leaf, value, batch id)
    let writes = [
        (0, "h1", 1000, "hot", 10, "h1-1"),
        (1, "h2", 1000, "hot", 20, "h2-1"),
        (0, "h1", 2000, "cold", 5, "h1-2"),
        (1, "h2", 2000, "cold", 7, "h2-2"),
    ];
    for &(i, host, ts, leaf, value, id) in &writes {
        let bt = host_batch(host, ts, leaf, value);
        assert!(once(&mut stores[i], &bt, id, host), "{id}");
    }
    // Retries through the other server, alone and in a group with a new batch.
    for &(i, host, ts, leaf, value, id) in &writes[..2] {
        let bt = host_batch(host, ts, leaf, value);
        assert!(!once(&mut stores[1 - i], &bt, id, host), "retry of {id}");
    }
    let [mut a, mut b] = stores;
    let (retry, new) = (
        host_batch("h1", 2000, "cold", 5),
        host_batch("h2", 3000, "hot", 1),
    );
    let group = [
        WriteItem {
            batch: &retry,
            batch_id: Some("h1-2"),
            host: Some("h1"),
        },
        WriteItem {
            batch: &new,
            batch_id: Some("h2-3"),
            host: Some("h2"),
        },
    ];
    let answers: Vec<bool> = b
        .write_batches(&group)
        .into_iter()
        .map(|r| r.expect("group write"))
        .collect();
    assert_eq!(answers, [false, true]);
    let dup = |t: &str, id: &str| -> i64 {
        let sql = format!("SELECT count() - uniqExact({id}) FROM shared.{t}");
        ch_exec(&sql).trim().parse().expect("a count")
    };
    assert!(
        dup("stacks", "stack_id") > 0,
        "both stores wrote the stacks"
    );
    assert!(
        dup("frames", "frame_id") > 0,
        "both stores wrote the frames"
    );
    // Each sample once: (10 + 20 + 5 + 7 + 1) × weight 2.
    let all = q(0, 10_000);
    for s in [&mut a, &mut b] {
        assert_eq!(s.sample_rows().expect("rows"), 5);
        assert_eq!(s.profile(&all).expect("p").total(), 86.0);
        assert_eq!(
            s.label_values(&all, "host", 10).expect("hosts"),
            [("h2".to_string(), 56.0), ("h1".to_string(), 30.0)]
        );
    }
    let views = |s: &mut ClickHouseStore| {
        let named = s.named_stacks(&all).expect("named");
        let tree = serde_json::to_string(&named.flame_tree()).expect("json");
        let profile = s.profile(&with(all.clone(), "host=h2")).expect("p");
        let top = serde_json::to_string(&profile.top_functions()).expect("json");
        (tree, top, s.timeseries(&all, 1000).expect("series"))
    };
    let (va, vb) = (views(&mut a), views(&mut b));
    assert_eq!(va, vb, "the two stores answer alike");
    assert!(
        va.0.contains("\"hot\"") && va.0.contains("\"cold\""),
        "{}",
        va.0
    );

    // A symbol added through one store shows in the other's cached profile at once.
    let mut raw = host_batch("h1", 4000, "belated", 3);
    raw.samples[0].stack[0].function = None;
    assert!(once(&mut a, &raw, "h1-3", "h1"));
    let leaf = |s: &mut ClickHouseStore| {
        let p = s.profile(&q(4000, 4001)).expect("p");
        p.samples[0].stack[0].display_name()
    };
    let unresolved = leaf(&mut b);
    assert!(unresolved.contains("0x70"), "no symbol yet: {unresolved}");
    let late = LateSymbol {
        offset: 112,
        function: "late_fn".into(),
        file: None,
        line: None,
        inlined: Vec::new(),
    };
    assert_eq!(a.add_symbols("beef", &[late]).expect("add"), 1);
    assert_eq!(leaf(&mut b), "late_fn");
    assert!(b.unsymbolized(10).expect("u").is_empty());

    // Run records and control documents from both: the latest wins, whoever wrote it.
    let rec = |state: &str, at: i64| RunRecord {
        id: 1,
        host: "h1".into(),
        profiler: "cpu".into(),
        state: state.into(),
        recorded_ms: at,
        json: "{}".into(),
    };
    a.record_runs(&[rec("running", 10)]).expect("record");
    b.record_runs(&[rec("done", 20)]).expect("record");
    a.record_runs(&[rec("running", 15)]).expect("record");
    for s in [&mut a, &mut b] {
        let h = s.run_history(10).expect("history");
        assert_eq!((h.len(), h[0].state.as_str()), (1, "done"), "{h:?}");
    }
    a.put_control(&[ControlRecord::new("host", "h1", "old", 10)])
        .expect("put");
    b.put_control(&[ControlRecord::new("host", "h1", "new", 20)])
        .expect("put");
    a.put_control(&[ControlRecord::new("host", "h1", "late", 15)])
        .expect("put");
    for s in [&mut a, &mut b] {
        let c = s.control("host").expect("control");
        assert_eq!(c, [ControlRecord::new("host", "h1", "new", 20)]);
    }
    merges("START");
}

/// A batch another server is writing (its intent row is recent) is refused as in flight, so its
/// sender retries later; one whose writer died (an old intent row) is completed, once; one
/// stored through another server after this store opened is a duplicate.
#[test]
fn a_batch_another_server_holds_waits_or_is_taken_over() {
    let mut s = clickhouse("in_flight");
    let now = baton_model::time::now_ms();
    let intent = |id: &str, at: i64, rows: i64| {
        ch_exec(&format!(
            "INSERT INTO in_flight.batches VALUES ('{id}', 'h1', {at}, {rows})"
        ))
    };
    intent("busy", now, -1);
    intent("dead", now - 2 * baton_store::IN_FLIGHT_GRACE_MS, -1);
    intent("done", now, 1);
    let b = host_batch("h1", 1000, "hot", 10);
    match s.write_batch_once(&b, "busy", Some("h1")) {
        Err(StoreError::InFlight { batch_id }) => assert_eq!(batch_id, "busy"),
        other => panic!("a batch in flight elsewhere was answered {other:?}"),
    }
    assert!(!s.write_batch_once(&b, "done", Some("h1")).expect("done"));
    assert_eq!(s.sample_rows().expect("rows"), 0);
    assert!(s.write_batch_once(&b, "dead", Some("h1")).expect("dead"));
    assert!(!s.write_batch_once(&b, "dead", Some("h1")).expect("again"));
    assert_eq!(s.sample_rows().expect("rows"), 1);
    // The writer of "busy" finishes: its retry here is a duplicate.
    intent("busy", now, 1);
    assert!(!s.write_batch_once(&b, "busy", Some("h1")).expect("busy"));
    assert_eq!(s.sample_rows().expect("rows"), 1);
}

/// Servers that start together on a new database all open it: the DDL they race on is
/// idempotent or retried, and the schema ends whole (each migrated column once).
#[test]
fn stores_opened_at_once_on_a_new_database_all_migrate() {
    let port = lock(server())
        .as_ref()
        .map(|c| c.http_port)
        .expect("server");
    for round in 0..3 {
        let db = format!("race{round}");
        let start = std::sync::Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (start, db) = (start.clone(), db.clone());
                std::thread::spawn(move || {
                    let url = ClickHouseUrl::parse(&format!("clickhouse://127.0.0.1:{port}/{db}"))
                        .expect("url");
                    start.wait();
                    ClickHouseStore::open(url)
                })
            })
            .collect();
        let mut stores: Vec<ClickHouseStore> = threads
            .into_iter()
            .map(|t| t.join().expect("thread").expect("open at once"))
            .collect();
        for (i, s) in stores.iter_mut().enumerate() {
            assert_eq!(
                s.schema_version().expect("v"),
                baton_store::CLICKHOUSE_SCHEMA_VERSION
            );
            let b = host_batch("h1", 1000 + i as i64, "hot", 1);
            assert!(s.write_batch_once(&b, &format!("b{i}"), None).expect("w"));
        }
        assert_eq!(stores[0].sample_rows().expect("rows"), 4);
        let cols = ch_exec(&format!(
            "SELECT count() FROM system.columns WHERE database = '{db}' AND name = 'batch'"
        ));
        assert_eq!(
            cols.trim(),
            "3",
            "samples, histograms and spans have one each"
        );
    }
}
