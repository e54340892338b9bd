//! Snapshots in the driver: the node's own (every `snapshot_entries`
//! applied entries, the state machine is encoded, the core compacts its
//! log, and the disk writes the snapshot) and a leader's (decoded when it
//! arrives, installed when the core hands it out in a `Ready`).

use std::time::Instant;

use log::{info, warn};

use crate::raft::{LogIndex, NodeId, Snapshot};
use crate::storage::Job;
use crate::wire::SNAPSHOT_DATA_BYTES_MAX;

use super::driver::{kv_of_snapshot, Disk, Driver, DriverError, DriverEvent};

impl Driver {
    /// Every `snapshot_entries` applied entries: snapshot the state
    /// machine (see [`Driver::snapshot_now`]).
    pub(super) fn maybe_snapshot(&mut self, disk: &mut dyn Disk) -> Result<(), DriverError> {
        let every = self.config.snapshot_entries;
        let applied = self.raft.last_applied();
        let last = self
            .raft
            .snapshot()
            .map_or(LogIndex(0), |s| s.index)
            .max(self.snapshot_tried);
        if every == 0 || applied.0 < last.0 + every {
            return Ok(());
        }
        let keep = self.config.snapshot_keep_entries;
        self.snapshot_now(keep, disk)
    }

    /// Snapshots the state machine at the applied index, lets the core drop
    /// the log behind it (keeping `keep` entries), and has the disk write
    /// it. The log already holds those entries durably, so nothing waits
    /// for the snapshot's own write.
    pub fn snapshot_now(&mut self, keep: u64, disk: &mut dyn Disk) -> Result<(), DriverError> {
        let applied = self.raft.last_applied();
        if applied.0 == 0 || self.raft.snapshot().is_some_and(|s| s.index >= applied) {
            return Ok(());
        }
        self.snapshot_tried = applied;
        let Some(term) = self.raft.log().term_at(applied) else {
            return Ok(());
        };
        assert_eq!(
            self.kv.last_applied(),
            applied,
            "{}: the state machine is at {}, the core applied {applied}",
            self.id,
            self.kv.last_applied()
        );
        let started = Instant::now();
        let snap = Snapshot {
            index: applied,
            term,
            membership: self.raft.membership_at(applied),
            data: self.kv.snapshot().into(),
        };
        let encoded = started.elapsed();
        if snap.data.len() > SNAPSHOT_DATA_BYTES_MAX {
            // A follower that fell behind could never be sent it: keep
            // the log rather than compact it away.
            warn!(
                "{}: not compacting: the state is {} bytes, past the {} a snapshot can carry to a follower",
                self.id,
                snap.data.len(),
                SNAPSHOT_DATA_BYTES_MAX
            );
            return Ok(());
        }
        let release = self
            .raft
            .compact(snap.clone(), LogIndex((applied.0 + 1).saturating_sub(keep)));
        info!(
            "{}: snapshot at {applied}/{term} ({} bytes, {} keys, encoded in {} µs); log now from {}, {} entries to free",
            self.id,
            snap.data.len(),
            self.kv.len(),
            encoded.as_micros(),
            self.raft.log().first_index(),
            release.len()
        );
        self.event(|| DriverEvent::SnapshotTaken(snap.clone()));
        self.submit_own(
            |seq| Job {
                seq,
                hard_state: None,
                snapshot: Some(snap),
                entries: Vec::new(),
                release,
            },
            disk,
        )
    }

    /// A snapshot from a peer is decoded before the core sees it: one that
    /// does not decode is a bad message (the link closes, the node goes
    /// on), not a state the core has already switched to.
    pub(super) fn decode_snapshot(&mut self, from: NodeId, snap: &Snapshot) -> Result<(), String> {
        if snap.index <= self.raft.commit_index() {
            return Ok(()); // the core acknowledges it and changes nothing
        }
        let kv = kv_of_snapshot(snap).map_err(|e| format!("from {from}: {e}"))?;
        self.decoded_snapshot = Some((snap.index, snap.term, kv));
        Ok(())
    }

    /// The leader's snapshot replaces the state machine (the core has
    /// already replaced the log).
    pub(super) fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), DriverError> {
        let kv = match self.decoded_snapshot.take() {
            Some((index, term, kv)) if index == snap.index && term == snap.term => kv,
            _ => kv_of_snapshot(snap)
                .map_err(|e| DriverError::Snapshot(format!("from the leader: {e}")))?,
        };
        info!(
            "{}: installed the leader's snapshot at {}/{} ({} bytes, {} keys)",
            self.id,
            snap.index,
            snap.term,
            snap.data.len(),
            kv.len()
        );
        self.kv = kv;
        self.event(|| DriverEvent::SnapshotInstalled(snap.clone()));
        Ok(())
    }
}
