//! The machinery profilers are built from, apart from any one profiler:
//!
//! - [`record`]: the `#[repr(C)]` record contract and the one checked decoder;
//! - [`skel`]: the target check and skeleton open/load every program starts through;
//! - [`maps`]: stack maps, per-CPU counters, target sets and histograms;
//! - [`ring`]: ring-buffer reader threads with a flush handshake;
//! - [`perf`]: `perf_event_open` for sampling;
//! - [`uprobe`]: binaries, symbols and followed processes for uprobe profilers;
//! - [`copies`] and [`unwind`]: user-stack copies and their DWARF unwinding;
//! - [`threadctx`]: the labels processes publish per thread, read at each sample.

pub(crate) mod copies;
pub(crate) mod maps;
pub(crate) mod perf;
pub(crate) mod record;
pub(crate) mod ring;
pub(crate) mod skel;
pub mod threadctx;
pub mod unwind;
pub mod uprobe;
