//! An ad-hoc profiler's definition as the registry and bpftrace see it: its declaration,
//! built from the script's header, and the script bpftrace runs, with Baton's printing probes.

use std::sync::{Mutex, OnceLock};

use baton_config::adhoc::{AdhocDef, MapKey, MapKind};
use baton_model::sync::lock;
use baton_model::{Claim, CostClass, OptionInfo, ProfilerInfo, ValueInfo};

/// What marks the end of one print of every map.
pub(super) const MARKER: &str = "baton-window-end";

/// The options every ad-hoc profiler takes.
static OPTIONS: &[OptionInfo] = &[OptionInfo {
    name: "args",
    default: "",
    help:
        "positional parameters $1, $2… of the script, space-separated (default: the header's args)",
}];

/// Interns a string for the `'static` declarations the registry hands out. Each distinct
/// string is leaked once; a tree's names and units are few.
pub(super) fn intern(s: &str) -> &'static str {
    static SEEN: OnceLock<Mutex<std::collections::HashSet<&'static str>>> = OnceLock::new();
    let mut seen = lock(SEEN.get_or_init(Default::default));
    if let Some(s) = seen.get(s) {
        return s;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    seen.insert(leaked);
    leaked
}

/// The registry declaration of an ad-hoc profiler, built from its header. Leaked: call once per
/// distinct definition (the registry keeps them by content).
pub fn info_of(def: &AdhocDef) -> &'static ProfilerInfo {
    let claims: Vec<Claim> = def
        .resources
        .iter()
        .map(|r| Claim {
            resource: intern(&r.name),
            shared: r.shared,
        })
        .collect();
    let values: Vec<ValueInfo> = def
        .value_maps()
        .map(|m| ValueInfo {
            kind: intern(&m.value),
            unit: intern(&m.unit),
            help: intern(&format!(
                "@{} ({})",
                m.name,
                if m.kind == MapKind::Series {
                    "a scalar, one point per window"
                } else {
                    "per stack"
                }
            )),
        })
        .collect();
    let histograms: Vec<&'static str> = def
        .maps
        .iter()
        .filter(|m| m.kind == MapKind::Histogram)
        .map(|m| intern(&m.name))
        .collect();
    let mut labels: Vec<&'static str> = Vec::new();
    for m in &def.maps {
        for k in &m.keys {
            if let MapKey::Label(l) = k {
                let l = intern(l);
                if !labels.contains(&l) {
                    labels.push(l);
                }
            }
        }
    }
    let values = if values.is_empty() {
        // Histograms only: the stacks side still needs a value type to exist.
        vec![ValueInfo {
            kind: "events",
            unit: "count",
            help: "unused: this script stores histograms only",
        }]
    } else {
        values
    };
    Box::leak(Box::new(ProfilerInfo {
        name: intern(&def.name),
        description: intern(&format!(
            "{} (bpftrace script {}, owner {})",
            def.description,
            def.file.display(),
            def.owner
        )),
        claims: Box::leak(claims.into_boxed_slice()),
        values: Box::leak(values.into_boxed_slice()),
        histograms: Box::leak(histograms.into_boxed_slice()),
        labels: Box::leak(labels.into_boxed_slice()),
        default_frequency: 0,
        max_frequency: 0,
        default_rate:
            "what the script does (ad-hoc bpftrace), bounded by its max_duration and max_output",
        cost: CostClass::High,
        costly_modes: &[],
        options: OPTIONS,
    }))
}

/// The script bpftrace runs: the user's, plus the printing probes.
pub fn wrapped_script(def: &AdhocDef) -> String {
    let mut print = String::new();
    for m in def.maps.iter().filter(|m| m.kind != MapKind::Scratch) {
        print.push_str(&format!(" print(@{0}); clear(@{0});", m.name));
    }
    print.push_str(&format!(" printf(\"{MARKER}\\n\");"));
    let mut scratch = String::new();
    for m in def.maps.iter().filter(|m| m.kind == MapKind::Scratch) {
        scratch.push_str(&format!(" clear(@{});", m.name));
    }
    format!(
        "{}\n// Added by Baton: print every window, and once more at the end.\ninterval:s:1 {{{print} }}\nEND {{{print}{scratch} }}\n",
        def.script
    )
}
