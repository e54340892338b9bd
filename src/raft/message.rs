//! Messages between Raft servers: RequestVote and AppendEntries with their
//! responses (Figure 2 of the Raft paper), plus the PreVote variant.
//!
//! Every message carries the sender's term; term handling happens once, at the
//! top of `Raft::step`, before the per-role handlers see the message.

use std::fmt;

use super::types::{Entry, LogIndex, NodeId, Snapshot, Term};

/// One message from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's `current_term`; for a PreVote request, the term the
    /// sender would campaign in (its term + 1); for a granted PreVote
    /// response, the term of the request.
    pub term: Term,
    pub body: MessageBody,
}

/// Why a follower rejected an AppendEntries, so that the leader can skip back
/// a whole term at a time (Raft paper, end of section 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectHint {
    /// The `prev_log_index` of the rejected AppendEntries: lets the leader
    /// ignore a stale rejection.
    pub rejected_prev_index: LogIndex,
    /// The term of the follower's entry at `rejected_prev_index`, or 0 when
    /// the follower's log is shorter than that.
    pub conflict_term: Term,
    /// The first index of `conflict_term` in the follower's log; when
    /// `conflict_term` is 0, the follower's last index + 1.
    pub conflict_index: LogIndex,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// A candidate (or pre-candidate) asks for a vote.
    RequestVote {
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
        /// Sent in an election the leader asked for (TimeoutNow): a voter
        /// that still hears from that leader votes all the same.
        transfer: bool,
    },
    RequestVoteResponse {
        pre_vote: bool,
        vote_granted: bool,
    },
    /// Replicates entries; with no entries, a heartbeat.
    AppendEntries {
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        /// The leader's heartbeat round when it sent this; echoed in the
        /// response so that one round confirms leadership for every
        /// ReadIndex request registered before it.
        read_round: u64,
    },
    /// Replaces the follower's state with the leader's snapshot, for a
    /// follower that needs entries the leader has compacted away. Answered
    /// with an AppendEntriesResponse whose `match_index` is the snapshot's
    /// index, once the snapshot is durable.
    InstallSnapshot {
        snapshot: Snapshot,
        /// As in AppendEntries.
        read_round: u64,
    },
    /// The leader hands over leadership (Raft thesis section 3.10): the
    /// receiver, whose log is as long as the leader's, campaigns at once.
    TimeoutNow,
    AppendEntriesResponse {
        success: bool,
        /// On success, the last index this message proves the follower has
        /// durably and in agreement with the leader (`prev_log_index` +
        /// number of entries); on rejection, 0.
        match_index: LogIndex,
        /// Set on rejection.
        reject: Option<RejectHint>,
        /// Echo of the request's `read_round`.
        read_round: u64,
    },
}

impl MessageBody {
    /// The message type's name, as in the paper.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote {
                pre_vote: false, ..
            } => "RequestVote",
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVoteResponse {
                pre_vote: false, ..
            } => "RequestVoteResponse",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}

impl fmt::Display for Message {
    /// One line, for transcripts:
    /// `n1->n2 AppendEntries t3 prev=7/2 commit=7 round=4 entries=[8/3]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}->{} {} t{}",
            self.from,
            self.to,
            self.body.name(),
            self.term
        )?;
        match &self.body {
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                transfer,
                ..
            } => {
                write!(f, " last={last_log_index}/{last_log_term}")?;
                if *transfer {
                    f.write_str(" transfer")?;
                }
                Ok(())
            }
            MessageBody::TimeoutNow => Ok(()),
            MessageBody::RequestVoteResponse { vote_granted, .. } => {
                write!(f, " granted={vote_granted}")
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_round,
            } => {
                write!(
                    f,
                    " prev={prev_log_index}/{prev_log_term} commit={leader_commit} round={read_round} entries=["
                )?;
                match entries.len() {
                    0 => {}
                    1..=4 => {
                        for (i, e) in entries.iter().enumerate() {
                            if i > 0 {
                                f.write_str(" ")?;
                            }
                            write!(f, "{e}")?;
                        }
                    }
                    n => write!(f, "{}..{} ({n})", entries[0], entries[n - 1])?,
                }
                f.write_str("]")
            }
            MessageBody::InstallSnapshot {
                snapshot,
                read_round,
            } => write!(
                f,
                " snapshot={}/{} ({} bytes) round={read_round}",
                snapshot.index,
                snapshot.term,
                snapshot.data.len()
            ),
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                reject,
                read_round,
            } => {
                if *success {
                    write!(f, " ok match={match_index} round={read_round}")
                } else if let Some(h) = reject {
                    write!(
                        f,
                        " reject prev={} conflict={}/{} round={read_round}",
                        h.rejected_prev_index, h.conflict_index, h.conflict_term
                    )
                } else {
                    write!(f, " reject round={read_round}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;

    fn message(body: MessageBody) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body,
        }
    }

    #[test]
    fn message_display_is_one_transcript_line() {
        let entry = Entry {
            index: LogIndex(8),
            term: Term(3),
            kind: EntryKind::Command,
            data: Vec::new().into(),
        };
        let append = message(MessageBody::AppendEntries {
            prev_log_index: LogIndex(7),
            prev_log_term: Term(2),
            entries: vec![entry],
            leader_commit: LogIndex(7),
            read_round: 4,
        });
        assert_eq!(
            append.to_string(),
            "n1->n2 AppendEntries t3 prev=7/2 commit=7 round=4 entries=[8/3]"
        );
        let prevote = message(MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: LogIndex(9),
            last_log_term: Term(2),
            transfer: false,
        });
        assert_eq!(prevote.to_string(), "n1->n2 PreVote t3 last=9/2");
        let reject = message(MessageBody::AppendEntriesResponse {
            success: false,
            match_index: LogIndex(0),
            reject: Some(RejectHint {
                rejected_prev_index: LogIndex(7),
                conflict_term: Term(2),
                conflict_index: LogIndex(5),
            }),
            read_round: 4,
        });
        assert_eq!(
            reject.to_string(),
            "n1->n2 AppendEntriesResponse t3 reject prev=7 conflict=5/2 round=4"
        );
    }
}
