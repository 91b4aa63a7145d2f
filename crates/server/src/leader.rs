//! Which server holds the control plane: the shared view the handlers read.
//!
//! Several `baton server` processes may share one store; any of them takes ingest and queries,
//! and one of them, the leader, holds the control plane (hosts, runs, heartbeats, the tuner).
//! Without coordination a server is [`Leadership::solo`], always the leader. With `--etcd` it
//! starts as a [`Leadership::follower`] and the runtime's campaign (an etcd lease) calls
//! [`Leadership::set`] as the leadership moves. A follower answers control calls with 503 and
//! [`LEADER_HEADER`] naming the leader, and clients go there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use baton_model::sync::{read, write};

/// The header of a follower's 503: the URL of the server that holds the control plane.
pub const LEADER_HEADER: &str = "x-baton-leader";

/// Whether this process holds the control plane, and who does.
#[derive(Debug)]
pub struct Leadership {
    leader: AtomicBool,
    /// Incremented each time this process becomes the leader.
    epoch: AtomicU64,
    leader_url: RwLock<Option<String>>,
    self_url: Option<String>,
}

impl Leadership {
    /// No coordination: this process is the only server, always the leader, in epoch 1.
    pub fn solo() -> Arc<Leadership> {
        Arc::new(Leadership {
            leader: AtomicBool::new(true),
            epoch: AtomicU64::new(1),
            leader_url: RwLock::new(None),
            self_url: None,
        })
    }

    /// One of several servers, reached at `self_url`; not the leader until a campaign says so.
    pub fn follower(self_url: String) -> Arc<Leadership> {
        Arc::new(Leadership {
            leader: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            leader_url: RwLock::new(None),
            self_url: Some(self_url),
        })
    }

    /// Whether this process holds the control plane now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// The URL the current leader advertised; `None` if unknown (or solo).
    pub fn leader_url(&self) -> Option<String> {
        read(&self.leader_url).clone()
    }

    /// How many times this process became the leader (solo: 1). When it changes, the state
    /// the control plane keeps in memory is stale and is reloaded from the store.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The URL this process advertises to agents and the other servers (`None` when solo).
    pub fn self_url(&self) -> Option<&str> {
        self.self_url.as_deref()
    }

    /// Records the outcome of the campaign. Becoming the leader starts a new epoch, counted
    /// before the flag is raised, so whoever sees `is_leader()` sees the new epoch.
    pub fn set(&self, leader: bool, leader_url: Option<String>) {
        *write(&self.leader_url) = leader_url;
        if leader && !self.leader.load(Ordering::SeqCst) {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.leader.store(leader, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solo_leads_in_epoch_one() {
        let l = Leadership::solo();
        assert!(l.is_leader());
        assert_eq!(l.epoch(), 1);
        assert_eq!(l.self_url(), None);
        assert_eq!(l.leader_url(), None);
    }

    #[test]
    fn each_rise_to_leader_is_a_new_epoch() {
        let l = Leadership::follower("http://a:7070".into());
        assert!(!l.is_leader());
        assert_eq!(l.epoch(), 0);
        l.set(false, Some("http://b:7070".into()));
        assert_eq!(l.leader_url().as_deref(), Some("http://b:7070"));
        assert_eq!(l.epoch(), 0);
        l.set(true, Some("http://a:7070".into()));
        l.set(true, Some("http://a:7070".into()));
        assert!(l.is_leader());
        assert_eq!(l.epoch(), 1, "staying the leader is the same epoch");
        l.set(false, None);
        assert!(!l.is_leader());
        assert_eq!(l.leader_url(), None);
        l.set(true, Some("http://a:7070".into()));
        assert_eq!(l.epoch(), 2);
        assert_eq!(l.self_url(), Some("http://a:7070"));
    }
}
