//! The two small files beside the log: `meta` (which node of which cluster
//! owns this data dir) and `hardstate` (current term and vote). Both are
//! replaced atomically: write `NAME.tmp`, fsync it, rename it over `NAME`,
//! fsync the directory. A reader sees the old file or the new one, never a
//! mix; a CRC-32C catches a file damaged at rest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use byteorder::{ByteOrder, LittleEndian};

use super::StorageError;
use crate::raft::{HardState, NodeId, Term};

pub const META_FILE: &str = "meta";
pub const HARDSTATE_FILE: &str = "hardstate";
pub const META_MAGIC: &[u8; 8] = b"RAFTKMET";
pub const HARDSTATE_MAGIC: &[u8; 8] = b"RAFTKHST";
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
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub fn atomic_write(dir: &Path, name: &str, bytes: &[u8], fsync: bool) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if fsync {
            f.sync_all()?;
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
