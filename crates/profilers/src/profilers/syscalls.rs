//! The syscall profiler: every syscall of the targets timed from `raw_syscalls`, as exact
//! latency histograms per (process, syscall), plus time and counts per (thread, syscall, user
//! stack) with stacks taken for at most `max_stacks_per_sec` syscalls a second (at random,
//! weighted), so a process making a million syscalls a second costs a bounded stack budget.

use crate::mechanics::maps::StatSlots;
use crate::profilers::events::{event_skel, start_events, RowValue, Spec};
use crate::{ProfilerError, StartOptions};

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("syscalls");
use skel::{SyscallsSkel, SyscallsSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "syscalls",
    description: "syscall counts and latency per process, syscall and user stack, from \
                  raw_syscalls, with exact latency histograms per syscall",
    claims: &[Claim {
        resource: "tracepoint:raw_syscalls",
        shared: Some(2),
    }],
    values: &[
        ValueInfo {
            kind: "syscall_time",
            unit: "nanoseconds",
            help: "time in syscalls",
        },
        ValueInfo {
            kind: "syscalls",
            unit: "count",
            help: "syscalls made",
        },
    ],
    histograms: &["syscall_latency"],
    labels: &["syscall"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "every syscall timed; stacks for at most 1,000 syscalls/s, weighted",
    cost: CostClass::Medium,
    costly_modes: &[],
    options: &[OptionInfo {
        name: "max_stacks_per_sec",
        default: "1000",
        help: "syscalls per second whose user stacks are taken; beyond, 1 in N at random",
    }],
};

mod names {
    include!(concat!(env!("OUT_DIR"), "/syscall_names.rs"));
}

event_skel!(SyscallsSkel);

/// The name of syscall `nr` on this architecture.
pub fn syscall_name(nr: u32) -> String {
    names::SYSCALL_NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("syscall_{nr}"))
}

static SPEC: Spec = Spec {
    info: &INFO,
    event: "raw_syscalls:sys_enter/sys_exit",
    kind_name: syscall_name,
    values: |v: &RowValue| vec![v.ns, v.count],
    hist_key: syscall_name,
    stats: StatSlots::headed(None, 5),
};

pub(crate) fn start_dyn(o: &StartOptions) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    let budget = o.option_u64(&INFO, "max_stacks_per_sec")?;
    start_events!(
        SyscallsSkelBuilder,
        "syscalls",
        o,
        &SPEC,
        Some(budget),
        [
            (on_enter, "raw_syscalls:sys_enter"),
            (on_exit, "raw_syscalls:sys_exit"),
        ]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_come_from_the_kernel_headers() {
        assert_eq!(super::syscall_name(1), "write");
        assert_eq!(super::syscall_name(202), "futex");
        assert_eq!(super::syscall_name(99_999), "syscall_99999");
    }
}
