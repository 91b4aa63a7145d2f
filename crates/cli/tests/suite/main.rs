//! End-to-end tests of the `baton` binary against real BPF, real processes, a real DuckDB file,
//! `go tool pprof` and headless Chromium. They need root; without it they fail, loudly.

mod adhoc;
mod bad_input;
mod config;
mod continuous;
mod deploy;
mod fdo;
mod fleet;
mod gpu;
mod harness;
mod heap;
mod jemalloc;
mod k8s;
mod leaks;
mod plan;
mod profilers;
mod python;
mod record;
mod runs;
mod threadctx;
mod triggers;
mod ui;
mod unwind;
mod up;
