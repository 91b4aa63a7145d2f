//! The agents' protocol: what an agent says when it registers and in each heartbeat, and
//! what the server answers. `baton agent` sends and reads these same types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Health;

/// What an agent says about itself when it registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub host: String,
    /// Changes every time the agent process starts.
    pub instance: String,
    pub machine_id: String,
    pub kernel: String,
    pub cpus: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Config services with processes on the host.
    #[serde(default)]
    pub services: Vec<String>,
    /// Container cgroups seen on the host.
    #[serde(default)]
    pub containers: Vec<String>,
    #[serde(default)]
    pub version: String,
}

/// A run's state as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub id: u64,
    pub state: String,
    pub reason: Option<String>,
    #[serde(default)]
    pub samples: u64,
    /// When the run started and ended on the agent (its clock, ms since the epoch). Agents
    /// before these fields leave them out; the server then uses the heartbeat's arrival.
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
}

/// One heartbeat: the states of the agent's runs, and how long it may wait for an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    pub instance: String,
    #[serde(default)]
    pub runs: Vec<RunReport>,
    /// The config version the agent runs.
    pub config_version: Option<String>,
    /// Seconds the server may hold the call when it has nothing to say (long poll).
    #[serde(default)]
    pub wait_s: u64,
    /// Config services with processes on the host now, when the agent looked again.
    pub services: Option<Vec<String>>,
    /// The agent's overhead against its budget, its write budgets and frequency.
    pub health: Option<Health>,
    /// What the continuous draws of this host yielded since its last heartbeat that went
    /// through, per rule: the fleet's tuner learns from it.
    #[serde(default)]
    pub yields: Vec<RuleYield>,
    /// The length of this host's whole-host windows, which the tuner's draw rate needs.
    #[serde(default)]
    pub window_ms: Option<u64>,
}

/// What one tuned rule's drawn runs yielded on a host: `hits` runs (or whole-host windows)
/// that ended, and the raw samples they stored (sample rows for the whole-host chain).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleYield {
    pub service: String,
    pub rule: usize,
    pub hits: u64,
    pub samples: u64,
}

/// The fleet tuner's run probability for one rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleProbability {
    pub service: String,
    pub rule: usize,
    pub probability: f64,
}

/// The fleet tuner's probabilities, as every heartbeat reply carries them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Probabilities {
    /// Per continuous rule of the config.
    pub rules: Vec<RuleProbability>,
    /// The probability that a host profiles a whole-host window (when no CPU rule applies).
    pub host_chain: Option<f64>,
}

/// A run for an agent to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub id: u64,
    pub profiler: String,
    pub target: String,
    pub duration_ms: u64,
    pub frequency: Option<u64>,
    pub priority: i32,
    pub force: bool,
    pub owner: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// The config tree, as files, for agents to validate and run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigFiles {
    pub version: String,
    pub files: Vec<(String, String)>,
}

/// The answer to a heartbeat: runs to start and to cancel, a new config, the next interval.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub assign: Vec<Assignment>,
    pub cancel: Vec<u64>,
    pub config: Option<ConfigFiles>,
    pub heartbeat_s: u64,
    /// The fleet tuner's run probabilities, which the agent draws against.
    #[serde(default)]
    pub probabilities: Probabilities,
}

/// The answer to a registration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegisterReply {
    pub heartbeat_s: u64,
    /// Runs of the agent's previous process, failed because it restarted.
    pub failed_runs: Vec<u64>,
    pub config: Option<ConfigFiles>,
    /// The fleet tuner's run probabilities, so a new host draws against them from its first slot.
    #[serde(default)]
    pub probabilities: Probabilities,
}
