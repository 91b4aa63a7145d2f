//! The malloc profiler's events: the records BPF sends (sampled allocations, frees, batches of
//! frees), what a sample weighs, and the state built from them between drains (per stack, and
//! the sampled allocations still live).

use std::collections::HashMap;
use std::sync::Arc;

use super::jemalloc::StaticJemalloc;
use crate::mechanics::maps::StackEntry;
use crate::mechanics::record::{addresses, comm, decode, kind_of, record};

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
    /// jemalloc's profiling context of the allocation (`EV_JE_SAMPLED`), else 0.
    tctx: u64,
    /// The thread's interned context (`bpf/threadctx.h`), 0: none.
    ctx: u64,
    stack: StackEntry,
}
record!(AllocEvent, "alloc_event", 1104);

/// `struct free_event` of malloc.bpf.c: a sampled allocation freed.
#[repr(C)]
#[derive(Clone, Copy)]
struct FreeEvent {
    kind: u32,
    pid: u32,
    addr: u64,
}
record!(FreeEvent, "free_event", 16);

/// `struct je_freed_event` of malloc.bpf.c: a sampled allocation of a statically linked
/// jemalloc freed, named by its profiling context and size.
#[repr(C)]
#[derive(Clone, Copy)]
struct JeFreedEvent {
    kind: u32,
    pid: u32,
    tctx: u64,
    size: u64,
}
record!(JeFreedEvent, "je_freed_event", 24);

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
/// A batch of frees from a sampling library.
const EV_FREES: u32 = 4;
/// A sampled allocation of a statically linked jemalloc; its `acc` is the sampling mean.
const EV_JE_SAMPLED: u32 = 5;
/// One of those freed.
const EV_JE_FREED: u32 = 6;

/// What one sampled allocation of `size` bytes stands for: (bytes, allocations).
///
/// From a sampler (Poisson sampling over bytes at mean `mean`), its chance of being sampled was
/// `1 - exp(-size/mean)`, and it weighs the inverse; `mean` 0 is exact mode, weight 1. From the
/// uprobe mode it carries the `acc` bytes its thread allocated since its previous sample.
fn weighed(kind: u32, size: u64, acc: u64) -> (f64, f64) {
    let size = size.max(1) as f64;
    if kind == EV_SAMPLED || kind == EV_JE_SAMPLED {
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

/// (pid, tid, comm, cgroup id, user stack, interned thread context): what a row is aggregated
/// under.
pub(super) type Key = (u32, u32, String, u64, Vec<u64>, u64);

/// Weighted sums: bytes, allocations, and the sampled events behind them.
#[derive(Default)]
pub(super) struct Totals {
    pub(super) bytes: f64,
    pub(super) count: f64,
    pub(super) events: u64,
}

/// A live sampled allocation: its key's index, and what it stands for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Live {
    pub(super) idx: usize,
    pub(super) bytes: f64,
    pub(super) count: f64,
}

/// A sampled allocation whose stack is a copy not unwound yet.
pub(super) struct Unresolved {
    key: Key,
    addr: u64,
    bytes: f64,
    count: f64,
    cookie: u64,
    /// Leading frames of the unwound stack that are the sampler's own.
    skip: Skip,
    /// Freed before it was resolved: counted as allocated, not as live.
    freed: bool,
}

/// Which leading frames of a stack are the allocator's or sampler's own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Skip {
    /// This many.
    Frames(usize),
    /// Those inside a statically linked jemalloc: up to its entry point the program called.
    Jemalloc,
}

/// What the ring reader builds up between drains.
#[derive(Default)]
pub(super) struct State {
    pub(super) keys: HashMap<Key, usize>,
    pub(super) entries: Vec<Key>,
    pub(super) window: HashMap<usize, Totals>,
    /// Sampled allocations not freed yet, by (pid, address).
    pub(super) live: HashMap<(u32, u64), Live>,
    /// Allocations waiting for their copied stack, in arrival order.
    pub(super) unresolved: Vec<Unresolved>,
    /// (pid, address) -> index in `unresolved` of the latest allocation there.
    pub(super) unresolved_at: HashMap<(u32, u64), usize>,
    /// Live samples of a statically linked jemalloc, by (pid, profiling context): their
    /// (size, address). jemalloc names a freed sample by its context and size alone.
    pub(super) je_live: HashMap<(u32, u64), Vec<(u64, u64)>>,
    /// The statically linked jemalloc of each target that has one.
    pub(super) je_targets: HashMap<u32, Arc<StaticJemalloc>>,
}

impl State {
    pub(super) fn on_event(&mut self, data: &[u8]) {
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
            Some(EV_JE_SAMPLED) => {
                if let Ok(e) = decode::<AllocEvent>(data) {
                    self.je_live
                        .entry((e.pid, e.tctx))
                        .or_default()
                        .push((e.size, e.addr));
                    self.on_alloc(EV_JE_SAMPLED, &e);
                }
            }
            Some(EV_JE_FREED) => {
                if let Ok(e) = decode::<JeFreedEvent>(data) {
                    if let Some(addr) = self.je_freed(e.pid, e.tctx, e.size) {
                        self.on_free(e.pid, addr);
                    }
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

    /// The address of the live jemalloc sample of context `tctx` just freed: one of that size
    /// (any of that context when none is).
    fn je_freed(&mut self, pid: u32, tctx: u64, size: u64) -> Option<u64> {
        let live = self.je_live.get_mut(&(pid, tctx))?;
        let i = live
            .iter()
            .rposition(|&(s, _)| s == size)
            .unwrap_or(live.len().checked_sub(1)?);
        let (_, addr) = live.swap_remove(i);
        if live.is_empty() {
            self.je_live.remove(&(pid, tctx));
        }
        Some(addr)
    }

    /// Drops a stack's leading frames that are the allocator's own.
    fn trim(&self, pid: u32, skip: Skip, stack: &mut Vec<u64>) {
        let n = match skip {
            Skip::Frames(n) => n,
            Skip::Jemalloc => self
                .je_targets
                .get(&pid)
                .map_or(0, |je| je.frames_inside(stack)),
        };
        stack.drain(..n.min(stack.len()));
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
            e.ctx,
        );
        match e.cookie {
            0 if kind == EV_JE_SAMPLED => {
                let mut key = key;
                self.trim(e.pid, Skip::Jemalloc, &mut key.4);
                self.count(key, e.addr, bytes, count, true)
            }
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
                    skip: match kind {
                        EV_SAMPLED => Skip::Frames(1),
                        EV_JE_SAMPLED => Skip::Jemalloc,
                        _ => Skip::Frames(0),
                    },
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
    pub(super) fn resolve(
        &mut self,
        n: usize,
        mut unwound: impl FnMut(u32, u64) -> Option<Vec<u64>>,
    ) {
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
            self.trim(u.key.0, u.skip, &mut stack);
            u.key.4 = stack;
            self.count(u.key, u.addr, u.bytes, u.count, !u.freed);
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
            tctx: 0,
            ctx: 0,
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
