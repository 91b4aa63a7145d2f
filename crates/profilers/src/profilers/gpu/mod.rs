//! The GPU profilers: `cuda` (kernel launches, from uprobes on the CUDA runtime and driver),
//! `gpumem` (device memory allocated and live, from their allocation calls) and `nvml`
//! (utilisation, memory, power, temperature and clocks per device and per process, read
//! through NVML once a second).
//!
//! `cuda` and `gpumem` share one BPF program (`bpf/gpu.bpf.c`, built on `common.h`), each
//! attaching its own probes. Probes go in each target process's CUDA libraries (`libs`): those
//! it maps, those its executable will load when it is about to start, and those it loads later
//! (`dlopen`, as PyTorch does), found again every tick; its executable too, where it links the
//! runtime statically. Without targets they go in the host's installed libraries.

pub mod cuda;
pub mod gpumem;
mod libs;
pub mod nvml;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use libbpf_rs::{Link, MapCore, MapFlags, UprobeOpts};

use crate::mechanics::record::{decode, record};

use crate::profilers::events::event_skel;
use crate::ProfilerError;

bpf_skel!("gpu");
use skel::{GpuSkel, GpuSkelBuilder};

event_skel!(GpuSkel);

/// The entry points, as `enum gpu_api` of gpu.bpf.c numbers them.
pub(crate) const API_NAMES: &[&str] = &[
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
    "cuGraphLaunch",
    "cudaMalloc",
    "cuMemAlloc",
    "cudaFree",
    "cuMemFree",
];

/// The name of entry point `api`.
pub(crate) fn api_name(api: u32) -> String {
    API_NAMES
        .get(api as usize)
        .map_or_else(|| format!("api#{api}"), |s| (*s).to_string())
}

/// Which of the program's BPF programs a probe runs.
#[derive(Debug, Clone, Copy)]
enum Prog {
    CudaLaunchKernel,
    CuLaunchKernel,
    CuLaunchKernelEx,
    GraphLaunch,
    GetFunction,
    GetFunctionReturn,
    MemAlloc,
    MemAllocReturn,
    MemFree,
}

/// One probe: a symbol of a CUDA library, the program it runs, its cookie (the API) and
/// whether it fires at the return.
struct Probe {
    library: libs::Library,
    symbols: &'static [&'static str],
    prog: Prog,
    api: u32,
    ret: bool,
}

use libs::Library::{Driver, Runtime};

/// The `cuda` profiler's probes. The `_ptsz` variants are the per-thread default stream's.
const LAUNCH_PROBES: &[Probe] = &[
    Probe {
        library: Runtime,
        symbols: &["cudaLaunchKernel", "cudaLaunchKernel_ptsz"],
        prog: Prog::CudaLaunchKernel,
        api: 0,
        ret: false,
    },
    Probe {
        library: Runtime,
        symbols: &["cudaGraphLaunch", "cudaGraphLaunch_ptsz"],
        prog: Prog::GraphLaunch,
        api: 3,
        ret: false,
    },
    Probe {
        library: Driver,
        symbols: &["cuLaunchKernel", "cuLaunchKernel_ptsz"],
        prog: Prog::CuLaunchKernel,
        api: 1,
        ret: false,
    },
    Probe {
        library: Driver,
        symbols: &["cuLaunchKernelEx", "cuLaunchKernelEx_ptsz"],
        prog: Prog::CuLaunchKernelEx,
        api: 2,
        ret: false,
    },
    Probe {
        library: Driver,
        symbols: &["cuGraphLaunch", "cuGraphLaunch_ptsz"],
        prog: Prog::GraphLaunch,
        api: 4,
        ret: false,
    },
    Probe {
        library: Driver,
        symbols: &["cuModuleGetFunction"],
        prog: Prog::GetFunction,
        api: 0,
        ret: false,
    },
    Probe {
        library: Driver,
        symbols: &["cuModuleGetFunction"],
        prog: Prog::GetFunctionReturn,
        api: 0,
        ret: true,
    },
];

/// The `gpumem` profiler's probes (cuda.h maps `cuMemAlloc` and `cuMemFree` to `_v2`).
const MEMORY_PROBES: &[Probe] = &[
    Probe {
        library: Runtime,
        symbols: &["cudaMalloc"],
        prog: Prog::MemAlloc,
        api: 5,
        ret: false,
    },
    Probe {
        library: Runtime,
        symbols: &["cudaMalloc"],
        prog: Prog::MemAllocReturn,
        api: 5,
        ret: true,
    },
    Probe {
        library: Driver,
        symbols: &["cuMemAlloc_v2"],
        prog: Prog::MemAlloc,
        api: 6,
        ret: false,
    },
    Probe {
        library: Driver,
        symbols: &["cuMemAlloc_v2"],
        prog: Prog::MemAllocReturn,
        api: 6,
        ret: true,
    },
    Probe {
        library: Runtime,
        symbols: &["cudaFree"],
        prog: Prog::MemFree,
        api: 7,
        ret: false,
    },
    Probe {
        library: Driver,
        symbols: &["cuMemFree_v2"],
        prog: Prog::MemFree,
        api: 8,
        ret: false,
    },
];

fn program<'a>(skel: &'a GpuSkel<'static>, p: Prog) -> &'a libbpf_rs::ProgramMut<'static> {
    let progs = &skel.progs;
    match p {
        Prog::CudaLaunchKernel => &progs.cuda_launch_kernel,
        Prog::CuLaunchKernel => &progs.cu_launch_kernel,
        Prog::CuLaunchKernelEx => &progs.cu_launch_kernel_ex,
        Prog::GraphLaunch => &progs.graph_launch,
        Prog::GetFunction => &progs.get_function,
        Prog::GetFunctionReturn => &progs.get_function_return,
        Prog::MemAlloc => &progs.mem_alloc,
        Prog::MemAllocReturn => &progs.mem_alloc_return,
        Prog::MemFree => &progs.mem_free,
    }
}

/// The probes of one profiler, attached file by file and process by process.
pub(crate) struct Attacher {
    probes: &'static [Probe],
    /// The probes, with the process each is for (-1: every process).
    links: Vec<(i32, Link)>,
    /// (pid or -1, file's device and inode) pairs already probed (or found to hold no entry
    /// point): one file reached by two paths (`/proc/PID/root/...` and the plain one) is
    /// probed once.
    done: HashSet<(i32, u64, u64)>,
    symbols: libs::Symbols,
    /// Files given with `lib=`, probed in every target (or everywhere).
    extra: Vec<PathBuf>,
    /// Entry points attached, for summaries.
    pub attached: usize,
}

impl Attacher {
    fn new(probes: &'static [Probe], extra: Vec<PathBuf>) -> Attacher {
        Attacher {
            probes,
            links: Vec::new(),
            done: HashSet::new(),
            symbols: libs::Symbols::default(),
            extra,
            attached: 0,
        }
    }

    /// Attaches the probes whose symbols `path` defines, for process `pid` (-1: every process).
    /// A file is the runtime or the driver by its name; any other file (an executable, a
    /// `lib=` file) is tried for both.
    fn attach_file(
        &mut self,
        skel: &GpuSkel<'static>,
        pid: i32,
        path: &Path,
    ) -> Result<(), ProfilerError> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        use std::os::unix::fs::MetadataExt;
        if !self.done.insert((pid, meta.dev(), meta.ino())) {
            return Ok(());
        }
        let kind = libs::library_of(path);
        for probe in self.probes {
            if kind.is_some_and(|k| k != probe.library) {
                continue;
            }
            for sym in probe.symbols {
                let Some(offset) = self.symbols.offset_of(path, sym) else {
                    continue;
                };
                let link = program(skel, probe.prog)
                    .attach_uprobe_with_opts(
                        pid,
                        path,
                        offset as usize,
                        UprobeOpts {
                            cookie: u64::from(probe.api),
                            retprobe: probe.ret,
                            ..Default::default()
                        },
                    )
                    .map_err(|e| {
                        ProfilerError::Attach(format!(
                            "attaching to {sym} in {} (pid {pid}): {e}",
                            path.display()
                        ))
                    })?;
                self.links.push((pid, link));
                if !probe.ret {
                    self.attached += 1;
                }
            }
        }
        Ok(())
    }

    /// Probes every process through the host's installed libraries (and `lib=` files).
    fn attach_everywhere(&mut self, skel: &GpuSkel<'static>) -> Result<(), ProfilerError> {
        let mut files = libs::installed();
        files.extend(self.extra.clone());
        if files.is_empty() {
            return Err(ProfilerError::Attach(
                libs::host_unavailable().unwrap_or_else(|| "no CUDA library found".into()),
            ));
        }
        for f in files {
            self.attach_file(skel, -1, &f)?;
        }
        Ok(())
    }

    /// Probes process `pid`: the CUDA libraries it maps, or (about to exec `exe`) the ones that
    /// executable will load; its executable; and the `lib=` files.
    fn attach_process(
        &mut self,
        skel: &GpuSkel<'static>,
        pid: u32,
        exe: Option<&Path>,
    ) -> Result<(), ProfilerError> {
        let mut files = match exe {
            Some(exe) => {
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let ld = env
                    .split(|&b| b == 0)
                    .find_map(|v| v.strip_prefix(b"LD_LIBRARY_PATH="))
                    .map(|v| String::from_utf8_lossy(v).to_string());
                let mut f = libs::needed_by(exe, ld.as_deref());
                f.push(exe.to_path_buf());
                f
            }
            None => {
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
                let mut f = libs::mapped_by(pid, &maps);
                if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
                    f.push(PathBuf::from(format!("/proc/{pid}/root{}", exe.display())));
                }
                f
            }
        };
        files.extend(self.extra.clone());
        for f in files {
            self.attach_file(skel, pid as i32, &f)?;
        }
        Ok(())
    }

    /// Probes the CUDA libraries `pid` maps now that it did not before (`dlopen`).
    fn rescan(&mut self, skel: &GpuSkel<'static>, pid: u32, maps: &str) {
        for f in libs::mapped_by(pid, maps) {
            if let Err(e) = self.attach_file(skel, pid as i32, &f) {
                tracing::debug!(pid, error = %e, "could not probe a CUDA library");
            }
        }
    }
}

/// Starts probing for one of the two uprobe profilers: every target (or every process), with
/// `lib=` files added.
fn attach_targets(
    skel: &GpuSkel<'static>,
    probes: &'static [Probe],
    o: &crate::StartOptions,
    lib_option: &str,
) -> Result<Attacher, ProfilerError> {
    let extra: Vec<PathBuf> = lib_option
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    if let Some(missing) = extra.iter().find(|p| !p.exists()) {
        return Err(ProfilerError::Attach(format!(
            "lib={}: no such file",
            missing.display()
        )));
    }
    let mut a = Attacher::new(probes, extra);
    match &o.targets {
        None => a.attach_everywhere(skel)?,
        Some(pids) => {
            for &pid in pids {
                a.attach_process(skel, pid, o.pending_exec.as_deref())?;
            }
        }
    }
    Ok(a)
}

/// Why the uprobe profilers cannot run on this host without targets, if they cannot.
pub fn host_unavailable() -> Option<String> {
    libs::host_unavailable()
}

/// Each tick (~200 ms): probes the targets BPF followed since the last (forked children), and
/// drops the probes of ended ones. The CUDA libraries a target loads later (`dlopen`, as
/// PyTorch does) are probed from `observe_maps`, which the collector calls with each target's
/// mappings as it re-reads them every tick; launches made before that are missed, and `lib=`
/// probes a library from the start.
fn follow(a: &mut Attacher, skel: &GpuSkel<'static>) {
    let pids = crate::mechanics::maps::pids_of(&skel.maps.targets);
    for pid in pids {
        if !crate::sys::process_alive(pid) {
            continue;
        }
        if !a.done.iter().any(|(p, _, _)| *p == pid as i32) {
            if let Err(e) = a.attach_process(skel, pid, None) {
                tracing::debug!(pid, error = %e, "could not probe a followed process");
            }
        }
    }
    // Processes that ended (workers recreated every epoch): their probes go, and a new process
    // that takes the pid is probed afresh.
    let gone: HashSet<i32> = a
        .done
        .iter()
        .map(|(p, _, _)| *p)
        .filter(|&p| p >= 0 && !crate::sys::process_alive(p as u32))
        .collect();
    if !gone.is_empty() {
        a.links.retain(|(p, _)| !gone.contains(p));
        a.done.retain(|(p, _, _)| !gone.contains(p));
    }
}

/// `struct launch_desc` of gpu.bpf.c: what a launch or allocation was, and where it was called.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaunchDesc {
    pid: u32,
    api: u32,
    func: u64,
    grid: [u32; 3],
    block: [u32; 3],
    stream: u64,
    caller: u64,
}
record!(LaunchDesc, "launch_desc", 56);

/// The descriptions BPF gave ids to, read from its `descs` map.
#[derive(Default)]
pub(crate) struct Descriptions {
    by_id: HashMap<u32, LaunchDesc>,
}

impl Descriptions {
    /// Reads the map; returns the ids not seen before.
    fn learn(&mut self, skel: &GpuSkel<'static>) -> Vec<u32> {
        let descs = &skel.maps.descs;
        let mut fresh = Vec::new();
        for raw in descs.keys() {
            let Ok(d) = decode::<LaunchDesc>(&raw) else {
                continue;
            };
            let Some(id) = descs
                .lookup(&raw, MapFlags::ANY)
                .ok()
                .flatten()
                .and_then(|v| decode::<u32>(&v).ok())
            else {
                continue;
            };
            if self.by_id.insert(id, d).is_none() {
                fresh.push(id);
            }
        }
        fresh
    }

    fn get(&self, id: u32) -> Option<&LaunchDesc> {
        self.by_id.get(&id)
    }

    /// Forgets the descriptions of processes that are gone, here and in BPF's maps; returns
    /// their ids.
    fn forget_dead(&mut self, skel: &GpuSkel<'static>) -> Vec<u32> {
        let dead: Vec<u32> = self
            .by_id
            .iter()
            .filter(|(_, d)| !crate::sys::process_alive(d.pid))
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            if let Some(d) = self.by_id.remove(id) {
                let _ = skel
                    .maps
                    .descs
                    .delete(crate::mechanics::record::bytes_of(&d));
                let _ = skel.maps.desc_ids.delete(&id.to_ne_bytes());
            }
        }
        dead
    }
}

/// Puts the caller (the return address at the probed entry point) under the entry point in a
/// leaf-first stack, where the frame-pointer walk left it out.
fn add_caller(user: &mut Vec<u64>, caller: u64) {
    if caller != 0 && !user.is_empty() && user.get(1) != Some(&caller) {
        user.insert(1, caller);
    }
}
