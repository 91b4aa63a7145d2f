//! The typed, validated configuration, and the raw serde documents it is built from.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

// ---- Raw documents, as written in a file. Field doc comments are the reference docs. ----

/// One file: any of these tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDoc {
    pub host: Option<Spanned<HostDoc>>,
    pub tuner: Option<Spanned<TunerDoc>>,
    pub ui: Option<Spanned<UiDoc>>,
    #[serde(default)]
    pub profilers: BTreeMap<Spanned<String>, Spanned<ProfilerDoc>>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, Spanned<ServiceDoc>>,
    /// `[[stack_schema]]`: rules that tag stacks and frames and drop or collapse frames, for
    /// every service's samples.
    #[serde(default)]
    pub stack_schema: Vec<Spanned<SchemaDoc>>,
}

/// `[ui]`: what the web UI links to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UiDoc {
    /// A trace UI's address for one span, with `{trace_id}` and optionally `{span_id}`:
    /// `https://jaeger.example.com/trace/{trace_id}?uiFind={span_id}`.
    pub trace_url: Option<Spanned<String>>,
}

/// One Stack Schema rule: `match` with `tag` or `frame_tag`, or `drop`, or `collapse`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaDoc {
    /// A regular expression on frame names (`^sqlite3_`), for `tag` and `frame_tag`.
    #[serde(rename = "match")]
    pub pattern: Option<Spanned<String>>,
    /// `key=value` given to a stack when any of its frames matches.
    pub tag: Option<Spanned<String>>,
    /// `key=value` given to a stack by its leaf-most frame that matches.
    pub frame_tag: Option<Spanned<String>>,
    /// A regular expression: matching frames are removed from stacks.
    pub drop: Option<Spanned<String>>,
    /// A regular expression: each run of matching frames becomes its root-most frame.
    pub collapse: Option<Spanned<String>>,
}

/// `[host]`: safety limits every host enforces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostDoc {
    /// Profilers running at once on one host.
    pub max_concurrent: Option<Spanned<i64>>,
    /// CPU the profilers may use, in percent of one host's total CPU.
    pub overhead_budget_percent: Option<Spanned<f64>>,
    /// How often the overhead guard measures, e.g. `30s` (the default).
    pub overhead_check_interval: Option<Spanned<String>>,
    /// Sample rows per minute the store accepts from one profiler on one host.
    pub write_budget_rows_per_minute: Option<Spanned<i64>>,
    /// Groups of profilers that may not run together beyond `max`.
    #[serde(default)]
    pub concurrency_groups: BTreeMap<Spanned<String>, Spanned<GroupDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupDoc {
    pub max: Spanned<i64>,
    pub profilers: Vec<Spanned<String>>,
}

/// `[tuner]`: how the dynamic sampling tuner works.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TunerDoc {
    /// How often run probabilities are re-tuned (default `24h`).
    pub interval: Option<Spanned<String>>,
    /// Fleet-wide budget of whole-host sample rows stored per hour (default 1,000,000).
    pub host_rows_per_hour: Option<Spanned<i64>>,
}

/// `[profilers.NAME]`: overrides of a registered profiler.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfilerDoc {
    /// Default sampling frequency in Hz.
    pub frequency: Option<Spanned<i64>>,
    /// Aggregation window, e.g. `10s`.
    pub window: Option<Spanned<String>>,
    /// Hard ceiling on frequency, even for forced runs.
    pub max_frequency: Option<Spanned<i64>>,
    /// Hard ceiling on a run's duration, even for forced runs.
    pub max_duration: Option<Spanned<String>>,
    /// The host resources the profiler claims while it runs, replacing its built-in claims.
    pub resources: Option<Vec<Spanned<ResourceDoc>>>,
    /// Profiler-specific options (`sample_bytes = 0`, `probe = "/bin/app:handle_*"`).
    pub options: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

/// One claimed resource: `{ name = "pmu" }` (exclusive) or `{ name = "gpu:0", shared = 4 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceDoc {
    /// `pmu`, `tracepoint:GROUP:NAME`, `kprobe:FUNC`, `uprobe:LIBRARY`, `gpu[:N]` or `cupti[:N]`.
    pub name: Spanned<String>,
    /// How many runs may hold it at once; absent means exclusive.
    pub shared: Option<Spanned<i64>>,
}

/// `[services.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceDoc {
    pub selector: Spanned<SelectorDoc>,
    #[serde(default)]
    pub labels: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub continuous: Vec<Spanned<ContinuousDoc>>,
    #[serde(default)]
    pub triggers: Vec<Spanned<TriggerDoc>>,
    /// Sample rows per minute the store accepts from this service on one host, on top of the
    /// host's per-profiler budget.
    pub write_budget_rows_per_minute: Option<Spanned<i64>>,
    /// Stack Schema rules for this service's samples only.
    #[serde(default)]
    pub stack_schema: Vec<Spanned<SchemaDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SelectorDoc {
    /// A cgroup v2 path, e.g. `/system.slice/nginx.service`.
    pub cgroup: Option<Spanned<String>>,
    /// A systemd unit, e.g. `nginx.service`.
    pub unit: Option<Spanned<String>>,
    /// A process name (comm, at most 15 bytes).
    pub comm: Option<Spanned<String>>,
    /// An absolute executable path.
    pub exe: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContinuousDoc {
    pub profiler: Spanned<String>,
    /// Samples per hour wanted across the whole fleet for this service.
    pub target_samples_per_hour: Spanned<i64>,
    /// Length of one run on one host, e.g. `30s`.
    pub duration: Spanned<String>,
    pub frequency: Option<Spanned<i64>>,
    /// Keep an FDO profile of the service's binaries fresh, over this much history (cpu only).
    pub fdo: Option<Spanned<String>>,
    /// How often that profile is rewritten (default 15m).
    pub fdo_every: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerDoc {
    /// `process_cpu`, `host_cpu`, `rss_growth`, `heap_growth`, `exec` or `prometheus`.
    pub kind: Spanned<String>,
    pub profiler: Spanned<String>,
    pub duration: Spanned<String>,
    pub cooldown: Spanned<String>,
    pub max_per_hour: Spanned<i64>,
    /// Sampling frequency of the runs it fires (default: the profiler's).
    pub frequency: Option<Spanned<i64>>,
    pub above_percent: Option<Spanned<f64>>,
    /// How long the condition must hold (`process_cpu`; optional for `rss_growth` and
    /// `heap_growth`, where it asks for sustained growth).
    #[serde(rename = "for")]
    pub for_: Option<Spanned<String>>,
    pub bytes_per_second: Option<Spanned<i64>>,
    /// Executable path pattern (`exec`), `*` matches any run of characters.
    pub pattern: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub metric: Option<Spanned<String>>,
    pub above: Option<Spanned<f64>>,
    /// Profiler options of the runs it fires (`mode = "uprobe"`, `sample_bytes = 0`), over
    /// the `[profilers.NAME]` ones.
    pub options: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

// ---- The validated configuration. ----

/// The whole validated tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Hash of the files the config came from.
    pub version: String,
    pub host: HostLimits,
    pub tuner: TunerSettings,
    pub profilers: BTreeMap<String, ProfilerOverride>,
    pub services: BTreeMap<String, Service>,
    /// Ad-hoc profilers: the tree's bpftrace scripts, by name.
    pub adhoc: BTreeMap<String, crate::adhoc::AdhocDef>,
    /// The trace UI's address template (`[ui] trace_url`), if any.
    pub trace_url: Option<String>,
    /// Stack Schema rules, global and per service, in file order.
    #[serde(serialize_with = "crate::stack_schema::serialize")]
    pub stack_schema: baton_model::StackSchema,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostLimits {
    pub max_concurrent: u32,
    pub overhead_budget_percent: f64,
    #[serde(with = "secs")]
    pub overhead_check_interval: Duration,
    pub write_budget_rows_per_minute: u64,
    pub concurrency_groups: BTreeMap<String, ConcurrencyGroup>,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            max_concurrent: 4,
            overhead_budget_percent: 1.0,
            overhead_check_interval: Duration::from_secs(30),
            write_budget_rows_per_minute: 60_000,
            concurrency_groups: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConcurrencyGroup {
    pub max: u32,
    pub profilers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TunerSettings {
    #[serde(with = "secs")]
    pub interval: Duration,
    /// The fleet-wide target of sample rows the whole-host chain stores per hour, when no CPU
    /// rule applies; the fleet tuner draws each host's windows against it.
    pub host_rows_per_hour: u64,
}

/// The default fleet budget of whole-host rows per hour: about 25 services at Strobelight's
/// example target of 40,000 samples an hour. One host at 99 Hz with 4 busy CPUs writes up to
/// 1.4 million rows an hour, so a small fleet is profiled whole and a large one is sampled,
/// and the fleet's volume stays flat as hosts are added.
pub const DEFAULT_HOST_ROWS_PER_HOUR: u64 = 1_000_000;

impl Default for TunerSettings {
    fn default() -> Self {
        TunerSettings {
            interval: Duration::from_secs(86_400),
            host_rows_per_hour: DEFAULT_HOST_ROWS_PER_HOUR,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ProfilerOverride {
    pub frequency: Option<u64>,
    #[serde(with = "opt_secs")]
    pub window: Option<Duration>,
    pub max_frequency: Option<u64>,
    #[serde(with = "opt_secs")]
    pub max_duration: Option<Duration>,
    /// Replaces the profiler's built-in resource claims when set.
    pub resources: Option<Vec<ResourceSpec>>,
    /// Profiler-specific options, as text; the profiler checks them when a run starts.
    pub options: BTreeMap<String, String>,
}

/// A resource claim from the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceSpec {
    pub name: String,
    /// `None`: exclusive; `Some(n)`: shared by up to `n` runs.
    pub shared: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub selector: Selector,
    pub labels: BTreeMap<String, String>,
    pub continuous: Vec<ContinuousRule>,
    pub triggers: Vec<TriggerRule>,
    /// Rows per minute this service may write on one host; `None`: only the host's budget.
    pub write_budget_rows_per_minute: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Selector {
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub comm: Option<String>,
    pub exe: Option<String>,
}

impl Selector {
    /// Whether a process with this cgroup path, name and executable belongs to the selector.
    /// Any given field may match: `cgroup` matches its whole subtree, `unit` any cgroup with a
    /// path component of that name (wherever the unit's slice is), `comm` and `exe` exactly.
    pub fn matches(&self, cgroup: Option<&str>, comm: Option<&str>, exe: Option<&str>) -> bool {
        if let (Some(want), Some(have)) = (&self.cgroup, cgroup) {
            let want = want.trim_end_matches('/');
            if want.is_empty()
                || have == want
                || have.strip_prefix(want).is_some_and(|r| r.starts_with('/'))
            {
                return true;
            }
        }
        if let (Some(unit), Some(have)) = (&self.unit, cgroup) {
            if have.split('/').any(|c| c == unit) {
                return true;
            }
        }
        if self.comm.is_some() && self.comm.as_deref() == comm {
            return true;
        }
        self.exe.is_some() && self.exe.as_deref() == exe
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContinuousRule {
    pub profiler: String,
    pub target_samples_per_hour: u64,
    #[serde(with = "secs")]
    pub duration: Duration,
    pub frequency: Option<u64>,
    /// Keep an FDO profile of the service's binaries, over this much history, fresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fdo: Option<FdoRefresh>,
}

/// A continuous rule's ask for fresh FDO profiles: samples of the last `window`, rewritten
/// every `every`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FdoRefresh {
    #[serde(with = "secs")]
    pub window: Duration,
    #[serde(with = "secs")]
    pub every: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerRule {
    pub condition: TriggerCondition,
    pub profiler: String,
    #[serde(with = "secs")]
    pub duration: Duration,
    #[serde(with = "secs")]
    pub cooldown: Duration,
    pub max_per_hour: u32,
    /// Sampling frequency of the runs it fires; `None`: the profiler's default.
    pub frequency: Option<u64>,
    /// Profiler options of the runs it fires, as text (checked like `[profilers.NAME]`'s).
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TriggerCondition {
    ProcessCpu {
        above_percent: f64,
        #[serde(with = "secs")]
        for_: Duration,
    },
    HostCpu {
        above_percent: f64,
    },
    /// A process's resident memory grows faster than `bytes_per_second`, measured over 5 s;
    /// with `for_`, it has done so the whole time.
    RssGrowth {
        bytes_per_second: u64,
        #[serde(with = "opt_secs")]
        for_: Option<Duration>,
    },
    /// A process's live heap (`live_bytes`, from whatever malloc profiling runs on it) grew
    /// faster than `bytes_per_second` between its last two windows; with `for_`, every
    /// window has grown so for that long.
    HeapGrowth {
        bytes_per_second: u64,
        #[serde(with = "opt_secs")]
        for_: Option<Duration>,
    },
    Exec {
        pattern: String,
    },
    Prometheus {
        url: String,
        metric: String,
        above: f64,
    },
}

pub(crate) mod secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod opt_secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
