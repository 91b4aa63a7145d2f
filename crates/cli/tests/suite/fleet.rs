//! Fleet mode: `baton server` with `baton agent`s, each host in its own network namespace;
//! runs placed on one host, a server outage with nothing lost, an agent killed mid-run, late
//! symbols, tokens and roles, TLS, and pprof from other producers. The helpers that start
//! servers, agents and namespaces are in `harness::fleet`.

mod auth;
mod foreign;
mod history;
mod hosts;
mod outages;
mod symbols;
