//! The machinery profilers are built from, apart from any one profiler: BPF records and how
//! they are decoded, skeleton start-up, map reads, rings, perf events, uprobes and stack copies.
//! A new profiler composes these; a new kind of stack source (an interpreter unwinder) adds
//! its piece here.

pub(crate) mod record;
pub(crate) mod skel;
