//! Offline commands on a stopped node's data dir: `wal-dump`, `wal-repair`.
//! The log they show includes entries a snapshot already covers (a
//! compacted log keeps the segment that holds the snapshot's index).

use std::path::Path;
use std::process::ExitCode;

use raftkit::raft::EntryKind;
use raftkit::storage::{self, StorageError};
use serde_json::json;

use crate::{fail, payload, EXIT_ERROR};

/// Prints the meta, hard state, snapshot, segments and entries of `dir`.
pub fn dump(dir: &Path, json_out: bool, entries_too: bool) -> ExitCode {
    if !dir.is_dir() {
        return fail(2, format!("{}: not a directory", dir.display()));
    }
    let ins = match storage::inspect(dir) {
        Ok(i) => i,
        Err(e) => return fail(EXIT_ERROR, e),
    };
    let last_term = ins.scan.entries.last().map_or(0, |e| e.term.0);
    if json_out {
        let out = json!({
            "dir": dir.display().to_string(),
            "meta": ins.meta.as_ref().map(|m| json!({"node_id": m.node_id.0, "cluster": m.cluster})),
            "hard_state": ins.hard_state.map(|h| json!({
                "current_term": h.current_term.0,
                "voted_for": h.voted_for.map(|v| v.0),
            })),
            "snapshot": ins.snapshot.as_ref().map(|s| json!({
                "index": s.index.0, "term": s.term.0, "bytes": s.data.len(),
            })),
            "segments": ins.scan.segments.iter().map(|s| json!({
                "file": s.path.display().to_string(),
                "first_index": s.first_index,
                "records": s.offsets.len(),
                "valid_bytes": s.valid_bytes,
                "file_bytes": s.file_bytes,
            })).collect::<Vec<_>>(),
            "torn_tail": ins.scan.torn.as_ref().map(|t| json!({
                "file": t.path.display().to_string(), "offset": t.offset,
                "bytes": t.bytes, "why": t.why,
            })),
            "first_index": ins.scan.entries.first().map_or(0, |e| e.index.0),
            "last_index": ins.scan.entries.last().map_or(0, |e| e.index.0),
            "last_term": last_term,
            "entries": if entries_too {
                ins.scan.entries.iter().map(|e| json!({
                    "index": e.index.0, "term": e.term.0,
                    "kind": match e.kind { EntryKind::Noop => "noop", EntryKind::Command => "command", EntryKind::ConfChange => "membership" },
                    "bytes": e.data.len(),
                    "payload": payload(e),
                })).collect::<Vec<_>>()
            } else { Vec::new() },
        });
        println!("{out}");
        return ExitCode::SUCCESS;
    }
    match &ins.meta {
        Some(m) => println!("node {} of cluster {:?}", m.node_id, m.cluster),
        None => println!("no meta file (not initialised)"),
    }
    match ins.hard_state {
        Some(h) => println!(
            "term {}  voted for {}",
            h.current_term,
            h.voted_for.map_or("nobody".into(), |v| v.to_string())
        ),
        None => println!("no hard state file"),
    }
    match &ins.snapshot {
        Some(s) => println!(
            "snapshot up to index {} (term {}), {} bytes",
            s.index,
            s.term,
            s.data.len()
        ),
        None => println!("no snapshot"),
    }
    println!(
        "{} entries (index {}..={}, last term {last_term}) in {} segments",
        ins.scan.entries.len(),
        ins.scan.entries.first().map_or(0, |e| e.index.0),
        ins.scan.entries.last().map_or(0, |e| e.index.0),
        ins.scan.segments.len()
    );
    for s in &ins.scan.segments {
        println!(
            "  {}  first {}  {} records  {} bytes",
            s.path.display(),
            s.first_index,
            s.offsets.len(),
            s.file_bytes
        );
    }
    if let Some(t) = &ins.scan.torn {
        println!(
            "torn tail: {} at offset {}: {} ({} bytes; the node cuts them at start)",
            t.path.display(),
            t.offset,
            t.why,
            t.bytes
        );
    }
    for s in &ins.scan.strangers {
        println!("  (not a segment: {})", s.display());
    }
    if entries_too {
        println!("{:>8} {:>6}  payload", "index", "term");
        for e in &ins.scan.entries {
            println!("{:>8} {:>6}  {}", e.index.0, e.term.0, payload(e));
        }
    }
    ExitCode::SUCCESS
}

/// Cuts the log at its first bad record.
pub fn repair(dir: &Path, yes: bool) -> ExitCode {
    match storage::inspect(dir) {
        Ok(ins) => {
            println!(
                "{}: the log is intact ({} entries{}); nothing to repair",
                dir.display(),
                ins.scan.entries.len(),
                if ins.scan.torn.is_some() {
                    "; a torn tail the node cuts by itself"
                } else {
                    ""
                }
            );
            return ExitCode::SUCCESS;
        }
        Err(StorageError::Corrupt { path, offset, what }) => {
            println!("{}: offset {offset}: {what}", path.display());
        }
        Err(e) => return fail(EXIT_ERROR, e),
    }
    if !yes {
        println!("this drops every entry from that record on; run again with --yes to do it");
        return ExitCode::from(EXIT_ERROR);
    }
    match storage::repair(dir) {
        Ok(kept) => {
            println!("repaired: the log now ends at index {kept}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_ERROR, e),
    }
}
