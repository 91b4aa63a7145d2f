//! The `cuda` profiler: CUDA kernel launches per CPU stack, from uprobes on the runtime's
//! `cudaLaunchKernel` and `cudaGraphLaunch` and the driver's `cuLaunchKernel`,
//! `cuLaunchKernelEx` and `cuGraphLaunch`, as Strobelight's `gpuevent_snoop` records them.
//!
//! Each launch is counted per thread and user stack with its description: the kernel (named
//! from the host stub's symbol for runtime launches, from `cuModuleGetFunction` for driver
//! handles, demangled), the grid and block dimensions, the stream and the API. A thread records
//! at most `max_rate` launches a second in full; past that one in 16 is recorded and weighs 16,
//! and the others are counted in `rate_limited`.

use std::collections::HashMap;

use libbpf_rs::{MapCore, MapFlags};

use super::{
    add_caller, attach_targets, libs, Attacher, Descriptions, GpuSkel, GpuSkelBuilder, LaunchDesc,
    LAUNCH_PROBES,
};
use crate::mechanics::maps::{percpu_sum, StatSlots};
use crate::mechanics::record::record;
use crate::profilers::events::{EventProfiler, RowValue, Spec};
use crate::{Drained, ProfilerError, ProfilerStats, StartOptions};

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "cuda",
    description: "CUDA kernel launches per CPU stack, with the kernel, grid, block and stream \
                  (uprobes on the CUDA runtime and driver launch calls)",
    claims: &[
        Claim {
            resource: "uprobe:cuda",
            shared: Some(4),
        },
        Claim {
            resource: "gpu",
            shared: Some(8),
        },
    ],
    values: &[ValueInfo {
        kind: "launches",
        unit: "count",
        help: "kernel and graph launches",
    }],
    histograms: &[],
    labels: &["kernel", "api", "grid", "block", "stream"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "every launch, up to 2,000 a second per thread; past that 1 in 16, weighted",
    cost: CostClass::High,
    costly_modes: &[],
    options: &[
        OptionInfo {
            name: "max_rate",
            default: "2000",
            help: "launches a second each thread records in full (0: all); past it 1 in 16 \
                   is recorded and weighs 16",
        },
        OptionInfo {
            name: "lib",
            default: "",
            help: "more files to probe (comma-separated paths), e.g. a program that links the \
                   CUDA runtime statically under another name",
        },
    ],
};

/// `struct handle_key` of gpu.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct HandleKey {
    pid: u32,
    pad: u32,
    handle: u64,
}
record!(HandleKey, "handle_key", 16);

/// Slots of `enum stat_index` in gpu.bpf.c: launches the rate limit left out, and launches
/// whose description found no room.
const STAT_RATE_LIMITED: u32 = 5;
const STAT_DESCS_FULL: u32 = 7;

static SPEC: Spec = Spec {
    info: &INFO,
    event: "uprobes on the CUDA launch calls",
    kind_name: |id| id.to_string(),
    values: |v: &RowValue| vec![v.count],
    hist_key: |_| String::new(),
    stats: StatSlots::headed(None, 4),
};

/// A running launch profiler.
pub struct CudaProfiler {
    inner: EventProfiler<GpuSkel<'static>>,
    attacher: Attacher,
    descs: Descriptions,
    /// Labels of each launch description id.
    labels: HashMap<u32, Vec<(&'static str, String)>>,
    symbols: libs::Symbols,
    /// Launches without a description already warned about.
    descs_full_said: u64,
}

/// Starts the profiler.
pub(crate) fn start_dyn(o: &StartOptions) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    let max_rate: u32 =
        o.option(&INFO, "max_rate")
            .parse()
            .map_err(|_| ProfilerError::BadOption {
                profiler: "cuda",
                message: format!(
                    "max_rate must be a whole number of launches a second, not {:?}",
                    o.option(&INFO, "max_rate")
                ),
            })?;
    if o.targets.is_none() && o.option(&INFO, "lib").is_empty() {
        if let Some(why) = super::host_unavailable() {
            return Err(ProfilerError::Attach(why));
        }
    }
    let (skel, fork) = crate::mechanics::skel::open_copying!(GpuSkelBuilder, "gpu", o, |open| {
        if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
            ro.max_rate = max_rate;
        }
    });
    let attacher = attach_targets(&skel, LAUNCH_PROBES, o, o.option(&INFO, "lib"))?;
    let inner = EventProfiler::new(skel, fork.into_iter().collect(), &SPEC, o, None)?;
    Ok(Box::new(CudaProfiler {
        inner,
        attacher,
        descs: Descriptions::default(),
        labels: HashMap::new(),
        symbols: libs::Symbols::default(),
        descs_full_said: 0,
    }))
}

fn dims(d: [u32; 3]) -> String {
    format!("{}x{}x{}", d[0], d[1], d[2])
}

/// Rust (legacy and v0) and C++ names as people read them.
fn demangle(name: &str) -> String {
    crate::adhoc::demangle(name)
}

impl CudaProfiler {
    /// Names the launch descriptions BPF assigned since the last call (while their processes
    /// are alive, so a runtime kernel's host stub can be found in the process's mappings).
    fn learn_descriptions(&mut self) {
        for id in self.descs.learn(self.inner.skel()) {
            let Some(d) = self.descs.get(id).copied() else {
                continue;
            };
            let kernel = self.kernel_name(&d);
            let mut labels = vec![("kernel", kernel), ("api", super::api_name(d.api))];
            if d.api != 3 && d.api != 4 {
                labels.push(("grid", dims(d.grid)));
                labels.push(("block", dims(d.block)));
            }
            labels.push(("stream", format!("{:#x}", d.stream)));
            self.labels.insert(id, labels);
        }
    }

    fn kernel_name(&mut self, d: &LaunchDesc) -> String {
        match d.api {
            // The runtime's func is the kernel's host stub: its symbol is the kernel's name.
            0 => libs::file_offset_of(d.pid, d.func)
                .and_then(|(path, off)| self.symbols.name_at(&path, off))
                .map_or_else(|| format!("{:#x}", d.func), |n| demangle(&n)),
            3 | 4 => format!("graph {:#x}", d.func),
            _ => {
                let key = HandleKey {
                    pid: d.pid,
                    pad: 0,
                    handle: d.func,
                };
                let bytes = crate::mechanics::record::bytes_of(&key);
                self.inner
                    .skel()
                    .maps
                    .handles
                    .lookup(bytes, MapFlags::ANY)
                    .ok()
                    .flatten()
                    .map(|v| {
                        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                        demangle(&String::from_utf8_lossy(&v[..end]))
                    })
                    .unwrap_or_else(|| format!("function {:#x}", d.func))
            }
        }
    }
}

impl crate::Profiler for CudaProfiler {
    fn info(&self) -> &'static ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        // After the flip: every id in the drained rows was described before its row was added.
        let mut out = self.inner.drain()?;
        self.learn_descriptions();
        let full = percpu_sum(&self.inner.skel().maps.stats, STAT_DESCS_FULL);
        if full > self.descs_full_said {
            tracing::warn!(
                launches = full,
                "cuda: launch descriptions map full (16,384 kinds of launch per run); further \
                 new kinds are labelled unknown"
            );
            self.descs_full_said = full;
        }
        for e in &mut out.events {
            let id: u32 = e
                .labels
                .first()
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if let Some(d) = self.descs.get(id) {
                add_caller(&mut e.user, d.caller);
            }
            e.labels = self.labels.get(&id).cloned().unwrap_or_else(|| {
                vec![("kernel", "(unknown: too many launch descriptions)".into())]
            });
        }
        for id in self.descs.forget_dead(self.inner.skel()) {
            self.labels.remove(&id);
        }
        Ok(out)
    }

    fn stats(&self) -> ProfilerStats {
        let mut s = self.inner.stats();
        s.rate_limited = percpu_sum(&self.inner.skel().maps.stats, STAT_RATE_LIMITED);
        s
    }

    fn target_pids(&self) -> Vec<u32> {
        self.inner.target_pids()
    }

    fn tick(&mut self) {
        self.inner.tick();
        super::follow(&mut self.attacher, self.inner.skel());
        self.learn_descriptions();
    }

    fn event_name(&self) -> String {
        format!(
            "uprobes on {} CUDA launch entry point(s)",
            self.attacher.attached
        )
    }

    fn observe_maps(&mut self, pid: u32, maps: &str) {
        self.attacher.rescan(self.inner.skel(), pid, maps);
        self.inner.observe_maps(pid, maps);
    }
}
