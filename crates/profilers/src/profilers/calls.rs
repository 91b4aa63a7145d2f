//! The call-count profiler: uprobes on the functions of a binary whose names match a pattern,
//! as bcc's `funccount` does, counted per stack, with an optional latency histogram per
//! function from uretprobes.
//!
//! `probe=[BINARY:]PATTERN` chooses the functions: BINARY is an absolute path or a library name
//! (`libc`), and defaults to each target's executable. Probes are attached per target process,
//! and to the children it forks as they are seen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use libbpf_rs::{Link, MapCore, MapFlags, UprobeOpts};

use crate::mechanics::maps::{
    clear_if_half_full, drain_histograms, flip_buffers, Buffers, StackReader, StatSlots,
};
use crate::mechanics::record::{comm, decode, record};
use crate::mechanics::skel::open_targeted;
use crate::mechanics::threadctx::ThreadContexts;
use crate::mechanics::uprobe::{
    functions_matching, per_process, per_process_methods, resolve_binary, Followed, PerProcess,
};
use crate::{Drained, Event, ProfilerError, ProfilerStats, StartOptions};

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("calls");
use skel::{CallsSkel, CallsSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "calls",
    description: "call counts of the functions matching a pattern (uprobes, as funccount), \
                  per stack, with an optional latency histogram per function",
    claims: &[Claim {
        resource: "uprobe",
        shared: Some(8),
    }],
    values: &[ValueInfo {
        kind: "calls",
        unit: "count",
        help: "calls of the probed functions",
    }],
    histograms: &["call_latency"],
    labels: &["function"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "every call of the chosen functions (at most 1,000 functions)",
    cost: CostClass::High,
    costly_modes: &[],
    options: &[
        OptionInfo {
            name: "probe",
            default: "",
            help: "[BINARY:]PATTERN: functions to count, a glob (BINARY: a path or a library \
                   name such as libc; default the target's executable)",
        },
        OptionInfo {
            name: "latency",
            default: "false",
            help: "also time each call (uretprobes) into a histogram per function",
        },
        OptionInfo {
            name: "stacks",
            default: "true",
            help: "count per user stack (false: per function only, cheaper)",
        },
    ],
};

/// Most functions one run may probe.
const MAX_FUNCTIONS: usize = 1000;
const STACK_ENTRIES: usize = 16384;

/// `struct call_key` of calls.bpf.c: calls of one function by a thread, from one stack.
#[repr(C)]
#[derive(Clone, Copy)]
struct CallKey {
    pid: u32,
    tid: u32,
    function: u32,
    user_stack: i32,
    /// The caller's return address, read from the top of the stack at the entry.
    caller: u64,
    buffer: u32,
    pad: u32,
    comm: [u8; 16],
    /// The function's address, for a one-frame stack when stacks are off.
    ip: u64,
    /// The thread's interned context (`bpf/threadctx.h`), 0: none.
    ctx: u64,
}
record!(CallKey, "call_key", 64);

/// A running call-count profiler. Dropping it detaches every probe.
pub struct CallsProfiler {
    skel: CallsSkel<'static>,
    links: Vec<Link>,
    _fork_link: Option<Link>,
    /// The binary part of the probe spec, and the pattern.
    binary: String,
    pattern: String,
    latency: bool,
    /// Function names by cookie.
    names: Vec<String>,
    index: HashMap<String, u32>,
    followed: Followed,
    buffers: Buffers,
    stale_stacks: u64,
    contexts: ThreadContexts,
}

impl CallsProfiler {
    pub fn start(o: &StartOptions) -> Result<CallsProfiler, ProfilerError> {
        let info = &INFO;
        let bad = |message: String| ProfilerError::BadOption {
            profiler: info.name,
            message,
        };
        let probe = o.option(info, "probe").trim().to_string();
        if probe.is_empty() {
            return Err(bad(
                "say which functions to count with probe=[BINARY:]PATTERN, e.g. \
                 --opt probe=handle_* or --opt probe=libc:malloc"
                    .into(),
            ));
        }
        let (binary, pattern) = match probe.split_once(':') {
            Some((b, p)) => (b.to_string(), p.to_string()),
            None => (String::new(), probe.clone()),
        };
        let flag = |name: &str| -> Result<bool, ProfilerError> {
            match o.option(info, name) {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                other => Err(bad(format!("{name} must be true or false, not {other:?}"))),
            }
        };
        let latency = flag("latency")?;
        let stacks = flag("stacks")?;
        let (skel, fork_link) = open_targeted!(CallsSkelBuilder, "calls", o, |open| {
            if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
                ro.take_stacks = u8::from(stacks);
                ro.measure_latency = u8::from(latency);
            }
        });
        let mut p = CallsProfiler {
            skel,
            links: Vec::new(),
            _fork_link: fork_link,
            binary,
            pattern,
            latency,
            names: Vec::new(),
            index: HashMap::new(),
            followed: Followed::new(o.targets.as_deref()),
            buffers: Buffers::default(),
            stale_stacks: 0,
            contexts: ThreadContexts::default(),
        };
        match &o.targets {
            None => {
                let path = resolve_binary(None, &p.binary)?;
                p.attach(-1, path)?;
            }
            Some(pids) => p.attach_targets(pids, o.pending_exec.as_deref())?,
        }
        Ok(p)
    }

    /// Attaches to process `pid`, in `exe` (its executable, not yet exec'd) when the probe
    /// names no binary.
    fn attach_target(&mut self, pid: u32, exe: Option<&Path>) -> Result<(), ProfilerError> {
        let path = match exe {
            Some(exe) if self.binary.is_empty() => exe.to_path_buf(),
            _ => resolve_binary(Some(pid), &self.binary)?,
        };
        self.attach(pid as i32, path)
    }

    fn attach(&mut self, pid: i32, path: PathBuf) -> Result<(), ProfilerError> {
        let found = functions_matching(&path, &self.pattern)?;
        if found.is_empty() {
            return Err(ProfilerError::Attach(format!(
                "no function of {} matches {:?}",
                path.display(),
                self.pattern
            )));
        }
        if found.len() > MAX_FUNCTIONS {
            return Err(ProfilerError::Attach(format!(
                "{} functions of {} match {:?}; narrow the pattern (at most {MAX_FUNCTIONS})",
                found.len(),
                path.display(),
                self.pattern
            )));
        }
        for f in found {
            let cookie = match self.index.get(&f.name) {
                Some(&c) => c,
                None => {
                    self.names.push(f.name.clone());
                    let c = (self.names.len() - 1) as u32;
                    self.index.insert(f.name.clone(), c);
                    c
                }
            };
            let mut progs = vec![(&self.skel.progs.call_entry, false)];
            if self.latency {
                progs.push((&self.skel.progs.call_return, true));
            }
            for (prog, retprobe) in progs {
                let link = prog
                    .attach_uprobe_with_opts(
                        pid,
                        &path,
                        f.file_offset as usize,
                        UprobeOpts {
                            cookie: u64::from(cookie),
                            retprobe,
                            ..Default::default()
                        },
                    )
                    .map_err(|e| {
                        ProfilerError::Attach(format!(
                            "attaching to {} in {} (pid {pid}): {e}",
                            f.name,
                            path.display()
                        ))
                    })?;
                self.links.push(link);
            }
        }
        Ok(())
    }

    fn name(&self, cookie: u32) -> String {
        self.names
            .get(cookie as usize)
            .cloned()
            .unwrap_or_else(|| format!("function #{cookie}"))
    }
}

per_process!(CallsProfiler);

/// Slots of `enum stat_index` in calls.bpf.c.
static STATS: StatSlots = StatSlots::headed(None, 5);

impl crate::Profiler for CallsProfiler {
    fn info(&self) -> &'static baton_model::ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        let old = flip_buffers!(self.buffers, self.skel);
        let mut out = Drained::default();
        let counts = &self.skel.maps.counts;
        let mut stacks = StackReader::new(&self.skel.maps.stacks);
        for raw in counts.keys().collect::<Vec<_>>() {
            let Ok(key) = decode::<CallKey>(&raw) else {
                continue;
            };
            if key.buffer != old {
                continue;
            }
            let n = counts
                .lookup(&raw, MapFlags::ANY)
                .map_err(ProfilerError::bpf("reading a call count"))?
                .and_then(|v| decode::<u64>(&v).ok())
                .unwrap_or(0);
            let _ = counts.delete(&raw);
            let mut user = if key.user_stack >= 0 {
                stacks.get(key.user_stack)
            } else {
                // Stacks off: the function alone.
                vec![key.ip]
            };
            // Kernels since 6.12 add the caller themselves at a uprobe on a function's entry;
            // older ones skip it.
            if key.caller != 0 && !user.is_empty() && user.get(1) != Some(&key.caller) {
                user.insert(1, key.caller);
            }
            out.events.push(Event {
                pid: key.pid,
                tid: key.tid,
                cgroup_id: 0,
                comm: comm(&key.comm),
                kernel: Vec::new(),
                user,
                count: n,
                values: vec![n],
                weight: 1.0,
                labels: vec![("function", self.name(key.function))],
                frames: Vec::new(),
                keep_zero: 0,
                context: self.contexts.labels(key.ctx, &self.skel.maps.ctx_records),
            });
        }
        self.contexts.prune(&self.skel.maps.ctx_procs);
        self.stale_stacks += stacks.stale;
        clear_if_half_full(&self.skel.maps.stacks, STACK_ENTRIES);
        let comms: HashMap<u32, String> =
            out.events.iter().map(|e| (e.pid, e.comm.clone())).collect();
        out.histograms = drain_histograms(
            &self.skel.maps.hists,
            old,
            "call_latency",
            |f| self.name(f),
            &comms,
        )?;
        Ok(out)
    }

    fn stats(&self) -> ProfilerStats {
        let mut s = STATS.read_with_stale(&self.skel.maps.stats, self.stale_stacks);
        s.context = self.contexts.stats(&self.skel.maps.ctx_stats);
        s
    }

    fn observe_maps(&mut self, pid: u32, maps: &str) {
        self.contexts.observe(pid, maps, &self.skel.maps.ctx_procs);
    }

    per_process_methods!();

    fn event_name(&self) -> String {
        format!(
            "uprobes on {} function(s) matching {}{}",
            self.names.len(),
            self.pattern,
            if self.latency { ", with latency" } else { "" }
        )
    }
}
