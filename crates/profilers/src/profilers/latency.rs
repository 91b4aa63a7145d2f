//! The request-latency profiler: the user names where a request begins and ends (two uprobe
//! symbols or two USDT probes), matched per thread or by an argument. Every request's latency
//! goes into a histogram per process; requests slower than `threshold` carry the CPU stacks
//! sampled on their thread while they ran (cpu-clock at the run's frequency), labelled with the
//! request: the CPU profiler's signal composed with request boundaries.
//!
//! Probe specs: `[BINARY:]SYMBOL` for a uprobe, `usdt:[BINARY:]PROVIDER:NAME` for a USDT probe;
//! BINARY is a path or a library name and defaults to the target's executable.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libbpf_rs::{Link, MapCore, MapFlags, UprobeOpts};

use baton_model::sync::lock;

use crate::mechanics::copies::CopyReader;
use crate::mechanics::maps::{
    clear_if_half_full, drain_histograms, flip_buffers, Buffers, StackReader, StatSlots,
};
use crate::mechanics::perf::{open_sampling_event, SamplingEvent};
use crate::mechanics::record::{comm, decode, kind_of, record};
use crate::mechanics::ring::RingReader;
use crate::mechanics::skel::open_copying;
use crate::mechanics::threadctx::ThreadContexts;
use crate::mechanics::uprobe::{
    functions_matching, per_process, per_process_methods, resolve_binary, Followed, PerProcess,
};
use crate::{sys, Drained, Event, ProfilerError, ProfilerStats, StartOptions};

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("latency");
use skel::{LatencySkel, LatencySkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "latency",
    description: "request latency between a begin and an end probe (uprobes or USDT), as a \
                  histogram, with the CPU stacks of requests slower than a threshold",
    claims: &[Claim {
        resource: "uprobe",
        shared: Some(8),
    }],
    values: &[ValueInfo {
        kind: "slow_request_cpu",
        unit: "nanoseconds",
        help: "CPU time of slow requests, sampled on their threads (cpu-clock)",
    }],
    histograms: &["request_latency"],
    labels: &["request"],
    default_frequency: 99,
    max_frequency: 999,
    default_rate: "every request timed; CPU sampled at 99 Hz inside requests",
    cost: CostClass::High,
    costly_modes: &[],
    options: &[
        OptionInfo {
            name: "begin",
            default: "",
            help: "where a request begins: [BINARY:]SYMBOL (uprobe) or usdt:[BINARY:]PROVIDER:NAME",
        },
        OptionInfo {
            name: "end",
            default: "",
            help: "where it ends, in the same forms",
        },
        OptionInfo {
            name: "match",
            default: "thread",
            help: "pair begin and end by thread, or by an argument of both: arg1 … arg6",
        },
        OptionInfo {
            name: "threshold",
            default: "10ms",
            help: "requests at least this slow keep the CPU stacks sampled while they ran",
        },
    ],
};

const DEFAULT_HZ: u64 = 99;
const STACK_ENTRIES: usize = 16384;

/// Where a request begins or ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Uprobe {
        binary: String,
        symbol: String,
    },
    Usdt {
        binary: String,
        provider: String,
        name: String,
    },
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bin = |b: &str| {
            if b.is_empty() {
                String::new()
            } else {
                format!("{b}:")
            }
        };
        match self {
            Probe::Uprobe { binary, symbol } => write!(f, "{}{symbol}", bin(binary)),
            Probe::Usdt {
                binary,
                provider,
                name,
            } => write!(f, "usdt:{}{provider}:{name}", bin(binary)),
        }
    }
}

impl Probe {
    fn parse(spec: &str) -> Result<Probe, String> {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix("usdt:") {
            let parts: Vec<&str> = rest.split(':').collect();
            return match parts.as_slice() {
                [p, n] => Ok(Probe::Usdt {
                    binary: String::new(),
                    provider: (*p).into(),
                    name: (*n).into(),
                }),
                [b, p, n] => Ok(Probe::Usdt {
                    binary: (*b).into(),
                    provider: (*p).into(),
                    name: (*n).into(),
                }),
                _ => Err(format!(
                    "{spec:?}: write a USDT probe as usdt:[BINARY:]PROVIDER:NAME"
                )),
            };
        }
        let (binary, symbol) = match spec.split_once(':') {
            Some((b, s)) => (b.to_string(), s.to_string()),
            None => (String::new(), spec.to_string()),
        };
        if symbol.is_empty() {
            return Err(format!("{spec:?}: name a function, [BINARY:]SYMBOL"));
        }
        Ok(Probe::Uprobe { binary, symbol })
    }

    fn binary(&self) -> &str {
        match self {
            Probe::Uprobe { binary, .. } | Probe::Usdt { binary, .. } => binary,
        }
    }
}

/// `struct sample_event` of latency.bpf.c: a CPU sample inside request `id`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SampleEvent {
    kind: u32,
    pid: u32,
    id: u64,
    tid: u32,
    kernel_stack: i32,
    user_stack: i32,
    /// 1: the user stack was copied under `cookie` instead of walked.
    copied: u32,
    comm: [u8; 16],
    cookie: u64,
    /// The thread's interned context (`bpf/threadctx.h`), 0: none.
    ctx: u64,
}
record!(SampleEvent, "sample_event", 64);

/// `struct slow_event` of latency.bpf.c: request `id` ended at least `threshold` slow.
#[repr(C)]
#[derive(Clone, Copy)]
struct SlowEvent {
    kind: u32,
    pid: u32,
    id: u64,
    latency: u64,
    start: u64,
    tid: u32,
    pad: u32,
}
record!(SlowEvent, "slow_event", 40);

/// `struct inflight` of latency.bpf.c: a request that began and has not ended.
#[repr(C)]
#[derive(Clone, Copy)]
struct Inflight {
    start: u64,
    id: u64,
    pid: u32,
    tid: u32,
}
record!(Inflight, "inflight", 24);

/// The `kind`s of the events ring.
const EV_SAMPLE: u32 = 1;
const EV_SLOW: u32 = 2;

/// A sample taken inside a request, before its request is known to be slow.
#[derive(Clone)]
struct Sample {
    pid: u32,
    tid: u32,
    comm: String,
    kernel: i32,
    user: i32,
    /// The copy's cookie, when the user stack was copied for DWARF unwinding.
    copied: Option<u64>,
    /// The thread's interned context.
    ctx: u64,
}

#[derive(Default)]
struct State {
    /// Samples per request id, until the request ends.
    pending: HashMap<u64, Vec<Sample>>,
    /// Requests that ended slow since the last drain: id -> latency.
    slow: HashMap<u64, u64>,
    /// Where and when they ran: id -> (pid, tid, start ns, monotonic).
    slow_at: HashMap<u64, (u32, u32, u64)>,
}

impl State {
    fn on_event(&mut self, d: &[u8]) {
        match kind_of(d) {
            Some(EV_SAMPLE) => {
                if let Ok(e) = decode::<SampleEvent>(d) {
                    self.pending.entry(e.id).or_default().push(Sample {
                        pid: e.pid,
                        tid: e.tid,
                        kernel: e.kernel_stack,
                        user: e.user_stack,
                        comm: comm(&e.comm),
                        copied: (e.copied != 0).then_some(e.cookie),
                        ctx: e.ctx,
                    });
                }
            }
            Some(EV_SLOW) => {
                if let Ok(e) = decode::<SlowEvent>(d) {
                    self.slow.insert(e.id, e.latency);
                    self.slow_at.insert(e.id, (e.pid, e.tid, e.start));
                }
            }
            _ => {}
        }
    }
}

/// A running latency profiler. Dropping it detaches every probe and sampler.
pub struct LatencyProfiler {
    /// First, so its reader thread stops before the ring's map is closed.
    copies: Option<CopyReader>,
    links: Vec<Link>,
    _events: Vec<OwnedFd>,
    reader: RingReader,
    state: Arc<Mutex<State>>,
    begin: Probe,
    end: Probe,
    followed: Followed,
    frequency_hz: u64,
    threshold_ns: u64,
    buffers: Buffers,
    stale_stacks: u64,
    contexts: ThreadContexts,
    /// Last: its links (USDT ones use the object's manager when they detach) and readers go
    /// first, and the object is closed after them.
    skel: LatencySkel<'static>,
}

impl LatencyProfiler {
    pub fn start(o: &StartOptions) -> Result<LatencyProfiler, ProfilerError> {
        let info = &INFO;
        let bad = |message: String| ProfilerError::BadOption {
            profiler: info.name,
            message,
        };
        let (b, e) = (o.option(info, "begin"), o.option(info, "end"));
        if b.is_empty() || e.is_empty() {
            return Err(bad(
                "name where a request begins and ends: --opt begin=handle_start --opt \
                 end=handle_done (uprobes), or begin=usdt:PROVIDER:NAME (USDT)"
                    .into(),
            ));
        }
        let begin = Probe::parse(b).map_err(bad)?;
        let end = Probe::parse(e).map_err(bad)?;
        let match_arg = match o.option(info, "match") {
            "thread" => 0u8,
            m => m
                .strip_prefix("arg")
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| (1..=6).contains(n))
                .ok_or_else(|| bad(format!("match must be thread or arg1…arg6, not {m:?}")))?,
        };
        let threshold_ns = o.option_ns(info, "threshold")?;
        let frequency_hz = if o.frequency_hz == 0 {
            DEFAULT_HZ
        } else {
            o.frequency_hz
        };
        let (mut skel, fork) = open_copying!(LatencySkelBuilder, "latency", o, |open| {
            if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
                ro.match_arg = match_arg;
                ro.threshold_ns = threshold_ns;
            }
        });
        let mut links: Vec<Link> = fork.into_iter().collect();
        let cpus = sys::online_cpus().map_err(ProfilerError::CpuList)?;
        let mut events = Vec::new();
        for cpu in cpus {
            let fd = open_sampling_event(SamplingEvent::CpuClock, cpu, frequency_hz).map_err(
                |source| ProfilerError::PerfEventOpen {
                    event: "cpu-clock",
                    cpu,
                    source,
                },
            )?;
            links.push(
                skel.progs
                    .on_cpu_sample
                    .attach_perf_event(fd.as_raw_fd())
                    .map_err(ProfilerError::bpf("attaching the request sampler"))?,
            );
            events.push(fd);
        }
        let state: Arc<Mutex<State>> = Arc::default();
        let sink = Arc::clone(&state);
        let reader = RingReader::start("baton-latency", &skel.maps.events, move |d| {
            lock(&sink).on_event(d)
        })?;
        if let Some(bss) = skel.maps.bss_data.as_deref_mut() {
            bss.active_buffer = 0;
        }
        let copies = CopyReader::start(
            "baton-latency-copies",
            &skel.maps.copies,
            &skel.maps.dwarf_pids,
            &skel.maps.interp_procs,
            o.dwarf,
            o.targets.as_deref(),
        )?;
        let mut p = LatencyProfiler {
            copies,
            skel,
            links,
            _events: events,
            reader,
            state,
            begin,
            end,
            followed: Followed::new(o.targets.as_deref()),
            frequency_hz,
            threshold_ns,
            buffers: Buffers::default(),
            stale_stacks: 0,
            contexts: ThreadContexts::default(),
        };
        match &o.targets {
            None => p.attach(-1, None)?,
            Some(pids) => p.attach_targets(pids, o.pending_exec.as_deref())?,
        }
        Ok(p)
    }

    /// Attaches the begin and end probes to process `pid`; `exe`: its executable, not yet
    /// exec'd.
    fn attach_target(&mut self, pid: u32, exe: Option<&Path>) -> Result<(), ProfilerError> {
        self.attach(pid as i32, exe.map(Path::to_path_buf))
    }

    fn attach(&mut self, pid: i32, pending_exec: Option<PathBuf>) -> Result<(), ProfilerError> {
        for (probe, is_begin) in [(self.begin.clone(), true), (self.end.clone(), false)] {
            let path = match (&pending_exec, probe.binary()) {
                (Some(exe), "") => exe.clone(),
                (_, b) => resolve_binary((pid > 0).then_some(pid as u32), b)?,
            };
            let link = match &probe {
                Probe::Uprobe { symbol, .. } => {
                    let f = functions_matching(&path, symbol)?
                        .into_iter()
                        .find(|f| &f.name == symbol)
                        .ok_or_else(|| {
                            ProfilerError::Attach(format!(
                                "no function {symbol} in {}",
                                path.display()
                            ))
                        })?;
                    let prog = if is_begin {
                        &self.skel.progs.begin_uprobe
                    } else {
                        &self.skel.progs.end_uprobe
                    };
                    prog.attach_uprobe_with_opts(
                        pid,
                        &path,
                        f.file_offset as usize,
                        UprobeOpts::default(),
                    )
                }
                Probe::Usdt { provider, name, .. } => {
                    let prog = if is_begin {
                        &self.skel.progs.begin_usdt
                    } else {
                        &self.skel.progs.end_usdt
                    };
                    prog.attach_usdt(pid, &path, provider, name)
                }
            }
            .map_err(|e| {
                ProfilerError::Attach(format!(
                    "attaching to {probe} in {} (pid {pid}): {e}",
                    path.display()
                ))
            })?;
            self.links.push(link);
        }
        Ok(())
    }
}

per_process!(LatencyProfiler);

/// Slots of `enum stat_index` in latency.bpf.c: `samples` are requests ended, `lost` requests
/// or samples BPF had no room for.
static STATS: StatSlots = StatSlots {
    samples: 0,
    lost: &[1, 6],
    user_stack_failed: 2,
    kernel_stack_failed: Some(3),
    forks_followed: 4,
};

impl crate::Profiler for LatencyProfiler {
    fn info(&self) -> &'static baton_model::ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        let old = flip_buffers!(self.buffers, self.skel);
        self.reader.flush();
        if let Some(c) = &self.copies {
            c.flush();
        }
        let in_flight: HashSet<u64> = self
            .skel
            .maps
            .inflight
            .keys()
            .filter_map(|k| {
                self.skel
                    .maps
                    .inflight
                    .lookup(&k, MapFlags::ANY)
                    .ok()
                    .flatten()
            })
            .filter_map(|v| decode::<Inflight>(&v).ok())
            .map(|f| f.id)
            .collect();
        let mut out = Drained::default();
        let period = 1_000_000_000 / self.frequency_hz;
        let mut stacks = StackReader::new(&self.skel.maps.stacks);
        {
            let mut st = lock(&self.state);
            let slow = std::mem::take(&mut st.slow);
            for (id, (pid, tid, start_ns)) in std::mem::take(&mut st.slow_at) {
                let dur_ns = slow.get(&id).copied().unwrap_or(0);
                out.spans.push(crate::RawSpan {
                    kind: baton_model::SpanKind::Request,
                    pid,
                    tid,
                    start_ns,
                    dur_ns,
                    event: None,
                    label: format!("{id:x} ({:.1} ms)", dur_ns as f64 / 1e6),
                });
            }
            let ids: Vec<u64> = st.pending.keys().copied().collect();
            // (pid, tid, comm, kernel, user stack id, unwound user stack, request, context)
            // -> samples
            type Key = (u32, u32, String, i32, i32, Option<Vec<u64>>, u64, u64);
            let mut agg: HashMap<Key, u64> = HashMap::new();
            for id in ids {
                if slow.contains_key(&id) {
                    for s in st.pending.remove(&id).unwrap_or_default() {
                        let unwound = match (&self.copies, s.copied) {
                            (Some(c), Some(cookie)) => c.take_unwound(s.tid, cookie),
                            _ => None,
                        };
                        let key = (s.pid, s.tid, s.comm, s.kernel, s.user, unwound, id, s.ctx);
                        *agg.entry(key).or_default() += 1;
                    }
                } else if !in_flight.contains(&id) {
                    // Ended under the threshold: its samples, and their copies, go.
                    for s in st.pending.remove(&id).unwrap_or_default() {
                        if let (Some(c), Some(cookie)) = (&self.copies, s.copied) {
                            c.take_unwound(s.tid, cookie);
                        }
                    }
                }
            }
            for ((pid, tid, comm, k, u, unwound, id, ctx), n) in agg {
                let latency_ms = slow.get(&id).copied().unwrap_or(0) as f64 / 1e6;
                out.events.push(Event {
                    pid,
                    tid,
                    cgroup_id: 0,
                    comm,
                    kernel: stacks.get(k),
                    user: unwound.unwrap_or_else(|| stacks.get(u)),
                    count: n,
                    values: vec![n * period],
                    weight: 1.0,
                    labels: vec![("request", format!("{id:x} ({latency_ms:.1} ms)"))],
                    frames: Vec::new(),
                    keep_zero: 0,
                    context: self.contexts.labels(ctx, &self.skel.maps.ctx_records),
                });
            }
        }
        if let Some(c) = &self.copies {
            // Forgets the copies of samples no request kept, and processes that are gone.
            c.take(&self.skel.maps.dwarf_pids);
        }
        self.contexts.prune(&self.skel.maps.ctx_procs);
        self.stale_stacks += stacks.stale;
        clear_if_half_full(&self.skel.maps.stacks, STACK_ENTRIES);
        // One histogram per process (the kind is always 0).
        out.histograms = drain_histograms(
            &self.skel.maps.hists,
            old,
            "request_latency",
            |_| String::new(),
            &HashMap::new(),
        )?;
        Ok(out)
    }

    /// `samples`: requests ended; `lost_map_full`: requests or samples BPF had no room for.
    fn stats(&self) -> ProfilerStats {
        let mut s = CopyReader::add_stats(
            self.copies.as_ref(),
            &self.skel.maps.copy_stats,
            STATS.read_with_stale(&self.skel.maps.stats, self.stale_stacks),
        );
        s.context = self.contexts.stats(&self.skel.maps.ctx_stats);
        s
    }

    per_process_methods!();

    fn event_name(&self) -> String {
        format!(
            "requests from {} to {}, CPU stacks of those over {:.1} ms",
            self.begin,
            self.end,
            self.threshold_ns as f64 / 1e6
        )
    }

    fn frequency_hz(&self) -> u64 {
        self.frequency_hz
    }

    fn period_ns(&self) -> u64 {
        1_000_000_000 / self.frequency_hz
    }

    fn own_frames_on_top(&self) -> bool {
        false
    }

    fn observe_maps(&mut self, pid: u32, maps: &str) {
        if let Some(c) = &self.copies {
            c.observe_maps(&self.skel.maps.dwarf_pids, pid, maps);
        }
        self.contexts.observe(pid, maps, &self.skel.maps.ctx_procs);
    }
}

#[cfg(test)]
mod tests {
    use super::Probe;

    #[test]
    fn probe_specs_parse() {
        assert_eq!(
            Probe::parse("handle_start"),
            Ok(Probe::Uprobe {
                binary: String::new(),
                symbol: "handle_start".into()
            })
        );
        assert_eq!(
            Probe::parse("usdt:server:request__start"),
            Ok(Probe::Usdt {
                binary: String::new(),
                provider: "server".into(),
                name: "request__start".into()
            })
        );
        assert!(matches!(
            Probe::parse("usdt:/bin/x:p:n"),
            Ok(Probe::Usdt { .. })
        ));
        assert!(Probe::parse("usdt:onlyone").is_err());
        assert!(Probe::parse("/bin/x:").is_err());
    }
}
