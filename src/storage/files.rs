//! The files beside the log: `meta` (which node of which cluster owns this
//! data dir), `hardstate` (current term and vote) and `snapshot` (the state
//! machine up to some index, which lets the log drop the entries before it).
//! All are replaced atomically: write `NAME.tmp`, fsync it, rename it over
//! `NAME`, fsync the directory. A reader sees the old file or the new one,
//! never a mix; a CRC-32C catches a file damaged at rest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use byteorder::{ByteOrder, LittleEndian};

use super::StorageError;
use crate::raft::membership::MEMBERSHIP_BYTES_MAX;
use crate::raft::{HardState, LogIndex, Membership, NodeId, Snapshot, Term};

pub const META_FILE: &str = "meta";
pub const HARDSTATE_FILE: &str = "hardstate";
pub const META_MAGIC: &[u8; 8] = b"RAFTKMET";
pub const HARDSTATE_MAGIC: &[u8; 8] = b"RAFTKHST";
pub const SNAPSHOT_FILE: &str = "snapshot";
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"RAFTKSNP";
/// magic(8) version(4) membership_len(4) index(8) term(8) data_len(8); then
/// the membership (`membership_len` bytes; none in a file written before
/// memberships were recorded) and the data.
pub const SNAPSHOT_HEADER_BYTES: usize = 40;
/// The CRC-32C after the data.
pub const SNAPSHOT_TRAILER_BYTES: usize = 4;
pub const FORMAT_VERSION: u32 = 1;
/// magic(8) version(4) reserved(4) term(8) voted_for(8) crc(4)
pub const HARDSTATE_BYTES: usize = 36;
/// Longest cluster name stored in `meta`.
pub const CLUSTER_NAME_BYTES_MAX: usize = 1024;

/// Who owns a data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub node_id: NodeId,
    pub cluster: String,
}

/// fsyncs a directory, so that a rename, create or unlink in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all().map_err(sync_error)
}

/// An fsync's failure, marked so that it is never taken for a write that
/// may be retried: after a failed fsync the kernel may have dropped the
/// dirty pages, so what is on disk is unknown and the node must stop.
/// Only a write's own ENOSPC (`StorageError::is_no_space`) is retried.
pub fn sync_error(e: io::Error) -> io::Error {
    io::Error::other(format!("fsync failed: {e}"))
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub fn atomic_write(dir: &Path, name: &str, bytes: &[u8], fsync: bool) -> io::Result<()> {
    atomic_write_parts(dir, name, &[bytes], fsync)
}

/// `atomic_write` of the concatenation of `parts`, so that a large body
/// (a snapshot's data) is written where it lies instead of being copied
/// behind its header first.
pub fn atomic_write_parts(dir: &Path, name: &str, parts: &[&[u8]], fsync: bool) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        for part in parts {
            f.write_all(part)?;
        }
        if fsync {
            f.sync_all().map_err(sync_error)?;
        }
    }
    fs::rename(&tmp, dir.join(name))?;
    if fsync {
        fsync_dir(dir)?;
    }
    Ok(())
}

pub fn encode_meta(meta: &Meta) -> Vec<u8> {
    let name = meta.cluster.as_bytes();
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(META_MAGIC);
    push_u32(&mut out, FORMAT_VERSION);
    push_u32(&mut out, 0);
    push_u64(&mut out, meta.node_id.0);
    push_u32(&mut out, name.len() as u32);
    out.extend_from_slice(name);
    let crc = crc32c::crc32c(&out);
    push_u32(&mut out, crc);
    out
}

/// Checks the 16-byte preamble every raftkit file starts with: its magic
/// (`what` names the kind of file) and the format version. On a mismatch,
/// the offset of the bad field and what is wrong. `b` holds at least 16
/// bytes.
pub(super) fn check_preamble(b: &[u8], magic: &[u8; 8], what: &str) -> Result<(), (u64, String)> {
    if &b[..8] != magic {
        return Err((0, format!("not a raftkit {what} (bad magic)")));
    }
    let version = LittleEndian::read_u32(&b[8..12]);
    if version != FORMAT_VERSION {
        return Err((
            8,
            format!("format version {version}, this build reads {FORMAT_VERSION}"),
        ));
    }
    Ok(())
}

pub fn decode_meta(path: &Path, b: &[u8]) -> Result<Meta, StorageError> {
    let bad = |offset: u64, what: String| StorageError::corrupt(path, offset, what);
    if b.len() < 32 {
        return Err(bad(
            0,
            format!("{} bytes, shorter than a meta file", b.len()),
        ));
    }
    check_preamble(b, META_MAGIC, "meta file").map_err(|(o, w)| bad(o, w))?;
    let node_id = LittleEndian::read_u64(&b[16..24]);
    let len = LittleEndian::read_u32(&b[24..28]) as usize;
    if len > CLUSTER_NAME_BYTES_MAX || b.len() != 32 + len {
        return Err(bad(24, format!("cluster name length {len} does not fit")));
    }
    let stored = LittleEndian::read_u32(&b[28 + len..]);
    if crc32c::crc32c(&b[..28 + len]) != stored {
        return Err(bad((28 + len) as u64, "CRC mismatch".into()));
    }
    let cluster = String::from_utf8(b[28..28 + len].to_vec())
        .map_err(|_| bad(28, "cluster name is not UTF-8".into()))?;
    Ok(Meta {
        node_id: NodeId(node_id),
        cluster,
    })
}

pub fn encode_hardstate(hs: &HardState) -> [u8; HARDSTATE_BYTES] {
    let mut out = [0u8; HARDSTATE_BYTES];
    out[..8].copy_from_slice(HARDSTATE_MAGIC);
    LittleEndian::write_u32(&mut out[8..12], FORMAT_VERSION);
    LittleEndian::write_u64(&mut out[16..24], hs.current_term.0);
    LittleEndian::write_u64(&mut out[24..32], hs.voted_for.map_or(0, |n| n.0));
    let crc = crc32c::crc32c(&out[..32]);
    LittleEndian::write_u32(&mut out[32..36], crc);
    out
}

pub fn decode_hardstate(path: &Path, b: &[u8]) -> Result<HardState, StorageError> {
    let bad = |offset: u64, what: String| StorageError::corrupt(path, offset, what);
    if b.len() != HARDSTATE_BYTES {
        return Err(bad(
            0,
            format!("{} bytes, a hard state file has {HARDSTATE_BYTES}", b.len()),
        ));
    }
    check_preamble(b, HARDSTATE_MAGIC, "hard state file").map_err(|(o, w)| bad(o, w))?;
    if crc32c::crc32c(&b[..32]) != LittleEndian::read_u32(&b[32..36]) {
        return Err(bad(32, "CRC mismatch".into()));
    }
    let vote = LittleEndian::read_u64(&b[24..32]);
    Ok(HardState {
        current_term: Term(LittleEndian::read_u64(&b[16..24])),
        voted_for: (vote != 0).then_some(NodeId(vote)),
    })
}

/// Reads `dir/name`, or `None` when it does not exist.
pub fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(&path, e)),
    }
}

fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// `dir`'s meta file, if it has one.
pub fn read_meta(dir: &Path) -> Result<Option<Meta>, StorageError> {
    read_optional(dir, META_FILE)?
        .map(|b| decode_meta(&dir.join(META_FILE), &b))
        .transpose()
}

/// `dir`'s hard state file, if it has one.
pub fn read_hardstate(dir: &Path) -> Result<Option<HardState>, StorageError> {
    read_optional(dir, HARDSTATE_FILE)?
        .map(|b| decode_hardstate(&dir.join(HARDSTATE_FILE), &b))
        .transpose()
}

/// The header of a snapshot file whose membership encodes to `membership`
/// (`membership_bytes`); the file is this, the membership, the data, and
/// `snapshot_trailer`.
pub fn encode_snapshot_header(snap: &Snapshot, membership: &[u8]) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut out = [0u8; SNAPSHOT_HEADER_BYTES];
    out[..8].copy_from_slice(SNAPSHOT_MAGIC);
    LittleEndian::write_u32(&mut out[8..12], FORMAT_VERSION);
    LittleEndian::write_u32(&mut out[12..16], membership.len() as u32);
    LittleEndian::write_u64(&mut out[16..24], snap.index.0);
    LittleEndian::write_u64(&mut out[24..32], snap.term.0);
    LittleEndian::write_u64(&mut out[32..40], snap.data.len() as u64);
    out
}

/// A snapshot's membership as stored: nothing when it has none (a
/// snapshot from before memberships were recorded).
fn membership_bytes(snap: &Snapshot) -> Vec<u8> {
    if snap.membership == Membership::default() {
        Vec::new()
    } else {
        snap.membership.to_bytes()
    }
}

/// The CRC-32C of the header, the membership and the data, which ends a
/// snapshot file.
pub fn snapshot_trailer(
    header: &[u8; SNAPSHOT_HEADER_BYTES],
    membership: &[u8],
    data: &[u8],
) -> [u8; SNAPSHOT_TRAILER_BYTES] {
    let crc = crc32c::crc32c_append(crc32c::crc32c(header), membership);
    crc32c::crc32c_append(crc, data).to_le_bytes()
}

/// The whole snapshot file, in one buffer (for tests and tools; the store
/// writes the parts without joining them).
pub fn encode_snapshot(snap: &Snapshot) -> Vec<u8> {
    let membership = membership_bytes(snap);
    let header = encode_snapshot_header(snap, &membership);
    let mut out =
        Vec::with_capacity(SNAPSHOT_HEADER_BYTES + membership.len() + snap.data.len() + 4);
    out.extend_from_slice(&header);
    out.extend_from_slice(&membership);
    out.extend_from_slice(&snap.data);
    out.extend_from_slice(&snapshot_trailer(&header, &membership, &snap.data));
    out
}

pub fn decode_snapshot(path: &Path, b: &[u8]) -> Result<Snapshot, StorageError> {
    let bad = |offset: u64, what: String| StorageError::corrupt(path, offset, what);
    let fixed = SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES;
    if b.len() < 16 {
        return Err(bad(
            0,
            format!("{} bytes, shorter than a snapshot file's header", b.len()),
        ));
    }
    check_preamble(b, SNAPSHOT_MAGIC, "snapshot file").map_err(|(o, w)| bad(o, w))?;
    if b.len() < fixed {
        return Err(bad(
            b.len() as u64,
            format!(
                "the file ends after {} bytes, a snapshot file has at least {fixed}",
                b.len()
            ),
        ));
    }
    let membership_len = LittleEndian::read_u32(&b[12..16]) as usize;
    if membership_len > MEMBERSHIP_BYTES_MAX || membership_len > b.len() - fixed {
        return Err(bad(
            12,
            format!(
                "membership length {membership_len}, past what the file or a membership can hold"
            ),
        ));
    }
    let data_len = LittleEndian::read_u64(&b[32..40]);
    // The length comes from disk: compare without converting it to an
    // offset, which could overflow.
    let have = (b.len() - fixed - membership_len) as u64;
    if data_len != have {
        let why = if data_len > have {
            "the file is truncated"
        } else {
            "the file has bytes past its end"
        };
        return Err(bad(
            32,
            format!("data length {data_len}, but the file holds {have} bytes of data: {why}"),
        ));
    }
    let data_at = SNAPSHOT_HEADER_BYTES + membership_len;
    let end = data_at + have as usize;
    let stored = LittleEndian::read_u32(&b[end..]);
    let computed = crc32c::crc32c(&b[..end]);
    if computed != stored {
        return Err(bad(
            end as u64,
            format!("CRC mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    let membership = if membership_len == 0 {
        Membership::default()
    } else {
        Membership::from_bytes(&b[SNAPSHOT_HEADER_BYTES..data_at])
            .map_err(|e| bad(SNAPSHOT_HEADER_BYTES as u64, format!("membership: {e}")))?
    };
    Ok(Snapshot {
        index: LogIndex(LittleEndian::read_u64(&b[16..24])),
        term: Term(LittleEndian::read_u64(&b[24..32])),
        membership,
        data: b[data_at..end].into(),
    })
}

/// `dir`'s snapshot, if it has one. A leftover `snapshot.tmp` (a crash
/// while the next one was written) is not looked at.
pub fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>, StorageError> {
    read_optional(dir, SNAPSHOT_FILE)?
        .map(|b| decode_snapshot(&dir.join(SNAPSHOT_FILE), &b))
        .transpose()
}

/// Replaces `dir`'s snapshot with `snap`, atomically and (with `fsync`)
/// durably.
pub fn write_snapshot(dir: &Path, snap: &Snapshot, fsync: bool) -> Result<(), StorageError> {
    let membership = membership_bytes(snap);
    let header = encode_snapshot_header(snap, &membership);
    let trailer = snapshot_trailer(&header, &membership, &snap.data);
    atomic_write_parts(
        dir,
        SNAPSHOT_FILE,
        &[&header, &membership, &snap.data, &trailer],
        fsync,
    )
    .map_err(|e| StorageError::io(&dir.join(SNAPSHOT_FILE), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(index: u64, term: u64, data: &[u8]) -> Snapshot {
        Snapshot {
            membership: Default::default(),
            index: LogIndex(index),
            term: Term(term),
            data: data.into(),
        }
    }

    fn corrupt_at(r: Result<Snapshot, StorageError>) -> (u64, String) {
        match r {
            Err(StorageError::Corrupt { offset, what, .. }) => (offset, what),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn snapshot_round_trip() {
        let p = Path::new("snapshot");
        for s in [snap(42, 7, b"state machine"), snap(1, 1, b"")] {
            let b = encode_snapshot(&s);
            assert_eq!(b.len(), SNAPSHOT_HEADER_BYTES + s.data.len() + 4);
            assert_eq!(decode_snapshot(p, &b).ok(), Some(s));
        }
    }

    #[test]
    fn snapshot_membership_round_trips_and_damage_to_it_is_reported() {
        let p = Path::new("snapshot");
        let mut s = snap(42, 7, b"state machine");
        s.membership = Membership::new([NodeId(1), NodeId(2), NodeId(4)]);
        s.membership.learners.insert(NodeId(5));
        s.membership
            .addrs
            .insert(NodeId(4), "127.0.0.1:7004".into());
        let b = encode_snapshot(&s);
        let m_len = s.membership.to_bytes().len();
        assert_eq!(b.len(), SNAPSHOT_HEADER_BYTES + m_len + s.data.len() + 4);
        assert_eq!(decode_snapshot(p, &b).ok(), Some(s.clone()));
        // A membership length past the file.
        let mut d = b.clone();
        LittleEndian::write_u32(&mut d[12..16], 1 << 20);
        assert_eq!(corrupt_at(decode_snapshot(p, &d)).0, 12);
        // A flipped bit in the membership: the CRC catches it.
        let mut d = b.clone();
        d[SNAPSHOT_HEADER_BYTES + 3] ^= 1;
        let crc_at = (b.len() - 4) as u64;
        assert_eq!(corrupt_at(decode_snapshot(p, &d)).0, crc_at);
    }

    #[test]
    fn snapshot_damage_is_reported_with_its_offset() {
        let p = Path::new("snapshot");
        let b = encode_snapshot(&snap(42, 7, b"state machine"));
        let crc_at = (b.len() - 4) as u64;
        // A flipped bit anywhere past the preamble: the CRC, or the length.
        for byte in 16..b.len() {
            let mut d = b.clone();
            d[byte] ^= 0x20;
            let (offset, what) = corrupt_at(decode_snapshot(p, &d));
            let want = if (32..40).contains(&byte) { 32 } else { crc_at };
            assert_eq!(offset, want, "flip at {byte}: {what}");
        }
        let mut d = b.clone();
        d[20] ^= 1;
        let (_, what) = corrupt_at(decode_snapshot(p, &d));
        assert!(what.starts_with("CRC mismatch"), "{what}");
        // Wrong magic, and a version this build does not read.
        let mut d = b.clone();
        d[..8].copy_from_slice(b"RAFTKHST");
        let (offset, what) = corrupt_at(decode_snapshot(p, &d));
        assert_eq!((offset, what.contains("bad magic")), (0, true), "{what}");
        let mut d = b.clone();
        d[8] = 9;
        assert_eq!(corrupt_at(decode_snapshot(p, &d)).0, 8);
        // Every truncation.
        for len in 0..b.len() {
            let (offset, what) = corrupt_at(decode_snapshot(p, &b[..len]));
            let want = match len {
                0..=15 => 0,
                16..=43 => len as u64,
                _ => 32,
            };
            assert_eq!(offset, want, "truncated to {len}: {what}");
        }
        // Bytes past the end, and a length that overflows any offset.
        let mut d = b.clone();
        d.push(0);
        assert_eq!(corrupt_at(decode_snapshot(p, &d)).0, 32);
        let mut d = b.clone();
        LittleEndian::write_u64(&mut d[32..40], u64::MAX);
        let (offset, what) = corrupt_at(decode_snapshot(p, &d));
        assert_eq!(offset, 32);
        assert!(what.contains("truncated"), "{what}");
    }

    #[test]
    fn snapshot_file_is_replaced_and_a_partial_temp_file_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_snapshot(dir.path()).ok(), Some(None));
        write_snapshot(dir.path(), &snap(10, 2, b"ten"), true).expect("write");
        write_snapshot(dir.path(), &snap(20, 3, b"twenty"), false).expect("write");
        fs::write(dir.path().join("snapshot.tmp"), b"RAFTKSNP\x01\x00").expect("tmp");
        assert_eq!(
            read_snapshot(dir.path()).ok(),
            Some(Some(snap(20, 3, b"twenty")))
        );
    }
}
