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
    /// A raw log entry: logged and applied as is,
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

use crate::codec::{put_bytes, put_opt_bytes, put_u64, put_u8, DecodeError, Endian, Reader};

/// Format byte leading every command stored in the log.
pub const COMMAND_FORMAT_V1: u8 = 1;

/// A borrowed view of an [`Op`]: what encoding needs, so that a client can
/// send an operation without building an owned one (the load generator).
#[derive(Clone, Copy, Debug)]
pub enum OpRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: &'a [u8],
    },
    Append {
        data: &'a [u8],
    },
}

/// Longest key a request may name, in bytes.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// Longest value, in bytes: a Put's value, a Cas's expected and new values,
/// an Append's data. Chosen so that a write of the largest size still goes
/// to a follower in one AppendEntries frame, well under the frame maximum,
/// and is quick enough to send and sync that heartbeats behind it are not
/// held up past an election timeout.
pub const VALUE_BYTES_MAX: usize = 4 << 20;
/// The longest encoded command (`Command::encode`): a Cas whose key and two
/// values are all at their maximum, with the format byte, client id, seq,
/// op tag, length prefixes and the `expected` presence byte.
pub const COMMAND_BYTES_MAX: usize =
    1 + 8 + 8 + 1 + 4 + KEY_BYTES_MAX + 1 + 4 + VALUE_BYTES_MAX + 4 + VALUE_BYTES_MAX;

/// A request whose key or value is longer than the protocol allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverLimit {
    /// What is too long: "key", "value", "expected value", "new value", "data".
    pub what: &'static str,
    pub bytes: usize,
    pub bytes_max: usize,
    /// The limit's name in the code and in docs/PROTOCOL.md.
    pub limit: &'static str,
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} bytes is over the limit of {} bytes ({})",
            self.what, self.bytes, self.bytes_max, self.limit
        )
    }
}

impl std::error::Error for OverLimit {}

fn within(
    what: &'static str,
    b: &[u8],
    bytes_max: usize,
    limit: &'static str,
) -> Result<(), OverLimit> {
    if b.len() > bytes_max {
        return Err(OverLimit {
            what,
            bytes: b.len(),
            bytes_max,
            limit,
        });
    }
    Ok(())
}

impl<'a> OpRef<'a> {
    pub fn decode(r: &mut Reader<'a>) -> Result<OpRef<'a>, DecodeError> {
        Ok(match r.u8("op")? {
            1 => OpRef::Put {
                key: r.bytes("key")?,
                value: r.bytes("value")?,
            },
            2 => OpRef::Get {
                key: r.bytes("key")?,
            },
            3 => OpRef::Delete {
                key: r.bytes("key")?,
            },
            4 => OpRef::Cas {
                key: r.bytes("key")?,
                expected: r.opt_slice("expected")?,
                new: r.bytes("new")?,
            },
            5 => OpRef::Append {
                data: r.bytes("data")?,
            },
            tag => {
                return Err(DecodeError::BadTag {
                    field: "op",
                    tag: tag as u64,
                })
            }
        })
    }

    /// Checks the key and values against `KEY_BYTES_MAX` and
    /// `VALUE_BYTES_MAX`; a node refuses a request over them before
    /// proposing it.
    pub fn check_limits(&self) -> Result<(), OverLimit> {
        let key = |k| within("key", k, KEY_BYTES_MAX, "KEY_BYTES_MAX");
        let value = |what, v| within(what, v, VALUE_BYTES_MAX, "VALUE_BYTES_MAX");
        match *self {
            OpRef::Put { key: k, value: v } => {
                key(k)?;
                value("value", v)
            }
            OpRef::Get { key: k } | OpRef::Delete { key: k } => key(k),
            OpRef::Cas {
                key: k,
                expected,
                new,
            } => {
                key(k)?;
                value("expected value", expected.unwrap_or_default())?;
                value("new value", new)
            }
            OpRef::Append { data } => value("data", data),
        }
    }

    pub fn to_owned(self) -> Op {
        match self {
            OpRef::Put { key, value } => Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            },
            OpRef::Get { key } => Op::Get { key: key.to_vec() },
            OpRef::Delete { key } => Op::Delete { key: key.to_vec() },
            OpRef::Cas { key, expected, new } => Op::Cas {
                key: key.to_vec(),
                expected: expected.map(<[u8]>::to_vec),
                new: new.to_vec(),
            },
            OpRef::Append { data } => Op::Append {
                data: data.to_vec(),
            },
        }
    }

    /// Appends the op: a tag byte, then its fields (see docs/PROTOCOL.md).
    pub fn encode(self, out: &mut Vec<u8>) {
        match self {
            OpRef::Put { key, value } => {
                put_u8(out, 1);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            OpRef::Get { key } => {
                put_u8(out, 2);
                put_bytes(out, key);
            }
            OpRef::Delete { key } => {
                put_u8(out, 3);
                put_bytes(out, key);
            }
            OpRef::Cas { key, expected, new } => {
                put_u8(out, 4);
                put_bytes(out, key);
                put_opt_bytes(out, expected);
                put_bytes(out, new);
            }
            OpRef::Append { data } => {
                put_u8(out, 5);
                put_bytes(out, data);
            }
        }
    }
}

impl Op {
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            Op::Put { key, value } => OpRef::Put { key, value },
            Op::Get { key } => OpRef::Get { key },
            Op::Delete { key } => OpRef::Delete { key },
            Op::Cas { key, expected, new } => OpRef::Cas {
                key,
                expected: expected.as_deref(),
                new,
            },
            Op::Append { data } => OpRef::Append { data },
        }
    }

    /// Appends the op: a tag byte, then its fields (see docs/PROTOCOL.md).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.as_ref().encode(out);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Op, DecodeError> {
        OpRef::decode(r).map(OpRef::to_owned)
    }

    /// The key acted on, if any.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Delete { key } | Op::Cas { key, .. } => {
                Some(key)
            }
            Op::Append { .. } => None,
        }
    }

    /// Whether the op changes nothing (and so need not go through the log).
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Get { .. })
    }
}

/// A borrowed view of a [`Command`], as [`OpRef`] is of an [`Op`]: the state
/// machine applies from it, and the load generator sends from it, without
/// copying keys and values.
#[derive(Clone, Copy, Debug)]
pub struct CommandRef<'a> {
    pub client_id: ClientId,
    pub seq: u64,
    pub op: OpRef<'a>,
}

impl<'a> CommandRef<'a> {
    /// The command as stored in a log entry: format byte, client id, seq, op.
    pub fn encode(self, out: &mut Vec<u8>) {
        put_u8(out, COMMAND_FORMAT_V1);
        self.encode_fields(out);
    }

    /// Client id, seq, op (the wire form, without the format byte).
    pub fn encode_fields(self, out: &mut Vec<u8>) {
        put_u64(out, self.client_id);
        put_u64(out, self.seq);
        self.op.encode(out);
    }

    pub fn decode_fields(r: &mut Reader<'a>) -> Result<CommandRef<'a>, DecodeError> {
        Ok(CommandRef {
            client_id: r.u64("client_id")?,
            seq: r.u64("seq")?,
            op: OpRef::decode(r)?,
        })
    }

    /// Decodes a log entry's data, borrowing the op's bytes from `buf`.
    pub fn decode(buf: &'a [u8]) -> Result<CommandRef<'a>, DecodeError> {
        let mut r = Reader::new(buf);
        match r.u8("format")? {
            COMMAND_FORMAT_V1 => {}
            tag => {
                return Err(DecodeError::BadTag {
                    field: "format",
                    tag: tag as u64,
                })
            }
        }
        let c = CommandRef::decode_fields(&mut r)?;
        r.finish()?;
        Ok(c)
    }

    pub fn to_owned(self) -> Command {
        Command {
            client_id: self.client_id,
            seq: self.seq,
            op: self.op.to_owned(),
        }
    }
}

impl Command {
    pub fn as_ref(&self) -> CommandRef<'_> {
        CommandRef {
            client_id: self.client_id,
            seq: self.seq,
            op: self.op.as_ref(),
        }
    }

    /// The command as stored in a log entry: format byte, client id, seq, op.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.as_ref().encode(out);
    }

    /// Decodes a log entry's data.
    pub fn decode(buf: &[u8]) -> Result<Command, DecodeError> {
        CommandRef::decode(buf).map(CommandRef::to_owned)
    }
}

impl OpResult {
    /// Appends the result as the wire carries it (big-endian lengths).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_in(Endian::Big, out);
    }

    /// Appends the result with its lengths in `endian` order (the key-value
    /// snapshot writes them little-endian).
    pub fn encode_in(&self, endian: Endian, out: &mut Vec<u8>) {
        match self {
            OpResult::Done => put_u8(out, 1),
            OpResult::Value(v) => {
                put_u8(out, 2);
                endian.put_opt_bytes(out, v.as_deref());
            }
            OpResult::Deleted(existed) => {
                put_u8(out, 3);
                put_u8(out, *existed as u8);
            }
            OpResult::CasOk => put_u8(out, 4),
            OpResult::CasMismatch(v) => {
                put_u8(out, 5);
                endian.put_opt_bytes(out, v.as_deref());
            }
        }
    }

    /// Reads a result in the reader's byte order.
    pub fn decode(r: &mut Reader<'_>) -> Result<OpResult, DecodeError> {
        Ok(match r.u8("result")? {
            1 => OpResult::Done,
            2 => OpResult::Value(r.opt_bytes("value")?),
            3 => OpResult::Deleted(r.bool("existed")?),
            4 => OpResult::CasOk,
            5 => OpResult::CasMismatch(r.opt_bytes("current")?),
            tag => {
                return Err(DecodeError::BadTag {
                    field: "result",
                    tag: tag as u64,
                })
            }
        })
    }
}
