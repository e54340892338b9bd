//! Commands of the key-value state machine: what a client asks for, and what
//! the state machine answers. A write travels through the log as the `data`
//! of an `EntryKind::Command` entry, encoded by `Command::encode`.

/// Identifies a client session; chosen at random by the client.
pub type ClientId = u64;

/// One operation on the key-value store. Keys and values are bytes; the CLI
/// uses UTF-8 strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Set `key` to `new` if its current value is `expected` (`None`: absent).
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    /// A raw log entry (the seeds' ClientLogAppend): logged and applied as is,
    /// changing no key.
    Append {
        data: Vec<u8>,
    },
}

/// A client's operation with its session: the state machine applies each
/// `(client_id, seq)` once and answers a retry with the first answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub client_id: ClientId,
    /// Increases by one for each new request of this client; a retry reuses it.
    pub seq: u64,
    pub op: Op,
}

/// What the state machine answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Put or Append applied.
    Done,
    /// Get: the value, or `None` when absent.
    Value(Option<Vec<u8>>),
    /// Delete: whether the key existed.
    Deleted(bool),
    /// Cas applied.
    CasOk,
    /// Cas not applied: the current value (`None`: absent).
    CasMismatch(Option<Vec<u8>>),
}
