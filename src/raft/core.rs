//! `Raft`: the consensus state machine. Events go in (`tick`, `step`,
//! `propose`, `read_index`, `persisted`), and `ready()` hands out what to do
//! as plain data. It never touches a clock, a socket, a file or a thread.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use log::{debug, info};

use super::log::RaftLog;
use super::membership::{ConfChange, Membership, VoteResult};
use super::message::{Message, MessageBody, RejectHint};
use super::progress::Progress;
use super::types::{
    Entry, EntryKind, HardState, LogIndex, NodeId, PeerStatus, ProgressState, Role, Snapshot,
    Status, Term,
};
use crate::rng::Rng;

/// Settings of one core. Times are in ticks; the driver decides how long a
/// tick is (raft-node: `tick_ms` of cluster.toml; the simulator: one step).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The voters that form the cluster on its first start (cluster.toml's
    /// `initial_members`): the membership until the log or a snapshot
    /// holds one. A node need not be among them (it then waits to be
    /// added).
    pub voters: Vec<NodeId>,
    /// Addresses of the initial voters, recorded in the membership.
    pub initial_addrs: BTreeMap<NodeId, String>,
    /// A learner this many entries or more behind the leader's log is
    /// not promoted.
    pub promote_lag_entries_max: u64,
    /// Election timeouts are drawn from `[min, max)` after every reset.
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    /// The leader sends heartbeats this often; must be below the election
    /// timeout minimum.
    pub heartbeat_interval_ticks: u32,
    /// Upper bound on the entry bytes of one AppendEntries (at least one
    /// entry is always sent).
    pub append_bytes_max: usize,
    /// AppendEntries in flight per follower while pipelining.
    pub inflight_msgs_max: usize,
    /// Committed entries handed out by one `ready()`.
    pub committed_entries_max: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Seed of the core's RNG (election timeouts).
    pub seed: u64,
}

impl Config {
    /// Defaults for tests: 10..20 ticks election, heartbeat every 2 ticks.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            initial_addrs: BTreeMap::new(),
            promote_lag_entries_max: 1000,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            append_bytes_max: 1 << 20,
            inflight_msgs_max: 64,
            committed_entries_max: 4096,
            pre_vote: true,
            check_quorum: true,
            seed: id.0,
        }
    }

    fn validate(&self) {
        assert!(
            self.election_timeout_ticks_min < self.election_timeout_ticks_max,
            "election timeout range [{}, {}) is empty",
            self.election_timeout_ticks_min,
            self.election_timeout_ticks_max
        );
        assert!(
            self.heartbeat_interval_ticks >= 1
                && self.heartbeat_interval_ticks < self.election_timeout_ticks_min,
            "heartbeat {} ticks must be in [1, election min {})",
            self.heartbeat_interval_ticks,
            self.election_timeout_ticks_min
        );
        assert!(
            self.inflight_msgs_max >= 1,
            "inflight_msgs_max must be at least 1"
        );
    }
}

/// A linearizable read confirmed by a quorum: it may be answered once the
/// state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id given to `read_index`.
    pub id: u64,
    /// The leader's commit index when the read arrived.
    pub index: LogIndex,
}

/// The role and leader, handed out when either changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
}

/// Everything the driver must do after feeding events to the core, in this
/// order:
///
/// 1. send `messages` (they depend on nothing unpersisted);
/// 2. persist `hard_state` (if any) and `entries` (if any: truncate the
///    stored log from `entries[0].index`, then append them) durably;
/// 3. only then send `messages_after_persist` (votes, acknowledgements and
///    anything carrying a new term), and report `persisted(last index, last
///    term)` of the entries;
/// 4. apply `committed_entries` in order and answer `read_states` once
///    applied up to their index.
///
/// A `snapshot` (sent by the leader) comes first in step 2, before the
/// entries: it replaces the stored log up to its index. The application
/// also replaces its state machine with it before step 4.
///
/// Step 3 waits for step 2 even when it happens on another thread: a vote
/// or an acknowledgement that outruns its fsync can elect two leaders or
/// lose a committed entry after a crash.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// The membership in force, when it changed (an entry appended or
    /// cut, a snapshot installed): who to keep links to.
    pub membership: Option<Membership>,
}

impl Ready {
    /// Whether step 2 has anything to write.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && !self.must_persist()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.membership.is_none()
    }
}

/// Why a proposal or read was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotLeader {
    /// Not the leader (or handing leadership over); the leader this node
    /// knows of, if any.
    Redirect(Option<NodeId>),
}

/// Why a membership change or a leadership transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeError {
    NotLeader(NotLeader),
    /// It cannot be made now or at all; the text says why.
    Refused(String),
}

impl std::fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfChangeError::NotLeader(NotLeader::Redirect(Some(l))) => {
                write!(f, "not the leader (the leader is {l})")
            }
            ConfChangeError::NotLeader(NotLeader::Redirect(None)) => {
                f.write_str("not the leader (no leader known)")
            }
            ConfChangeError::Refused(why) => f.write_str(why),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: u64,
    index: LogIndex,
    /// Confirmed once a quorum has echoed this round or a later one.
    round: u64,
}

/// One Raft server's consensus state.
pub struct Raft {
    config: Config,
    /// Latest term seen (Figure 2). Persist before answering after a change.
    current_term: Term,
    /// Vote given in `current_term` (Figure 2). Persist before answering.
    voted_for: Option<NodeId>,
    log: RaftLog,
    /// The newest snapshot: taken here (`compact`) or received from a
    /// leader. Sent to followers that need compacted entries.
    snapshot: Option<Snapshot>,
    /// A snapshot received from the leader, for the next `ready`.
    snapshot_to_install: Option<Snapshot>,
    role: Role,
    /// The leader of `current_term` when known.
    leader: Option<NodeId>,
    /// Highest index known to be committed (Figure 2); never decreases.
    commit_index: LogIndex,
    /// Highest index handed out in `committed_entries`; never passes
    /// `commit_index`. The application applies exactly those entries, so
    /// this is its `last_applied`.
    last_applied: LogIndex,
    /// Highest index durable on this node's own disk in agreement with
    /// `log` (reported by `persisted`). The leader counts itself towards a
    /// quorum only up to here.
    stable_index: LogIndex,
    /// Ticks since the last reset: of the election timer for followers and
    /// candidates, of the CheckQuorum period for a leader.
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    /// This term's election timeout, drawn from the configured range.
    randomized_election_timeout: u32,
    /// Votes received in the current (pre-)campaign.
    votes: BTreeMap<NodeId, bool>,
    /// Per-follower progress; only while leader.
    progress: BTreeMap<NodeId, Progress>,
    /// Current heartbeat round for ReadIndex; carried by every AppendEntries.
    read_round: u64,
    /// A read arrived since the last round went out: start one in `ready`.
    read_round_needed: bool,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before this leader committed an entry of its term.
    reads_waiting_commit: Vec<u64>,
    /// The memberships in the log, oldest first, each with the index of
    /// its entry: the first is the one in force at the log's start (the
    /// snapshot's, or the bootstrap one at index 0); the last is in force.
    confs: Vec<(LogIndex, Membership)>,
    /// The membership changed since the last `ready`.
    membership_dirty: bool,
    /// While leader and handing leadership over: the target, ticks since
    /// the transfer began, and whether TimeoutNow went out.
    lead_transferee: Option<NodeId>,
    transfer_elapsed: u32,
    transfer_sent: bool,
    rng: Rng,
    // Outbox, drained by `ready`.
    /// The lowest log index changed since the last `ready`.
    unpersisted_from: Option<LogIndex>,
    hard_state_dirty: bool,
    soft_state_last: SoftState,
    out_messages: Vec<Message>,
    out_after_persist: Vec<Message>,
    out_read_states: Vec<ReadState>,
}

impl Raft {
    /// A core restarted from what storage recovered (term, vote and the
    /// durable log; all empty for a new node). It starts as a follower
    /// that knows nothing is committed yet.
    pub fn new(config: Config, hard_state: HardState, entries: Vec<Entry>) -> Raft {
        Raft::restore(config, hard_state, None, entries)
    }

    /// As `new`, for a node whose storage also held a snapshot: `entries`
    /// then start just after it. Everything up to the snapshot is known to
    /// be committed and applied (the application restores its state
    /// machine from the snapshot itself).
    pub fn restore(
        config: Config,
        hard_state: HardState,
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
    ) -> Raft {
        config.validate();
        let (offset, offset_term) = snapshot
            .as_ref()
            .map_or((LogIndex(0), Term(0)), |s| (s.index, s.term));
        let log = RaftLog::with_offset(offset, offset_term, entries);
        let stable_index = log.last_index();
        let rng = Rng::new(config.seed ^ 0x5DEE_CE66_D1CE_4E5B);
        let base = match &snapshot {
            Some(s) if !s.membership.voters.is_empty() => (s.index, s.membership.clone()),
            _ => (offset, Self::bootstrap_membership(&config)),
        };
        let soft = SoftState {
            role: Role::Follower,
            leader: None,
            term: hard_state.current_term,
        };
        let mut raft = Raft {
            config,
            current_term: hard_state.current_term,
            voted_for: hard_state.voted_for,
            log,
            snapshot,
            snapshot_to_install: None,
            role: Role::Follower,
            leader: None,
            commit_index: offset,
            last_applied: offset,
            stable_index,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            read_round: 0,
            read_round_needed: false,
            pending_reads: VecDeque::new(),
            reads_waiting_commit: Vec::new(),
            confs: vec![base],
            membership_dirty: true,
            lead_transferee: None,
            transfer_elapsed: 0,
            transfer_sent: false,
            rng,
            unpersisted_from: None,
            hard_state_dirty: false,
            soft_state_last: soft,
            out_messages: Vec::new(),
            out_after_persist: Vec::new(),
            out_read_states: Vec::new(),
        };
        let confs: Vec<Entry> = raft
            .log
            .entries()
            .iter()
            .filter(|e| e.kind == EntryKind::ConfChange)
            .cloned()
            .collect();
        for e in &confs {
            raft.note_conf_entry(e);
        }
        raft.reset_election_timer();
        raft
    }

    fn bootstrap_membership(config: &Config) -> Membership {
        let mut m = Membership::new(config.voters.iter().copied());
        m.addrs = config
            .initial_addrs
            .iter()
            .filter(|(id, _)| m.voters.contains(id))
            .map(|(&id, a)| (id, a.clone()))
            .collect();
        m
    }

    // ---- accessors -------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn current_term(&self) -> Term {
        self.current_term
    }
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }
    pub fn stable_index(&self) -> LogIndex {
        self.stable_index
    }
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    /// The newest snapshot this node holds, if any.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            current_term: self.current_term,
            voted_for: self.voted_for,
        }
    }
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A snapshot of the state for status output.
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role,
            current_term: self.current_term,
            voted_for: self.voted_for,
            leader: self.leader,
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            membership: self.membership().clone(),
            membership_index: self.membership_index(),
            membership_changing: self.membership_changing(),
            transferring_to: self.lead_transferee,
            peers: self
                .progress
                .iter()
                .map(|(&id, pr)| PeerStatus {
                    id,
                    match_index: pr.match_index,
                    next_index: pr.next_index,
                    state: pr.state,
                    inflight: pr.inflight.len() as u32,
                })
                .collect(),
        }
    }

    /// The membership in force: the newest in the log, committed or not.
    pub fn membership(&self) -> &Membership {
        &self.confs.last().expect("there is always a membership").1
    }

    /// The index of the entry that made the membership in force.
    pub fn membership_index(&self) -> LogIndex {
        self.confs.last().expect("there is always a membership").0
    }

    /// Whether a membership change is under way: joint, or not committed.
    pub fn membership_changing(&self) -> bool {
        self.membership().is_joint() || self.membership_index() > self.commit_index
    }

    /// The membership in force at `index` (at least the log's offset).
    pub fn membership_at(&self, index: LogIndex) -> Membership {
        self.confs
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .unwrap_or(&self.confs[0])
            .1
            .clone()
    }

    /// The node leadership is being handed to, while a transfer runs.
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.lead_transferee
    }

    fn is_voter(&self) -> bool {
        self.membership().is_voter(self.config.id)
    }

    /// Whether this node may start an election: it is a voter of the
    /// membership in force, or that membership is not committed yet and
    /// it was a voter of the one before. (A leader that appended the
    /// membership removing it, then lost leadership before that entry
    /// spread, may hold the only log the others would vote for; the votes
    /// are counted in the new membership all the same, so it can finish
    /// the change, then step down.)
    pub fn may_campaign(&self) -> bool {
        if self.is_voter() {
            return true;
        }
        let n = self.confs.len();
        n >= 2
            && self.membership_index() > self.commit_index
            && self.confs[n - 2].1.is_voter(self.config.id)
    }

    /// The voters to ask in an election: every voter but this node.
    fn voter_peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let m = self.membership();
        m.voters
            .union(&m.outgoing)
            .copied()
            .filter(|&v| v != me)
            .collect()
    }

    /// The leader's followers: every member but itself (learners too).
    fn peers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    /// Whether this node and the followers for which `acked` holds make a
    /// quorum of the membership in force.
    fn quorum_with(&self, acked: impl Fn(&Progress) -> bool) -> bool {
        let me = self.config.id;
        self.membership()
            .has_quorum(|id| id == me || self.progress.get(&id).is_some_and(&acked))
    }

    // ---- events ----------------------------------------------------------

    /// One tick of logical time: drives election timeouts, heartbeats and
    /// CheckQuorum.
    pub fn tick(&mut self) {
        self.election_elapsed += 1;
        if self.role != Role::Leader {
            if self.election_elapsed >= self.randomized_election_timeout {
                if self.may_campaign() {
                    self.campaign(self.config.pre_vote, false);
                } else {
                    // A learner, or a node not (or no longer) a member:
                    // it waits quietly to hear from a leader; its lease on
                    // the last one it heard from has run out all the same
                    // (it may be asked to vote once it is a voter again),
                    // and it no longer names that leader to clients.
                    self.election_elapsed = self.randomized_election_timeout;
                    self.leader = None;
                }
            }
            return;
        }
        if let Some(target) = self.lead_transferee {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_timeout_ticks_max {
                info!(
                    "{} t{}: {target} did not take over within an election timeout; leading on",
                    self.id(),
                    self.current_term
                );
                self.lead_transferee = None;
            }
        }
        if self.election_elapsed >= self.config.election_timeout_ticks_min {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                info!(
                    "{} t{}: lost contact with a majority; stepping down",
                    self.id(),
                    self.current_term
                );
                self.become_follower(self.current_term, None);
                return;
            }
        }
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.handle_leader_heartbeat();
        }
    }

    /// A client proposal (a command for the log): appended to the
    /// leader's log and replicated at the next `ready`. Returns its index.
    pub fn propose(&mut self, data: impl Into<Arc<[u8]>>) -> Result<LogIndex, NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader::Redirect(self.leader));
        }
        if self.lead_transferee.is_some() {
            // Handing over: new writes wait for the next leader.
            return Err(NotLeader::Redirect(None));
        }
        Ok(self.append_entry(EntryKind::Command, data.into()))
    }

    /// Proposes a membership change (joint consensus for voters). Refused
    /// unless this is the leader, no change is under way, the leader has
    /// committed an entry of its term, and a learner to promote has
    /// caught up. Returns the index of the change's entry; the change is
    /// complete once the settled membership after it commits.
    pub fn propose_conf_change(
        &mut self,
        change: &ConfChange,
    ) -> Result<LogIndex, ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader(NotLeader::Redirect(self.leader)));
        }
        let refused = |why: String| Err(ConfChangeError::Refused(why));
        if let Some(target) = self.lead_transferee {
            return refused(format!("leadership is being handed to {target}"));
        }
        if self.membership_changing() {
            return refused(format!(
                "a membership change is in progress (entry {}: {}; committed up to {})",
                self.membership_index(),
                self.membership(),
                self.commit_index
            ));
        }
        if self.log.term_at(self.commit_index) != Some(self.current_term) {
            return refused(
                "this leader has not yet committed an entry of its term; retry shortly".into(),
            );
        }
        if let ConfChange::Promote { id } = change {
            let last = self.log.last_index();
            let matched = self.progress.get(id).map_or(LogIndex(0), |p| p.match_index);
            let behind = last.0.saturating_sub(matched.0);
            if self.membership().is_learner(*id) && behind >= self.config.promote_lag_entries_max {
                return refused(format!(
                    "{id} is {behind} entries behind (it has {matched} of {last}); promote it once it is within {}",
                    self.config.promote_lag_entries_max
                ));
            }
        }
        let next = self
            .membership()
            .apply_change(change)
            .map_err(ConfChangeError::Refused)?;
        info!(
            "{} t{}: proposing {change}: {next}",
            self.id(),
            self.current_term
        );
        Ok(self.append_entry(EntryKind::ConfChange, next.to_bytes().into()))
    }

    /// Hands leadership to `target` (Raft thesis section 3.10): proposals
    /// are refused meanwhile; once the target's log matches ours it is told
    /// to campaign at once. If it does not lead within an election
    /// timeout, this leader carries on.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader(NotLeader::Redirect(self.leader)));
        }
        if target == self.config.id {
            return Ok(());
        }
        if !self.membership().is_voter(target) {
            return Err(ConfChangeError::Refused(format!(
                "{target} is not a voter ({})",
                self.membership()
            )));
        }
        info!(
            "{} t{}: handing leadership to {target}",
            self.id(),
            self.current_term
        );
        self.lead_transferee = Some(target);
        self.transfer_elapsed = 0;
        self.transfer_sent = false;
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// Sends TimeoutNow to the transfer's target once its log matches ours.
    fn maybe_send_timeout_now(&mut self) {
        let Some(target) = self.lead_transferee else {
            return;
        };
        let last = self.log.last_index();
        if self.transfer_sent || self.progress.get(&target).map(|p| p.match_index) != Some(last) {
            return;
        }
        self.transfer_sent = true;
        info!(
            "{} t{}: {target} has the whole log ({last}); telling it to campaign",
            self.id(),
            self.current_term
        );
        self.reply(target, MessageBody::TimeoutNow, false);
    }

    /// A linearizable read (ReadIndex, Raft thesis section 6.4): confirmed
    /// once a quorum acknowledges a heartbeat round sent after it; it comes
    /// back as a `ReadState` from `ready`.
    pub fn read_index(&mut self, id: u64) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader::Redirect(self.leader));
        }
        if self.log.term_at(self.commit_index) != Some(self.current_term) {
            // A new leader does not know the commit index until its no-op
            // commits (section 6.4, step 1).
            self.reads_waiting_commit.push(id);
            return Ok(());
        }
        self.register_read(id);
        Ok(())
    }

    /// The application took `snapshot` of its state machine (at an index it
    /// has applied): keep it to send to followers that fall behind, and
    /// drop the log entries before `keep_from` (at most up to the
    /// snapshot's index), so that a follower a little behind still gets
    /// entries rather than the whole snapshot. The caller makes the
    /// snapshot durable before it deletes any stored entry it covers.
    /// Returns the entries dropped, for the caller to free.
    pub fn compact(&mut self, snapshot: Snapshot, keep_from: LogIndex) -> Vec<Entry> {
        assert!(
            snapshot.index <= self.last_applied,
            "snapshot at {} past last applied {}",
            snapshot.index,
            self.last_applied
        );
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index >= snapshot.index)
        {
            return Vec::new();
        }
        assert_eq!(
            self.log.term_at(snapshot.index),
            Some(snapshot.term),
            "snapshot {}/{} does not match the log",
            snapshot.index,
            snapshot.term
        );
        let to = keep_from.prev().min(snapshot.index);
        let dropped = self.log.compact_to(to);
        self.compact_confs(to);
        debug!(
            "{} t{}: snapshot at {}/{}, log from {}",
            self.id(),
            self.current_term,
            snapshot.index,
            snapshot.term,
            self.log.first_index()
        );
        self.snapshot = Some(snapshot);
        dropped
    }

    /// Starts an election now (as if the election timer had fired), with a
    /// PreVote round first when configured. For tests and operators.
    pub fn campaign_now(&mut self) {
        if self.role != Role::Leader && self.may_campaign() {
            self.campaign(self.config.pre_vote, false);
        }
    }

    /// Storage reports the log durable up to (`index`, `term`).
    pub fn persisted(&mut self, index: LogIndex, term: Term) {
        if self.log.term_at(index) != Some(term) || index <= self.stable_index {
            debug!(
                "{} t{}: ignoring stale persisted {index}/{term}",
                self.id(),
                self.current_term
            );
            return;
        }
        self.stable_index = index;
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// A message from a peer. Term rules first (Figure 2, "Rules for
    /// Servers"), then one handler per message type.
    pub fn step(&mut self, m: Message) {
        // Messages from any node are heard (a member being added does not
        // know it yet); votes count only from voters, and PreVote and the
        // leader lease keep a removed node from disturbing the cluster.
        let own_vote = m.from == self.config.id
            && matches!(
                m.body,
                MessageBody::RequestVoteResponse {
                    pre_vote: false,
                    ..
                }
            );
        if m.to != self.config.id || (m.from == self.config.id && !own_vote) {
            debug!(
                "{} t{}: dropping misaddressed {m}",
                self.id(),
                self.current_term
            );
            return;
        }
        if m.term > self.current_term {
            match &m.body {
                MessageBody::RequestVote {
                    transfer: false, ..
                } if self.in_leader_lease() => {
                    // CheckQuorum: while we hear from a leader, a higher
                    // term from a disruptive node changes nothing.
                    info!(
                        "{} t{}: refusing {} for t{}: leader lease ({} is alive)",
                        self.id(),
                        self.current_term,
                        m.from,
                        m.term,
                        self.leader.map_or("the leader".into(), |l| l.to_string())
                    );
                    return;
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    vote_granted: true,
                } => {}
                MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } => {
                    self.note_newer_term(&m);
                    self.become_follower(m.term, Some(m.from))
                }
                _ => {
                    self.note_newer_term(&m);
                    self.become_follower(m.term, None)
                }
            }
        } else if m.term < self.current_term {
            self.handle_stale_term(m);
            return;
        }
        match m.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                ..
            } => self.handle_request_vote(m.from, m.term, pre_vote, last_log_index, last_log_term),
            MessageBody::TimeoutNow => self.handle_timeout_now(m.from),
            MessageBody::RequestVoteResponse {
                pre_vote,
                vote_granted,
            } => self.handle_request_vote_response(m.from, pre_vote, vote_granted),
            MessageBody::InstallSnapshot {
                snapshot,
                read_round,
            } => self.handle_install_snapshot(m.from, snapshot, read_round),
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_round,
            } => self.handle_append_entries(
                m.from,
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_round,
            ),
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                reject,
                read_round,
            } => self.handle_append_entries_response(
                m.from,
                success,
                match_index,
                reject,
                read_round,
            ),
        }
    }

    /// Everything to do now; see `Ready` for the order. Call after a batch
    /// of events.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.read_round_needed {
                self.read_round_needed = false;
                self.read_round += 1;
                for peer in self.peers() {
                    self.send_heartbeat(peer);
                }
            }
            for peer in self.peers() {
                self.send_appends(peer);
            }
            self.maybe_commit();
        }
        let mut rd = Ready::default();
        let soft = SoftState {
            role: self.role,
            leader: self.leader,
            term: self.current_term,
        };
        if soft != self.soft_state_last {
            self.soft_state_last = soft;
            rd.soft_state = Some(soft);
        }
        if self.hard_state_dirty {
            self.hard_state_dirty = false;
            rd.hard_state = Some(self.hard_state());
        }
        rd.snapshot = self.snapshot_to_install.take();
        if let Some(from) = self.unpersisted_from.take() {
            rd.entries = self.log.slice(from, self.log.last_index()).to_vec();
        }
        rd.messages = std::mem::take(&mut self.out_messages);
        rd.messages_after_persist = std::mem::take(&mut self.out_after_persist);
        if rd.hard_state.is_some() && !rd.messages.is_empty() {
            // Anything sent alongside a new term or vote carries it: wait.
            rd.messages.append(&mut rd.messages_after_persist);
            std::mem::swap(&mut rd.messages, &mut rd.messages_after_persist);
        }
        if self.commit_index > self.last_applied {
            let to = LogIndex(
                self.commit_index
                    .0
                    .min(self.last_applied.0 + self.config.committed_entries_max as u64),
            );
            rd.committed_entries = self.log.slice(self.last_applied.next(), to).to_vec();
            self.last_applied = to;
        }
        rd.read_states = std::mem::take(&mut self.out_read_states);
        if self.membership_dirty {
            self.membership_dirty = false;
            rd.membership = Some(self.membership().clone());
        }
        rd
    }

    /// Whether `ready` would return something (committed entries, messages,
    /// state to persist).
    pub fn has_ready(&self) -> bool {
        self.hard_state_dirty
            || self.membership_dirty
            || self.snapshot_to_install.is_some()
            || self.unpersisted_from.is_some()
            || !self.out_messages.is_empty()
            || !self.out_after_persist.is_empty()
            || !self.out_read_states.is_empty()
            || self.commit_index > self.last_applied
            || self.read_round_needed
            || (self.role == Role::Leader
                && self
                    .progress
                    .values()
                    .any(|p| p.next_index <= self.log.last_index() && self.can_send(p)))
    }

    // ---- roles -----------------------------------------------------------

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.current_term {
            self.current_term = term;
            self.voted_for = None;
            self.hard_state_dirty = true;
        }
        if self.role == Role::Leader {
            info!("{} t{}: stepping down", self.id(), self.current_term);
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.lead_transferee = None;
        self.progress.clear();
        self.pending_reads.clear();
        self.reads_waiting_commit.clear();
        self.read_round_needed = false;
        self.votes.clear();
        self.reset_election_timer();
    }

    /// Starts a PreVote round (term unchanged) or a real election;
    /// `transfer`: one the leader asked for with TimeoutNow.
    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        self.leader = None;
        self.votes.clear();
        self.reset_election_timer();
        let term = if pre_vote {
            self.role = Role::PreCandidate;
            self.current_term.next()
        } else {
            self.role = Role::Candidate;
            self.current_term = self.current_term.next();
            self.voted_for = Some(self.config.id);
            self.hard_state_dirty = true;
            self.current_term
        };
        info!(
            "{} t{}: starting {} at term {term}",
            self.id(),
            self.current_term,
            if pre_vote { "pre-vote" } else { "election" }
        );
        if pre_vote {
            self.votes.insert(self.config.id, true);
            if self.tally_votes() {
                return;
            }
        } else {
            // Our own vote counts once it is durable, like anyone's: it
            // comes back to us as a message that waits for the persist. (A
            // single voter that led at once on an unpersisted vote could,
            // after a crash, vote for another in the same term: two
            // leaders of one term.)
            let me = self.config.id;
            let own = Message {
                from: me,
                to: me,
                term: self.current_term,
                body: MessageBody::RequestVoteResponse {
                    pre_vote: false,
                    vote_granted: true,
                },
            };
            self.send(own, true);
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.voter_peers() {
            let m = Message {
                from: self.config.id,
                to: peer,
                term,
                body: MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    transfer,
                },
            };
            // A real RequestVote carries the new term and our own vote: both
            // must be durable first.
            self.send(m, !pre_vote);
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        info!("{} t{}: became leader", self.id(), self.current_term);
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.progress.clear();
        self.sync_progress();
        // Entries of earlier terms commit only once an entry of this term
        // does (Figure 8): the no-op makes that happen without waiting for a
        // client.
        self.append_entry(EntryKind::Noop, Arc::from([]));
    }

    /// Counts votes; acts on a majority either way. Returns whether the
    /// campaign is over.
    fn tally_votes(&mut self) -> bool {
        match self.membership().vote_result(&self.votes) {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(false, false);
                } else {
                    self.become_leader();
                }
                true
            }
            VoteResult::Lost => {
                debug!("{} t{}: lost the election", self.id(), self.current_term);
                self.become_follower(self.current_term, None);
                true
            }
            VoteResult::Pending => false,
        }
    }

    /// Says why a leader or candidate is about to step down: a message of
    /// a newer term.
    fn note_newer_term(&self, m: &Message) {
        if self.role != Role::Follower {
            info!(
                "{} t{}: stepping down as {}: {} is at t{} ({})",
                self.id(),
                self.current_term,
                self.role,
                m.from,
                m.term,
                m.body.name()
            );
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_election_timeout = self.rng.range(
            self.config.election_timeout_ticks_min as u64,
            self.config.election_timeout_ticks_max as u64,
        ) as u32;
    }

    /// A follower that heard from its leader less than an election timeout
    /// ago refuses to take part in elections (CheckQuorum / leader lease).
    fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_timeout_ticks_min
    }

    fn quorum_recently_active(&mut self) -> bool {
        let active = self.quorum_with(|pr| pr.recent_active);
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        active
    }

    // ---- handlers --------------------------------------------------------

    /// A message from an older term: tell a stale leader or pre-candidate
    /// our term so it steps down; drop anything else.
    fn handle_stale_term(&mut self, m: Message) {
        debug!("{} t{}: stale {m}", self.id(), self.current_term);
        match m.body {
            MessageBody::AppendEntries { read_round, .. }
            | MessageBody::InstallSnapshot { read_round, .. } => {
                let reply = MessageBody::AppendEntriesResponse {
                    success: false,
                    match_index: LogIndex(0),
                    reject: None,
                    read_round,
                };
                self.reply(m.from, reply, true);
            }
            MessageBody::RequestVote { pre_vote: true, .. } => {
                let reply = MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    vote_granted: false,
                };
                self.reply(m.from, reply, true);
            }
            _ => {}
        }
    }

    fn handle_request_vote(
        &mut self,
        candidate: NodeId,
        term: Term,
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        // Set the answer to a refusal; we overwrite it if we grant.
        let mut granted = false;
        let up_to_date = self.log.is_up_to_date(last_log_index, last_log_term);
        if pre_vote {
            // Would we vote for it in `term`? (term > ours was checked, or
            // equal to ours: then only if we could vote in this term.)
            let could_vote = term > self.current_term
                || self.voted_for == Some(candidate)
                || (self.voted_for.is_none() && self.leader.is_none());
            granted = could_vote && up_to_date;
        } else {
            let can_vote = self.voted_for == Some(candidate)
                || (self.voted_for.is_none() && self.leader.is_none());
            if can_vote && up_to_date {
                granted = true;
                self.voted_for = Some(candidate);
                self.hard_state_dirty = true;
                self.reset_election_timer();
            }
        }
        let why = if granted {
            String::new()
        } else if !up_to_date {
            format!(
                ": its log ends at {last_log_index}/{last_log_term}, behind ours at {}/{}",
                self.log.last_index(),
                self.log.last_term()
            )
        } else if let Some(other) = self.voted_for.filter(|&v| v != candidate) {
            format!(": already voted for {other} in t{}", self.current_term)
        } else if let Some(l) = self.leader {
            format!(": we follow {l} in t{}", self.current_term)
        } else {
            ": it could not win".to_string()
        };
        info!(
            "{} t{}: {} {} {candidate} for t{term}{why}",
            self.id(),
            self.current_term,
            if granted { "granting" } else { "refusing" },
            if pre_vote {
                "a pre-vote to"
            } else {
                "my vote to"
            },
        );
        let reply_term = if pre_vote && granted {
            term
        } else {
            self.current_term
        };
        let reply = Message {
            from: self.config.id,
            to: candidate,
            term: reply_term,
            body: MessageBody::RequestVoteResponse {
                pre_vote,
                vote_granted: granted,
            },
        };
        // A granted vote must be durable before the candidate can count it.
        self.send(reply, true);
    }

    fn handle_request_vote_response(&mut self, from: NodeId, pre_vote: bool, granted: bool) {
        let expected_role = if pre_vote {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role != expected_role {
            debug!(
                "{} t{}: late vote from {from} ignored",
                self.id(),
                self.current_term
            );
            return;
        }
        self.votes.entry(from).or_insert(granted);
        self.tally_votes();
    }

    /// AppendEntries received from a leader. The sender
    /// is the leader of our current term.
    fn handle_append_entries(
        &mut self,
        leader: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        read_round: u64,
    ) {
        self.heard_from_leader(leader, "AppendEntries");

        // Set the answer to a rejection with a hint; overwrite it on success.
        let our_prev_term = if prev_log_index < self.log.offset() {
            // Compacted: committed, so the leader holds the same entry.
            Some(prev_log_term)
        } else {
            self.log.term_at(prev_log_index)
        };
        if our_prev_term != Some(prev_log_term) {
            let hint = match our_prev_term {
                None => RejectHint {
                    rejected_prev_index: prev_log_index,
                    conflict_term: Term(0),
                    conflict_index: self.log.last_index().next(),
                },
                Some(t) => RejectHint {
                    rejected_prev_index: prev_log_index,
                    conflict_term: t,
                    conflict_index: self.log.first_index_of_term_at(prev_log_index),
                },
            };
            debug!(
                "{} t{}: rejecting AppendEntries prev={prev_log_index}/{prev_log_term} conflict={}/{}",
                self.id(),
                self.current_term,
                hint.conflict_index,
                hint.conflict_term
            );
            let reply = MessageBody::AppendEntriesResponse {
                success: false,
                match_index: LogIndex(0),
                reject: Some(hint),
                read_round,
            };
            self.reply(leader, reply, true);
            return;
        }

        let last_new = prev_log_index.plus(entries.len() as u64);
        self.append_from_leader(entries);
        if leader_commit > self.commit_index {
            let commit = leader_commit.min(last_new);
            if commit > self.commit_index {
                self.commit_index = commit;
            }
        }
        self.acknowledge(leader, last_new, read_round);
    }

    /// Tells the leader we hold its log up to `match_index`. An
    /// acknowledgement promises durability: it waits for the fsync.
    fn acknowledge(&mut self, leader: NodeId, match_index: LogIndex, read_round: u64) {
        let reply = MessageBody::AppendEntriesResponse {
            success: true,
            match_index,
            reject: None,
            read_round,
        };
        self.reply(leader, reply, true);
    }

    /// A message only the leader of our term sends: follow it and reset
    /// the election timer.
    fn heard_from_leader(&mut self, leader: NodeId, what: &str) {
        if self.role == Role::Leader {
            // Two leaders in one term would break Election Safety.
            panic!(
                "{} t{}: {what} from {leader} in our own term",
                self.id(),
                self.current_term
            );
        }
        if self.role != Role::Follower {
            self.become_follower(self.current_term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
    }

    /// The leader of our term sent its snapshot: we lack entries it has
    /// compacted away (Raft paper, section 7).
    fn handle_install_snapshot(&mut self, leader: NodeId, snapshot: Snapshot, read_round: u64) {
        self.heard_from_leader(leader, "InstallSnapshot");
        let (index, term) = (snapshot.index, snapshot.term);
        if index > self.commit_index {
            if self.log.term_at(index) == Some(term) {
                // Our log agrees up to the snapshot: keep what follows.
                drop(self.log.compact_to(index));
                self.compact_confs(index);
            } else {
                info!(
                    "{} t{}: installing snapshot {index}/{term} from {leader}; dropping the log {}..{}",
                    self.id(),
                    self.current_term,
                    self.log.first_index(),
                    self.log.last_index()
                );
                self.log.reset(index, term);
                let membership = if snapshot.membership.voters.is_empty() {
                    Self::bootstrap_membership(&self.config)
                } else {
                    snapshot.membership.clone()
                };
                self.confs = vec![(index, membership)];
                self.on_membership_changed();
                // Nothing past the commit index is known to agree any more;
                // the snapshot's own write reports `persisted` for it.
                self.stable_index = self.stable_index.min(self.commit_index);
            }
            self.unpersisted_from = self
                .unpersisted_from
                .map(|from| from.max(index.next()))
                .filter(|&from| from <= self.log.last_index());
            self.commit_index = index;
            self.last_applied = index;
            if self.snapshot.as_ref().is_none_or(|s| s.index < index) {
                self.snapshot = Some(snapshot.clone());
            }
            self.snapshot_to_install = Some(snapshot);
        }
        // Up to the snapshot's index we now agree with the leader (either
        // it was committed here already, or we take the snapshot); the
        // acknowledgement waits until the snapshot is durable.
        self.acknowledge(leader, index, read_round);
    }

    /// Adds entries whose predecessor matched: skips those we already hold,
    /// truncates only at a real conflict (a stale, reordered AppendEntries
    /// never cuts what a newer one added).
    fn append_from_leader(&mut self, entries: Vec<Entry>) {
        let mut iter = entries.into_iter();
        for e in iter.by_ref() {
            if e.index <= self.log.offset() {
                continue; // compacted here: committed, so it matches
            }
            match self.log.term_at(e.index) {
                Some(t) if t == e.term => continue,
                Some(t) => {
                    assert!(
                        e.index > self.commit_index,
                        "{} t{}: conflict at committed index {} (ours t{t}, leader's t{})",
                        self.id(),
                        self.current_term,
                        e.index,
                        e.term
                    );
                    info!(
                        "{} t{}: log repaired: cutting {} entries from {} (ours from t{t}, the leader's t{})",
                        self.id(),
                        self.current_term,
                        self.log.last_index().0 - e.index.0 + 1,
                        e.index,
                        e.term
                    );
                    self.log.truncate_from(e.index);
                    self.truncate_confs(e.index);
                    if self.stable_index >= e.index {
                        self.stable_index = e.index.prev();
                    }
                    self.note_unpersisted(e.index);
                    self.append_to_log(e);
                    break;
                }
                None => {
                    self.note_unpersisted(e.index);
                    self.append_to_log(e);
                    break;
                }
            }
        }
        for e in iter {
            self.append_to_log(e);
        }
    }

    fn handle_append_entries_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        reject: Option<RejectHint>,
        read_round: u64,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if read_round > pr.acked_read_round {
            pr.acked_read_round = read_round;
        }
        if success {
            pr.maybe_update(match_index);
            // Only the probe itself (not a heartbeat at the old match
            // index) proves where the follower's log agrees with ours.
            if pr.state == ProgressState::Probe && pr.match_index >= pr.next_index.prev() {
                pr.become_replicate();
            }
            if pr.state == ProgressState::Snapshot && pr.match_index >= pr.pending_snapshot {
                pr.become_replicate();
            }
            self.maybe_commit();
            self.confirm_reads();
            if self.lead_transferee == Some(from) {
                self.maybe_send_timeout_now();
            }
            return;
        }
        let Some(hint) = reject else {
            // A rejection without hint comes only with a higher term,
            // handled before this.
            return;
        };
        if pr.state == ProgressState::Snapshot {
            // An answer to something sent before the snapshot, or to a
            // heartbeat at a point the follower does not have yet.
            self.confirm_reads();
            return;
        }
        if hint.rejected_prev_index == pr.match_index && hint.conflict_index <= pr.match_index {
            // A heartbeat at the acknowledged index failed: the follower lost
            // entries it had acknowledged (a lost or in-memory disk). Start
            // over from what it has now rather than wait forever.
            log::warn!(
                "{} t{}: {from} lost acknowledged entries (had {}); re-probing from {}",
                self.config.id,
                self.current_term,
                pr.match_index,
                hint.conflict_index
            );
            pr.match_index = hint.conflict_index.prev();
            pr.become_probe(hint.conflict_index);
            self.confirm_reads();
            return;
        }
        if hint.rejected_prev_index <= pr.match_index {
            debug!(
                "{} t{}: stale rejection from {from}",
                self.config.id, self.current_term
            );
            self.confirm_reads();
            return;
        }
        if pr.state == ProgressState::Probe && hint.rejected_prev_index != pr.next_index.prev() {
            debug!(
                "{} t{}: old probe rejection from {from}",
                self.config.id, self.current_term
            );
            self.confirm_reads();
            return;
        }
        // Skip back a whole term: to just after our last entry of the
        // follower's conflicting term, or to its first entry of that term.
        let mut next = if hint.conflict_term == Term(0) {
            hint.conflict_index
        } else {
            match self.log.last_index_of_term(hint.conflict_term) {
                Some(i) => i.next(),
                None => hint.conflict_index,
            }
        };
        let pr = self
            .progress
            .get_mut(&from)
            .expect("progress checked above");
        next = next
            .min(hint.rejected_prev_index)
            .max(pr.match_index.next());
        debug!(
            "{} t{}: {from} rejected prev={}; next_index {} -> {next}",
            self.config.id, self.current_term, hint.rejected_prev_index, pr.next_index
        );
        pr.become_probe(next);
        self.confirm_reads();
    }

    /// The leader's heartbeat timer fired (every `heartbeat_interval_ticks`):
    /// replication stalled for an election timeout is probed again, and
    /// followers hear from the leader, with its commit index and a read
    /// round.
    fn handle_leader_heartbeat(&mut self) {
        for peer in self.peers() {
            let last_index = self.log.last_index();
            let pr = self
                .progress
                .get_mut(&peer)
                .expect("leader has progress for every peer");
            // Nothing acknowledged for a whole election timeout with
            // messages out: assume one was lost and probe again.
            let stall_max = (self.config.election_timeout_ticks_min
                / self.config.heartbeat_interval_ticks)
                .max(2);
            match pr.state {
                ProgressState::Probe => pr.probe_sent = false,
                ProgressState::Replicate | ProgressState::Snapshot => {
                    // A snapshot out is unanswered until acknowledged;
                    // pipelined messages while something is unacknowledged.
                    if pr.state == ProgressState::Snapshot
                        || (!pr.inflight.is_empty() && pr.match_index < last_index)
                    {
                        pr.stalled_heartbeats += 1;
                    }
                    if pr.stalled_heartbeats >= stall_max {
                        debug!(
                            "{} t{}: replication to {peer} stalled ({:?}); probing",
                            self.config.id, self.current_term, pr.state
                        );
                        let next = pr.match_index.next();
                        pr.become_probe(next);
                    }
                }
            }
            self.send_heartbeat(peer);
        }
    }

    // ---- replication -----------------------------------------------------

    fn can_send(&self, pr: &Progress) -> bool {
        match pr.state {
            ProgressState::Probe => !pr.probe_sent,
            ProgressState::Replicate => pr.inflight.len() < self.config.inflight_msgs_max,
            ProgressState::Snapshot => false,
        }
    }

    /// Sends AppendEntries to `peer` while the window allows and there is
    /// something to send (in Probe, exactly one, possibly empty).
    fn send_appends(&mut self, peer: NodeId) {
        loop {
            let pr = &self.progress[&peer];
            if !self.can_send(pr) {
                return;
            }
            let next = pr.next_index;
            let probing = pr.state == ProgressState::Probe;
            if !probing && next > self.log.last_index() {
                return;
            }
            if next.prev() < self.log.offset() {
                self.send_snapshot(peer);
                return;
            }
            let entries = self
                .log
                .slice_bytes(next, self.config.append_bytes_max)
                .to_vec();
            let prev_log_index = next.prev();
            let prev_log_term = self
                .log
                .term_at(prev_log_index)
                .expect("next_index is within the log");
            let last = prev_log_index.plus(entries.len() as u64);
            let pr = self.progress.get_mut(&peer).expect("checked above");
            if probing {
                pr.probe_sent = true;
            } else {
                pr.inflight.push_back(last);
                pr.next_index = last.next();
            }
            let body = MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit: self.commit_index,
                read_round: self.read_round,
            };
            self.reply(peer, body, false);
            if probing {
                return;
            }
        }
    }

    /// The follower needs entries compacted away: send the snapshot, and
    /// nothing else until it is acknowledged (or presumed lost).
    fn send_snapshot(&mut self, peer: NodeId) {
        let snapshot = self
            .snapshot
            .clone()
            .expect("a compacted log comes with a snapshot");
        info!(
            "{} t{}: sending snapshot {}/{} to {peer}: it needs entries compacted away",
            self.config.id, self.current_term, snapshot.index, snapshot.term
        );
        let pr = self.progress.get_mut(&peer).expect("leader has progress");
        pr.become_snapshot(snapshot.index);
        let body = MessageBody::InstallSnapshot {
            snapshot,
            read_round: self.read_round,
        };
        self.reply(peer, body, false);
    }

    /// An empty AppendEntries at the follower's `match_index` (or at our
    /// compaction point, if later): it always matches, so it refreshes the
    /// leader's lease and commit index and confirms reads without
    /// disturbing the pipeline.
    fn send_heartbeat(&mut self, peer: NodeId) {
        let pr = &self.progress[&peer];
        let prev_log_index = pr.match_index.max(self.log.offset());
        let prev_log_term = self
            .log
            .term_at(prev_log_index)
            .expect("match_index is within the log");
        let body = MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries: Vec::new(),
            leader_commit: self.commit_index,
            read_round: self.read_round,
        };
        self.reply(peer, body, false);
    }

    /// Advances `commit_index` to the highest index stored on a majority
    /// whose entry is of the current term (Figure 8: never by counting
    /// replicas of an older term's entry).
    fn maybe_commit(&mut self) {
        let me = self.config.id;
        let candidate = self.membership().committed_index(|id| {
            if id == me {
                self.stable_index
            } else {
                self.progress
                    .get(&id)
                    .map_or(LogIndex(0), |p| p.match_index)
            }
        });
        if candidate <= self.commit_index {
            return;
        }
        if self.log.term_at(candidate) != Some(self.current_term) {
            return;
        }
        debug!(
            "{} t{}: commit {} -> {candidate}",
            self.id(),
            self.current_term,
            self.commit_index
        );
        let first_of_term = self.log.term_at(self.commit_index) != Some(self.current_term);
        self.commit_index = candidate;
        if first_of_term {
            for id in std::mem::take(&mut self.reads_waiting_commit) {
                self.register_read(id);
            }
        }
        self.membership_committed();
    }

    /// The leader's next step once the membership in force is committed:
    /// a joint one is left with the settled one after it; a settled one
    /// without this node ends its leadership, after handing it over.
    fn membership_committed(&mut self) {
        if self.role != Role::Leader || self.membership_index() > self.commit_index {
            return;
        }
        if self.membership().is_joint() {
            let next = self.membership().leave_joint();
            info!(
                "{} t{}: joint membership committed at {}; leaving it: {next}",
                self.id(),
                self.current_term,
                self.membership_index()
            );
            self.append_entry(EntryKind::ConfChange, next.to_bytes().into());
            return;
        }
        if self.is_voter() {
            return;
        }
        // Removed: hand over to the voter furthest along, if it has all.
        let last = self.log.last_index();
        let heir = self
            .membership()
            .voters
            .iter()
            .filter_map(|id| self.progress.get(id).map(|p| (p.match_index, *id)))
            .max();
        info!(
            "{} t{}: removed from the cluster ({}); stepping down",
            self.id(),
            self.current_term,
            self.membership()
        );
        if let Some((matched, heir)) = heir {
            if matched == last {
                info!(
                    "{} t{}: handing leadership to {heir}",
                    self.id(),
                    self.current_term
                );
                self.reply(heir, MessageBody::TimeoutNow, false);
            }
        }
        self.become_follower(self.current_term, None);
    }

    fn register_read(&mut self, id: u64) {
        let read = PendingRead {
            id,
            index: self.commit_index,
            round: self.read_round + 1,
        };
        if self.quorum_with(|_| false) {
            self.out_read_states.push(ReadState {
                id,
                index: read.index,
            });
            return;
        }
        self.pending_reads.push_back(read);
        self.read_round_needed = true;
    }

    /// Releases the reads whose round a quorum has echoed.
    fn confirm_reads(&mut self) {
        while let Some(&front) = self.pending_reads.front() {
            if !self.quorum_with(|p| p.acked_read_round >= front.round) {
                return;
            }
            self.out_read_states.push(ReadState {
                id: front.id,
                index: front.index,
            });
            self.pending_reads.pop_front();
        }
    }

    // ---- helpers ---------------------------------------------------------

    fn append_entry(&mut self, kind: EntryKind, data: Arc<[u8]>) -> LogIndex {
        let index = self.log.last_index().next();
        self.append_to_log(Entry {
            index,
            term: self.current_term,
            kind,
            data,
        });
        self.note_unpersisted(index);
        index
    }

    /// Appends to the log; a membership takes effect at once.
    fn append_to_log(&mut self, e: Entry) {
        if e.kind == EntryKind::ConfChange {
            self.note_conf_entry(&e);
        }
        self.log.append(e);
    }

    /// A ConfChange entry came into the log: its membership is in force.
    /// One that does not decode (never written by a leader of this
    /// version) changes nothing, on every server alike.
    fn note_conf_entry(&mut self, e: &Entry) {
        match Membership::from_bytes(&e.data) {
            Ok(m) => {
                info!(
                    "{} t{}: membership at {}: {m}",
                    self.id(),
                    self.current_term,
                    e.index
                );
                self.confs.push((e.index, m));
                self.on_membership_changed();
            }
            Err(why) => log::error!(
                "{} t{}: membership entry {e} does not decode ({why}); ignored",
                self.id(),
                self.current_term
            ),
        }
    }

    /// Entries from `index` were cut: memberships they made are undone.
    fn truncate_confs(&mut self, index: LogIndex) {
        let before = self.confs.len();
        while self.confs.len() > 1 && self.confs.last().is_some_and(|(i, _)| *i >= index) {
            self.confs.pop();
        }
        if self.confs.len() != before {
            info!(
                "{} t{}: membership back to {} (entries from {index} cut)",
                self.id(),
                self.current_term,
                self.membership()
            );
            self.on_membership_changed();
        }
    }

    /// The log now starts after `to`: the membership in force there
    /// becomes the first one kept.
    fn compact_confs(&mut self, to: LogIndex) {
        let keep_from = self.confs.iter().rposition(|(i, _)| *i <= to).unwrap_or(0);
        self.confs.drain(..keep_from);
    }

    fn on_membership_changed(&mut self) {
        self.membership_dirty = true;
        match self.role {
            Role::Leader => {
                self.sync_progress();
                if self
                    .lead_transferee
                    .is_some_and(|t| !self.membership().is_voter(t))
                {
                    self.lead_transferee = None;
                }
            }
            Role::Candidate | Role::PreCandidate if !self.may_campaign() => {
                self.become_follower(self.current_term, None);
            }
            _ => {}
        }
    }

    /// A leader replicates to every member: progress for those added,
    /// none for those gone.
    fn sync_progress(&mut self) {
        let me = self.config.id;
        let members = self.membership().members();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index().next();
        for id in members {
            if id != me {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next));
            }
        }
    }

    /// The leader asks us to campaign now (leadership transfer): a real
    /// election, skipping PreVote, that voters in a lease take part in.
    fn handle_timeout_now(&mut self, from: NodeId) {
        if self.role == Role::Leader || !self.may_campaign() {
            return;
        }
        info!(
            "{} t{}: {from} hands leadership over; campaigning now",
            self.id(),
            self.current_term
        );
        self.campaign(false, true);
    }

    fn note_unpersisted(&mut self, index: LogIndex) {
        self.unpersisted_from = Some(match self.unpersisted_from {
            Some(i) if i <= index => i,
            _ => index,
        });
    }

    fn reply(&mut self, to: NodeId, body: MessageBody, after_persist: bool) {
        let m = Message {
            from: self.config.id,
            to,
            term: self.current_term,
            body,
        };
        self.send(m, after_persist);
    }

    fn send(&mut self, m: Message, after_persist: bool) {
        if after_persist {
            self.out_after_persist.push(m);
        } else {
            self.out_messages.push(m);
        }
    }
}
