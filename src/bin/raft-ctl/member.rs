//! `raft-ctl member` and `raft-ctl transfer-leader`: list and change the
//! members at the leader, hand leadership over.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use raftkit::client::{Client, ClientError};
use raftkit::config::{parse_node_id, Config};
use raftkit::raft::{ConfChange, LogIndex, NodeId, Role};
use raftkit::wire::{ErrorCode, MemberRequest, MembersInfo, RequestBody, ResponseBody};
use serde_json::{json, Value};

use crate::{client_fail, fail, fetch_status, EXIT_ERROR};

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// The members: id, address, voter or learner, how far each has the
    /// log; and whether a change is in progress.
    List,
    /// Add a node as a voter (through joint consensus) or, with
    /// --learner, as a learner. Answered once the change is committed.
    Add {
        #[arg(value_parser = parse_node_id)]
        id: NodeId,
        /// Its address (host:port); default: its [[node]] entry.
        #[arg(long)]
        addr: Option<String>,
        #[arg(long)]
        learner: bool,
    },
    /// Make a learner a voter (refused while it is far behind).
    Promote {
        #[arg(value_parser = parse_node_id)]
        id: NodeId,
    },
    /// Remove a voter or a learner.
    Remove {
        #[arg(value_parser = parse_node_id)]
        id: NodeId,
    },
}

/// Sends `body` to the leader, following redirects (and learning the
/// addresses of members cluster.toml does not list) until one answers
/// or the client's timeout passes. Unavailable and TooBusy are retried
/// only when `retry`. A change (`retry` false) is sent only on a
/// connection that just answered a Status, and is never sent twice: if
/// that connection breaks before the answer, the outcome is unknown and
/// that is the error. A Members answer from a node that is not the leader
/// (a removed node that keeps running has a stale view) is kept only as a
/// last resort while the other nodes are asked.
pub(crate) fn leader_call(
    client: &mut Client,
    body: RequestBody,
    retry: bool,
) -> Result<ResponseBody, ClientError> {
    let start = Instant::now();
    let mut last = String::from("nothing tried");
    let mut attempt = 0u64;
    let mut tried = 0usize;
    let mut fallback: Option<ResponseBody> = None;
    let mut asked: Vec<NodeId> = Vec::new();
    while start.elapsed() < client.timeout {
        let node = client.target;
        let ids = client.known_ids();
        let next_node =
            |n: NodeId| ids[(ids.iter().position(|&i| i == n).unwrap_or(0) + 1) % ids.len()];
        if !retry {
            if let Err(e) = client.call(node, RequestBody::Status) {
                // Nothing was sent: another node may lead.
                last = e.to_string();
                client.target = next_node(node);
                attempt += 1;
                std::thread::sleep(Duration::from_millis((20 * attempt).min(200)));
                continue;
            }
        }
        match client.call(node, body.clone()) {
            Ok(ResponseBody::Members(info)) if retry && info.leader != Some(info.node) => {
                // Not the leader's view: ask the others first.
                client.learn_membership(&info.membership);
                if !asked.contains(&node) {
                    asked.push(node);
                }
                client.target = match info.leader {
                    Some(l) if !asked.contains(&l) => l,
                    _ => next_node(node),
                };
                fallback = Some(ResponseBody::Members(info));
                if asked.len() >= client.known_ids().len() {
                    break;
                }
                continue;
            }
            Ok(ResponseBody::NotLeader {
                leader,
                leader_addr,
            }) => {
                last = format!("{node} is not the leader");
                match leader {
                    Some(l) if l != node => {
                        client.learn(l, &leader_addr);
                        client.target = l;
                        tried += 1;
                        if tried < 4 {
                            continue;
                        }
                    }
                    _ => client.target = next_node(node),
                }
            }
            Ok(ResponseBody::Error { code, message })
                if retry && matches!(code, ErrorCode::Unavailable | ErrorCode::TooBusy) =>
            {
                last = format!("{node}: {message}");
            }
            Ok(other) => return Ok(other),
            Err(e @ (ClientError::Unreachable { .. } | ClientError::BadFrame { .. })) if !retry => {
                return Err(ClientError::Server {
                    code: ErrorCode::Unavailable,
                    message: format!(
                        "the connection to {node} broke after the change was sent ({e}); its outcome is unknown: see `raft-ctl member list`"
                    ),
                });
            }
            Err(e @ (ClientError::Unreachable { .. } | ClientError::BadFrame { .. })) => {
                last = e.to_string();
                client.target = next_node(node);
            }
            Err(e) => return Err(e),
        }
        tried = 0;
        attempt += 1;
        std::thread::sleep(Duration::from_millis((20 * attempt).min(200)));
    }
    if let Some(view) = fallback {
        return Ok(view);
    }
    Err(ClientError::NoLeader {
        waited: start.elapsed(),
        last,
    })
}

/// A member's address: the client's (cluster.toml's, or learned), else
/// the one the membership records.
fn addr_of(client: &Client, info: &MembersInfo, id: NodeId) -> Option<String> {
    client
        .addr_of(id)
        .map(|a| a.to_string())
        .or_else(|| info.membership.addrs.get(&id).cloned())
}

/// How far the leader knows `id` has the log.
fn matched_of(info: &MembersInfo, id: NodeId) -> Option<LogIndex> {
    info.matched.iter().find(|(m, _)| *m == id).map(|(_, i)| *i)
}

fn role_of(info: &MembersInfo, id: NodeId) -> &'static str {
    if info.membership.is_learner(id) {
        "learner"
    } else {
        "voter"
    }
}

/// The members as JSON: `{"members": [{"id", "addr", "role",
/// "match_index"}], "changing", ...}`.
pub(crate) fn members_json(client: &Client, info: &MembersInfo) -> Value {
    let members: Vec<Value> = info
        .membership
        .members()
        .into_iter()
        .map(|id| {
            let addr = addr_of(client, info, id);
            let matched = matched_of(info, id).map(|i| i.0);
            let mut v = json!({"id": id.0, "addr": addr, "role": role_of(info, id), "match_index": matched});
            if info.membership.is_joint() {
                v["in_new"] = json!(info.membership.voters.contains(&id) || info.membership.is_learner(id));
                v["in_old"] = json!(info.membership.outgoing.contains(&id));
            }
            v
        })
        .collect();
    json!({
        "members": members,
        "changing": info.changing,
        "joint": info.membership.is_joint(),
        "membership_index": info.membership_index.0,
        "leader": info.leader.map(|l| l.0),
        "commit_index": info.commit_index.0,
        "last_index": info.last_index.0,
    })
}

fn print_members(client: &Client, info: &MembersInfo) {
    println!(
        "{:<4} {:<21} {:<8} {:>10} {:>8}",
        "id", "addr", "role", "match", "behind"
    );
    for id in info.membership.members() {
        let addr = addr_of(client, info, id).unwrap_or_else(|| "?".into());
        let matched = matched_of(info, id);
        let mut role = role_of(info, id).to_string();
        if info.leader == Some(id) {
            role.push('*');
        }
        let mut note = String::new();
        if info.membership.is_joint() {
            let old = info.membership.outgoing.contains(&id);
            let new = info.membership.voters.contains(&id);
            note = match (old, new) {
                (true, false) => "  (leaving)".into(),
                (false, true) => "  (joining)".into(),
                _ => String::new(),
            };
        }
        println!(
            "{:<4} {:<21} {:<8} {:>10} {:>8}{note}",
            id.to_string(),
            addr,
            role,
            matched.map_or("-".into(), |m| m.0.to_string()),
            matched.map_or("-".into(), |m| info
                .last_index
                .0
                .saturating_sub(m.0)
                .to_string()),
        );
    }
    if info.changing {
        println!(
            "a change is in progress (entry {}: {}; committed up to {})",
            info.membership_index, info.membership, info.commit_index
        );
    } else {
        println!(
            "{} (entry {}; * leads)",
            info.membership, info.membership_index
        );
    }
}

pub fn run(client: &mut Client, cmd: &MemberCmd, json_out: bool) -> ExitCode {
    let (req, retry) = match cmd {
        MemberCmd::List => (MemberRequest::List, true),
        MemberCmd::Add { id, addr, learner } => (
            MemberRequest::Change(ConfChange::Add {
                id: *id,
                addr: addr.clone().unwrap_or_default(),
                learner: *learner,
            }),
            false,
        ),
        MemberCmd::Promote { id } => (
            MemberRequest::Change(ConfChange::Promote { id: *id }),
            false,
        ),
        MemberCmd::Remove { id } => (MemberRequest::Change(ConfChange::Remove { id: *id }), false),
    };
    match leader_call(client, RequestBody::Member(req), retry) {
        Ok(ResponseBody::Members(info)) => {
            client.learn_membership(&info.membership);
            if json_out {
                println!("{}", members_json(client, &info));
            } else {
                if !matches!(cmd, MemberCmd::List) {
                    println!("OK: committed; the membership is now");
                }
                print_members(client, &info);
            }
            ExitCode::SUCCESS
        }
        Ok(ResponseBody::Error { code, message }) => {
            let code_n = if code == ErrorCode::BadRequest {
                2
            } else {
                EXIT_ERROR
            };
            fail(code_n, format!("{message} ({code:?})"))
        }
        Ok(other) => fail(EXIT_ERROR, format!("unexpected answer {other:?}")),
        Err(e) => client_fail(e),
    }
}

/// Asks the leader to hand leadership to `target`, then waits until
/// `target` says it leads (exit 0) or the timeout passes.
pub fn transfer(client: &mut Client, config: &Config, target: NodeId, json_out: bool) -> ExitCode {
    let start = Instant::now();
    let deadline = start + client.timeout;
    let mut asked = 0;
    loop {
        match leader_call(client, RequestBody::TransferLeader(target), true) {
            Ok(ResponseBody::TransferStarted(_)) => {}
            Ok(ResponseBody::Error { code, message }) => {
                return fail(EXIT_ERROR, format!("{message} ({code:?})"));
            }
            Ok(other) => return fail(EXIT_ERROR, format!("unexpected answer {other:?}")),
            Err(e) => return client_fail(e),
        }
        asked += 1;
        // The old leader waits an election timeout for the target before
        // it leads on; ask again after that if the target did not take
        // over (its log may have been far behind).
        let round_end =
            Instant::now() + Duration::from_millis(config.cluster.election_timeout_ms_max * 2);
        while Instant::now() < round_end.min(deadline) {
            if let Some(s) = fetch_status(client, target) {
                if s.status.role == Role::Leader {
                    if json_out {
                        println!(
                            "{}",
                            json!({"leader": target.0, "term": s.status.current_term.0, "requests": asked, "ms": start.elapsed().as_millis() as u64})
                        );
                    } else {
                        println!(
                            "{target} leads (term {}) after {} ms",
                            s.status.current_term,
                            start.elapsed().as_millis()
                        );
                    }
                    client.target = target;
                    return ExitCode::SUCCESS;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if Instant::now() >= deadline {
            return fail(
                crate::EXIT_NO_LEADER,
                format!(
                    "{target} did not take over within {:.1} s",
                    client.timeout.as_secs_f64()
                ),
            );
        }
    }
}
