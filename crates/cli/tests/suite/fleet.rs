//! Fleet mode: `baton server` with `baton agent`s, each host in its own network namespace;
//! runs placed on one host, a server outage with nothing lost, an agent killed mid-run, late
//! symbols, tokens and roles, TLS, pprof from other producers, the fleet-wide tuner, and a
//! control plane that survives restarts and fails over. The helpers that start servers, agents,
//! namespaces, cgroup slices and etcd are in `harness::fleet`.

mod auth;
mod control_plane;
mod foreign;
mod history;
mod hostile;
mod hosts;
mod outages;
mod symbols;
mod tuning;
