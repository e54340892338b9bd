//! The storage thread: group commit off the event loop.
//!
//! The event loop sends numbered [`Job`]s down a channel and carries on. The
//! thread takes the first job, then every job that queued up behind it,
//! writes them all (the newest hard state first, then each job's snapshot
//! and entries in order), makes them durable at once (`Wal::sync`), and
//! reports the highest job number as [`Durable`], waking the event loop
//! through a `mio::Waker`. Jobs become durable in the order they were sent.
//!
//! A caller that knows the thread is idle (every job it sent has been
//! reported durable) may instead write a job on its own thread with
//! [`StorageThread::write_inline`]. A follower does when nothing else is in
//! flight (a vote, or one entry right after its commit index): the
//! hand-offs to the storage thread and back cost two thread wakeups, a good
//! part of a lone write's latency, and there is nothing to overlap with the
//! write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use log::error;

use super::{LogStore, StorageError};
use crate::raft::{Entry, HardState, Snapshot};

/// Jobs (and bytes) written under one `fdatasync` at most; the rest wait
/// for the next round.
const BATCH_JOBS_MAX: usize = 4096;
const BATCH_BYTES_MAX: usize = 64 << 20;

/// One unit of work: make this hard state, this snapshot and these
/// entries durable. The entries follow the snapshot (a follower installs
/// a leader's snapshot, then appends what comes after it).
#[derive(Debug, Default)]
pub struct Job {
    pub seq: u64,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// Entries the core compacted away, not written: the thread frees
    /// them after the write, so the event loop does not spend milliseconds
    /// on a hundred thousand frees.
    pub release: Vec<Entry>,
}

/// Every job up to and including `seq` is durable, or storage failed.
#[derive(Debug)]
pub enum Durable {
    Upto(u64),
    /// The thread stops after this report: nothing written after a failed
    /// write may be claimed durable.
    Failed(StorageError),
}

/// Counters the thread keeps, readable from any thread.
#[derive(Debug, Default)]
pub struct StorageStats {
    pub syncs: AtomicU64,
    pub jobs: AtomicU64,
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct StorageThread {
    /// Held by whoever writes: the thread for a batch, or an inline write.
    store: Arc<Mutex<Box<dyn LogStore>>>,
    tx: Option<Sender<Job>>,
    done: Receiver<Durable>,
    handle: Option<JoinHandle<()>>,
    stats: Arc<StorageStats>,
}

impl StorageThread {
    /// Starts the thread. `wake` is called after each report (a
    /// `mio::Waker`, or nothing when the caller blocks on `done`).
    pub fn spawn(
        store: Box<dyn LogStore>,
        wake: Option<Box<dyn Fn() + Send>>,
    ) -> std::io::Result<StorageThread> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let stats = Arc::new(StorageStats::default());
        let st = Arc::clone(&stats);
        let store = Arc::new(Mutex::new(store));
        let thread_store = Arc::clone(&store);
        let handle = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || {
                let mut batch: Vec<Job> = Vec::new();
                // The highest job number reported durable.
                let mut reported = 0u64;
                while let Ok(first) = rx.recv() {
                    batch.clear();
                    let mut bytes = job_bytes(&first);
                    batch.push(first);
                    while batch.len() < BATCH_JOBS_MAX && bytes < BATCH_BYTES_MAX {
                        match rx.try_recv() {
                            Ok(j) => {
                                bytes += job_bytes(&j);
                                batch.push(j);
                            }
                            Err(_) => break,
                        }
                    }
                    // A report covers every job up to its number, so the
                    // numbers must go up in the order the jobs are sent.
                    let seq_last = batch[batch.len() - 1].seq;
                    assert!(
                        batch[0].seq > reported && batch.windows(2).all(|w| w[0].seq < w[1].seq),
                        "storage jobs out of order: {reported} reported durable, then a batch \
                         of {} jobs numbered {} ..= {seq_last}",
                        batch.len(),
                        batch[0].seq
                    );
                    let report = match write_batch(&thread_store, &batch) {
                        Ok(()) => {
                            st.count(&batch, bytes);
                            reported = seq_last;
                            Durable::Upto(seq_last)
                        }
                        Err(e) => {
                            error!("storage: {e}");
                            Durable::Failed(e)
                        }
                    };
                    let failed = matches!(report, Durable::Failed(_));
                    if done_tx.send(report).is_err() {
                        return;
                    }
                    if let Some(w) = &wake {
                        w();
                    }
                    if failed {
                        return; // nothing after a failed write may claim durability
                    }
                }
            })?;
        Ok(StorageThread {
            store,
            tx: Some(tx),
            done,
            handle: Some(handle),
            stats,
        })
    }

    /// Queues a job; `false` if the thread has stopped (after a failure).
    pub fn submit(&self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Writes `job` and makes it durable on the caller's thread, in place
    /// of `submit`. Only while the thread is idle: every job submitted so
    /// far has been reported durable, so nothing is written out of order.
    pub fn write_inline(&self, job: &Job) -> Result<(), StorageError> {
        let batch = std::slice::from_ref(job);
        write_batch(&self.store, batch)?;
        self.stats.count(batch, job_bytes(job));
        Ok(())
    }

    /// Jobs sent and not yet picked up by the thread.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.len())
    }

    /// Reports of finished batches.
    pub fn done(&self) -> &Receiver<Durable> {
        &self.done
    }

    pub fn stats(&self) -> &Arc<StorageStats> {
        &self.stats
    }
}

impl Drop for StorageThread {
    /// Lets the thread finish what was queued, then joins it.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl StorageStats {
    fn count(&self, batch: &[Job], bytes: usize) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let n: usize = batch.iter().map(|j| j.entries.len()).sum();
        self.entries.fetch_add(n as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

fn job_bytes(j: &Job) -> usize {
    let snapshot = j.snapshot.as_ref().map_or(0, |s| s.data.len());
    snapshot
        + j.entries
            .iter()
            .map(|e| super::wal::record_bytes(e.data.len()) as usize)
            .sum::<usize>()
}

/// Writes the jobs and makes them durable, holding the store's lock. A
/// writer that panicked while holding it left the store in an unknown
/// state: nothing writes after it.
fn write_batch(store: &Mutex<Box<dyn LogStore>>, batch: &[Job]) -> Result<(), StorageError> {
    let mut store = store.lock().map_err(|_| StorageError::Stopped {
        what: "a write panicked; the log is in an unknown state",
    })?;
    write_jobs(store.as_mut(), batch)
}

/// Writes a batch of jobs to `store` and makes them durable: the one
/// copy of the order in which a job's parts reach the disk, used by the
/// storage thread and by the simulator's disks alike.
pub fn write_jobs(store: &mut dyn LogStore, batch: &[Job]) -> Result<(), StorageError> {
    // The term must never lag the log: the hard state goes first.
    if let Some(hs) = batch.iter().rev().find_map(|j| j.hard_state) {
        store.save_hard_state(&hs)?;
    }
    for j in batch {
        // Saving a snapshot makes the appends before it durable itself.
        if let Some(snap) = &j.snapshot {
            store.save_snapshot_background(snap)?;
        }
        store.append(&j.entries)?;
    }
    store.sync()
}
