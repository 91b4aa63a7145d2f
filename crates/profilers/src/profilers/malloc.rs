//! The malloc profiler: allocations per stack from uprobes on libc's `malloc`, `calloc`,
//! `realloc`, `posix_memalign` and `free`, sampled by bytes (see `malloc.bpf.c`).
//!
//! A sampled allocation arrives with its user stack, its size and the bytes it stands for
//! (`acc`: everything its thread allocated since its previous sample), and weighs `acc / size`.
//! Per stack the window reports `alloc_bytes` (sum of `acc`), `alloc_count` (sum of weights)
//! and `live_bytes`: the weighted bytes of sampled allocations, made at any time since the
//! profiler started, that are not freed at the end of the window, as bcc's `memleak` reports
//! outstanding allocations. With `sample_bytes=0` every allocation is recorded, weight 1.
//!
//! Where the allocating code lacks frame pointers, BPF copies the stack at the allocation's
//! return and the event names the copy (`copies.rs` unwinds it from DWARF CFI). Such events wait
//! in `State::unresolved` until the drain has flushed both rings, then are counted like the
//! rest; a free that comes first marks the waiting allocation freed.
//!
//! Probes are attached per target process (so other processes never trap), to the libc it maps,
//! or to `lib=PATH`; children of targets are followed by attaching to them as they appear.

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
use crate::{sys, Drained, Event, ProfilerError, ProfilerStats, StartOptions};

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

bpf_skel!("malloc");
use skel::{MallocSkel, MallocSkelBuilder};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "malloc",
    description: "allocations per stack from uprobes on libc malloc/calloc/realloc/\
                  posix_memalign/free, sampled by bytes, with live (unfreed) bytes",
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
    ],
    histograms: &[],
    labels: &[],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "1 sample per 64 KiB allocated, per thread",
    cost: CostClass::High,
    options: &[
        OptionInfo {
            name: "sample_bytes",
            default: "65536",
            help: "mean bytes between samples, per thread; 0 records every allocation (exact)",
        },
        OptionInfo {
            name: "lib",
            default: "",
            help: "the library holding malloc (default: the libc each target maps)",
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

/// The `kind`s of the events ring.
const EV_ALLOC: u32 = 1;
const EV_FREE: u32 = 2;

/// (pid, tid, comm, cgroup id, user stack): what a row is aggregated under.
type Key = (u32, u32, String, u64, Vec<u64>);

#[derive(Default)]
struct Totals {
    bytes: f64,
    count: f64,
    events: u64,
}

/// A sampled allocation whose stack is a copy not unwound yet.
struct Unresolved {
    key: Key,
    addr: u64,
    size: u64,
    acc: u64,
    cookie: u64,
    /// Freed before it was resolved: counted as allocated, not as live.
    freed: bool,
}

/// What the ring reader builds up between drains.
#[derive(Default)]
struct State {
    keys: HashMap<Key, usize>,
    entries: Vec<Key>,
    window: HashMap<usize, Totals>,
    /// Sampled allocations not freed yet: (pid, address) -> (key index, weighted bytes).
    live: HashMap<(u32, u64), (usize, f64)>,
    /// Allocations waiting for their copied stack, in arrival order.
    unresolved: Vec<Unresolved>,
    /// (pid, address) -> index in `unresolved` of the latest allocation there.
    unresolved_at: HashMap<(u32, u64), usize>,
}

impl State {
    fn on_event(&mut self, data: &[u8]) {
        match kind_of(data) {
            Some(EV_ALLOC) => {
                if let Ok(e) = decode::<AllocEvent>(data) {
                    self.on_alloc(&e);
                }
            }
            Some(EV_FREE) => {
                if let Ok(e) = decode::<FreeEvent>(data) {
                    // An address is live or waiting, never both: malloc returns it again only
                    // after this free.
                    let was_live = self.live.remove(&(e.pid, e.addr)).is_some();
                    let waiting = self.unresolved_at.remove(&(e.pid, e.addr));
                    if let Some(i) = waiting.filter(|_| !was_live) {
                        self.unresolved[i].freed = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn on_alloc(&mut self, e: &AllocEvent) {
        let frames = (e.stack_bytes as usize / 8).min(e.stack.len());
        let size = e.size.max(1);
        let acc = e.acc.max(size);
        let key = (
            e.pid,
            e.tid,
            comm(&e.comm),
            e.cgroup_id,
            addresses(&e.stack[..frames]),
        );
        match e.cookie {
            0 => self.count(key, e.addr, size, acc, true),
            cookie => {
                self.unresolved_at
                    .insert((e.pid, e.addr), self.unresolved.len());
                self.unresolved.push(Unresolved {
                    key,
                    addr: e.addr,
                    size,
                    acc,
                    cookie,
                    freed: false,
                });
            }
        }
    }

    /// Adds one sampled allocation to the window, and to the live ones unless it was freed.
    fn count(&mut self, key: Key, addr: u64, size: u64, acc: u64, live: bool) {
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
        t.bytes += acc as f64;
        t.count += acc as f64 / size as f64;
        t.events += 1;
        if live {
            self.live.insert((pid, addr), (idx, acc as f64));
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
            u.key.4 = unwound(u.key.1, u.cookie).unwrap_or_default();
            self.count(u.key, u.addr, u.size, u.acc, !u.freed);
        }
    }
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
    /// The library to probe in every target, when given (`lib=PATH`).
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

impl MallocProfiler {
    pub fn start(o: &StartOptions) -> Result<MallocProfiler, ProfilerError> {
        let info = &INFO;
        let sample_bytes = o.option_u64(info, "sample_bytes")?;
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
            lib,
            sample_bytes,
        };
        match &o.targets {
            None => {
                let path = match &p.lib {
                    Some(l) => l.clone(),
                    None => libc_of(std::process::id()).ok_or_else(|| {
                        ProfilerError::Attach("cannot find this host's libc; give lib=PATH".into())
                    })?,
                };
                p.attach(-1, &path)?;
            }
            Some(pids) => p.attach_targets(pids, None)?,
        }
        Ok(p)
    }

    /// Probes the library given, or the libc the process maps (a pending exec changes
    /// nothing: libc is found once the process maps it).
    fn attach_target(&mut self, pid: u32, _exe: Option<&Path>) -> Result<(), ProfilerError> {
        let path = match &self.lib {
            Some(l) => l.clone(),
            None => libc_of(pid).ok_or_else(|| {
                ProfilerError::Attach(format!(
                    "process {pid} maps no libc (static binary, or another allocator?); \
                     name the library that holds malloc with --opt lib=PATH"
                ))
            })?,
        };
        self.attach(pid as i32, &path)
    }

    fn attach(&mut self, pid: i32, path: &Path) -> Result<(), ProfilerError> {
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
        let mut live: HashMap<usize, f64> = HashMap::new();
        for &(idx, bytes) in st.live.values() {
            *live.entry(idx).or_default() += bytes;
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
                        live.get(&i).map_or(0, |b| b.round() as u64),
                    ],
                    weight: 1.0,
                    labels: Vec::new(),
                    frames: Vec::new(),
                }
            })
            .collect();
        // Keys no allocation refers to any more are forgotten.
        let used: HashSet<usize> = st.live.values().map(|&(i, _)| i).collect();
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
                v.0 = remap[&v.0];
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
        CopyReader::add_stats(
            self.copies.as_ref(),
            &self.skel.maps.copy_stats,
            STATS.read(&self.skel.maps.stats),
        )
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
        if self.sample_bytes == 0 {
            "libc malloc uprobes, every allocation".into()
        } else {
            format!(
                "libc malloc uprobes, 1 sample per {} KiB",
                self.sample_bytes / 1024
            )
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
            st.live.values().all(|&(j, _)| j != i),
            "a freed allocation is live"
        );
        let (b, i) = bytes_of(&st, &[0xe]);
        assert_eq!(b, 16.0);
        assert_eq!(st.live.get(&(1, 0x300)), Some(&(i, 16.0)));
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
