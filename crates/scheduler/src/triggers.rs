//! Triggers: conditions observed on hosts that start runs, with cooldowns and hourly caps.

use std::collections::{HashMap, VecDeque};

use baton_config::{Config, TriggerCondition};

use crate::{JobRequest, Millis, Mode};

/// Something a host's agent saw, already attributed to a service by its selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The busiest process of the service, in percent of one CPU.
    ProcessCpu {
        host: String,
        service: String,
        percent: f64,
    },
    /// The whole host's CPU use in percent.
    HostCpu {
        host: String,
        service: String,
        percent: f64,
    },
    RssGrowth {
        host: String,
        service: String,
        bytes_per_second: f64,
    },
    /// The fastest growth of a process's live heap (`live_bytes`) between its last two
    /// windows; observed once per new window.
    HeapGrowth {
        host: String,
        service: String,
        bytes_per_second: f64,
    },
    /// A process started running `exe`; the run it fires profiles that process (`pid`).
    Exec {
        host: String,
        service: String,
        exe: String,
        pid: Option<u32>,
    },
    Metric {
        host: String,
        service: String,
        url: String,
        metric: String,
        value: f64,
    },
}

impl Observation {
    fn key(&self) -> (&str, &str) {
        match self {
            Observation::ProcessCpu { host, service, .. }
            | Observation::HostCpu { host, service, .. }
            | Observation::RssGrowth { host, service, .. }
            | Observation::HeapGrowth { host, service, .. }
            | Observation::Exec { host, service, .. }
            | Observation::Metric { host, service, .. } => (host, service),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct RuleState {
    /// Since when the condition has held (for conditions with a `for`).
    since: Option<Millis>,
    last_fired: Option<Millis>,
    fired: VecDeque<Millis>,
}

/// Trigger state for every (service, rule, host).
#[derive(Debug, Default)]
pub struct TriggerEngine {
    state: HashMap<(String, usize, String), RuleState>,
    /// Firings per (service, rule), for reports and metrics.
    pub fired: HashMap<(String, usize), u64>,
    /// Conditions that held but were held back by a cooldown or the hourly cap.
    pub suppressed: HashMap<(String, usize), u64>,
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

impl TriggerEngine {
    /// Feeds one observation; returns the runs it fires.
    pub fn observe(&mut self, config: &Config, obs: &Observation, now: Millis) -> Vec<JobRequest> {
        let (host, service) = obs.key();
        let Some(svc) = config.services.get(service) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, rule) in svc.triggers.iter().enumerate() {
            // Whether this observation speaks to the rule, and whether its condition holds.
            let (holds, needs_for) = match (&rule.condition, obs) {
                (
                    TriggerCondition::ProcessCpu {
                        above_percent,
                        for_,
                    },
                    Observation::ProcessCpu { percent, .. },
                ) => (*percent > *above_percent, Some(for_.as_millis() as Millis)),
                (
                    TriggerCondition::HostCpu { above_percent },
                    Observation::HostCpu { percent, .. },
                ) => (*percent > *above_percent, None),
                (
                    TriggerCondition::RssGrowth {
                        bytes_per_second,
                        for_,
                    },
                    Observation::RssGrowth {
                        bytes_per_second: b,
                        ..
                    },
                )
                | (
                    TriggerCondition::HeapGrowth {
                        bytes_per_second,
                        for_,
                    },
                    Observation::HeapGrowth {
                        bytes_per_second: b,
                        ..
                    },
                ) => (
                    *b > *bytes_per_second as f64,
                    for_.map(|f| f.as_millis() as Millis),
                ),
                (TriggerCondition::Exec { pattern }, Observation::Exec { exe, .. }) => {
                    (glob_match(pattern, exe), None)
                }
                (
                    TriggerCondition::Prometheus { url, metric, above },
                    Observation::Metric {
                        url: u,
                        metric: m,
                        value,
                        ..
                    },
                ) => {
                    if url != u || metric != m {
                        continue;
                    }
                    (*value > *above, None)
                }
                _ => continue,
            };
            let st = self
                .state
                .entry((service.to_string(), i, host.to_string()))
                .or_default();
            if !holds {
                st.since = None;
                continue;
            }
            let since = *st.since.get_or_insert(now);
            if let Some(f) = needs_for {
                if now.saturating_sub(since) < f {
                    continue;
                }
            }
            while st
                .fired
                .front()
                .is_some_and(|t| now.saturating_sub(*t) >= 3_600_000)
            {
                st.fired.pop_front();
            }
            let cooling = st
                .last_fired
                .is_some_and(|t| now.saturating_sub(t) < rule.cooldown.as_millis() as Millis);
            if cooling || st.fired.len() as u32 >= rule.max_per_hour {
                *self.suppressed.entry((service.to_string(), i)).or_default() += 1;
                continue;
            }
            st.last_fired = Some(now);
            st.fired.push_back(now);
            st.since = None;
            *self.fired.entry((service.to_string(), i)).or_default() += 1;
            let target = match obs {
                Observation::Exec { pid: Some(pid), .. } => format!("pid:{pid}"),
                _ => format!("service:{service}"),
            };
            out.push(JobRequest {
                profiler: rule.profiler.clone(),
                host: host.to_string(),
                target,
                mode: Mode::Triggered {
                    service: service.to_string(),
                    rule: i,
                },
                duration_ms: rule.duration.as_millis() as Millis,
                frequency: rule.frequency,
                priority: 5,
                force: false,
                owner: format!("trigger:{service}#{i}"),
                not_before: now,
                weight: 1.0,
                options: rule.options.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[services.s]
selector = { comm = "s" }

[[services.s.triggers]]
kind = "exec"
pattern = "/opt/s/*"
profiler = "cpu"
duration = "5s"
cooldown = "1m"
max_per_hour = 2

[[services.s.triggers]]
kind = "rss_growth"
bytes_per_second = 1000
profiler = "cpu"
duration = "5s"
cooldown = "1s"
max_per_hour = 3

[[services.s.triggers]]
kind = "prometheus"
url = "http://127.0.0.1:1/metrics"
metric = "lat"
above = 0.5
profiler = "cpu"
duration = "5s"
cooldown = "10s"
max_per_hour = 10
"#;
        baton_config::load(
            &[baton_config::SourceFile {
                path: "t.toml".into(),
                text: text.into(),
            }],
            &["cpu"],
        )
        .expect("valid")
    }

    fn exec(exe: &str, pid: u32) -> Observation {
        Observation::Exec {
            host: "h".into(),
            service: "s".into(),
            exe: exe.into(),
            pid: Some(pid),
        }
    }

    #[test]
    fn exec_rss_and_metric_rules_fire_with_cooldowns_and_caps() {
        let c = config();
        let mut e = TriggerEngine::default();
        assert!(e.observe(&c, &exec("/usr/bin/ls", 1), 0).is_empty());
        let fired = e.observe(&c, &exec("/opt/s/server", 42), 0);
        assert_eq!(fired.len(), 1);
        assert_eq!(
            fired[0].target, "pid:42",
            "an exec run profiles the new process"
        );
        // Within the minute's cooldown: held back, and counted.
        assert!(e.observe(&c, &exec("/opt/s/server", 43), 30_000).is_empty());
        assert_eq!(e.suppressed[&("s".to_string(), 0)], 1);
        assert_eq!(e.observe(&c, &exec("/opt/s/server", 44), 61_000).len(), 1);
        // The hourly cap of 2 holds even after the cooldown.
        assert!(e
            .observe(&c, &exec("/opt/s/server", 45), 200_000)
            .is_empty());

        let rss = |b: f64| Observation::RssGrowth {
            host: "h".into(),
            service: "s".into(),
            bytes_per_second: b,
        };
        assert!(e.observe(&c, &rss(999.0), 0).is_empty());
        let r = e.observe(&c, &rss(5_000.0), 0);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].target, "service:s");

        let metric = |url: &str, m: &str, v: f64| Observation::Metric {
            host: "h".into(),
            service: "s".into(),
            url: url.into(),
            metric: m.into(),
            value: v,
        };
        assert!(e
            .observe(&c, &metric("http://127.0.0.1:1/metrics", "lat", 0.4), 0)
            .is_empty());
        assert!(
            e.observe(&c, &metric("http://other/metrics", "lat", 9.0), 0)
                .is_empty(),
            "another URL is another rule's business"
        );
        assert_eq!(
            e.observe(&c, &metric("http://127.0.0.1:1/metrics", "lat", 0.6), 0)
                .len(),
            1
        );
        assert!(e
            .observe(&c, &metric("http://127.0.0.1:1/metrics", "lat", 0.6), 5_000)
            .is_empty());
        assert_eq!(
            e.observe(
                &c,
                &metric("http://127.0.0.1:1/metrics", "lat", 0.6),
                11_000
            )
            .len(),
            1
        );
    }

    #[test]
    fn sustained_heap_growth_fires_a_run_with_the_rules_options() {
        let text = r#"
[services.s]
selector = { comm = "s" }

[[services.s.triggers]]
kind = "heap_growth"
bytes_per_second = 1000
for = "20s"
profiler = "malloc"
duration = "30s"
cooldown = "10m"
max_per_hour = 1
options = { mode = "uprobe" }
"#;
        let c = baton_config::load(
            &[baton_config::SourceFile {
                path: "t.toml".into(),
                text: text.into(),
            }],
            &["malloc"],
        )
        .expect("valid");
        let heap = |b: f64| Observation::HeapGrowth {
            host: "h".into(),
            service: "s".into(),
            bytes_per_second: b,
        };
        let mut e = TriggerEngine::default();
        // Growing windows for 10 s, then one that did not grow: the clock starts again.
        assert!(e.observe(&c, &heap(5_000.0), 0).is_empty());
        assert!(e.observe(&c, &heap(5_000.0), 10_000).is_empty());
        assert!(e.observe(&c, &heap(0.0), 20_000).is_empty());
        assert!(e.observe(&c, &heap(5_000.0), 30_000).is_empty());
        assert!(e.observe(&c, &heap(5_000.0), 40_000).is_empty());
        let r = e.observe(&c, &heap(5_000.0), 50_000);
        assert_eq!(r.len(), 1, "20 s of growth fires");
        assert_eq!(r[0].profiler, "malloc");
        assert_eq!(r[0].target, "service:s");
        assert_eq!(r[0].options["mode"], "uprobe");
        // RSS observations are another condition's business.
        let rss = Observation::RssGrowth {
            host: "h".into(),
            service: "s".into(),
            bytes_per_second: 1e9,
        };
        assert!(e.observe(&c, &rss, 60_000).is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob_match("/usr/bin/*", "/usr/bin/python3"));
        assert!(glob_match("*checkout*", "/opt/checkout-v2/bin"));
        assert!(glob_match("/a/b", "/a/b"));
        assert!(!glob_match("/usr/bin/*", "/usr/sbin/x"));
        assert!(!glob_match("a*c", "abd"));
    }
}
