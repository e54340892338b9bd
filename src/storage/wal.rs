//! The write-ahead log: Raft log entries as records in segment files.
//!
//! A segment `wal/<first index, 20 digits>.wal` starts with a 24-byte header
//! and holds consecutive records; a new segment starts once the current one
//! has reached `segment_bytes_max`. A record is
//! `len u32 | crc u32 | index u64 | term u64 | kind u8 | data`, little
//! endian, where `len` counts the bytes after the CRC and the CRC-32C covers
//! the `len` field and everything after it. docs/STORAGE.md has the details
//! and the rules recovery follows.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};
use log::{debug, warn};

use super::direct::{self, DirectWriter};
use super::files::{check_preamble, fsync_dir, sync_error, FORMAT_VERSION};
use super::StorageError;
use crate::raft::{Entry, EntryKind, LogIndex, Term};

pub const SEGMENT_MAGIC: &[u8; 8] = b"RAFTKWAL";
/// magic(8) version(4) reserved(4) first_index(8)
pub const SEGMENT_HEADER_BYTES: u64 = 24;
/// len(4) crc(4)
pub const RECORD_HEADER_BYTES: usize = 8;
/// index(8) term(8) kind(1)
pub const RECORD_FIXED_BYTES: usize = 17;
/// Largest entry payload a record may hold (the wire's frame limit).
pub const ENTRY_DATA_BYTES_MAX: usize = 64 << 20;
/// With fsync on, the last segment is kept zero-filled this far past its
/// data: records then overwrite allocated blocks, and `fdatasync` has no
/// file size to commit (measured: about a quarter more fsyncs per second).
pub const PREALLOC_BYTES: u64 = 4 << 20;
/// Pending bytes past which `append` writes them out before `sync`.
const WRITE_BUF_FLUSH_BYTES: usize = 4 << 20;

/// Bytes one entry takes on disk.
pub fn record_bytes(data_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + RECORD_FIXED_BYTES + data_len) as u64
}

/// The segment file name for a segment whose first entry is `first`.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Appends the record for `e` to `out`.
pub fn encode_record(e: &Entry, out: &mut Vec<u8>) {
    let len = (RECORD_FIXED_BYTES + e.data.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&e.index.0.to_le_bytes());
    out.extend_from_slice(&e.term.0.to_le_bytes());
    out.push(e.kind as u8);
    out.extend_from_slice(&e.data);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 4]), &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at `off` in `b`: the entry and the offset after it,
/// or why it is not a whole, intact record.
pub fn decode_record(b: &[u8], off: usize) -> Result<(Entry, usize), String> {
    let left = b.len() - off.min(b.len());
    if left < RECORD_HEADER_BYTES {
        return Err(format!("incomplete record header ({left} bytes left)"));
    }
    let len = LittleEndian::read_u32(&b[off..off + 4]) as usize;
    if !(RECORD_FIXED_BYTES..=RECORD_FIXED_BYTES + ENTRY_DATA_BYTES_MAX).contains(&len) {
        return Err(format!("impossible record length {len}"));
    }
    if len > left - RECORD_HEADER_BYTES {
        return Err(format!(
            "record length {len} runs past the end of the file ({} bytes left)",
            left - RECORD_HEADER_BYTES
        ));
    }
    let stored = LittleEndian::read_u32(&b[off + 4..off + 8]);
    let body = &b[off + 8..off + 8 + len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[off..off + 4]), body);
    if crc != stored {
        return Err(format!(
            "CRC mismatch (stored {stored:08x}, computed {crc:08x})"
        ));
    }
    let kind = EntryKind::from_u8(body[16]).ok_or(format!("unknown entry kind {}", body[16]))?;
    let entry = Entry {
        index: LogIndex(LittleEndian::read_u64(&body[..8])),
        term: Term(LittleEndian::read_u64(&body[8..16])),
        kind,
        data: body[RECORD_FIXED_BYTES..].into(),
    };
    Ok((entry, off + 8 + len))
}

fn encode_segment_header(first: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    LittleEndian::write_u32(&mut h[8..12], FORMAT_VERSION);
    LittleEndian::write_u64(&mut h[16..24], first);
    h
}

fn check_segment_header(b: &[u8], first: u64) -> Result<(), String> {
    if b.len() < SEGMENT_HEADER_BYTES as usize {
        return Err(format!("incomplete segment header ({} bytes)", b.len()));
    }
    check_preamble(b, SEGMENT_MAGIC, "log segment").map_err(|(_, why)| why)?;
    let stored = LittleEndian::read_u64(&b[16..24]);
    if stored != first {
        return Err(format!(
            "header says the segment starts at index {stored}, its name says {first}"
        ));
    }
    Ok(())
}

/// Whether a whole, intact record starts anywhere in `b` after `from`.
fn intact_record_after(b: &[u8], from: usize) -> Option<usize> {
    let min = RECORD_HEADER_BYTES + RECORD_FIXED_BYTES;
    (from..b.len().saturating_sub(min - 1)).find(|&p| decode_record(b, p).is_ok())
}

/// Settings for writing.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    pub segment_bytes_max: u64,
    /// `false` only for experiments: appends then survive a process crash
    /// but not a power loss.
    pub fsync: bool,
    /// With fsync on, write records with `O_DIRECT | O_DSYNC` (one
    /// synchronous write instead of `pwrite` + `fdatasync`) where the file
    /// system allows it. See `storage::direct`.
    pub direct_io: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: 64 << 20,
            fsync: true,
            direct_io: true,
        }
    }
}

/// One segment as found on disk.
#[derive(Clone, Debug)]
pub struct SegmentScan {
    pub path: PathBuf,
    pub first_index: u64,
    /// Offset of each record, in index order.
    pub offsets: Vec<u64>,
    /// Bytes of valid data (header and intact records).
    pub valid_bytes: u64,
    pub file_bytes: u64,
}

/// An incomplete last write found at the end of the log.
#[derive(Clone, Debug)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub why: String,
    /// The whole segment goes (its header was never completed).
    pub whole_segment: bool,
}

/// What reading a log directory found.
#[derive(Debug, Default)]
pub struct Scan {
    pub segments: Vec<SegmentScan>,
    pub entries: Vec<Entry>,
    pub torn: Option<TornTail>,
    /// Segment files wholly past the end of the log: removed when the tail
    /// is cut (a whole torn segment, or, in repair mode, later segments).
    pub beyond: Vec<PathBuf>,
    /// Files in the directory that are not segments.
    pub strangers: Vec<PathBuf>,
}

/// Where `scan` expects the log to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStart {
    /// At index 1: there is no snapshot, so a log that starts later has
    /// lost its first segments.
    AtOne,
    /// At any index: a snapshot holds what came before. Whether the log
    /// actually continues the snapshot is for the caller to check.
    AfterSnapshot,
}

/// How `scan` treats a bad record before the tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// Refuse: committed entries may be behind it.
    Strict,
    /// Treat the first bad record as the end of the log (operator repair).
    CutAtFirstError,
}

/// Reads every segment in `dir` and decides where the log ends. A bad
/// record is a torn tail (the crash interrupted the last write) only if it
/// is in the last segment and no intact record follows it; anything else is
/// corruption and an error naming the file and the offset.
pub fn scan(dir: &Path, mode: ScanMode) -> Result<Scan, StorageError> {
    scan_with(dir, mode, LogStart::AtOne)
}

/// `scan`, saying where the log may start.
pub fn scan_with(dir: &Path, mode: ScanMode, start: LogStart) -> Result<Scan, StorageError> {
    let mut names = Vec::new();
    let mut strangers = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(e) => return Err(StorageError::io(dir, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| StorageError::io(dir, e))?;
        let name = ent.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(first) => names.push((first, ent.path())),
            None => strangers.push(ent.path()),
        }
    }
    names.sort();
    let mut out = Scan {
        strangers,
        ..Scan::default()
    };
    let mut expected = 1u64;
    let count = names.len();
    for (i, (first, path)) in names.iter().enumerate() {
        let (first, path) = (*first, path.clone());
        // Index 0 is never an entry's: such a segment stays unexpected.
        if i == 0 && start == LogStart::AfterSnapshot && first > 0 {
            expected = first;
        }
        let is_last = i + 1 == count;
        let b = fs::read(&path).map_err(|e| StorageError::io(&path, e))?;
        let file_bytes = b.len() as u64;
        // A segment that cannot be used at all: refused, or (a crash while
        // it was created, or repair mode) cut off whole with what follows.
        let unusable = match check_segment_header(&b, first) {
            Err(why) => {
                let records_follow = b.len() > SEGMENT_HEADER_BYTES as usize
                    && decode_record(&b, SEGMENT_HEADER_BYTES as usize).is_ok();
                // Created, but the crash came before its header was durable:
                // no record in it was ever written, let alone acknowledged.
                let torn = is_last && !records_follow;
                if !torn && mode == ScanMode::Strict {
                    return Err(StorageError::corrupt(
                        &path,
                        0,
                        format!("bad segment header: {why}"),
                    ));
                }
                Some(why)
            }
            Ok(()) if first != expected => {
                let what = if i == 0 {
                    format!("the log starts at index {first}, not 1: earlier segments are missing")
                } else {
                    format!(
                        "segment starts at index {first} but the previous one ends at {}: a segment is missing or misplaced",
                        expected - 1
                    )
                };
                if mode == ScanMode::Strict {
                    return Err(StorageError::corrupt(&path, 0, what));
                }
                Some(what)
            }
            Ok(()) => None,
        };
        if let Some(why) = unusable {
            out.torn = Some(TornTail {
                path,
                offset: 0,
                bytes: file_bytes,
                why,
                whole_segment: true,
            });
            out.beyond = names[i..].iter().map(|(_, p)| p.clone()).collect();
            break;
        }
        let mut seg = SegmentScan {
            path: path.clone(),
            first_index: first,
            offsets: Vec::new(),
            valid_bytes: SEGMENT_HEADER_BYTES,
            file_bytes,
        };
        let mut off = SEGMENT_HEADER_BYTES as usize;
        let mut bad: Option<(usize, String)> = None;
        while off < b.len() {
            match decode_record(&b, off) {
                Ok((e, next)) if e.index.0 == expected => {
                    seg.offsets.push(off as u64);
                    out.entries.push(e);
                    expected += 1;
                    off = next;
                }
                Ok((e, _)) => {
                    bad = Some((
                        off,
                        format!("record holds index {}, expected {expected}", e.index),
                    ));
                    break;
                }
                Err(why) => {
                    bad = Some((off, why));
                    break;
                }
            }
        }
        seg.valid_bytes = off as u64;
        let path_for_err = seg.path.clone();
        out.segments.push(seg);
        if let Some((off, _)) = &bad {
            // Zeros to the end of the last segment: space preallocated for
            // records to come, not damage.
            if is_last && b[*off..].iter().all(|&x| x == 0) {
                bad = None;
            }
        }
        if let Some((off, why)) = bad {
            let torn = is_last && intact_record_after(&b, off + 1).is_none();
            if !torn && mode == ScanMode::Strict {
                let follows = if is_last {
                    "intact records follow it".to_string()
                } else {
                    "later segments follow it".to_string()
                };
                return Err(StorageError::corrupt(
                    &path_for_err,
                    off as u64,
                    format!("{why}; {follows}, so this is not a torn last write"),
                ));
            }
            out.torn = Some(TornTail {
                path: path_for_err,
                offset: off as u64,
                bytes: file_bytes - off as u64,
                why,
                whole_segment: false,
            });
            out.beyond = names[i + 1..].iter().map(|(_, p)| p.clone()).collect();
            break;
        }
    }
    Ok(out)
}

struct Segment {
    first_index: u64,
    path: PathBuf,
    offsets: Vec<u64>,
    /// Logical length, including bytes still in `Wal::buf`.
    len: u64,
}

/// Counters for the benchmark and `status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalStats {
    /// Durable writes: `fdatasync` calls, or synchronous direct writes.
    pub syncs: u64,
    pub bytes_written: u64,
    pub segments_created: u64,
}

/// The open log, positioned for appends.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<Segment>,
    /// The last segment, open for writing.
    file: File,
    /// The last segment opened for direct writes, when in use: then every
    /// record goes through it, and `file` serves truncation, zero-filling
    /// and reading back the partial last block.
    direct: Option<DirectWriter>,
    /// Bytes of the last segment already written to `file`.
    written: u64,
    /// Size of the last segment's file: `written` plus zero-filled space.
    allocated: u64,
    /// Encoded records not yet written.
    buf: Vec<u8>,
    /// Written through `file` (or truncated) since the last sync.
    dirty: bool,
    /// Index of the last entry appended (durable after `sync`);
    /// `first_index() - 1` when the log is empty.
    last_index: u64,
    /// The highest index a snapshot covers, as handed to `open_at`,
    /// `compact` or `detach_through` (0: none). Those entries are
    /// committed: appending or truncating at or below it is a caller bug.
    snapshot_index: u64,
    stats: WalStats,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, cuts a torn tail with a
    /// warning, and returns the entries it holds.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Vec<Entry>), StorageError> {
        Self::open_with(dir, opts, ScanMode::Strict)
    }

    /// `open`, choosing how a bad record before the tail is treated.
    pub fn open_with(
        dir: &Path,
        opts: WalOptions,
        mode: ScanMode,
    ) -> Result<(Wal, Vec<Entry>), StorageError> {
        Self::open_at(dir, opts, mode, None)
    }

    /// `open_with` for a log that follows a snapshot of the entries up to
    /// `snapshot` (its index and its last entry's term), if there is one.
    /// The first segment may then start past index 1, and only the entries
    /// after the snapshot are returned. A log that does not continue the
    /// snapshot (it ends before it, starts after it, or holds another term
    /// at its index) belongs to the log the snapshot replaced: the crash
    /// came between writing the snapshot and resetting the log. It is
    /// reset here, with a warning, so that the entry after the snapshot
    /// can be appended.
    pub fn open_at(
        dir: &Path,
        opts: WalOptions,
        mode: ScanMode,
        snapshot: Option<(u64, Term)>,
    ) -> Result<(Wal, Vec<Entry>), StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let start = match snapshot {
            Some(_) => LogStart::AfterSnapshot,
            None => LogStart::AtOne,
        };
        let mut scan = scan_with(dir, mode, start)?;
        if let Some(t) = scan.torn.clone() {
            warn!(
                "{}: offset {}: {}; cutting {} bytes of an incomplete last write{}",
                t.path.display(),
                t.offset,
                t.why,
                t.bytes,
                if mode == ScanMode::CutAtFirstError {
                    " and everything after it (repair)"
                } else {
                    ""
                }
            );
            cut_tail(dir, &scan, &t)?;
        }
        let entries = std::mem::take(&mut scan.entries);
        let mut segments: Vec<Segment> = scan
            .segments
            .into_iter()
            .map(|s| Segment {
                first_index: s.first_index,
                path: s.path,
                len: s.valid_bytes,
                offsets: s.offsets,
            })
            .collect();
        let mut stats = WalStats::default();
        if segments.is_empty() {
            let first = snapshot.map_or(1, |(index, _)| index.saturating_add(1));
            segments.push(create_segment(dir, first, opts.fsync)?);
            stats.segments_created += 1;
        }
        let first_index = segments[0].first_index;
        let last = segments
            .last()
            .ok_or_else(|| StorageError::io(dir, io::ErrorKind::NotFound.into()))?;
        let (file, direct) = open_last(&last.path, opts)?;
        let written = last.len;
        let allocated = file
            .metadata()
            .map_err(|e| StorageError::io(&last.path, e))?
            .len()
            .max(written);
        // The scan's entries run without a gap from the first segment's
        // first index (at least 1: see `scan_with`).
        let last_index = first_index - 1 + entries.len() as u64;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments,
            file,
            direct,
            written,
            allocated,
            buf: Vec::with_capacity(1 << 20),
            dirty: false,
            last_index,
            snapshot_index: 0,
            stats,
        };
        wal.check_segments();
        let Some((index, term)) = snapshot else {
            return Ok((wal, entries));
        };
        wal.snapshot_index = index;
        match entries_after_snapshot(entries, first_index, index, term) {
            Ok(after) => {
                wal.check_segments();
                Ok((wal, after))
            }
            Err(why) => {
                warn!(
                    "{}: {why}, so it does not continue the snapshot (index {index}, term {term}) \
                     and belongs to the log the snapshot replaced; starting an empty log at index {}",
                    dir.display(),
                    index.saturating_add(1)
                );
                wal.reset(index.saturating_add(1))?;
                wal.check_segments();
                Ok((wal, Vec::new()))
            }
        }
    }

    /// Index of the first entry the log holds or will hold.
    pub fn first_index(&self) -> u64 {
        self.segments[0].first_index
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn stats(&self) -> WalStats {
        self.stats
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segment appends go to (the file the next `sync` makes durable).
    pub fn current_path(&self) -> &Path {
        &self.current().path
    }

    fn current(&self) -> &Segment {
        // `open` guarantees at least one segment; nothing removes the last
        // but `reset`, which puts a new one in its place.
        &self.segments[self.segments.len() - 1]
    }

    /// Appends `entries`, first truncating the log from the first one's
    /// index if it already holds that index (a conflict). Not durable until
    /// `sync`.
    ///
    /// # Panics
    ///
    /// On a caller bug, never on the disk's account: an entry that would
    /// leave a gap after the last one, one at or before the snapshot (or
    /// before the log's start), or one larger than a record may hold
    /// (`ENTRY_DATA_BYTES_MAX`, which no frame can exceed).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        for e in entries {
            if e.index.0 <= self.last_index {
                self.truncate_from(e.index.0)?;
            }
            assert!(
                e.index.0 == self.last_index + 1,
                "{}: append of index {} after {}: the log would have a gap",
                self.dir.display(),
                e.index,
                self.last_index
            );
            assert!(
                e.data.len() <= ENTRY_DATA_BYTES_MAX,
                "{}: entry {} holds {} bytes, more than the {ENTRY_DATA_BYTES_MAX} a record may",
                self.dir.display(),
                e.index,
                e.data.len()
            );
            let cur = self.current();
            if cur.len >= self.opts.segment_bytes_max && !cur.offsets.is_empty() {
                self.roll(e.index.0)?;
            }
            let before = self.buf.len();
            encode_record(e, &mut self.buf);
            let n = self.segments.len() - 1;
            let seg = &mut self.segments[n];
            seg.offsets.push(seg.len);
            seg.len += (self.buf.len() - before) as u64;
            self.last_index = e.index.0;
            if self.buf.len() >= WRITE_BUF_FLUSH_BYTES {
                self.flush()?;
            }
        }
        self.check_last_segment();
        Ok(())
    }

    /// Writes buffered records to the file: durable at once when written
    /// directly, otherwise with the next `sync`.
    fn flush(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.direct.is_some() && self.flush_direct()? {
            return Ok(());
        }
        let path = &self.segments[self.segments.len() - 1].path;
        self.file
            .write_all_at(&self.buf, self.written)
            .map_err(|e| StorageError::io(path, e))?;
        self.written += self.buf.len() as u64;
        self.stats.bytes_written += self.buf.len() as u64;
        self.buf.clear();
        self.dirty = true;
        if self.opts.fsync && self.written > self.allocated {
            self.preallocate(self.written)?;
        }
        Ok(())
    }

    /// `flush` through the direct writer; `Ok(false)` when the file system
    /// refused the write and the records are still to be written the
    /// ordinary way.
    fn flush_direct(&mut self) -> Result<bool, StorageError> {
        let end = direct::round_up(self.written + self.buf.len() as u64);
        if end > self.allocated {
            self.preallocate(end)?;
        }
        let path = &self.segments[self.segments.len() - 1].path;
        // A truncation or a zero fill is durable before anything is written
        // after it.
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io(path, sync_error(e)))?;
            self.stats.syncs += 1;
            self.dirty = false;
        }
        let Some(w) = self.direct.as_mut() else {
            return Ok(false);
        };
        match w.write(&self.file, &self.buf, self.written) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                warn!(
                    "{}: direct write refused ({e}); writing through the page cache from now on",
                    path.display()
                );
                self.direct = None;
                return Ok(false);
            }
            // Written with O_DSYNC: its failure may be the sync's.
            Err(e) => return Err(StorageError::io(path, sync_error(e))),
        }
        self.written += self.buf.len() as u64;
        self.stats.bytes_written += self.buf.len() as u64;
        self.stats.syncs += 1;
        self.buf.clear();
        Ok(true)
    }

    /// Zero-fills the last segment from the end of its data or zeros up to
    /// the next `PREALLOC_BYTES` boundary past `upto` (never past
    /// `segment_bytes_max` by more than that). The `fdatasync` that follows
    /// commits the new size once for the whole stretch.
    fn preallocate(&mut self, upto: u64) -> Result<(), StorageError> {
        let target = (upto / PREALLOC_BYTES + 1) * PREALLOC_BYTES;
        let target = target.min(self.opts.segment_bytes_max.max(upto) + PREALLOC_BYTES);
        let from = self.allocated.max(self.written);
        if target <= from {
            return Ok(());
        }
        let zeros = vec![0u8; (target - from) as usize];
        let path = &self.segments[self.segments.len() - 1].path;
        self.file
            .write_all_at(&zeros, from)
            .map_err(|e| StorageError::io(path, e))?;
        self.allocated = target;
        self.dirty = true;
        Ok(())
    }

    /// Cuts the zero-filled space off the last segment (before it is
    /// closed: only the last segment may end in zeros).
    fn trim_preallocation(&mut self) -> Result<(), StorageError> {
        if self.allocated > self.written {
            let path = &self.segments[self.segments.len() - 1].path;
            self.file
                .set_len(self.written)
                .map_err(|e| StorageError::io(path, e))?;
            self.allocated = self.written;
            self.dirty = true;
        }
        Ok(())
    }

    /// Makes every append and truncation so far durable: one `fdatasync`.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        if self.dirty {
            if self.opts.fsync {
                let path = &self.segments[self.segments.len() - 1].path;
                self.file
                    .sync_data()
                    .map_err(|e| StorageError::io(path, sync_error(e)))?;
            }
            self.stats.syncs += 1;
            self.dirty = false;
        }
        // Durable means written: no record may still be in the buffer.
        assert!(
            self.buf.is_empty() && self.written == self.current().len,
            "{}: synced with {} bytes still buffered, {} of the last segment's {} written",
            self.dir.display(),
            self.buf.len(),
            self.written,
            self.current().len
        );
        self.check_last_segment();
        Ok(())
    }

    /// Starts a new segment for index `first`. The old one is made durable
    /// first, so only the last segment can ever end in a torn write.
    fn roll(&mut self, first: u64) -> Result<(), StorageError> {
        assert!(
            first == self.last_index + 1,
            "{}: new segment at {first}, but the log ends at {}",
            self.dir.display(),
            self.last_index
        );
        self.flush()?;
        self.trim_preallocation()?;
        self.sync()?;
        self.start_segment(first)?;
        self.check_segments();
        Ok(())
    }

    /// Creates segment `first` and makes it the one written to.
    fn start_segment(&mut self, first: u64) -> Result<(), StorageError> {
        let seg = create_segment(&self.dir, first, self.opts.fsync)?;
        (self.file, self.direct) = open_last(&seg.path, self.opts)?;
        self.written = seg.len;
        self.allocated = seg.len;
        assert!(
            self.buf.is_empty(),
            "{}: segment {first} started with {} bytes of the previous one still buffered",
            self.dir.display(),
            self.buf.len()
        );
        self.segments.push(seg);
        self.stats.segments_created += 1;
        Ok(())
    }

    /// Drops entries from `index` on. Removed segments are unlinked and the
    /// directory is fsynced at once; the cut inside the remaining segment is
    /// durable with the next `sync`, which comes before anything appended
    /// after it is acknowledged.
    ///
    /// # Panics
    ///
    /// If `index` is at or before the snapshot, or before the log's first
    /// index: those entries are committed, and cutting them is a caller bug.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), StorageError> {
        if index > self.last_index {
            return Ok(());
        }
        assert!(
            index > self.snapshot_index && index >= self.first_index(),
            "{}: truncation at index {index}, but the snapshot covers up to {} and the log \
             starts at {}",
            self.dir.display(),
            self.snapshot_index,
            self.first_index()
        );
        self.flush()?;
        let Some(pos) = self.segments.iter().rposition(|s| s.first_index <= index) else {
            unreachable!("index {index} >= first index {}", self.first_index());
        };
        if pos + 1 < self.segments.len() {
            for s in self.segments.drain(pos + 1..) {
                fs::remove_file(&s.path).map_err(|e| StorageError::io(&s.path, e))?;
            }
            fsync_dir(&self.dir).map_err(|e| StorageError::io(&self.dir, e))?;
            (self.file, self.direct) = open_last(&self.segments[pos].path, self.opts)?;
        }
        let seg = &mut self.segments[pos];
        let k = (index - seg.first_index) as usize;
        let cut = seg.offsets.get(k).copied().unwrap_or(seg.len);
        self.file
            .set_len(cut)
            .map_err(|e| StorageError::io(&seg.path, e))?;
        seg.offsets.truncate(k);
        seg.len = cut;
        self.written = cut;
        self.allocated = cut;
        self.last_index = index - 1;
        self.dirty = true;
        self.check_segments();
        Ok(())
    }
}

impl Wal {
    /// The term of the entry at `index`, if the log holds it, read back
    /// from its record.
    pub fn term_at(&mut self, index: u64) -> Result<Option<Term>, StorageError> {
        if index < self.first_index() || index > self.last_index {
            return Ok(None);
        }
        // The record may still be in the buffer.
        self.flush()?;
        let Some(seg) = self.segments.iter().rev().find(|s| s.first_index <= index) else {
            return Ok(None);
        };
        let Some(&off) = seg.offsets.get((index - seg.first_index) as usize) else {
            return Ok(None);
        };
        let e = read_record(&seg.path, off)?;
        if e.index.0 != index {
            return Err(StorageError::corrupt(
                &seg.path,
                off,
                format!("record holds index {}, expected {index}", e.index),
            ));
        }
        Ok(Some(e.term))
    }

    /// Drops what a snapshot of the entries up to `index` (whose entry had
    /// `term`) makes unnecessary; the snapshot must be durable already. If
    /// the log continues the snapshot (holds that entry, or starts right
    /// after it), the segments wholly at or before `index` go, except the
    /// one being written and the one holding `index` (recovery checks the
    /// snapshot's term against it). Otherwise the log is of another
    /// history (a follower given the leader's snapshot) and is reset to
    /// an empty segment starting at `index + 1`.
    pub fn compact(&mut self, index: u64, term: Term) -> Result<(), StorageError> {
        if self.continues(index, term)? {
            let paths = self.detach_through(index);
            remove_segments(&self.dir, &paths, self.opts.fsync)
        } else {
            self.note_snapshot(index);
            self.reset(index.saturating_add(1))?;
            self.check_segments();
            Ok(())
        }
    }

    /// Whether the log continues a snapshot at (`index`, `term`): it holds
    /// that entry, or starts right after it.
    pub fn continues(&mut self, index: u64, term: Term) -> Result<bool, StorageError> {
        Ok(self.first_index() == index.saturating_add(1) || self.term_at(index)? == Some(term))
    }

    /// Takes the segments before the one holding `index` (never the last)
    /// out of the log, which no longer reads or writes them, and returns
    /// their paths, oldest first, for `remove_segments` once a snapshot
    /// covering them is durable.
    pub fn detach_through(&mut self, index: u64) -> Vec<PathBuf> {
        self.note_snapshot(index);
        let keep = self
            .segments
            .iter()
            .rposition(|s| s.first_index <= index)
            .unwrap_or(0)
            .min(self.segments.len().saturating_sub(1));
        let detached = self.segments.drain(..keep).map(|s| s.path).collect();
        self.check_segments();
        detached
    }

    /// Records that a snapshot covers the entries up to `index`. The log
    /// holds them (it continues the snapshot), or is about to be reset
    /// past them.
    fn note_snapshot(&mut self, index: u64) {
        assert!(
            index >= self.snapshot_index,
            "{}: snapshot at {index} older than the one at {} before it",
            self.dir.display(),
            self.snapshot_index
        );
        self.snapshot_index = index;
    }

    /// Replaces the whole log with an empty segment starting at `first`.
    /// The old segments go newest first, so that a crash part way leaves a
    /// prefix of the old log, which recovery sees does not continue the
    /// snapshot; a suffix could start right after the snapshot and pass for
    /// its continuation. For the same reason the removals are durable
    /// before the new segment is created.
    fn reset(&mut self, first: u64) -> Result<(), StorageError> {
        self.buf.clear();
        for s in self.segments.drain(..).rev() {
            fs::remove_file(&s.path).map_err(|e| StorageError::io(&s.path, e))?;
        }
        if self.opts.fsync {
            fsync_dir(&self.dir).map_err(|e| StorageError::io(&self.dir, e))?;
        }
        self.start_segment(first)?;
        self.dirty = false;
        self.last_index = first - 1;
        Ok(())
    }
}

impl Wal {
    /// What must hold of the last segment after every append and sync, in
    /// O(1): its records end at the log's last index, its length counts
    /// what is written and what is buffered, and the file is at least as
    /// long as what was written.
    fn check_last_segment(&self) {
        let cur = self.current();
        assert_eq!(
            cur.first_index + cur.offsets.len() as u64,
            self.last_index + 1,
            "{}: the last segment starts at {} and holds {} records, but the log ends at {}",
            cur.path.display(),
            cur.first_index,
            cur.offsets.len(),
            self.last_index
        );
        assert_eq!(
            cur.len,
            self.written + self.buf.len() as u64,
            "{}: segment length {} is not the {} bytes written plus the {} buffered",
            cur.path.display(),
            cur.len,
            self.written,
            self.buf.len()
        );
        assert!(
            self.allocated >= self.written,
            "{}: {} bytes written past the {} allocated",
            cur.path.display(),
            self.written,
            self.allocated
        );
        if let Some(&last) = cur.offsets.last() {
            assert!(
                last < cur.len,
                "{}: last record at offset {last}, past the segment's length {}",
                cur.path.display(),
                cur.len
            );
        }
        assert!(
            self.snapshot_index <= self.last_index,
            "{}: the snapshot covers up to {}, past the log's end at {}",
            self.dir.display(),
            self.snapshot_index,
            self.last_index
        );
    }

    /// What must hold after the segments change (open, roll, truncation,
    /// compaction, reset), in O(segments): there is a segment, each one
    /// starts right after the one before it ends, and only the last may be
    /// empty; then `check_last_segment`.
    fn check_segments(&self) {
        assert!(
            !self.segments.is_empty(),
            "{}: no segment",
            self.dir.display()
        );
        for w in self.segments.windows(2) {
            let end = w[0].first_index + w[0].offsets.len() as u64;
            assert!(
                w[1].first_index == end && !w[0].offsets.is_empty(),
                "{}: segment {} holds {} records, but the next one starts at {}",
                self.dir.display(),
                w[0].first_index,
                w[0].offsets.len(),
                w[1].first_index
            );
        }
        self.check_last_segment();
    }
}

/// Deletes detached segments (see `Wal::detach_through`), oldest first, so
/// that a crash part way leaves a log that starts later, never one with a
/// hole; then makes the removals durable.
pub fn remove_segments(dir: &Path, paths: &[PathBuf], fsync: bool) -> Result<(), StorageError> {
    if paths.is_empty() {
        return Ok(());
    }
    for p in paths {
        fs::remove_file(p).map_err(|e| StorageError::io(p, e))?;
        debug!("{}: removed (covered by the snapshot)", p.display());
    }
    if fsync {
        fsync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    }
    Ok(())
}

/// The entries of a log that starts at `first` which come after a
/// snapshot at (`index`, `term`), or why the log does not continue that
/// snapshot.
fn entries_after_snapshot(
    mut entries: Vec<Entry>,
    first: u64,
    index: u64,
    term: Term,
) -> Result<Vec<Entry>, String> {
    let last = first - 1 + entries.len() as u64;
    if first > index.saturating_add(1) {
        return Err(format!(
            "the log starts at index {first}, after the snapshot's {index} + 1"
        ));
    }
    if last < index {
        return Err(format!(
            "the log ends at index {last}, before the snapshot's {index}"
        ));
    }
    if index >= first {
        let held = entries[(index - first) as usize].term;
        if held != term {
            return Err(format!("the log's entry {index} has term {held}"));
        }
    }
    Ok(entries.split_off((index + 1 - first) as usize))
}

/// Reads back and checks the record at `off` in the segment at `path`.
fn read_record(path: &Path, off: u64) -> Result<Entry, StorageError> {
    let f = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let mut head = [0u8; RECORD_HEADER_BYTES];
    f.read_exact_at(&mut head, off)
        .map_err(|e| StorageError::io(path, e))?;
    let len = (LittleEndian::read_u32(&head[..4]) as usize)
        .min(RECORD_FIXED_BYTES + ENTRY_DATA_BYTES_MAX);
    let mut b = vec![0u8; RECORD_HEADER_BYTES + len];
    f.read_exact_at(&mut b, off)
        .map_err(|e| StorageError::io(path, e))?;
    decode_record(&b, 0)
        .map(|(e, _)| e)
        .map_err(|why| StorageError::corrupt(path, off, why))
}

/// Opens the last segment for appends: the file itself, and a direct
/// writer when the options ask for one and the file system supports it.
fn open_last(path: &Path, opts: WalOptions) -> Result<(File, Option<DirectWriter>), StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io(path, e))?;
    let direct = if opts.fsync && opts.direct_io {
        let w = DirectWriter::open(path).map_err(|e| StorageError::io(path, e))?;
        if w.is_none() {
            debug!(
                "{}: no direct I/O on this file system; using write + fdatasync",
                path.display()
            );
        }
        w
    } else {
        None
    };
    Ok((file, direct))
}

fn create_segment(dir: &Path, first: u64, fsync: bool) -> Result<Segment, StorageError> {
    let path = dir.join(segment_name(first));
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| StorageError::io(&path, e))?;
    f.write_all_at(&encode_segment_header(first), 0)
        .map_err(|e| StorageError::io(&path, e))?;
    if fsync {
        f.sync_all()
            .map_err(|e| StorageError::io(&path, sync_error(e)))?;
        fsync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    }
    Ok(Segment {
        first_index: first,
        path,
        offsets: Vec::new(),
        len: SEGMENT_HEADER_BYTES,
    })
}

/// Removes a torn tail found by `scan`, durably. `scan` already ends where
/// the log does: only the files have to follow.
fn cut_tail(dir: &Path, scan: &Scan, t: &TornTail) -> Result<(), StorageError> {
    for p in &scan.beyond {
        fs::remove_file(p).map_err(|e| StorageError::io(p, e))?;
    }
    if !t.whole_segment {
        let f = OpenOptions::new()
            .write(true)
            .open(&t.path)
            .map_err(|e| StorageError::io(&t.path, e))?;
        f.set_len(t.offset)
            .map_err(|e| StorageError::io(&t.path, e))?;
        f.sync_all()
            .map_err(|e| StorageError::io(&t.path, sync_error(e)))?;
    }
    fsync_dir(dir).map_err(|e| StorageError::io(dir, e))
}
