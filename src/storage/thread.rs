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
//!
//! A write refused for want of space (ENOSPC, [`StorageError::is_no_space`])
//! does not stop the thread: it records the refusal ([`StorageThread::no_space`],
//! which the node shows as "disk full" and answers client writes with), and
//! tries the same batch again every `NO_SPACE_RETRY` until it goes through.
//! The log stays whole meanwhile: a partly written record lies past the
//! end the log knows (its buffer and sizes advance only on success) and is
//! written over by the retry. Any other failure, and every fsync failure,
//! ends the thread: nothing may be claimed durable after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};

use super::{DiskFaults, LogStore, StorageError};
use crate::raft::{Entry, HardState, Snapshot};

/// Jobs (and bytes) written under one `fdatasync` at most; the rest wait
/// for the next round.
const BATCH_JOBS_MAX: usize = 4096;
const BATCH_BYTES_MAX: usize = 64 << 20;
/// How often a batch refused for want of space is tried again.
pub const NO_SPACE_RETRY: Duration = Duration::from_millis(200);

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
    /// While the batch being written is refused for want of space: why.
    no_space: Arc<Mutex<Option<String>>>,
    /// Set when the thread must stop retrying a refused batch (the node
    /// is stopping).
    stopping: Arc<AtomicBool>,
    /// Injected disk faults: while one is in force nothing is written on
    /// the caller's thread.
    disk_faults: Option<Arc<DiskFaults>>,
}

impl StorageThread {
    /// Starts the thread. `wake` is called after each report (a
    /// `mio::Waker`, or nothing when the caller blocks on `done`).
    pub fn spawn(
        store: Box<dyn LogStore>,
        wake: Option<Box<dyn Fn() + Send + Sync>>,
    ) -> std::io::Result<StorageThread> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let stats = Arc::new(StorageStats::default());
        let st = Arc::clone(&stats);
        let store = Arc::new(Mutex::new(store));
        let thread_store = Arc::clone(&store);
        let no_space = Arc::new(Mutex::new(None));
        let stopping = Arc::new(AtomicBool::new(false));
        let wake: Option<Arc<dyn Fn() + Send + Sync>> = wake.map(Arc::from);
        let retry = Retry {
            no_space: Arc::clone(&no_space),
            stopping: Arc::clone(&stopping),
            wake: wake.clone(),
        };
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
                    let Some(report) = write_until_space(&thread_store, &batch, &retry) else {
                        return; // stopping, the batch not written
                    };
                    let report = match report {
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
            no_space,
            stopping,
            disk_faults: None,
        })
    }

    /// Injected faults that the store applies: while one is in force,
    /// `write_inline` is refused.
    pub fn with_disk_faults(mut self, faults: Arc<DiskFaults>) -> StorageThread {
        self.disk_faults = Some(faults);
        self
    }

    /// Why the batch being written is refused for want of space, while it
    /// is: the disk is full.
    pub fn no_space(&self) -> Option<String> {
        self.no_space.lock().ok().and_then(|g| g.clone())
    }

    /// Whether a job may be written on the caller's thread: no disk fault
    /// is in force (a stall must not stall the caller) and the disk is not
    /// known full (the thread retries a refused write, the caller does
    /// not).
    pub fn inline_allowed(&self) -> bool {
        !self.disk_faults.as_ref().is_some_and(|f| f.any()) && self.no_space().is_none()
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
        self.stopping.store(true, Ordering::Relaxed);
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

/// What the thread's retries of a refused batch share with the node.
struct Retry {
    no_space: Arc<Mutex<Option<String>>>,
    stopping: Arc<AtomicBool>,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Retry {
    fn set(&self, why: Option<String>) {
        if let Ok(mut g) = self.no_space.lock() {
            *g = why;
        }
        if let Some(w) = &self.wake {
            w();
        }
    }
}

/// Writes the batch, trying again every `NO_SPACE_RETRY` while it is
/// refused for want of space. `None` if the node stops meanwhile.
fn write_until_space(
    store: &Mutex<Box<dyn LogStore>>,
    batch: &[Job],
    retry: &Retry,
) -> Option<Result<(), StorageError>> {
    let mut refused = 0u64;
    loop {
        match write_batch(store, batch) {
            Err(e) if e.is_no_space() => {
                if refused == 0 {
                    warn!("storage: disk full: {e}; retrying every {NO_SPACE_RETRY:?}");
                    retry.set(Some(e.to_string()));
                }
                refused += 1;
            }
            r => {
                if refused > 0 {
                    info!("storage: space is back; written after {refused} refusals");
                    retry.set(None);
                }
                return Some(r);
            }
        }
        if retry.stopping.load(Ordering::Relaxed) {
            return None;
        }
        std::thread::sleep(NO_SPACE_RETRY);
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
