//! Frames: the 12-byte header and every frame type.

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

use crate::codec::{
    put_bool, put_bytes, put_opt_u64, put_u16, put_u32, put_u64, put_u8, DecodeError, Reader,
};
use crate::kv::{Command, CommandRef, OpResult};
use crate::raft::membership::MEMBERSHIP_BYTES_MAX;
use crate::raft::{
    ConfChange, Entry, EntryKind, LogIndex, Membership, Message, MessageBody, NodeId, PeerStatus,
    ProgressState, RejectHint, Role, Snapshot, Status, Term,
};

/// First two bytes of every frame: "RK".
pub const MAGIC: u16 = 0x524B;
/// Protocol version carried by every frame.
pub const VERSION: u8 = 1;
/// magic u16, version u8, type u8, body length u32, CRC-32C u32.
pub const HEADER_BYTES: usize = 12;
/// Largest body accepted, checked before anything is allocated. Bounds an
/// AppendEntries (the core's `append_bytes_max` is far below it).
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// Payload of one Fragment frame at most.
pub const FRAGMENT_BYTES_MAX: usize = 1 << 20;
/// Largest Raft message body a peer may send in Fragment frames: what
/// bounds a snapshot a leader can send.
pub const FRAGMENTED_BYTES_MAX: usize = 1 << 30;

/// Tag of a KV request body.
const REQUEST_KV: u8 = 1;

const TYPE_HELLO: u8 = 1;
const TYPE_HELLO_OK: u8 = 2;
const TYPE_HELLO_REJECT: u8 = 3;
const TYPE_RAFT: u8 = 10;
const TYPE_FRAGMENT: u8 = 11;
const TYPE_SNAPSHOT_BEGIN: u8 = 12;
const TYPE_SNAPSHOT_CHUNK: u8 = 13;
const TYPE_SNAPSHOT_ACK: u8 = 14;
const TYPE_REQUEST: u8 = 20;
const TYPE_RESPONSE: u8 = 21;

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Peer(NodeId),
    Client,
}

/// Error codes of `HelloReject` and `Response::Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request could not be understood.
    BadRequest,
    /// The Hello named another cluster.
    WrongCluster,
    /// The Hello claimed a peer id that is not in this node's config.
    UnknownPeer,
    /// No leader, leadership lost, or shutting down: the outcome of a write
    /// is unknown; retry with the same client id and sequence number.
    Unavailable,
    /// The node gave up waiting.
    Timeout,
    /// Too many requests waiting; retry later.
    TooBusy,
    /// A bug or a storage failure on the node.
    Internal,
    /// A write from a client id without a session (evicted, or never
    /// opened with seq 1) and a seq past 1: not applied, and whether an
    /// earlier copy was is unknown. Start a new session.
    SessionExpired,
    /// A valid request that cannot be carried out now or at all: a
    /// membership change while another is under way, promoting a learner
    /// far behind, removing the last voter. The message says why.
    Refused,
    /// The node's disk is full: this copy of the write was not proposed
    /// (one sent earlier to another leader may still apply). Retry with the
    /// same client id and seq, like Unavailable.
    DiskFull,
    /// The connection's certificate does not allow this: a peer link
    /// whose certificate is not the claimed node's, a client Hello with a
    /// node's certificate, an admin request with a client's certificate.
    Forbidden,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::WrongCluster => 2,
            ErrorCode::UnknownPeer => 3,
            ErrorCode::Unavailable => 4,
            ErrorCode::Timeout => 5,
            ErrorCode::TooBusy => 6,
            ErrorCode::Internal => 7,
            ErrorCode::SessionExpired => 8,
            ErrorCode::Refused => 9,
            ErrorCode::DiskFull => 10,
            ErrorCode::Forbidden => 11,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_u16(c: u16) -> ErrorCode {
        match c {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::WrongCluster,
            3 => ErrorCode::UnknownPeer,
            4 => ErrorCode::Unavailable,
            5 => ErrorCode::Timeout,
            6 => ErrorCode::TooBusy,
            7 => ErrorCode::Internal,
            8 => ErrorCode::SessionExpired,
            9 => ErrorCode::Refused,
            10 => ErrorCode::DiskFull,
            11 => ErrorCode::Forbidden,
            c => ErrorCode::Other(c),
        }
    }
}

/// Faults a node injects into its own peer traffic and its own storage
/// (failure drills).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSpec {
    /// Groups that cannot talk to each other; empty: no partition.
    pub partition: Vec<Vec<NodeId>>,
    /// Share of this node's outgoing peer messages dropped, per million.
    pub drop_rate_ppm: u32,
    pub delay_ms: u32,
    pub jitter_ms: u32,
    /// Share of this node's outgoing peer messages sent twice, per million.
    pub duplicate_rate_ppm: u32,
    /// Peers this node sends nothing to (it still hears them): a one-way
    /// cut.
    pub block_to: Vec<NodeId>,
    /// What this node's storage does to its writes.
    pub disk: DiskFault,
}

/// A fault of the node's own storage, applied on its storage thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskFault {
    #[default]
    None,
    /// Every write batch (write and fsync) takes this much longer.
    Stall { ms: u32 },
    /// The next fsync fails with EIO: the node stops.
    Eio,
    /// Writes fail with ENOSPC, as on a full disk, until the fault is
    /// cleared.
    Full,
}

impl DiskFault {
    /// Its tag on the wire (docs/PROTOCOL.md, "Fault requests").
    pub fn tag(self) -> u8 {
        match self {
            DiskFault::None => 0,
            DiskFault::Stall { .. } => 1,
            DiskFault::Eio => 2,
            DiskFault::Full => 3,
        }
    }
}

impl fmt::Display for DiskFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskFault::None => write!(f, "disk ok"),
            DiskFault::Stall { ms } => write!(f, "disk stall {ms} ms"),
            DiskFault::Eio => write!(f, "disk eio on next fsync"),
            DiskFault::Full => write!(f, "disk full"),
        }
    }
}

/// Most a fault may drop or duplicate: every message.
pub const DROP_RATE_PPM_MAX: u32 = 1_000_000;
/// Longest delay or jitter a fault may add to a message, and longest
/// stall it may add to a disk write.
pub const FAULT_DELAY_MS_MAX: u32 = 60_000;

impl FaultSpec {
    pub fn is_none(&self) -> bool {
        *self == FaultSpec::default()
    }

    /// Checks the spec against the cluster's node ids: rates and delays in
    /// range, every partitioned or blocked id a node of the cluster, each
    /// in one group (or once in the block list) at most, no empty group. A
    /// node refuses an invalid spec whole.
    pub fn validate(&self, ids: &[NodeId]) -> Result<(), String> {
        for (name, ppm) in [
            ("drop_rate_ppm", self.drop_rate_ppm),
            ("duplicate_rate_ppm", self.duplicate_rate_ppm),
        ] {
            if ppm > DROP_RATE_PPM_MAX {
                return Err(format!(
                    "{name} {ppm} is over {DROP_RATE_PPM_MAX} (every message)"
                ));
            }
        }
        let stall_ms = match self.disk {
            DiskFault::Stall { ms: 0 } => return Err("a disk stall of 0 ms".into()),
            DiskFault::Stall { ms } => ms,
            _ => 0,
        };
        for (name, ms) in [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("disk stall_ms", stall_ms),
        ] {
            if ms > FAULT_DELAY_MS_MAX {
                return Err(format!("{name} {ms} is over {FAULT_DELAY_MS_MAX}"));
            }
        }
        let mut seen = Vec::new();
        for (g, group) in self.partition.iter().enumerate() {
            if group.is_empty() {
                return Err(format!("partition group {} is empty", g + 1));
            }
            for id in group {
                if !ids.contains(id) {
                    return Err(format!(
                        "partition names {id}, which is not a node of this cluster"
                    ));
                }
                if seen.contains(id) {
                    return Err(format!("partition names {id} in more than one place"));
                }
                seen.push(*id);
            }
        }
        for (i, id) in self.block_to.iter().enumerate() {
            if !ids.contains(id) {
                return Err(format!(
                    "block names {id}, which is not a node of this cluster"
                ));
            }
            if self.block_to[..i].contains(id) {
                return Err(format!("block names {id} twice"));
            }
        }
        Ok(())
    }
}

/// A node's state as `raft-ctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub status: Status,
    pub addr: String,
    pub fault: FaultSpec,
    pub uptime_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestBody {
    Kv {
        command: Command,
        stale_read: bool,
    },
    Status,
    /// Entries `from..=to` (`to` 0: up to the last), at most `entries_max`.
    Log {
        from: LogIndex,
        to: LogIndex,
        entries_max: u32,
    },
    Fault(FaultSpec),
    /// List the members, or change them (at the leader; answered once the
    /// change is committed, the settled membership after it included).
    Member(MemberRequest),
    /// Hand leadership to this voter (at the leader; answered once the
    /// transfer has begun).
    TransferLeader(NodeId),
}

/// What a Member request asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberRequest {
    List,
    Change(ConfChange),
}

/// The members as one node sees them: the membership in force, whether a
/// change is under way, and (at the leader) how far each member has the
/// log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersInfo {
    /// The node that answers, and the leader it knows of.
    pub node: NodeId,
    pub leader: Option<NodeId>,
    pub membership: Membership,
    pub membership_index: LogIndex,
    pub changing: bool,
    pub commit_index: LogIndex,
    pub last_index: LogIndex,
    /// Each member's match index as the leader knows it (the leader's own
    /// is its last index); empty at a follower.
    pub matched: Vec<(NodeId, LogIndex)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    Kv {
        index: LogIndex,
        result: OpResult,
    },
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Status(Box<NodeStatus>),
    Log {
        commit_index: LogIndex,
        first_index: LogIndex,
        last_index: LogIndex,
        entries: Vec<Entry>,
    },
    FaultOk,
    Members(Box<MembersInfo>),
    /// The leader began handing leadership to this voter.
    TransferStarted(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        cluster: String,
        from: Sender,
    },
    HelloOk {
        node: NodeId,
    },
    HelloReject {
        code: ErrorCode,
        reason: String,
    },
    Raft(Message),
    /// A piece of a Raft message too large for one frame (an
    /// InstallSnapshot): the payloads of a link's fragments, up to and
    /// including the `last` one, are together the body of one Raft frame.
    Fragment {
        last: bool,
        data: Vec<u8>,
    },
    /// A streamed InstallSnapshot starts: `message` is the InstallSnapshot
    /// with empty data; `len` bytes of data follow in SnapshotChunk frames
    /// of the same `transfer`, in order. On the link the leader dialled.
    SnapshotBegin {
        transfer: u64,
        len: u64,
        message: Message,
    },
    /// Data of a streamed snapshot from byte `offset`.
    SnapshotChunk {
        transfer: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// The receiver of `transfer` has written its first `received` bytes:
    /// the sender may send more (a bounded window ahead of this). Sent back
    /// on the link the sender dialled.
    SnapshotAck {
        transfer: u64,
        received: u64,
    },
    Request {
        request_id: u64,
        body: RequestBody,
    },
    Response {
        request_id: u64,
        body: ResponseBody,
    },
}

/// A frame that cannot be decoded; the connection it came on is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    BadMagic(u16),
    UnsupportedVersion(u8),
    UnknownType(u8),
    TooLarge { length: usize, max: usize },
    Crc { expected: u32, actual: u32 },
    Body { frame_type: u8, error: DecodeError },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic(m) => write!(f, "bad magic 0x{m:04x} (expected 0x{MAGIC:04x})"),
            FrameError::UnsupportedVersion(v) => write!(
                f,
                "unsupported protocol version {v} (this node speaks {VERSION})"
            ),
            FrameError::UnknownType(t) => write!(f, "unknown frame type {t}"),
            FrameError::TooLarge { length, max } => {
                write!(f, "frame body of {length} bytes exceeds the maximum {max}")
            }
            FrameError::Crc { expected, actual } => {
                write!(
                    f,
                    "CRC mismatch: header says 0x{expected:08x}, body has 0x{actual:08x}"
                )
            }
            FrameError::Body { frame_type, error } => {
                write!(f, "bad body of frame type {frame_type}: {error}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends one whole frame to `out`.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    encode_framed(out, |out| encode_body(frame, out));
}

/// Appends a KV request frame built from borrowed parts: the same bytes as
/// `encode_frame` of the equivalent `Frame::Request`, without building it.
pub fn encode_kv_request(
    request_id: u64,
    command: CommandRef<'_>,
    stale_read: bool,
    out: &mut Vec<u8>,
) {
    encode_framed(out, |out| {
        put_u64(out, request_id);
        encode_kv_body(command, stale_read, out);
        TYPE_REQUEST
    });
}

fn encode_kv_body(command: CommandRef<'_>, stale_read: bool, out: &mut Vec<u8>) {
    put_u8(out, REQUEST_KV);
    put_bool(out, stale_read);
    command.encode_fields(out);
}

/// The header, then what `body` appends (it returns the frame type); the
/// header's length and CRC are filled in after.
fn encode_framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>) -> u8) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    let frame_type = body(out);
    let body_len = out.len() - start - HEADER_BYTES;
    let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    let h = &mut out[start..start + HEADER_BYTES];
    BigEndian::write_u16(&mut h[0..2], MAGIC);
    h[2] = VERSION;
    h[3] = frame_type;
    BigEndian::write_u32(&mut h[4..8], body_len as u32);
    BigEndian::write_u32(&mut h[8..12], crc);
}

/// Decodes the frame at the start of `buf`: `Ok(None)` until it is whole.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some((frame_type, body, used)) = frame_body(buf)? else {
        return Ok(None);
    };
    let frame =
        decode_body(frame_type, body).map_err(|error| FrameError::Body { frame_type, error })?;
    Ok(Some((frame, used)))
}

/// A KV request read in place: the command borrows the receive buffer.
#[derive(Clone, Copy, Debug)]
pub struct KvRequestRef<'a> {
    pub request_id: u64,
    pub stale_read: bool,
    pub command: CommandRef<'a>,
}

/// What `decode_frame_ref` found.
#[derive(Debug)]
pub enum FrameRef<'a> {
    /// The hot path: a client's KV request, without copying its key and value.
    Kv(KvRequestRef<'a>),
    Other(Frame),
}

/// `decode_frame`, except that a KV request comes back borrowed from `buf`.
/// The same checks, the same errors.
pub fn decode_frame_ref(buf: &[u8]) -> Result<Option<(FrameRef<'_>, usize)>, FrameError> {
    let Some((frame_type, body, used)) = frame_body(buf)? else {
        return Ok(None);
    };
    let body_error = |error| FrameError::Body { frame_type, error };
    // A request body: request id (8 bytes), then the request's tag.
    if frame_type == TYPE_REQUEST && body.get(8) == Some(&REQUEST_KV) {
        let mut r = Reader::new(body);
        let kv = decode_kv_request(&mut r).map_err(body_error)?;
        r.finish().map_err(body_error)?;
        return Ok(Some((FrameRef::Kv(kv), used)));
    }
    let frame = decode_body(frame_type, body).map_err(body_error)?;
    Ok(Some((FrameRef::Other(frame), used)))
}

/// A KV request's body, as `encode_kv_request` writes it.
fn decode_kv_request<'a>(r: &mut Reader<'a>) -> Result<KvRequestRef<'a>, DecodeError> {
    let request_id = r.u64("request_id")?;
    r.u8("request")?;
    let (stale_read, command) = decode_kv_body(r)?;
    Ok(KvRequestRef {
        request_id,
        stale_read,
        command,
    })
}

/// What `encode_kv_body` writes after the request's tag.
fn decode_kv_body<'a>(r: &mut Reader<'a>) -> Result<(bool, CommandRef<'a>), DecodeError> {
    Ok((r.bool("stale_read")?, CommandRef::decode_fields(r)?))
}

/// A whole frame's type, its body, and the bytes it takes in the buffer.
type RawFrame<'a> = (u8, &'a [u8], usize);

/// Checks the header and CRC of the frame at the start of `buf`, or
/// `Ok(None)` until it is whole.
fn frame_body(buf: &[u8]) -> Result<Option<RawFrame<'_>>, FrameError> {
    if buf.len() >= 2 {
        let magic = BigEndian::read_u16(&buf[0..2]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
    }
    if buf.len() >= 3 && buf[2] != VERSION {
        return Err(FrameError::UnsupportedVersion(buf[2]));
    }
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let frame_type = buf[3];
    let length = BigEndian::read_u32(&buf[4..8]) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            length,
            max: FRAME_BYTES_MAX,
        });
    }
    if !matches!(
        frame_type,
        TYPE_HELLO
            | TYPE_HELLO_OK
            | TYPE_HELLO_REJECT
            | TYPE_RAFT
            | TYPE_FRAGMENT
            | TYPE_SNAPSHOT_BEGIN
            | TYPE_SNAPSHOT_CHUNK
            | TYPE_SNAPSHOT_ACK
            | TYPE_REQUEST
            | TYPE_RESPONSE
    ) {
        return Err(FrameError::UnknownType(frame_type));
    }
    if buf.len() < HEADER_BYTES + length {
        return Ok(None);
    }
    let body = &buf[HEADER_BYTES..HEADER_BYTES + length];
    let expected = BigEndian::read_u32(&buf[8..12]);
    let actual = crc32c::crc32c(body);
    if expected != actual {
        return Err(FrameError::Crc { expected, actual });
    }
    Ok(Some((frame_type, body, HEADER_BYTES + length)))
}

fn encode_body(frame: &Frame, out: &mut Vec<u8>) -> u8 {
    match frame {
        Frame::Hello { cluster, from } => {
            put_bytes(out, cluster.as_bytes());
            match from {
                Sender::Peer(id) => {
                    put_u8(out, 1);
                    put_u64(out, id.0);
                }
                Sender::Client => put_u8(out, 2),
            }
            TYPE_HELLO
        }
        Frame::HelloOk { node } => {
            put_u64(out, node.0);
            TYPE_HELLO_OK
        }
        Frame::HelloReject { code, reason } => {
            put_u16(out, code.to_u16());
            put_bytes(out, reason.as_bytes());
            TYPE_HELLO_REJECT
        }
        Frame::Raft(m) => {
            encode_message(m, out);
            TYPE_RAFT
        }
        Frame::Fragment { last, data } => {
            put_bool(out, *last);
            out.extend_from_slice(data);
            TYPE_FRAGMENT
        }
        Frame::SnapshotBegin {
            transfer,
            len,
            message,
        } => {
            put_u64(out, *transfer);
            put_u64(out, *len);
            encode_message(message, out);
            TYPE_SNAPSHOT_BEGIN
        }
        Frame::SnapshotChunk {
            transfer,
            offset,
            data,
        } => {
            put_u64(out, *transfer);
            put_u64(out, *offset);
            out.extend_from_slice(data);
            TYPE_SNAPSHOT_CHUNK
        }
        Frame::SnapshotAck { transfer, received } => {
            put_u64(out, *transfer);
            put_u64(out, *received);
            TYPE_SNAPSHOT_ACK
        }
        Frame::Request { request_id, body } => {
            put_u64(out, *request_id);
            encode_request(body, out);
            TYPE_REQUEST
        }
        Frame::Response { request_id, body } => {
            put_u64(out, *request_id);
            encode_response(body, out);
            TYPE_RESPONSE
        }
    }
}

fn decode_body(frame_type: u8, body: &[u8]) -> Result<Frame, DecodeError> {
    let mut r = Reader::new(body);
    let frame = match frame_type {
        TYPE_HELLO => {
            let cluster = r.string("cluster")?;
            let from = match r.u8("sender")? {
                1 => Sender::Peer(NodeId(r.u64("peer_id")?)),
                2 => Sender::Client,
                tag => {
                    return Err(DecodeError::BadTag {
                        field: "sender",
                        tag: tag as u64,
                    })
                }
            };
            Frame::Hello { cluster, from }
        }
        TYPE_HELLO_OK => Frame::HelloOk {
            node: NodeId(r.u64("node")?),
        },
        TYPE_HELLO_REJECT => Frame::HelloReject {
            code: ErrorCode::from_u16(r.u16("code")?),
            reason: r.string("reason")?,
        },
        TYPE_RAFT => Frame::Raft(decode_message(&mut r)?),
        TYPE_FRAGMENT => Frame::Fragment {
            last: r.bool("last")?,
            data: r.rest().to_vec(),
        },
        TYPE_SNAPSHOT_BEGIN => Frame::SnapshotBegin {
            transfer: r.u64("transfer")?,
            len: r.u64("len")?,
            // The node checks it is an InstallSnapshot with empty data.
            message: decode_message(&mut r)?,
        },
        TYPE_SNAPSHOT_CHUNK => Frame::SnapshotChunk {
            transfer: r.u64("transfer")?,
            offset: r.u64("offset")?,
            data: r.rest().to_vec(),
        },
        TYPE_SNAPSHOT_ACK => Frame::SnapshotAck {
            transfer: r.u64("transfer")?,
            received: r.u64("received")?,
        },
        TYPE_REQUEST => Frame::Request {
            request_id: r.u64("request_id")?,
            body: decode_request(&mut r)?,
        },
        TYPE_RESPONSE => Frame::Response {
            request_id: r.u64("request_id")?,
            body: decode_response(&mut r)?,
        },
        t => {
            return Err(DecodeError::BadTag {
                field: "frame_type",
                tag: t as u64,
            })
        }
    };
    r.finish()?;
    Ok(frame)
}

/// Bytes of an entry besides its data: index, term, kind, data length.
const ENTRY_FIXED_BYTES: usize = 8 + 8 + 1 + 4;

fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    put_u64(out, e.index.0);
    put_u64(out, e.term.0);
    put_u8(out, e.kind as u8);
    put_bytes(out, &e.data);
}

fn decode_entry(r: &mut Reader<'_>) -> Result<Entry, DecodeError> {
    let index = LogIndex(r.u64("entry.index")?);
    let term = Term(r.u64("entry.term")?);
    let kind_byte = r.u8("entry.kind")?;
    let kind = EntryKind::from_u8(kind_byte).ok_or(DecodeError::BadTag {
        field: "entry.kind",
        tag: kind_byte as u64,
    })?;
    Ok(Entry {
        index,
        term,
        kind,
        data: r.bytes("entry.data")?.into(),
    })
}

fn encode_entries(entries: &[Entry], out: &mut Vec<u8>) {
    put_u32(out, entries.len() as u32);
    for e in entries {
        encode_entry(e, out);
    }
}

fn decode_entries(r: &mut Reader<'_>) -> Result<Vec<Entry>, DecodeError> {
    let n = r.count("entries", ENTRY_FIXED_BYTES)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(decode_entry(r)?);
    }
    Ok(v)
}

/// Bytes of a Raft frame's body carrying an InstallSnapshot besides the
/// snapshot's data: from, to, term, message type, index, term, read_round,
/// the membership (length and bytes, at most), data length.
const INSTALL_SNAPSHOT_FIXED_BYTES: usize =
    8 + 8 + 8 + 1 + 8 + 8 + 8 + 4 + MEMBERSHIP_BYTES_MAX + 4;

/// Largest snapshot (its data) one InstallSnapshot can carry, in fragments:
/// a larger one cannot be sent (a receiver refuses the message).
pub const SNAPSHOT_DATA_BYTES_MAX: usize = FRAGMENTED_BYTES_MAX - INSTALL_SNAPSHOT_FIXED_BYTES;

/// Appends `m` as Fragment frames of at most `FRAGMENT_BYTES_MAX` payload
/// bytes each, the last one flagged: how an InstallSnapshot travels, since
/// a snapshot may exceed one frame.
pub fn encode_raft_fragments(m: &Message, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    encode_message(m, &mut body);
    let n = body.len().div_ceil(FRAGMENT_BYTES_MAX);
    for (i, chunk) in body.chunks(FRAGMENT_BYTES_MAX).enumerate() {
        encode_framed(out, |out| {
            put_bool(out, i + 1 == n);
            out.extend_from_slice(chunk);
            TYPE_FRAGMENT
        });
    }
}

/// Appends a SnapshotChunk frame of `len` data bytes that `fill` writes
/// in place, straight into `out` (a snapshot file read into the frame,
/// with no buffer between). If `fill` fails, `out` is left as it was.
pub fn encode_snapshot_chunk(
    out: &mut Vec<u8>,
    transfer: u64,
    offset: u64,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let start = out.len();
    let mut filled = Ok(());
    encode_framed(out, |out| {
        put_u64(out, transfer);
        put_u64(out, offset);
        let at = out.len();
        out.resize(at + len, 0);
        filled = fill(&mut out[at..]);
        TYPE_SNAPSHOT_CHUNK
    });
    if filled.is_err() {
        out.truncate(start);
    }
    filled
}

/// Decodes a Raft message from the payloads of its fragments, joined.
pub fn decode_raft_fragments(body: &[u8]) -> Result<Message, FrameError> {
    let error = |error| FrameError::Body {
        frame_type: TYPE_RAFT,
        error,
    };
    let mut r = Reader::new(body);
    let m = decode_message(&mut r).map_err(error)?;
    r.finish().map_err(error)?;
    Ok(m)
}

fn encode_message(m: &Message, out: &mut Vec<u8>) {
    put_u64(out, m.from.0);
    put_u64(out, m.to.0);
    put_u64(out, m.term.0);
    match &m.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            transfer,
        } => {
            put_u8(out, 1);
            put_bool(out, *pre_vote);
            put_u64(out, last_log_index.0);
            put_u64(out, last_log_term.0);
            put_bool(out, *transfer);
        }
        MessageBody::TimeoutNow => put_u8(out, 6),
        MessageBody::RequestVoteResponse {
            pre_vote,
            vote_granted,
        } => {
            put_u8(out, 2);
            put_bool(out, *pre_vote);
            put_bool(out, *vote_granted);
        }
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            read_round,
        } => {
            put_u8(out, 3);
            put_u64(out, prev_log_index.0);
            put_u64(out, prev_log_term.0);
            put_u64(out, leader_commit.0);
            put_u64(out, *read_round);
            encode_entries(entries, out);
        }
        MessageBody::AppendEntriesResponse {
            success,
            match_index,
            reject,
            read_round,
        } => {
            put_u8(out, 4);
            put_bool(out, *success);
            put_u64(out, match_index.0);
            put_u64(out, *read_round);
            match reject {
                Some(h) => {
                    put_bool(out, true);
                    put_u64(out, h.rejected_prev_index.0);
                    put_u64(out, h.conflict_term.0);
                    put_u64(out, h.conflict_index.0);
                }
                None => put_bool(out, false),
            }
        }
        MessageBody::InstallSnapshot {
            snapshot,
            read_round,
        } => {
            put_u8(out, 5);
            put_u64(out, snapshot.index.0);
            put_u64(out, snapshot.term.0);
            put_u64(out, *read_round);
            put_bytes(out, &snapshot.membership.to_bytes());
            // A snapshot in a file is streamed (SnapshotBegin and its
            // chunks), not sent this way; should one be, it is read whole.
            match snapshot.data.view() {
                Ok(v) => put_bytes(out, (*v).as_ref()),
                Err(_) => put_bytes(out, &[]),
            }
        }
    }
}

fn decode_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let from = NodeId(r.u64("from")?);
    let to = NodeId(r.u64("to")?);
    let term = Term(r.u64("term")?);
    let body = match r.u8("message")? {
        1 => MessageBody::RequestVote {
            pre_vote: r.bool("pre_vote")?,
            last_log_index: LogIndex(r.u64("last_log_index")?),
            last_log_term: Term(r.u64("last_log_term")?),
            transfer: r.bool("transfer")?,
        },
        2 => MessageBody::RequestVoteResponse {
            pre_vote: r.bool("pre_vote")?,
            vote_granted: r.bool("vote_granted")?,
        },
        3 => MessageBody::AppendEntries {
            prev_log_index: LogIndex(r.u64("prev_log_index")?),
            prev_log_term: Term(r.u64("prev_log_term")?),
            leader_commit: LogIndex(r.u64("leader_commit")?),
            read_round: r.u64("read_round")?,
            entries: decode_entries(r)?,
        },
        4 => {
            let success = r.bool("success")?;
            let match_index = LogIndex(r.u64("match_index")?);
            let read_round = r.u64("read_round")?;
            let reject = if r.bool("has_hint")? {
                Some(RejectHint {
                    rejected_prev_index: LogIndex(r.u64("rejected_prev_index")?),
                    conflict_term: Term(r.u64("conflict_term")?),
                    conflict_index: LogIndex(r.u64("conflict_index")?),
                })
            } else {
                None
            };
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                reject,
                read_round,
            }
        }
        5 => {
            let index = LogIndex(r.u64("snapshot.index")?);
            let term = Term(r.u64("snapshot.term")?);
            let read_round = r.u64("read_round")?;
            let membership = Membership::from_bytes(r.bytes("snapshot.membership")?)?;
            let data = r.bytes("snapshot.data")?.into();
            MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    index,
                    term,
                    membership,
                    data,
                },
                read_round,
            }
        }
        6 => MessageBody::TimeoutNow,
        tag => {
            return Err(DecodeError::BadTag {
                field: "message",
                tag: tag as u64,
            })
        }
    };
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

fn encode_fault(f: &FaultSpec, out: &mut Vec<u8>) {
    put_u32(out, f.partition.len() as u32);
    for g in &f.partition {
        put_u32(out, g.len() as u32);
        for id in g {
            put_u64(out, id.0);
        }
    }
    put_u32(out, f.drop_rate_ppm);
    put_u32(out, f.delay_ms);
    put_u32(out, f.jitter_ms);
    put_u32(out, f.duplicate_rate_ppm);
    put_u32(out, f.block_to.len() as u32);
    for id in &f.block_to {
        put_u64(out, id.0);
    }
    put_u8(out, f.disk.tag());
    put_u32(
        out,
        match f.disk {
            DiskFault::Stall { ms } => ms,
            _ => 0,
        },
    );
}

fn decode_fault(r: &mut Reader<'_>) -> Result<FaultSpec, DecodeError> {
    let groups = r.count("partition", 4)?;
    let mut partition = Vec::with_capacity(groups);
    for _ in 0..groups {
        let n = r.count("partition.group", 8)?;
        let mut g = Vec::with_capacity(n);
        for _ in 0..n {
            g.push(NodeId(r.u64("partition.id")?));
        }
        partition.push(g);
    }
    let drop_rate_ppm = r.u32("drop_rate_ppm")?;
    let delay_ms = r.u32("delay_ms")?;
    let jitter_ms = r.u32("jitter_ms")?;
    let duplicate_rate_ppm = r.u32("duplicate_rate_ppm")?;
    let n = r.count("block_to", 8)?;
    let mut block_to = Vec::with_capacity(n);
    for _ in 0..n {
        block_to.push(NodeId(r.u64("block_to.id")?));
    }
    let tag = r.u8("disk_fault")?;
    let ms = r.u32("disk_stall_ms")?;
    let disk = match tag {
        0 => DiskFault::None,
        1 => DiskFault::Stall { ms },
        2 => DiskFault::Eio,
        3 => DiskFault::Full,
        tag => {
            return Err(DecodeError::BadTag {
                field: "disk_fault",
                tag: tag as u64,
            })
        }
    };
    Ok(FaultSpec {
        partition,
        drop_rate_ppm,
        delay_ms,
        jitter_ms,
        duplicate_rate_ppm,
        block_to,
        disk,
    })
}

fn encode_request(body: &RequestBody, out: &mut Vec<u8>) {
    match body {
        RequestBody::Kv {
            command,
            stale_read,
        } => encode_kv_body(command.as_ref(), *stale_read, out),
        RequestBody::Status => put_u8(out, 2),
        RequestBody::Log {
            from,
            to,
            entries_max,
        } => {
            put_u8(out, 3);
            put_u64(out, from.0);
            put_u64(out, to.0);
            put_u32(out, *entries_max);
        }
        RequestBody::Fault(f) => {
            put_u8(out, 4);
            encode_fault(f, out);
        }
        RequestBody::Member(m) => {
            put_u8(out, 5);
            match m {
                MemberRequest::List => put_u8(out, 1),
                MemberRequest::Change(ConfChange::Add { id, addr, learner }) => {
                    put_u8(out, 2);
                    put_u64(out, id.0);
                    put_bytes(out, addr.as_bytes());
                    put_bool(out, *learner);
                }
                MemberRequest::Change(ConfChange::Promote { id }) => {
                    put_u8(out, 3);
                    put_u64(out, id.0);
                }
                MemberRequest::Change(ConfChange::Remove { id }) => {
                    put_u8(out, 4);
                    put_u64(out, id.0);
                }
            }
        }
        RequestBody::TransferLeader(id) => {
            put_u8(out, 6);
            put_u64(out, id.0);
        }
    }
}

fn decode_request(r: &mut Reader<'_>) -> Result<RequestBody, DecodeError> {
    Ok(match r.u8("request")? {
        REQUEST_KV => {
            let (stale_read, command) = decode_kv_body(r)?;
            RequestBody::Kv {
                stale_read,
                command: command.to_owned(),
            }
        }
        2 => RequestBody::Status,
        3 => RequestBody::Log {
            from: LogIndex(r.u64("from")?),
            to: LogIndex(r.u64("to")?),
            entries_max: r.u32("entries_max")?,
        },
        4 => RequestBody::Fault(decode_fault(r)?),
        5 => RequestBody::Member(match r.u8("member")? {
            1 => MemberRequest::List,
            2 => MemberRequest::Change(ConfChange::Add {
                id: NodeId(r.u64("id")?),
                addr: r.string("addr")?,
                learner: r.bool("learner")?,
            }),
            3 => MemberRequest::Change(ConfChange::Promote {
                id: NodeId(r.u64("id")?),
            }),
            4 => MemberRequest::Change(ConfChange::Remove {
                id: NodeId(r.u64("id")?),
            }),
            tag => {
                return Err(DecodeError::BadTag {
                    field: "member",
                    tag: tag as u64,
                })
            }
        }),
        6 => RequestBody::TransferLeader(NodeId(r.u64("id")?)),
        tag => {
            return Err(DecodeError::BadTag {
                field: "request",
                tag: tag as u64,
            })
        }
    })
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Follower => 1,
        Role::PreCandidate => 2,
        Role::Candidate => 3,
        Role::Leader => 4,
    }
}

fn encode_response(body: &ResponseBody, out: &mut Vec<u8>) {
    match body {
        ResponseBody::Kv { index, result } => {
            put_u8(out, 1);
            put_u64(out, index.0);
            result.encode(out);
        }
        ResponseBody::NotLeader {
            leader,
            leader_addr,
        } => {
            put_u8(out, 2);
            put_opt_u64(out, leader.map(|l| l.0));
            put_bytes(out, leader_addr.as_bytes());
        }
        ResponseBody::Error { code, message } => {
            put_u8(out, 3);
            put_u16(out, code.to_u16());
            put_bytes(out, message.as_bytes());
        }
        ResponseBody::Status(ns) => {
            put_u8(out, 4);
            let s = &ns.status;
            put_u64(out, s.id.0);
            put_u8(out, role_code(s.role));
            put_u64(out, s.current_term.0);
            put_opt_u64(out, s.voted_for.map(|v| v.0));
            put_opt_u64(out, s.leader.map(|v| v.0));
            put_u64(out, s.commit_index.0);
            put_u64(out, s.last_applied.0);
            put_u64(out, s.first_index.0);
            put_u64(out, s.last_index.0);
            put_u32(out, s.peers.len() as u32);
            for p in &s.peers {
                put_u64(out, p.id.0);
                put_u64(out, p.match_index.0);
                put_u64(out, p.next_index.0);
                put_u8(
                    out,
                    match p.state {
                        ProgressState::Probe => 1,
                        ProgressState::Replicate => 2,
                        ProgressState::Snapshot => 3,
                    },
                );
                put_u32(out, p.inflight);
            }
            put_bytes(out, ns.addr.as_bytes());
            encode_fault(&ns.fault, out);
            put_u64(out, ns.uptime_ms);
            put_bytes(out, &s.membership.to_bytes());
            put_u64(out, s.membership_index.0);
            put_bool(out, s.membership_changing);
            put_opt_u64(out, s.transferring_to.map(|t| t.0));
        }
        ResponseBody::Log {
            commit_index,
            first_index,
            last_index,
            entries,
        } => {
            put_u8(out, 5);
            put_u64(out, commit_index.0);
            put_u64(out, first_index.0);
            put_u64(out, last_index.0);
            encode_entries(entries, out);
        }
        ResponseBody::FaultOk => put_u8(out, 6),
        ResponseBody::Members(m) => {
            put_u8(out, 7);
            put_u64(out, m.node.0);
            put_opt_u64(out, m.leader.map(|l| l.0));
            put_bytes(out, &m.membership.to_bytes());
            put_u64(out, m.membership_index.0);
            put_bool(out, m.changing);
            put_u64(out, m.commit_index.0);
            put_u64(out, m.last_index.0);
            put_u32(out, m.matched.len() as u32);
            for (id, index) in &m.matched {
                put_u64(out, id.0);
                put_u64(out, index.0);
            }
        }
        ResponseBody::TransferStarted(id) => {
            put_u8(out, 8);
            put_u64(out, id.0);
        }
    }
}

fn decode_response(r: &mut Reader<'_>) -> Result<ResponseBody, DecodeError> {
    Ok(match r.u8("response")? {
        1 => ResponseBody::Kv {
            index: LogIndex(r.u64("index")?),
            result: OpResult::decode(r)?,
        },
        2 => ResponseBody::NotLeader {
            leader: r.opt_u64("leader")?.map(NodeId),
            leader_addr: r.string("leader_addr")?,
        },
        3 => ResponseBody::Error {
            code: ErrorCode::from_u16(r.u16("code")?),
            message: r.string("message")?,
        },
        4 => {
            let id = NodeId(r.u64("id")?);
            let role = match r.u8("role")? {
                1 => Role::Follower,
                2 => Role::PreCandidate,
                3 => Role::Candidate,
                4 => Role::Leader,
                tag => {
                    return Err(DecodeError::BadTag {
                        field: "role",
                        tag: tag as u64,
                    })
                }
            };
            let current_term = Term(r.u64("term")?);
            let voted_for = r.opt_u64("voted_for")?.map(NodeId);
            let leader = r.opt_u64("leader")?.map(NodeId);
            let commit_index = LogIndex(r.u64("commit_index")?);
            let last_applied = LogIndex(r.u64("last_applied")?);
            let first_index = LogIndex(r.u64("first_index")?);
            let last_index = LogIndex(r.u64("last_index")?);
            let n = r.count("peers", 29)?;
            let mut peers = Vec::with_capacity(n);
            for _ in 0..n {
                let id = NodeId(r.u64("peer.id")?);
                let match_index = LogIndex(r.u64("peer.match_index")?);
                let next_index = LogIndex(r.u64("peer.next_index")?);
                let state = match r.u8("peer.state")? {
                    1 => ProgressState::Probe,
                    2 => ProgressState::Replicate,
                    3 => ProgressState::Snapshot,
                    tag => {
                        return Err(DecodeError::BadTag {
                            field: "peer.state",
                            tag: tag as u64,
                        })
                    }
                };
                let inflight = r.u32("peer.inflight")?;
                peers.push(PeerStatus {
                    id,
                    match_index,
                    next_index,
                    state,
                    inflight,
                });
            }
            let addr = r.string("addr")?;
            let fault = decode_fault(r)?;
            let uptime_ms = r.u64("uptime_ms")?;
            let membership = Membership::from_bytes(r.bytes("membership")?)?;
            let membership_index = LogIndex(r.u64("membership_index")?);
            let membership_changing = r.bool("membership_changing")?;
            let transferring_to = r.opt_u64("transferring_to")?.map(NodeId);
            ResponseBody::Status(Box::new(NodeStatus {
                status: Status {
                    id,
                    role,
                    current_term,
                    voted_for,
                    leader,
                    commit_index,
                    last_applied,
                    first_index,
                    last_index,
                    peers,
                    membership,
                    membership_index,
                    membership_changing,
                    transferring_to,
                },
                addr,
                fault,
                uptime_ms,
            }))
        }
        5 => ResponseBody::Log {
            commit_index: LogIndex(r.u64("commit_index")?),
            first_index: LogIndex(r.u64("first_index")?),
            last_index: LogIndex(r.u64("last_index")?),
            entries: decode_entries(r)?,
        },
        6 => ResponseBody::FaultOk,
        7 => {
            let node = NodeId(r.u64("node")?);
            let leader = r.opt_u64("leader")?.map(NodeId);
            let membership = Membership::from_bytes(r.bytes("membership")?)?;
            let membership_index = LogIndex(r.u64("membership_index")?);
            let changing = r.bool("changing")?;
            let commit_index = LogIndex(r.u64("commit_index")?);
            let last_index = LogIndex(r.u64("last_index")?);
            let n = r.count("matched", 16)?;
            let mut matched = Vec::with_capacity(n);
            for _ in 0..n {
                matched.push((
                    NodeId(r.u64("matched.id")?),
                    LogIndex(r.u64("matched.index")?),
                ));
            }
            ResponseBody::Members(Box::new(MembersInfo {
                node,
                leader,
                membership,
                membership_index,
                changing,
                commit_index,
                last_index,
                matched,
            }))
        }
        8 => ResponseBody::TransferStarted(NodeId(r.u64("id")?)),
        tag => {
            return Err(DecodeError::BadTag {
                field: "response",
                tag: tag as u64,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(spec: &FaultSpec) -> Result<FaultSpec, FrameError> {
        let frame = Frame::Request {
            request_id: 7,
            body: RequestBody::Fault(spec.clone()),
        };
        let mut buf = Vec::new();
        encode_frame(&frame, &mut buf);
        match decode_frame(&buf)? {
            Some((
                Frame::Request {
                    body: RequestBody::Fault(f),
                    ..
                },
                used,
            )) => {
                assert_eq!(used, buf.len());
                Ok(f)
            }
            other => panic!("not a Fault request: {other:?}"),
        }
    }

    fn ids() -> Vec<NodeId> {
        vec![NodeId(1), NodeId(2), NodeId(3)]
    }

    #[test]
    fn fault_spec_round_trips_every_field() {
        let specs = [
            FaultSpec::default(),
            FaultSpec {
                partition: vec![vec![NodeId(1)], vec![NodeId(2), NodeId(3)]],
                drop_rate_ppm: 1,
                delay_ms: 2,
                jitter_ms: 3,
                duplicate_rate_ppm: 500_000,
                block_to: vec![NodeId(2), NodeId(3)],
                disk: DiskFault::Stall { ms: 250 },
            },
            FaultSpec {
                disk: DiskFault::Eio,
                ..FaultSpec::default()
            },
            FaultSpec {
                disk: DiskFault::Full,
                block_to: vec![NodeId(1)],
                ..FaultSpec::default()
            },
        ];
        for spec in &specs {
            assert_eq!(&round_trip(spec).unwrap(), spec);
        }
    }

    #[test]
    fn fault_spec_decode_refuses_unknown_disk_fault() {
        let spec = FaultSpec {
            disk: DiskFault::Full,
            ..FaultSpec::default()
        };
        let frame = Frame::Request {
            request_id: 1,
            body: RequestBody::Fault(spec),
        };
        let mut buf = Vec::new();
        encode_frame(&frame, &mut buf);
        // The disk tag is the body's fifth byte from the end; fix the CRC.
        let tag_at = buf.len() - 5;
        buf[tag_at] = 9;
        let crc = crc32c::crc32c(&buf[HEADER_BYTES..]);
        BigEndian::write_u32(&mut buf[HEADER_BYTES - 4..HEADER_BYTES], crc);
        match decode_frame(&buf) {
            Err(FrameError::Body { error, .. }) => {
                assert!(error.to_string().contains("disk_fault"), "{error}")
            }
            other => panic!("decoded a bad disk tag: {other:?}"),
        }
    }

    #[test]
    fn fault_spec_validate_checks_new_fields() {
        let ok = FaultSpec {
            duplicate_rate_ppm: DROP_RATE_PPM_MAX,
            block_to: vec![NodeId(2)],
            disk: DiskFault::Stall {
                ms: FAULT_DELAY_MS_MAX,
            },
            ..FaultSpec::default()
        };
        assert_eq!(ok.validate(&ids()), Ok(()));
        let bad = [
            (
                FaultSpec {
                    duplicate_rate_ppm: DROP_RATE_PPM_MAX + 1,
                    ..FaultSpec::default()
                },
                "duplicate_rate_ppm",
            ),
            (
                FaultSpec {
                    block_to: vec![NodeId(9)],
                    ..FaultSpec::default()
                },
                "block names n9",
            ),
            (
                FaultSpec {
                    block_to: vec![NodeId(2), NodeId(2)],
                    ..FaultSpec::default()
                },
                "twice",
            ),
            (
                FaultSpec {
                    disk: DiskFault::Stall { ms: 0 },
                    ..FaultSpec::default()
                },
                "0 ms",
            ),
            (
                FaultSpec {
                    disk: DiskFault::Stall {
                        ms: FAULT_DELAY_MS_MAX + 1,
                    },
                    ..FaultSpec::default()
                },
                "stall_ms",
            ),
        ];
        for (spec, why) in bad {
            match spec.validate(&ids()) {
                Err(e) => assert!(e.contains(why), "{spec:?}: {e}"),
                Ok(()) => panic!("{spec:?} accepted"),
            }
        }
    }
}
