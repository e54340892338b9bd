//! The files beside the log: `meta` (which node of which cluster owns this
//! data dir), `hardstate` (current term and vote) and `snapshot` (the state
//! machine up to some index, which lets the log drop the entries before it).
//! All are replaced atomically: write `NAME.tmp`, fsync it, rename it over
//! `NAME`, fsync the directory. A reader sees the old file or the new one,
//! never a mix; a CRC-32C catches a file damaged at rest.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use byteorder::{ByteOrder, LittleEndian};

use super::StorageError;
use crate::raft::membership::MEMBERSHIP_BYTES_MAX;
use crate::raft::{
    HardState, LogIndex, Membership, NodeId, Snapshot, SnapshotData, SnapshotSource, Term,
};

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
    snapshot_header(snap.index, snap.term, membership, snap.data.len() as u64)
}

fn snapshot_header(
    index: LogIndex,
    term: Term,
    membership: &[u8],
    data_len: u64,
) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut out = [0u8; SNAPSHOT_HEADER_BYTES];
    out[..8].copy_from_slice(SNAPSHOT_MAGIC);
    LittleEndian::write_u32(&mut out[8..12], FORMAT_VERSION);
    LittleEndian::write_u32(&mut out[12..16], membership.len() as u32);
    LittleEndian::write_u64(&mut out[16..24], index.0);
    LittleEndian::write_u64(&mut out[24..32], term.0);
    LittleEndian::write_u64(&mut out[32..40], data_len);
    out
}

/// A membership as stored: nothing when it has none (a snapshot from
/// before memberships were recorded).
fn stored_membership(membership: &Membership) -> Vec<u8> {
    if *membership == Membership::default() {
        Vec::new()
    } else {
        membership.to_bytes()
    }
}

fn membership_bytes(snap: &Snapshot) -> Vec<u8> {
    stored_membership(&snap.membership)
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
    let data = snapshot_bytes(snap);
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + membership.len() + data.len() + 4);
    out.extend_from_slice(&header);
    out.extend_from_slice(&membership);
    out.extend_from_slice(&data);
    out.extend_from_slice(&snapshot_trailer(&header, &membership, &data));
    out
}

/// A snapshot's data in one buffer: in memory already, or read whole from
/// its source (for tests and tools; a source that fails reads as empty,
/// which no decoder takes for a snapshot).
fn snapshot_bytes(snap: &Snapshot) -> Arc<[u8]> {
    match &snap.data {
        SnapshotData::Bytes(b) => b.clone(),
        SnapshotData::Source(_) => snap
            .data
            .view()
            .map(|v| Arc::from((*v).as_ref()))
            .unwrap_or_else(|_| Arc::from(&[][..])),
    }
}

/// What a snapshot file's header says, checked against the file's length.
struct SnapshotHead {
    index: LogIndex,
    term: Term,
    data_at: usize,
    data_len: u64,
}

/// Parses the header and membership of a snapshot file of `file_len`
/// bytes from `b`, its first bytes (all of them, or at least
/// `SNAPSHOT_HEADER_BYTES + MEMBERSHIP_BYTES_MAX`).
fn parse_snapshot_head(path: &Path, b: &[u8], file_len: u64) -> Result<SnapshotHead, StorageError> {
    let bad = |offset: u64, what: String| StorageError::corrupt(path, offset, what);
    let fixed = (SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES) as u64;
    if b.len() < 16 {
        return Err(bad(
            0,
            format!("{file_len} bytes, shorter than a snapshot file's header"),
        ));
    }
    check_preamble(b, SNAPSHOT_MAGIC, "snapshot file").map_err(|(o, w)| bad(o, w))?;
    if file_len < fixed || b.len() < SNAPSHOT_HEADER_BYTES {
        return Err(bad(
            file_len,
            format!("the file ends after {file_len} bytes, a snapshot file has at least {fixed}"),
        ));
    }
    let membership_len = LittleEndian::read_u32(&b[12..16]) as usize;
    if membership_len > MEMBERSHIP_BYTES_MAX
        || membership_len as u64 > file_len - fixed
        || SNAPSHOT_HEADER_BYTES + membership_len > b.len()
    {
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
    let have = file_len - fixed - membership_len as u64;
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
    Ok(SnapshotHead {
        index: LogIndex(LittleEndian::read_u64(&b[16..24])),
        term: Term(LittleEndian::read_u64(&b[24..32])),
        data_at: SNAPSHOT_HEADER_BYTES + membership_len,
        data_len,
    })
}

/// The membership in a snapshot file's first bytes `b`, once its CRC has
/// been checked (damage is reported as a CRC mismatch first).
fn snapshot_membership(
    path: &Path,
    b: &[u8],
    head: &SnapshotHead,
) -> Result<Membership, StorageError> {
    if head.data_at == SNAPSHOT_HEADER_BYTES {
        return Ok(Membership::default());
    }
    Membership::from_bytes(&b[SNAPSHOT_HEADER_BYTES..head.data_at]).map_err(|e| {
        StorageError::corrupt(
            path,
            SNAPSHOT_HEADER_BYTES as u64,
            format!("membership: {e}"),
        )
    })
}

fn crc_mismatch(path: &Path, end: u64, stored: u32, computed: u32) -> StorageError {
    StorageError::corrupt(
        path,
        end,
        format!("CRC mismatch (stored {stored:08x}, computed {computed:08x})"),
    )
}

/// A whole snapshot file in memory, its data copied out (for tests and
/// tools; the node opens its snapshot with [`open_snapshot`]).
pub fn decode_snapshot(path: &Path, b: &[u8]) -> Result<Snapshot, StorageError> {
    let head = parse_snapshot_head(path, b, b.len() as u64)?;
    let end = head.data_at + head.data_len as usize;
    let stored = LittleEndian::read_u32(&b[end..]);
    let computed = crc32c::crc32c(&b[..end]);
    if computed != stored {
        return Err(crc_mismatch(path, end as u64, stored, computed));
    }
    Ok(Snapshot {
        index: head.index,
        term: head.term,
        membership: snapshot_membership(path, b, &head)?,
        data: b[head.data_at..end].into(),
    })
}

/// Bytes read at a time when a snapshot file is checked or sent.
pub const SNAPSHOT_READ_CHUNK_BYTES: usize = 1 << 20;

/// Opens the snapshot file at `path` and checks it whole (header, lengths,
/// CRC) reading it in chunks: the snapshot it returns reads its data from
/// the open file, never holding it in memory.
pub fn open_snapshot(path: &Path) -> Result<Snapshot, StorageError> {
    let io_err = |e| StorageError::io(path, e);
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut head = vec![0u8; (SNAPSHOT_HEADER_BYTES + MEMBERSHIP_BYTES_MAX).min(file_len as usize)];
    read_full_at(&file, 0, &mut head).map_err(io_err)?;
    let h = parse_snapshot_head(path, &head, file_len)?;
    let end = h.data_at as u64 + h.data_len;
    let mut crc = 0u32;
    let mut buf = vec![0u8; SNAPSHOT_READ_CHUNK_BYTES];
    let mut at = 0u64;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        read_full_at(&file, at, &mut buf[..n]).map_err(io_err)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES];
    read_full_at(&file, end, &mut trailer).map_err(io_err)?;
    let stored = u32::from_le_bytes(trailer);
    if crc != stored {
        return Err(crc_mismatch(path, end, stored, crc));
    }
    Ok(Snapshot {
        index: h.index,
        term: h.term,
        membership: snapshot_membership(path, &head, &h)?,
        data: SnapshotData::Source(Arc::new(SnapshotFile {
            file,
            data_at: h.data_at as u64,
            len: h.data_len,
            pending: Mutex::new(None),
        })),
    })
}

/// Fills `buf` from `file` at `offset`; a file that ends first is an
/// error.
fn read_full_at(file: &File, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ends at {offset}"),
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `dir`'s snapshot, if it has one, open (see [`open_snapshot`]). A
/// leftover temporary file (a crash while the next one was written or
/// received) is not looked at.
pub fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>, StorageError> {
    let path = dir.join(SNAPSHOT_FILE);
    match open_snapshot(&path) {
        Ok(s) => Ok(Some(s)),
        Err(StorageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Removes the temporary snapshot files a crash left in `dir` (one being
/// encoded or received); returns how many.
pub fn remove_snapshot_leftovers(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SNAPSHOT_TMP_PREFIX) && name.ends_with(".tmp") {
            fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Replaces `dir`'s snapshot with `snap`, atomically and (with `fsync`)
/// durably. A snapshot made by a [`SnapshotFileWriter`] in `dir` is
/// already written: its file is made durable and renamed into place.
pub fn write_snapshot(dir: &Path, snap: &Snapshot, fsync: bool) -> Result<(), StorageError> {
    if let SnapshotData::Source(s) = &snap.data {
        if let Some(f) = s.as_any().downcast_ref::<SnapshotFile>() {
            return f
                .install(dir, fsync)
                .map_err(|e| StorageError::io(&dir.join(SNAPSHOT_FILE), e));
        }
    }
    let membership = membership_bytes(snap);
    let header = encode_snapshot_header(snap, &membership);
    let data = snapshot_bytes(snap);
    let trailer = snapshot_trailer(&header, &membership, &data);
    atomic_write_parts(
        dir,
        SNAPSHOT_FILE,
        &[&header, &membership, &data, &trailer],
        fsync,
    )
    .map_err(|e| StorageError::io(&dir.join(SNAPSHOT_FILE), e))
}

/// Names of the temporary files snapshots are written to before they
/// are renamed into place: `snapshot.<what>.<index>.<n>.tmp`.
pub const SNAPSHOT_TMP_PREFIX: &str = "snapshot.";

/// A snapshot file the node holds open: its own snapshot, or one being
/// installed. Its data is read at offsets ([`SnapshotSource`]); while it
/// is still a temporary file (not yet the data dir's snapshot) dropping
/// it removes the file.
pub struct SnapshotFile {
    file: File,
    data_at: u64,
    len: u64,
    /// The temporary file's path until [`SnapshotFile::install`] renames it.
    pending: Mutex<Option<PathBuf>>,
}

impl fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file of {} bytes", self.len)
    }
}

impl SnapshotFile {
    /// Makes this file `dir`'s snapshot: fsync, rename, fsync the
    /// directory. Done already, nothing to do.
    pub fn install(&self, dir: &Path, fsync: bool) -> io::Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = pending.as_ref() else {
            return Ok(());
        };
        if fsync {
            self.file.sync_all().map_err(sync_error)?;
        }
        fs::rename(path, dir.join(SNAPSHOT_FILE))?;
        if fsync {
            fsync_dir(dir)?;
        }
        *pending = None;
        Ok(())
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = pending.take() {
            let _ = fs::remove_file(path);
        }
    }
}

impl SnapshotSource for SnapshotFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(offset)).min(buf.len() as u64) as usize;
        read_full_at(&self.file, self.data_at + offset, &mut buf[..n])?;
        Ok(n)
    }

    fn view(&self) -> io::Result<Box<dyn AsRef<[u8]> + Send>> {
        Ok(Box::new(Mapped::new(&self.file, self.data_at, self.len)?))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A snapshot file mapped read-only: its data decoded where it lies in
/// the page cache, never copied into the heap.
struct Mapped {
    ptr: *mut libc::c_void,
    map_len: usize,
    data_at: usize,
    len: usize,
}

// The mapping is read-only and private to this value.
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(file: &File, data_at: u64, len: u64) -> io::Result<Mapped> {
        let map_len = (data_at + len) as usize;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                map_len: 0,
                data_at: 0,
                len: 0,
            });
        }
        // SAFETY: a read-only private mapping of a file we hold open; the
        // file is never written once it is a snapshot (a new snapshot is a
        // new file renamed over the name).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr,
            map_len,
            data_at: data_at as usize,
            len: len as usize,
        })
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping covers `data_at + len` bytes and lives as long
        // as `self`.
        unsafe { std::slice::from_raw_parts((self.ptr as *const u8).add(self.data_at), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.map_len > 0 {
            // SAFETY: unmaps exactly what `new` mapped.
            unsafe {
                libc::munmap(self.ptr, self.map_len);
            }
        }
    }
}

/// Writes a snapshot file piece by piece into a temporary file in the data
/// dir (the node's own snapshot as it is encoded, or a leader's as it
/// arrives), keeping its CRC as it goes; [`SnapshotFileWriter::finish`]
/// gives the snapshot, which [`write_snapshot`] later renames into place.
pub struct SnapshotFileWriter {
    file: File,
    /// How dirty pages are pushed to disk as the file grows.
    writeback: Writeback,
    /// Bytes of the file already handed to writeback.
    flushed: u64,
    path: Option<PathBuf>,
    crc: u32,
    written: u64,
    data_at: u64,
    data_len: u64,
    index: LogIndex,
    term: Term,
    membership: Membership,
}

/// How a [`SnapshotFileWriter`] pushes what it wrote to disk before the
/// final fsync. A snapshot of a large state written in one go would leave
/// gigabytes of dirty pages for the fsync that makes it durable, and that
/// fsync would hold up the log's own fsyncs (the same disk) for its whole
/// length: every commit would stall. Pushed out as it goes, the final
/// fsync has little left to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writeback {
    /// Nothing until the fsync (no fsync at all: `fsync = false`).
    None,
    /// Start writeback of every `WRITEBACK_BYTES` written, without waiting
    /// (a writer on the event loop: a snapshot being received).
    Start,
    /// Start it, and wait for the previous `WRITEBACK_BYTES` to be on disk
    /// before writing more: the writer goes at the disk's pace and dirty
    /// pages stay under two steps (a thread of its own: the node's own
    /// snapshot as it is encoded).
    Throttle,
}

/// Bytes written between writeback steps.
pub const WRITEBACK_BYTES: u64 = 8 << 20;

static SNAPSHOT_TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SnapshotFileWriter {
    /// A new temporary file in `dir` for a snapshot of `data_len` bytes of
    /// data; `what` names its origin in the file name.
    pub fn create(
        dir: &Path,
        what: &str,
        index: LogIndex,
        term: Term,
        membership: &Membership,
        data_len: u64,
    ) -> io::Result<SnapshotFileWriter> {
        let n = SNAPSHOT_TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{SNAPSHOT_TMP_PREFIX}{what}.{index}.{n}.tmp"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let m = stored_membership(membership);
        let header = snapshot_header(index, term, &m, data_len);
        let mut w = SnapshotFileWriter {
            writeback: Writeback::None,
            flushed: 0,
            crc: crc32c::crc32c_append(crc32c::crc32c(&header), &m),
            data_at: (header.len() + m.len()) as u64,
            path: Some(path),
            written: 0,
            data_len,
            index,
            term,
            membership: membership.clone(),
            file: {
                file.write_all(&header)?;
                file.write_all(&m)?;
                file
            },
        };
        w.file.flush()?;
        Ok(w)
    }

    /// Pushes what is written to disk as it goes (see [`Writeback`]).
    pub fn with_writeback(mut self, writeback: Writeback) -> SnapshotFileWriter {
        self.writeback = writeback;
        self
    }

    /// A writeback step once `WRITEBACK_BYTES` more are written. Errors
    /// are left to the final fsync, which reports them.
    fn maybe_write_back(&mut self) {
        let end = self.data_at + self.written;
        if self.writeback == Writeback::None || end < self.flushed + WRITEBACK_BYTES {
            return;
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: sync_file_range on a file descriptor we own; it only
        // reads the arguments.
        unsafe {
            if self.writeback == Writeback::Throttle && self.flushed >= WRITEBACK_BYTES {
                let prev = self.flushed - WRITEBACK_BYTES;
                libc::sync_file_range(
                    fd,
                    prev as libc::off64_t,
                    WRITEBACK_BYTES as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            libc::sync_file_range(
                fd,
                self.flushed as libc::off64_t,
                (end - self.flushed) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.flushed = end;
    }

    /// Bytes of data written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes the trailer and gives the snapshot, reading from this file;
    /// fails unless exactly `data_len` bytes of data were written.
    pub fn finish(mut self) -> io::Result<Snapshot> {
        if self.written != self.data_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} bytes of snapshot data written, {} expected",
                    self.written, self.data_len
                ),
            ));
        }
        self.file.write_all(&self.crc.to_le_bytes())?;
        let file = self.file.try_clone()?;
        let snap = Snapshot {
            index: self.index,
            term: self.term,
            membership: std::mem::take(&mut self.membership),
            data: SnapshotData::Source(Arc::new(SnapshotFile {
                file,
                data_at: self.data_at,
                len: self.data_len,
                pending: Mutex::new(self.path.take()),
            })),
        };
        Ok(snap)
    }
}

impl Write for SnapshotFileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.data_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot data past its stated {} bytes", self.data_len),
            ));
        }
        self.file.write_all(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.written += buf.len() as u64;
        self.maybe_write_back();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SnapshotFileWriter {
    /// Not finished: the partial file goes.
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
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
        let read = read_snapshot(dir.path())
            .expect("read")
            .expect("a snapshot");
        assert_eq!(same_in_memory(&read), snap(20, 3, b"twenty"));
        // The one read from disk streams from the file.
        assert!(matches!(read.data, SnapshotData::Source(_)));
    }

    /// `s` with its data read into memory, to compare.
    fn same_in_memory(s: &Snapshot) -> Snapshot {
        let view = s.data.view().expect("view");
        Snapshot {
            data: (*view).as_ref().into(),
            ..s.clone()
        }
    }

    #[test]
    fn open_snapshot_reports_damage_as_decode_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(SNAPSHOT_FILE);
        let b = encode_snapshot(&snap(42, 7, b"state machine"));
        for byte in 0..b.len() {
            let mut d = b.clone();
            d[byte] ^= 0x20;
            fs::write(&p, &d).expect("write");
            let want = decode_snapshot(&p, &d).err().map(|e| e.to_string());
            let got = open_snapshot(&p).err().map(|e| e.to_string());
            assert_eq!(got, want, "flip at {byte}");
        }
        for len in 0..b.len() {
            fs::write(&p, &b[..len]).expect("write");
            let want = decode_snapshot(&p, &b[..len]).err().map(|e| e.to_string());
            let got = open_snapshot(&p).err().map(|e| e.to_string());
            assert_eq!(got, want, "truncated to {len}");
        }
    }

    #[test]
    fn a_written_snapshot_file_is_renamed_into_place_or_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp_files = || {
            fs::read_dir(dir.path())
                .expect("ls")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                })
                .count()
        };
        let write = |data: &[u8]| {
            let mut w = SnapshotFileWriter::create(
                dir.path(),
                "test",
                LogIndex(5),
                Term(2),
                &Membership::default(),
                data.len() as u64,
            )
            .expect("create");
            w.write_all(data).expect("write");
            w
        };
        // Dropped unfinished, or finished and never installed: it goes.
        drop(write(b"half"));
        assert_eq!(tmp_files(), 0);
        drop(write(b"done").finish().expect("finish"));
        assert_eq!(tmp_files(), 0);
        // Past its stated length: refused.
        let mut w = write(b"four");
        assert!(w.write_all(b"x").is_err());
        drop(w);
        // Installed: it is the snapshot, read back whole.
        let s = write(b"state").finish().expect("finish");
        assert_eq!(tmp_files(), 1);
        write_snapshot(dir.path(), &s, true).expect("install");
        assert_eq!(tmp_files(), 0);
        drop(s);
        let read = read_snapshot(dir.path()).expect("read").expect("some");
        assert_eq!(same_in_memory(&read), snap(5, 2, b"state"));
        let mut buf = [0u8; 3];
        assert_eq!(read.data.read_at(2, &mut buf).expect("read_at"), 3);
        assert_eq!(&buf, b"ate");
        // A leftover from a crash is removed.
        std::mem::forget(write(b"crash"));
        assert_eq!(remove_snapshot_leftovers(dir.path()).expect("rm"), 1);
        assert_eq!(tmp_files(), 0);
    }
}
