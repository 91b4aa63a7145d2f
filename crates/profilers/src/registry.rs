//! The registry: the list of every profiler Baton can run. Each profiler module declares its
//! own [`ProfilerInfo`] (`INFO`) and how it starts; adding a profiler means one new module
//! under `profilers/` and one entry in [`REGISTRY`].

use baton_model::sync::{read, write};
use baton_model::ProfilerInfo;

use crate::profiler::{Profiler, StartOptions};
use crate::ProfilerError;

/// Starts a profiler from generic options.
pub type StartFn = fn(&StartOptions) -> Result<Box<dyn Profiler>, ProfilerError>;

/// A registered profiler: what it declares, and how to start it.
pub struct Registered {
    pub info: &'static ProfilerInfo,
    pub start: StartFn,
}

/// Every profiler, in the order `--help` lists them.
pub static REGISTRY: &[Registered] = &[
    Registered {
        info: &crate::profilers::cpu::INFO,
        start: crate::profilers::cpu::start_dyn,
    },
    Registered {
        info: &crate::profilers::offcpu::INFO,
        start: crate::profilers::offcpu::start_dyn,
    },
    Registered {
        info: &crate::profilers::malloc::INFO,
        start: |o| {
            Ok(Box::new(crate::profilers::malloc::MallocProfiler::start(
                o,
            )?))
        },
    },
    Registered {
        info: &crate::profilers::calls::INFO,
        start: |o| Ok(Box::new(crate::profilers::calls::CallsProfiler::start(o)?)),
    },
    Registered {
        info: &crate::profilers::syscalls::INFO,
        start: crate::profilers::syscalls::start_dyn,
    },
    Registered {
        info: &crate::profilers::locks::INFO,
        start: crate::profilers::locks::start_dyn,
    },
    Registered {
        info: &crate::profilers::io::INFO,
        start: crate::profilers::io::start_dyn,
    },
    Registered {
        info: &crate::profilers::latency::INFO,
        start: |o| {
            Ok(Box::new(crate::profilers::latency::LatencyProfiler::start(
                o,
            )?))
        },
    },
    Registered {
        info: &crate::profilers::gpu::cuda::INFO,
        start: crate::profilers::gpu::cuda::start_dyn,
    },
    Registered {
        info: &crate::profilers::gpu::gpumem::INFO,
        start: crate::profilers::gpu::gpumem::start_dyn,
    },
    Registered {
        info: &crate::profilers::gpu::nvml::INFO,
        start: crate::profilers::gpu::nvml::start_dyn,
    },
];

/// The ad-hoc profilers of the live config tree, by name: their declaration (leaked once per
/// distinct definition) and their definition.
struct AdhocEntry {
    registered: &'static Registered,
    def: std::sync::Arc<baton_config::adhoc::AdhocDef>,
}

fn adhoc_table() -> &'static std::sync::RwLock<Vec<AdhocEntry>> {
    static TABLE: std::sync::OnceLock<std::sync::RwLock<Vec<AdhocEntry>>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Makes the tree's ad-hoc profilers the registered ones (replacing the last tree's): call it
/// whenever a config goes live. A definition that did not change keeps its declaration.
pub fn set_adhoc<'a>(defs: impl IntoIterator<Item = &'a baton_config::adhoc::AdhocDef>) {
    let mut table = write(adhoc_table());
    let mut next = Vec::new();
    for def in defs {
        if let Some(i) = table.iter().position(|e| *e.def == *def) {
            next.push(table.swap_remove(i));
            continue;
        }
        let info = crate::adhoc::info_of(def);
        next.push(AdhocEntry {
            registered: Box::leak(Box::new(Registered {
                info,
                start: start_unbound,
            })),
            def: std::sync::Arc::new(def.clone()),
        });
    }
    *table = next;
}

/// An ad-hoc entry is started through [`start`], which knows its definition.
fn start_unbound(_: &StartOptions) -> Result<Box<dyn Profiler>, ProfilerError> {
    Err(ProfilerError::Attach(
        "an ad-hoc profiler starts through registry::start".into(),
    ))
}

/// The definition of the ad-hoc profiler `name`, if the live tree has one.
pub fn adhoc(name: &str) -> Option<std::sync::Arc<baton_config::adhoc::AdhocDef>> {
    let table = read(adhoc_table());
    table
        .iter()
        .find(|e| e.registered.info.name == name)
        .map(|e| e.def.clone())
}

/// Whether `name` is an ad-hoc profiler (its runs need the admin role).
pub fn is_adhoc(name: &str) -> bool {
    adhoc(name).is_some()
}

fn all() -> Vec<&'static Registered> {
    let table = read(adhoc_table());
    REGISTRY
        .iter()
        .chain(table.iter().map(|e| e.registered))
        .collect()
}

/// Every registered profiler's declaration, the live tree's ad-hoc ones last.
pub fn infos() -> Vec<&'static ProfilerInfo> {
    all().into_iter().map(|r| r.info).collect()
}

/// Why profiler `name` cannot run on this host at all, if it cannot: the GPU profilers on a
/// host without an NVIDIA driver or CUDA libraries. Checked once per process (a driver
/// installed later is seen after a restart). `cuda` and `gpumem` can still profile a process
/// by pid that loads CUDA libraries of its own; runs over the whole host are not scheduled.
pub fn unavailable(name: &str) -> Option<String> {
    static CUDA: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static NVML: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    match name {
        "cuda" | "gpumem" => CUDA
            .get_or_init(crate::profilers::gpu::host_unavailable)
            .clone(),
        "nvml" => NVML
            .get_or_init(|| {
                crate::profilers::gpu::nvml::unavailable(
                    &crate::profilers::gpu::nvml::default_library(),
                )
            })
            .clone(),
        _ => None,
    }
}

/// Every registered profiler's name.
pub fn names() -> Vec<&'static str> {
    all().into_iter().map(|r| r.info.name).collect()
}

/// The built-in profilers' names (what an ad-hoc one may not be called).
pub fn builtin_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.info.name).collect()
}

/// Looks a profiler up by name, with the list of valid names in the error.
pub fn find(name: &str) -> Result<&'static Registered, ProfilerError> {
    all()
        .into_iter()
        .find(|r| r.info.name == name)
        .ok_or_else(|| ProfilerError::UnknownProfiler {
            name: name.to_string(),
            available: names().join(", "),
        })
}

/// Starts the profiler `name`, after checking its options against its declaration.
pub fn start(name: &str, opts: &StartOptions) -> Result<Box<dyn Profiler>, ProfilerError> {
    let r = find(name)?;
    r.info
        .check_options(&opts.options)
        .map_err(|message| ProfilerError::BadOption {
            profiler: r.info.name,
            message,
        })?;
    if let Some(def) = adhoc(name) {
        return crate::adhoc::start(def, r.info, opts);
    }
    (r.start)(opts)
}

/// The environment a command that `baton record NAME -- CMD` starts gets from the profiler (the
/// malloc profiler preloads its sampler); empty for most.
pub fn command_env(
    name: &str,
    opts: &StartOptions,
) -> Result<Vec<(String, String)>, ProfilerError> {
    match name {
        "malloc" => crate::malloc::command_env(opts),
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_profiler_lists_the_known_ones() {
        let e = find("gpu-magic")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("gpu-magic") && e.contains("cpu"), "{e}");
        assert_eq!(find("cpu").map(|r| r.info.name).ok(), Some("cpu"));
    }

    #[test]
    fn every_entry_is_complete() {
        let mut seen = std::collections::HashSet::new();
        for r in REGISTRY {
            let i = r.info;
            assert!(seen.insert(i.name), "{} registered twice", i.name);
            assert!(!i.values.is_empty(), "{} declares no value", i.name);
            assert!(!i.claims.is_empty(), "{} claims nothing", i.name);
            assert!(!i.description.is_empty() && !i.default_rate.is_empty());
            assert!(i.default_frequency <= i.max_frequency);
        }
    }
}
