//! The Raft consensus core: a deterministic state machine with no I/O.
//!
//! See `docs/ARCHITECTURE.md` for the inputs, the outputs and the persistence
//! contract.

pub mod membership;
pub mod message;
pub mod types;

pub use membership::{ConfChange, Membership, VoteResult};
pub use message::{Message, MessageBody, RejectHint};
pub use types::{
    Entry, EntryKind, HardState, LogIndex, NodeId, PeerStatus, ProgressState, Role, Snapshot,
    SnapshotData, SnapshotSource, Status, Term,
};

pub mod core;
pub mod log;
pub mod progress;

pub use self::core::{ConfChangeError, Config, NotLeader, Raft, ReadState, Ready, SoftState};
