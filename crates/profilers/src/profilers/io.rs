//! The block I/O profiler: each request noted where it is submitted (`block_io_start`, in the
//! submitting thread, with its kernel and user stacks) and measured at `block_rq_complete`:
//! latency, bytes and requests per (thread, operation, stacks), and a latency histogram per
//! (process, operation).

use crate::mechanics::skel::open_copying;
use crate::profilers::events::{attach_all, event_skel, EventProfiler, RowValue, Spec};
use crate::{ProfilerError, StartOptions};

use baton_model::{Claim, CostClass, ProfilerInfo, ValueInfo};

bpf_skel!("io");
use skel::{IoSkel, IoSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "io",
    description: "block I/O latency, bytes and requests per process, operation and stack, \
                  from the block tracepoints",
    claims: &[Claim {
        resource: "tracepoint:block",
        shared: Some(4),
    }],
    values: &[
        ValueInfo {
            kind: "io_time",
            unit: "nanoseconds",
            help: "time from submission to completion",
        },
        ValueInfo {
            kind: "io_bytes",
            unit: "bytes",
            help: "bytes completed",
        },
        ValueInfo {
            kind: "io_requests",
            unit: "count",
            help: "requests completed",
        },
    ],
    histograms: &["io_latency"],
    labels: &["op"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "every request of the targets",
    cost: CostClass::Medium,
    options: &[],
};

event_skel!(IoSkel);

/// The block layer's `REQ_OP_*` names.
fn op_name(op: u32) -> String {
    match op {
        0 => "read".into(),
        1 => "write".into(),
        2 => "flush".into(),
        3 => "discard".into(),
        5 => "secure_erase".into(),
        9 => "write_zeroes".into(),
        other => format!("op_{other}"),
    }
}

static SPEC: Spec = Spec {
    info: &INFO,
    event: "block:block_io_start/block_rq_complete",
    label: "op",
    kind_name: op_name,
    values: |v: &RowValue| vec![v.ns, v.bytes, v.count],
    histogram: "io_latency",
    hist_key: op_name,
    stat_events: 0,
    stat_lost: 1,
    stat_ustack: 2,
    stat_kstack: Some(3),
    stat_forks: 5,
};

pub(crate) fn start_dyn(o: &StartOptions) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    let (skel, fork) = open_copying!(IoSkelBuilder, "io", o);
    let links = attach_all(
        fork,
        [
            (&skel.progs.on_start, "attaching to block:block_io_start"),
            (
                &skel.progs.on_complete,
                "attaching to block:block_rq_complete",
            ),
        ],
    )?;
    Ok(Box::new(EventProfiler::new(skel, links, &SPEC, o, None)?))
}
