//! The registry: every profiler Baton can run, declared once. Adding a profiler means an entry
//! here and one new module that implements [`crate::Profiler`].

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

use crate::profiler::{Profiler, StartOptions};
use crate::ProfilerError;

/// Starts a profiler from generic options.
pub type StartFn = fn(&StartOptions) -> Result<Box<dyn Profiler>, ProfilerError>;

/// A registered profiler: what it declares, and how to start it.
pub struct Registered {
    pub info: &'static ProfilerInfo,
    pub start: StartFn,
}

pub static CPU: ProfilerInfo = ProfilerInfo {
    name: "cpu",
    description: "on-CPU stacks sampled on a perf event (cycles, else cpu-clock)",
    // Sampling on `cycles` where a PMU exists: one PMU user per host.
    claims: &[Claim {
        resource: "pmu",
        shared: None,
    }],
    values: &[ValueInfo {
        kind: "cpu",
        unit: "nanoseconds",
        help: "CPU time, estimated as samples × the sampling period",
    }],
    histograms: &[],
    labels: &[],
    default_frequency: crate::cpu::DEFAULT_CONTINUOUS_HZ,
    max_frequency: 999,
    default_rate: "19 Hz continuous, 99 Hz for record, per CPU",
    cost: CostClass::Low,
    options: &[OptionInfo {
        name: "timeline",
        default: "on",
        help: "on: each frame-pointer sample's time goes to the timeline too; off: counts only",
    }],
};

pub static OFFCPU: ProfilerInfo = ProfilerInfo {
    name: "offcpu",
    description: "time blocked per stack, from sched_switch (sleeping or uninterruptible)",
    claims: &[Claim {
        resource: "tracepoint:sched:sched_switch",
        shared: Some(4),
    }],
    values: &[
        ValueInfo {
            kind: "offcpu",
            unit: "nanoseconds",
            help: "time blocked",
        },
        ValueInfo {
            kind: "blocks",
            unit: "count",
            help: "blocks at least min_block long",
        },
    ],
    histograms: &[],
    labels: &["state"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "stacks for at most 1,000 switch-outs/s, sampled beyond with weights",
    cost: CostClass::Medium,
    options: &[
        OptionInfo {
            name: "min_block",
            default: "1ms",
            help: "shortest block recorded; shorter ones are only counted",
        },
        OptionInfo {
            name: "max_tracked_per_sec",
            default: "1000",
            help: "switch-outs per second whose stacks are taken; beyond, 1 in N at random",
        },
        OptionInfo {
            name: "timeline",
            default: "on",
            help: "on: each recorded block's start and end go to the timeline too",
        },
    ],
};

pub static MALLOC: ProfilerInfo = ProfilerInfo {
    name: "malloc",
    description: "allocations per stack from uprobes on libc malloc/calloc/realloc/\
                  posix_memalign/free, sampled by bytes, with live (unfreed) bytes",
    claims: &[Claim {
        resource: "uprobe:libc",
        shared: Some(2),
    }],
    values: &[
        ValueInfo {
            kind: "alloc_bytes",
            unit: "bytes",
            help: "bytes allocated in the window",
        },
        ValueInfo {
            kind: "alloc_count",
            unit: "count",
            help: "allocations in the window",
        },
        ValueInfo {
            kind: "live_bytes",
            unit: "bytes",
            help: "bytes allocated since the start and not freed at the end of the window",
        },
    ],
    histograms: &[],
    labels: &[],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "1 sample per 64 KiB allocated, per thread",
    cost: CostClass::High,
    options: &[
        OptionInfo {
            name: "sample_bytes",
            default: "65536",
            help: "mean bytes between samples, per thread; 0 records every allocation (exact)",
        },
        OptionInfo {
            name: "lib",
            default: "",
            help: "the library holding malloc (default: the libc each target maps)",
        },
    ],
};

pub static CALLS: ProfilerInfo = ProfilerInfo {
    name: "calls",
    description: "call counts of the functions matching a pattern (uprobes, as funccount), \
                  per stack, with an optional latency histogram per function",
    claims: &[Claim {
        resource: "uprobe",
        shared: Some(8),
    }],
    values: &[ValueInfo {
        kind: "calls",
        unit: "count",
        help: "calls of the probed functions",
    }],
    histograms: &["call_latency"],
    labels: &["function"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "every call of the chosen functions (at most 1,000 functions)",
    cost: CostClass::High,
    options: &[
        OptionInfo {
            name: "probe",
            default: "",
            help: "[BINARY:]PATTERN: functions to count, a glob (BINARY: a path or a library \
                   name such as libc; default the target's executable)",
        },
        OptionInfo {
            name: "latency",
            default: "false",
            help: "also time each call (uretprobes) into a histogram per function",
        },
        OptionInfo {
            name: "stacks",
            default: "true",
            help: "count per user stack (false: per function only, cheaper)",
        },
    ],
};

pub static SYSCALLS: ProfilerInfo = ProfilerInfo {
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
    options: &[OptionInfo {
        name: "max_stacks_per_sec",
        default: "1000",
        help: "syscalls per second whose user stacks are taken; beyond, 1 in N at random",
    }],
};

pub static LOCKS: ProfilerInfo = ProfilerInfo {
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
    options: &[],
};

pub static IO: ProfilerInfo = ProfilerInfo {
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

pub static LATENCY: ProfilerInfo = ProfilerInfo {
    name: "latency",
    description: "request latency between a begin and an end probe (uprobes or USDT), as a \
                  histogram, with the CPU stacks of requests slower than a threshold",
    claims: &[Claim {
        resource: "uprobe",
        shared: Some(8),
    }],
    values: &[ValueInfo {
        kind: "slow_request_cpu",
        unit: "nanoseconds",
        help: "CPU time of slow requests, sampled on their threads (cpu-clock)",
    }],
    histograms: &["request_latency"],
    labels: &["request"],
    default_frequency: 99,
    max_frequency: 999,
    default_rate: "every request timed; CPU sampled at 99 Hz inside requests",
    cost: CostClass::High,
    options: &[
        OptionInfo {
            name: "begin",
            default: "",
            help: "where a request begins: [BINARY:]SYMBOL (uprobe) or usdt:[BINARY:]PROVIDER:NAME",
        },
        OptionInfo {
            name: "end",
            default: "",
            help: "where it ends, in the same forms",
        },
        OptionInfo {
            name: "match",
            default: "thread",
            help: "pair begin and end by thread, or by an argument of both: arg1 … arg6",
        },
        OptionInfo {
            name: "threshold",
            default: "10ms",
            help: "requests at least this slow keep the CPU stacks sampled while they ran",
        },
    ],
};

/// Every profiler, in the order `--help` lists them.
pub static REGISTRY: &[Registered] = &[
    Registered {
        info: &CPU,
        start: crate::cpu::start_dyn,
    },
    Registered {
        info: &OFFCPU,
        start: crate::offcpu::start_dyn,
    },
    Registered {
        info: &MALLOC,
        start: crate::malloc::start_dyn,
    },
    Registered {
        info: &CALLS,
        start: crate::calls::start_dyn,
    },
    Registered {
        info: &SYSCALLS,
        start: crate::syscalls::start_dyn,
    },
    Registered {
        info: &LOCKS,
        start: crate::locks::start_dyn,
    },
    Registered {
        info: &IO,
        start: crate::io::start_dyn,
    },
    Registered {
        info: &LATENCY,
        start: crate::latency::start_dyn,
    },
];

/// The ad-hoc profilers of the live config tree, by name: their declaration (leaked once per
/// distinct definition) and their definition.
struct AdhocEntry {
    registered: &'static Registered,
    def: std::sync::Arc<baton_config::adhoc::AdhocDef>,
}

fn adhoc_table() -> &'static std::sync::RwLock<Vec<AdhocEntry>> {
    static TABLE: std::sync::OnceLock<std::sync::RwLock<Vec<AdhocEntry>>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Makes the tree's ad-hoc profilers the registered ones (replacing the last tree's): call it
/// whenever a config goes live. A definition that did not change keeps its declaration.
pub fn set_adhoc<'a>(defs: impl IntoIterator<Item = &'a baton_config::adhoc::AdhocDef>) {
    let mut table = adhoc_table().write().unwrap_or_else(|p| p.into_inner());
    let mut next = Vec::new();
    for def in defs {
        if let Some(i) = table.iter().position(|e| *e.def == *def) {
            next.push(table.swap_remove(i));
            continue;
        }
        let info = crate::adhoc::info_of(def);
        next.push(AdhocEntry {
            registered: Box::leak(Box::new(Registered {
                info,
                start: start_unbound,
            })),
            def: std::sync::Arc::new(def.clone()),
        });
    }
    *table = next;
}

/// An ad-hoc entry is started through [`start`], which knows its definition.
fn start_unbound(_: &StartOptions) -> Result<Box<dyn Profiler>, ProfilerError> {
    Err(ProfilerError::Attach(
        "an ad-hoc profiler starts through registry::start".into(),
    ))
}

/// The definition of the ad-hoc profiler `name`, if the live tree has one.
pub fn adhoc(name: &str) -> Option<std::sync::Arc<baton_config::adhoc::AdhocDef>> {
    let table = adhoc_table().read().unwrap_or_else(|p| p.into_inner());
    table
        .iter()
        .find(|e| e.registered.info.name == name)
        .map(|e| e.def.clone())
}

/// Whether `name` is an ad-hoc profiler (its runs need the admin role).
pub fn is_adhoc(name: &str) -> bool {
    adhoc(name).is_some()
}

fn all() -> Vec<&'static Registered> {
    let table = adhoc_table().read().unwrap_or_else(|p| p.into_inner());
    REGISTRY
        .iter()
        .chain(table.iter().map(|e| e.registered))
        .collect()
}

/// Every registered profiler's declaration, the live tree's ad-hoc ones last.
pub fn infos() -> Vec<&'static ProfilerInfo> {
    all().into_iter().map(|r| r.info).collect()
}

/// Every registered profiler's name.
pub fn names() -> Vec<&'static str> {
    all().into_iter().map(|r| r.info.name).collect()
}

/// The built-in profilers' names (what an ad-hoc one may not be called).
pub fn builtin_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.info.name).collect()
}

/// Looks a profiler up by name, with the list of valid names in the error.
pub fn find(name: &str) -> Result<&'static Registered, ProfilerError> {
    all()
        .into_iter()
        .find(|r| r.info.name == name)
        .ok_or_else(|| ProfilerError::UnknownProfiler {
            name: name.to_string(),
            available: names().join(", "),
        })
}

/// Starts the profiler `name`, after checking its options against its declaration.
pub fn start(name: &str, opts: &StartOptions) -> Result<Box<dyn Profiler>, ProfilerError> {
    let r = find(name)?;
    r.info
        .check_options(&opts.options)
        .map_err(|message| ProfilerError::BadOption {
            profiler: r.info.name,
            message,
        })?;
    if let Some(def) = adhoc(name) {
        return crate::adhoc::start(def, r.info, opts);
    }
    (r.start)(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_profiler_lists_the_known_ones() {
        let e = find("gpu-magic")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("gpu-magic") && e.contains("cpu"), "{e}");
        assert_eq!(find("cpu").map(|r| r.info.name).ok(), Some("cpu"));
    }

    #[test]
    fn every_entry_is_complete() {
        let mut seen = std::collections::HashSet::new();
        for r in REGISTRY {
            let i = r.info;
            assert!(seen.insert(i.name), "{} registered twice", i.name);
            assert!(!i.values.is_empty(), "{} declares no value", i.name);
            assert!(!i.claims.is_empty(), "{} claims nothing", i.name);
            assert!(!i.description.is_empty() && !i.default_rate.is_empty());
            assert!(i.default_frequency <= i.max_frequency);
        }
    }
}
