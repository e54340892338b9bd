//! The vocabulary of the core: ids, terms, indexes, log entries and hard state.
//!
//! Newtypes keep a term from being passed where an index is expected. Index 0
//! and term 0 mean "none", exactly as in the Raft paper: the log is 1-based and
//! the entry "before the first" has index 0 and term 0.

use std::fmt;
use std::sync::Arc;

use super::membership::Membership;

/// A server's id, as written in `cluster.toml` (`id = 1`) and shown as `n1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// A Raft term. Term 0 is "before any election".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Term(pub u64);

/// A 1-based position in the log. Index 0 means "before the first entry".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogIndex(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one; `LogIndex(0).prev()` is 0.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// `self + n`.
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0 + n)
    }
}

/// What an entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Appended by a new leader so that entries of earlier terms commit
    /// (Raft paper, section 5.4.2 and 8). Carries no data; applies to nothing.
    Noop = 0,
    /// An application command; `data` is opaque to the core (the KV state
    /// machine's encoded command, see `kv::Command`).
    Command = 1,
    /// A new membership (`Membership::encode`): takes effect on every
    /// server as soon as it is in its log (Raft paper, section 6).
    ConfChange = 2,
}

impl EntryKind {
    /// Decodes the kind byte used by the wire and storage formats.
    pub fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            0 => Some(EntryKind::Noop),
            1 => Some(EntryKind::Command),
            2 => Some(EntryKind::ConfChange),
            _ => None,
        }
    }
}

/// One log entry. Two entries with the same `index` and `term` are the same
/// entry and have identical logs before them (Log Matching Property).
///
/// Cloning an entry shares its data: the leader hands the same entry to its
/// own log, to the storage thread, to an AppendEntries for each follower
/// and to the state machine without copying the payload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub index: LogIndex,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Arc<[u8]>,
}

impl fmt::Display for Entry {
    /// `index/term`, the shorthand used in transcripts: `8/3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.term)
    }
}

/// A snapshot of the state machine: the effect of every entry up to and
/// including `index` (whose entry had `term`), as opaque bytes the
/// application produced. Entries up to `index` may then be dropped from the
/// log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub index: LogIndex,
    pub term: Term,
    /// The membership in force at `index` (empty in a snapshot written
    /// before memberships were recorded: the bootstrap one then applies).
    pub membership: Membership,
    pub data: SnapshotData,
}

/// Where a snapshot's bytes are: in memory (the simulator, tests, an old
/// peer's whole-message snapshot), or behind a [`SnapshotSource`] the node
/// reads in pieces (a file it holds open), so that a large state is never
/// held whole in memory to be kept, sent or installed. The core only
/// clones it and hands it on.
#[derive(Clone)]
pub enum SnapshotData {
    Bytes(Arc<[u8]>),
    Source(Arc<dyn SnapshotSource>),
}

/// Snapshot bytes the core does not hold: a file, read at offsets.
pub trait SnapshotSource: Send + Sync + fmt::Debug {
    /// Bytes of data.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads data from `offset` into `buf`, whole unless the data ends
    /// first; returns how many bytes it read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
    /// All the data, to decode it: a view that costs no copy (a file
    /// mapped into memory), dropped once decoded.
    fn view(&self) -> std::io::Result<Box<dyn AsRef<[u8]> + Send>>;
    /// For the storage that made it, to recognise its own.
    fn as_any(&self) -> &dyn std::any::Any;
}

impl SnapshotData {
    /// Bytes of data.
    pub fn len(&self) -> usize {
        match self {
            SnapshotData::Bytes(b) => b.len(),
            SnapshotData::Source(s) => s.len() as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads data from `offset` into `buf` (see [`SnapshotSource::read_at`]).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            SnapshotData::Bytes(b) => {
                let from = (offset as usize).min(b.len());
                let n = buf.len().min(b.len() - from);
                buf[..n].copy_from_slice(&b[from..from + n]);
                Ok(n)
            }
            SnapshotData::Source(s) => s.read_at(offset, buf),
        }
    }

    /// All the data, to decode it (see [`SnapshotSource::view`]).
    pub fn view(&self) -> std::io::Result<Box<dyn AsRef<[u8]> + Send>> {
        match self {
            SnapshotData::Bytes(b) => Ok(Box::new(b.clone())),
            SnapshotData::Source(s) => s.view(),
        }
    }
}

impl From<Arc<[u8]>> for SnapshotData {
    fn from(b: Arc<[u8]>) -> SnapshotData {
        SnapshotData::Bytes(b)
    }
}

impl From<Vec<u8>> for SnapshotData {
    fn from(b: Vec<u8>) -> SnapshotData {
        SnapshotData::Bytes(b.into())
    }
}

impl From<&[u8]> for SnapshotData {
    fn from(b: &[u8]) -> SnapshotData {
        SnapshotData::Bytes(b.into())
    }
}

/// Equal data: the same bytes, wherever they are (a source is read in
/// pieces to compare; one that cannot be read equals only itself).
impl PartialEq for SnapshotData {
    fn eq(&self, other: &SnapshotData) -> bool {
        match (self, other) {
            (SnapshotData::Bytes(a), SnapshotData::Bytes(b)) => a == b,
            (SnapshotData::Source(a), SnapshotData::Source(b))
                if std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)) =>
            {
                true
            }
            _ if self.len() != other.len() => false,
            _ => {
                const PIECE: usize = 64 << 10;
                let (mut x, mut y) = (vec![0u8; PIECE], vec![0u8; PIECE]);
                let mut at = 0u64;
                while at < self.len() as u64 {
                    match (self.read_at(at, &mut x), other.read_at(at, &mut y)) {
                        (Ok(n), Ok(m)) if n == m && n > 0 && x[..n] == y[..n] => at += n as u64,
                        _ => return false,
                    }
                }
                true
            }
        }
    }
}

impl Eq for SnapshotData {}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            SnapshotData::Source(s) => write!(f, "Source({s:?})"),
        }
    }
}

/// The state every server must persist before it answers (Figure 2,
/// "Persistent state on all servers"), apart from the log itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this server has seen; increases monotonically.
    pub current_term: Term,
    /// Candidate that received this server's vote in `current_term`, if any.
    pub voted_for: Option<NodeId>,
}

/// A server's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Campaigning in a PreVote round: term and vote are unchanged until a
    /// majority says it would vote.
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    /// Lower-case name used by status output and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "precandidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }

    /// Parses `name()` back.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "follower" => Some(Role::Follower),
            "precandidate" => Some(Role::PreCandidate),
            "candidate" => Some(Role::Candidate),
            "leader" => Some(Role::Leader),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the leader is replicating to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// One AppendEntries at a time, until one succeeds: used after a
    /// rejection or a restart, while `next_index` is being found.
    Probe,
    /// Optimistic pipelining: up to `inflight_msgs_max` AppendEntries in flight.
    Replicate,
    /// An InstallSnapshot is out (the follower needs entries the leader
    /// has compacted away); nothing else is sent until it is acknowledged
    /// or presumed lost.
    Snapshot,
}

/// The leader's view of one follower, as shown by `raft-ctl status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// AppendEntries sent and not yet acknowledged.
    pub inflight: u32,
}

/// A read-only snapshot of a core's state, for status output and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub current_term: Term,
    pub voted_for: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_applied: LogIndex,
    /// First index held in the log (1 when no entry was ever compacted).
    pub first_index: LogIndex,
    /// Last index in the log, 0 when empty.
    pub last_index: LogIndex,
    /// Per-follower progress (learners included); empty unless leader.
    pub peers: Vec<PeerStatus>,
    /// The membership in force: the newest in the log.
    pub membership: Membership,
    /// The index of the entry that made it (0: the bootstrap membership,
    /// or the snapshot's).
    pub membership_index: LogIndex,
    /// A change is under way: the membership is joint or not committed.
    pub membership_changing: bool,
    /// The node leadership is being handed to, while a transfer runs.
    pub transferring_to: Option<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_name_round_trips_and_is_its_display() {
        for role in [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
        ] {
            assert_eq!(Role::from_name(role.name()), Some(role));
            assert_eq!(role.to_string(), role.name());
        }
        assert_eq!(Role::Leader.to_string(), "leader");
        assert_eq!(Role::from_name("king"), None);
    }
}
