//! The `nvml` profiler: GPU utilisation, memory, power, temperature and SM clock per device,
//! and SM and memory utilisation and memory used per process, read through NVML once a second.
//!
//! NVML (`libnvidia-ml.so.1`, part of the driver) is loaded at run time with `dlopen`, from
//! `lib=PATH` or the loader's search path, so Baton needs no NVIDIA library to build or start.
//! A thread reads every device each `interval`; a window reports, per device (pid 0) and per
//! process on a GPU, the mean of its readings. The values are levels (`gpu_*`): a series over
//! several windows averages them, as it does `live_bytes`. Each row's one frame names the
//! device (`gpu0: NVIDIA H100 80GB HBM3`), so a flame graph splits processes by GPU.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_model::sync::lock;
use baton_model::{Claim, CostClass, Frame, FrameKind, OptionInfo, ProfilerInfo, ValueInfo};

use crate::{Drained, Event, ProfilerError, ProfilerStats, StartOptions};

/// The library NVML is when neither `lib=` nor `BATON_NVML_LIBRARY` says.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// The NVML library runs load when `lib=` does not say: `BATON_NVML_LIBRARY` in Baton's
/// environment (a driver installed outside the loader's path), else [`DEFAULT_LIBRARY`].
pub fn default_library() -> String {
    std::env::var("BATON_NVML_LIBRARY")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_LIBRARY.into())
}

/// What the profiler declares: the registry lists it.
pub static INFO: ProfilerInfo = ProfilerInfo {
    name: "nvml",
    description: "GPU utilisation, memory, power, temperature and SM clock per device, and \
                  utilisation and memory per process, read through NVML once a second",
    claims: &[Claim {
        resource: "gpu",
        shared: Some(8),
    }],
    values: &[
        ValueInfo {
            kind: "gpu_util",
            unit: "percent",
            help: "time the device was busy (device rows)",
        },
        ValueInfo {
            kind: "gpu_mem_util",
            unit: "percent",
            help: "time device memory was read or written (device rows)",
        },
        ValueInfo {
            kind: "gpu_mem_used",
            unit: "bytes",
            help: "device memory in use (device rows)",
        },
        ValueInfo {
            kind: "gpu_mem_total",
            unit: "bytes",
            help: "device memory in all (device rows)",
        },
        ValueInfo {
            kind: "gpu_power",
            unit: "milliwatts",
            help: "power drawn (device rows)",
        },
        ValueInfo {
            kind: "gpu_temperature",
            unit: "celsius",
            help: "GPU temperature (device rows)",
        },
        ValueInfo {
            kind: "gpu_sm_clock",
            unit: "megahertz",
            help: "SM clock (device rows)",
        },
        ValueInfo {
            kind: "gpu_proc_util",
            unit: "percent",
            help: "SM utilisation of the process (process rows)",
        },
        ValueInfo {
            kind: "gpu_proc_mem_util",
            unit: "percent",
            help: "memory bandwidth utilisation of the process (process rows)",
        },
        ValueInfo {
            kind: "gpu_proc_mem_used",
            unit: "bytes",
            help: "device memory the process holds (process rows)",
        },
    ],
    histograms: &[],
    labels: &["gpu", "gpu_name"],
    default_frequency: 0,
    max_frequency: 0,
    default_rate: "one reading of every device a second",
    cost: CostClass::Low,
    costly_modes: &[],
    options: &[
        OptionInfo {
            name: "lib",
            default: "",
            help: "the NVML library to load, a path or a name the loader finds (default \
                   $BATON_NVML_LIBRARY, else libnvidia-ml.so.1)",
        },
        OptionInfo {
            name: "interval",
            default: "1s",
            help: "time between readings",
        },
    ],
};

/// Values per reading, in the order of `INFO.values`.
const VALUES: usize = 10;

type Ret = c_int;
type Device = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: c_ulonglong,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ProcessUtilization {
    pid: c_uint,
    time_stamp: c_ulonglong,
    sm_util: c_uint,
    mem_util: c_uint,
    enc_util: c_uint,
    dec_util: c_uint,
}

const NVML_SUCCESS: Ret = 0;
const NVML_ERROR_INSUFFICIENT_SIZE: Ret = 7;
const NVML_TEMPERATURE_GPU: c_int = 0;
const NVML_CLOCK_SM: c_int = 1;
/// NVML's value for "not available" in a process's memory.
const NVML_VALUE_NOT_AVAILABLE: u64 = u64::MAX;

/// The NVML functions Baton calls, looked up in the loaded library.
struct Nvml {
    handle: *mut c_void,
    shutdown: unsafe extern "C" fn() -> Ret,
    count: unsafe extern "C" fn(*mut c_uint) -> Ret,
    by_index: unsafe extern "C" fn(c_uint, *mut Device) -> Ret,
    name: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret,
    utilization: unsafe extern "C" fn(Device, *mut Utilization) -> Ret,
    memory: unsafe extern "C" fn(Device, *mut Memory) -> Ret,
    power: unsafe extern "C" fn(Device, *mut c_uint) -> Ret,
    temperature: unsafe extern "C" fn(Device, c_int, *mut c_uint) -> Ret,
    clock: unsafe extern "C" fn(Device, c_int, *mut c_uint) -> Ret,
    processes: Option<unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> Ret>,
    process_utilization:
        Option<unsafe extern "C" fn(Device, *mut ProcessUtilization, *mut c_uint, u64) -> Ret>,
}

// SAFETY: NVML is thread-safe (its documentation says so of every call); the handle is only
// closed when the last reference goes.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

/// A symbol's address as a function pointer of type `F`.
///
/// # Safety
/// `F` must be an `extern "C"` function pointer type matching the symbol's C signature.
unsafe fn as_fn<F: Copy>(p: *mut c_void) -> F {
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: the caller's promise; a function pointer has a data pointer's size here.
    unsafe { std::mem::transmute_copy(&p) }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

impl Nvml {
    /// Loads `lib` and initialises NVML.
    fn load(lib: &str) -> Result<Nvml, String> {
        let c = CString::new(lib).map_err(|_| format!("{lib:?} is not a path"))?;
        // SAFETY: dlopen with a valid C string; the handle is checked.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!(
                "no NVIDIA driver: {lib} cannot be loaded ({})",
                dlerror()
            ));
        }
        let sym = |name: &str| -> Option<*mut c_void> {
            let n = CString::new(name).ok()?;
            // SAFETY: the handle is a live dlopen handle and the name a C string.
            let p = unsafe { libc::dlsym(handle, n.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let need = |name: &str| {
            sym(name).ok_or_else(|| {
                // SAFETY: the handle came from dlopen and nothing of it is kept.
                unsafe { libc::dlclose(handle) };
                format!("{lib} lacks {name}: not an NVML library")
            })
        };
        // SAFETY (every `as_fn`): each symbol is the NVML function of that name, whose C
        // signature is the one of the field it goes to.
        let init: unsafe extern "C" fn() -> Ret = unsafe { as_fn(need("nvmlInit_v2")?) };
        let n = unsafe {
            Nvml {
                handle,
                shutdown: as_fn(need("nvmlShutdown")?),
                count: as_fn(need("nvmlDeviceGetCount_v2")?),
                by_index: as_fn(need("nvmlDeviceGetHandleByIndex_v2")?),
                name: as_fn(need("nvmlDeviceGetName")?),
                utilization: as_fn(need("nvmlDeviceGetUtilizationRates")?),
                memory: as_fn(need("nvmlDeviceGetMemoryInfo")?),
                power: as_fn(need("nvmlDeviceGetPowerUsage")?),
                temperature: as_fn(need("nvmlDeviceGetTemperature")?),
                clock: as_fn(need("nvmlDeviceGetClockInfo")?),
                processes: sym("nvmlDeviceGetComputeRunningProcesses_v3").map(|p| as_fn(p)),
                process_utilization: sym("nvmlDeviceGetProcessUtilization").map(|p| as_fn(p)),
            }
        };
        // SAFETY: nvmlInit_v2 takes nothing.
        let r = unsafe { init() };
        if r != NVML_SUCCESS {
            // Dropping `n` would call nvmlShutdown without an init: close the library alone.
            let n = std::mem::ManuallyDrop::new(n);
            // SAFETY: the handle came from dlopen; `n` is never used again.
            unsafe { libc::dlclose(n.handle) };
            return Err(format!(
                "nvmlInit failed (NVML error {r}): is the NVIDIA driver loaded?"
            ));
        }
        Ok(n)
    }

    /// The devices: (index, handle, name).
    fn devices(&self) -> Vec<(u32, Device, String)> {
        let mut count: c_uint = 0;
        // SAFETY: a valid out pointer.
        if unsafe { (self.count)(&mut count) } != NVML_SUCCESS {
            return Vec::new();
        }
        (0..count)
            .filter_map(|i| {
                let mut d: Device = std::ptr::null_mut();
                // SAFETY: a valid out pointer.
                if unsafe { (self.by_index)(i, &mut d) } != NVML_SUCCESS {
                    return None;
                }
                let mut buf = [0u8; 96];
                // SAFETY: the buffer's length is passed.
                let r = unsafe { (self.name)(d, buf.as_mut_ptr().cast(), buf.len() as c_uint) };
                // Checked for its NUL rather than trusted to have one.
                let name = match CStr::from_bytes_until_nul(&buf) {
                    Ok(n) if r == NVML_SUCCESS => n.to_string_lossy().into_owned(),
                    _ => "unknown GPU".into(),
                };
                Some((i, d, name))
            })
            .collect()
    }

    /// One device's values (device slots of a reading; 0 where NVML has none).
    fn read_device(&self, d: Device) -> [f64; VALUES] {
        let mut v = [0.0; VALUES];
        let mut u = Utilization::default();
        let mut m = Memory::default();
        let (mut power, mut temp, mut clock): (c_uint, c_uint, c_uint) = (0, 0, 0);
        // SAFETY (all calls): valid device handle and out pointers.
        unsafe {
            if (self.utilization)(d, &mut u) == NVML_SUCCESS {
                v[0] = f64::from(u.gpu);
                v[1] = f64::from(u.memory);
            }
            if (self.memory)(d, &mut m) == NVML_SUCCESS {
                v[2] = m.used as f64;
                v[3] = m.total as f64;
            }
            if (self.power)(d, &mut power) == NVML_SUCCESS {
                v[4] = f64::from(power);
            }
            if (self.temperature)(d, NVML_TEMPERATURE_GPU, &mut temp) == NVML_SUCCESS {
                v[5] = f64::from(temp);
            }
            if (self.clock)(d, NVML_CLOCK_SM, &mut clock) == NVML_SUCCESS {
                v[6] = f64::from(clock);
            }
        }
        v
    }

    /// The processes on a device, with the process slots of a reading each; `last_seen` is
    /// NVML's timestamp of the newest utilisation sample read before (updated).
    fn read_processes(&self, d: Device, last_seen: &mut u64) -> HashMap<u32, [f64; VALUES]> {
        let mut out: HashMap<u32, [f64; VALUES]> = HashMap::new();
        if let Some(f) = self.processes {
            let mut n: c_uint = 64;
            let mut buf = vec![ProcessInfo::default(); 64];
            // SAFETY: the buffer holds `n` entries.
            let mut r = unsafe { f(d, &mut n, buf.as_mut_ptr()) };
            if r == NVML_ERROR_INSUFFICIENT_SIZE {
                buf = vec![ProcessInfo::default(); n as usize + 16];
                n = buf.len() as c_uint;
                // SAFETY: as above, with the larger buffer.
                r = unsafe { f(d, &mut n, buf.as_mut_ptr()) };
            }
            if r == NVML_SUCCESS {
                for p in buf.iter().take(n as usize) {
                    let v = out.entry(p.pid).or_insert([0.0; VALUES]);
                    if p.used_gpu_memory != NVML_VALUE_NOT_AVAILABLE {
                        v[9] = p.used_gpu_memory as f64;
                    }
                }
            }
        }
        if let Some(f) = self.process_utilization {
            let mut n: c_uint = 0;
            // SAFETY: a NULL buffer asks for the count.
            let r = unsafe { f(d, std::ptr::null_mut(), &mut n, *last_seen) };
            if r == NVML_ERROR_INSUFFICIENT_SIZE && n > 0 {
                let mut buf = vec![ProcessUtilization::default(); n as usize];
                // SAFETY: the buffer holds `n` entries.
                if unsafe { f(d, buf.as_mut_ptr(), &mut n, *last_seen) } == NVML_SUCCESS {
                    let mut per: HashMap<u32, (f64, f64, f64)> = HashMap::new();
                    for s in buf.iter().take(n as usize) {
                        let e = per.entry(s.pid).or_default();
                        e.0 += f64::from(s.sm_util);
                        e.1 += f64::from(s.mem_util);
                        e.2 += 1.0;
                        *last_seen = (*last_seen).max(s.time_stamp);
                    }
                    for (pid, (sm, mem, k)) in per {
                        let v = out.entry(pid).or_insert([0.0; VALUES]);
                        v[7] = sm / k;
                        v[8] = mem / k;
                    }
                }
            }
        }
        out
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialised in `load`; the handle came from dlopen.
        unsafe {
            (self.shutdown)();
            libc::dlclose(self.handle);
        }
    }
}

/// Why NVML cannot be used on this host, if it cannot.
pub fn unavailable(lib: &str) -> Option<String> {
    Nvml::load(lib).err()
}

/// Readings of one window: per (pid, device), the sums and how many readings.
#[derive(Default)]
struct Window {
    sums: HashMap<(u32, u32), ([f64; VALUES], u64)>,
    names: HashMap<u32, String>,
}

/// A running NVML profiler: its reading thread, and what it read since the last drain.
pub struct NvmlProfiler {
    window: Arc<Mutex<Window>>,
    stop: Arc<AtomicBool>,
    readings: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    targets: Option<Vec<u32>>,
}

/// Starts the profiler.
pub(crate) fn start_dyn(o: &StartOptions) -> Result<Box<dyn crate::Profiler>, ProfilerError> {
    let bad = |message: String| ProfilerError::BadOption {
        profiler: "nvml",
        message,
    };
    let interval = baton_model::parse_duration(o.option(&INFO, "interval"))
        .map_err(|e| bad(format!("interval: {e}")))?;
    if interval < Duration::from_millis(100) {
        return Err(bad("interval must be at least 100ms".into()));
    }
    let lib = match o.option(&INFO, "lib") {
        "" => default_library(),
        l => l.to_string(),
    };
    let nvml = Nvml::load(&lib).map_err(ProfilerError::Attach)?;
    let window = Arc::new(Mutex::new(Window::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let readings = Arc::new(AtomicU64::new(0));
    let targets: Option<HashSet<u32>> = o.targets.as_ref().map(|t| t.iter().copied().collect());
    let thread = {
        let (window, stop, readings) = (window.clone(), stop.clone(), readings.clone());
        std::thread::Builder::new()
            .name("baton-nvml".into())
            .spawn(move || read_loop(&nvml, interval, &window, &stop, &readings, targets.as_ref()))
            .map_err(|e| ProfilerError::Attach(format!("starting the NVML thread: {e}")))?
    };
    Ok(Box::new(NvmlProfiler {
        window,
        stop,
        readings,
        thread: Some(thread),
        targets: o.targets.clone(),
    }))
}

/// Reads every device each `interval` until `stop`: device rows always, process rows for the
/// targets (every process on a GPU without targets).
fn read_loop(
    nvml: &Nvml,
    interval: Duration,
    window: &Mutex<Window>,
    stop: &AtomicBool,
    readings: &AtomicU64,
    targets: Option<&HashSet<u32>>,
) {
    let devices = nvml.devices();
    let mut last_seen: HashMap<u32, u64> = HashMap::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (i, d, name) in &devices {
            let dev = nvml.read_device(*d);
            let procs = nvml.read_processes(*d, last_seen.entry(*i).or_default());
            let mut w = lock(window);
            w.names.insert(*i, name.clone());
            add(&mut w, 0, *i, &dev);
            for (pid, v) in procs {
                if targets.is_none_or(|t| t.contains(&pid)) {
                    add(&mut w, pid, *i, &v);
                }
            }
        }
        readings.fetch_add(1, Ordering::Relaxed);
        next += interval;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
        }
    }
}

fn add(w: &mut Window, pid: u32, gpu: u32, v: &[f64; VALUES]) {
    let e = w.sums.entry((pid, gpu)).or_insert(([0.0; VALUES], 0));
    for (s, x) in e.0.iter_mut().zip(v) {
        *s += x;
    }
    e.1 += 1;
}

impl crate::Profiler for NvmlProfiler {
    fn info(&self) -> &'static ProfilerInfo {
        &INFO
    }

    fn drain(&mut self) -> Result<Drained, ProfilerError> {
        let w = std::mem::take(&mut *lock(&self.window));
        let mut out = Drained::default();
        for ((pid, gpu), (sums, n)) in w.sums {
            let name = w.names.get(&gpu).cloned().unwrap_or_default();
            let values: Vec<u64> = sums
                .iter()
                .map(|s| (s / n.max(1) as f64).round() as u64)
                .collect();
            let comm = if pid == 0 {
                format!("gpu{gpu}")
            } else {
                crate::sys::comm_of(pid)
            };
            out.events.push(Event {
                pid,
                tid: pid,
                cgroup_id: 0,
                comm,
                kernel: Vec::new(),
                user: Vec::new(),
                count: n,
                values,
                weight: 1.0,
                labels: vec![("gpu", gpu.to_string()), ("gpu_name", name.clone())],
                // A device row's readings are the first seven values, a process row's the
                // last three; their zeros (an idle GPU) are readings, stored as such.
                keep_zero: if pid == 0 {
                    0b00_0111_1111
                } else {
                    0b11_1000_0000
                },
                context: None,
                frames: vec![Frame {
                    kind: FrameKind::User,
                    function: Some(format!("gpu{gpu}: {name}")),
                    module: "[gpu]".into(),
                    build_id: None,
                    address: u64::from(gpu),
                    file: None,
                    line: None,
                }],
            });
        }
        Ok(out)
    }

    fn stats(&self) -> ProfilerStats {
        ProfilerStats {
            samples: self.readings.load(Ordering::Relaxed),
            ..ProfilerStats::default()
        }
    }

    fn target_pids(&self) -> Vec<u32> {
        self.targets.clone().unwrap_or_default()
    }

    fn event_name(&self) -> String {
        "NVML readings".into()
    }
}

impl Drop for NvmlProfiler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn its_values_are_the_gauges_the_store_averages() {
        let kinds: Vec<&str> = super::INFO.values.iter().map(|v| v.kind).collect();
        assert_eq!(kinds, baton_model::registry::GPU_GAUGES);
        assert_eq!(kinds.len(), super::VALUES);
    }
}
