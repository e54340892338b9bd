//! The dependencies between modules point one way (see the crate docs):
//! these tests read the sources, so that a `use` against the grain fails
//! here rather than growing into a cycle.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/<rel>` (or the file `src/<rel>` itself).
fn sources(rel: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel);
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            for e in fs::read_dir(&p).expect("read src dir") {
                todo.push(e.expect("dir entry").path());
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    assert!(!out.is_empty(), "no sources under src/{rel}");
    out
}

/// Lines of the sources under `rel` that mention any of `forbidden`.
fn offending(rel: &str, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for path in sources(rel) {
        let text = fs::read_to_string(&path).expect("read source");
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if forbidden.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn layering_ground_modules_use_nothing_of_the_crate() {
    for ground in ["codec.rs", "rng.rs"] {
        let bad = offending(ground, &["crate::", "super::", "raftkit::"]);
        let bad: Vec<_> = bad
            .into_iter()
            .filter(|l| !l.ends_with("use super::*;"))
            .collect();
        assert!(
            bad.is_empty(),
            "src/{ground} must stay ground:\n{}",
            bad.join("\n")
        );
    }
}

#[test]
fn layering_kv_does_not_use_wire_storage_or_node() {
    let bad = offending(
        "kv",
        &["crate::wire", "crate::storage", "crate::node", "crate::sim"],
    );
    assert!(
        bad.is_empty(),
        "kv depends on codec and raft types only:\n{}",
        bad.join("\n")
    );
}

#[test]
fn layering_raft_core_uses_only_itself_and_ground_modules() {
    let bad = offending(
        "raft",
        &[
            "crate::wire",
            "crate::kv",
            "crate::storage",
            "crate::node",
            "crate::sim",
            "crate::config",
            "crate::client",
        ],
    );
    assert!(
        bad.is_empty(),
        "raft must stay free of I/O layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn layering_storage_does_not_use_wire_kv_or_node() {
    let bad = offending("storage", &["crate::wire", "crate::kv", "crate::node"]);
    assert!(
        bad.is_empty(),
        "storage knows nothing of the network:\n{}",
        bad.join("\n")
    );
}
