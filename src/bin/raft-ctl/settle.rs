//! `raft-ctl settle`: after a drill, wait until the cluster has converged,
//! then verify that every node holds the same log up to the commit index
//! and the same value for every key of a history, and append the leader's
//! final reads to the history so that `check` covers them.
//!
//! Only the members count, as the leader's membership says (voters and
//! learners): a node cluster.toml lists that is not a member (never added,
//! or removed, running or not) is neither waited for nor compared, and the
//! report names it. A member cluster.toml does not list is found through
//! the address the membership records. The cluster has settled only once
//! no membership change is under way.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use raftkit::bench::monotonic_ns;
use raftkit::client::Client;
use raftkit::config::Config;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{NodeId, Role};
use raftkit::wire::NodeStatus;
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
    // 1. One leader that every member follows, its membership settled;
    //    every member applied everything, and no member holds an
    //    uncommitted entry (a deposed leader's are gone).
    let (leader, term, commit, first, membership) = loop {
        let st: Vec<(NodeId, Option<NodeStatus>)> = client
            .known_ids()
            .into_iter()
            .map(|id| (id, fetch_status(&mut client, id)))
            .collect();
        let all: Vec<_> = st.iter().filter_map(|(_, s)| s.as_ref()).collect();
        // Two nodes may both say they lead for a moment: the highest term's.
        let leader = all
            .iter()
            .map(|s| &s.status)
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.current_term);
        if let Some(l) = leader {
            for s in &all {
                client.learn_membership(&s.status.membership);
            }
            let members = l.membership.members();
            let of_members: Vec<_> = all
                .iter()
                .map(|s| &s.status)
                .filter(|s| members.contains(&s.id))
                .collect();
            let agreed = !l.membership_changing
                && of_members.len() == members.len()
                && of_members.iter().all(|s| {
                    s.leader == Some(l.id)
                        && s.current_term == l.current_term
                        && s.commit_index == l.commit_index
                        && s.last_applied == l.commit_index
                        && s.last_index == l.commit_index
                });
            if agreed {
                // Each node compacts its log behind its own snapshots:
                // compare what every one of them still holds.
                let first = of_members
                    .iter()
                    .map(|s| s.first_index.0)
                    .max()
                    .unwrap_or(1);
                break (
                    l.id,
                    l.current_term,
                    l.commit_index,
                    first,
                    l.membership.clone(),
                );
            }
        }
        if Instant::now() >= deadline {
            let desc: Vec<String> = st
                .iter()
                .map(|(id, s)| match s {
                    Some(s) => format!(
                        "{id} {} t{} commit {} applied {} last {} ({}{})",
                        s.status.role.name(),
                        s.status.current_term,
                        s.status.commit_index,
                        s.status.last_applied,
                        s.status.last_index,
                        s.status.membership,
                        if s.status.membership_changing {
                            ", changing"
                        } else {
                            ""
                        }
                    ),
                    None => format!("{id} down"),
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
    let members: Vec<NodeId> = membership.members().into_iter().collect();
    let skipped: Vec<NodeId> = client
        .known_ids()
        .into_iter()
        .filter(|id| !members.contains(id))
        .collect();
    // 2. Identical logs up to the commit index (from the first index every
    //    node holds; the values checked below cover what snapshots hold).
    let reference = match client.log(leader, first, commit.0) {
        Ok((_, l)) => l,
        Err(e) => return fail(EXIT_ERROR, format!("{leader}: {e}")),
    };
    for &id in members.iter().filter(|&&id| id != leader) {
        let log = match client.log(id, first, commit.0) {
            Ok((_, l)) => l,
            Err(e) => return fail(EXIT_ERROR, format!("{id}: {e}")),
        };
        if let Some((a, b)) = log.iter().zip(&reference).find(|(a, b)| a != b) {
            return fail(
                EXIT_ERROR,
                format!("{id} holds entry {a} where the leader {leader} holds {b}"),
            );
        }
        if log.len() != reference.len() {
            return fail(EXIT_ERROR, format!("{id} log length differs"));
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
        reader.learn_membership(&membership);
        reader.timeout = Duration::from_secs(10);
        let mut locals: Vec<(NodeId, Client)> = members
            .iter()
            .map(|&id| {
                let mut c = Client::new(config.clone(), Some(id));
                c.learn_membership(&membership);
                (id, c)
            })
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
            for (id, c) in locals.iter_mut() {
                let local = match c.kv(
                    Op::Get {
                        key: key.clone().into_bytes(),
                    },
                    true,
                ) {
                    Ok((_, OpResult::Value(v))) => v.map(|v| text(&v)),
                    Ok((_, other)) => {
                        return fail(EXIT_ERROR, format!("{id}: get {key}: {other:?}"))
                    }
                    Err(e) => return fail(EXIT_ERROR, format!("{id}: get {key}: {e}")),
                };
                if local != value {
                    return fail(
                        EXIT_ERROR,
                        format!(
                            "{id} holds {key} = {local:?}, the leader {leader} reads {value:?}"
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
    let ids = |v: &[NodeId]| v.iter().map(|id| id.0).collect::<Vec<_>>();
    if json_out {
        println!(
            "{}",
            json!({"settled": true, "leader": leader.0, "term": term.0, "commit_index": commit.0,
                   "nodes": members.len(), "members": ids(&members), "skipped": ids(&skipped),
                   "keys_checked": keys_checked})
        );
    } else {
        let names = |v: &[NodeId]| {
            v.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "settled: leader {leader} in term {term}, commit index {commit} on {} members ({}), logs identical{}{}",
            members.len(),
            names(&members),
            if history.is_some() {
                format!(", {keys_checked} keys identical on every member (final reads appended to the history)")
            } else {
                String::new()
            },
            if skipped.is_empty() {
                String::new()
            } else {
                format!("; not members, not compared: {}", names(&skipped))
            }
        );
    }
    ExitCode::SUCCESS
}
