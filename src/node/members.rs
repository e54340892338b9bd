//! Membership requests in the driver: listing the members, changing them
//! through the core (answered once the settled membership after the change
//! is committed), and handing leadership over. Part of the pure driver.

use std::net::SocketAddr;

use log::info;

use crate::raft::{ConfChange, ConfChangeError, Entry, EntryKind, LogIndex, Membership, Term};
use crate::wire::{ErrorCode, MemberRequest, MembersInfo, ResponseBody};

use super::driver::{ClientRef, Driver};

/// A membership change proposed for a client: its entry, and whether that
/// entry has been applied (the answer then waits for the settled
/// membership after it).
pub(super) struct ConfWaiter {
    pub(super) to: ClientRef,
    pub(super) index: LogIndex,
    pub(super) term: Term,
    pub(super) reached: bool,
}

impl Driver {
    /// The members as this node sees them.
    pub fn members_info(&self) -> MembersInfo {
        let status = self.raft.status();
        // Progress is the leader's alone; it has its whole log itself.
        let mut matched: Vec<_> = status.peers.iter().map(|p| (p.id, p.match_index)).collect();
        if status.role == crate::raft::Role::Leader {
            matched.push((self.id, status.last_index));
            matched.sort();
        }
        MembersInfo {
            node: self.id,
            leader: status.leader,
            membership: status.membership,
            membership_index: status.membership_index,
            changing: status.membership_changing,
            commit_index: status.commit_index,
            last_index: status.last_index,
            matched,
        }
    }

    /// A member's address: the one the membership records, else the one
    /// cluster.toml lists.
    pub fn member_addr(&self, id: crate::raft::NodeId) -> Option<String> {
        self.raft.membership().addrs.get(&id).cloned().or_else(|| {
            self.config
                .addrs
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, a)| a.clone())
        })
    }

    pub fn handle_member(&mut self, to: ClientRef, req: MemberRequest) {
        let change = match req {
            MemberRequest::List => {
                // The leader knows how far each member is; a follower
                // that knows the leader sends the client there.
                if self.raft.role() != crate::raft::Role::Leader && self.raft.leader().is_some() {
                    let body = self.not_leader();
                    self.answer(to, body);
                    return;
                }
                let info = self.members_info();
                self.answer(to, ResponseBody::Members(Box::new(info)));
                return;
            }
            MemberRequest::Change(c) => c,
        };
        let change = match change {
            ConfChange::Add { id, addr, learner } => {
                let addr = if addr.is_empty() {
                    match self.member_addr(id) {
                        Some(a) => a,
                        None => {
                            let why = format!(
                                "{id} has no [[node]] entry in cluster.toml: give its address"
                            );
                            self.refuse_change(to, ErrorCode::BadRequest, why);
                            return;
                        }
                    }
                } else {
                    addr
                };
                if addr.parse::<SocketAddr>().is_err() {
                    let why =
                        format!("{addr:?} is not an IP address and port (like 127.0.0.1:7004)");
                    self.refuse_change(to, ErrorCode::BadRequest, why);
                    return;
                }
                ConfChange::Add { id, addr, learner }
            }
            c => c,
        };
        match self.raft.propose_conf_change(&change) {
            Ok(index) => self.conf_waiting.push(ConfWaiter {
                to,
                index,
                term: self.raft.current_term(),
                reached: false,
            }),
            Err(e) => self.refuse_conf(to, e),
        }
    }

    pub fn handle_transfer(&mut self, to: ClientRef, target: crate::raft::NodeId) {
        match self.raft.transfer_leadership(target) {
            Ok(()) => self.answer(to, ResponseBody::TransferStarted(target)),
            Err(e) => self.refuse_conf(to, e),
        }
    }

    /// The core refused a change or a transfer: NotLeader, or Refused with
    /// its reason.
    fn refuse_conf(&mut self, to: ClientRef, e: ConfChangeError) {
        match e {
            ConfChangeError::NotLeader(_) => {
                let body = self.not_leader();
                self.answer(to, body);
            }
            ConfChangeError::Refused(why) => self.refuse_change(to, ErrorCode::Refused, why),
        }
    }

    fn refuse_change(&mut self, to: ClientRef, code: ErrorCode, message: String) {
        info!("{}: membership request refused: {message}", self.id);
        self.answer(to, ResponseBody::Error { code, message });
    }

    /// Committed entries about to be applied: a waiting change whose entry
    /// is among them is reached (or lost, if another entry took its
    /// place); it is answered with the first settled membership committed
    /// from there on.
    pub(super) fn conf_committed(&mut self, entries: &[Entry]) {
        if self.conf_waiting.is_empty() {
            return;
        }
        for e in entries {
            let mut answers = Vec::new();
            self.conf_waiting.retain_mut(|w| {
                if w.index == e.index && (e.term != w.term || e.kind != EntryKind::ConfChange) {
                    answers.push((w.to, None));
                    return false;
                }
                if w.index == e.index {
                    w.reached = true;
                }
                if w.reached && e.kind == EntryKind::ConfChange {
                    if let Ok(m) = Membership::from_bytes(&e.data) {
                        if !m.is_joint() {
                            answers.push((w.to, Some(e.index)));
                            return false;
                        }
                    }
                }
                true
            });
            for (to, done) in answers {
                let body = match done {
                    Some(_) => ResponseBody::Members(Box::new(self.members_info())),
                    None => ResponseBody::Error {
                        code: ErrorCode::Unavailable,
                        message: "the change was lost to a leader change; see `member list`".into(),
                    },
                };
                self.answer(to, body);
            }
        }
    }

    /// Leadership lost or the node stops: the outcome of waiting changes
    /// is unknown.
    pub(super) fn fail_conf_waiting(&mut self) {
        for w in std::mem::take(&mut self.conf_waiting) {
            self.answer(
                w.to,
                ResponseBody::Error {
                    code: ErrorCode::Unavailable,
                    message: "leadership lost before the change completed; outcome unknown, see `member list`".into(),
                },
            );
        }
    }
}
