//! What every profiler declares about itself: the data the registry in `baton-profilers` holds
//! per profiler, and that the scheduler, config validation and every output read.

use serde::Serialize;

use crate::profile::ValueType;

/// How much a profiler may cost the host at its defaults, for operators choosing what to run
/// continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostClass {
    /// Sampling at a fixed rate: cost bounded by the rate, whatever the workload does.
    Low,
    /// A BPF program on a hot kernel path (scheduler, syscalls, block I/O): a few hundred
    /// nanoseconds per event, with stacks taken only for a bounded or filtered subset.
    Medium,
    /// Uprobes on user-space calls: a trap into the kernel per probed call, so the cost grows
    /// with the call rate of the target.
    High,
}

impl CostClass {
    pub fn name(self) -> &'static str {
        match self {
            CostClass::Low => "low",
            CostClass::Medium => "medium",
            CostClass::High => "high",
        }
    }
}

/// A resource a profiler claims while it runs (see the scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// E.g. `pmu`, `tracepoint:sched:sched_switch`, `uprobe:libc`.
    pub resource: &'static str,
    /// `None`: exclusive; `Some(n)`: up to `n` runs at once.
    pub shared: Option<u32>,
}

/// Labels Baton sets on samples itself: its columns, `baton_weight`, the profilers' own, the
/// trace a thread published, and a container's and a pod's. A service's config label may not
/// take these names, and a label a thread publishes under one is stored as `ctx_<name>`.
pub const BATON_LABELS: &[&str] = &[
    "comm",
    "pid",
    "tid",
    "exe",
    "cgroup",
    "host",
    "run",
    "service",
    "baton_weight",
    "state",
    "syscall",
    "op",
    "function",
    "request",
    "kernel",
    "api",
    "grid",
    "block",
    "stream",
    "gpu",
    "gpu_name",
    "trace_id",
    "span_id",
    "container_id",
    "pod_uid",
    "pod",
    "namespace",
    "container",
];

/// The GPU gauges the `nvml` profiler reads: levels, averaged over windows, never summed.
pub const GPU_GAUGES: &[&str] = &[
    "gpu_util",
    "gpu_mem_util",
    "gpu_mem_used",
    "gpu_mem_total",
    "gpu_power",
    "gpu_temperature",
    "gpu_sm_clock",
    "gpu_proc_util",
    "gpu_proc_mem_util",
    "gpu_proc_mem_used",
];

/// Whether a value type is a level rather than a count of events: `live_bytes`, `live_count`
/// (any `live_*`), which a window reports as what is held at its end, and the GPU gauges
/// ([`GPU_GAUGES`]), which it reports as the mean of its readings. A level is never summed
/// across windows.
pub fn is_level(value_type: &str) -> bool {
    value_type.starts_with("live_") || GPU_GAUGES.contains(&value_type)
}

/// A value a profiler measures per stack, as pprof names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ValueInfo {
    pub kind: &'static str,
    pub unit: &'static str,
    pub help: &'static str,
}

impl ValueInfo {
    pub fn value_type(&self) -> ValueType {
        ValueType::new(self.kind, self.unit)
    }
}

/// A profiler-specific option (`--opt NAME=VALUE`, `options = { … }` in config, run requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OptionInfo {
    pub name: &'static str,
    /// The default, as text; empty when the option has none (and may be required).
    pub default: &'static str,
    pub help: &'static str,
}

/// A mode an option selects (`mode=uprobe`) that costs more than the profiler's default: the
/// scheduler refuses its runs past `max_duration_s`, and `baton profilers` shows its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CostlyMode {
    /// The option and the value that select the mode.
    pub option: &'static str,
    pub value: &'static str,
    pub cost: CostClass,
    /// What it costs the target, in words, measured (`about 2.4 µs per call`).
    pub per_call: &'static str,
    /// The same, in nanoseconds per probed call, for estimates of what a run cost its targets.
    pub per_call_ns: u64,
    /// The longest run the scheduler accepts in this mode.
    pub max_duration_s: u64,
}

/// Everything a profiler declares, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProfilerInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub claims: &'static [Claim],
    /// Value types per stack, the default one first.
    pub values: &'static [ValueInfo],
    /// Histograms it reports (names), if any.
    pub histograms: &'static [&'static str],
    /// Labels beyond the common ones (`state`, `syscall`, `op`…).
    pub labels: &'static [&'static str],
    /// Sampling frequency in Hz for sampling profilers; 0 for event-driven ones.
    pub default_frequency: u64,
    /// The ceiling no run passes (0 for event-driven ones).
    pub max_frequency: u64,
    /// What bounds the cost by default, in words (`19 Hz`, `1 in 512 KiB allocated`).
    pub default_rate: &'static str,
    pub cost: CostClass,
    pub options: &'static [OptionInfo],
    /// Modes that cost more than `cost`, if any.
    pub costly_modes: &'static [CostlyMode],
}

impl ProfilerInfo {
    /// The costly mode `options` select, if any.
    pub fn costly_mode(
        &self,
        options: &std::collections::BTreeMap<String, String>,
    ) -> Option<&'static CostlyMode> {
        self.costly_modes
            .iter()
            .find(|m| options.get(m.option).is_some_and(|v| v == m.value))
    }

    /// The value types per stack, the default one first.
    pub fn value_types(&self) -> Vec<ValueType> {
        self.values.iter().map(ValueInfo::value_type).collect()
    }

    /// The value type named `kind`, or an error listing the ones there are.
    pub fn value_index(&self, kind: &str) -> Result<usize, String> {
        self.values
            .iter()
            .position(|v| v.kind == kind)
            .ok_or_else(|| {
                format!(
                    "profiler {} has no value {kind:?}; its values are {}",
                    self.name,
                    self.values
                        .iter()
                        .map(|v| v.kind)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Checks option names and fills in defaults; the profiler parses the values.
    pub fn check_options(
        &self,
        given: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        for k in given.keys() {
            if !self.options.iter().any(|o| o.name == k) {
                let known = self
                    .options
                    .iter()
                    .map(|o| o.name)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(if known.is_empty() {
                    format!("profiler {} takes no options (got {k:?})", self.name)
                } else {
                    format!(
                        "profiler {} has no option {k:?}; its options are {known}",
                        self.name
                    )
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProfilerInfo = ProfilerInfo {
        name: "malloc",
        description: "",
        claims: &[],
        values: &[
            ValueInfo {
                kind: "alloc_bytes",
                unit: "bytes",
                help: "",
            },
            ValueInfo {
                kind: "live_bytes",
                unit: "bytes",
                help: "",
            },
        ],
        histograms: &[],
        labels: &[],
        default_frequency: 0,
        max_frequency: 0,
        default_rate: "",
        cost: CostClass::High,
        costly_modes: &[],
        options: &[OptionInfo {
            name: "sample_bytes",
            default: "524288",
            help: "",
        }],
    };

    #[test]
    fn values_and_options_are_checked_by_name() {
        assert_eq!(P.value_index("live_bytes"), Ok(1));
        assert!(P
            .value_index("rss")
            .unwrap_err()
            .contains("alloc_bytes, live_bytes"));
        let mut o = std::collections::BTreeMap::new();
        o.insert("sample_bytes".to_string(), "0".to_string());
        assert!(P.check_options(&o).is_ok());
        o.insert("sample_byte".to_string(), "0".to_string());
        assert!(P.check_options(&o).unwrap_err().contains("sample_bytes"));
    }
}
