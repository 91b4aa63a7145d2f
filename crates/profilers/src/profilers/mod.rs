//! The built-in profilers, one module each. A module holds its BPF program's skeleton
//! (`bpf/<name>.bpf.c`), the `#[repr(C)]` records it shares with that program, its own
//! [`baton_model::ProfilerInfo`] (`INFO`), its [`crate::Profiler`] implementation, and how it
//! starts from [`crate::StartOptions`] (`start_dyn`, or the profiler's own `start` where it
//! takes them as they are); [`crate::registry`] lists them.
//!
//! `gpu` holds the GPU profilers (`cuda`, `gpumem`, `nvml`).
//!
//! `events` is the generic profiler the tracepoint profilers built on `bpf/common.h`
//! (`syscalls`, `locks`, `io`) instantiate with a [`events::Spec`].

pub mod calls;
pub mod cpu;
pub(crate) mod events;
pub mod gpu;
pub mod io;
pub mod latency;
pub mod locks;
pub mod malloc;
pub mod offcpu;
pub mod syscalls;
