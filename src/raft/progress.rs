//! The leader's per-follower replication state (`next_index`, `match_index`)
//! and the bounded window of AppendEntries in flight.

use std::collections::VecDeque;

use super::types::{LogIndex, ProgressState};

/// What the leader knows of one follower. Created by `become_leader`, changed
/// only by the leader's handlers, dropped when it steps down.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Index of the next entry to send (Figure 2). In `Replicate` it runs
    /// ahead optimistically past what was acknowledged.
    pub next_index: LogIndex,
    /// Highest index known to be durably replicated on the follower and to
    /// agree with the leader's log (Figure 2).
    pub match_index: LogIndex,
    pub state: ProgressState,
    /// In `Probe`: an AppendEntries is out and unanswered; cleared by a
    /// response or the next heartbeat, so a lost probe is retried.
    pub probe_sent: bool,
    /// In `Replicate`: last index carried by each AppendEntries in flight,
    /// oldest first; at most `inflight_msgs_max` long.
    pub inflight: VecDeque<LogIndex>,
    /// Heard from in the current CheckQuorum period.
    pub recent_active: bool,
    /// Highest `read_round` the follower echoed in this term.
    pub acked_read_round: u64,
    /// Heartbeat periods in a row in which `match_index` did not advance
    /// while messages were in flight; used to detect a lost AppendEntries.
    pub stalled_heartbeats: u32,
    /// In `Snapshot`: the index of the snapshot sent.
    pub pending_snapshot: LogIndex,
}

impl Progress {
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            next_index,
            match_index: LogIndex(0),
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            acked_read_round: 0,
            stalled_heartbeats: 0,
            pending_snapshot: LogIndex(0),
        }
    }

    /// Back to probing from `next_index` (after a rejection or a stall).
    pub fn become_probe(&mut self, next_index: LogIndex) {
        self.state = ProgressState::Probe;
        self.next_index = next_index;
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_heartbeats = 0;
    }

    /// A probe succeeded: pipeline from just after `match_index`.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_heartbeats = 0;
    }

    /// A snapshot up to `index` was sent: wait for its acknowledgement.
    pub fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.next_index = index.next();
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_heartbeats = 0;
    }

    /// The follower acknowledged up to `index`: returns whether that is news.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        if self.next_index <= index {
            self.next_index = index.next();
        }
        self.stalled_heartbeats = 0;
        true
    }
}
