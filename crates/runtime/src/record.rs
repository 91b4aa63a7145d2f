//! `baton record`'s recording: one collector on the given processes, the whole host, or a
//! command started under the gate, until the duration is up, the command (and what it forked)
//! exits, every target exits, or a stop is asked for.

use std::time::{Duration, Instant};

use baton_agent::{Collector, CollectorOptions, WindowReport};

use crate::gated::{describe_status, exec_path, GatedChild};
use crate::stop::{install_stop_handler, stop_requested};
use crate::Error;

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The collector; with a command, its targets become the command's process.
    pub collector: CollectorOptions,
    /// The command to start and profile from its first instruction; empty for none.
    pub command: Vec<String>,
    /// How long to record; `None` records until the command exits.
    pub duration: Option<Duration>,
}

/// Hears how a recording goes (a progress bar).
pub trait Progress {
    /// Profiling is attached (and the command released): the recording starts now.
    fn started(&mut self);
    /// Every look at the targets: the time since the start and the samples so far.
    fn tick(&mut self, elapsed: Duration, samples: u64);
}

/// A finished recording; the collector is still attached until it is dropped.
pub struct Recording {
    pub collector: Collector,
    pub report: WindowReport,
    pub elapsed: Duration,
    /// Why it ended before its time, if it did.
    pub ended_early: Option<&'static str>,
    /// How the command ended, in words.
    pub command_status: Option<String>,
}

/// Records as `opts` says; SIGINT or SIGTERM ends it early, keeping what was gathered.
pub fn record(mut opts: RecordOptions, progress: &mut dyn Progress) -> Result<Recording, Error> {
    install_stop_handler();
    opts.collector.start.pending_exec = opts.command.first().and_then(|c| exec_path(c));
    let mut child = if opts.command.is_empty() {
        None
    } else {
        // The profiler may want the command started its way (the malloc sampler preloaded).
        let env = baton_profilers::registry::command_env(
            &opts.collector.profiler,
            &opts.collector.start,
        )?;
        Some(GatedChild::spawn_with_env(&opts.command, &env)?)
    };
    // Processes named by pid: the recording ends early when they have all exited.
    let pids_given = child.is_none() && opts.collector.start.targets.is_some();
    if let Some(c) = &child {
        opts.collector.start.targets = Some(vec![c.id()]);
    }
    opts.collector.defer_discovery = child.is_some();
    let mut collector = match Collector::start(&opts.collector) {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = &mut child {
                c.kill();
            }
            return Err(e.into());
        }
    };
    if let Some(c) = &mut child {
        c.release();
        // Look at the command's own mappings as soon as it has exec'd (until then it is this
        // binary, forked), so its unwinding plan is right from its first samples.
        c.wait_exec(Duration::from_millis(500));
        collector.discover();
    }

    let started = Instant::now();
    progress.started();
    let mut ended_early = None;
    let mut child_status = None;
    loop {
        // Look often at first, so the libraries a new command's loader maps are seen before a
        // short command exits.
        let first_second = started.elapsed() < Duration::from_secs(1);
        std::thread::sleep(Duration::from_millis(if first_second { 50 } else { 200 }));
        collector.discover();
        let elapsed = started.elapsed();
        progress.tick(elapsed, collector.stats().samples);
        if stop_requested() {
            ended_early = Some("interrupted");
            break;
        }
        if opts.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        if let Some(c) = &mut child {
            if let Some(st) = c.try_wait() {
                child_status = Some(st);
                // Children it forked may still run; stop once they are gone too.
                if collector.live_targets().is_empty() {
                    break;
                }
            }
        } else if pids_given && collector.live_targets().is_empty() {
            ended_early = Some("every target process exited");
            break;
        }
    }
    collector.finish();
    let report = collector.collect(None)?;
    Ok(Recording {
        collector,
        report,
        elapsed: started.elapsed(),
        ended_early,
        command_status: child_status.map(describe_status),
    })
}
