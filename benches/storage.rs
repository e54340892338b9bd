//! Storage benchmark: `cargo bench --bench storage [-- --seconds S]`.
//!
//! Appends/s and MB/s for 100 B and 4 KiB entries, in batches of 1 and 64,
//! with and without fsync; then group commit through the storage thread
//! against a plain `write` + `fdatasync` loop on the same disk, in the same
//! run. Files go to `target/bench-storage` (or `RAFTKIT_BENCH_DIR`), so the
//! disk is the one the repository is on, not a tmpfs.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raftkit::raft::{Entry, EntryKind, LogIndex, NodeId, Term};
use raftkit::storage::{DiskStore, Durable, Job, Meta, StorageThread, Wal, WalOptions};

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("RAFTKIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-storage"));
    std::fs::create_dir_all(&base).expect("bench dir");
    base
}

fn entries(n: usize, size: usize) -> Vec<Entry> {
    (1..=n as u64)
        .map(|i| Entry {
            index: LogIndex(i),
            term: Term(1),
            kind: EntryKind::Command,
            data: vec![(i % 251) as u8; size].into(),
        })
        .collect()
}

struct Row {
    size: usize,
    batch: usize,
    fsync: bool,
    appends: u64,
    secs: f64,
    syncs: u64,
}

fn append_run(dir: &Path, size: usize, batch: usize, fsync: bool, secs: f64) -> Row {
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let opts = WalOptions {
        segment_bytes_max: 64 << 20,
        fsync,
        direct_io: true,
    };
    let (mut wal, _) = Wal::open(d.path(), opts).expect("open");
    // Pre-built entries, so only the log's work is timed; indexes go on
    // past the pool by rewriting them.
    let pool = entries(batch * 64, size);
    let mut next = 1u64;
    let mut chunk: Vec<Entry> = Vec::with_capacity(batch);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut rounds = 0u64;
    let mut total_bytes = 0u64;
    loop {
        for _ in 0..16 {
            chunk.clear();
            for k in 0..batch {
                let mut e = pool[(rounds as usize * batch + k) % pool.len()].clone();
                e.index = LogIndex(next);
                next += 1;
                chunk.push(e);
            }
            wal.append(&chunk).expect("append");
            wal.sync().expect("sync");
            rounds += 1;
            total_bytes += (batch * size) as u64;
        }
        // Keep the disk use bounded in long runs without fsync.
        if total_bytes > (2u64 << 30) || Instant::now() >= deadline {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Row {
        size,
        batch,
        fsync,
        appends: next - 1,
        secs,
        syncs: wal.stats().syncs,
    }
}

/// Timing only the log, not cloning entries: a variant that appends the
/// same pre-built batch with fresh indexes in place.
fn append_run_in_place(dir: &Path, size: usize, batch: usize, secs: f64) -> Row {
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let opts = WalOptions {
        segment_bytes_max: 64 << 20,
        fsync: false,
        direct_io: false,
    };
    let (mut wal, _) = Wal::open(d.path(), opts).expect("open");
    let mut chunk = entries(batch, size);
    let mut next = 1u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut total_bytes = 0u64;
    loop {
        for _ in 0..64 {
            for e in chunk.iter_mut() {
                e.index = LogIndex(next);
                next += 1;
            }
            wal.append(&chunk).expect("append");
            wal.sync().expect("sync");
            total_bytes += (batch * size) as u64;
        }
        if total_bytes > (2u64 << 30) || Instant::now() >= deadline {
            break;
        }
    }
    Row {
        size,
        batch,
        fsync: false,
        appends: next - 1,
        secs: start.elapsed().as_secs_f64(),
        syncs: wal.stats().syncs,
    }
}

/// A plain `pwrite` of one 125-byte record and `fdatasync`, in a loop: the
/// disk's own rate. Returns (fsyncs/s, p50 latency in µs).
fn raw_fsync(dir: &Path, secs: f64) -> (f64, f64) {
    let start = Instant::now();
    let lat = raftkit::bench::fdatasync_loop(dir, secs).expect("write + fdatasync");
    (
        lat.len() as f64 / start.elapsed().as_secs_f64(),
        lat[lat.len() / 2] as f64 / 1000.0,
    )
}

/// The storage thread under a steady stream of one-entry jobs (as a
/// leader under load sends them), the producer keeping at least `queued`
/// jobs waiting in the channel while an fsync runs: fsyncs/s, appends/s.
fn group_commit(dir: &Path, queued: usize, secs: f64) -> (f64, f64) {
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let owner = Meta {
        node_id: NodeId(1),
        cluster: "bench".into(),
    };
    let (store, _) = DiskStore::open(d.path(), &owner, WalOptions::default()).expect("open");
    let t = StorageThread::spawn(Box::new(store), None).expect("thread");
    let data: std::sync::Arc<[u8]> = vec![7u8; 100].into();
    let mut seq = 0u64;
    let mut durable = 0u64;
    let start = Instant::now();
    let syncs0 = t.stats().syncs.load(Ordering::Relaxed);
    while start.elapsed().as_secs_f64() < secs {
        while let Ok(d) = t.done().try_recv() {
            match d {
                Durable::Upto(s) => durable = s,
                Durable::Failed(e) => panic!("storage: {e}"),
            }
        }
        if t.queued() < queued {
            seq += 1;
            t.submit(Job {
                seq,
                hard_state: None,
                snapshot: None,
                entries: vec![Entry {
                    index: LogIndex(seq),
                    term: Term(0),
                    kind: EntryKind::Command,
                    data: data.clone(),
                }],
                release: Vec::new(),
            });
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let syncs = t.stats().syncs.load(Ordering::Relaxed) - syncs0;
    let _ = durable;
    let appended = t.stats().entries.load(Ordering::Relaxed);
    (syncs as f64 / secs, appended as f64 / secs)
}

fn main() {
    let mut secs = 2.0;
    let args: Vec<String> = std::env::args().collect();
    if let Some(p) = args.iter().position(|a| a == "--seconds") {
        secs = args.get(p + 1).and_then(|s| s.parse().ok()).unwrap_or(secs);
    }
    let dir = bench_dir();
    println!("storage benchmark in {} ({secs} s per row)", dir.display());
    println!();
    println!(
        "{:>6} {:>6} {:>6} {:>12} {:>9} {:>10}",
        "entry", "batch", "fsync", "appends/s", "MB/s", "fsyncs/s"
    );
    let mut rows = Vec::new();
    for &size in &[100usize, 4096] {
        for &batch in &[1usize, 64] {
            for &fsync in &[true, false] {
                let r = if fsync {
                    append_run(&dir, size, batch, fsync, secs)
                } else {
                    append_run_in_place(&dir, size, batch, secs)
                };
                println!(
                    "{:>6} {:>6} {:>6} {:>12.0} {:>9.1} {:>10}",
                    if r.size == 100 { "100 B" } else { "4 KiB" },
                    r.batch,
                    if r.fsync { "on" } else { "off" },
                    r.appends as f64 / r.secs,
                    r.appends as f64 * r.size as f64 / r.secs / 1e6,
                    if r.fsync {
                        format!("{:.0}", r.syncs as f64 / r.secs)
                    } else {
                        "-".into()
                    }
                );
                rows.push(r);
            }
        }
    }
    println!();
    // Group commit against the raw loop, interleaved over three rounds so
    // that drift in the disk's speed hits both alike; medians reported.
    let (mut raw, mut p50s, mut gc4, mut ap4, mut gc256, mut ap256) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        let (r, p) = raw_fsync(&dir, secs / 2.0);
        raw.push(r);
        p50s.push(p);
        let (g, a) = group_commit(&dir, 4, secs / 2.0);
        gc4.push(g);
        ap4.push(a);
        let (g, a) = group_commit(&dir, 256, secs / 2.0);
        gc256.push(g);
        ap256.push(a);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (raw, p50) = (med(&mut raw), med(&mut p50s));
    let (gc4, ap4, gc256, ap256) = (
        med(&mut gc4),
        med(&mut ap4),
        med(&mut gc256),
        med(&mut ap256),
    );
    println!("medians of 3 interleaved rounds:");
    println!("raw write+fdatasync loop:        {raw:>7.0} fsyncs/s                       (fdatasync p50 {p50:.0} µs)");
    println!(
        "storage thread, >=4 queued:      {gc4:>6.0} fsyncs/s {ap4:>8.0} appends/s  ratio to raw {:.2}",
        gc4 / raw
    );
    println!(
        "storage thread, >=256 queued:   {gc256:>7.0} fsyncs/s {ap256:>8.0} appends/s  ratio to raw {:.2}",
        gc256 / raw
    );
    if std::env::args().any(|a| a == "--json") {
        println!(
            "{{\"raw_fsyncs_per_s\":{raw:.0},\"fdatasync_p50_us\":{p50:.0},\"group_fsyncs_per_s\":{gc4:.0},\"ratio\":{:.3}}}",
            gc4 / raw
        );
    }
}
