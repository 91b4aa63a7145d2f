//! The lock profiler: time threads wait in futex(2) wait operations, the slow path of every
//! pthread mutex, condition variable and most user-space locks, per thread and user stack, from
//! the `syscalls:sys_enter_futex` / `sys_exit_futex` tracepoints, with a wait-time histogram
//! per process.

use crate::mechanics::maps::StatSlots;
use crate::profilers::events::{event_skel, start_events, RowValue, Spec};
use crate::{ProfilerError, StartOptions};

use baton_model::{Claim, CostClass, ProfilerInfo, ValueInfo};

bpf_skel!("locks");
use skel::{LocksSkel, LocksSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "locks",
    description: "time waiting on futexes (mutexes, condition variables) per user stack, \
                  from the futex syscall tracepoints",
    claims: &[Claim {
        resource: "tracepoint:syscalls:futex",
        shared: Some(4),
    }],
    values: &[
        ValueInfo {
            kind: "lock_wait",
            unit: "nanoseconds",
            help: "time blocked in futex waits",
        },
        ValueInfo {
            kind: "lock_waits",
            unit: "count",
            help: "futex waits",
        },
    ],
    histograms: &["futex_wait"],
    labels: &["op"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "every futex wait (each one already blocks)",
    cost: CostClass::Medium,
    costly_modes: &[],
    options: &[],
};

event_skel!(LocksSkel);

fn futex_op(op: u32) -> String {
    match op {
        0 => "wait".into(),
        6 => "lock_pi".into(),
        9 => "wait_bitset".into(),
        11 => "wait_requeue_pi".into(),
        13 => "lock_pi2".into(),
        other => format!("futex_op_{other}"),
    }
}

static SPEC: Spec = Spec {
    info: &INFO,
    event: "syscalls:sys_enter_futex/sys_exit_futex",
    kind_name: futex_op,
    values: |v: &RowValue| vec![v.ns, v.count],
    hist_key: |_| "futex".into(),
    stats: StatSlots::headed(None, 4),
};

pub(crate) fn start_dyn(o: &StartOptions) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    start_events!(
        LocksSkelBuilder,
        "locks",
        o,
        &SPEC,
        None,
        [
            (on_futex_enter, "syscalls:sys_enter_futex"),
            (on_futex_exit, "syscalls:sys_exit_futex"),
        ]
    )
}
