//! The profiler registry and the BPF profilers that run on this host.
//!
//! Every profiler implements [`Profiler`] in its own module, which declares its own
//! [`baton_model::ProfilerInfo`]; [`registry`] lists them. The crate is laid out by concern:
//!
//! - `profiler.rs`: the [`Profiler`] trait and what a drain hands back ([`Drained`]).
//! - `registry.rs`: the list of built-in profilers, and the live config's ad-hoc ones.
//! - `profilers/`: one module per built-in profiler (`cpu`, `offcpu`, `malloc`, `calls`,
//!   `latency`, and `syscalls`, `locks`, `io` on the generic `events` profiler). A new BPF
//!   profiler (a GPU or allocator profiler) is a module here, a `src/bpf/<name>.bpf.c`, and an
//!   entry in the registry.
//! - `mechanics/`: what profilers are built from, owned by none: BPF records and their checked
//!   decoding (`record`), skeleton start-up (`skel`), map reads (`maps`), ring readers (`ring`),
//!   perf events (`perf`), uprobe targets (`uprobe`), user-stack copies (`copies`) and DWARF
//!   unwinding (`unwind`).
//! - `interp/`: interpreter frames (CPython) walked in BPF (`bpf/interp.h`), named from the
//!   runtime's objects and merged into the native stacks of every profiler that copies stacks.
//!   A new interpreter is a module there.
//! - `adhoc/`: ad-hoc profilers, bpftrace scripts from the config: their definition (`def`),
//!   the bpftrace process (`process`) and the parsing of its output (`parse`).
//! - `preload/`: the allocation sampler preloaded into processes (`baton_malloc.c`, built by
//!   `build.rs` and embedded), with where it is installed and which processes load it.
//! - `exec.rs`, `sys.rs`: the exec watcher for triggers, and host facts (privileges, CPUs).
//! - `src/bpf/`: the BPF C. `build.rs` compiles every `<name>.bpf.c` into a skeleton; shared
//!   headers are `base.h` (targets, fork following, counters, stack maps), `unwind.h` (plans and
//!   stack copying), `copy.h` (the copy ring of event profilers) and `common.h` (rows and
//!   histograms of the `events` profilers). Every struct C and Rust share has a size assertion
//!   on both sides (see `mechanics/record.rs`).

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
pub mod exec;
pub mod interp;
mod mechanics;
pub mod preload;
pub mod profiler;
mod profilers;
pub mod registry;
pub mod sys;

pub use mechanics::{threadctx, unwind, uprobe};
pub use profilers::gpu;
pub use profilers::{calls, cpu, io, latency, locks, malloc, offcpu, syscalls};

pub use mechanics::perf::SamplingEvent;
pub use mechanics::record::{bad_records, RecordError};
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
    #[error("frequency {0} Hz is out of range; use 1 to {max} Hz", max = profilers::cpu::MAX_FREQUENCY_HZ)]
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
