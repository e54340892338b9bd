//! The write-ahead log, the hard state and recovery, on real files.

use std::fs;
use std::path::{Path, PathBuf};

use raftkit::raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Snapshot, Term};
use raftkit::storage::wal::{self, decode_record, encode_record, segment_name, ScanMode};
use raftkit::storage::{
    DiskStore, Durable, Job, LogStart, LogStore, Meta, StorageError, StorageThread, Wal, WalOptions,
};

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        kind: if data.is_empty() {
            EntryKind::Noop
        } else {
            EntryKind::Command
        },
        data: data.into(),
    }
}

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| entry(i, term, format!("value-{i}-t{term}").as_bytes()))
        .collect()
}

fn small(segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        fsync: true,
        direct_io: true,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

fn owner(id: u64) -> Meta {
    Meta {
        node_id: NodeId(id),
        cluster: "test".into(),
    }
}

#[test]
fn record_round_trip_and_damage() {
    let e = entry(7, 3, b"hello");
    let mut buf = Vec::new();
    encode_record(&e, &mut buf);
    assert_eq!(buf.len() as u64, wal::record_bytes(5));
    let (back, next) = decode_record(&buf, 0).unwrap();
    assert_eq!(back, e);
    assert_eq!(next, buf.len());
    // Every single-bit flip is caught (length, CRC or body).
    for byte in 0..buf.len() {
        for bit in 0..8 {
            let mut b = buf.clone();
            b[byte] ^= 1 << bit;
            assert!(
                decode_record(&b, 0).is_err(),
                "flip at {byte}.{bit} not caught"
            );
        }
    }
    // Every truncation is caught.
    for len in 0..buf.len() {
        assert!(decode_record(&buf[..len], 0).is_err());
    }
    // An empty entry (a leader's no-op) is a record too.
    let mut b = Vec::new();
    encode_record(&entry(1, 1, b""), &mut b);
    assert_eq!(decode_record(&b, 0).unwrap().0.kind, EntryKind::Noop);
}

#[test]
fn appends_survive_reopen_and_segments_roll() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, got) = Wal::open(dir.path(), small(512)).unwrap();
    assert!(got.is_empty());
    let want = entries(1, 200, 1);
    for chunk in want.chunks(7) {
        w.append(chunk).unwrap();
        w.sync().unwrap();
    }
    let n = segments(dir.path()).len();
    assert!(n > 5, "expected several segments, got {n}");
    assert_eq!(w.segment_count(), n);
    drop(w);
    let (w, got) = Wal::open(dir.path(), small(512)).unwrap();
    assert_eq!(got, want);
    assert_eq!(w.last_index(), 200);
    // Each segment is named by its first index and starts where the last ended.
    let scan = wal::scan(dir.path(), ScanMode::Strict).unwrap();
    let mut next = 1;
    for s in &scan.segments {
        assert_eq!(s.first_index, next);
        assert_eq!(
            s.path.file_name().unwrap().to_str().unwrap(),
            segment_name(next)
        );
        next += s.offsets.len() as u64;
    }
    assert_eq!(next, 201);
}

#[test]
fn truncation_across_segment_boundaries() {
    // Cut at the first entry, inside a segment, exactly at a segment's
    // first entry, and at the last entry.
    let probe = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(probe.path(), small(400)).unwrap();
    w.append(&entries(1, 100, 1)).unwrap();
    w.sync().unwrap();
    let firsts: Vec<u64> = wal::scan(probe.path(), ScanMode::Strict)
        .unwrap()
        .segments
        .iter()
        .map(|s| s.first_index)
        .collect();
    assert!(firsts.len() > 4);
    let cuts = [
        1,
        2,
        firsts[2],
        firsts[2] + 1,
        firsts[firsts.len() - 1],
        57,
        100,
    ];
    for &cut in &cuts {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path(), small(400)).unwrap();
        w.append(&entries(1, 100, 1)).unwrap();
        w.sync().unwrap();
        // A new leader's entries conflict from `cut` on.
        let replacement = entries(cut, cut + 9, 2);
        w.append(&replacement).unwrap();
        w.sync().unwrap();
        assert_eq!(w.last_index(), cut + 9);
        drop(w);
        let (mut w, got) = Wal::open(dir.path(), small(400)).unwrap();
        let mut want = entries(1, cut - 1, 1);
        want.extend(replacement.clone());
        assert_eq!(got, want, "cut at {cut}");
        // No segment starts past the new end.
        for s in segments(dir.path()) {
            let first: u64 = s.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            assert!(
                first <= cut + 9,
                "stale segment {} after cut {cut}",
                s.display()
            );
        }
        // And the log goes on from there.
        w.append(&entries(cut + 10, cut + 20, 2)).unwrap();
        w.sync().unwrap();
        drop(w);
        let (_, got) = Wal::open(dir.path(), small(400)).unwrap();
        assert_eq!(got.len() as u64, cut + 20);
    }
}

#[test]
fn torn_last_record_is_cut_at_every_byte_offset() {
    let src = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(src.path(), small(1 << 20)).unwrap();
    let want = entries(1, 20, 1);
    w.append(&want).unwrap();
    w.sync().unwrap();
    drop(w);
    let seg = segments(src.path())[0].clone();
    let scan = wal::scan(src.path(), ScanMode::Strict).unwrap();
    assert!(
        scan.torn.is_none(),
        "preallocated zeros are not a torn tail"
    );
    // The records, without the zero-filled space after them.
    let full = fs::read(&seg).unwrap()[..scan.segments[0].valid_bytes as usize].to_vec();
    let last_off = *scan.segments[0].offsets.last().unwrap() as usize;
    for len in last_off..full.len() {
        let dir = tempfile::tempdir().unwrap();
        let name = seg.file_name().unwrap();
        fs::write(dir.path().join(name), &full[..len]).unwrap();
        let (mut w, got) = Wal::open(dir.path(), small(1 << 20)).unwrap();
        assert_eq!(got, want[..19], "torn at byte {len}");
        let rescan = wal::scan(dir.path(), ScanMode::Strict).unwrap();
        assert!(rescan.torn.is_none(), "the torn bytes are cut");
        assert_eq!(rescan.segments[0].valid_bytes as usize, last_off);
        // Appending after the cut works and survives.
        w.append(&entries(20, 21, 1)).unwrap();
        w.sync().unwrap();
        drop(w);
        let (_, got) = Wal::open(dir.path(), small(1 << 20)).unwrap();
        assert_eq!(got.len(), 21);
    }
    // Garbage after the last record is a torn tail; zeros are preallocated
    // space (a clean end); a torn record followed by zeros is cut.
    let mut torn_then_zeros = full[..full.len() - 7].to_vec();
    torn_then_zeros.extend(vec![0u8; 5000]);
    for (tail, torn) in [
        (vec![0u8; 300], false),
        (vec![0xAB; 5], true),
        (vec![0xFF; 64], true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = full.clone();
        b.extend(&tail);
        fs::write(dir.path().join(seg.file_name().unwrap()), &b).unwrap();
        let scan = wal::scan(dir.path(), ScanMode::Strict).unwrap();
        assert_eq!(scan.torn.is_some(), torn);
        let (_, got) = Wal::open(dir.path(), small(1 << 20)).unwrap();
        assert_eq!(got, want);
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(seg.file_name().unwrap()), &torn_then_zeros).unwrap();
    let scan = wal::scan(dir.path(), ScanMode::Strict).unwrap();
    assert!(scan.torn.is_some());
    let (_, got) = Wal::open(dir.path(), small(1 << 20)).unwrap();
    assert_eq!(got, want[..19]);
}

#[test]
fn a_flipped_bit_before_the_tail_refuses_to_start() {
    let src = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(src.path(), small(600)).unwrap();
    w.append(&entries(1, 60, 1)).unwrap();
    w.sync().unwrap();
    drop(w);
    let scan = wal::scan(src.path(), ScanMode::Strict).unwrap();
    assert!(scan.segments.len() >= 3);
    // A record in the middle of the last segment, and the last record of an
    // earlier segment (followed by later segments).
    let last = scan.segments.last().unwrap();
    let mid = &scan.segments[1];
    let targets = [
        (last.path.clone(), last.offsets[last.offsets.len() / 2]),
        (mid.path.clone(), *mid.offsets.last().unwrap()),
        (mid.path.clone(), mid.offsets[0]),
    ];
    for (path, off) in targets {
        for flip_at in [off + 2, off + 6, off + 12, off + 30] {
            let dir = tempfile::tempdir().unwrap();
            for s in &scan.segments {
                fs::copy(&s.path, dir.path().join(s.path.file_name().unwrap())).unwrap();
            }
            let victim = dir.path().join(path.file_name().unwrap());
            let mut b = fs::read(&victim).unwrap();
            b[flip_at as usize] ^= 0x10;
            fs::write(&victim, &b).unwrap();
            match Wal::open(dir.path(), small(600)) {
                Err(StorageError::Corrupt {
                    path: p,
                    offset,
                    what,
                }) => {
                    assert_eq!(p, victim);
                    assert_eq!(offset, off, "{what}");
                    let msg = StorageError::Corrupt {
                        path: p,
                        offset,
                        what,
                    }
                    .to_string();
                    assert!(msg.contains("wal-repair"), "{msg}");
                }
                Err(e) => panic!("wrong error for flip at {flip_at}: {e}"),
                Ok(_) => panic!("flip at {} offset {flip_at} accepted", victim.display()),
            }
            // The files are untouched by the refusal.
            assert_eq!(fs::read(&victim).unwrap(), b);
        }
    }
}

#[test]
fn repair_cuts_at_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("n1");
    let (mut s, _) = DiskStore::open(&store_dir, &owner(1), small(600)).unwrap();
    s.save_hard_state(&HardState {
        current_term: Term(1),
        voted_for: Some(NodeId(1)),
    })
    .unwrap();
    s.append(&entries(1, 60, 1)).unwrap();
    s.sync().unwrap();
    drop(s);
    let scan = wal::scan(&store_dir.join("wal"), ScanMode::Strict).unwrap();
    let seg = &scan.segments[1];
    let victim = seg.path.clone();
    let mut b = fs::read(&victim).unwrap();
    b[seg.offsets[1] as usize + 20] ^= 1;
    fs::write(&victim, &b).unwrap();
    assert!(DiskStore::open(&store_dir, &owner(1), small(600)).is_err());
    let kept = raftkit::storage::repair(&store_dir).unwrap();
    assert_eq!(kept, seg.first_index);
    let (_, rec) = DiskStore::open(&store_dir, &owner(1), small(600)).unwrap();
    assert_eq!(rec.entries.len() as u64, kept);
    assert_eq!(rec.hard_state.current_term, Term(1));
}

#[test]
fn hard_state_is_replaced_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n2");
    let (mut s, rec) = DiskStore::open(&d, &owner(2), small(1 << 20)).unwrap();
    assert!(rec.fresh);
    assert_eq!(rec.hard_state, HardState::default());
    for t in 1..=50u64 {
        s.save_hard_state(&HardState {
            current_term: Term(t),
            voted_for: (t % 3 != 0).then_some(NodeId(t % 3)),
        })
        .unwrap();
    }
    drop(s);
    // A crash while writing the next one leaves a partial temp file; the
    // hard state is still the last complete one.
    fs::write(d.join("hardstate.tmp"), b"RAFTKHST\x01\x00").unwrap();
    let (_, rec) = DiskStore::open(&d, &owner(2), small(1 << 20)).unwrap();
    assert!(!rec.fresh);
    assert_eq!(
        rec.hard_state,
        HardState {
            current_term: Term(50),
            voted_for: Some(NodeId(2)),
        }
    );
    // A damaged hard state file is refused, naming it.
    let mut b = fs::read(d.join("hardstate")).unwrap();
    b[20] ^= 4;
    fs::write(d.join("hardstate"), &b).unwrap();
    let e = DiskStore::open(&d, &owner(2), small(1 << 20))
        .err()
        .unwrap();
    assert!(e.to_string().contains("hardstate"), "{e}");
}

#[test]
fn data_dir_ownership_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("nested").join("n1");
    let (mut s, rec) = DiskStore::open(&d, &owner(1), small(1 << 20)).unwrap();
    assert!(rec.fresh);
    s.append(&entries(1, 3, 0)).unwrap();
    s.sync().unwrap();
    drop(s);
    let e = DiskStore::open(&d, &owner(2), small(1 << 20))
        .err()
        .unwrap();
    assert!(matches!(e, StorageError::WrongOwner { .. }), "{e}");
    let other = Meta {
        node_id: NodeId(1),
        cluster: "other".into(),
    };
    let e = DiskStore::open(&d, &other, small(1 << 20)).err().unwrap();
    assert!(e.to_string().contains("cluster \"test\""), "{e}");
    // Entries but no meta: refused rather than treated as new.
    fs::remove_file(d.join("meta")).unwrap();
    assert!(DiskStore::open(&d, &owner(1), small(1 << 20)).is_err());
    // An empty dir is a new node.
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let (_, rec) = DiskStore::open(&empty, &owner(1), small(1 << 20)).unwrap();
    assert!(rec.fresh && rec.entries.is_empty());
}

#[test]
fn a_term_behind_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let (mut s, _) = DiskStore::open(&d, &owner(1), small(1 << 20)).unwrap();
    s.append(&entries(1, 3, 4)).unwrap();
    s.sync().unwrap();
    drop(s);
    let e = DiskStore::open(&d, &owner(1), small(1 << 20))
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("older than the last log entry"),
        "{e}"
    );
}

#[test]
fn storage_thread_group_commits_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let (s, _) = DiskStore::open(&d, &owner(1), small(4096)).unwrap();
    let t = StorageThread::spawn(Box::new(s), None).unwrap();
    let mut seq = 0;
    for i in 1..=500u64 {
        seq += 1;
        let hs = (i % 100 == 0).then_some(HardState {
            current_term: Term(i / 100 + 1),
            voted_for: None,
        });
        assert!(t.submit(Job {
            seq,
            hard_state: hs,
            snapshot: None,
            entries: vec![entry(i, 1, b"x")],
            release: Vec::new(),
        }));
    }
    let mut last = 0;
    while last < seq {
        match t.done().recv().unwrap() {
            Durable::Upto(s) => {
                assert!(s > last, "reports go forward");
                last = s;
            }
            Durable::Failed(e) => panic!("{e}"),
        }
    }
    let stats = t.stats();
    let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stats.jobs.load(std::sync::atomic::Ordering::Relaxed), 500);
    assert!(syncs < 500, "queued jobs share an fsync ({syncs} syncs)");
    drop(t);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(4096)).unwrap();
    assert_eq!(rec.entries.len(), 500);
    assert_eq!(rec.hard_state.current_term, Term(6));
}

/// Jobs written by the thread and inline, alternating, with a truncation
/// among the inline ones: the log reads back as if one writer did it all.
#[test]
fn inline_writes_interleave_with_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let (s, _) = DiskStore::open(&d, &owner(1), small(4096)).unwrap();
    let t = StorageThread::spawn(Box::new(s), None).unwrap();
    let mut seq = 0;
    for round in 0..20u64 {
        // Three jobs through the thread, and wait until they are durable.
        for k in 0..3 {
            seq += 1;
            let i = round * 4 + k + 1;
            assert!(t.submit(Job {
                seq,
                hard_state: None,
                snapshot: None,
                entries: vec![entry(i, if round > 10 { 2 } else { 1 }, b"thread")],
                release: Vec::new(),
            }));
        }
        loop {
            match t.done().recv().unwrap() {
                Durable::Upto(s) if s == seq => break,
                Durable::Upto(_) => {}
                Durable::Failed(e) => panic!("{e}"),
            }
        }
        // One inline: in round 10 it rewrites the round's second entry in a
        // new term (a conflict), cutting the third.
        seq += 1;
        let (i, term, hs) = if round == 10 {
            (
                round * 4 + 2,
                2,
                Some(HardState {
                    current_term: Term(2),
                    voted_for: None,
                }),
            )
        } else {
            (round * 4 + 4, if round > 10 { 2 } else { 1 }, None)
        };
        t.write_inline(&Job {
            seq,
            hard_state: hs,
            snapshot: None,
            entries: vec![entry(i, term, b"inline")],
            release: Vec::new(),
        })
        .unwrap();
        if round == 10 {
            // Fill the hole the conflict left, so the indexes go on.
            for (k, j) in [(0, round * 4 + 3), (1, round * 4 + 4)] {
                seq += 1;
                let data: &[u8] = if k == 0 { b"fill-a" } else { b"fill-b" };
                t.write_inline(&Job {
                    seq,
                    hard_state: None,
                    snapshot: None,
                    entries: vec![entry(j, 2, data)],
                    release: Vec::new(),
                })
                .unwrap();
            }
        }
    }
    drop(t);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(4096)).unwrap();
    assert_eq!(rec.hard_state.current_term, Term(2));
    assert_eq!(rec.entries.len(), 80);
    for (n, e) in rec.entries.iter().enumerate() {
        let i = n as u64 + 1;
        let (round, k) = ((i - 1) / 4, (i - 1) % 4);
        assert_eq!(e.index, LogIndex(i));
        let want: (&[u8], u64) = match (round.cmp(&10), k) {
            (std::cmp::Ordering::Equal, 0) => (b"thread", 1),
            (std::cmp::Ordering::Equal, 1) => (b"inline", 2),
            (std::cmp::Ordering::Equal, 2) => (b"fill-a", 2),
            (std::cmp::Ordering::Equal, _) => (b"fill-b", 2),
            (o, 3) => (
                b"inline",
                if o == std::cmp::Ordering::Greater {
                    2
                } else {
                    1
                },
            ),
            (o, _) => (
                b"thread",
                if o == std::cmp::Ordering::Greater {
                    2
                } else {
                    1
                },
            ),
        };
        assert_eq!((&e.data[..], e.term.0), want, "entry {i}");
    }
}

/// The same appends, syncs and truncations through direct writes and
/// through the page cache: both logs must read back the same, after every
/// step, and end in zeros only past their data.
#[test]
fn direct_and_buffered_writes_give_the_same_log() {
    let direct = tempfile::tempdir().unwrap();
    let buffered = tempfile::tempdir().unwrap();
    let opts = |direct_io| WalOptions {
        segment_bytes_max: 64 << 10,
        fsync: true,
        direct_io,
    };
    let (mut a, _) = Wal::open(direct.path(), opts(true)).unwrap();
    let (mut b, _) = Wal::open(buffered.path(), opts(false)).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut last = 0u64;
    let mut term = 1u64;
    for step in 0..400 {
        // Mostly appends of sizes that cross block boundaries at odd
        // places, sometimes a conflict that cuts the log back.
        let from = if last > 10 && next(8) == 0 {
            term += 1;
            last - next(10)
        } else {
            last + 1
        };
        let count = 1 + next(12);
        let batch: Vec<Entry> = (from..from + count)
            .map(|i| entry(i, term, &vec![(i % 251) as u8 + 1; 1 + next(3000) as usize]))
            .collect();
        a.append(&batch).unwrap();
        b.append(&batch).unwrap();
        a.sync().unwrap();
        b.sync().unwrap();
        last = from + count - 1;
        if step % 50 == 49 {
            drop(a);
            drop(b);
            let (na, ea) = Wal::open(direct.path(), opts(true)).unwrap();
            let (nb, eb) = Wal::open(buffered.path(), opts(false)).unwrap();
            assert_eq!(ea.len() as u64, last, "step {step}");
            assert_eq!(ea, eb, "step {step}: direct and buffered logs differ");
            a = na;
            b = nb;
        }
    }
    assert!(a.segment_count() > 1, "the test should cross segments");
    assert_eq!(a.segment_count(), b.segment_count());
}

/// Where the file system has no direct I/O (tmpfs), the log falls back to
/// write + fdatasync and works the same.
#[test]
fn direct_io_falls_back_where_unsupported() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm here: nothing to check");
        return;
    }
    let d = tempfile::tempdir_in(shm).unwrap();
    let (mut w, _) = Wal::open(d.path(), small(1 << 20)).unwrap();
    w.append(&entries(1, 100, 1)).unwrap();
    w.sync().unwrap();
    drop(w);
    let (_, got) = Wal::open(d.path(), small(1 << 20)).unwrap();
    assert_eq!(got, entries(1, 100, 1));
}

// Snapshots and compaction.

fn snap(index: u64, term: u64) -> Snapshot {
    Snapshot {
        membership: Default::default(),
        index: LogIndex(index),
        term: Term(term),
        data: format!("state-{index}-t{term}").into_bytes().into(),
    }
}

fn term(t: u64) -> HardState {
    HardState {
        current_term: Term(t),
        voted_for: None,
    }
}

/// A data dir whose log holds `1..=last` in `t` (hard state term `t`).
fn store_with(d: &Path, opts: WalOptions, last: u64, t: u64) -> DiskStore {
    let (mut s, _) = DiskStore::open(d, &owner(1), opts).unwrap();
    s.save_hard_state(&term(t)).unwrap();
    for chunk in entries(1, last, t).chunks(9) {
        s.append(chunk).unwrap();
        s.sync().unwrap();
    }
    s
}

fn segment_firsts(d: &Path) -> Vec<u64> {
    segments(&d.join("wal"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_snapshot_survives_reopen_with_only_the_entries_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let mut s = store_with(&d, small(1 << 20), 50, 1);
    s.save_snapshot(&snap(30, 1)).unwrap();
    s.append(&entries(51, 60, 1)).unwrap();
    s.sync().unwrap();
    drop(s);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(1 << 20)).unwrap();
    assert_eq!(rec.snapshot, Some(snap(30, 1)));
    assert_eq!(rec.entries, entries(31, 60, 1));
    // The snapshot is the newest one saved.
    let (mut s, _) = DiskStore::open(&d, &owner(1), small(1 << 20)).unwrap();
    s.save_snapshot(&snap(60, 1)).unwrap();
    drop(s);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(1 << 20)).unwrap();
    assert_eq!(rec.snapshot, Some(snap(60, 1)));
    assert!(rec.entries.is_empty());
}

#[test]
fn compaction_removes_the_segments_the_snapshot_covers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let opts = small(512);
    let mut s = store_with(&d, opts, 200, 1);
    let before = segment_firsts(&d);
    assert!(before.len() > 10, "{before:?}");
    for at in [before[3] - 1, before[3], 150, 200] {
        s.save_snapshot(&snap(at, 1)).unwrap();
        let firsts = segment_firsts(&d);
        // The segment holding the snapshot's index is the first one left.
        let holder = *before.iter().rfind(|&&f| f <= at).unwrap();
        assert_eq!(firsts[0], holder, "snapshot at {at}: {firsts:?}");
        assert_eq!(s.wal().first_index(), holder);
        assert_eq!(s.wal().segment_count(), firsts.len());
        assert_eq!(firsts[..], before[before.len() - firsts.len()..]);
    }
    // The log goes on, rolls, and takes a conflict above the snapshot.
    s.save_hard_state(&term(2)).unwrap();
    s.append(&entries(201, 260, 1)).unwrap();
    s.append(&entries(240, 250, 2)).unwrap();
    s.sync().unwrap();
    assert!(segment_firsts(&d).len() > 1);
    drop(s);
    let (_, rec) = DiskStore::open(&d, &owner(1), opts).unwrap();
    let mut want = entries(201, 239, 1);
    want.extend(entries(240, 250, 2));
    assert_eq!(rec.snapshot, Some(snap(200, 1)));
    assert_eq!(rec.entries, want);
    // The whole log, snapshot and all, reads back through the tools too.
    let ins = raftkit::storage::inspect(&d).unwrap();
    assert_eq!(ins.snapshot, Some(snap(200, 1)));
    assert_eq!(ins.scan.entries.last().unwrap().index, LogIndex(250));
}

#[test]
fn a_snapshot_the_log_does_not_hold_resets_the_log() {
    // The log ends before the snapshot, or holds another term at its index.
    for (last, at) in [(20, 100), (50, 30), (0, 10)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("n1");
        let mut s = store_with(&d, small(400), last, 1);
        s.save_hard_state(&term(3)).unwrap();
        s.save_snapshot(&snap(at, 3)).unwrap();
        assert_eq!(segment_firsts(&d), vec![at + 1]);
        assert_eq!(s.wal().last_index(), at);
        s.append(&entries(at + 1, at + 30, 3)).unwrap();
        s.sync().unwrap();
        // A conflict above the snapshot.
        s.save_hard_state(&term(4)).unwrap();
        s.append(&entries(at + 15, at + 18, 4)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, rec) = DiskStore::open(&d, &owner(1), small(400)).unwrap();
        assert_eq!(rec.snapshot, Some(snap(at, 3)));
        let mut want = entries(at + 1, at + 14, 3);
        want.extend(entries(at + 15, at + 18, 4));
        assert_eq!(rec.entries, want, "log up to {last}, snapshot at {at}");
    }
    // A log that starts right after the snapshot continues it: kept.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let (mut s, _) = DiskStore::open(&d, &owner(1), small(400)).unwrap();
    s.save_hard_state(&term(2)).unwrap();
    s.save_snapshot(&snap(40, 2)).unwrap();
    s.append(&entries(41, 45, 2)).unwrap();
    s.save_snapshot(&snap(40, 2)).unwrap();
    s.append(&entries(46, 47, 2)).unwrap();
    s.sync().unwrap();
    drop(s);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(400)).unwrap();
    assert_eq!(rec.entries, entries(41, 47, 2));
}

/// A crash after the snapshot file is durable and before the log is
/// compacted or reset: the log on disk is the old one.
#[test]
fn crash_between_snapshot_and_log_reset() {
    // (log 1..=last in term 1, snapshot at, snapshot term, segments to
    // remove as a partial reset would, newest first)
    let cases: [(u64, u64, u64, usize); 5] = [
        (50, 30, 2, 0),  // another term at the snapshot's index
        (10, 30, 2, 0),  // the log ends before the snapshot
        (50, 30, 2, 2),  // part of a reset: a prefix of the old log
        (50, 30, 1, 0),  // the same term: compaction not done yet, kept
        (100, 5, 1, 99), // the log starts past the snapshot (see below)
    ];
    for (last, at, t, drop_newest) in cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("n1");
        let s = store_with(&d, small(400), last, 1);
        drop(s);
        let old = segments(&d.join("wal"));
        if drop_newest == 99 {
            // A log whose early segments are gone, behind a snapshot that
            // ends before it starts: it cannot continue the snapshot.
            for p in &old[..2] {
                fs::remove_file(p).unwrap();
            }
        } else {
            for p in old.iter().rev().take(drop_newest) {
                fs::remove_file(p).unwrap();
            }
        }
        fs::write(
            d.join("hardstate"),
            raftkit::storage::files::encode_hardstate(&term(2)),
        )
        .unwrap();
        raftkit::storage::files::write_snapshot(&d, &snap(at, t), true).unwrap();
        let (mut s, rec) = DiskStore::open(&d, &owner(1), small(400)).unwrap();
        assert_eq!(rec.snapshot, Some(snap(at, t)));
        let kept = t == 1 && drop_newest != 99;
        if kept {
            assert_eq!(rec.entries, entries(at + 1, last, 1));
            continue;
        }
        assert!(rec.entries.is_empty(), "case {last} {at} {t}");
        assert_eq!(segment_firsts(&d), vec![at + 1]);
        s.append(&entries(at + 1, at + 20, 2)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, rec) = DiskStore::open(&d, &owner(1), small(400)).unwrap();
        assert_eq!(rec.snapshot, Some(snap(at, t)));
        assert_eq!(rec.entries, entries(at + 1, at + 20, 2));
    }
}

#[test]
fn a_damaged_snapshot_is_refused_with_its_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let mut s = store_with(&d, small(1 << 20), 10, 1);
    s.save_snapshot(&snap(5, 1)).unwrap();
    drop(s);
    let path = d.join("snapshot");
    let good = fs::read(&path).unwrap();
    let crc_at = (good.len() - 4) as u64;
    for (damaged, offset) in [
        (
            {
                let mut b = good.clone();
                b[42] ^= 8;
                b
            },
            crc_at,
        ),
        (good[..good.len() - 3].to_vec(), 32),
        (good[..20].to_vec(), 20),
        (
            {
                let mut b = good.clone();
                b[3] = b'X';
                b
            },
            0,
        ),
    ] {
        fs::write(&path, &damaged).unwrap();
        match DiskStore::open(&d, &owner(1), small(1 << 20)) {
            Err(e @ StorageError::Corrupt { .. }) => {
                let StorageError::Corrupt {
                    path: p, offset: o, ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!((p, *o), (&path, offset), "{e}");
                assert!(e.to_string().contains("snapshot"), "{e}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("damaged snapshot accepted"),
        }
        assert!(raftkit::storage::inspect(&d).is_err());
    }
    // A partial temp file from a crash while writing the next one is
    // ignored: the last complete snapshot counts.
    fs::write(&path, &good).unwrap();
    fs::write(d.join("snapshot.tmp"), &good[..30]).unwrap();
    let (mut s, rec) = DiskStore::open(&d, &owner(1), small(1 << 20)).unwrap();
    assert_eq!(rec.snapshot, Some(snap(5, 1)));
    assert_eq!(rec.entries, entries(6, 10, 1));
    // And the next snapshot replaces it.
    s.save_snapshot(&snap(8, 1)).unwrap();
    drop(s);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(1 << 20)).unwrap();
    assert_eq!(rec.snapshot, Some(snap(8, 1)));
}

#[test]
fn snapshot_rules_at_open() {
    // A term behind the snapshot's is refused like one behind the log's.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let mut s = store_with(&d, small(1 << 20), 10, 1);
    s.save_snapshot(&snap(10, 1)).unwrap();
    drop(s);
    raftkit::storage::files::write_snapshot(&d, &snap(10, 3), true).unwrap();
    let e = DiskStore::open(&d, &owner(1), small(1 << 20))
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("older than the snapshot's term"),
        "{e}"
    );
    // Without a snapshot, a log that does not start at 1 is still damage.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let mut s = store_with(&d, small(400), 100, 1);
    s.save_snapshot(&snap(80, 1)).unwrap();
    drop(s);
    assert!(segment_firsts(&d)[0] > 1);
    fs::remove_file(d.join("snapshot")).unwrap();
    let e = DiskStore::open(&d, &owner(1), small(400)).err().unwrap();
    assert!(e.to_string().contains("not 1"), "{e}");
    // A snapshot without `meta` is not a new node.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    fs::create_dir_all(&d).unwrap();
    raftkit::storage::files::write_snapshot(&d, &snap(3, 1), false).unwrap();
    assert!(DiskStore::open(&d, &owner(1), small(400)).is_err());
}

#[test]
fn repair_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let mut s = store_with(&d, small(600), 120, 1);
    s.save_snapshot(&snap(70, 1)).unwrap();
    drop(s);
    let scan = wal::scan_with(&d.join("wal"), ScanMode::Strict, LogStart::AfterSnapshot).unwrap();
    assert!(scan.segments[0].first_index > 1 && scan.segments.len() >= 3);
    let seg = &scan.segments[scan.segments.len() - 2];
    let mut b = fs::read(&seg.path).unwrap();
    b[seg.offsets[1] as usize + 20] ^= 1;
    fs::write(&seg.path, &b).unwrap();
    assert!(DiskStore::open(&d, &owner(1), small(600)).is_err());
    let last = raftkit::storage::repair(&d).unwrap();
    assert_eq!(last, seg.first_index);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(600)).unwrap();
    assert_eq!(rec.snapshot, Some(snap(70, 1)));
    assert_eq!(rec.entries, entries(71, last, 1));
}

/// The thread writes a job's snapshot before its entries, after the
/// entries of earlier jobs in the same batch.
#[test]
fn storage_thread_writes_snapshots_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let (s, _) = DiskStore::open(&d, &owner(1), small(2048)).unwrap();
    let t = StorageThread::spawn(Box::new(s), None).unwrap();
    let jobs = [
        Job {
            seq: 1,
            hard_state: Some(term(1)),
            snapshot: None,
            entries: entries(1, 100, 1),
            release: Vec::new(),
        },
        Job {
            seq: 2,
            hard_state: None,
            snapshot: Some(snap(80, 1)),
            entries: entries(101, 110, 1),
            release: Vec::new(),
        },
        // A leader's snapshot past the log, and what follows it.
        Job {
            seq: 3,
            hard_state: Some(term(2)),
            snapshot: Some(snap(500, 2)),
            entries: entries(501, 505, 2),
            release: Vec::new(),
        },
    ];
    let mut second_dir = None;
    for (n, job) in jobs.into_iter().enumerate() {
        assert!(t.submit(job));
        if n == 1 {
            // Wait for the compaction, and look at the log in between.
            loop {
                match t.done().recv().unwrap() {
                    Durable::Upto(2) => break,
                    Durable::Upto(_) => {}
                    Durable::Failed(e) => panic!("{e}"),
                }
            }
            // The snapshot of entries the log holds is written, and the
            // segments it covers removed, by a background thread: poll.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while segment_firsts(&d)[0] == 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            second_dir = Some(segment_firsts(&d));
        }
    }
    loop {
        match t.done().recv().unwrap() {
            Durable::Upto(3) => break,
            Durable::Upto(_) => {}
            Durable::Failed(e) => panic!("{e}"),
        }
    }
    drop(t);
    let firsts = second_dir.unwrap();
    assert!(firsts[0] > 1 && firsts[0] <= 80, "{firsts:?}");
    assert_eq!(segment_firsts(&d), vec![501]);
    let (_, rec) = DiskStore::open(&d, &owner(1), small(2048)).unwrap();
    assert_eq!(rec.snapshot, Some(snap(500, 2)));
    assert_eq!(rec.entries, entries(501, 505, 2));
}

#[test]
fn background_snapshots_remove_the_segments_they_cover_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n1");
    let opts = small(512);
    let mut s = store_with(&d, opts, 200, 1);
    let before = segment_firsts(&d);
    assert!(before.len() > 10, "{before:?}");
    // Two snapshots of entries the log holds, handed to the background
    // writer one after the other; the log goes on meanwhile.
    s.save_snapshot_background(&snap(before[3], 1)).unwrap();
    s.save_snapshot_background(&snap(150, 1)).unwrap();
    s.append(&entries(201, 220, 1)).unwrap();
    s.sync().unwrap();
    s.wait_snapshots().unwrap();
    let holder = *before.iter().rfind(|&&f| f <= 150).unwrap();
    assert_eq!(segment_firsts(&d)[0], holder);
    assert_eq!(s.wal().first_index(), holder);
    drop(s);
    let (mut s, rec) = DiskStore::open(&d, &owner(1), opts).unwrap();
    assert_eq!(rec.snapshot, Some(snap(150, 1)));
    assert_eq!(rec.entries, entries(151, 220, 1));
    // A snapshot the log does not hold (a leader's, of another history)
    // after a background one: written in order, the log reset after it.
    s.save_snapshot_background(&snap(210, 1)).unwrap();
    s.save_hard_state(&term(3)).unwrap();
    s.save_snapshot_background(&snap(300, 3)).unwrap();
    s.append(&entries(301, 305, 3)).unwrap();
    s.sync().unwrap();
    s.wait_snapshots().unwrap();
    drop(s);
    let (_, rec) = DiskStore::open(&d, &owner(1), opts).unwrap();
    assert_eq!(rec.snapshot, Some(snap(300, 3)));
    assert_eq!(rec.entries, entries(301, 305, 3));
}

/// A caller that appends past the end is a bug in the caller, not damage
/// on disk: it panics with the numbers instead of suggesting a repair.
#[test]
#[should_panic(expected = "append of index 5 after 3: the log would have a gap")]
fn wal_append_with_a_gap_is_a_caller_bug() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), small(1 << 20)).unwrap();
    w.append(&entries(1, 3, 1)).unwrap();
    let _ = w.append(&[entry(5, 1, b"x")]);
}

/// Entries a snapshot covers are committed: cutting them is a caller bug,
/// even while the segment holding them is still on disk.
#[test]
#[should_panic(expected = "truncation at index 4, but the snapshot covers up to 5")]
fn wal_truncation_at_or_before_the_snapshot_is_a_caller_bug() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), small(1 << 20)).unwrap();
    w.append(&entries(1, 8, 1)).unwrap();
    w.sync().unwrap();
    w.compact(5, Term(1)).unwrap();
    assert_eq!(w.first_index(), 1, "the one segment stays");
    let _ = w.append(&[entry(4, 2, b"x")]);
}

#[test]
#[should_panic(expected = "truncation at index 3, but the snapshot covers up to 3")]
fn wal_append_at_a_reopened_snapshot_is_a_caller_bug() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path(), small(1 << 20)).unwrap();
        w.append(&entries(1, 6, 1)).unwrap();
        w.sync().unwrap();
    }
    let (mut w, after) = Wal::open_at(
        dir.path(),
        small(1 << 20),
        ScanMode::Strict,
        Some((3, Term(1))),
    )
    .unwrap();
    assert_eq!(after.first().map(|e| e.index), Some(LogIndex(4)));
    let _ = w.append(&[entry(3, 2, b"x")]);
}

/// Entries after the snapshot still truncate on a conflict, and the log
/// goes on from there.
#[test]
fn wal_truncation_after_the_snapshot_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = Wal::open(dir.path(), small(1 << 20)).unwrap();
    w.append(&entries(1, 8, 1)).unwrap();
    w.sync().unwrap();
    w.compact(5, Term(1)).unwrap();
    w.append(&entries(6, 7, 2)).unwrap();
    w.sync().unwrap();
    assert_eq!(w.last_index(), 7);
    drop(w);
    let (_, after) = Wal::open_at(
        dir.path(),
        small(1 << 20),
        ScanMode::Strict,
        Some((5, Term(1))),
    )
    .unwrap();
    assert_eq!(after, entries(6, 7, 2));
}

/// Every entry a frame can carry fits in a record, so the record limit is
/// never reached from the network.
#[test]
fn wal_record_limit_covers_the_largest_frame() {
    const _: () = assert!(raftkit::wire::FRAME_BYTES_MAX <= wal::ENTRY_DATA_BYTES_MAX);
}

/// A failed write reaches the caller as a `StorageError` it can match, and
/// the thread claims nothing durable after it.
#[test]
fn storage_thread_reports_a_failure_as_a_storage_error() {
    struct Broken;
    impl LogStore for Broken {
        fn save_hard_state(&mut self, _: &HardState) -> Result<(), StorageError> {
            Ok(())
        }
        fn append(&mut self, _: &[Entry]) -> Result<(), StorageError> {
            Err(StorageError::io(
                Path::new("broken/wal"),
                std::io::Error::other("disk on fire"),
            ))
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            Ok(())
        }
        fn save_snapshot(&mut self, _: &Snapshot) -> Result<(), StorageError> {
            Ok(())
        }
    }
    let t = StorageThread::spawn(Box::new(Broken), None).unwrap();
    let job = |seq| Job {
        seq,
        entries: vec![entry(seq, 1, b"x")],
        ..Job::default()
    };
    match t.write_inline(&job(1)) {
        Err(StorageError::Io { path, source }) => {
            assert_eq!(path, Path::new("broken/wal"));
            assert_eq!(source.to_string(), "disk on fire");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(t.submit(job(2)));
    match t.done().recv().unwrap() {
        Durable::Failed(e @ StorageError::Io { .. }) => {
            assert_eq!(e.to_string(), "broken/wal: disk on fire");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(t.done().recv().is_err(), "the thread stops after a failure");
}

#[test]
fn storage_thread_retries_a_batch_refused_for_space_until_it_goes_through() {
    use raftkit::storage::{DiskFaults, FaultyStore, InjectedDiskFault as DiskFault, MemStore};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let faults = Arc::new(DiskFaults::default());
    let store = FaultyStore::new(Box::new(MemStore::new()), Arc::clone(&faults));
    let t = StorageThread::spawn(Box::new(store), None)
        .unwrap()
        .with_disk_faults(Arc::clone(&faults));
    let job = |seq| Job {
        seq,
        entries: vec![entry(seq, 1, b"x")],
        ..Job::default()
    };
    assert!(t.inline_allowed());
    faults.set(DiskFault::Full);
    assert!(!t.inline_allowed(), "no inline write under a disk fault");
    assert!(t.submit(job(1)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        if let Some(why) = t.no_space() {
            break why;
        }
        assert!(Instant::now() < deadline, "the refusal was never reported");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(why.contains("No space left on device"), "{why}");
    assert!(t.submit(job(2)));
    // Refused writes are neither reported durable nor failed.
    std::thread::sleep(Duration::from_millis(500));
    assert!(t.done().try_recv().is_err(), "nothing reported while full");
    faults.set(DiskFault::None);
    let mut durable = 0;
    while durable < 2 {
        match t.done().recv_timeout(Duration::from_secs(30)) {
            Ok(Durable::Upto(s)) => durable = s,
            other => panic!("expected the jobs durable, got {other:?}"),
        }
    }
    assert_eq!(t.no_space(), None, "space is back");
    assert!(t.inline_allowed());
}

#[test]
fn storage_thread_never_retries_a_failed_fsync_even_for_enospc() {
    struct SyncFails;
    impl LogStore for SyncFails {
        fn save_hard_state(&mut self, _: &HardState) -> Result<(), StorageError> {
            Ok(())
        }
        fn append(&mut self, _: &[Entry]) -> Result<(), StorageError> {
            Ok(())
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
            Err(StorageError::io(
                Path::new("full/wal"),
                raftkit::storage::files::sync_error(enospc),
            ))
        }
        fn save_snapshot(&mut self, _: &Snapshot) -> Result<(), StorageError> {
            Ok(())
        }
    }
    let t = StorageThread::spawn(Box::new(SyncFails), None).unwrap();
    assert!(t.submit(Job {
        seq: 1,
        entries: vec![entry(1, 1, b"x")],
        ..Job::default()
    }));
    match t.done().recv().unwrap() {
        Durable::Failed(e) => {
            assert!(!e.is_no_space(), "{e}");
            assert!(e.to_string().contains("fsync failed"), "{e}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(t.no_space(), None, "an fsync failure is not a full disk");
}
