//! Attributes sample rows to the config's services, by matching each row's labels against the
//! services' selectors, and labels them `service` and with the service's own labels (`team`,
//! `tier`), stored with the row so a query answers as the config was when it was written.

use std::collections::HashMap;

use baton_config::Config;
use baton_model::Batch;

/// Sets the `service` label on every row that has none and whose process a service's selector
/// matches (the first service in name order wins), and the service's labels on every row of a
/// service (never replacing a label the row has). Returns the rows attributed per service.
pub fn attribute(config: &Config, batch: &mut Batch) -> HashMap<String, u64> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    if config.services.is_empty() {
        return counts;
    }
    // Rows of one process share cgroup, comm and exe: match each distinct triple once.
    let mut cache: HashMap<(String, String, String), Option<String>> = HashMap::new();
    for s in &mut batch.samples {
        if let Some(svc) = s.labels.get("service").cloned() {
            add_service_labels(config, &svc, &mut s.labels);
            *counts.entry(svc).or_default() += 1;
            continue;
        }
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let key = (get("cgroup"), get("comm"), get("exe"));
        let found = cache
            .entry(key)
            .or_insert_with_key(|(cg, comm, exe)| {
                fn opt(v: &str) -> Option<&str> {
                    (!v.is_empty()).then_some(v)
                }
                config
                    .services
                    .iter()
                    .find(|(_, svc)| svc.selector.matches(opt(cg), opt(comm), opt(exe)))
                    .map(|(name, _)| name.clone())
            })
            .clone();
        if let Some(name) = found {
            add_service_labels(config, &name, &mut s.labels);
            *counts.entry(name.clone()).or_default() += 1;
            s.labels.insert("service".into(), name);
        }
    }
    counts
}

/// The labels the config gives service `name`: they win over what a thread published under the
/// same name (the config checks they never take a column's or a profiler's name).
fn add_service_labels(config: &Config, name: &str, labels: &mut baton_model::Labels) {
    if let Some(svc) = config.services.get(name) {
        for (k, v) in &svc.labels {
            labels.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_model::{Labels, StackSample, ValueType};

    fn row(comm: &str, cgroup: &str) -> StackSample {
        let mut labels = Labels::new();
        labels.insert("comm".into(), comm.into());
        labels.insert("cgroup".into(), cgroup.into());
        StackSample {
            stack: Vec::new(),
            labels,
            value: 1,
            weight: 1.0,
            value_index: 0,
        }
    }

    #[test]
    fn rows_get_the_service_their_process_belongs_to() {
        let text = "[services.db]\nselector = { comm = \"postgres\" }\nlabels = { team = \"data\", tier = \"1\" }\n[services.web]\nselector = { unit = \"nginx.service\" }\n";
        let config = baton_config::load(
            &[baton_config::SourceFile {
                path: "a.toml".into(),
                text: text.into(),
            }],
            &["cpu"],
        )
        .expect("valid");
        let mut batch = Batch {
            profiler: "cpu".into(),
            value_type: ValueType::cpu_nanoseconds(),
            more_value_types: Vec::new(),
            histograms: Vec::new(),
            spans: Vec::new(),
            ts_ms: 0,
            samples: vec![
                row("postgres", "/system.slice/postgresql.service"),
                row("nginx", "/system.slice/nginx.service"),
                row("bash", "/user.slice"),
                row("postgres", "/system.slice/postgresql.service"),
            ],
        };
        let counts = attribute(&config, &mut batch);
        assert_eq!(counts.get("db"), Some(&2));
        assert_eq!(counts.get("web"), Some(&1));
        let svc: Vec<Option<&str>> = batch
            .samples
            .iter()
            .map(|s| s.labels.get("service").map(String::as_str))
            .collect();
        assert_eq!(svc, [Some("db"), Some("web"), None, Some("db")]);
        // The service's labels are stored with its rows, and only its rows.
        let team: Vec<Option<&str>> = batch
            .samples
            .iter()
            .map(|s| s.labels.get("team").map(String::as_str))
            .collect();
        assert_eq!(team, [Some("data"), None, None, Some("data")]);
        assert_eq!(
            batch.samples[0].labels.get("tier").map(String::as_str),
            Some("1")
        );
    }
}
