//! The `gpumem` profiler: device memory allocated and live per CPU stack, from uprobes on
//! `cudaMalloc` and `cuMemAlloc` (entry and return) and `cudaFree` and `cuMemFree`, in the
//! `malloc` profiler's value names: `alloc_bytes` and `alloc_count` for the window's
//! allocations, `live_bytes` and `live_count` for what is still allocated at its end (made at
//! any time since the profiler started). Every call is recorded (allocations of device memory
//! are slow by nature); stacks are walked by frame pointers.

use std::collections::HashMap;

use libbpf_rs::{MapCore, MapFlags};

use super::{
    add_caller, attach_targets, Attacher, Descriptions, GpuSkel, GpuSkelBuilder, MEMORY_PROBES,
};
use crate::mechanics::maps::{stack_of, StatSlots};
use crate::mechanics::record::{comm, decode, record};
use crate::profilers::events::{EventProfiler, RowValue, Spec};
use crate::{Drained, Event, ProfilerError, ProfilerStats, StartOptions};

use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "gpumem",
    description: "CUDA device memory allocated and still live per CPU stack (uprobes on \
                  cudaMalloc/cudaFree and cuMemAlloc/cuMemFree)",
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
    values: &[
        ValueInfo {
            kind: "alloc_bytes",
            unit: "bytes",
            help: "device bytes allocated in the window",
        },
        ValueInfo {
            kind: "alloc_count",
            unit: "count",
            help: "device allocations in the window",
        },
        ValueInfo {
            kind: "live_bytes",
            unit: "bytes",
            help: "device bytes allocated and not freed at the window's end",
        },
        ValueInfo {
            kind: "live_count",
            unit: "count",
            help: "device allocations not freed at the window's end",
        },
    ],
    histograms: &[],
    labels: &["api"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "every device allocation and free",
    cost: CostClass::Medium,
    costly_modes: &[],
    options: &[OptionInfo {
        name: "lib",
        default: "",
        help: "more files to probe (comma-separated paths), e.g. a program that links the CUDA \
               runtime statically under another name",
    }],
};

/// `struct live_key` of gpu.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct LiveKey {
    pid: u32,
    pad: u32,
    ptr: u64,
}
record!(LiveKey, "live_key", 16);

/// `struct live_value` of gpu.bpf.c: a device allocation still live.
#[repr(C)]
#[derive(Clone, Copy)]
struct LiveValue {
    size: u64,
    tid: u32,
    user_stack: i32,
    desc: u32,
    pad: u32,
    cgroup_id: u64,
    comm: [u8; 16],
}
record!(LiveValue, "live_value", 48);

static SPEC: Spec = Spec {
    info: &INFO,
    event: "uprobes on the CUDA allocation calls",
    kind_name: |id| id.to_string(),
    values: |v: &RowValue| vec![v.bytes, v.count, 0, 0],
    hist_key: |_| String::new(),
    stats: StatSlots::headed(None, 4),
};

/// Live allocations are summed per (pid, tid, user stack, description id)…
type LiveRow = (u32, u32, Vec<u64>, u32);
/// …into (bytes, allocations, cgroup id, comm).
type LiveSum = (u64, u64, u64, [u8; 16]);

/// A running device-memory profiler.
pub struct GpuMemProfiler {
    inner: EventProfiler<GpuSkel<'static>>,
    attacher: Attacher,
    descs: Descriptions,
    /// The stack of each live allocation, read the first time it is seen (BPF's stack map may
    /// be emptied while the allocation lives on).
    stacks: HashMap<(u32, u64), Vec<u64>>,
}

/// Starts the profiler. Stacks are frame-pointer walks: the live table refers to them by id.
pub(crate) fn start_dyn(o: &StartOptions) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    if o.targets.is_none() && o.option(&INFO, "lib").is_empty() {
        if let Some(why) = super::host_unavailable() {
            return Err(ProfilerError::Attach(why));
        }
    }
    let o = StartOptions {
        dwarf: false,
        ..o.clone()
    };
    let (skel, fork) = crate::mechanics::skel::open_copying!(GpuSkelBuilder, "gpu", &o);
    let attacher = attach_targets(&skel, MEMORY_PROBES, &o, o.option(&INFO, "lib"))?;
    let inner = EventProfiler::new(skel, fork.into_iter().collect(), &SPEC, &o, None)?;
    Ok(Box::new(GpuMemProfiler {
        inner,
        attacher,
        descs: Descriptions::default(),
        stacks: HashMap::new(),
    }))
}

impl GpuMemProfiler {
    /// The live allocations, summed per (pid, tid, stack, description), as events with only the
    /// live values. A process that is gone reports what it still held when it ended (as
    /// `memleak` does), once; its allocations are then dropped.
    fn live_events(&mut self) -> Vec<Event> {
        let map = &self.inner.skel().maps.live;
        let stack_map = &self.inner.skel().maps.stacks;
        let mut sums: HashMap<LiveRow, LiveSum> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for raw in map.keys().collect::<Vec<_>>() {
            let Ok(k) = decode::<LiveKey>(&raw) else {
                continue;
            };
            let Some(Ok(v)) = map
                .lookup(&raw, MapFlags::ANY)
                .ok()
                .flatten()
                .map(|v| decode::<LiveValue>(&v))
            else {
                continue;
            };
            if !crate::sys::process_alive(k.pid) {
                let _ = map.delete(&raw);
            }
            seen.insert((k.pid, k.ptr));
            let stack = self
                .stacks
                .entry((k.pid, k.ptr))
                .or_insert_with(|| {
                    if v.user_stack < 0 {
                        Vec::new()
                    } else {
                        stack_of(stack_map, v.user_stack).unwrap_or_default()
                    }
                })
                .clone();
            let e =
                sums.entry((k.pid, v.tid, stack, v.desc))
                    .or_insert((0, 0, v.cgroup_id, v.comm));
            e.0 += v.size;
            e.1 += 1;
        }
        self.stacks.retain(|k, _| seen.contains(k));
        sums.into_iter()
            .map(
                |((pid, tid, user, desc), (bytes, count, cgroup_id, c))| Event {
                    pid,
                    tid,
                    cgroup_id,
                    comm: comm(&c),
                    kernel: Vec::new(),
                    user,
                    count: 0,
                    values: vec![0, 0, bytes, count],
                    weight: 1.0,
                    labels: vec![("api", desc.to_string())],
                    frames: Vec::new(),
                    keep_zero: 0,
                    context: None,
                },
            )
            .collect()
    }
}

impl crate::Profiler for GpuMemProfiler {
    fn info(&self) -> &'static ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        // Live stacks first: the drain may empty the stack map.
        let live = self.live_events();
        let mut out = self.inner.drain()?;
        out.events.extend(live);
        self.descs.learn(self.inner.skel());
        for e in &mut out.events {
            let id: u32 = e
                .labels
                .first()
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let d = self.descs.get(id);
            if let Some(d) = d {
                add_caller(&mut e.user, d.caller);
            }
            e.labels = vec![(
                "api",
                d.map_or_else(|| "unknown".into(), |d| super::api_name(d.api)),
            )];
        }
        // Descriptions of processes gone for good (their live allocations were dropped above).
        self.descs.forget_dead(self.inner.skel());
        Ok(out)
    }

    fn stats(&self) -> ProfilerStats {
        self.inner.stats()
    }

    fn target_pids(&self) -> Vec<u32> {
        self.inner.target_pids()
    }

    fn pending_pids(&self) -> std::collections::HashSet<u32> {
        self.stacks.keys().map(|(pid, _)| *pid).collect()
    }

    fn tick(&mut self) {
        self.inner.tick();
        super::follow(&mut self.attacher, self.inner.skel());
    }

    fn event_name(&self) -> String {
        format!(
            "uprobes on {} CUDA allocation entry point(s)",
            self.attacher.attached
        )
    }

    fn observe_maps(&mut self, pid: u32, maps: &str) {
        self.attacher.rescan(self.inner.skel(), pid, maps);
        // The inner profiler finds the process's thread context.
        self.inner.observe_maps(pid, maps);
    }
}
