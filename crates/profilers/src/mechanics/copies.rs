//! The user-space side of `bpf/copy.h`: DWARF unwinding for the event-driven profilers.
//!
//! A reader thread unwinds each copied user stack as it arrives and keeps the result under
//! (thread, cookie); the event's end, reported later through the same ring, is paired with it
//! and aggregated. The per-process plans (which code lacks frame pointers) are the CPU
//! profiler's: `observe_maps` computes them and writes them to the program's `dwarf_pids`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use baton_model::sync::lock;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::mechanics::maps::percpu_sum;
use crate::mechanics::record::{comm, decode, decode_with_tail, kind_of, record};
use crate::mechanics::ring::RingReader;
use crate::mechanics::unwind::{encode_plan, CopiedRegs, DwarfUnwinder, UnwindStats, USTACK_BYTES};
use crate::ProfilerError;

/// `struct copy_event` of copy.h without its trailing stack: the record goes on with the
/// `stack_bytes` bytes BPF copied (at most `USTACK_BYTES`), read where they lie in the ring.
#[repr(C)]
#[derive(Clone, Copy)]
struct CopyEvent {
    kind: u32,
    pid: u32,
    cookie: u64,
    tid: u32,
    pad: u32,
    regs: CopiedRegs,
    stack_bytes: u64,
}
record!(CopyEvent, "copy_event", 56);

/// `struct end_event` of copy.h: what an event whose stack was copied measured.
#[repr(C)]
#[derive(Clone, Copy)]
struct EndEvent {
    kind: u32,
    pid: u32,
    cookie: u64,
    tid: u32,
    what: u32,
    cgroup_id: u64,
    kernel_stack: i32,
    pad: u32,
    ns: u64,
    count: u64,
    bytes: u64,
    comm: [u8; 16],
    ctx: u64,
}
record!(EndEvent, "end_event", 88);

/// `struct interp_event` of copy.h without its frames: it goes on with `n` of them.
#[repr(C)]
#[derive(Clone, Copy)]
struct InterpEvent {
    kind: u32,
    pid: u32,
    cookie: u64,
    tid: u32,
    n: u32,
    status: u32,
    pad: u32,
}
record!(InterpEvent, "interp_event", 32);

/// The `kind`s of copy.h's ring.
const EV_COPY: u32 = 1;
const EV_END: u32 = 2;
const EV_INTERP: u32 = 3;
/// A copy whose end has not come after this many drains is dropped (its event was shorter than
/// the profiler records, or its end was lost).
const PENDING_DRAINS: u32 = 3;

/// An event with a copied (and unwound) user stack, as aggregated between drains.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CopiedKey {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// The event's kind (block state, syscall number, operation).
    pub what: u32,
    pub kernel_stack: i32,
    pub user: Vec<u64>,
    /// The thread's interned context (`bpf/threadctx.h`), 0: none.
    pub ctx: u64,
}

/// Sums of the events under one key.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CopiedSums {
    pub ns: u64,
    pub count: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct State {
    /// (tid, cookie) -> (unwound user stack, drain generation it arrived in).
    pending: HashMap<(u32, u64), (Vec<u64>, u32)>,
    /// (tid, cookie) -> the interpreter frames of the copy that comes next, and their status.
    interp: HashMap<(u32, u64), (Vec<u64>, u32)>,
    done: HashMap<CopiedKey, CopiedSums>,
    unpaired: u64,
    generation: u32,
}

impl State {
    fn on_event(&mut self, unwinder: &Mutex<DwarfUnwinder>, d: &[u8]) {
        match kind_of(d) {
            Some(EV_INTERP) => {
                let tail = d.len().saturating_sub(std::mem::size_of::<InterpEvent>());
                let Ok((e, frames)) = decode_with_tail::<InterpEvent>(d, tail) else {
                    return;
                };
                let frames: Vec<u64> = frames
                    .chunks_exact(8)
                    .take(e.n as usize)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
                    .collect();
                self.interp.insert((e.tid, e.cookie), (frames, e.status));
            }
            Some(EV_COPY) => {
                // The record is as long as the stack BPF copied (copy.h sends no more).
                let tail = d.len().saturating_sub(std::mem::size_of::<CopyEvent>());
                let Ok((c, stack)) = decode_with_tail::<CopyEvent>(d, tail.min(USTACK_BYTES))
                else {
                    return;
                };
                let stack = &stack[..(c.stack_bytes as usize).min(stack.len())];
                let (mut user, _) =
                    lock(unwinder).unwind(c.pid, c.regs.ip, c.regs.sp, c.regs.bp, stack);
                if let Some((frames, status)) = self.interp.remove(&(c.tid, c.cookie)) {
                    user = crate::interp::splice(c.pid, user, &frames, status);
                }
                self.pending
                    .insert((c.tid, c.cookie), (user, self.generation));
            }
            Some(EV_END) => {
                let Ok(e) = decode::<EndEvent>(d) else {
                    return;
                };
                match self.pending.remove(&(e.tid, e.cookie)) {
                    Some((user, _)) => {
                        let key = CopiedKey {
                            pid: e.pid,
                            tid: e.tid,
                            cgroup_id: e.cgroup_id,
                            comm: comm(&e.comm),
                            what: e.what,
                            kernel_stack: e.kernel_stack,
                            user,
                            ctx: e.ctx,
                        };
                        let sums = self.done.entry(key).or_default();
                        sums.ns += e.ns;
                        sums.count += e.count;
                        sums.bytes += e.bytes;
                    }
                    None => self.unpaired += 1,
                }
            }
            _ => {}
        }
    }
}

/// A target's `/proc/PID/maps`, to plan it at the profiler's start; `None` for a child that
/// has not exec'd yet (`baton record -- CMD` gates it until the profiler runs: its mappings are
/// still Baton's own, and the collector plans it after the exec).
pub(crate) fn maps_to_plan(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    if std::env::current_exe().is_ok_and(|me| me == exe) {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()
}

/// An owned handle on a program's map, to keep beside the skeleton that owns it.
pub(crate) fn map_handle(map: &dyn MapCore) -> Option<MapHandle> {
    let info = libbpf_rs::MapInfo::new(map.as_fd())
        .map_err(|e| tracing::warn!("map info: {e}"))
        .ok()?;
    MapHandle::from_map_id(info.info.id)
        .map_err(|e| tracing::warn!("map {}: {e}", info.info.id))
        .ok()
}

/// Reads a program's `copies` ring and plans its `dwarf_pids`.
pub(crate) struct CopyReader {
    /// First, so the thread stops before anything it uses goes.
    reader: RingReader,
    state: Arc<Mutex<State>>,
    unwinder: Arc<Mutex<DwarfUnwinder>>,
    /// The program's `interp_procs` (interp.h).
    interp_procs: Option<MapHandle>,
}

impl CopyReader {
    /// With `dwarf`, starts the reader of `copies` and plans the `targets` the profiler starts
    /// with (see `plan_targets`); call it before the targets map lets BPF track them. Without
    /// DWARF unwinding there is nothing to read: `None`.
    pub(crate) fn start(
        name: &str,
        copies: &dyn MapCore,
        dwarf_pids: &dyn MapCore,
        interp_procs: &dyn MapCore,
        dwarf: bool,
        targets: Option<&[u32]>,
    ) -> Result<Option<CopyReader>, ProfilerError> {
        if !dwarf {
            return Ok(None);
        }
        let mut reader = CopyReader::start_reader(name, copies)?;
        reader.interp_procs = map_handle(interp_procs);
        reader.plan_targets(dwarf_pids, targets);
        Ok(Some(reader))
    }

    fn start_reader(name: &str, copies: &dyn MapCore) -> Result<CopyReader, ProfilerError> {
        let state: Arc<Mutex<State>> = Arc::default();
        let unwinder = Arc::new(Mutex::new(DwarfUnwinder::new()));
        let (sink, uw) = (Arc::clone(&state), Arc::clone(&unwinder));
        let reader = RingReader::start(name, copies, move |d| lock(&sink).on_event(&uw, d))?;
        Ok(CopyReader {
            reader,
            state,
            unwinder,
            interp_procs: None,
        })
    }

    /// Plans which of `pid`'s code lacks frame pointers and tells BPF through `dwarf_pids`.
    pub(crate) fn observe_maps(&self, dwarf_pids: &dyn MapCore, pid: u32, maps: &str) {
        let plan = lock(&self.unwinder).prepare_maps(pid, maps);
        if let Some(m) = &self.interp_procs {
            crate::interp::write_map(m, pid);
        }
        let key = pid.to_ne_bytes();
        match plan {
            Some(plan) if !plan.is_empty() => {
                let _ = dwarf_pids.update(&key, &encode_plan(&plan), MapFlags::ANY);
            }
            _ => {
                let _ = dwarf_pids.delete(&key);
            }
        }
    }

    /// Plans the targets named at start, before BPF tracks them: an event that began between
    /// the attach and the collector's first look would otherwise be walked by frame pointers
    /// alone (a sleeper's first block, say, would skip the caller of libc's `clock_nanosleep`).
    /// A target still waiting to exec is planned again by the collector once it has.
    fn plan_targets(&self, dwarf_pids: &dyn MapCore, targets: Option<&[u32]>) {
        for &pid in targets.unwrap_or(&[]) {
            if let Some(maps) = maps_to_plan(pid) {
                self.observe_maps(dwarf_pids, pid, &maps);
            }
        }
    }

    /// Everything paired since the last call. Also forgets processes that are gone (their
    /// unwinders and plans) and copies too old to be paired.
    pub(crate) fn take(&self, dwarf_pids: &dyn MapCore) -> Vec<(CopiedKey, CopiedSums)> {
        self.reader.flush();
        let mut dead = Vec::new();
        lock(&self.unwinder).retain(|pid| {
            let alive = crate::sys::process_alive(pid);
            if !alive {
                dead.push(pid);
            }
            alive
        });
        for pid in dead {
            let _ = dwarf_pids.delete(&pid.to_ne_bytes());
            crate::interp::forget(pid, self.interp_procs.as_ref().map(|m| m as &dyn MapCore));
        }
        let mut st = lock(&self.state);
        st.generation = st.generation.wrapping_add(1);
        let now = st.generation;
        st.pending
            .retain(|_, (_, g)| now.wrapping_sub(*g) <= PENDING_DRAINS);
        // An interpreter record is followed at once by its copy; one left over lost its copy.
        st.interp.clear();
        st.done.drain().collect()
    }

    /// The unwound stack of the copy `(tid, cookie)`, for profilers that pair copies with
    /// events of their own (after [`CopyReader::flush`]).
    pub(crate) fn take_unwound(&self, tid: u32, cookie: u64) -> Option<Vec<u64>> {
        lock(&self.state)
            .pending
            .remove(&(tid, cookie))
            .map(|(user, _)| user)
    }

    /// Waits until every copy submitted so far has been unwound.
    pub(crate) fn flush(&self) {
        self.reader.flush();
    }

    /// Adds the counters of `copies` (stacks copied, copies or ends lost or unpaired, the
    /// unwinder's) to `s`; nothing without DWARF unwinding.
    pub(crate) fn add_stats(
        copies: Option<&CopyReader>,
        copy_stats: &dyn MapCore,
        s: crate::ProfilerStats,
    ) -> crate::ProfilerStats {
        let Some(c) = copies else { return s };
        let (dwarf_copied, dwarf_ring_full, unwind) = c.stats(copy_stats);
        crate::ProfilerStats {
            dwarf_copied,
            dwarf_ring_full,
            unwind,
            ..s
        }
    }

    /// (stacks copied, copies or ends lost or unpaired), and the unwinder's counters.
    pub(crate) fn stats(&self, copy_stats: &dyn MapCore) -> (u64, u64, UnwindStats) {
        let unpaired = lock(&self.state).unpaired;
        (
            percpu_sum(copy_stats, 0),
            percpu_sum(copy_stats, 1) + unpaired,
            lock(&self.unwinder).stats,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanics::record::{bad_records, bytes_of};
    use crate::mechanics::unwind::tests::capture;

    /// A copy record as copy.h sends it: the header, then only the stack bytes copied.
    fn copy_record(tid: u32, cookie: u64, regs: CopiedRegs, stack: &[u8]) -> Vec<u8> {
        let head = CopyEvent {
            kind: EV_COPY,
            pid: std::process::id(),
            cookie,
            tid,
            pad: 0,
            regs,
            stack_bytes: stack.len() as u64,
        };
        [bytes_of(&head), stack].concat()
    }

    #[test]
    fn a_copy_as_long_as_its_stack_is_unwound_and_a_longer_one_dropped() {
        let unwinder = Mutex::new(DwarfUnwinder::new());
        let mut st = State::default();
        let (ip, sp, bp, stack) = capture();
        // A few KiB of this thread's stack, far less than USTACK_BYTES.
        let stack = &stack[..stack.len().min(8192)];
        st.on_event(
            &unwinder,
            &copy_record(7, 1, CopiedRegs { ip, sp, bp }, stack),
        );
        let (user, _) = st.pending.get(&(7, 1)).expect("the short copy is kept");
        assert!(
            user.len() >= 5,
            "only {} frames from a short copy",
            user.len()
        );

        let before = bad_records();
        let long = vec![0u8; USTACK_BYTES + 8];
        st.on_event(
            &unwinder,
            &copy_record(7, 2, CopiedRegs { ip, sp, bp }, &long),
        );
        assert!(
            !st.pending.contains_key(&(7, 2)),
            "a copy past USTACK_BYTES was kept"
        );
        st.on_event(&unwinder, &EV_COPY.to_ne_bytes());
        assert!(
            bad_records() - before >= 2,
            "malformed copies were not counted"
        );
    }
}
