//! Interpreter unwinding: finding a runtime in a process, telling BPF how to walk its frames,
//! and naming and merging the frames BPF walked into the native stack.
//!
//! The pieces, for every runtime:
//! - **Detection** (`observe`): from a process's mappings and the exported symbols of the file
//!   that holds the runtime; cached per process until its mappings change. A process found to
//!   run an interpreter has all its stacks copied (its unwind plan is `all`), so every sample
//!   carries its interpreter frames next to the copied native stack.
//! - **Layouts**: per-version offsets (`python_layouts.rs`, generated from each version's
//!   headers), or the ones the runtime publishes (CPython 3.13's `_Py_DebugOffsets`).
//! - **The walk** is BPF's (`bpf/interp.h`), from the `interp_procs` entry written here.
//! - **Naming** reads the runtime's own objects (a code object's name, file and line table)
//!   from the process, cached by (process, object) and checked again after a second.
//! - **Merging** (`splice`): the frames of each call of the evaluation loop replace that call's
//!   native frame, so a C extension's frames sit under the Python function that called them.
//!   The merged frames travel as synthetic addresses (`baton_symbolizer::interp`).
//!
//! A runtime that is found but cannot be walked (an unknown version) is recorded with its
//! reason (`fallbacks`): its stacks stay native, never wrong.
//!
//! Adding a runtime: a module beside `python.rs` with its detection and naming, a family in
//! `interp.h`'s walk, and a `Runtime` variant here.

pub(crate) mod mem;
pub(crate) mod python;
mod python_layouts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use baton_model::sync::lock;
use baton_symbolizer::interp::{intern, InterpFrame};
use libbpf_rs::{MapCore, MapFlags};

use crate::mechanics::record::{bytes_of, record};
use mem::ProcMem;
use python::{CodeInfo, PythonProc};

/// Frames BPF walks at most (`MAX_INTERP_FRAMES`).
pub(crate) const MAX_INTERP_FRAMES: usize = 128;
/// The same, for reports.
pub const MAX_FRAMES: usize = MAX_INTERP_FRAMES;
const ENTRY: u64 = 1 << 63;
const CODE_MASK: u64 = (1 << 48) - 1;
/// A walk's status (`INTERP_*` in interp.h).
pub(crate) const STATUS_READ_FAILED: u32 = 2;
pub(crate) const STATUS_TRUNCATED: u32 = 3;
/// How long a named code object is trusted before it is read again.
const RECHECK: Duration = Duration::from_secs(1);

/// `struct interp_proc` of interp.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct InterpProc {
    runtime: u64,
    family: u32,
    runtime_interpreters_head: u32,
    interp_threads_head: u32,
    tstate_next: u32,
    tstate_thread_id: u32,
    tstate_frame: u32,
    cframe_current_frame: u32,
    frame_code: u32,
    frame_instr: u32,
    frame_previous: u32,
    frame_owner: u32,
    frame_is_entry: u32,
    code_adaptive: u32,
    pad: u32,
}
record!(InterpProc, "interp_proc", 64);

impl InterpProc {
    fn of(p: &PythonProc) -> InterpProc {
        let l = &p.layout;
        let o = |v: usize| v as u32;
        InterpProc {
            runtime: p.runtime,
            family: l.family() as u32,
            runtime_interpreters_head: o(l.runtime_interpreters_head),
            interp_threads_head: o(l.interp_threads_head),
            tstate_next: o(l.tstate_next),
            tstate_thread_id: o(l.tstate_thread_id),
            tstate_frame: o(l.tstate_frame),
            cframe_current_frame: o(l.cframe_current_frame),
            frame_code: o(l.frame_code),
            frame_instr: o(l.frame_instr),
            frame_previous: o(l.frame_previous),
            frame_owner: o(l.frame_owner),
            frame_is_entry: o(l.frame_is_entry),
            code_adaptive: o(l.code_adaptive),
            pad: 0,
        }
    }
}

/// What runs in a process, as far as its stacks are concerned.
#[derive(Debug, Clone)]
pub(crate) enum Runtime {
    Native,
    Python(Arc<PythonProc>),
    /// An interpreter that is not walked, and why.
    Unsupported(String),
}

/// A process whose interpreter frames are left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub pid: u32,
    pub comm: String,
    pub reason: String,
    /// Samples of it that kept native frames only for this reason (for an unsupported version,
    /// those that went through the interpreter unwinder; 0 if none did).
    pub samples: u64,
}

struct Known {
    maps_hash: u64,
    runtime: Runtime,
}

struct Named {
    code: Arc<CodeInfo>,
    checked: Instant,
}

#[derive(Default)]
struct Registry {
    procs: HashMap<u32, Known>,
    names: HashMap<(u32, u64), Named>,
    fallbacks: HashMap<(u32, String), Fallback>,
    stats: InterpStats,
}

/// Counters of the interpreter unwinder, over every profiler of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterpStats {
    /// Stacks that had interpreter frames merged in.
    pub stacks: u64,
    /// Interpreter frames named.
    pub frames: u64,
    /// Stacks whose interpreter frames could not all be read (left native).
    pub failed: u64,
    /// Stacks deeper than the walk's limit (the root-most interpreter frames left off).
    pub truncated: u64,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Mutex::default)
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

/// What process `pid` runs, given its `/proc/PID/maps` text and a hash of it; detected again
/// when the mappings change (an exec, a library loaded).
pub(crate) fn observe(pid: u32, maps: &str, maps_hash: u64) -> Runtime {
    if let Some(k) = lock(registry()).procs.get(&pid) {
        if k.maps_hash == maps_hash {
            return k.runtime.clone();
        }
    }
    let runtime = match python::detect(pid, maps) {
        python::Detection::Python(p) => Runtime::Python(Arc::from(p)),
        python::Detection::Unsupported(why) => Runtime::Unsupported(why),
        python::Detection::NotPython => Runtime::Native,
    };
    if let Runtime::Python(p) = &runtime {
        tracing::debug!(
            pid,
            object = %p.object,
            version = ?p.layout.version,
            layout = if p.from_runtime { "the runtime's debug offsets" } else { "the table" },
            "Python frames walked"
        );
    }
    let mut r = lock(registry());
    if let Runtime::Unsupported(why) = &runtime {
        let comm = comm_of(pid);
        r.fallbacks
            .entry((pid, why.clone()))
            .or_insert_with(|| Fallback {
                pid,
                comm,
                reason: why.clone(),
                samples: 0,
            });
        tracing::info!(pid, reason = %why, "interpreter frames left out");
    }
    // Names read before the change (an exec) are not this program's.
    r.names.retain(|(p, _), _| *p != pid);
    // Only interpreters are remembered: most processes are native, and not every profiler
    // forgets the native ones when they exit. Telling a native one again is a look at its
    // mappings, and happens only when they change.
    if matches!(runtime, Runtime::Native) {
        r.procs.remove(&pid);
    } else {
        r.procs.insert(
            pid,
            Known {
                maps_hash,
                runtime: runtime.clone(),
            },
        );
    }
    runtime
}

/// Writes (or removes) `pid`'s entry in a program's `interp_procs`.
pub(crate) fn write_map(map: &dyn MapCore, pid: u32) {
    let entry = match lock(registry()).procs.get(&pid).map(|k| &k.runtime) {
        Some(Runtime::Python(p)) => Some(InterpProc::of(p)),
        _ => None,
    };
    let key = pid.to_ne_bytes();
    match entry {
        Some(v) => {
            let _ = map.update(&key, bytes_of(&v), MapFlags::ANY);
        }
        None => {
            let _ = map.delete(&key);
        }
    }
}

/// Forgets a process that is gone.
pub(crate) fn forget(pid: u32, map: Option<&dyn MapCore>) {
    if let Some(m) = map {
        let _ = m.delete(&pid.to_ne_bytes());
    }
    let mut r = lock(registry());
    r.procs.remove(&pid);
    r.names.retain(|(p, _), _| *p != pid);
}

/// Processes whose interpreter frames are left out, with why.
pub fn fallbacks() -> Vec<Fallback> {
    let mut v: Vec<Fallback> = lock(registry()).fallbacks.values().cloned().collect();
    v.sort_by(|a, b| (a.pid, &a.reason).cmp(&(b.pid, &b.reason)));
    v
}

/// The interpreter unwinder's counters.
pub fn stats() -> InterpStats {
    lock(registry()).stats
}

/// The code object at `code` of `pid`, named (cached, checked again after `RECHECK`).
fn code_info(pid: u32, p: &PythonProc, code: u64) -> Result<Arc<CodeInfo>, String> {
    if let Some(n) = lock(registry()).names.get(&(pid, code)) {
        if n.checked.elapsed() < RECHECK {
            return Ok(n.code.clone());
        }
    }
    let mem = ProcMem::new(pid);
    if let Some(ty) = p.code_type {
        let actual = mem.read_u64(code + p.layout.object_type as u64)?;
        if actual != ty {
            return Err(format!("{code:#x} is not a code object"));
        }
    }
    let info = Arc::new(python::read_code(&mem, &p.layout, code)?);
    lock(registry()).names.insert(
        (pid, code),
        Named {
            code: info.clone(),
            checked: Instant::now(),
        },
    );
    Ok(info)
}

/// Merges the interpreter frames BPF walked (`frames`, leaf first, with `status`) into the
/// native stack `native` (leaf first) of `pid`: each call of the evaluation loop's frame is
/// replaced by the interpreter frames it runs; frames left over (the native unwinding stopped
/// early) go at the root. If any frame cannot be named, the stack stays native.
pub(crate) fn splice(pid: u32, native: Vec<u64>, frames: &[u64], status: u32) -> Vec<u64> {
    let runtime = lock(registry()).procs.get(&pid).map(|k| k.runtime.clone());
    let Some(Runtime::Python(p)) = runtime else {
        return native;
    };
    if status == STATUS_READ_FAILED {
        note_failure(
            pid,
            "its interpreter's thread state or frames could not be read",
        );
        return native;
    }
    if frames.is_empty() {
        return native;
    }
    // Name every frame first: one that fails leaves the stack native.
    let mut named: Vec<(u64, bool)> = Vec::with_capacity(frames.len());
    for &f in frames {
        let code = f & CODE_MASK;
        let offset = ((f >> 48) & 0x7fff) as u32;
        let info = match code_info(pid, &p, code) {
            Ok(i) => i,
            Err(_) => {
                note_failure(pid, "a frame's code object could not be read");
                return native;
            }
        };
        let line = python::line_of(p.layout.version, &info, offset);
        let addr = intern(InterpFrame {
            module: "[python]",
            function: info.name.clone(),
            file: info.file.clone(),
            line,
        });
        named.push((addr, f & ENTRY != 0));
    }
    {
        let mut r = lock(registry());
        r.stats.stacks += 1;
        r.stats.frames += named.len() as u64;
        if status == STATUS_TRUNCATED {
            r.stats.truncated += 1;
        }
    }
    merge(&native, &named, p.eval)
}

fn note_failure(pid: u32, why: &str) {
    let mut r = lock(registry());
    r.stats.failed += 1;
    let key = (pid, why.to_string());
    if let Some(f) = r.fallbacks.get_mut(&key) {
        f.samples += 1;
        return;
    }
    let comm = comm_of(pid);
    r.fallbacks.insert(
        key,
        Fallback {
            pid,
            comm,
            reason: why.to_string(),
            samples: 1,
        },
    );
}

/// The merge itself: `named` is (synthetic address, first frame of its evaluation-loop call),
/// leaf first; native frames in `eval` are the evaluation loop's calls.
fn merge(native: &[u64], named: &[(u64, bool)], eval: (u64, u64)) -> Vec<u64> {
    let mut out = Vec::with_capacity(native.len() + named.len());
    let mut next = 0usize;
    for (i, &a) in native.iter().enumerate() {
        // Return addresses point after their call: look one byte back.
        let pc = if i > 0 { a.saturating_sub(1) } else { a };
        if pc >= eval.0 && pc < eval.1 && next < named.len() {
            // This call's frames: up to and including the first frame it ran.
            while next < named.len() {
                let (addr, entry) = named[next];
                out.push(addr);
                next += 1;
                if entry {
                    break;
                }
            }
            continue;
        }
        out.push(a);
    }
    out.extend(named[next..].iter().map(|(a, _)| *a));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_evaluation_loop_call_gets_its_own_frames() {
        let eval = (0x1000, 0x2000);
        // leaf: a C function called from Python, then the loop running two frames, a C
        // function between, the loop running one frame, main.
        let native = [0x9000, 0x1100, 0x7000, 0x1200, 0x8000];
        let named = [(1, false), (2, true), (3, true)];
        assert_eq!(
            merge(&native, &named, eval),
            vec![0x9000, 1, 2, 0x7000, 3, 0x8000]
        );
        // The native unwinding stopped early: the rest of the frames go at the root.
        assert_eq!(merge(&native[..2], &named, eval), vec![0x9000, 1, 2, 3]);
        // No interpreter frames: the native stack as it was.
        assert_eq!(merge(&native, &[], eval), native.to_vec());
    }
}
