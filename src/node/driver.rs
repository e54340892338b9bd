//! The driver: everything between the consensus core and the world that is
//! not I/O. It carries out each `Ready` in full (send, persist, send what
//! waited for the persist, tell the core what is durable, apply, answer reads
//! and writes), keeps the key-value state machine and its snapshots, and
//! serves client requests through sessions and waiters.
//!
//! It has no sockets, no clock, no threads: messages and answers go into its
//! outboxes ([`Driver::messages`], [`Driver::answers`]), storage jobs to a
//! [`Disk`]. The node's event loop empties the outboxes onto connections and
//! hands jobs to the storage thread; the simulator empties them onto its
//! simulated network and disk. Both run this one copy of the persistence
//! contract.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use log::{error, info, warn};

use crate::kv::{ClientId, KvStore};
use crate::raft::{self, Entry, LogIndex, Message, MessageBody, NodeId, Raft, Role, Snapshot};
use crate::storage::{Job, Recovered, StorageError};
use crate::wire::ResponseBody;

use super::snapshots::{SnapshotDone, SnapshotJob};

/// `Ready`s carried out per call of [`Driver::process_ready`] at most: each
/// can make another ready (a persisted write releases acknowledgements), so
/// the loop is bounded; what is left waits for the next loop iteration.
pub const READY_ROUNDS_MAX: usize = 16;

/// Where the driver's storage jobs go: the storage thread in a node, a
/// simulated disk in the simulator. A job submitted is reported durable
/// later, in order, through [`Driver::durable`].
pub trait Disk {
    /// Queues `job`; it becomes durable later, after every job before it.
    fn submit(&mut self, job: Job) -> Result<(), DriverError>;
    /// Writes `job` durably now, on the caller's thread (`Ok(true)`), or
    /// declines (`Ok(false)`: a disk fault is in force, or the disk is
    /// full; the caller submits it instead). Called only while every job
    /// submitted before it is durable.
    fn write_inline(&mut self, job: &Job) -> Result<bool, DriverError>;
    /// Encodes a snapshot of the frozen state machine: here and now
    /// (`Some`, the default: the simulator, tests), or elsewhere (`None`:
    /// the node's encoder thread), the caller then handing the result to
    /// [`Driver::snapshot_encoded`].
    fn encode_snapshot(&mut self, job: SnapshotJob) -> Result<Option<SnapshotDone>, DriverError> {
        Ok(Some(job.run()))
    }
}

/// Why the driver cannot go on: storage failed. The node stops (a write
/// that failed cannot be retried and carried on from).
#[derive(Debug)]
pub enum DriverError {
    Storage(StorageError),
    /// A leader's snapshot that the core accepted does not decode.
    Snapshot(String),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Storage(e) => write!(f, "storage: {e}"),
            DriverError::Snapshot(e) => write!(f, "snapshot: {e}"),
        }
    }
}

impl std::error::Error for DriverError {}

/// Who waits for an answer: a connection (the node's token, the
/// simulator's client number) and the request id it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRef {
    pub conn: u64,
    pub request_id: u64,
}

/// An answer for a client, in the driver's outbox.
#[derive(Clone, Debug)]
pub struct Answer {
    pub to: ClientRef,
    pub body: ResponseBody,
}

/// What the driver did that an observer (the simulator's checks) follows;
/// recorded only when [`Driver::record_events`] is set.
#[derive(Clone, Debug)]
pub enum DriverEvent {
    /// The node became leader of this term.
    Elected { term: raft::Term },
    /// A committed entry was applied to the state machine.
    Applied(Entry),
    /// The node snapshotted its own state machine at this index.
    SnapshotTaken(Snapshot),
    /// The node replaced its state machine with a leader's snapshot.
    SnapshotInstalled(Snapshot),
}

/// Settings of the driver that come from cluster.toml.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Snapshot after this many applied entries (0: never).
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot.
    pub snapshot_keep_entries: u64,
    /// Client addresses of the nodes, for NotLeader's hint.
    pub addrs: Vec<(NodeId, String)>,
}

/// A read waiting for its ReadIndex round or for the apply to reach it.
pub(super) struct ReadWaiter {
    pub(super) to: ClientRef,
    pub(super) key: Vec<u8>,
}

/// A storage job's number, the last entry it writes, and the messages
/// that wait for it.
type AfterDurable = (u64, Option<(LogIndex, raft::Term)>, Vec<Message>);

pub struct Driver {
    pub(super) id: NodeId,
    pub(super) raft: Raft,
    pub(super) kv: KvStore,
    pub(super) config: DriverConfig,
    /// Jobs sent to the disk, and the highest one known durable.
    /// Invariant: `storage_durable <= storage_seq`.
    storage_seq: u64,
    storage_durable: u64,
    /// Per storage job not yet durable, oldest first: the last entry it
    /// writes, and the messages that wait for it (acknowledgements, votes).
    after_durable: VecDeque<AfterDurable>,
    /// Writes proposed and waiting to be applied, by (client, seq): every
    /// copy of a request (a retry sent while the first is pending) waits,
    /// and each gets the answer.
    pub(super) waiting_writes: HashMap<(ClientId, u64), Vec<ClientRef>>,
    /// ReadIndex requests sent to the core, by read id.
    pub(super) waiting_reads: IdMap<u64, ReadWaiter>,
    /// Reads confirmed by a quorum, waiting for `last_applied` to reach them.
    pub(super) confirmed_reads: Vec<(LogIndex, ReadWaiter)>,
    pub(super) next_read_id: u64,
    /// Where the last snapshot was taken, or tried (one that could not be
    /// written is not tried again before `snapshot_entries` more).
    pub(super) snapshot_tried: LogIndex,
    /// Bytes of the entries applied since the last snapshot was handed
    /// out (or installed), and the size of the last snapshot: see
    /// `Driver::maybe_snapshot`.
    pub(super) applied_bytes: u64,
    pub(super) snapshot_bytes: u64,
    /// The index of the snapshot handed out to be encoded and not back yet
    /// (at most one at a time).
    pub(super) snapshot_encoding: Option<LogIndex>,
    /// The state of the last snapshot a peer sent, decoded when it arrived.
    pub(super) decoded_snapshot: Option<(LogIndex, raft::Term, KvStore)>,
    /// Reused to encode a proposed command.
    pub(super) entry_buf: Vec<u8>,
    /// Messages to send, in order; the caller empties it after each call.
    pub messages: Vec<Message>,
    /// Answers to clients; the caller empties it after each call.
    pub answers: Vec<Answer>,
    /// Membership changes proposed for clients, waiting to complete.
    pub(super) conf_waiting: Vec<super::members::ConfWaiter>,
    /// The membership in force, when it changed since the caller last
    /// took it (the node keeps links to every member).
    pub new_membership: Option<raft::Membership>,
    /// Record [`DriverEvent`]s into `events` (the simulator's checks).
    pub record_events: bool,
    pub events: Vec<DriverEvent>,
    /// Why the disk refuses writes (full), while it does; set by the node
    /// from its storage thread. Client writes are refused meanwhile.
    pub disk_full: Option<String>,
    /// Ticks since a storage job last became durable, while one is
    /// outstanding (0 while the disk is idle): how long this node's own
    /// log has been stuck.
    storage_stuck_ticks: u32,
    /// Ticks since the commit index last moved, while the log holds
    /// entries past it (0 otherwise), and the commit index last seen.
    commit_stuck_ticks: u32,
    commit_seen: LogIndex,
}

impl Driver {
    /// A driver for a node restarting from what storage recovered.
    pub fn restore(
        raft_config: raft::Config,
        recovered: Recovered,
        config: DriverConfig,
    ) -> Result<Driver, DriverError> {
        let Recovered {
            hard_state,
            entries,
            snapshot,
            ..
        } = recovered;
        let snapshot_len = snapshot.as_ref().map_or(0, |s| s.data.len() as u64);
        let kv = match &snapshot {
            Some(snap) => kv_of_snapshot(snap).map_err(DriverError::Snapshot)?,
            None => KvStore::new(),
        };
        let id = raft_config.id;
        let raft = Raft::restore(raft_config, hard_state, snapshot, entries);
        Ok(Driver {
            id,
            raft,
            kv,
            config,
            storage_seq: 0,
            storage_durable: 0,
            after_durable: VecDeque::new(),
            waiting_writes: HashMap::new(),
            waiting_reads: IdMap::default(),
            confirmed_reads: Vec::new(),
            next_read_id: 1,
            snapshot_tried: LogIndex(0),
            applied_bytes: 0,
            snapshot_bytes: snapshot_len,
            snapshot_encoding: None,
            decoded_snapshot: None,
            entry_buf: Vec::new(),
            messages: Vec::new(),
            answers: Vec::new(),
            conf_waiting: Vec::new(),
            new_membership: None,
            record_events: false,
            events: Vec::new(),
            disk_full: None,
            storage_stuck_ticks: 0,
            commit_stuck_ticks: 0,
            commit_seen: LogIndex(0),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// One unit of logical time for the core, and for the watch on this
    /// node's own disk.
    pub fn tick(&mut self) {
        self.raft.tick();
        let commit = self.raft.commit_index();
        if commit != self.commit_seen || self.raft.log().last_index() == commit {
            self.commit_seen = commit;
            self.commit_stuck_ticks = 0;
        } else {
            self.commit_stuck_ticks = self.commit_stuck_ticks.saturating_add(1);
        }
        if self.storage_idle() {
            self.storage_stuck_ticks = 0;
        } else {
            self.storage_stuck_ticks = self.storage_stuck_ticks.saturating_add(1);
            self.maybe_hand_over_stuck_leadership();
        }
    }

    /// A leader whose own log has finished no write for an election
    /// timeout (a stalled or full disk) while it cannot serve (its disk is
    /// full, so it refuses writes; or nothing has committed in that time)
    /// hands leadership to the voter furthest along: its followers, whose
    /// disks work, lead better. While its followers commit without it, a
    /// stalled leader keeps leading: it serves, and a slow fsync is no
    /// reason for an election. Checked once per election timeout: a
    /// transfer that fails (no follower has the whole log) is tried again
    /// one timeout later.
    fn maybe_hand_over_stuck_leadership(&mut self) {
        let timeout = self.raft.config().election_timeout_ticks_max.max(1);
        if self.raft.role() != Role::Leader
            || self.raft.lead_transferee().is_some()
            || !self.storage_stuck_ticks.is_multiple_of(timeout)
        {
            return;
        }
        let cannot_serve = self.disk_full.is_some() || self.commit_stuck_ticks >= timeout;
        if !cannot_serve {
            return;
        }
        let me = self.id;
        let heir = self
            .raft
            .status()
            .peers
            .iter()
            .filter(|p| p.id != me && self.raft.membership().is_voter(p.id))
            .max_by_key(|p| p.match_index)
            .map(|p| p.id);
        let Some(heir) = heir else {
            return; // alone: nobody to hand over to
        };
        warn!(
            "{} t{}: own log stuck for {} ticks (its disk has finished no write in an \
             election timeout) and {}; handing leadership to {heir}",
            self.id,
            self.raft.current_term(),
            self.storage_stuck_ticks,
            match &self.disk_full {
                Some(_) => "the disk is full".to_string(),
                None => format!("nothing committed for {} ticks", self.commit_stuck_ticks),
            }
        );
        if let Err(e) = self.raft.transfer_leadership(heir) {
            warn!("{}: cannot hand leadership to {heir}: {e}", self.id);
        }
    }

    /// A message from a peer. An InstallSnapshot whose state does not
    /// decode is refused here (`Err`: the caller closes that link), so the
    /// core never switches to a state the node cannot load.
    pub fn step(&mut self, m: Message) -> Result<(), String> {
        if let MessageBody::InstallSnapshot { snapshot, .. } = &m.body {
            self.decode_snapshot(m.from, snapshot)?;
        }
        self.step_core(m);
        Ok(())
    }

    /// Steps the core; a decoded snapshot it did not take (a message of an
    /// old term) is let go at once rather than held until the next one.
    fn step_core(&mut self, m: Message) {
        self.raft.step(m);
        if let Some((index, _, _)) = &self.decoded_snapshot {
            if self.raft.commit_index() < *index {
                self.decoded_snapshot = None;
            }
        }
    }

    /// An InstallSnapshot whose state was decoded already, off the event
    /// loop (`kv`): as [`Driver::step`] without decoding it again.
    pub fn step_decoded(&mut self, m: Message, kv: KvStore) {
        if let MessageBody::InstallSnapshot { snapshot, .. } = &m.body {
            if self.needs_decode(snapshot) {
                self.decoded_snapshot = Some((snapshot.index, snapshot.term, kv));
            }
        }
        self.step_core(m);
    }

    /// Whether an InstallSnapshot of `snap` would be taken, so that its
    /// state needs decoding (one at or behind the commit index is only
    /// acknowledged).
    pub fn needs_decode(&self, snap: &crate::raft::Snapshot) -> bool {
        snap.index > self.raft.commit_index()
    }

    /// Whether every job handed to the disk has been reported durable.
    pub fn storage_idle(&self) -> bool {
        self.storage_durable == self.storage_seq
    }

    /// Carries out the core's `Ready`s, each in full and in order:
    ///
    /// 1. messages that may go now (a leader's AppendEntries: they promise
    ///    nothing that is not durable);
    /// 2. a leader's snapshot replaces the state machine;
    /// 3. hard state, snapshot and entries go to the disk as one job; the
    ///    messages that speak for them (votes, acknowledgements, a new term)
    ///    wait for that job, and so does telling the core it is durable;
    /// 4. committed entries are applied and their writers answered; reads
    ///    confirmed by a quorum are answered once applied up to their index.
    pub fn process_ready(&mut self, disk: &mut dyn Disk) -> Result<(), DriverError> {
        for _ in 0..READY_ROUNDS_MAX {
            if !self.raft.has_ready() {
                return Ok(());
            }
            let rd = self.raft.ready();
            if let Some(m) = &rd.membership {
                self.new_membership = Some(m.clone());
            }
            // Before a lost leadership fails the waiters: a change that
            // removed this leader completes in the entries it committed.
            self.conf_committed(&rd.committed_entries);
            if let Some(ss) = rd.soft_state {
                info!(
                    "{} t{}: {} (leader {})",
                    self.id,
                    ss.term,
                    ss.role,
                    ss.leader.map_or("none".into(), |l| l.to_string())
                );
                if ss.role == Role::Leader {
                    self.event(|| DriverEvent::Elected { term: ss.term });
                } else {
                    self.fail_waiting();
                }
            }
            let must_persist = rd.must_persist();
            self.messages.extend(rd.messages);
            if let Some(snap) = &rd.snapshot {
                self.install_snapshot(snap)?;
            }
            if must_persist {
                self.storage_seq += 1;
                let last = rd
                    .entries
                    .last()
                    .map(|e| (e.index, e.term))
                    .or(rd.snapshot.as_ref().map(|s| (s.index, s.term)));
                let job = Job {
                    seq: self.storage_seq,
                    hard_state: rd.hard_state,
                    snapshot: rd.snapshot,
                    entries: rd.entries,
                    release: Vec::new(),
                };
                let idle = self.storage_seq == self.storage_durable + 1;
                // Nothing else in flight: a vote, or one entry right after
                // the commit index (one client waiting, nothing to batch).
                let lone = job.snapshot.is_none()
                    && match &job.entries[..] {
                        [] => true,
                        [e] => e.index == self.raft.commit_index().next(),
                        _ => false,
                    };
                self.after_durable
                    .push_back((self.storage_seq, last, rd.messages_after_persist));
                // Such a job, at a follower whose disk is idle, is written
                // here and answered at once, saving two thread hand-offs.
                // Everything else is queued: the next batch is read while
                // this one is written, and the leader's write runs in
                // parallel with the replication sent above.
                if self.raft.role() != Role::Leader && idle && lone && disk.write_inline(&job)? {
                    self.durable(self.storage_seq);
                } else {
                    disk.submit(job)?;
                }
            } else if !rd.messages_after_persist.is_empty() {
                if self.storage_seq > self.storage_durable {
                    // They may speak for entries still on their way to disk.
                    self.after_durable.push_back((
                        self.storage_seq,
                        None,
                        rd.messages_after_persist,
                    ));
                } else {
                    self.send_or_loop_back(rd.messages_after_persist);
                }
            }
            for e in rd.committed_entries {
                self.apply(e);
            }
            self.maybe_snapshot(disk)?;
            for rs in rd.read_states {
                if let Some(w) = self.waiting_reads.remove(&rs.id) {
                    self.confirmed_reads.push((rs.index, w));
                }
            }
            self.answer_reads();
            self.check_invariants();
        }
        Ok(())
    }

    /// What must hold between `Ready`s (cheap enough to stay on in
    /// production): jobs are reported durable in order and never past what
    /// was submitted; the state machine is exactly where the core says it
    /// applied to; nothing waits for a job that is already durable.
    fn check_invariants(&self) {
        assert!(
            self.storage_durable <= self.storage_seq,
            "{}: job {} durable, only {} submitted",
            self.id,
            self.storage_durable,
            self.storage_seq
        );
        if let (Some(first), Some(last)) = (self.after_durable.front(), self.after_durable.back()) {
            assert!(
                self.storage_durable < first.0 && first.0 <= last.0 && last.0 <= self.storage_seq,
                "{}: held-back messages wait for jobs {}..={} with {} durable and {} submitted",
                self.id,
                first.0,
                last.0,
                self.storage_durable,
                self.storage_seq
            );
        }
        assert_eq!(
            self.kv.last_applied(),
            self.raft.last_applied(),
            "{}: the state machine is at {}, the core applied {}",
            self.id,
            self.kv.last_applied(),
            self.raft.last_applied()
        );
    }

    /// The disk reports every job up to `seq` durable: tell the core, and
    /// send what waited for it.
    pub fn durable(&mut self, seq: u64) {
        assert!(
            seq <= self.storage_seq,
            "{}: durable up to job {seq}, but only {} were submitted",
            self.id,
            self.storage_seq
        );
        if seq > self.storage_durable {
            self.storage_stuck_ticks = 0;
        }
        self.storage_durable = self.storage_durable.max(seq);
        while self
            .after_durable
            .front()
            .is_some_and(|(s, _, _)| *s <= self.storage_durable)
        {
            let Some((_, last, msgs)) = self.after_durable.pop_front() else {
                break;
            };
            if let Some((index, term)) = last {
                self.raft.persisted(index, term);
            }
            self.send_or_loop_back(msgs);
        }
    }

    /// Messages go to the outbox, except a candidate's vote for itself,
    /// which the core receives back now that it is durable.
    fn send_or_loop_back(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.to == self.id {
                self.raft.step(m);
            } else {
                self.messages.push(m);
            }
        }
    }

    /// Queues a job of the driver's own (a snapshot) behind the others.
    pub(super) fn submit_own(
        &mut self,
        job_of: impl FnOnce(u64) -> Job,
        disk: &mut dyn Disk,
    ) -> Result<(), DriverError> {
        self.storage_seq += 1;
        self.after_durable
            .push_back((self.storage_seq, None, Vec::new()));
        disk.submit(job_of(self.storage_seq))
    }

    pub(super) fn answer(&mut self, to: ClientRef, body: ResponseBody) {
        self.answers.push(Answer { to, body });
    }

    pub(super) fn event(&mut self, e: impl FnOnce() -> DriverEvent) {
        if self.record_events {
            self.events.push(e());
        }
    }

    /// A decoding failure of an applied entry is logged: every replica
    /// applies it as nothing alike.
    pub(super) fn log_apply_error(&self, why: &str) {
        error!("{}: {why}", self.id);
    }

    /// The proposal data of a command: one allocation, shared from here on
    /// by the log, the storage job, the followers' AppendEntries and the
    /// apply.
    pub(super) fn entry_data(&self) -> Arc<[u8]> {
        Arc::from(&self.entry_buf[..])
    }
}

/// A map keyed by numbers this node hands out itself (connection tokens,
/// read ids), looked up several times per request: they need no defence
/// against chosen keys, so one multiplication replaces SipHash.
pub(super) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 << 8 | b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits
        // that the table's control bytes use, and keeps the low bits apart.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// The key-value state a snapshot holds, which must be the state at the
/// snapshot's index.
pub fn kv_of_snapshot(snap: &Snapshot) -> Result<KvStore, String> {
    let view = snap.data.view().map_err(|e| {
        format!(
            "the snapshot at {}/{} cannot be read: {e}",
            snap.index, snap.term
        )
    })?;
    let kv = KvStore::restore((*view).as_ref()).map_err(|e| {
        format!(
            "the snapshot at {}/{} does not decode: {e}",
            snap.index, snap.term
        )
    })?;
    if kv.last_applied() != snap.index {
        return Err(format!(
            "the snapshot at {}/{} holds the state at {}",
            snap.index,
            snap.term,
            kv.last_applied()
        ));
    }
    Ok(kv)
}
