//! DWARF unwinding of copied user stacks, for code built without frame pointers.
//!
//! The BPF program walks frame pointers where the code keeps them. For code that does not, it
//! copies the user registers and the top of the user stack instead, and this module unwinds the
//! copy with the modules' `.eh_frame` CFI (through `framehop`). The choice is per module:
//! [`DwarfUnwinder::prepare`] reads a process's mappings and returns a [`ProcessPlan`] that
//! lists the code ranges without frame pointers; the BPF program copies a sample only when its
//! instruction pointer is in one of them, or when the process's executable itself lacks frame
//! pointers (then its frames are in nearly every stack).
//!
//! Unwind data is read once per module and shared by every process that maps it, keyed by
//! build ID (by device, inode and path when a module has none).

pub mod elf;

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, Unwinder};

use baton_symbolizer::{parse_maps, MapEntry};
pub use elf::ModuleUnwind;

/// Most user frames kept per stack, as for frame-pointer stacks.
pub const MAX_FRAMES: usize = 127;
/// Most code ranges the BPF program checks per process; a process with more ranges without
/// frame pointers is copied whole.
pub const MAX_RANGES: usize = 16;

/// What the BPF program should do for one process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessPlan {
    /// Copy every sample: the executable lacks frame pointers, or too many modules do.
    pub all: bool,
    /// Copy samples whose instruction pointer is in one of these ranges.
    pub ranges: Vec<Range<u64>>,
}

/// Bytes of user stack a copy carries (`USTACK_BYTES` in unwind.h).
pub(crate) const USTACK_BYTES: usize = 8 * 4096;

/// `struct copied_regs` of unwind.h: the registers unwinding a copied stack starts from.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopiedRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}
crate::mechanics::record::record!(CopiedRegs, "copied_regs", 24);

/// `struct unwind_plan` of unwind.h: a [`ProcessPlan`] as BPF reads it from `dwarf_pids`.
#[repr(C)]
#[derive(Clone, Copy)]
struct UnwindPlan {
    all: u32,
    n: u32,
    /// (start, end) of each range.
    ranges: [[u64; 2]; MAX_RANGES],
}
crate::mechanics::record::record!(UnwindPlan, "unwind_plan", 264);

/// A plan as BPF's `struct unwind_plan` lays it out (`dwarf_pids` values).
pub(crate) fn encode_plan(plan: &ProcessPlan) -> Vec<u8> {
    let mut p = UnwindPlan {
        all: u32::from(plan.all),
        n: plan.ranges.len().min(MAX_RANGES) as u32,
        ranges: [[0; 2]; MAX_RANGES],
    };
    for (slot, r) in p.ranges.iter_mut().zip(&plan.ranges) {
        *slot = [r.start, r.end];
    }
    crate::mechanics::record::bytes_of(&p).to_vec()
}

impl ProcessPlan {
    /// Whether frame pointers serve every sample of the process.
    pub fn is_empty(&self) -> bool {
        !self.all && self.ranges.is_empty()
    }
}

/// Counters, cumulative.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnwindStats {
    /// Copied samples unwound.
    pub stacks: u64,
    /// Of those, stacks that reached a frame whose CFI marks the end (`_start`, `clone`).
    pub complete: u64,
    pub frames: u64,
    /// Copied samples of a process whose mappings could not be read.
    pub no_mappings: u64,
    /// Times a process's mappings were re-read (an address outside every known module).
    pub reloads: u64,
    /// Modules whose unwind data is held, and its bytes.
    pub modules: u64,
    pub unwind_bytes: u64,
    /// The most bytes of unwind data held at once.
    pub peak_unwind_bytes: u64,
}

type Data = Arc<[u8]>;

/// The modules of one process, as framehop sees them.
struct Space {
    unwinder: UnwinderX86_64<Data>,
    code: Vec<Range<u64>>,
    loaded: Instant,
    /// Hash of the `/proc/PID/maps` text this was built from, and the plan made from it.
    maps_hash: u64,
    plan: ProcessPlan,
}

impl Space {
    fn knows(&self, addr: u64) -> bool {
        self.code.iter().any(|r| r.contains(&addr))
    }
}

/// Unwinds copied stacks of the processes on this host. One per profiler.
pub struct DwarfUnwinder {
    /// Parsed modules by (device, inode, path); `None` when the file could not be read.
    by_file: HashMap<(u64, u64, String), Option<Arc<ModuleUnwind>>>,
    by_build_id: HashMap<String, Arc<ModuleUnwind>>,
    vdso: Option<Arc<ModuleUnwind>>,
    spaces: HashMap<u32, Space>,
    cache: CacheX86_64,
    pub stats: UnwindStats,
}

impl Default for DwarfUnwinder {
    fn default() -> Self {
        Self::new()
    }
}

/// How long after a (re)load an unknown address may trigger another re-read of the maps. Short:
/// a process that just exec'd has all its samples at unknown addresses until the re-read.
const RELOAD_INTERVAL: Duration = Duration::from_millis(20);

impl DwarfUnwinder {
    pub fn new() -> Self {
        DwarfUnwinder {
            by_file: HashMap::new(),
            by_build_id: HashMap::new(),
            vdso: own_vdso().map(Arc::new),
            spaces: HashMap::new(),
            cache: CacheX86_64::new(),
            stats: UnwindStats::default(),
        }
    }

    /// Reads the mappings of `pid` and loads the unwind data of its modules. Returns the plan
    /// for the BPF program, or `None` when the process is gone. Cheap when the mappings did not
    /// change since the last call.
    pub fn prepare(&mut self, pid: u32) -> Option<ProcessPlan> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        self.prepare_maps(pid, &text)
    }

    /// As [`DwarfUnwinder::prepare`], from `/proc/PID/maps` text the caller has read.
    pub fn prepare_maps(&mut self, pid: u32, text: &str) -> Option<ProcessPlan> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        let maps_hash = h.finish();
        if let Some(s) = self.spaces.get_mut(&pid) {
            if s.maps_hash == maps_hash {
                s.loaded = Instant::now();
                return Some(s.plan.clone());
            }
        }
        let entries = parse_maps(text);
        if entries.is_empty() {
            return None;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                let s = p.to_string_lossy().into_owned();
                s.strip_suffix(" (deleted)")
                    .map(str::to_string)
                    .unwrap_or(s)
            });
        let mut unwinder = UnwinderX86_64::new();
        let mut code = Vec::new();
        let mut plan = ProcessPlan::default();
        for e in &entries {
            let module = if e.path == "[vdso]" {
                self.vdso.clone()
            } else if e.path.starts_with('/') && !e.path.starts_with("/memfd:") {
                self.module(pid, e)
            } else {
                // Anonymous code is JIT code: frame pointers are all there is.
                None
            };
            // Every code mapping counts as known, JIT code included: an address outside all of
            // them means the mappings changed.
            code.push(e.start..e.end);
            let Some(m) = module else {
                continue;
            };
            let Some(svma) = m.svma_of_offset(e.file_offset) else {
                continue;
            };
            let base_avma = e.start.wrapping_sub(svma);
            unwinder.add_module(Module::new(
                e.path.clone(),
                e.start..e.end,
                base_avma,
                section_info(&m),
            ));
            if !m.frame_pointers {
                if exe.as_deref() == Some(e.path.as_str()) {
                    plan.all = true;
                }
                plan.ranges.push(e.start..e.end);
            }
        }
        if plan.ranges.len() > MAX_RANGES {
            plan.all = true;
        }
        // A process whose interpreter frames BPF walks has all its stacks copied: they travel
        // with the copies.
        if matches!(
            crate::interp::observe(pid, text, maps_hash),
            crate::interp::Runtime::Python(_)
        ) {
            plan.all = true;
        }
        if plan.all {
            plan.ranges.clear();
        }
        self.spaces.insert(
            pid,
            Space {
                unwinder,
                code,
                loaded: Instant::now(),
                maps_hash,
                plan: plan.clone(),
            },
        );
        self.update_module_stats();
        Some(plan)
    }

    /// The unwind data of a file mapping, read once per file and shared per build ID.
    fn module(&mut self, pid: u32, e: &MapEntry) -> Option<Arc<ModuleUnwind>> {
        let key = (e.dev, e.inode, e.path.clone());
        if let Some(m) = self.by_file.get(&key) {
            return m.clone();
        }
        // map_files reaches the very file mapped, even deleted or in another mount namespace.
        let candidates = [
            PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end)),
            PathBuf::from(format!("/proc/{pid}/root{}", e.path)),
        ];
        let parsed = candidates.iter().find_map(|p| ModuleUnwind::read(p).ok());
        let m = parsed.map(|m| match &m.build_id {
            Some(id) => self
                .by_build_id
                .entry(id.clone())
                .or_insert_with(|| Arc::new(m))
                .clone(),
            None => Arc::new(m),
        });
        if m.is_none() {
            tracing::debug!(path = %e.path, pid, "no unwind data for module");
        }
        self.by_file.insert(key, m.clone());
        m
    }

    /// Unwinds one copied stack. Returns the addresses, leaf first, and whether the unwinder
    /// reached the outermost frame.
    pub fn unwind(
        &mut self,
        pid: u32,
        ip: u64,
        sp: u64,
        bp: u64,
        stack: &[u8],
    ) -> (Vec<u64>, bool) {
        let stale = self
            .spaces
            .get(&pid)
            .is_none_or(|s| !s.knows(ip) && s.loaded.elapsed() > RELOAD_INTERVAL);
        if stale {
            if self.spaces.contains_key(&pid) {
                self.stats.reloads += 1;
            }
            // The plan is not needed here: whoever prepares the process sets it in BPF.
            let _ = self.prepare(pid);
        }
        self.stats.stacks += 1;
        let Some(space) = self.spaces.get(&pid) else {
            self.stats.no_mappings += 1;
            return (vec![ip], false);
        };
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = stack.get(off..off + 8).ok_or(())?;
            Ok(u64::from_ne_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frames = space
            .unwinder
            .iter_frames(ip, regs, &mut self.cache, &mut read_stack);
        let mut out = Vec::with_capacity(32);
        let mut complete = false;
        loop {
            match frames.next() {
                Ok(Some(f)) => out.push(f.address()),
                Ok(None) => {
                    complete = true;
                    break;
                }
                Err(_) => break,
            }
            if out.len() >= MAX_FRAMES {
                break;
            }
        }
        if out.is_empty() {
            out.push(ip);
        }
        self.stats.frames += out.len() as u64;
        self.stats.complete += u64::from(complete);
        (out, complete)
    }

    /// Forgets processes for which `keep` is false, and the modules no process maps any more.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.spaces.retain(|&pid, _| keep(pid));
        // A module is still used when a space holds a clone of its Arc (framehop keeps one per
        // mapping): drop cache entries whose Arc is held by the caches alone.
        self.by_file
            .retain(|_, m| m.as_ref().is_none_or(|m| Arc::strong_count(m) > 2));
        self.by_build_id.retain(|_, m| Arc::strong_count(m) > 1);
        self.update_module_stats();
    }

    fn update_module_stats(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let (mut n, mut bytes) = (0u64, 0u64);
        for m in self
            .by_file
            .values()
            .flatten()
            .chain(self.by_build_id.values())
            .chain(self.vdso.iter())
        {
            if seen.insert(Arc::as_ptr(m)) {
                n += 1;
                bytes += m.bytes() as u64;
            }
        }
        self.stats.modules = n;
        self.stats.unwind_bytes = bytes;
        self.stats.peak_unwind_bytes = self.stats.peak_unwind_bytes.max(bytes);
    }
}

fn section_info(m: &ModuleUnwind) -> ExplicitModuleSectionInfo<Data> {
    ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: m.text_svma.clone(),
        text: None,
        stubs_svma: None,
        stub_helper_svma: None,
        got_svma: m.got_svma.clone(),
        unwind_info: None,
        eh_frame_svma: m.eh_frame.as_ref().map(|s| s.svma.clone()),
        eh_frame: m.eh_frame.as_ref().map(|s| s.data.clone()),
        eh_frame_hdr_svma: m.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
        eh_frame_hdr: m.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
        debug_frame: None,
        text_segment_svma: None,
        text_segment: None,
    }
}

/// The vDSO image is the same in every process of this kernel: read this process's copy.
fn own_vdso() -> Option<ModuleUnwind> {
    ModuleUnwind::parse(&baton_symbolizer::own_vdso_image()?).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_vdso_has_cfi() {
        let v = own_vdso().expect("this process has a vDSO");
        assert!(v.eh_frame.is_some(), "vDSO without .eh_frame");
        assert!(v.svma_of_offset(0).is_some());
    }

    #[test]
    fn unwinds_this_threads_own_stack() {
        // Copy this thread's stack from a known frame and unwind it: the test runner's frames
        // (and the libc thread start) must appear above this function.
        let mut u = DwarfUnwinder::new();
        let pid = std::process::id();
        let plan = u.prepare(pid).expect("own maps");
        // Debian's libc lacks frame pointers, so some range must be listed.
        assert!(plan.all || !plan.ranges.is_empty(), "{plan:?}");
        let (ip, sp, bp, stack) = capture();
        let (frames, _complete) = u.unwind(pid, ip, sp, bp, &stack);
        assert!(frames.len() >= 5, "only {} frames", frames.len());
        let own = unwinds_this_threads_own_stack as fn() as usize as u64;
        // The return address into this test function is among the first frames.
        assert!(
            frames.iter().take(4).any(|&a| a > own && a < own + 4096),
            "{frames:x?} does not return into {own:x}"
        );
    }

    /// The registers and 64 KiB of stack at the call site, with the instruction pointer inside
    /// this function.
    #[inline(never)]
    pub(crate) fn capture() -> (u64, u64, u64, Vec<u8>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        let mut stack = vec![0u8; 16384];
        let mem = std::fs::File::open("/proc/self/mem").expect("mem");
        use std::os::unix::fs::FileExt;
        let n = mem.read_at(&mut stack, sp).expect("read own stack");
        stack.truncate(n);
        (ip, sp, bp, stack)
    }
}
