//! The key-value state machine, applied from committed entries, with a
//! per-client session table so that a retried request applies once.
//!
//! Every part of the state lives in a persistent (copy-on-write)
//! collection from the `imbl` crate, so that [`KvStore::freeze`] takes a
//! consistent view of it in O(1): the view shares every tree node, key and
//! value with the live store, and a write after the freeze copies only the
//! few nodes on its path (a B-tree of 16-entry nodes for the keys, a
//! 32-way hash trie for the sessions, a 64-wide RRB vector for their
//! eviction queue). A snapshot is encoded from the view on another thread
//! while the live store keeps applying (docs/STORAGE.md, "Snapshots").

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use imbl::{HashMap, OrdMap, Vector};

use super::command::{ClientId, CommandRef, OpRef, OpResult};
use crate::codec::{DecodeError, Endian, Reader};
use crate::raft::LogIndex;

/// Sessions kept at most; past it, the client whose last request is oldest
/// (by log index) is forgotten. Eviction depends only on the log, so every
/// replica evicts the same session at the same entry.
pub const SESSIONS_MAX: usize = 100_000;

/// A key or a value: shared by the live store and every frozen view, so
/// copying a tree node copies pointers, never bytes.
type Bytes = Arc<[u8]>;

#[derive(Clone)]
struct Session {
    last_seq: u64,
    /// Shared, so that a session copied with its trie node (a write after
    /// a freeze) does not copy a result's value.
    last_result: Arc<OpResult>,
    last_index: LogIndex,
}

/// What applying one entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub client_id: ClientId,
    pub seq: u64,
    /// The answer: the first answer again for a duplicate; a refusal for a
    /// request that was not applied and cannot be answered with a result.
    pub result: Result<OpResult, Refused>,
    /// The log index of the answer: this entry's, or for a retry the index
    /// at which the request was first applied.
    pub index: LogIndex,
    /// A retry of a request applied before: nothing changed.
    pub duplicate: bool,
}

/// Why the state machine applied an entry as nothing. Every replica
/// decides the same, from the log alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The client already had a later request applied: one write in flight
    /// per client id, so this one is a stray copy and cannot be answered.
    Stale { seq: u64, last_seq: u64 },
    /// No session for the client, and `seq` is past a session's first (1):
    /// its session was evicted or never existed, so whether an earlier copy
    /// applied is unknown. Applying it now could apply it twice.
    SessionExpired { client_id: ClientId, seq: u64 },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Stale { seq, last_seq } => write!(
                f,
                "request {seq} is older than the last one applied ({last_seq}) for this client id"
            ),
            Refused::SessionExpired { client_id, seq } => write!(
                f,
                "no session for client {client_id:#x} (evicted, or never opened with seq 1): \
                 request {seq} was not applied; start a new session (new client id, seq 1)"
            ),
        }
    }
}

/// First bytes of a [`KvStore::snapshot`].
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"RAFTKKVS";
/// Format version of a [`KvStore::snapshot`]: integers little-endian, like
/// everything else on disk (docs/STORAGE.md).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The format earlier releases wrote: the same layout with big-endian
/// integers. `restore` still reads it, so that an upgraded node starts
/// from the snapshot it left.
pub const SNAPSHOT_FORMAT_VERSION_BIG_ENDIAN: u32 = 1;
/// The byte order of [`SNAPSHOT_FORMAT_VERSION`].
const SNAPSHOT_ENDIAN: Endian = Endian::Little;
/// Magic, format version, total length.
const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 8;
/// The CRC-32C that ends a snapshot.
const SNAPSHOT_CRC_BYTES: usize = 4;
/// Bytes of a key/value pair besides the key and value: their two lengths.
const SNAPSHOT_PAIR_FIXED_BYTES: usize = 4 + 4;
/// Bytes of a session at least: client id, last seq, last index, result tag.
const SNAPSHOT_SESSION_BYTES_MIN: usize = 8 + 8 + 8 + 1;

/// Why bytes are not a [`KvStore::snapshot`]: what is wrong, and at which
/// byte offset of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Shorter than the header.
    ShorterThanHeader { len: usize },
    /// Bytes 0..8 are not [`SNAPSHOT_MAGIC`].
    BadMagic { found: [u8; 8] },
    /// A format version this build does not read: bytes 8..12, which
    /// hold neither 2 little-endian nor 1 big-endian.
    UnsupportedVersion { bytes: [u8; 4] },
    /// The length at byte 12 is not the number of bytes there are.
    LengthMismatch { len: usize, stated: u64 },
    /// Too short to end in a CRC.
    NoRoomForCrc { len: usize },
    /// The CRC-32C at byte `at` does not match the bytes before it.
    CrcMismatch {
        at: usize,
        stored: u32,
        computed: u32,
    },
    /// A field starting at byte `at` does not decode, or bytes follow the
    /// last one.
    Field { at: usize, source: DecodeError },
    /// The key at byte `at` is not after the key before it.
    KeysNotAscending { at: usize },
    /// The session at byte `at` is not in eviction order, or is newer than
    /// the state it is part of.
    SessionOutOfOrder {
        at: usize,
        client: ClientId,
        last_index: LogIndex,
        previous_index: LogIndex,
        last_applied: LogIndex,
    },
    /// A second session of `client` at byte `at`.
    DuplicateSession { at: usize, client: ClientId },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::ShorterThanHeader { len } => write!(
                f,
                "kv snapshot truncated: {len} bytes, shorter than the \
                 {SNAPSHOT_HEADER_BYTES}-byte header"
            ),
            SnapshotError::BadMagic { found } => write!(
                f,
                "not a kv snapshot: bytes 0..8 are {found:02x?}, not the magic \"RAFTKKVS\""
            ),
            SnapshotError::UnsupportedVersion { bytes } => write!(
                f,
                "kv snapshot format version {} at byte 8 (bytes {bytes:02x?}) is not \
                 supported (this build reads version {SNAPSHOT_FORMAT_VERSION}, little-endian, \
                 and version {SNAPSHOT_FORMAT_VERSION_BIG_ENDIAN}, big-endian)",
                u32::from_le_bytes(*bytes)
            ),
            SnapshotError::LengthMismatch { len, stated } => {
                let what = if *stated > *len as u64 {
                    "truncated"
                } else {
                    "has trailing bytes"
                };
                write!(
                    f,
                    "kv snapshot {what}: {len} bytes, but the length at byte 12 says {stated}"
                )
            }
            SnapshotError::NoRoomForCrc { len } => {
                write!(f, "kv snapshot truncated: {len} bytes, no room for the CRC")
            }
            SnapshotError::CrcMismatch {
                at,
                stored,
                computed,
            } => write!(
                f,
                "kv snapshot corrupt: CRC-32C at byte {at} is 0x{stored:08x}, \
                 bytes 0..{at} have 0x{computed:08x}"
            ),
            SnapshotError::Field { at, source } => {
                write!(f, "kv snapshot: {source} (at byte {at})")
            }
            SnapshotError::KeysNotAscending { at } => write!(
                f,
                "kv snapshot: key at byte {at} is not after the key before it \
                 (keys must be ascending and distinct)"
            ),
            SnapshotError::SessionOutOfOrder {
                at,
                client,
                last_index,
                previous_index,
                last_applied,
            } => write!(
                f,
                "kv snapshot: session of client {client} at byte {at} has last index \
                 {last_index}, not after the previous session's {previous_index} and at \
                 most the last applied {last_applied}"
            ),
            SnapshotError::DuplicateSession { at, client } => write!(
                f,
                "kv snapshot: client {client} has a second session at byte {at}"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Field { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Keys and values, sessions, and the count of raw appends.
pub struct KvStore {
    map: OrdMap<Bytes, Bytes>,
    sessions: HashMap<ClientId, Session>,
    /// (index, client) of every applied request, in log order, for
    /// eviction oldest first. An entry whose client has applied a newer
    /// request since is stale: eviction skips it, and the queue drops stale
    /// entries whenever they outnumber the sessions (amortized O(1)).
    session_age: Vector<(LogIndex, ClientId)>,
    appends_applied: u64,
    last_applied: LogIndex,
    /// `SESSIONS_MAX`; smaller in tests, to exercise eviction.
    sessions_max: usize,
}

/// The state of a [`KvStore`] at one applied index, frozen: what
/// [`KvStore::freeze`] returns. It shares its parts with the store, which
/// goes on applying; later writes copy the tree nodes they change and
/// leave this view as it was. `Send`, so it can be encoded on another
/// thread.
#[derive(Clone)]
pub struct FrozenKv {
    map: OrdMap<Bytes, Bytes>,
    sessions: HashMap<ClientId, Session>,
    session_age: Vector<(LogIndex, ClientId)>,
    appends_applied: u64,
    last_applied: LogIndex,
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore {
            map: OrdMap::new(),
            sessions: HashMap::new(),
            session_age: Vector::new(),
            appends_applied: 0,
            last_applied: LogIndex(0),
            sessions_max: SESSIONS_MAX,
        }
    }
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &v[..])
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn appends_applied(&self) -> u64 {
        self.appends_applied
    }

    /// Index of the last entry applied (commands and no-ops).
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Records a no-op entry as applied.
    pub fn note_applied(&mut self, index: LogIndex) {
        self.last_applied = index;
    }

    /// The answer already given to (`client`, `seq`), with the log index
    /// it was first applied at, if that was the client's last applied
    /// request.
    pub fn cached(&self, client: ClientId, seq: u64) -> Option<(LogIndex, &OpResult)> {
        self.sessions
            .get(&client)
            .filter(|s| s.last_seq == seq)
            .map(|s| (s.last_index, &*s.last_result))
    }

    /// Whether `client` has a session (for tests and the simulator).
    pub fn has_session(&self, client: ClientId) -> bool {
        self.sessions.contains_key(&client)
    }

    /// Applies one committed command entry. An entry that does not decode
    /// applies as nothing and is reported as `Err`.
    pub fn apply(&mut self, index: LogIndex, data: &[u8]) -> Result<Applied, String> {
        self.last_applied = index;
        let cmd = CommandRef::decode(data)
            .map_err(|e| format!("entry {index}: undecodable command: {e}"))?;
        Ok(self.apply_command(index, cmd))
    }

    fn apply_command(&mut self, index: LogIndex, cmd: CommandRef<'_>) -> Applied {
        let CommandRef { client_id, seq, op } = cmd;
        let refuse = |why| Applied {
            client_id,
            seq,
            result: Err(why),
            index,
            duplicate: true,
        };
        match self.sessions.get(&client_id) {
            Some(s) if seq == s.last_seq => {
                return Applied {
                    client_id,
                    seq,
                    result: Ok((*s.last_result).clone()),
                    index: s.last_index,
                    duplicate: true,
                };
            }
            Some(s) if seq < s.last_seq => {
                return refuse(Refused::Stale {
                    seq,
                    last_seq: s.last_seq,
                });
            }
            Some(_) => {}
            None if seq > 1 => return refuse(Refused::SessionExpired { client_id, seq }),
            None => {}
        }
        let result = self.execute(op);
        self.sessions.insert(
            client_id,
            Session {
                last_seq: seq,
                last_result: Arc::new(result.clone()),
                last_index: index,
            },
        );
        self.session_age.push_back((index, client_id));
        while self.sessions.len() > self.sessions_max {
            let Some((i, c)) = self.session_age.pop_front() else {
                break;
            };
            if self.sessions.get(&c).is_some_and(|s| s.last_index == i) {
                self.sessions.remove(&c);
            }
        }
        if self.session_age.len() > 2 * self.sessions.len() + 1024 {
            let sessions = &self.sessions;
            self.session_age
                .retain(|(i, c)| sessions.get(c).is_some_and(|s| s.last_index == *i));
        }
        Applied {
            client_id,
            seq,
            result: Ok(result),
            index,
            duplicate: false,
        }
    }

    fn execute(&mut self, op: OpRef<'_>) -> OpResult {
        match op {
            OpRef::Put { key, value } => {
                self.set(key, value);
                OpResult::Done
            }
            OpRef::Get { key } => OpResult::Value(self.map.get(key).map(|v| v.to_vec())),
            OpRef::Delete { key } => OpResult::Deleted(self.map.remove(key).is_some()),
            OpRef::Cas { key, expected, new } => {
                let current = self.map.get(key);
                if current.map(|v| &v[..]) == expected {
                    self.set(key, new);
                    OpResult::CasOk
                } else {
                    OpResult::CasMismatch(current.map(|v| v.to_vec()))
                }
            }
            OpRef::Append { .. } => {
                self.appends_applied += 1;
                OpResult::Done
            }
        }
    }

    /// The whole state, as bytes that [`KvStore::restore`] turns back into
    /// a store that answers and applies exactly as this one does. Two stores
    /// that applied the same entries give the same bytes.
    ///
    /// All integers little-endian, like everything on disk; `bytes` and
    /// `result` laid out as in docs/PROTOCOL.md (a u32 length, then the
    /// bytes), but with little-endian lengths:
    ///
    /// | offset | size | field |
    /// |---:|---:|---|
    /// | 0 | 8 | magic `RAFTKKVS` |
    /// | 8 | 4 | format version, `2` |
    /// | 12 | 8 | total length in bytes, this header and the CRC included |
    /// | 20 | 8 | last applied index |
    /// | 28 | 8 | raw appends applied |
    /// | 36 | 4 | key count, then each: bytes key, bytes value, keys ascending |
    /// | | 4 | session count, then each: u64 client id, u64 last seq, u64 last index, result; in eviction order (oldest last index first) |
    /// | end - 4 | 4 | CRC-32C of every byte before it |
    ///
    /// Version 1, written by earlier releases, is the same table with every
    /// integer big-endian; [`KvStore::restore`] reads both.
    ///
    /// Only the eviction queue's live entries are written: the stale ones
    /// are skipped by eviction anyway, so the restored queue evicts the same
    /// sessions in the same order.
    pub fn snapshot(&self) -> Vec<u8> {
        self.freeze().encode_vec()
    }

    /// The state as it is now, frozen, in O(1) (see [`FrozenKv`]): a
    /// snapshot encoded from it later, on any thread, is the one
    /// [`KvStore::snapshot`] gives now.
    pub fn freeze(&self) -> FrozenKv {
        FrozenKv {
            map: self.map.clone(),
            sessions: self.sessions.clone(),
            session_age: self.session_age.clone(),
            appends_applied: self.appends_applied,
            last_applied: self.last_applied,
        }
    }

    /// The store a [`KvStore::snapshot`] was taken of, from a snapshot of
    /// this release (version 2) or of an earlier one (version 1,
    /// big-endian). Truncated, corrupt or inconsistent bytes give an error
    /// naming what is wrong and at which byte offset.
    pub fn restore(data: &[u8]) -> Result<KvStore, SnapshotError> {
        let len = data.len();
        if len < SNAPSHOT_HEADER_BYTES {
            return Err(SnapshotError::ShorterThanHeader { len });
        }
        if &data[..8] != SNAPSHOT_MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&data[..8]);
            return Err(SnapshotError::BadMagic { found });
        }
        let endian = snapshot_endian([data[8], data[9], data[10], data[11]])?;
        let mut header = SnapshotReader {
            r: Reader::with_endian(&data[12..SNAPSHOT_HEADER_BYTES], endian),
            end: SNAPSHOT_HEADER_BYTES,
        };
        let stated = header.read(|r| r.u64("length"))?;
        if stated != len as u64 {
            return Err(SnapshotError::LengthMismatch { len, stated });
        }
        if len < SNAPSHOT_HEADER_BYTES + SNAPSHOT_CRC_BYTES {
            return Err(SnapshotError::NoRoomForCrc { len });
        }
        let crc_at = len - SNAPSHOT_CRC_BYTES;
        let stored = SnapshotReader {
            r: Reader::with_endian(&data[crc_at..], endian),
            end: len,
        }
        .read(|r| r.u32("crc"))?;
        let computed = crc32c::crc32c(&data[..crc_at]);
        if stored != computed {
            return Err(SnapshotError::CrcMismatch {
                at: crc_at,
                stored,
                computed,
            });
        }
        let mut r = SnapshotReader {
            r: Reader::with_endian(&data[SNAPSHOT_HEADER_BYTES..crc_at], endian),
            end: crc_at,
        };
        let kv = KvStore::restore_body(&mut r)?;
        r.read(|r| r.finish())?;
        Ok(kv)
    }

    /// The fields between the header and the CRC.
    fn restore_body(r: &mut SnapshotReader<'_>) -> Result<KvStore, SnapshotError> {
        let mut kv = KvStore::new();
        kv.last_applied = LogIndex(r.read(|r| r.u64("last_applied"))?);
        kv.appends_applied = r.read(|r| r.u64("appends_applied"))?;
        let keys = r.read(|r| r.count("keys", SNAPSHOT_PAIR_FIXED_BYTES))?;
        let mut previous: Option<&[u8]> = None;
        for _ in 0..keys {
            let at = r.offset();
            let key = r.read(|r| r.bytes("key"))?;
            if previous.is_some_and(|p| p >= key) {
                return Err(SnapshotError::KeysNotAscending { at });
            }
            let value = r.read(|r| r.bytes("value"))?;
            kv.map.insert(Bytes::from(key), Bytes::from(value));
            previous = Some(key);
        }
        let sessions = r.read(|r| r.count("sessions", SNAPSHOT_SESSION_BYTES_MIN))?;
        let mut previous_index = LogIndex(0);
        for _ in 0..sessions {
            let at = r.offset();
            let client = r.read(|r| r.u64("session.client_id"))?;
            let last_seq = r.read(|r| r.u64("session.last_seq"))?;
            let last_index = LogIndex(r.read(|r| r.u64("session.last_index"))?);
            let last_result = r.read(OpResult::decode)?;
            if last_index <= previous_index || last_index > kv.last_applied {
                return Err(SnapshotError::SessionOutOfOrder {
                    at,
                    client,
                    last_index,
                    previous_index,
                    last_applied: kv.last_applied,
                });
            }
            let session = Session {
                last_seq,
                last_result: Arc::new(last_result),
                last_index,
            };
            if kv.sessions.insert(client, session).is_some() {
                return Err(SnapshotError::DuplicateSession { at, client });
            }
            kv.session_age.push_back((last_index, client));
            previous_index = last_index;
        }
        Ok(kv)
    }

    /// Sets `key`: a new value buffer (a frozen view may still share the
    /// old one), and a new key buffer only for a new key. One descent of
    /// the tree for a key that exists (the common overwrite); for a new
    /// key `get_mut` finds nothing and `insert` adds it. While a frozen
    /// view shares the path, `get_mut` copies it even when the key is
    /// missing, and `insert` then changes those copies in place: one copy
    /// of the path either way, as `insert` alone would make.
    fn set(&mut self, key: &[u8], value: &[u8]) {
        let value = Bytes::from(value);
        match self.map.get_mut(key) {
            Some(v) => *v = value,
            None => {
                self.map.insert(Bytes::from(key), value);
            }
        }
    }
}

impl FrozenKv {
    /// Index of the last entry applied when the view was taken.
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Keys in the view.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key` in the view.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &v[..])
    }

    /// The snapshot's bytes (the layout of [`KvStore::snapshot`]) in one
    /// shared buffer of exactly their size: the one allocation of the
    /// encoding, made before it starts, and never copied after.
    pub fn encode(&self) -> Arc<[u8]> {
        let plan = self.plan();
        let mut data: Arc<[u8]> = std::iter::repeat_n(0u8, plan.total).collect();
        let Some(mut out) = Arc::get_mut(&mut data) else {
            unreachable!("a buffer just allocated has no other owner");
        };
        let wrote = self.write(&plan, &mut out);
        assert!(
            wrote.is_ok() && out.is_empty(),
            "kv snapshot: planned {} bytes, wrote {:?} with {} left",
            plan.total,
            wrote,
            out.len()
        );
        data
    }

    /// As [`FrozenKv::encode`], into a `Vec`.
    pub fn encode_vec(&self) -> Vec<u8> {
        let plan = self.plan();
        let mut out = Vec::with_capacity(plan.total);
        // Writing to a Vec cannot fail.
        let _ = self.write(&plan, &mut out);
        debug_assert_eq!(out.len(), plan.total);
        out
    }

    /// The snapshot's size in bytes, exact: what [`FrozenKv::encode`]
    /// allocates. One pass over the keys.
    pub fn encoded_len(&self) -> usize {
        self.plan().total
    }

    /// Streams the snapshot to `w` (a file, a socket, a buffer), in chunks
    /// of `SNAPSHOT_WRITE_CHUNK_BYTES`, computing the CRC as it goes.
    pub fn encode_to(&self, w: &mut impl Write) -> io::Result<()> {
        let plan = self.plan();
        self.write(&plan, w)
    }

    /// The sessions section, encoded (it is small: one record per
    /// session, at most `SESSIONS_MAX`), and the total size.
    fn plan(&self) -> SnapshotPlan {
        let le = SNAPSHOT_ENDIAN;
        let mut sessions = Vec::with_capacity(4 + self.sessions.len() * SNAPSHOT_SESSION_BYTES_MIN);
        le.put_u32(&mut sessions, 0); // session count, filled in below
        let mut written: u32 = 0;
        for (index, client) in &self.session_age {
            let Some(s) = self.sessions.get(client).filter(|s| s.last_index == *index) else {
                continue; // stale
            };
            le.put_u64(&mut sessions, *client);
            le.put_u64(&mut sessions, s.last_seq);
            le.put_u64(&mut sessions, s.last_index.0);
            s.last_result.encode_in(le, &mut sessions);
            written += 1;
        }
        debug_assert_eq!(
            written as usize,
            self.sessions.len(),
            "one live age entry per session"
        );
        sessions[..4].copy_from_slice(&le.u32_bytes(written));
        let pairs: usize = self
            .map
            .iter()
            .map(|(k, v)| SNAPSHOT_PAIR_FIXED_BYTES + k.len() + v.len())
            .sum();
        let total = SNAPSHOT_HEADER_BYTES + 8 + 8 + 4 + pairs + sessions.len() + SNAPSHOT_CRC_BYTES;
        SnapshotPlan { sessions, total }
    }

    fn write(&self, plan: &SnapshotPlan, w: &mut impl Write) -> io::Result<()> {
        let le = SNAPSHOT_ENDIAN;
        let mut out = CrcWriter {
            w,
            crc: 0,
            buf: Vec::with_capacity(SNAPSHOT_WRITE_CHUNK_BYTES + 1024),
        };
        out.buf.extend_from_slice(SNAPSHOT_MAGIC);
        le.put_u32(&mut out.buf, SNAPSHOT_FORMAT_VERSION);
        le.put_u64(&mut out.buf, plan.total as u64);
        le.put_u64(&mut out.buf, self.last_applied.0);
        le.put_u64(&mut out.buf, self.appends_applied);
        // A u32 count: four billion keys would need far more memory than a
        // node has.
        le.put_u32(&mut out.buf, self.map.len() as u32);
        for (k, v) in &self.map {
            le.put_bytes(&mut out.buf, k);
            le.put_bytes(&mut out.buf, v);
            out.maybe_flush()?;
        }
        out.buf.extend_from_slice(&plan.sessions);
        out.flush_chunk()?;
        let crc = out.crc;
        out.w.write_all(&le.u32_bytes(crc))
    }
}

/// What a snapshot will hold besides the keys, and its size.
struct SnapshotPlan {
    /// The session section, encoded.
    sessions: Vec<u8>,
    /// Bytes of the whole snapshot, CRC included.
    total: usize,
}

/// Bytes gathered before each write (and CRC update) while a snapshot is
/// encoded: large enough that the per-call costs vanish, small enough to
/// stay in the cache.
const SNAPSHOT_WRITE_CHUNK_BYTES: usize = 64 << 10;

/// Gathers a snapshot's bytes into chunks, and keeps the CRC-32C of
/// everything written.
struct CrcWriter<'w, W: Write> {
    w: &'w mut W,
    crc: u32,
    buf: Vec<u8>,
}

impl<W: Write> CrcWriter<'_, W> {
    fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= SNAPSHOT_WRITE_CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// The byte order of a snapshot whose version field (bytes 8..12) holds
/// `bytes`: the current version little-endian, or the first version
/// big-endian. The two cannot be mistaken for each other: version 2
/// little-endian is `02 00 00 00`, version 1 big-endian `00 00 00 01`.
fn snapshot_endian(bytes: [u8; 4]) -> Result<Endian, SnapshotError> {
    if bytes == SNAPSHOT_FORMAT_VERSION.to_le_bytes() {
        Ok(SNAPSHOT_ENDIAN)
    } else if bytes == SNAPSHOT_FORMAT_VERSION_BIG_ENDIAN.to_be_bytes() {
        Ok(Endian::Big)
    } else {
        Err(SnapshotError::UnsupportedVersion { bytes })
    }
}

/// A reader over a snapshot's body whose errors say at which byte of the
/// whole snapshot the field starts.
struct SnapshotReader<'a> {
    r: Reader<'a>,
    /// Offset in the snapshot of the body's end.
    end: usize,
}

impl<'a> SnapshotReader<'a> {
    fn offset(&self) -> usize {
        self.end - self.r.remaining()
    }

    fn read<T>(
        &mut self,
        field: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
    ) -> Result<T, SnapshotError> {
        let at = self.offset();
        field(&mut self.r).map_err(|source| SnapshotError::Field { at, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, Op};

    pub(super) fn entry(client: u64, seq: u64, op: Op) -> Vec<u8> {
        let mut out = Vec::new();
        Command {
            client_id: client,
            seq,
            op,
        }
        .encode(&mut out);
        out
    }

    pub(super) fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn kv_put_get_delete() {
        let mut kv = KvStore::new();
        kv.apply(LogIndex(1), &entry(1, 1, put("a", "1"))).unwrap();
        assert_eq!(kv.get(b"a"), Some(&b"1"[..]));
        let a = kv
            .apply(LogIndex(2), &entry(1, 2, Op::Delete { key: "a".into() }))
            .unwrap();
        assert_eq!(a.result, Ok(OpResult::Deleted(true)));
        assert_eq!(kv.get(b"a"), None);
    }

    #[test]
    fn kv_cas_applies_only_on_match() {
        let mut kv = KvStore::new();
        let cas = |exp: Option<&str>, new: &str| Op::Cas {
            key: "k".into(),
            expected: exp.map(Into::into),
            new: new.into(),
        };
        let a = kv.apply(LogIndex(1), &entry(1, 1, cas(None, "x"))).unwrap();
        assert_eq!(a.result, Ok(OpResult::CasOk));
        let a = kv
            .apply(LogIndex(2), &entry(1, 2, cas(Some("y"), "z")))
            .unwrap();
        assert_eq!(a.result, Ok(OpResult::CasMismatch(Some(b"x".to_vec()))));
        assert_eq!(kv.get(b"k"), Some(&b"x"[..]));
    }

    #[test]
    fn kv_retried_request_applies_once() {
        let mut kv = KvStore::new();
        let app = entry(
            7,
            1,
            Op::Append {
                data: b"d".to_vec(),
            },
        );
        kv.apply(LogIndex(1), &app).unwrap();
        let again = kv.apply(LogIndex(2), &app).unwrap();
        assert!(again.duplicate);
        assert_eq!(
            kv.appends_applied(),
            1,
            "a retried append never applies twice"
        );
        let cas = entry(
            7,
            2,
            Op::Cas {
                key: "k".into(),
                expected: None,
                new: "1".into(),
            },
        );
        assert_eq!(
            kv.apply(LogIndex(3), &cas).unwrap().result,
            Ok(OpResult::CasOk)
        );
        let retry = kv.apply(LogIndex(4), &cas).unwrap();
        assert_eq!(
            retry.result,
            Ok(OpResult::CasOk),
            "the first answer again, not a mismatch"
        );
        assert!(kv
            .apply(LogIndex(5), &entry(7, 1, put("a", "b")))
            .unwrap()
            .result
            .is_err());
    }

    #[test]
    fn kv_undecodable_entry_is_an_error_not_a_panic() {
        let mut kv = KvStore::new();
        assert!(kv.apply(LogIndex(1), &[1, 2, 3]).is_err());
        assert!(kv.apply(LogIndex(2), &[]).is_err());
        assert_eq!(kv.last_applied(), LogIndex(2));
    }

    #[test]
    fn command_roundtrip() {
        let c = Command {
            client_id: 9,
            seq: 3,
            op: Op::Cas {
                key: b"k".to_vec(),
                expected: None,
                new: b"v".to_vec(),
            },
        };
        let mut b = Vec::new();
        c.encode(&mut b);
        assert_eq!(Command::decode(&b).unwrap(), c);
    }

    #[test]
    fn kv_session_eviction_forgets_the_oldest_last_request() {
        let mut kv = KvStore::new();
        let mut index = 0u64;
        let mut next = || {
            index += 1;
            LogIndex(index)
        };
        for c in 1..=SESSIONS_MAX as u64 {
            kv.apply(next(), &entry(c, 1, put("k", "v"))).unwrap();
        }
        // Client 1 moves on: its first request is no longer its last, so
        // client 2 now holds the oldest session.
        kv.apply(next(), &entry(1, 2, put("k", "w"))).unwrap();
        let newcomer = SESSIONS_MAX as u64 + 1;
        kv.apply(next(), &entry(newcomer, 1, put("k", "x")))
            .unwrap();
        assert_eq!(kv.sessions.len(), SESSIONS_MAX);
        assert!(kv.cached(2, 1).is_none(), "client 2 is evicted");
        assert!(kv.cached(1, 2).is_some());
        assert!(kv.cached(3, 1).is_some());
        assert!(kv.cached(newcomer, 1).is_some());
        // One client applying many requests: the age queue stays bounded.
        for seq in 2..5000 {
            kv.apply(next(), &entry(3, seq, put("k", "y"))).unwrap();
        }
        assert!(kv.session_age.len() <= 2 * kv.sessions.len() + 1024);
        assert_eq!(kv.sessions.len(), SESSIONS_MAX);
    }
}

#[cfg(test)]
mod session_tests {
    use super::tests::{entry, put};
    use super::*;
    use crate::kv::Op;

    #[test]
    fn kv_retry_answer_carries_the_first_index() {
        let mut kv = KvStore::new();
        let first = kv.apply(LogIndex(3), &entry(5, 1, put("k", "v"))).unwrap();
        assert_eq!(first.index, LogIndex(3));
        kv.note_applied(LogIndex(4));
        let retry = kv.apply(LogIndex(9), &entry(5, 1, put("k", "v"))).unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.index, LogIndex(3), "the first answer's index");
        assert_eq!(kv.cached(5, 1).map(|(i, _)| i), Some(LogIndex(3)));
    }

    #[test]
    fn kv_write_past_seq_1_without_a_session_is_refused() {
        let mut kv = KvStore::new();
        let a = kv.apply(LogIndex(1), &entry(5, 4, put("k", "v"))).unwrap();
        assert_eq!(
            a.result,
            Err(Refused::SessionExpired {
                client_id: 5,
                seq: 4
            })
        );
        assert_eq!(kv.get(b"k"), None, "nothing applied");
        assert!(!kv.has_session(5), "no session opened by a refused write");
        let b = kv.apply(LogIndex(2), &entry(5, 1, put("k", "v"))).unwrap();
        assert_eq!(b.result, Ok(OpResult::Done), "seq 1 opens a session");
        let c = kv.apply(LogIndex(3), &entry(5, 7, put("k", "w"))).unwrap();
        assert_eq!(c.result, Ok(OpResult::Done), "gaps in seq are allowed");
    }

    #[test]
    fn kv_evicted_session_retry_is_refused_not_applied_twice() {
        let mut kv = KvStore::new();
        kv.sessions_max = 3;
        let cas = |seq| {
            entry(
                1,
                seq,
                Op::Cas {
                    key: b"n".to_vec(),
                    expected: Some(b"0".to_vec()),
                    new: b"1".to_vec(),
                },
            )
        };
        kv.apply(LogIndex(1), &entry(1, 1, put("n", "0"))).unwrap();
        assert_eq!(
            kv.apply(LogIndex(2), &cas(2)).unwrap().result,
            Ok(OpResult::CasOk)
        );
        for c in 2..=4 {
            kv.apply(LogIndex(1 + c), &entry(c, 1, put("x", "y")))
                .unwrap();
        }
        assert!(!kv.has_session(1), "client 1 is the oldest: evicted");
        kv.apply(LogIndex(6), &entry(9, 1, put("n", "0"))).unwrap();
        let retry = kv.apply(LogIndex(7), &cas(2)).unwrap();
        assert!(matches!(
            retry.result,
            Err(Refused::SessionExpired {
                client_id: 1,
                seq: 2
            })
        ));
        assert_eq!(
            kv.get(b"n"),
            Some(&b"0"[..]),
            "the retry did not apply again"
        );
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::tests::{entry, put};
    use super::*;
    use crate::kv::Op;
    use proptest::prelude::*;

    fn cas(k: &str, expected: Option<&str>, new: &str) -> Op {
        Op::Cas {
            key: k.into(),
            expected: expected.map(Into::into),
            new: new.into(),
        }
    }

    fn restore_err(b: &[u8]) -> String {
        match KvStore::restore(b) {
            Ok(_) => panic!("restored from bad bytes"),
            Err(e) => e.to_string(),
        }
    }

    /// One log entry: a command, or a leader's no-op (`None`).
    type LogEntry = Option<Vec<u8>>;

    fn apply_all(kv: &mut KvStore, from: u64, log: &[LogEntry]) -> Vec<Result<Applied, String>> {
        log.iter()
            .zip(from..)
            .map(|(e, i)| match e {
                Some(data) => kv.apply(LogIndex(i), data),
                None => {
                    kv.note_applied(LogIndex(i));
                    Err("no-op".into())
                }
            })
            .collect()
    }

    /// Everything a client or the log can observe is the same.
    fn assert_same(a: &KvStore, b: &KvStore, clients: u64, seqs: u64) {
        assert_eq!(a.snapshot(), b.snapshot());
        assert_eq!(a.map, b.map);
        assert_eq!(a.last_applied(), b.last_applied());
        assert_eq!(a.appends_applied(), b.appends_applied());
        assert_eq!(a.sessions.len(), b.sessions.len());
        for c in 0..=clients {
            for s in 0..=seqs {
                assert_eq!(a.cached(c, s), b.cached(c, s), "client {c} seq {s}");
            }
        }
    }

    /// Puts, deletes, CAS both ways, a read through the log, raw appends,
    /// retries, a request older than the client's last, no-ops and an entry
    /// that does not decode.
    fn mixed_log() -> Vec<LogEntry> {
        vec![
            Some(entry(1, 1, put("a", "1"))),
            Some(entry(2, 1, put("b", "2"))),
            None,
            Some(entry(1, 2, Op::Delete { key: "a".into() })),
            Some(entry(1, 2, Op::Delete { key: "a".into() })), // retry
            Some(entry(3, 1, cas("b", Some("2"), "3"))),
            Some(entry(2, 2, cas("b", Some("2"), "9"))), // mismatch
            Some(entry(4, 1, Op::Append { data: vec![0; 3] })),
            Some(entry(4, 1, Op::Append { data: vec![0; 3] })), // retry
            Some(entry(5, 1, Op::Get { key: "b".into() })),
            Some(entry(6, 1, Op::Delete { key: "zz".into() })),
            Some(entry(2, 1, put("b", "old"))), // older than client 2's last
            Some(vec![9, 9, 9]),                // undecodable
            Some(entry(7, 1, put("", ""))),     // empty key and value
            Some(entry(7, 2, put("c", "x"))),
        ]
    }

    #[test]
    fn kv_snapshot_restores_a_store_that_behaves_the_same() {
        let log = mixed_log();
        let mut kv = KvStore::new();
        apply_all(&mut kv, 1, &log);
        let snap = kv.snapshot();
        let mut restored = KvStore::restore(&snap).unwrap();
        assert_same(&kv, &restored, 8, 3);
        assert_eq!(restored.get(b"b"), Some(&b"3"[..]));
        assert_eq!(restored.get(b"a"), None);
        assert_eq!(restored.last_applied(), LogIndex(log.len() as u64));
        assert_eq!(restored.appends_applied(), 1);
        assert_eq!(
            restored.cached(2, 2).map(|(_, r)| r),
            Some(&OpResult::CasMismatch(Some(b"3".to_vec())))
        );
        assert_eq!(
            restored.cached(5, 1).map(|(_, r)| r),
            Some(&OpResult::Value(Some(b"3".to_vec())))
        );

        // Then the same entries on both, with room for only three sessions:
        // retries of answered requests, new clients, and evictions.
        kv.sessions_max = 3;
        restored.sessions_max = 3;
        let more = vec![
            Some(entry(2, 2, cas("b", Some("2"), "9"))), // retry: the first answer
            Some(entry(4, 1, Op::Append { data: vec![1] })), // retry: not applied again
            Some(entry(8, 1, put("d", "4"))),            // evicts clients 1, 3, 2, 4, 5
            Some(entry(1, 2, Op::Delete { key: "a".into() })), // forgotten: session expired
            Some(entry(9, 1, Op::Append { data: vec![2] })),
            None,
            Some(entry(7, 2, put("c", "x"))),
            Some(entry(8, 2, Op::Get { key: "d".into() })),
        ];
        let from = log.len() as u64 + 1;
        let a = apply_all(&mut kv, from, &more);
        let b = apply_all(&mut restored, from, &more);
        assert_eq!(a, b);
        assert_eq!(
            a[0].as_ref().unwrap().result,
            Ok(OpResult::CasMismatch(Some(b"3".to_vec())))
        );
        assert!(a[1].as_ref().unwrap().duplicate);
        assert_eq!(
            a[3].as_ref().unwrap().result,
            Err(Refused::SessionExpired {
                client_id: 1,
                seq: 2
            }),
            "client 1 was evicted: its write is refused, not applied anew"
        );
        assert!(
            a[6].as_ref().unwrap().duplicate,
            "the refused write opened no session, so client 7 kept its own"
        );
        assert_eq!(kv.sessions.len(), 3);
        for (client, seq) in [(9, 1), (7, 2), (8, 2)] {
            assert!(restored.cached(client, seq).is_some(), "client {client}");
        }
        assert_same(&kv, &restored, 10, 3);
    }

    #[test]
    fn kv_snapshot_is_the_same_bytes_for_the_same_entries() {
        let log = mixed_log();
        let mut a = KvStore::new();
        let mut b = KvStore::new();
        apply_all(&mut a, 1, &log);
        apply_all(&mut b, 1, &log);
        assert_eq!(a.snapshot(), b.snapshot());
        let restored = KvStore::restore(&a.snapshot()).unwrap();
        assert_eq!(restored.snapshot(), a.snapshot());
    }

    #[test]
    fn kv_snapshot_of_an_empty_store() {
        let snap = KvStore::new().snapshot();
        assert_eq!(&snap[..8], b"RAFTKKVS");
        assert_eq!(snap.len(), 20 + 8 + 8 + 4 + 4 + 4);
        let kv = KvStore::restore(&snap).unwrap();
        assert!(kv.is_empty());
        assert_eq!(kv.last_applied(), LogIndex(0));
        assert_eq!(kv.sessions_max, SESSIONS_MAX);
    }

    /// Stale entries in the eviction queue are not written: the restored
    /// queue holds one entry per session and evicts in the same order.
    #[test]
    fn kv_snapshot_keeps_the_eviction_order_without_stale_entries() {
        let mut kv = KvStore::new();
        kv.sessions_max = 3;
        // Client 1 is oldest, then 2 and 3; client 1 moves on, so 2 is
        // oldest and 1 is newest.
        let log: Vec<LogEntry> = vec![
            Some(entry(1, 1, put("k", "1"))),
            Some(entry(2, 1, put("k", "2"))),
            Some(entry(3, 1, put("k", "3"))),
            Some(entry(1, 2, put("k", "4"))),
        ];
        apply_all(&mut kv, 1, &log);
        assert_eq!(kv.session_age.len(), 4);
        let mut restored = KvStore::restore(&kv.snapshot()).unwrap();
        restored.sessions_max = 3;
        assert_eq!(
            restored.session_age,
            Vector::from(vec![(LogIndex(2), 2), (LogIndex(3), 3), (LogIndex(4), 1)])
        );
        let newcomer = vec![Some(entry(4, 1, put("k", "5")))];
        apply_all(&mut kv, 5, &newcomer);
        apply_all(&mut restored, 5, &newcomer);
        for store in [&kv, &restored] {
            assert!(store.cached(2, 1).is_none(), "client 2 is evicted");
            assert!(store.cached(1, 2).is_some());
            assert!(store.cached(3, 1).is_some());
        }
        assert_same(&kv, &restored, 5, 3);
    }

    fn small_snapshot() -> Vec<u8> {
        let mut kv = KvStore::new();
        apply_all(&mut kv, 1, &mixed_log());
        kv.snapshot()
    }

    #[test]
    fn kv_restore_rejects_every_truncation_and_bit_flip() {
        let snap = small_snapshot();
        for cut in 0..snap.len() {
            let e = KvStore::restore(&snap[..cut]).err();
            assert!(e.is_some(), "cut to {cut} bytes");
        }
        for i in 0..snap.len() {
            for bit in 0..8 {
                let mut b = snap.clone();
                b[i] ^= 1 << bit;
                assert!(KvStore::restore(&b).is_err(), "byte {i} bit {bit}");
            }
        }
        let mut longer = snap.clone();
        longer.push(0);
        assert!(restore_err(&longer).contains("trailing bytes"));
    }

    #[test]
    fn kv_restore_errors_say_what_and_where() {
        let snap = small_snapshot();
        let err = restore_err;
        assert!(err(&snap[..5]).contains("truncated"), "{}", err(&snap[..5]));
        let e = err(&snap[..snap.len() - 1]);
        assert!(e.contains("truncated") && e.contains("byte 12"), "{e}");
        let mut b = snap.clone();
        b[0] = b'X';
        assert!(err(&b).contains("not a kv snapshot"), "{}", err(&b));
        let mut b = snap.clone();
        b[8] = 3;
        assert!(
            err(&b).contains("version 3") && err(&b).contains("byte 8"),
            "{}",
            err(&b)
        );
        // Version 2 big-endian was never written: not mistaken for either.
        let mut b = snap.clone();
        b[8..12].copy_from_slice(&2u32.to_be_bytes());
        assert!(err(&b).contains("not supported"), "{}", err(&b));
        let mut b = snap.clone();
        b[40] ^= 1;
        let e = err(&b);
        assert!(
            e.contains("CRC") && e.contains(&format!("byte {}", snap.len() - 4)),
            "{e}"
        );
    }

    #[test]
    fn kv_restore_errors_are_values_a_caller_can_match() {
        let snap = small_snapshot();
        assert!(matches!(
            KvStore::restore(&snap[..5]),
            Err(SnapshotError::ShorterThanHeader { len: 5 })
        ));
        let mut b = snap.clone();
        b[40] ^= 1;
        assert!(matches!(
            KvStore::restore(&b),
            Err(SnapshotError::CrcMismatch { at, .. }) if at == snap.len() - 4
        ));
        let mut longer = snap.clone();
        longer.push(0);
        let stated = snap.len() as u64;
        assert!(matches!(
            KvStore::restore(&longer),
            Err(SnapshotError::LengthMismatch { len, stated: s }) if len == snap.len() + 1 && s == stated
        ));
    }

    /// Rewrites the CRC so that only the content checks can catch `b`.
    fn fix_crc(b: &mut [u8]) {
        let at = b.len() - 4;
        let crc = crc32c::crc32c(&b[..at]);
        b[at..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn kv_restore_rejects_inconsistent_content_with_a_valid_crc() {
        // Keys "a" < "b": make the first "c", so the second (at byte 50) is
        // out of order.
        let mut kv = KvStore::new();
        apply_all(
            &mut kv,
            1,
            &[
                Some(entry(1, 1, put("a", "1"))),
                Some(entry(2, 1, put("b", "2"))),
            ],
        );
        let snap = kv.snapshot();
        let first_key = 20 + 8 + 8 + 4 + 4;
        assert_eq!(snap[first_key], b'a');
        let mut b = snap.clone();
        b[first_key] = b'c';
        fix_crc(&mut b);
        let e = restore_err(&b);
        assert!(e.contains("ascending") && e.contains("byte 50"), "{e}");

        // Two sessions of client 1: the second one's client id rewritten
        // (its low byte comes first). The session count follows the two
        // pairs (length, byte, length, byte each); a session is three u64
        // and the one-byte Done.
        let session_count = first_key - 4 + 2 * (4 + 1 + 4 + 1);
        let second_client = session_count + 4 + 8 + 8 + 8 + 1;
        assert_eq!(snap[second_client..second_client + 8], 2u64.to_le_bytes());
        let mut b = snap.clone();
        b[second_client] = 1;
        fix_crc(&mut b);
        let e = restore_err(&b);
        assert!(
            e.contains("client 1 has a second session")
                && e.contains(&format!("byte {second_client}")),
            "{e}"
        );

        // A session whose last index is past the last applied.
        let mut b = snap.clone();
        b[second_client + 16] = 9;
        fix_crc(&mut b);
        assert!(restore_err(&b).contains("last index 9"));

        // A result tag that means nothing.
        let mut b = snap.clone();
        b[second_client + 24] = 77;
        fix_crc(&mut b);
        let e = restore_err(&b);
        assert!(
            e.contains("unknown tag 77") && e.contains(&format!("byte {}", second_client + 24)),
            "{e}"
        );

        // A key count larger than the bytes can hold.
        let mut b = snap;
        b[36..40].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
        fix_crc(&mut b);
        let e = restore_err(&b);
        assert!(e.contains("keys") && e.contains("byte 36"), "{e}");
    }

    /// A version 1 snapshot (big-endian), as the release before version 2
    /// wrote it for `v1_log`: keys "a" = "1" and "bc" = "", one raw append,
    /// last applied 5, and the sessions of clients 2 (a CAS mismatch that
    /// saw "1"), 3 (the append) and 1 (its second put), in that order.
    const V1_SNAPSHOT_HEX: &str = "\
        524146544b4b565300000001000000000000009500000000000000050000000000000001\
        000000020000000161000000013100000002626300000000000000030000000000000002\
        000000000000000100000000000000030501000000013100000000000000030000000000\
        000001000000000000000401000000000000000100000000000000020000000000000005\
        019c56c41b";

    fn from_hex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("fixture is hex"))
            .collect()
    }

    /// The entries the version 1 fixture was taken after.
    fn v1_log() -> Vec<LogEntry> {
        vec![
            Some(entry(1, 1, put("a", "1"))),
            None,
            Some(entry(2, 1, cas("a", Some("0"), "x"))),
            Some(entry(3, 1, Op::Append { data: vec![7] })),
            Some(entry(1, 2, put("bc", ""))),
        ]
    }

    #[test]
    fn kv_snapshot_is_version_2_little_endian() {
        let mut kv = KvStore::new();
        apply_all(&mut kv, 1, &v1_log());
        let snap = kv.snapshot();
        assert_eq!(snap[8..12], [2, 0, 0, 0]);
        assert_eq!(snap[12..20], (snap.len() as u64).to_le_bytes());
        assert_eq!(snap[20..28], 5u64.to_le_bytes(), "last applied");
        assert_eq!(snap[28..36], 1u64.to_le_bytes(), "raw appends");
        assert_eq!(snap[36..40], 2u32.to_le_bytes(), "keys");
        let at = snap.len() - 4;
        assert_eq!(snap[at..], crc32c::crc32c(&snap[..at]).to_le_bytes());
        // The same content as version 1, byte for byte, apart from the
        // order of each integer's bytes.
        assert_eq!(snap.len(), from_hex(V1_SNAPSHOT_HEX).len());
    }

    /// A node upgraded from a release that wrote version 1 starts from the
    /// snapshot it left: the same state, then written as version 2.
    #[test]
    fn kv_restore_reads_a_version_1_snapshot() {
        let v1 = from_hex(V1_SNAPSHOT_HEX);
        assert_eq!(v1[8..12], [0, 0, 0, 1]);
        let restored = KvStore::restore(&v1).unwrap();
        assert_eq!(restored.get(b"a"), Some(&b"1"[..]));
        assert_eq!(restored.get(b"bc"), Some(&b""[..]));
        assert_eq!(restored.len(), 2);
        assert_eq!(restored.last_applied(), LogIndex(5));
        assert_eq!(restored.appends_applied(), 1);
        assert_eq!(
            restored.cached(2, 1).map(|(_, r)| r),
            Some(&OpResult::CasMismatch(Some(b"1".to_vec())))
        );
        assert_eq!(restored.cached(3, 1).map(|(_, r)| r), Some(&OpResult::Done));
        assert_eq!(restored.cached(1, 2).map(|(_, r)| r), Some(&OpResult::Done));
        assert_eq!(restored.cached(1, 1).map(|(_, r)| r), None);
        assert_eq!(
            restored.session_age,
            Vector::from(vec![(LogIndex(3), 2), (LogIndex(4), 3), (LogIndex(5), 1)])
        );
        let mut kv = KvStore::new();
        apply_all(&mut kv, 1, &v1_log());
        assert_same(&kv, &restored, 4, 3);
        let v2 = restored.snapshot();
        assert_eq!(v2[8..12], [2, 0, 0, 0]);
        assert_same(&KvStore::restore(&v2).unwrap(), &kv, 4, 3);
    }

    #[test]
    fn kv_restore_checks_a_version_1_snapshot_as_strictly() {
        let v1 = from_hex(V1_SNAPSHOT_HEX);
        for cut in 0..v1.len() {
            assert!(KvStore::restore(&v1[..cut]).is_err(), "cut to {cut} bytes");
        }
        for i in 0..v1.len() {
            for bit in 0..8 {
                let mut b = v1.clone();
                b[i] ^= 1 << bit;
                assert!(KvStore::restore(&b).is_err(), "byte {i} bit {bit}");
            }
        }
        let mut b = v1.clone();
        b[40] ^= 1;
        let e = restore_err(&b);
        assert!(
            e.contains("CRC") && e.contains(&format!("byte {}", v1.len() - 4)),
            "{e}"
        );
        // The big-endian length and CRC are read as such.
        let e = restore_err(&v1[..v1.len() - 1]);
        assert!(e.contains("truncated") && e.contains("says 149"), "{e}");
    }

    /// A random log entry over few clients and keys, so that retries, old
    /// requests, CAS hits and evictions are common.
    fn arb_entry() -> impl Strategy<Value = LogEntry> {
        let key = prop::sample::select(vec!["a", "b", "c", ""]);
        let value = prop::sample::select(vec!["1", "2", ""]);
        let op = prop_oneof![
            (key.clone(), value.clone()).prop_map(|(k, v)| put(k, v)),
            key.clone().prop_map(|k| Op::Get { key: k.into() }),
            key.clone().prop_map(|k| Op::Delete { key: k.into() }),
            (key, prop::option::of(value.clone()), value).prop_map(|(k, e, n)| cas(k, e, n)),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(|data| Op::Append { data }),
        ];
        prop_oneof![
            8 => (1..6u64, 1..5u64, op).prop_map(|(c, s, op)| Some(entry(c, s, op))),
            1 => Just(None),
            1 => prop::collection::vec(any::<u8>(), 0..6).prop_map(Some),
        ]
    }

    /// A writer that puts distinct keys, overwrites, deletes and cas-es,
    /// as the clients of a node do; every key holds the index that wrote it.
    fn busy_entry(i: u64) -> Vec<u8> {
        let client = i % 7 + 1;
        let seq = i / 7 + 1;
        let key = format!("k{}", (i * 7919) % 5000);
        let value = format!("v{i}");
        let op = match i % 10 {
            0..=5 => put(&key, &value),
            6 => Op::Delete { key: key.into() },
            7 => cas(&key, None, &value),
            8 => Op::Append { data: vec![1] },
            _ => Op::Get { key: key.into() },
        };
        entry(client, seq, op)
    }

    /// A snapshot taken while clients write sees the state at its index,
    /// whole: the view is frozen in the middle of a run of writes, encoded
    /// on another thread while this one goes on applying (overwriting and
    /// deleting the keys the view holds), and the bytes are those of a
    /// store that stopped at that index. No key from after the freeze, none
    /// missing from before it, no value torn between the two.
    #[test]
    fn kv_frozen_view_encoded_during_writes_is_the_state_at_its_index() {
        let mut kv = KvStore::new();
        kv.sessions_max = 5;
        let mut reference = KvStore::new();
        reference.sessions_max = 5;
        let freeze_at = 6_000u64;
        for i in 1..=freeze_at {
            let e = busy_entry(i);
            kv.apply(LogIndex(i), &e).unwrap();
            reference.apply(LogIndex(i), &e).unwrap();
        }
        let expected = reference.snapshot();
        let frozen = kv.freeze();
        let (tx, rx) = std::sync::mpsc::channel();
        let encoder = std::thread::spawn(move || {
            // Start while the writer is busy: wait for its first writes.
            let _ = rx.recv();
            let data = frozen.encode();
            (frozen.last_applied(), frozen.len(), data)
        });
        for i in freeze_at + 1..=freeze_at + 20_000 {
            kv.apply(LogIndex(i), &busy_entry(i)).unwrap();
            if i == freeze_at + 100 {
                let _ = tx.send(());
            }
        }
        let (index, keys, data) = encoder.join().expect("the encoder thread");
        assert_eq!(index, LogIndex(freeze_at));
        assert_eq!(keys, reference.len());
        assert_eq!(&data[..], &expected[..], "the frozen view's snapshot");
        let restored = KvStore::restore(&data).unwrap();
        assert_same(&restored, &reference, 8, freeze_at / 7 + 2);
        assert_ne!(kv.snapshot(), expected, "the live store moved on");
    }

    proptest! {
        /// Freeze anywhere, apply the rest: the view still encodes, byte
        /// for byte, the snapshot taken at the freeze, in every form.
        #[test]
        fn kv_frozen_view_does_not_see_later_writes(
            log in prop::collection::vec(arb_entry(), 0..80),
            split in any::<prop::sample::Index>(),
        ) {
            let split = split.index(log.len() + 1);
            let mut kv = KvStore::new();
            kv.sessions_max = 3;
            apply_all(&mut kv, 1, &log[..split]);
            let at_freeze = kv.snapshot();
            let frozen = kv.freeze();
            apply_all(&mut kv, split as u64 + 1, &log[split..]);
            prop_assert_eq!(&frozen.encode()[..], &at_freeze[..]);
            prop_assert_eq!(frozen.encoded_len(), at_freeze.len());
            let mut streamed = Vec::new();
            frozen.encode_to(&mut streamed).unwrap();
            prop_assert_eq!(streamed, at_freeze);
        }
    }

    proptest! {
        /// Snapshot anywhere, restore, apply the rest to both: the same
        /// answers and the same state, byte for byte.
        #[test]
        fn kv_snapshot_round_trip_then_same_behaviour(
            log in prop::collection::vec(arb_entry(), 0..60),
            split in any::<prop::sample::Index>(),
            sessions_max in 1..5usize,
        ) {
            let split = split.index(log.len() + 1);
            let mut kv = KvStore::new();
            kv.sessions_max = sessions_max;
            apply_all(&mut kv, 1, &log[..split]);
            let snap = kv.snapshot();
            let mut restored = KvStore::restore(&snap).unwrap();
            restored.sessions_max = sessions_max;
            prop_assert_eq!(restored.snapshot(), snap);
            let from = split as u64 + 1;
            let a = apply_all(&mut kv, from, &log[split..]);
            let b = apply_all(&mut restored, from, &log[split..]);
            prop_assert_eq!(a, b);
            assert_same(&kv, &restored, 6, 5);
        }

        /// Arbitrary bytes never panic `restore`.
        #[test]
        fn kv_restore_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = KvStore::restore(&bytes);
        }
    }
}
