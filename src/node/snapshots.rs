//! Snapshots in the driver: the node's own (every `snapshot_entries`
//! applied entries, once they hold half the last snapshot's bytes, the
//! state machine is frozen and handed out to be encoded; when the
//! snapshot comes back the core compacts its log and the disk saves it)
//! and a leader's (decoded when it arrives, installed when the core hands
//! it out in a `Ready`). The node encodes on a thread of its own
//! ([`SnapshotEncoder`]) straight into a file, so the event loop never
//! stalls for it and the snapshot is never held in memory; the simulator
//! encodes into memory at once, deterministically.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::kv::FrozenKv;
use crate::raft::{LogIndex, Membership, NodeId, Snapshot, Term};
use crate::storage::files::{SnapshotFileWriter, Writeback};
use crate::storage::Job;

use super::driver::{kv_of_snapshot, Disk, Driver, DriverError, DriverEvent};

/// A snapshot to encode: the state machine frozen at `index` (O(1), see
/// [`FrozenKv`]), handed by the driver to whoever encodes it (a thread of
/// the node's, or the simulator's disk at once) through
/// [`Disk::encode_snapshot`].
pub struct SnapshotJob {
    pub index: LogIndex,
    pub term: Term,
    /// The membership in force at `index`.
    pub membership: Membership,
    /// Entries the log keeps behind the snapshot once it is taken.
    pub keep: u64,
    pub state: FrozenKv,
}

/// An encoded [`SnapshotJob`], for [`Driver::snapshot_encoded`].
pub struct SnapshotDone {
    pub index: LogIndex,
    pub term: Term,
    pub keep: u64,
    pub keys: usize,
    /// The snapshot (its data in memory, or in a file of the data dir not
    /// yet renamed into place), or why it could not be written.
    pub snapshot: Result<Snapshot, String>,
    pub encode_time: Duration,
}

impl SnapshotJob {
    /// Encodes the frozen state into memory (the simulator, tests): one
    /// pass to size it, one to write it into a buffer of exactly that
    /// size. On any thread.
    pub fn run(self) -> SnapshotDone {
        let started = Instant::now();
        let data = self.state.encode();
        self.done(
            started,
            Ok(Snapshot {
                index: self.index,
                term: self.term,
                membership: self.membership.clone(),
                data: data.into(),
            }),
        )
    }

    /// Encodes the frozen state into a new file in `dir`, streamed through
    /// a small buffer: memory stays that of the frozen view (shared with
    /// the store) whatever the state's size. The file is made durable and
    /// renamed into place by the storage side once the driver takes it.
    pub fn run_to_file(self, dir: &Path, writeback: Writeback) -> SnapshotDone {
        let started = Instant::now();
        let written = (|| {
            let len = self.state.encoded_len() as u64;
            let mut w = SnapshotFileWriter::create(
                dir,
                "own",
                self.index,
                self.term,
                &self.membership,
                len,
            )?
            .with_writeback(writeback);
            self.state.encode_to(&mut w)?;
            w.finish()
        })()
        .map_err(|e| format!("writing the snapshot into {}: {e}", dir.display()));
        self.done(started, written)
    }

    fn done(&self, started: Instant, snapshot: Result<Snapshot, String>) -> SnapshotDone {
        SnapshotDone {
            index: self.index,
            term: self.term,
            keep: self.keep,
            keys: self.state.len(),
            snapshot,
            encode_time: started.elapsed(),
        }
    }
}

impl Driver {
    /// Every `snapshot_entries` applied entries: snapshot the state
    /// machine (see [`Driver::snapshot_now`]), unless one is being encoded
    /// or the entries applied since the last one hold fewer bytes than
    /// `1 / SNAPSHOT_LOG_FRACTION` of that snapshot. A snapshot costs the
    /// whole state (encoding, writing, and sending it to a follower that
    /// needs it), so taking one every N entries whatever the state's size
    /// would make each write cost more as the state grows; waiting until
    /// the log behind the last one has grown in proportion keeps the cost
    /// per applied byte flat (about `SNAPSHOT_LOG_FRACTION` bytes
    /// of snapshot per byte of log), and memory within the state plus
    /// `1 / SNAPSHOT_LOG_FRACTION` of it for the log. On a small state the
    /// entry count decides, as before. The count is staggered by node
    /// ([`staggered`]).
    pub(super) fn maybe_snapshot(&mut self, disk: &mut dyn Disk) -> Result<(), DriverError> {
        let every = staggered(self.config.snapshot_entries, self.id);
        let applied = self.raft.last_applied();
        let last = self
            .raft
            .snapshot()
            .map_or(LogIndex(0), |s| s.index)
            .max(self.snapshot_tried);
        if every == 0
            || applied.0 < last.0 + every
            || self.snapshot_encoding.is_some()
            || self.applied_bytes < self.snapshot_bytes / SNAPSHOT_LOG_FRACTION
        {
            return Ok(());
        }
        let keep = self.config.snapshot_keep_entries;
        self.snapshot_now(keep, disk)
    }

    /// Freezes the state machine at the applied index and hands it to the
    /// disk to encode ([`Disk::encode_snapshot`]); once encoded,
    /// [`Driver::snapshot_encoded`] lets the core drop the log behind it
    /// (keeping `keep` entries) and has the disk write it. The event loop
    /// only freezes (O(1)) and, later, compacts: it never encodes. One
    /// snapshot is encoded at a time; a call while one is encoded does
    /// nothing.
    pub fn snapshot_now(&mut self, keep: u64, disk: &mut dyn Disk) -> Result<(), DriverError> {
        let applied = self.raft.last_applied();
        if applied.0 == 0
            || self.snapshot_encoding.is_some()
            || self.raft.snapshot().is_some_and(|s| s.index >= applied)
        {
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
        let job = SnapshotJob {
            index: applied,
            term,
            // The log up to the applied index is committed: the membership
            // there is settled.
            membership: self.raft.membership_at(applied),
            keep,
            state: self.kv.freeze(),
        };
        self.snapshot_encoding = Some(applied);
        self.applied_bytes = 0;
        match disk.encode_snapshot(job)? {
            Some(done) => self.snapshot_encoded(done, disk),
            None => Ok(()),
        }
    }

    /// A snapshot handed out by [`Driver::snapshot_now`] is encoded: the
    /// core keeps it (for followers that fall behind) and drops the log
    /// behind it, and the disk writes it. The log already holds those
    /// entries durably, so nothing waits for the snapshot's own write.
    /// A snapshot overtaken while it was encoded (a leader's installed
    /// since, at a later index) is dropped.
    pub fn snapshot_encoded(
        &mut self,
        done: SnapshotDone,
        disk: &mut dyn Disk,
    ) -> Result<(), DriverError> {
        let SnapshotDone {
            index,
            term,
            keep,
            keys,
            snapshot,
            encode_time,
        } = done;
        assert_eq!(
            self.snapshot_encoding,
            Some(index),
            "{}: snapshot at {index} encoded, but the one handed out is {:?}",
            self.id,
            self.snapshot_encoding
        );
        self.snapshot_encoding = None;
        let snap = match snapshot {
            Ok(snap) => snap,
            Err(e) => {
                // The log still holds every entry: keep it rather than
                // compact it away, and try again after the next
                // `snapshot_entries`.
                warn!("{}: not compacting: {e}", self.id);
                return Ok(());
            }
        };
        if self.raft.snapshot().is_some_and(|s| s.index >= index)
            || self.raft.log().term_at(index) != Some(term)
        {
            info!(
                "{}: dropping the snapshot at {index}/{term}: the node installed a later one while it was encoded",
                self.id
            );
            return Ok(());
        }
        self.snapshot_bytes = snap.data.len() as u64;
        let release = self
            .raft
            .compact(snap.clone(), LogIndex((index.0 + 1).saturating_sub(keep)));
        info!(
            "{}: snapshot at {index}/{term} ({} bytes, {keys} keys, encoded off the event loop in {} ms); log now from {}, {} entries to free",
            self.id,
            snap.data.len(),
            encode_time.as_millis(),
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
        if !self.needs_decode(snap) {
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
        self.snapshot_bytes = snap.data.len() as u64;
        self.applied_bytes = 0;
        self.event(|| DriverEvent::SnapshotInstalled(snap.clone()));
        Ok(())
    }
}

/// The entries node `id` waits between snapshots: `every`, plus an eighth
/// of it for each step of `id mod 4` (node 1 at 1.125 ×, 2 at 1.25 ×, 3 at
/// 1.375 ×). Without it every node of a cluster reaches the same index
/// together and all encode at once: on shared cores three encoders take
/// the CPU the event loops need, and a leader and its followers all push a
/// snapshot to disk at the same moment. Measured at 1 M keys
/// (`scripts/scale.sh`): p999 with snapshots 11.3-13.6 ms staggered,
/// against 15.9-20.0 ms not (10.0-11.8 ms without snapshots).
pub fn staggered(every: u64, id: NodeId) -> u64 {
    every.saturating_add(every / 8 * (id.0 % 4))
}

/// A node's next snapshot waits until the entries applied since its last
/// one hold at least that snapshot's size divided by this (see
/// `Driver::maybe_snapshot`).
pub const SNAPSHOT_LOG_FRACTION: u64 = 2;

/// Snapshot jobs queued for the encoder at most. The driver hands out one
/// at a time, so one is never exceeded; the bound makes a second a bug
/// that shows (`encode` fails) rather than a queue that grows.
const ENCODER_QUEUE_MAX: usize = 1;

/// The node's snapshot encoder: a thread that turns each [`SnapshotJob`]
/// into bytes while the event loop goes on serving, and reports through
/// a channel and the event loop's waker, like the storage thread.
pub(super) struct SnapshotEncoder {
    tx: crossbeam_channel::Sender<SnapshotJob>,
    done: crossbeam_channel::Receiver<SnapshotDone>,
}

impl SnapshotEncoder {
    /// Starts the thread; `wake` is called after each job is encoded.
    pub(super) fn spawn(
        dir: PathBuf,
        fsync: bool,
        wake: Box<dyn Fn() + Send>,
    ) -> std::io::Result<SnapshotEncoder> {
        // With fsync, the file goes to disk at the disk's pace as it is
        // written, so the fsync that makes it durable never holds up the
        // log's.
        let writeback = if fsync {
            Writeback::Throttle
        } else {
            Writeback::None
        };
        let (tx, rx) = crossbeam_channel::bounded::<SnapshotJob>(ENCODER_QUEUE_MAX);
        let (done_tx, done) = crossbeam_channel::bounded(ENCODER_QUEUE_MAX);
        // Not joined: a node that stops drops the job it is encoding, and
        // the thread ends with the process (or when the channel closes).
        std::thread::Builder::new()
            .name("snapshot-encode".into())
            .spawn(move || {
                background_priority();
                for job in rx {
                    let done = job.run_to_file(&dir, writeback);
                    if done_tx.send(done).is_err() {
                        return;
                    }
                    wake();
                }
            })?;
        Ok(SnapshotEncoder { tx, done })
    }

    /// Queues `job`; it comes back through [`SnapshotEncoder::finished`].
    pub(super) fn encode(&self, job: SnapshotJob) -> Result<(), DriverError> {
        self.tx.try_send(job).map_err(|e| {
            DriverError::Snapshot(match e {
                crossbeam_channel::TrySendError::Full(_) => {
                    "a second snapshot handed to the encoder while one is encoded".into()
                }
                crossbeam_channel::TrySendError::Disconnected(_) => {
                    "the snapshot encoder thread has stopped".into()
                }
            })
        })
    }

    /// The next encoded snapshot, if one is ready.
    pub(super) fn finished(&self) -> Option<SnapshotDone> {
        self.done.try_recv().ok()
    }
}

/// Lowers the calling thread's CPU priority (nice 10): a thread that
/// encodes or decodes a snapshot yields the cores to the event loops and
/// the storage threads, which answer clients, whenever both want them.
pub(super) fn background_priority() {
    // SAFETY: gettid and setpriority take plain integers; on failure the
    // thread just keeps its priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
