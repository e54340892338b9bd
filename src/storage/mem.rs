//! A log store in memory, with the same contract as the data dir on disk
//! ([`super::DiskStore`]): what it holds is what a crash keeps. The
//! simulator gives each node one, written through the same
//! `write_jobs` as the storage thread, and restarts a crashed node from
//! [`MemStore::recover`]; what was not written (a job still queued when
//! the node crashed) is lost, exactly as on a disk.

use crate::raft::{Entry, HardState, LogIndex, Snapshot};

use super::{LogStore, Recovered, StorageError};

#[derive(Clone, Debug, Default)]
pub struct MemStore {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// The log after the snapshot (from index 1 without one).
    entries: Vec<Entry>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// What a node restarting from this store gets back.
    pub fn recover(&self) -> Recovered {
        Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            fresh: self.snapshot.is_none() && self.entries.is_empty(),
        }
    }

    /// The hard state as stored.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Index of the entry before `entries[0]`.
    pub fn base(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index.0)
    }

    pub fn last_index(&self) -> u64 {
        self.base() + self.entries.len() as u64
    }

    /// The stored term of the entry at `index` (the snapshot's at its
    /// index), if the store holds it.
    pub fn term_at(&self, index: LogIndex) -> Option<crate::raft::Term> {
        let base = self.base();
        if index.0 == base {
            return Some(
                self.snapshot
                    .as_ref()
                    .map_or(crate::raft::Term(0), |s| s.term),
            );
        }
        let k = index.0.checked_sub(base + 1)?;
        self.entries.get(k as usize).map(|e| e.term)
    }
}

impl LogStore for MemStore {
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.hard_state = *hs;
        Ok(())
    }

    /// The entries replace the stored log from `entries[0].index` on.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let base = self.base();
        assert!(
            first.index.0 > base,
            "append of {} at or before the snapshot at {base}",
            first.index
        );
        assert!(
            first.index.0 <= self.last_index() + 1,
            "append of {} leaves a gap after {}",
            first.index,
            self.last_index()
        );
        self.entries.truncate((first.index.0 - base - 1) as usize);
        self.entries.extend_from_slice(entries);
        for w in self.entries.windows(2) {
            assert_eq!(w[0].index.next(), w[1].index, "stored log not contiguous");
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        assert!(
            snap.index.0 >= self.base(),
            "snapshot at {} older than the stored one at {}",
            snap.index,
            self.base()
        );
        if self.term_at(snap.index) == Some(snap.term) {
            let drop = (snap.index.0 - self.base()) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snap.clone());
        Ok(())
    }
}
