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
use crate::mechanics::maps::StatSlots;
use crate::mechanics::ring::RingReader;
use crate::mechanics::skel::open_copying;
use crate::mechanics::threadctx::{ContextLabels, ThreadContexts};
use crate::mechanics::uprobe::{per_process, per_process_methods, Followed, PerProcess};
use crate::{preload, sys, Drained, Event, ProfilerError, ProfilerStats, StartOptions};

use baton_model::{Claim, CostClass, CostlyMode, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("malloc");
use skel::{MallocSkel, MallocSkelBuilder};

mod events;
pub mod jemalloc;
use events::State;
use jemalloc::StaticJemalloc;

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
    links: Vec<Link>,
    _fork_link: Option<Link>,
    reader: RingReader,
    state: Arc<Mutex<State>>,
    followed: Followed,
    mode: Mode,
    /// The library to probe in every target, when given (`lib=PATH`, uprobe mode).
    lib: Option<PathBuf>,
    /// Executables read for a statically linked jemalloc, by path.
    je_binaries: HashMap<PathBuf, Option<Arc<StaticJemalloc>>>,
    sample_bytes: u64,
    contexts: ThreadContexts,
    /// Labels of the contexts rows have had, kept while rows may have them.
    context_labels: HashMap<u64, ContextLabels>,
    /// Last: its links (USDT ones use the object's manager when they detach) and readers go
    /// first, and the object is closed after them.
    skel: MallocSkel<'static>,
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
            &skel.maps.interp_procs,
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
            je_binaries: HashMap::new(),
            sample_bytes,
            contexts: ThreadContexts::default(),
            context_labels: HashMap::new(),
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
            (Some(pids), _) => {
                // A service's run goes on with the processes that can be profiled; a run whose
                // targets all fail says why the first one did.
                let mut first = None;
                let mut attached = 0;
                for &pid in pids {
                    match p.attach_targets(&[pid], o.pending_exec.as_deref()) {
                        Ok(()) => attached += 1,
                        Err(e) => {
                            tracing::warn!(pid, error = %e, "malloc: not profiling a target");
                            first.get_or_insert(e);
                        }
                    }
                }
                if let (0, Some(e)) = (attached, first) {
                    return Err(e);
                }
            }
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
            let sampler = preload::mapped_sampler(pid);
            if sampler.is_none() {
                if let Some(je) = self.static_jemalloc(pid, pending_exec) {
                    return self.attach_static_jemalloc(pid, pending_exec.is_none(), &je);
                }
            }
            let path = match (sampler, pending_exec) {
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

    /// The statically linked jemalloc of the executable `pid` runs (or will run, once it execs
    /// `pending_exec`), read once per executable.
    fn static_jemalloc(
        &mut self,
        pid: u32,
        pending_exec: Option<&Path>,
    ) -> Option<(PathBuf, Arc<StaticJemalloc>)> {
        let exe = match pending_exec {
            Some(e) => e.to_path_buf(),
            None => PathBuf::from(format!("/proc/{pid}/exe")),
        };
        let key = std::fs::canonicalize(&exe).unwrap_or_else(|_| exe.clone());
        let je = self
            .je_binaries
            .entry(key)
            .or_insert_with(|| StaticJemalloc::read(&exe).map(Arc::new))
            .clone()?;
        Some((exe, je))
    }

    /// Probes jemalloc's own profiling functions in `pid`'s executable. A process already
    /// running (`running`) must have been started with jemalloc's profiling on.
    fn attach_static_jemalloc(
        &mut self,
        pid: u32,
        running: bool,
        (exe, je): &(PathBuf, Arc<StaticJemalloc>),
    ) -> Result<(), ProfilerError> {
        if running && je.profiling_on(pid) == Some(false) {
            return Err(ProfilerError::Attach(format!(
                "process {pid} links jemalloc statically, and its profiling is off: restart it \
                 with {}={} (jemalloc then samples by itself, and Baton reads only the samples), \
                 or trap every call with --opt mode=uprobe --opt lib={} (high cost: about \
                 2.4 µs per call)",
                je.conf_env,
                preload::jemalloc_conf(self.sample_bytes, None),
                std::fs::read_link(exe)
                    .unwrap_or_else(|_| exe.clone())
                    .display()
            )));
        }
        for (prog, func, cookie) in [
            (&self.skel.progs.je_sampled, &je.sampled_fn, je.cookie()),
            (&self.skel.progs.je_freed, &je.freed_fn, 0),
        ] {
            let link = prog
                .attach_uprobe_with_opts(
                    pid as i32,
                    exe,
                    0,
                    UprobeOpts {
                        func_name: Some(func.clone()),
                        cookie,
                        ..Default::default()
                    },
                )
                .map_err(|e| {
                    ProfilerError::Attach(format!(
                        "attaching to jemalloc's {func} in {} (pid {pid}): {e}",
                        exe.display()
                    ))
                })?;
            self.links.push(link);
        }
        lock(&self.state).je_targets.insert(pid, Arc::clone(je));
        Ok(())
    }

    /// Attaches to the `baton:alloc` and `baton:free` probes of the sampler at `path`.
    fn attach_sampler(&mut self, pid: i32, path: &Path) -> Result<(), ProfilerError> {
        // The jemalloc shim reports every free in batches; the glibc sampler also has a probe
        // per free (exact mode).
        let shim = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libbaton_jemalloc"));
        for (prog, name) in [
            (&self.skel.progs.usdt_alloc, "alloc"),
            (&self.skel.progs.usdt_free, "free"),
            (&self.skel.progs.usdt_frees, "frees"),
        ] {
            if name == "free" && shim {
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
    if let Some(je) = o.pending_exec.as_deref().and_then(StaticJemalloc::read) {
        let conf = std::env::var(&je.conf_env).ok();
        return Ok(vec![(
            je.conf_env.clone(),
            preload::jemalloc_conf(sample_bytes, conf.as_deref()),
        )]);
    }
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
        st.je_live.retain(|(pid, _), _| !dead.contains(pid));
        st.je_targets.retain(|&pid, _| sys::process_alive(pid));
        let window = std::mem::take(&mut st.window);
        // A live row outlasts its context in BPF's table: each context is decoded once and
        // kept while rows have it.
        let (contexts, labels) = (&mut self.contexts, &mut self.context_labels);
        let records = &self.skel.maps.ctx_records;
        let mut context_of = |ctx: u64| -> Option<ContextLabels> {
            if ctx == 0 {
                return None;
            }
            if let Some(l) = labels.get(&ctx) {
                return Some(l.clone());
            }
            let l = contexts.labels(ctx, records)?;
            labels.insert(ctx, l.clone());
            Some(l)
        };
        let mut idxs: Vec<usize> = window.keys().chain(live.keys()).copied().collect();
        idxs.sort_unstable();
        idxs.dedup();
        let events = idxs
            .into_iter()
            .map(|i| {
                let (pid, tid, comm, cgroup_id, user, ctx) = st.entries[i].clone();
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
                    keep_zero: 0,
                    context: context_of(ctx),
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
        // Contexts no row has any more are forgotten.
        if self.context_labels.len() > st.entries.len() {
            let kept: HashSet<u64> = st.entries.iter().map(|k| k.5).collect();
            self.context_labels.retain(|c, _| kept.contains(c));
        }
        drop(guard);
        self.contexts.prune(&self.skel.maps.ctx_procs);
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
        s.context = self.contexts.stats(&self.skel.maps.ctx_stats);
        CopyReader::add_stats(self.copies.as_ref(), &self.skel.maps.copy_stats, s)
    }

    /// Plans which of the process's code lacks frame pointers, so BPF copies the stacks of
    /// allocations made there (with DWARF unwinding on).
    fn observe_maps(&mut self, pid: u32, maps: &str) {
        if let Some(c) = &self.copies {
            c.observe_maps(&self.skel.maps.dwarf_pids, pid, maps);
        }
        self.contexts.observe(pid, maps, &self.skel.maps.ctx_procs);
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
