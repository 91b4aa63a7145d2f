//! The profiler registry and the BPF profilers that run on this host.
//!
//! Every profiler is listed once, in [`ProfilerKind`]; each has its own module. BPF C lives in
//! `src/bpf/<name>.bpf.c` and is compiled into a skeleton by `build.rs`.

pub mod cpu;
pub mod exec;
pub mod offcpu;
mod perf;
mod raw;
pub mod sys;
pub mod unwind;

pub use cpu::{CpuOptions, CpuProfiler, CpuStats, RawSample, UserStackOrigin, Window};
pub use perf::SamplingEvent;

/// Errors from loading, attaching or reading a profiler.
#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    #[error(
        "permission denied: profiling needs root, or the capabilities CAP_BPF and CAP_PERFMON \
         (try `sudo baton …`, or `setcap cap_bpf,cap_perfmon+ep $(command -v baton)`)"
    )]
    Permission,
    #[error("unknown profiler {name:?}; available profilers: {available}")]
    UnknownProfiler { name: String, available: String },
    #[error("frequency {0} Hz is out of range; use 1 to {max} Hz", max = cpu::MAX_FREQUENCY_HZ)]
    BadFrequency(u64),
    #[error("process {0} does not exist (check the pid with `ps -p {0}`)")]
    NoSuchProcess(u32),
    #[error("perf_event_open for {event} on CPU {cpu} failed: {source}")]
    PerfEventOpen {
        event: &'static str,
        cpu: u32,
        source: std::io::Error,
    },
    #[error("reading the online CPU list failed: {0}")]
    CpuList(std::io::Error),
    #[error("starting the stack-unwinding thread failed: {0}")]
    Thread(String),
    #[error("BPF: {context}: {source}")]
    Bpf {
        context: &'static str,
        source: libbpf_rs::Error,
    },
}

impl ProfilerError {
    pub(crate) fn bpf(context: &'static str) -> impl FnOnce(libbpf_rs::Error) -> ProfilerError {
        move |source| {
            if source.kind() == libbpf_rs::ErrorKind::PermissionDenied {
                ProfilerError::Permission
            } else {
                ProfilerError::Bpf { context, source }
            }
        }
    }
}

/// Every profiler Baton knows. Adding one means a variant here and a module beside `cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfilerKind {
    Cpu,
    OffCpu,
}

impl ProfilerKind {
    pub const ALL: &'static [ProfilerKind] = &[ProfilerKind::Cpu, ProfilerKind::OffCpu];

    pub fn name(self) -> &'static str {
        match self {
            ProfilerKind::Cpu => "cpu",
            ProfilerKind::OffCpu => "offcpu",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            ProfilerKind::Cpu => "on-CPU stacks sampled on a perf event (cycles, else cpu-clock)",
            ProfilerKind::OffCpu => {
                "time blocked per stack, from sched_switch (sleeping or uninterruptible)"
            }
        }
    }

    /// Looks a profiler up by name, with the list of valid names in the error.
    pub fn parse(name: &str) -> Result<ProfilerKind, ProfilerError> {
        ProfilerKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| ProfilerError::UnknownProfiler {
                name: name.to_string(),
                available: ProfilerKind::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_profiler_lists_the_known_ones() {
        let e = ProfilerKind::parse("gpu-magic").unwrap_err().to_string();
        assert!(e.contains("gpu-magic") && e.contains("cpu"), "{e}");
        assert_eq!(ProfilerKind::parse("cpu").ok(), Some(ProfilerKind::Cpu));
    }
}
