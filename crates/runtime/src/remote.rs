//! Remote runs: the runs the fleet server placed on this host (`baton agent`), queued in the
//! local scheduler under local ids. Their samples carry the server's id, and their states go
//! back to the server by it.

use std::collections::HashMap;

/// The server's ids of the runs it placed here, by local run id.
#[derive(Debug, Default)]
pub struct RemoteRuns {
    pub server_id: HashMap<u64, u64>,
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
}
