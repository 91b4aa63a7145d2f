//! What the driver observes for the config's triggers: process and host CPU and RSS growth from
//! /proc (once a second), live-heap growth from the windows the driver stores, new executables
//! from BPF exec events, and Prometheus metrics scraped from URLs (on their own thread, so a
//! slow endpoint never stalls the driver).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use baton_agent::observe::{ExecWatch, HeapWatch, HostCpu, ProcessCpu, RssWatch};
use baton_agent::targets::selector_pids;
use baton_agent::AgentMetrics;
use baton_config::{Config, TriggerCondition};
use baton_model::sync;
use baton_profilers::exec::ExecEvents;
use baton_scheduler::{JobRequest, Observation, TriggerEngine};
use baton_server::LiveConfig;

/// How often Prometheus endpoints named by triggers are scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(5);

/// Trigger state and the observers that feed it. Not `Send` (the BPF exec watcher is tied to
/// its thread): build it on the thread that polls it.
#[derive(Default)]
pub struct TriggerWatch {
    pub engine: TriggerEngine,
    cpu: HashMap<String, ProcessCpu>,
    rss: HashMap<String, RssWatch>,
    /// Live-heap growth, fed every window the driver stores.
    pub heap: HeapWatch,
    /// Exec events from BPF, started when a config first has an exec rule.
    exec_bpf: Option<ExecEvents>,
    /// The BPF exec watcher could not start: poll /proc instead.
    exec_polling: bool,
    exec: ExecWatch,
    host: HostCpu,
    last: Option<Instant>,
    /// Metric observations from the scraper thread, not yet fed to the engine.
    pub scraped: Arc<Mutex<Vec<Observation>>>,
}

impl TriggerWatch {
    /// A watch whose Prometheus observations arrive through `scraped`.
    pub fn new(scraped: Arc<Mutex<Vec<Observation>>>) -> TriggerWatch {
        TriggerWatch {
            scraped,
            ..Default::default()
        }
    }

    /// Processes that exec'd since the last call: from BPF (every exec, however short-lived
    /// the process), or, where the BPF watcher cannot start, by polling /proc once a second.
    fn execs(&mut self) -> Vec<(u32, String)> {
        if self.exec_bpf.is_none() && !self.exec_polling {
            match ExecEvents::start() {
                Ok(e) => self.exec_bpf = Some(e),
                Err(e) => {
                    eprintln!("baton up: exec watcher: BPF unavailable ({e}); polling /proc once a second instead");
                    self.exec_polling = true;
                    // The first scan only primes.
                    self.exec.scan();
                }
            }
        }
        match &mut self.exec_bpf {
            Some(bpf) => bpf
                .take()
                .into_iter()
                .map(|(pid, file)| {
                    // The resolved path where the process still lives; else what execve got.
                    (pid, baton_agent::targets::exe_of(pid).unwrap_or(file))
                })
                .collect(),
            None => self.exec.scan(),
        }
    }

    /// Once a second: observes what the config's triggers ask about and returns the runs they
    /// fire. `host` is the scheduler's name for this host.
    pub fn poll(&mut self, config: &Config, host: &str, now: u64) -> Vec<JobRequest> {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Vec::new();
        }
        self.last = Some(Instant::now());
        let wants = |pred: fn(&TriggerCondition) -> bool| {
            config
                .services
                .values()
                .any(|s| s.triggers.iter().any(|t| pred(&t.condition)))
        };
        let host_pct = if wants(|c| matches!(c, TriggerCondition::HostCpu { .. })) {
            self.host.percent()
        } else {
            None
        };
        let execs = if wants(|c| matches!(c, TriggerCondition::Exec { .. })) {
            self.execs()
        } else {
            // No exec rule (any more): detach the watcher rather than let events pile up.
            self.exec_bpf = None;
            Vec::new()
        };
        let mut obs = Vec::new();
        for (name, svc) in &config.services {
            let has = |pred: fn(&TriggerCondition) -> bool| {
                svc.triggers.iter().any(|t| pred(&t.condition))
            };
            let needs_pids = has(|c| matches!(c, TriggerCondition::ProcessCpu { .. }))
                || has(|c| matches!(c, TriggerCondition::RssGrowth { .. }));
            let pids = if needs_pids {
                selector_pids(&svc.selector)
            } else {
                Vec::new()
            };
            if has(|c| matches!(c, TriggerCondition::ProcessCpu { .. })) {
                let sampler = self.cpu.entry(name.clone()).or_default();
                if let Some(p) = sampler.busiest(&pids) {
                    obs.push(Observation::ProcessCpu {
                        host: host.into(),
                        service: name.clone(),
                        percent: p,
                    });
                }
            }
            if has(|c| matches!(c, TriggerCondition::RssGrowth { .. })) {
                let watch = self.rss.entry(name.clone()).or_default();
                if let Some(b) = watch.fastest(&pids) {
                    obs.push(Observation::RssGrowth {
                        host: host.into(),
                        service: name.clone(),
                        bytes_per_second: b,
                    });
                }
            }
            if has(|c| matches!(c, TriggerCondition::HeapGrowth { .. })) {
                if let Some(b) = self.heap.take(name) {
                    obs.push(Observation::HeapGrowth {
                        host: host.into(),
                        service: name.clone(),
                        bytes_per_second: b,
                    });
                }
            }
            if has(|c| matches!(c, TriggerCondition::HostCpu { .. })) {
                if let Some(p) = host_pct {
                    obs.push(Observation::HostCpu {
                        host: host.into(),
                        service: name.clone(),
                        percent: p,
                    });
                }
            }
            if has(|c| matches!(c, TriggerCondition::Exec { .. })) {
                for (pid, exe) in &execs {
                    obs.push(Observation::Exec {
                        host: host.into(),
                        service: name.clone(),
                        exe: exe.clone(),
                        pid: Some(*pid),
                    });
                }
            }
        }
        obs.append(&mut sync::lock(&self.scraped));
        let mut out = Vec::new();
        for o in &obs {
            out.extend(self.engine.observe(config, o, now));
        }
        out
    }
}

/// Fetches one URL's body, with a short timeout.
fn fetch(url: &str) -> Result<String, ureq::Error> {
    let mut resp = ureq::get(url)
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()?;
    resp.body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
}

/// Scrapes every URL that a `prometheus` trigger names, every [`SCRAPE_INTERVAL`], and queues
/// one observation per (service, rule) whose series is present. A failed scrape or a missing
/// series is counted in `baton_trigger_scrape_errors_total` and logged when it starts failing.
pub fn scrape_loop(
    live: &RwLock<LiveConfig>,
    out: &Mutex<Vec<Observation>>,
    metrics: &AgentMetrics,
    host: &str,
    stop: impl Fn() -> bool,
) {
    let mut failing: HashMap<String, String> = HashMap::new();
    let mut next = Instant::now();
    while !stop() {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + SCRAPE_INTERVAL;
        let Some(config) = sync::read(live).config.clone() else {
            continue;
        };
        // url -> [(service, metric selector)]
        let mut wanted: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (name, svc) in &config.services {
            for t in &svc.triggers {
                if let TriggerCondition::Prometheus { url, metric, .. } = &t.condition {
                    wanted
                        .entry(url.clone())
                        .or_default()
                        .push((name.clone(), metric.clone()));
                }
            }
        }
        for (url, rules) in wanted {
            let series = match fetch(&url) {
                Ok(body) => baton_agent::prom::parse(&body),
                Err(e) => {
                    let e = e.to_string();
                    metrics
                        .trigger_scrape_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if failing.get(&url) != Some(&e) {
                        eprintln!("baton up: scraping {url} for a trigger failed: {e}");
                        failing.insert(url.clone(), e);
                    }
                    continue;
                }
            };
            if failing.remove(&url).is_some() {
                eprintln!("baton up: scraping {url} works again");
            }
            for (service, metric) in rules {
                let value = baton_config::MetricSelector::parse(&metric)
                    .ok()
                    .and_then(|sel| baton_agent::prom::value(&sel, &series));
                match value {
                    Some(value) => sync::lock(out).push(Observation::Metric {
                        host: host.into(),
                        service,
                        url: url.clone(),
                        metric,
                        value,
                    }),
                    None => {
                        metrics
                            .trigger_scrape_errors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
