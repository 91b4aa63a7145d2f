//! The malloc profiler: allocations per stack, with the bytes and allocations still live.
//!
//! Two modes (`mode=`):
//!
//! - **sampler** (the default, `auto`): the process samples its own allocations, by bytes, as a
//!   Poisson process with a mean in bytes, through Baton's preloaded library (`preload/`, for
//!   glibc malloc) or Baton's jemalloc shim (jemalloc's own sampling). Only sampled allocations
//!   and their frees reach BPF, through the USDT probes `baton:alloc(ptr, size, mean)` and
//!   `baton:free(ptr)`; an unsampled allocation costs nanoseconds and never traps. An
//!   allocation of `s` bytes sampled at mean `m` weighs `1 / (1 - exp(-s/m))`: its chance of
//!   being sampled, inverted, so sums estimate the true totals per stack. `baton record malloc
//!   -- CMD` starts the command with the library; a running process must have been started
//!   with it (`baton preload` says how).
//! - **uprobe**: uprobes on libc's `malloc`, `calloc`, `realloc`, `posix_memalign` and `free` in
//!   the targets, for processes already running without a sampler. Every call traps (about
//!   2.4 µs here), so it is marked high-cost and its runs are capped. It samples by bytes in BPF;
//!   a sample carries every byte its thread allocated since its previous one (`acc`) and weighs
//!   `acc / size`.
//!
//! Per stack the window reports `alloc_bytes` and `alloc_count` (weighted sums of the window's
//! sampled allocations) and `live_bytes` and `live_count`: the weighted sampled allocations,
//! made at any time since the profiler started, that are not freed at the end of the window, as
//! bcc's `memleak` reports outstanding allocations. With `sample_bytes=0` every allocation is
//! recorded, weight 1.
//!
//! Where the allocating code lacks frame pointers, BPF copies the stack and the event names the
//! copy (`copies.rs` unwinds it from DWARF CFI). Such events wait in `State::unresolved` until
//! the drain has flushed both rings, then are counted like the rest; a free that comes first
//! marks the waiting allocation freed.
//!
//! Probes are attached per target process (so other processes never trap), to the sampler or
//! libc it maps, or to `lib=PATH`; children of targets are followed by attaching to them as
//! they appear. Without targets, the sampler mode attaches to the installed library in every
//! process that loads it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use baton_model::sync::lock;
use libbpf_rs::{Link, UprobeOpts};

use crate::mechanics::copies::CopyReader;
use crate::mechanics::maps::{StackEntry, StatSlots};
use crate::mechanics::record::{addresses, comm, decode, kind_of, record};
use crate::mechanics::ring::RingReader;
use crate::mechanics::skel::open_copying;
use crate::mechanics::uprobe::{per_process, per_process_methods, Followed, PerProcess};
use crate::{preload, sys, Drained, Event, ProfilerError, ProfilerStats, StartOptions};

use baton_model::{Claim, CostClass, CostlyMode, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("malloc");
use skel::{MallocSkel, MallocSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "malloc",
    description: "allocations per stack, sampled by bytes inside the process (Baton's preload \
                  library for glibc, or jemalloc's own sampling), with live (unfreed) bytes; \
                  mode=uprobe traps every malloc/free of a process started without either",
    claims: &[Claim {
        resource: "uprobe:libc",
        shared: Some(2),
    }],
    values: &[
        ValueInfo {
            kind: "alloc_bytes",
            unit: "bytes",
            help: "bytes allocated in the window",
        },
        ValueInfo {
            kind: "alloc_count",
            unit: "count",
            help: "allocations in the window",
        },
        ValueInfo {
            kind: "live_bytes",
            unit: "bytes",
            help: "bytes allocated since the start and not freed at the end of the window",
        },
        ValueInfo {
            kind: "live_count",
            unit: "count",
            help: "allocations made since the start and not freed at the end of the window",
        },
    ],
    histograms: &[],
    labels: &[],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "1 sample per 2 MiB allocated, per thread; a trap per sample only",
    cost: CostClass::Low,
    costly_modes: &[CostlyMode {
        option: "mode",
        value: "uprobe",
        cost: CostClass::High,
        per_call: "a trap on every malloc, calloc, realloc, posix_memalign and free call, \
                   sampled or not: about 2.4 µs each on this project's test VM",
        per_call_ns: 2400,
        max_duration_s: 300,
    }],
    options: &[
        OptionInfo {
            name: "mode",
            default: "auto",
            help: "auto: the sampler the process loads (Baton's preload library, or its \
                   jemalloc shim), which `baton record -- CMD` starts the command with; \
                   uprobe: trap every call in a process started without one (high cost)",
        },
        OptionInfo {
            name: "sample_bytes",
            default: "2097152",
            help: "mean bytes between samples, per thread; 0 records every allocation (exact). \
                   A process started with the sampler keeps the mean it was started with",
        },
        OptionInfo {
            name: "lib",
            default: "",
            help: "mode=uprobe: the library holding malloc (default: the libc each target maps)",
        },
    ],
};

/// `struct alloc_event` of malloc.bpf.c: a sampled allocation.
#[repr(C)]
#[derive(Clone, Copy)]
struct AllocEvent {
    kind: u32,
    pid: u32,
    addr: u64,
    tid: u32,
    stack_bytes: u32,
    size: u64,
    /// Bytes the thread allocated since its previous sample, this one included.
    acc: u64,
    cgroup_id: u64,
    comm: [u8; 16],
    /// The copy of the user stack this allocation's stack is unwound from, or 0 when `stack`
    /// holds the frame-pointer walk.
    cookie: u64,
    stack: StackEntry,
}
record!(AllocEvent, "alloc_event", 1088);

/// `struct free_event` of malloc.bpf.c: a sampled allocation freed.
#[repr(C)]
#[derive(Clone, Copy)]
struct FreeEvent {
    kind: u32,
    pid: u32,
    addr: u64,
}
record!(FreeEvent, "free_event", 16);

/// `struct frees_event` of malloc.bpf.c: a batch of frees of sampled allocations.
#[repr(C)]
#[derive(Clone, Copy)]
struct FreesEvent {
    kind: u32,
    pid: u32,
    n: u32,
    pad: u32,
    addrs: [u64; 64],
}
record!(FreesEvent, "frees_event", 528);

/// The `kind`s of the events ring.
const EV_ALLOC: u32 = 1;
const EV_FREE: u32 = 2;
/// A sampled allocation from a sampling library; its `acc` is the sampling mean.
const EV_SAMPLED: u32 = 3;
/// A batch of frees from the glibc sampler.
const EV_FREES: u32 = 4;

/// What one sampled allocation of `size` bytes stands for: (bytes, allocations).
///
/// From a sampler (Poisson sampling over bytes at mean `mean`), its chance of being sampled was
/// `1 - exp(-size/mean)`, and it weighs the inverse; `mean` 0 is exact mode, weight 1. From the
/// uprobe mode it carries the `acc` bytes its thread allocated since its previous sample.
fn weighed(kind: u32, size: u64, acc: u64) -> (f64, f64) {
    let size = size.max(1) as f64;
    if kind == EV_SAMPLED {
        if acc == 0 {
            return (size, 1.0);
        }
        let w = 1.0 / -(-size / acc as f64).exp_m1();
        (size * w, w)
    } else {
        let acc = (acc as f64).max(size);
        (acc, acc / size)
    }
}

/// (pid, tid, comm, cgroup id, user stack): what a row is aggregated under.
type Key = (u32, u32, String, u64, Vec<u64>);

/// Weighted sums: bytes, allocations, and the sampled events behind them.
#[derive(Default)]
struct Totals {
    bytes: f64,
    count: f64,
    events: u64,
}

/// A live sampled allocation: its key's index, and what it stands for.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Live {
    idx: usize,
    bytes: f64,
    count: f64,
}

/// A sampled allocation whose stack is a copy not unwound yet.
struct Unresolved {
    key: Key,
    addr: u64,
    bytes: f64,
    count: f64,
    cookie: u64,
    /// Leading frames of the unwound stack that are the sampler's own.
    skip: usize,
    /// Freed before it was resolved: counted as allocated, not as live.
    freed: bool,
}

/// What the ring reader builds up between drains.
#[derive(Default)]
struct State {
    keys: HashMap<Key, usize>,
    entries: Vec<Key>,
    window: HashMap<usize, Totals>,
    /// Sampled allocations not freed yet, by (pid, address).
    live: HashMap<(u32, u64), Live>,
    /// Allocations waiting for their copied stack, in arrival order.
    unresolved: Vec<Unresolved>,
    /// (pid, address) -> index in `unresolved` of the latest allocation there.
    unresolved_at: HashMap<(u32, u64), usize>,
}

impl State {
    fn on_event(&mut self, data: &[u8]) {
        match kind_of(data) {
            Some(kind @ (EV_ALLOC | EV_SAMPLED)) => {
                if let Ok(e) = decode::<AllocEvent>(data) {
                    self.on_alloc(kind, &e);
                }
            }
            Some(EV_FREE) => {
                if let Ok(e) = decode::<FreeEvent>(data) {
                    self.on_free(e.pid, e.addr);
                }
            }
            Some(EV_FREES) => {
                if let Ok(e) = decode::<FreesEvent>(data) {
                    for &addr in &e.addrs[..(e.n as usize).min(e.addrs.len())] {
                        self.on_free(e.pid, addr);
                    }
                }
            }
            _ => {}
        }
    }

    /// A sampled allocation freed. An address is live or waiting, never both: malloc returns
    /// it again only after this free. Frees of addresses never seen (exact mode reports every
    /// free) change nothing.
    fn on_free(&mut self, pid: u32, addr: u64) {
        let was_live = self.live.remove(&(pid, addr)).is_some();
        let waiting = self.unresolved_at.remove(&(pid, addr));
        if let Some(i) = waiting.filter(|_| !was_live) {
            self.unresolved[i].freed = true;
        }
    }

    fn on_alloc(&mut self, kind: u32, e: &AllocEvent) {
        let frames = (e.stack_bytes as usize / 8).min(e.stack.len());
        let (bytes, count) = weighed(kind, e.size, e.acc);
        let key = (
            e.pid,
            e.tid,
            comm(&e.comm),
            e.cgroup_id,
            addresses(&e.stack[..frames]),
        );
        match e.cookie {
            0 => self.count(key, e.addr, bytes, count, true),
            cookie => {
                self.unresolved_at
                    .insert((e.pid, e.addr), self.unresolved.len());
                self.unresolved.push(Unresolved {
                    key,
                    addr: e.addr,
                    bytes,
                    count,
                    cookie,
                    skip: usize::from(kind == EV_SAMPLED),
                    freed: false,
                });
            }
        }
    }

    /// Adds one sampled allocation to the window, and to the live ones unless it was freed.
    fn count(&mut self, key: Key, addr: u64, bytes: f64, count: f64, live: bool) {
        let pid = key.0;
        let idx = match self.keys.get(&key) {
            Some(&i) => i,
            None => {
                self.entries.push(key.clone());
                self.keys.insert(key, self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        let t = self.window.entry(idx).or_default();
        t.bytes += bytes;
        t.count += count;
        t.events += 1;
        if live {
            self.live.insert((pid, addr), Live { idx, bytes, count });
        }
    }

    /// Counts the first `n` waiting allocations with the stacks `unwound` gives them (an
    /// empty stack when a copy is missing).
    fn resolve(&mut self, n: usize, mut unwound: impl FnMut(u32, u64) -> Option<Vec<u64>>) {
        let n = n.min(self.unresolved.len());
        let ready: Vec<Unresolved> = self.unresolved.drain(..n).collect();
        self.unresolved_at.retain(|_, i| match i.checked_sub(n) {
            Some(j) => {
                *i = j;
                true
            }
            None => false,
        });
        for mut u in ready {
            let mut stack = unwound(u.key.1, u.cookie).unwrap_or_default();
            stack.drain(..u.skip.min(stack.len()));
            u.key.4 = stack;
            self.count(u.key, u.addr, u.bytes, u.count, !u.freed);
        }
    }
}

/// How the profiler learns of allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The USDT probes of the sampler the process loads.
    Sampler,
    /// Uprobes on every call to libc's allocation functions.
    Uprobe,
}

/// A running malloc profiler. Dropping it detaches every probe.
pub struct MallocProfiler {
    /// First, so its reader thread stops before the ring's map is closed.
    copies: Option<CopyReader>,
    skel: MallocSkel<'static>,
    links: Vec<Link>,
    _fork_link: Option<Link>,
    reader: RingReader,
    state: Arc<Mutex<State>>,
    followed: Followed,
    mode: Mode,
    /// The library to probe in every target, when given (`lib=PATH`, uprobe mode).
    lib: Option<PathBuf>,
    sample_bytes: u64,
}

/// The library a process allocates through: the libc it maps (by its path inside the
/// process's root, so containers work).
fn libc_of(pid: u32) -> Option<PathBuf> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let path = maps.lines().find_map(|l| {
        let path = l.split_whitespace().nth(5)?;
        let name = Path::new(path).file_name()?.to_str()?;
        (name.starts_with("libc.so") || (name.starts_with("libc-") && name.ends_with(".so")))
            .then(|| path.to_string())
    })?;
    let rooted = PathBuf::from(format!("/proc/{pid}/root{path}"));
    Some(if rooted.exists() {
        rooted
    } else {
        PathBuf::from(path)
    })
}

/// (function, entry program, return program).
const FUNCTIONS: &[(&str, &str, Option<&str>)] = &[
    ("malloc", "malloc_entry", Some("malloc_return")),
    ("calloc", "calloc_entry", Some("calloc_return")),
    ("realloc", "realloc_entry", Some("realloc_return")),
    ("posix_memalign", "memalign_entry", Some("memalign_return")),
    ("free", "free_entry", None),
];

/// Why a process cannot be profiled in the sampler mode, in words that say what to do.
fn no_sampler(pid: u32) -> ProfilerError {
    let what = if preload::maps_libc(pid) {
        format!(
            "process {pid} loads no allocation sampler (neither Baton's {} nor its jemalloc \
             shim)",
            preload::MALLOC_LIBRARY_NAME
        )
    } else {
        format!(
            "process {pid} maps no libc: its allocator is linked in statically, where no \
             sampler can be preloaded and no libc malloc can be probed"
        )
    };
    ProfilerError::Attach(format!(
        "{what}; start it with LD_PRELOAD={}/{} (`baton preload` installs the library and \
         shows how), or trap every call of a running process with --opt mode=uprobe (high \
         cost: about 2.4 µs per call)",
        preload::DEFAULT_DIR,
        preload::MALLOC_LIBRARY_NAME
    ))
}

impl MallocProfiler {
    pub fn start(o: &StartOptions) -> Result<MallocProfiler, ProfilerError> {
        let info = &INFO;
        let sample_bytes = o.option_u64(info, "sample_bytes")?;
        let mode = match o.option(info, "mode") {
            "auto" | "sampler" | "preload" => Mode::Sampler,
            "uprobe" => Mode::Uprobe,
            other => {
                return Err(ProfilerError::BadOption {
                    profiler: info.name,
                    message: format!("mode {other:?}: use auto or uprobe"),
                })
            }
        };
        let lib = Some(o.option(info, "lib"))
            .filter(|l| !l.is_empty())
            .map(PathBuf::from);
        if let Some(l) = &lib {
            if !l.exists() {
                return Err(ProfilerError::BadOption {
                    profiler: info.name,
                    message: format!("lib {} does not exist", l.display()),
                });
            }
        }
        let (skel, fork_link) = open_copying!(MallocSkelBuilder, "malloc", o, |open| {
            if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
                ro.sample_bytes = sample_bytes;
            }
        });
        let copies = CopyReader::start(
            "baton-malloc-copies",
            &skel.maps.copies,
            &skel.maps.dwarf_pids,
            o.dwarf,
            o.targets.as_deref(),
        )?;
        let state: Arc<Mutex<State>> = Arc::default();
        let sink = Arc::clone(&state);
        let reader = RingReader::start("baton-malloc", &skel.maps.events, move |data| {
            lock(&sink).on_event(data)
        })?;
        let mut p = MallocProfiler {
            copies,
            skel,
            links: Vec::new(),
            _fork_link: fork_link,
            reader,
            state,
            followed: Followed::new(o.targets.as_deref()),
            mode,
            lib,
            sample_bytes,
        };
        match (&o.targets, mode) {
            (None, Mode::Uprobe) => {
                let path = match &p.lib {
                    Some(l) => l.clone(),
                    None => libc_of(std::process::id()).ok_or_else(|| {
                        ProfilerError::Attach("cannot find this host's libc; give lib=PATH".into())
                    })?,
                };
                p.attach_uprobes(-1, &path)?;
            }
            (None, Mode::Sampler) => {
                // Every process that loads the installed library.
                let path = preload::install(None).map_err(|e| {
                    ProfilerError::Attach(format!(
                        "installing {} into {}: {e}",
                        preload::MALLOC_LIBRARY_NAME,
                        preload::DEFAULT_DIR
                    ))
                })?;
                p.attach_sampler(-1, &path)?;
                p.attach_sampler(-1, &path.with_file_name(preload::JEMALLOC_LIBRARY_NAME))?;
            }
            (Some(pids), _) => p.attach_targets(pids, o.pending_exec.as_deref())?,
        }
        Ok(p)
    }

    /// Probes the target's sampler (sampler mode), or the library given or the libc the
    /// process maps (uprobe mode). A target that will exec (`baton record -- CMD`) is probed in
    /// the library its command is started with, before it maps it.
    fn attach_target(
        &mut self,
        pid: u32,
        pending_exec: Option<&Path>,
    ) -> Result<(), ProfilerError> {
        if self.mode == Mode::Sampler {
            let path = match (preload::mapped_sampler(pid), pending_exec) {
                (Some(p), _) => p,
                (None, Some(exe)) if !preload::is_dynamic(exe) => {
                    return Err(ProfilerError::Attach(format!(
                        "{} is statically linked: its malloc is inside the binary, where no \
                         sampler can be preloaded; trap its calls there instead with \
                         --opt mode=uprobe --opt lib={} (high cost: about 2.4 µs per call)",
                        exe.display(),
                        exe.display()
                    )))
                }
                (None, Some(exe)) if preload::links_jemalloc(exe) => {
                    preload::install_jemalloc(None).map_err(|e| {
                        ProfilerError::Attach(format!("installing the jemalloc shim: {e}"))
                    })?
                }
                (None, Some(_)) => preload::install(None)
                    .map_err(|e| ProfilerError::Attach(format!("installing the sampler: {e}")))?,
                (None, None) => return Err(no_sampler(pid)),
            };
            return self.attach_sampler(pid as i32, &path);
        }
        let path = match &self.lib {
            Some(l) => l.clone(),
            None => libc_of(pid).ok_or_else(|| {
                ProfilerError::Attach(format!(
                    "process {pid} maps no libc (static binary, or another allocator?); \
                     name the library that holds malloc with --opt lib=PATH"
                ))
            })?,
        };
        self.attach_uprobes(pid as i32, &path)
    }

    /// Attaches to the `baton:alloc` and `baton:free` probes of the sampler at `path`.
    fn attach_sampler(&mut self, pid: i32, path: &Path) -> Result<(), ProfilerError> {
        // The jemalloc shim has no batches of frees.
        let batches = !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libbaton_jemalloc"));
        for (prog, name) in [
            (&self.skel.progs.usdt_alloc, "alloc"),
            (&self.skel.progs.usdt_free, "free"),
            (&self.skel.progs.usdt_frees, "frees"),
        ] {
            if name == "frees" && !batches {
                continue;
            }
            let link = prog.attach_usdt(pid, path, "baton", name).map_err(|e| {
                ProfilerError::Attach(format!(
                    "attaching to baton:{name} in {} (pid {pid}): {e}",
                    path.display()
                ))
            })?;
            self.links.push(link);
        }
        Ok(())
    }

    fn attach_uprobes(&mut self, pid: i32, path: &Path) -> Result<(), ProfilerError> {
        for (func, entry, ret) in FUNCTIONS {
            for (prog_name, retprobe) in [(Some(*entry), false), (*ret, true)] {
                let Some(prog_name) = prog_name else { continue };
                let progs = &self.skel.progs;
                let prog = match prog_name {
                    "malloc_entry" => &progs.malloc_entry,
                    "malloc_return" => &progs.malloc_return,
                    "calloc_entry" => &progs.calloc_entry,
                    "calloc_return" => &progs.calloc_return,
                    "realloc_entry" => &progs.realloc_entry,
                    "realloc_return" => &progs.realloc_return,
                    "memalign_entry" => &progs.memalign_entry,
                    "memalign_return" => &progs.memalign_return,
                    _ => &progs.free_entry,
                };
                let link = prog
                    .attach_uprobe_with_opts(
                        pid,
                        path,
                        0,
                        UprobeOpts {
                            func_name: Some((*func).to_string()),
                            retprobe,
                            ..Default::default()
                        },
                    )
                    .map_err(|e| {
                        ProfilerError::Attach(format!(
                            "attaching to {func} in {} (pid {pid}): {e}",
                            path.display()
                        ))
                    })?;
                self.links.push(link);
            }
        }
        Ok(())
    }
}

per_process!(MallocProfiler);

/// The environment `baton record malloc -- CMD` starts its command with: in the sampler mode,
/// Baton's glibc sampler preloaded at the mean asked for, or, for a command linked with
/// jemalloc, the jemalloc shim with jemalloc's own sampling turned on; nothing in the uprobe
/// mode.
pub fn command_env(o: &StartOptions) -> Result<Vec<(String, String)>, ProfilerError> {
    if o.option(&INFO, "mode") == "uprobe" {
        return Ok(Vec::new());
    }
    let sample_bytes = o.option_u64(&INFO, "sample_bytes")?;
    let installing = |e: std::io::Error| {
        ProfilerError::Attach(format!(
            "installing Baton's allocation samplers into {}: {e}",
            preload::DEFAULT_DIR
        ))
    };
    let existing = std::env::var("LD_PRELOAD").ok();
    if o.pending_exec
        .as_deref()
        .is_some_and(preload::links_jemalloc)
    {
        let lib = preload::install_jemalloc(None).map_err(installing)?;
        let conf = std::env::var("MALLOC_CONF").ok();
        return Ok(vec![
            (
                "LD_PRELOAD".to_string(),
                preload::ld_preload(&lib, existing.as_deref()),
            ),
            (
                "MALLOC_CONF".to_string(),
                preload::jemalloc_conf(sample_bytes, conf.as_deref()),
            ),
        ]);
    }
    let lib = preload::install(None).map_err(installing)?;
    Ok(vec![
        (
            "LD_PRELOAD".to_string(),
            preload::ld_preload(&lib, existing.as_deref()),
        ),
        (
            preload::SAMPLE_BYTES_ENV.to_string(),
            sample_bytes.to_string(),
        ),
    ])
}

/// The slot of `STAT_TRAPS` in malloc.bpf.c: every probe hit.
const STAT_TRAPS: u32 = 9;

/// Slots of `enum stat_index` in malloc.bpf.c: `samples` are sampled allocations, `lost`
/// sampled allocations or frees the ring had no room for, and allocations `live` could not hold.
static STATS: StatSlots = StatSlots {
    samples: 1,
    lost: &[2, 3, 5],
    user_stack_failed: 6,
    kernel_stack_failed: None,
    forks_followed: 7,
};

impl crate::Profiler for MallocProfiler {
    fn info(&self) -> &'static baton_model::ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        self.reader.flush();
        // Every allocation read so far had its copy submitted before it: once the copy ring
        // is flushed too, all of those are unwound.
        let waiting = lock(&self.state).unresolved.len();
        if let Some(c) = &self.copies {
            c.flush();
        }
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        match &self.copies {
            Some(c) => {
                st.resolve(waiting, |tid, cookie| c.take_unwound(tid, cookie));
                // Forgets the plans of processes that are gone (nothing is paired here).
                let _ = c.take(&self.skel.maps.dwarf_pids);
            }
            None => st.resolve(waiting, |_, _| None),
        }
        let mut live: HashMap<usize, (f64, f64)> = HashMap::new();
        for l in st.live.values() {
            let t = live.entry(l.idx).or_default();
            t.0 += l.bytes;
            t.1 += l.count;
        }
        // A process that has exited reports what it left unfreed at exit (its leaks) in this
        // window, and is then forgotten: its memory is gone with it.
        let dead: HashSet<u32> = st
            .live
            .keys()
            .map(|&(pid, _)| pid)
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|&pid| !sys::process_alive(pid))
            .collect();
        st.live.retain(|(pid, _), _| !dead.contains(pid));
        let window = std::mem::take(&mut st.window);
        let mut idxs: Vec<usize> = window.keys().chain(live.keys()).copied().collect();
        idxs.sort_unstable();
        idxs.dedup();
        let events = idxs
            .into_iter()
            .map(|i| {
                let (pid, tid, comm, cgroup_id, user) = st.entries[i].clone();
                let t = window.get(&i);
                Event {
                    pid,
                    tid,
                    cgroup_id,
                    comm,
                    kernel: Vec::new(),
                    user,
                    count: t.map_or(0, |t| t.events),
                    values: vec![
                        t.map_or(0, |t| t.bytes.round() as u64),
                        t.map_or(0, |t| t.count.round() as u64),
                        live.get(&i).map_or(0, |l| l.0.round() as u64),
                        live.get(&i).map_or(0, |l| l.1.round() as u64),
                    ],
                    weight: 1.0,
                    labels: Vec::new(),
                    frames: Vec::new(),
                }
            })
            .collect();
        // Keys no allocation refers to any more are forgotten.
        let used: HashSet<usize> = st.live.values().map(|l| l.idx).collect();
        if used.len() < st.entries.len() / 2 && st.entries.len() > 4096 {
            let mut remap = HashMap::new();
            let old = std::mem::take(&mut st.entries);
            st.keys.clear();
            for (i, k) in old.into_iter().enumerate() {
                if used.contains(&i) {
                    let at = st.entries.len();
                    remap.insert(i, at);
                    st.keys.insert(k.clone(), at);
                    st.entries.push(k);
                }
            }
            for v in st.live.values_mut() {
                v.idx = remap[&v.idx];
            }
        }
        Ok(Drained {
            events,
            histograms: Vec::new(),
            spans: Vec::new(),
        })
    }

    /// `samples`: sampled allocations; `lost_map_full`: sampled allocations or frees the ring
    /// had no room for, and allocations the live map could not hold.
    fn stats(&self) -> ProfilerStats {
        let mut s = STATS.read(&self.skel.maps.stats);
        s.traps = crate::mechanics::maps::percpu_sum(&self.skel.maps.stats, STAT_TRAPS);
        CopyReader::add_stats(self.copies.as_ref(), &self.skel.maps.copy_stats, s)
    }

    /// Plans which of the process's code lacks frame pointers, so BPF copies the stacks of
    /// allocations made there (with DWARF unwinding on).
    fn observe_maps(&mut self, pid: u32, maps: &str) {
        if let Some(c) = &self.copies {
            c.observe_maps(&self.skel.maps.dwarf_pids, pid, maps);
        }
    }

    per_process_methods!();

    fn event_name(&self) -> String {
        match (self.mode, self.sample_bytes) {
            (Mode::Uprobe, 0) => "libc malloc uprobes, every allocation".into(),
            (Mode::Uprobe, n) => format!("libc malloc uprobes, 1 sample per {} KiB", n / 1024),
            (Mode::Sampler, 0) => "sampled in the process, every allocation".into(),
            (Mode::Sampler, n) => format!(
                "sampled in the process, 1 sample per {} KiB allocated on average",
                n / 1024
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An allocation event as BPF lays it out, with a copied stack (`cookie`) or a walked one.
    fn alloc(pid: u32, tid: u32, addr: u64, size: u64, cookie: u64, stack: &[u64]) -> Vec<u8> {
        let mut e = AllocEvent {
            kind: EV_ALLOC,
            pid,
            addr,
            tid,
            stack_bytes: (8 * stack.len()) as u32,
            size,
            acc: size,
            cgroup_id: 0,
            comm: [0; 16],
            cookie,
            stack: [0; 127],
        };
        e.stack[..stack.len()].copy_from_slice(stack);
        crate::mechanics::record::bytes_of(&e).to_vec()
    }

    fn free(pid: u32, addr: u64) -> Vec<u8> {
        let e = FreeEvent {
            kind: EV_FREE,
            pid,
            addr,
        };
        crate::mechanics::record::bytes_of(&e).to_vec()
    }

    #[test]
    fn sampler_weights_invert_the_chance_of_being_sampled() {
        // Exact mode: weight 1.
        assert_eq!(weighed(EV_SAMPLED, 100, 0), (100.0, 1.0));
        // An allocation as big as the mean is sampled with chance 1 - 1/e.
        let (b, c) = weighed(EV_SAMPLED, 4096, 4096);
        assert!((c - 1.0 / (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!((b - 4096.0 * c).abs() < 1e-9);
        // Small ones weigh about mean / size.
        let (_, c) = weighed(EV_SAMPLED, 16, 524_288);
        assert!((c - 524_288.0 / 16.0).abs() / c < 1e-3, "{c}");
        // The uprobe mode's samples carry their thread's bytes.
        assert_eq!(weighed(EV_ALLOC, 100, 1000), (1000.0, 10.0));
    }

    #[test]
    fn copied_stacks_wait_for_the_drain_and_frees_that_come_first_count() {
        let mut st = State::default();
        st.on_event(&alloc(1, 10, 0x100, 64, 0, &[0xa, 0xb]));
        st.on_event(&alloc(1, 10, 0x200, 32, 7, &[]));
        st.on_event(&alloc(1, 11, 0x300, 16, 8, &[]));
        // Freed before its stack is known: allocated, not live.
        st.on_event(&free(1, 0x200));
        // Came after the drain's flush: left for the next one.
        st.on_event(&alloc(1, 11, 0x400, 8, 9, &[]));
        assert_eq!(st.window.len(), 1);
        st.resolve(2, |tid, cookie| match (tid, cookie) {
            (10, 7) => Some(vec![0xc, 0xd]),
            (11, 8) => Some(vec![0xe]),
            _ => None,
        });
        let bytes_of = |st: &State, stack: &[u64]| {
            let i = st.entries.iter().position(|k| k.4 == stack).expect("key");
            (st.window.get(&i).map_or(0.0, |t| t.bytes), i)
        };
        let (b, i) = bytes_of(&st, &[0xc, 0xd]);
        assert_eq!(b, 32.0);
        assert!(
            st.live.values().all(|l| l.idx != i),
            "a freed allocation is live"
        );
        let (b, i) = bytes_of(&st, &[0xe]);
        assert_eq!(b, 16.0);
        assert_eq!(
            st.live.get(&(1, 0x300)),
            Some(&Live {
                idx: i,
                bytes: 16.0,
                count: 1.0
            })
        );
        // The one left over moved to the front, and a free still finds it.
        assert_eq!(st.unresolved.len(), 1);
        assert_eq!(st.unresolved_at.get(&(1, 0x400)), Some(&0));
        st.on_event(&free(1, 0x400));
        assert!(st.unresolved[0].freed);
        st.resolve(1, |_, _| None);
        assert!(st.unresolved.is_empty() && st.unresolved_at.is_empty());
        assert_eq!(bytes_of(&st, &[]).0, 8.0);
    }
}
