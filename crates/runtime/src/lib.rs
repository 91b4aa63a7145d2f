//! The long-running side of Baton, which the `baton` binary calls once it has turned flags into
//! option structs: `up` (this host, into the embedded store), `agent` (this host, shipped to a
//! fleet server), the fleet server's background work, and `record`'s recording with its gated
//! child.
//!
//! The driver (`driver`) carries out the scheduler's decisions on this host: the loop,
//! continuous draws, targeted runs, write budgets and the overhead guard. Its batches go to a
//! `sink` (the store, or the agent's `outbox`); runs placed by a fleet server are `remote`.
//! `config_watch` loads and watches the config, `triggers` observes what the triggers ask
//! about, and `stop` is the process-wide stop flag every loop polls.
//!
//! It sits above `baton-agent` (one collector: a profiler plus symbolization and labels, and
//! the host observations), `baton-scheduler` (pure decisions), `baton-server` (the HTTP API and
//! fleet types) and `baton-store`; nothing below depends on it.

pub mod agent;
pub mod client;
pub mod config_watch;
pub mod control_plane;
pub mod driver;
mod error;
pub mod gated;
pub mod history;
pub mod leader;
pub mod outbox;
pub mod record;
pub mod remote;
pub mod server;
pub mod sink;
pub mod stop;
pub mod triggers;
pub mod up;

pub use error::Error;

/// Milliseconds since the Unix epoch as the scheduler counts them (`baton_model::time::now_ms`,
/// unsigned); a `fn` so it can be handed to the scheduler's users as their clock.
pub fn scheduler_clock() -> u64 {
    baton_model::time::now_ms() as u64
}
