//! Injected disk faults (failure drills), applied where the node's writes
//! happen: on the storage thread, around the real store.
//!
//! | fault | what the store does | what the node does |
//! |---|---|---|
//! | stall M ms | every `sync` (one per write batch) sleeps M ms first | waits; a leader commits through its followers meanwhile |
//! | eio | the next `sync` fails with EIO, before syncing anything | stops: a failed fsync is never retried |
//! | full | every write fails with ENOSPC, as on a full disk | refuses client writes, serves reads, retries the write until the fault is cleared |
//!
//! The fault is set from the event loop (a Fault request) and read by the
//! storage thread: two atomics, no lock.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{LogStore, StorageError};
use crate::raft::{Entry, HardState, Snapshot};

/// A fault of the node's own disk (the node maps the Fault request's disk
/// fault to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskFault {
    #[default]
    None,
    /// Every write batch (write and fsync) takes this much longer.
    Stall { ms: u32 },
    /// The next fsync fails with EIO.
    Eio,
    /// Writes fail with ENOSPC until cleared.
    Full,
}

/// The disk fault in force, shared by the event loop (which sets it) and
/// the storage thread (which applies it).
#[derive(Debug, Default)]
pub struct DiskFaults {
    /// The fault in force: 0 none, 1 stall, 2 eio, 3 full.
    tag: AtomicU8,
    /// The stall of a `Stall` fault.
    stall_ms: AtomicU32,
}

impl DiskFaults {
    pub fn set(&self, f: DiskFault) {
        if let DiskFault::Stall { ms } = f {
            self.stall_ms.store(ms, Ordering::Relaxed);
        }
        let tag = match f {
            DiskFault::None => 0,
            DiskFault::Stall { .. } => 1,
            DiskFault::Eio => 2,
            DiskFault::Full => 3,
        };
        self.tag.store(tag, Ordering::Release);
    }

    pub fn get(&self) -> DiskFault {
        match self.tag.load(Ordering::Acquire) {
            1 => DiskFault::Stall {
                ms: self.stall_ms.load(Ordering::Relaxed),
            },
            2 => DiskFault::Eio,
            3 => DiskFault::Full,
            _ => DiskFault::None,
        }
    }

    /// Whether any disk fault is in force: then nothing is written on the
    /// event loop (a stall must not stall it, a full disk is retried by
    /// the storage thread).
    pub fn any(&self) -> bool {
        self.get() != DiskFault::None
    }
}

/// A store that applies the [`DiskFaults`] in force to every write, then
/// hands it to the real store.
pub struct FaultyStore {
    inner: Box<dyn LogStore>,
    faults: Arc<DiskFaults>,
}

impl FaultyStore {
    pub fn new(inner: Box<dyn LogStore>, faults: Arc<DiskFaults>) -> FaultyStore {
        FaultyStore { inner, faults }
    }

    /// ENOSPC, as the kernel reports it for a write on a full disk.
    fn refuse_if_full(&self) -> Result<(), StorageError> {
        if self.faults.get() == DiskFault::Full {
            return Err(StorageError::io(
                &self.inner.sync_path(),
                io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        Ok(())
    }
}

impl LogStore for FaultyStore {
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.refuse_if_full()?;
        self.inner.save_hard_state(hs)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.refuse_if_full()?;
        self.inner.append(entries)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        match self.faults.get() {
            DiskFault::Stall { ms } => std::thread::sleep(Duration::from_millis(ms as u64)),
            DiskFault::Eio => {
                let eio = io::Error::from_raw_os_error(libc::EIO);
                return Err(StorageError::io(
                    &self.inner.sync_path(),
                    super::files::sync_error(io::Error::other(format!("{eio} (injected)"))),
                ));
            }
            // Every write was refused before it: nothing new to sync.
            DiskFault::Full | DiskFault::None => {}
        }
        self.inner.sync()
    }

    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        self.refuse_if_full()?;
        self.inner.save_snapshot(snap)
    }

    fn save_snapshot_background(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        self.refuse_if_full()?;
        self.inner.save_snapshot_background(snap)
    }

    fn sync_path(&self) -> PathBuf {
        self.inner.sync_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{EntryKind, LogIndex, Term};
    use crate::storage::MemStore;

    fn entry(i: u64) -> Entry {
        Entry {
            index: LogIndex(i),
            term: Term(1),
            kind: EntryKind::Noop,
            data: Arc::from(&[][..]),
        }
    }

    #[test]
    fn faulty_store_full_refuses_writes_with_enospc_until_cleared() {
        let faults = Arc::new(DiskFaults::default());
        let mut s = FaultyStore::new(Box::new(MemStore::new()), Arc::clone(&faults));
        s.append(&[entry(1)]).unwrap();
        s.sync().unwrap();
        faults.set(DiskFault::Full);
        let e = s.append(&[entry(2)]).unwrap_err();
        assert!(e.is_no_space(), "{e}");
        faults.set(DiskFault::None);
        s.append(&[entry(2)]).unwrap();
        s.sync().unwrap();
    }

    #[test]
    fn faulty_store_eio_fails_the_sync_and_is_not_retryable() {
        let faults = Arc::new(DiskFaults::default());
        let mut s = FaultyStore::new(Box::new(MemStore::new()), Arc::clone(&faults));
        s.append(&[entry(1)]).unwrap();
        faults.set(DiskFault::Eio);
        let e = s.sync().unwrap_err();
        assert!(!e.is_no_space(), "{e}");
        assert!(e.to_string().contains("fsync failed"), "{e}");
    }

    #[test]
    fn disk_faults_round_trip_through_the_atomics() {
        let f = DiskFaults::default();
        for d in [
            DiskFault::Stall { ms: 30 },
            DiskFault::Eio,
            DiskFault::Full,
            DiskFault::None,
        ] {
            f.set(d);
            assert_eq!(f.get(), d);
        }
    }
}
