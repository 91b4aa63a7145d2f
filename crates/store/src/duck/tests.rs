//! Unit tests of the DuckDB backend (the conformance suite runs both backends).

use baton_model::{Batch, Frame, FrameKind, Histogram, Labels, StackSample, ValueType};

use super::*;
use crate::query::{Filter, FilterOp};
use crate::{Point, Query};

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
            ],
            labels: [
                ("comm".to_string(), comm.to_string()),
                ("pid".into(), "7".into()),
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

#[test]
fn several_values_details_and_histograms_are_queryable() {
    let mut s = DuckDbStore::in_memory().expect("store");
    let mut b = batch(1_000, "app", "alloc_site_a", 4096, 1.0);
    b.profiler = "malloc".into();
    b.value_type = ValueType::new("alloc_bytes", "bytes");
    b.more_value_types = vec![ValueType::new("alloc_count", "count")];
    let mut second = b.samples[0].clone();
    second.value = 3;
    second.value_index = 1;
    second.labels.insert("op".into(), "write".into());
    // A label of no built-in profiler (an ad-hoc script's key) is kept and filterable.
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
    assert_eq!(s.profile(&q).expect("p").total(), 4096.0);
    assert_eq!(s.profile(&q).expect("p").value_type.kind, "alloc_bytes");
    q.value = Some("alloc_count".into());
    let p = s.profile(&q).expect("p");
    assert_eq!(
        (p.total(), p.value_type.kind.as_str()),
        (3.0, "alloc_count")
    );
    q.filters = vec![Filter::parse("op=write").expect("filter")];
    assert_eq!(s.profile(&q).expect("p").total(), 3.0);
    q.filters = vec![Filter::parse("op=read").expect("filter")];
    assert_eq!(s.profile(&q).expect("p").total(), 0.0);
    q.filters = vec![Filter::parse("fd=3").expect("filter")];
    assert_eq!(s.profile(&q).expect("p").total(), 3.0);
    q.filters = vec![Filter::parse("fd!=3").expect("filter")];
    assert_eq!(s.profile(&q).expect("p").total(), 0.0);
    q.filters = vec![];
    let hs = s.histograms(&q).expect("hist");
    assert_eq!(hs.len(), 1);
    assert_eq!((hs[0].key.as_str(), hs[0].total()), ("foo", 12.0));
    q.filters = vec![Filter::parse("function=bar").expect("filter")];
    assert!(s.histograms(&q).expect("hist").is_empty());
}

#[test]
fn inlined_frames_keep_their_own_name_and_line() {
    let mut s = DuckDbStore::in_memory().expect("open");
    let mut b = batch(1000, "a", "outer", 10, 1.0);
    let outer = b.samples[0].stack[0].clone();
    let inl = |name: &str, line: u32| Frame {
        kind: FrameKind::Inlined,
        function: Some(name.into()),
        file: Some("/src/x.c".into()),
        line: Some(line),
        ..outer.clone()
    };
    // Two functions inlined at the same address as `outer`: three distinct frames.
    b.samples[0].stack.insert(0, inl("mid_inl", 20));
    b.samples[0].stack.insert(0, inl("leaf_inl", 10));
    s.write_batch(&b).expect("write");
    let p = s.profile(&q(0, 10_000)).expect("profile");
    let stack = &p.samples[0].stack;
    assert_eq!(stack.len(), 4, "{stack:?}");
    assert_eq!(stack[0].kind, FrameKind::Inlined);
    assert_eq!(stack[0].function.as_deref(), Some("leaf_inl"));
    assert_eq!(stack[0].line, Some(10));
    assert_eq!(stack[1].function.as_deref(), Some("mid_inl"));
    assert_eq!(stack[1].file.as_deref(), Some("/src/x.c"));
    assert_eq!(stack[2].function.as_deref(), Some("outer"));
    assert_eq!(stack[2].kind, FrameKind::User);
}

#[test]
fn sums_value_times_weight_and_filters() {
    let mut s = DuckDbStore::in_memory().expect("open");
    s.write_batch(&batch(1000, "a", "hot", 10, 3.0)).expect("w");
    s.write_batch(&batch(2000, "a", "hot", 10, 1.0)).expect("w");
    s.write_batch(&batch(2000, "b", "cold", 5, 1.0)).expect("w");
    let p = s.profile(&q(0, 10_000)).expect("profile");
    assert_eq!(p.total(), 45.0);
    let top = p.top_functions();
    assert_eq!(top[0].function, "hot");
    assert_eq!(top[0].self_value, 40.0);
    let mut fq = q(0, 10_000);
    fq.filters.push(Filter::parse("comm=b").expect("f"));
    assert_eq!(s.profile(&fq).expect("p").total(), 5.0);
    // Set filters (service labels resolve to these): in, not in, and the empty set.
    let set = |op, values: &[&str]| Filter {
        label: "comm".into(),
        op,
        value: String::new(),
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let mut total = |f: Filter| {
        let mut fq = q(0, 10_000);
        fq.filters.push(f);
        s.profile(&fq).expect("p").total()
    };
    assert_eq!(total(set(FilterOp::AnyOf, &["a", "zz"])), 40.0);
    assert_eq!(total(set(FilterOp::AnyOf, &[])), 0.0);
    assert_eq!(total(set(FilterOp::NoneOf, &["a"])), 5.0);
    assert_eq!(total(set(FilterOp::NoneOf, &[])), 45.0);
    let named = s.named_stacks(&q(0, 10_000)).expect("named");
    assert_eq!(named.flame_tree(), p.flame_tree());
    assert_eq!(named.top_functions(), top);
    let ts = s.timeseries(&q(0, 10_000), 1000).expect("ts");
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
    let labels = s.label_values(&q(0, 10_000), "comm", 10).expect("labels");
    assert_eq!(labels[0], ("a".to_string(), 40.0));
    assert_eq!(s.profile(&q(3000, 4000)).expect("p").samples.len(), 0);
}

#[test]
fn survives_reopen_and_records_schema_version() {
    let dir = std::env::temp_dir().join(format!("baton-store-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let mut s = DuckDbStore::open(&dir).expect("open");
        s.write_batch(&batch(1000, "a", "hot", 10, 1.0)).expect("w");
    }
    let mut s = DuckDbStore::open(&dir).expect("reopen");
    assert_eq!(s.schema_version().expect("v"), SCHEMA_VERSION);
    // Writing the same stack again must not collide with the dictionary on disk.
    s.write_batch(&batch(2000, "a", "hot", 10, 1.0))
        .expect("w2");
    assert_eq!(s.sample_rows().expect("rows"), 2);
    let p = s.profile(&q(0, 10_000)).expect("p");
    assert_eq!(p.top_functions()[0].function, "hot");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_user_frames_keep_module_and_offset() {
    let mut s = DuckDbStore::in_memory().expect("open");
    let mut b = batch(1000, "a", "hot", 1, 1.0);
    b.samples[0].stack[0].function = None;
    s.write_batch(&b).expect("w");
    let p = s.profile(&q(0, 10_000)).expect("p");
    assert_eq!(p.samples[0].stack[0].display_name(), "[unknown] app+0x30");
}

#[test]
fn batches_with_ids_are_stored_once_and_late_symbols_name_old_samples() {
    let mut s = DuckDbStore::in_memory().expect("store");
    let mut b = batch(1000, "a", "hot", 5, 1.0);
    b.samples[0].stack[0].function = None;
    assert!(s.write_batch_once(&b, "h1-1", Some("h1")).expect("w"));
    assert!(!s.write_batch_once(&b, "h1-1", Some("h1")).expect("w"));
    assert_eq!(s.sample_rows().expect("rows"), 1);
    let p = s.named_stacks(&q(0, 10_000)).expect("p");
    assert!(p.top_functions()[0].function.starts_with("[unknown]"));
    let waiting = s.unsymbolized(100).expect("u");
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].build_id, "beef");
    assert_eq!(waiting[0].offsets, vec![48]);
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
    let names: Vec<String> = p.samples[0]
        .stack
        .iter()
        .map(|f| f.display_name())
        .collect();
    assert_eq!(names, vec!["step", "hot_loop", "main"]);
    assert_eq!(p.samples[0].stack[0].kind, FrameKind::Inlined);
    assert_eq!(p.samples[0].stack[1].line, Some(12));
    let named = s.named_stacks(&q(0, 10_000)).expect("named");
    let leaf = named.stacks[0].0[0] as usize;
    assert_eq!(named.names[leaf], "step");
}
