//! Remote runs: the runs the fleet server placed on this host (`baton agent`), queued in the
//! local scheduler under local ids. Their samples carry the server's id, and their states go
//! back to the server by it. Beside them, what the fleet's tuner and this host's draws tell
//! each other: the server's run probabilities, and what this host's drawn runs yielded.

use std::collections::{BTreeMap, HashMap};

use baton_server::fleet::{Probabilities, RuleYield};

/// The server's ids of the runs it placed here, by local run id, and the fleet tuner's side.
#[derive(Debug, Default)]
pub struct RemoteRuns {
    pub server_id: HashMap<u64, u64>,
    /// The fleet tuner's probabilities, from the last heartbeat reply (none before the first).
    pub probabilities: Option<Probabilities>,
    /// What drawn runs yielded since the last heartbeat that went through, per (service, rule):
    /// (hits, samples).
    yields: BTreeMap<(String, usize), (u64, u64)>,
}

impl RemoteRuns {
    /// The id a local run's samples carry: the server's where the server placed it.
    pub fn label_id(&self, local: u64) -> u64 {
        self.server_id.get(&local).copied().unwrap_or(local)
    }

    /// The local id of the server's run `server`, if it was queued here.
    pub fn local_id(&self, server: u64) -> Option<u64> {
        self.server_id
            .iter()
            .find(|(_, s)| **s == server)
            .map(|(l, _)| *l)
    }

    /// The fleet's probability for a continuous rule, if the server said one.
    pub fn rule_probability(&self, service: &str, rule: usize) -> Option<f64> {
        self.probabilities
            .as_ref()?
            .rules
            .iter()
            .find(|r| r.service == service && r.rule == rule)
            .map(|r| r.probability)
    }

    /// The fleet's probability that this host profiles a whole-host window, if the server
    /// said one.
    pub fn host_chain_probability(&self) -> Option<f64> {
        self.probabilities.as_ref()?.host_chain
    }

    /// Counts what a drawn run (or whole-host window) yielded: `hit` when it ended.
    pub fn add_yield(&mut self, service: &str, rule: usize, hit: bool, samples: u64) {
        let e = self.yields.entry((service.to_string(), rule)).or_default();
        e.0 += u64::from(hit);
        e.1 += samples;
    }

    /// The yields to report, taken out; give them back with [`RemoteRuns::restore_yields`]
    /// when the heartbeat did not go through.
    pub fn take_yields(&mut self) -> Vec<RuleYield> {
        std::mem::take(&mut self.yields)
            .into_iter()
            .map(|((service, rule), (hits, samples))| RuleYield {
                service,
                rule,
                hits,
                samples,
            })
            .collect()
    }

    /// Puts back yields a failed heartbeat carried.
    pub fn restore_yields(&mut self, ys: Vec<RuleYield>) {
        for y in ys {
            let e = self.yields.entry((y.service, y.rule)).or_default();
            e.0 += y.hits;
            e.1 += y.samples;
        }
    }
}
