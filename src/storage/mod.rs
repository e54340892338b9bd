//! Durable state of one node: the Raft log as a segmented write-ahead log,
//! the hard state (term and vote), the latest snapshot of the state
//! machine, and a `meta` file naming the node and cluster the data dir
//! belongs to.
//!
//! ```text
//! <data_dir>/meta        which node of which cluster (written once)
//! <data_dir>/hardstate   current term and vote (replaced atomically)
//! <data_dir>/snapshot    the state machine up to some index (replaced atomically)
//! <data_dir>/wal/*.wal   log segments, named by their first index
//! ```
//!
//! Writes go through a [`StorageThread`]: the event loop hands it jobs and
//! goes on; the thread batches every job that queued up while its previous
//! write ran into one durable write (group commit): one `O_DIRECT | O_DSYNC`
//! write where the file system allows it, else `pwrite` + `fdatasync`. It
//! then reports the batch durable and wakes the event loop. docs/STORAGE.md has
//! the byte layout and the recovery rules.

pub mod direct;
pub mod faulty;
pub mod files;
pub mod mem;
pub mod thread;
pub mod wal;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use log::info;

pub use faulty::{DiskFault as InjectedDiskFault, DiskFaults, FaultyStore};
pub use files::Meta;
pub use mem::MemStore;
pub use thread::{write_jobs, Durable, Job, StorageStats, StorageThread};
pub use wal::{LogStart, ScanMode, Wal, WalOptions, WalStats};

use crate::raft::{Entry, HardState, Snapshot};

/// Storage that cannot be read or written.
#[derive(Debug)]
pub enum StorageError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Damaged data: the file, the byte offset and what is wrong.
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// The data dir was made by another node or for another cluster.
    WrongOwner {
        dir: PathBuf,
        found: Meta,
        expected: Meta,
    },
    /// A writer panicked or stopped part way: what it left on disk is
    /// unknown, so nothing may be written, or claimed durable, after it.
    Stopped {
        what: &'static str,
    },
}

impl StorageError {
    pub fn io(path: &Path, source: io::Error) -> StorageError {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A write refused for want of space (ENOSPC): nothing was made
    /// durable, and the same write may be tried again once space returns.
    /// Never an fsync's failure: those are marked (`files::sync_error`) and
    /// stop the node.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }

    pub fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            what: what.into(),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StorageError::Corrupt { path, offset, what } => write!(
                f,
                "{}: offset {offset}: {what}.\n  The node refuses to start: the data from here on may hold \
                 committed entries, and dropping them silently could lose acknowledged writes.\n  \
                 What you can do: restore the data dir from a backup; or inspect it with \
                 `raft-ctl wal-dump DIR`, and if you accept losing this node's entries from \
                 this point on (the cluster still has every committed entry while a majority of \
                 nodes is healthy), cut them with `raft-ctl wal-repair DIR` and restart.",
                path.display()
            ),
            StorageError::WrongOwner {
                dir,
                found,
                expected,
            } => write!(
                f,
                "{}: this data dir belongs to node {} of cluster {:?}, not to node {} of cluster {:?}; \
                 point the node at its own data_dir (cluster.toml) or move this one away",
                dir.display(),
                found.node_id,
                found.cluster,
                expected.node_id,
                expected.cluster
            ),
            StorageError::Stopped { what } => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What a restarting node gets back.
#[derive(Debug)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The latest snapshot saved, if any.
    pub snapshot: Option<Snapshot>,
    /// The log after the snapshot (from index 1 without one).
    pub entries: Vec<Entry>,
    /// The data dir was new (missing or empty).
    pub fresh: bool,
}

/// Where a node's writes go; the storage thread owns it.
pub trait LogStore: Send + 'static {
    /// Replaces the hard state, durably, before returning.
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError>;
    /// Appends entries (truncating on conflict); durable after `sync`.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    /// Makes every append so far durable.
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Makes every append so far durable, replaces the snapshot durably,
    /// then drops the log entries it makes unnecessary: up to its index if
    /// the log holds its last entry, else the whole log, which then goes on
    /// at `snap.index + 1`. `snap` is not older than the snapshot saved
    /// before it.
    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError>;
    /// As `save_snapshot`, but where the log already holds the snapshot's
    /// last entry durably (a node's own snapshot), the snapshot file and
    /// the removal of the segments it covers may be finished on another
    /// thread: a snapshot of entries the log holds adds nothing durable,
    /// so nothing needs to wait for it, and writing it and removing a
    /// 64 MiB segment take tens of milliseconds that would stall every
    /// commit.
    fn save_snapshot_background(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        self.save_snapshot(snap)
    }
    /// The file the next `sync` makes durable, for error messages.
    fn sync_path(&self) -> PathBuf {
        PathBuf::from("(in memory)")
    }
}

/// A node's data dir on disk.
pub struct DiskStore {
    dir: PathBuf,
    wal: Wal,
    fsync: bool,
    /// Writes snapshots of entries the log holds, and removes the segments
    /// they cover, off the storage thread (`save_snapshot_background`).
    background: Option<SnapshotWriter>,
}

const WAL_DIR: &str = "wal";

impl DiskStore {
    /// Opens `dir` for the node `owner`, creating it if missing or empty, and
    /// recovers its state. Refuses a dir of another node or cluster, and
    /// damaged data, with an error that says where and what to do.
    pub fn open(
        dir: &Path,
        owner: &Meta,
        opts: WalOptions,
    ) -> Result<(DiskStore, Recovered), StorageError> {
        let meta = files::read_meta(dir)?;
        let fresh = meta.is_none();
        match meta {
            Some(found) => {
                if &found != owner {
                    return Err(StorageError::WrongOwner {
                        dir: dir.to_path_buf(),
                        found,
                        expected: owner.clone(),
                    });
                }
            }
            None => Self::init(dir, owner, opts)?,
        }
        // A snapshot being encoded or received when the node stopped: the
        // log (or the leader) still has what it held.
        match files::remove_snapshot_leftovers(dir) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "{}: removed {n} unfinished snapshot file(s) left by a stop",
                dir.display()
            ),
            Err(e) => return Err(StorageError::io(dir, e)),
        }
        let hs_path = dir.join(files::HARDSTATE_FILE);
        let hard_state = match files::read_hardstate(dir)? {
            Some(hs) => hs,
            None => {
                return Err(StorageError::corrupt(
                    &hs_path,
                    0,
                    "the hard state file is missing (it is written before `meta`)",
                ))
            }
        };
        let snapshot = files::read_snapshot(dir)?;
        let (wal, entries) = Wal::open_at(
            &dir.join(WAL_DIR),
            opts,
            ScanMode::Strict,
            snapshot.as_ref().map(|s| (s.index.0, s.term)),
        )?;
        // The hard state is written before any entry or snapshot of a
        // batch, so its term is never behind theirs.
        let newest = entries
            .last()
            .map(|e| (e.term, "the last log entry's", e.index))
            .or_else(|| {
                snapshot
                    .as_ref()
                    .map(|s| (s.term, "the snapshot's", s.index))
            });
        if let Some((term, whose, index)) = newest {
            if term > hard_state.current_term {
                return Err(StorageError::corrupt(
                    &hs_path,
                    16,
                    format!(
                        "current term {} is older than {whose} term {term} (entry {index})",
                        hard_state.current_term
                    ),
                ));
            }
        }
        Ok((
            DiskStore {
                dir: dir.to_path_buf(),
                wal,
                fsync: opts.fsync,
                background: None,
            },
            Recovered {
                hard_state,
                snapshot,
                entries,
                fresh,
            },
        ))
    }

    /// A new data dir: the log dir and the hard state first, `meta` last, so
    /// a dir without `meta` never holds anything a node acknowledged.
    fn init(dir: &Path, owner: &Meta, opts: WalOptions) -> Result<(), StorageError> {
        let wal_dir = dir.join(WAL_DIR);
        if let Ok(scan) = wal::scan(&wal_dir, ScanMode::Strict) {
            if !scan.entries.is_empty() {
                return Err(StorageError::corrupt(
                    &dir.join(files::META_FILE),
                    0,
                    format!(
                        "the meta file is missing but {} holds {} log entries",
                        wal_dir.display(),
                        scan.entries.len()
                    ),
                ));
            }
        }
        if let Some(snap) = files::read_snapshot(dir)? {
            return Err(StorageError::corrupt(
                &dir.join(files::META_FILE),
                0,
                format!(
                    "the meta file is missing but a snapshot up to index {} is present",
                    snap.index
                ),
            ));
        }
        if let Some(hs) = files::read_hardstate(dir)? {
            if hs.current_term.0 > 0 {
                return Err(StorageError::corrupt(
                    &dir.join(files::META_FILE),
                    0,
                    format!(
                        "the meta file is missing but the hard state holds term {}",
                        hs.current_term
                    ),
                ));
            }
        }
        info!(
            "{}: new data dir for node {} of cluster {:?}",
            dir.display(),
            owner.node_id,
            owner.cluster
        );
        fs::create_dir_all(&wal_dir).map_err(|e| StorageError::io(&wal_dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            if opts.fsync {
                files::fsync_dir(parent).map_err(|e| StorageError::io(parent, e))?;
            }
        }
        files::atomic_write(
            dir,
            files::HARDSTATE_FILE,
            &files::encode_hardstate(&HardState::default()),
            opts.fsync,
        )
        .map_err(|e| StorageError::io(&dir.join(files::HARDSTATE_FILE), e))?;
        files::atomic_write(
            dir,
            files::META_FILE,
            &files::encode_meta(owner),
            opts.fsync,
        )
        .map_err(|e| StorageError::io(&dir.join(files::META_FILE), e))?;
        Ok(())
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Waits until every snapshot handed to the background writer is
    /// durable and the segments it covers are removed; reports its
    /// failure, if any.
    pub fn wait_snapshots(&mut self) -> Result<(), StorageError> {
        match &mut self.background {
            Some(w) => w.wait_idle(),
            None => Ok(()),
        }
    }
}

/// One snapshot for the background writer: write it durably, then remove
/// the segments it covers.
struct SnapshotTask {
    snap: Snapshot,
    segments: Vec<PathBuf>,
}

/// A thread that writes snapshots and removes segments in the order they
/// are handed over, so that an older snapshot never replaces a newer one.
struct SnapshotWriter {
    tx: Option<crossbeam_channel::Sender<SnapshotTask>>,
    /// One message per finished task: its failure, if any.
    done: crossbeam_channel::Receiver<Option<StorageError>>,
    outstanding: usize,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SnapshotWriter {
    fn spawn(dir: PathBuf, wal_dir: PathBuf, fsync: bool) -> io::Result<SnapshotWriter> {
        let (tx, rx) = crossbeam_channel::unbounded::<SnapshotTask>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let handle = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                for task in rx {
                    let t0 = std::time::Instant::now();
                    let r = files::write_snapshot(&dir, &task.snap, fsync).and_then(|()| {
                        let t1 = std::time::Instant::now();
                        wal::remove_segments(&wal_dir, &task.segments, fsync)?;
                        info!(
                            "{}: snapshot at {}/{} saved ({} bytes) in {} µs; {} segments it covers removed in {} µs",
                            dir.display(),
                            task.snap.index,
                            task.snap.term,
                            task.snap.data.len(),
                            (t1 - t0).as_micros(),
                            task.segments.len(),
                            t1.elapsed().as_micros()
                        );
                        Ok(())
                    });
                    if done_tx.send(r.err()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(SnapshotWriter {
            tx: Some(tx),
            done,
            outstanding: 0,
            handle: Some(handle),
        })
    }

    fn submit(&mut self, task: SnapshotTask) -> Result<(), StorageError> {
        self.collect(false)?;
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(task).is_ok());
        if !sent {
            return Err(writer_stopped());
        }
        self.outstanding += 1;
        Ok(())
    }

    /// Takes the reports of finished tasks (all of them when `wait`);
    /// the first failure is returned.
    fn collect(&mut self, wait: bool) -> Result<(), StorageError> {
        while self.outstanding > 0 {
            let report = if wait {
                self.done.recv().ok()
            } else {
                match self.done.try_recv() {
                    Ok(r) => Some(r),
                    Err(crossbeam_channel::TryRecvError::Empty) => return Ok(()),
                    Err(crossbeam_channel::TryRecvError::Disconnected) => None,
                }
            };
            self.outstanding -= 1;
            match report {
                Some(None) => {}
                Some(Some(e)) => return Err(e),
                None => return Err(writer_stopped()),
            }
        }
        Ok(())
    }

    fn wait_idle(&mut self) -> Result<(), StorageError> {
        self.collect(true)
    }
}

fn writer_stopped() -> StorageError {
    StorageError::Stopped {
        what: "the snapshot writer has stopped",
    }
}

impl Drop for SnapshotWriter {
    /// Finishes what was handed over, then joins the thread.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl LogStore for DiskStore {
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        files::atomic_write(
            &self.dir,
            files::HARDSTATE_FILE,
            &files::encode_hardstate(hs),
            self.fsync,
        )
        .map_err(|e| StorageError::io(&self.dir.join(files::HARDSTATE_FILE), e))
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.wal.append(entries)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.wal.sync()
    }

    fn sync_path(&self) -> PathBuf {
        self.wal.current_path().to_path_buf()
    }

    /// In this order: the appends before it (which compaction may cut
    /// around), the snapshot file, and only then the log's compaction, so
    /// that no segment is removed before the snapshot that replaces it is
    /// durable.
    fn save_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        // An older snapshot still being written must not land after this.
        self.wait_snapshots()?;
        self.wal.sync()?;
        files::write_snapshot(&self.dir, snap, self.fsync)?;
        self.wal.compact(snap.index.0, snap.term)
    }

    fn save_snapshot_background(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        self.wal.sync()?;
        if !self.wal.continues(snap.index.0, snap.term)? {
            // The log is of another history and must be reset before the
            // next append: everything in order, here.
            return self.save_snapshot(snap);
        }
        // The log holds every entry the snapshot covers, durably: until
        // the snapshot file is durable, recovery still has them. The
        // segments it covers leave the log now and the disk after it.
        let segments = self.wal.detach_through(snap.index.0);
        let writer = match &mut self.background {
            Some(w) => w,
            None => self.background.insert(
                SnapshotWriter::spawn(self.dir.clone(), self.dir.join(WAL_DIR), self.fsync)
                    .map_err(|e| StorageError::io(&self.dir, e))?,
            ),
        };
        writer.submit(SnapshotTask {
            snap: snap.clone(),
            segments,
        })
    }
}

/// Reads a stopped node's data dir without changing it.
pub fn inspect(dir: &Path) -> Result<Inspection, StorageError> {
    let meta = files::read_meta(dir)?;
    let hard_state = files::read_hardstate(dir)?;
    let snapshot = files::read_snapshot(dir)?;
    let start = match snapshot {
        Some(_) => LogStart::AfterSnapshot,
        None => LogStart::AtOne,
    };
    let scan = wal::scan_with(&dir.join(WAL_DIR), ScanMode::Strict, start)?;
    Ok(Inspection {
        meta,
        hard_state,
        snapshot,
        scan,
    })
}

/// Cuts the log at its first bad record (operator repair), keeping the
/// hard state and the snapshot. Returns the index the log now ends at
/// (the snapshot's, if no entry follows it). A log that does not continue
/// the snapshot is reset to start after it, as the node would do at start.
pub fn repair(dir: &Path) -> Result<u64, StorageError> {
    let snapshot = files::read_snapshot(dir)?;
    let (wal, _) = Wal::open_at(
        &dir.join(WAL_DIR),
        WalOptions::default(),
        ScanMode::CutAtFirstError,
        snapshot.as_ref().map(|s| (s.index.0, s.term)),
    )?;
    Ok(wal.last_index())
}

/// What `inspect` found.
#[derive(Debug)]
pub struct Inspection {
    pub meta: Option<Meta>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    /// The whole log, including entries the snapshot already covers.
    pub scan: wal::Scan,
}
