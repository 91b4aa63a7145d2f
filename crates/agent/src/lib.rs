//! One collector and the host's observations: a profiler of the registry plus the process
//! snapshots, symbolization and labels that turn its raw windows into a [`Batch`] for a store,
//! and the `/proc` reads the runtime needs (run targets, CPU and RSS for triggers, cgroups, JVM
//! perf maps). No threads and no policy: `baton-runtime` drives it.

pub mod attribute;
mod cgroups;
mod collector;
pub mod jvm;
pub mod k8s;
pub mod metrics;
pub mod observe;
pub mod prom;
pub mod targets;

pub use cgroups::containers;
pub use collector::{Collector, CollectorOptions, WindowReport};
pub use metrics::AgentMetrics;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Profiler(#[from] baton_profilers::ProfilerError),
}

/// This host's name, as the kernel has it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}
