//! The block I/O profiler: each request noted where it is submitted (`block_io_start`, in the
//! submitting thread, with its kernel and user stacks) and measured at `block_rq_complete`:
//! latency, bytes and requests per (thread, operation, stacks), and a latency histogram per
//! (process, operation).

use crate::mechanics::maps::StatSlots;
use crate::profilers::events::{event_skel, start_events, RowValue, Spec};
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
    costly_modes: &[],
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
    kind_name: op_name,
    values: |v: &RowValue| vec![v.ns, v.bytes, v.count],
    hist_key: op_name,
    stats: StatSlots::headed(Some(3), 5),
};

pub(crate) fn start_dyn(o: &StartOptions) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    start_events!(
        IoSkelBuilder,
        "io",
        o,
        &SPEC,
        None,
        [
            (on_start, "block:block_io_start"),
            (on_complete, "block:block_rq_complete"),
        ]
    )
}
