//! `raft-ctl settle`: after a drill, wait until the cluster has converged,
//! then verify that every node holds the same log up to the commit index
//! and the same value for every key of a history, and append the leader's
//! final reads to the history so that `check` covers them.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use raftkit::bench::monotonic_ns;
use raftkit::client::Client;
use raftkit::config::Config;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::Role;
use serde_json::{json, Value};

use crate::{fail, fetch_status, EXIT_ERROR};

/// The `client` number of the final reads in a history.
const SETTLE_CLIENT: u64 = 1_000_000;

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

pub fn run(config: &Config, history: Option<&Path>, timeout: f64, json_out: bool) -> ExitCode {
    let mut client = Client::new(config.clone(), None);
    client.timeout = Duration::from_secs(5);
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    // 1. One leader that everyone follows; every node applied everything,
    //    and no node holds an uncommitted entry (a deposed leader's are
    //    gone).
    let (leader, term, commit, first) = loop {
        let st: Vec<_> = config
            .nodes
            .iter()
            .map(|n| fetch_status(&mut client, n.id))
            .collect();
        let all: Vec<_> = st.iter().flatten().map(|s| &s.status).collect();
        let leader = all.iter().find(|s| s.role == Role::Leader);
        if let Some(l) = leader {
            let agreed = all.len() == config.nodes.len()
                && all.iter().all(|s| {
                    s.leader == Some(l.id)
                        && s.current_term == l.current_term
                        && s.commit_index == l.commit_index
                        && s.last_applied == l.commit_index
                        && s.last_index == l.commit_index
                });
            if agreed {
                // Each node compacts its log behind its own snapshots:
                // compare what every one of them still holds.
                let first = all.iter().map(|s| s.first_index.0).max().unwrap_or(1);
                break (l.id, l.current_term, l.commit_index, first);
            }
        }
        if Instant::now() >= deadline {
            let desc: Vec<String> = config
                .nodes
                .iter()
                .zip(&st)
                .map(|(n, s)| match s {
                    Some(s) => format!(
                        "{} {} t{} commit {} applied {} last {}",
                        n.id,
                        s.status.role.name(),
                        s.status.current_term,
                        s.status.commit_index,
                        s.status.last_applied,
                        s.status.last_index
                    ),
                    None => format!("{} down", n.id),
                })
                .collect();
            return fail(
                EXIT_ERROR,
                format!(
                    "the cluster did not settle within {timeout} s: {}",
                    desc.join("; ")
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // 2. Identical logs up to the commit index (from the first index every
    //    node holds; the values checked below cover what snapshots hold).
    let reference = match client.log(leader, first, commit.0) {
        Ok((_, l)) => l,
        Err(e) => return fail(EXIT_ERROR, format!("{leader}: {e}")),
    };
    for n in config.nodes.iter().filter(|n| n.id != leader) {
        let log = match client.log(n.id, first, commit.0) {
            Ok((_, l)) => l,
            Err(e) => return fail(EXIT_ERROR, format!("{}: {e}", n.id)),
        };
        if let Some((a, b)) = log.iter().zip(&reference).find(|(a, b)| a != b) {
            return fail(
                EXIT_ERROR,
                format!(
                    "{} holds entry {a} where the leader {leader} holds {b}",
                    n.id
                ),
            );
        }
        if log.len() != reference.len() {
            return fail(EXIT_ERROR, format!("{} log length differs", n.id));
        }
    }
    // 3. Every key of the history: the leader's linearizable read, then
    //    every node's own state must agree.
    let mut keys_checked = 0;
    if let Some(path) = history {
        let text_in = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return fail(2, format!("{}: {e}", path.display())),
        };
        let mut keys = BTreeSet::new();
        for line in text_in.lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if let Some(k) = v.get("key").and_then(Value::as_str) {
                    keys.insert(k.to_string());
                }
            }
        }
        let mut lines = Vec::new();
        let mut reader = Client::new(config.clone(), Some(leader));
        reader.timeout = Duration::from_secs(10);
        let mut locals: Vec<Client> = config
            .nodes
            .iter()
            .map(|n| Client::new(config.clone(), Some(n.id)))
            .collect();
        for key in &keys {
            let invoke = monotonic_ns();
            let value = match reader.kv(
                Op::Get {
                    key: key.clone().into_bytes(),
                },
                false,
            ) {
                Ok((_, OpResult::Value(v))) => v.map(|v| text(&v)),
                Ok((_, other)) => return fail(EXIT_ERROR, format!("get {key}: {other:?}")),
                Err(e) => return fail(EXIT_ERROR, format!("get {key}: {e}")),
            };
            let complete = monotonic_ns();
            lines.push(json!({
                "client": SETTLE_CLIENT, "op": "get", "key": key, "value": null,
                "expected": null, "invoke_ns": invoke, "complete_ns": complete,
                "ok": true, "result": value,
            }));
            for (n, c) in config.nodes.iter().zip(locals.iter_mut()) {
                let local = match c.kv(
                    Op::Get {
                        key: key.clone().into_bytes(),
                    },
                    true,
                ) {
                    Ok((_, OpResult::Value(v))) => v.map(|v| text(&v)),
                    Ok((_, other)) => {
                        return fail(EXIT_ERROR, format!("{}: get {key}: {other:?}", n.id))
                    }
                    Err(e) => return fail(EXIT_ERROR, format!("{}: get {key}: {e}", n.id)),
                };
                if local != value {
                    return fail(
                        EXIT_ERROR,
                        format!(
                            "{} holds {key} = {local:?}, the leader {leader} reads {value:?}",
                            n.id
                        ),
                    );
                }
            }
            keys_checked += 1;
        }
        let mut f = match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(f) => f,
            Err(e) => return fail(EXIT_ERROR, format!("{}: {e}", path.display())),
        };
        for l in lines {
            if let Err(e) = writeln!(f, "{l}") {
                return fail(EXIT_ERROR, format!("{}: {e}", path.display()));
            }
        }
    }
    if json_out {
        println!(
            "{}",
            json!({"settled": true, "leader": leader.0, "term": term.0, "commit_index": commit.0,
                   "nodes": config.nodes.len(), "keys_checked": keys_checked})
        );
    } else {
        println!(
            "settled: leader {leader} in term {term}, commit index {commit} on {} nodes, logs identical{}",
            config.nodes.len(),
            if history.is_some() {
                format!(", {keys_checked} keys identical on every node (final reads appended to the history)")
            } else {
                String::new()
            }
        );
    }
    ExitCode::SUCCESS
}
