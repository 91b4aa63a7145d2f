//! The profiler registry and the BPF profilers that run on this host.
//!
//! Every profiler is declared once, in [`registry`], and implements [`Profiler`] in its own
//! module. BPF C lives in
//! `src/bpf/<name>.bpf.c` and is compiled into a skeleton by `build.rs`.

/// Includes the skeleton `build.rs` generated from `src/bpf/NAME.bpf.c` as a private module
/// `skel`.
macro_rules! bpf_skel {
    ($name:literal) => {
        mod skel {
            #![allow(
                clippy::all,
                clippy::unwrap_used,
                clippy::pedantic,
                unused,
                missing_docs,
                non_camel_case_types
            )]
            include!(concat!(env!("OUT_DIR"), "/", $name, ".skel.rs"));
        }
    };
}

pub mod adhoc;
pub mod calls;
mod copies;
pub mod cpu;
mod events;
pub mod exec;
pub mod io;
pub mod latency;
pub mod locks;
pub mod malloc;
mod mechanics;
pub mod offcpu;
mod perf;
pub mod profiler;
mod raw;
pub mod registry;
mod ring;
pub mod sys;
pub mod syscalls;
pub mod unwind;
pub mod uprobe;

pub use cpu::{CpuOptions, CpuProfiler, RawSample, UserStackOrigin, Window};
pub use mechanics::record::{bad_records, RecordError};
pub use perf::SamplingEvent;
pub use profiler::{Drained, Event, Profiler, ProfilerStats, RawHistogram, RawSpan, StartOptions};

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
    #[error("{profiler}: {message}")]
    BadOption {
        profiler: &'static str,
        message: String,
    },
    #[error("{0}")]
    Attach(String),
    #[error("starting the stack-unwinding thread failed: {0}")]
    Thread(String),
    #[error("BPF: {context}: {source}")]
    Bpf {
        context: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("BPF: {step} the {profiler} programs: {source}")]
    Load {
        profiler: &'static str,
        step: &'static str,
        source: libbpf_rs::Error,
    },
}

impl ProfilerError {
    /// A failed BPF call, `context` saying what it did.
    pub(crate) fn bpf(context: &'static str) -> impl FnOnce(libbpf_rs::Error) -> ProfilerError {
        move |source| {
            ProfilerError::unless_permission(source, |source| ProfilerError::Bpf {
                context,
                source,
            })
        }
    }

    /// A skeleton of `profiler` that failed to open or load (`step`).
    pub(crate) fn load(
        profiler: &'static str,
        step: &'static str,
    ) -> impl FnOnce(libbpf_rs::Error) -> ProfilerError {
        move |source| {
            ProfilerError::unless_permission(source, |source| ProfilerError::Load {
                profiler,
                step,
                source,
            })
        }
    }

    /// [`ProfilerError::Permission`] when `source` is a refusal for lack of privileges, else
    /// `other(source)`. With the privileges, EACCES means the verifier refused the program.
    fn unless_permission(
        source: libbpf_rs::Error,
        other: impl FnOnce(libbpf_rs::Error) -> ProfilerError,
    ) -> ProfilerError {
        if source.kind() == libbpf_rs::ErrorKind::PermissionDenied
            && !sys::has_profiling_privileges()
        {
            ProfilerError::Permission
        } else {
            other(source)
        }
    }
}
