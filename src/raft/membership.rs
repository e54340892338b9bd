//! Who belongs to the cluster: voters, learners, and while a change is
//! under way the old voters too (joint consensus, Raft paper section 6).
//!
//! A membership is a log entry (`EntryKind::ConfChange`) holding the whole
//! new membership, not a delta: a server uses the newest one in its log,
//! committed or not, and goes back to the one before when a conflict cuts
//! it away. A change of voters goes through a joint membership, in which
//! elections and commitment need a majority of the old voters and a
//! majority of the new ones; the leader appends the membership that leaves
//! the joint state once the joint one commits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::codec::{put_bool, put_bytes, put_u32, put_u64, put_u8, DecodeError, Reader};

use super::types::{LogIndex, NodeId};

/// Longest address a membership records for a member.
pub const MEMBER_ADDR_BYTES_MAX: usize = 256;
/// Most members (voters, old voters and learners together) a membership
/// may hold.
pub const MEMBERS_MAX: usize = 64;
/// Most bytes a membership's encoding takes.
pub const MEMBERSHIP_BYTES_MAX: usize =
    1 + 3 * (4 + MEMBERS_MAX * 8) + 4 + MEMBERS_MAX * (8 + 4 + MEMBER_ADDR_BYTES_MAX) + 1;

/// The members of the cluster at one point of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// The voters (the new ones, while joint).
    pub voters: BTreeSet<NodeId>,
    /// While joint: the voters before the change; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Members that receive the log and count for nothing.
    pub learners: BTreeSet<NodeId>,
    /// Each member's address (`host:port`), so that nodes and tools find a
    /// member added with an address their cluster.toml does not list.
    pub addrs: BTreeMap<NodeId, String>,
}

/// What a vote count says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// A change an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a voter (through a joint membership) or a learner.
    Add {
        id: NodeId,
        addr: String,
        learner: bool,
    },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Remove a voter (through a joint membership) or a learner.
    Remove { id: NodeId },
}

impl fmt::Display for ConfChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfChange::Add {
                id,
                addr,
                learner: true,
            } => write!(f, "add learner {id} at {addr}"),
            ConfChange::Add { id, addr, .. } => write!(f, "add voter {id} at {addr}"),
            ConfChange::Promote { id } => write!(f, "promote {id}"),
            ConfChange::Remove { id } => write!(f, "remove {id}"),
        }
    }
}

fn majority_of(set: &BTreeSet<NodeId>, yes: &impl Fn(NodeId) -> bool) -> bool {
    // An empty set has no majority: a node that belongs to no membership
    // never wins anything.
    !set.is_empty() && set.iter().filter(|&&id| yes(id)).count() > set.len() / 2
}

/// The highest index stored on a majority of `set`.
fn quorum_index(set: &BTreeSet<NodeId>, index_of: &impl Fn(NodeId) -> LogIndex) -> LogIndex {
    if set.is_empty() {
        return LogIndex(0);
    }
    let mut v: Vec<LogIndex> = set.iter().map(|&id| index_of(id)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v[set.len() / 2]
}

impl Membership {
    /// `voters` as a settled (non-joint) membership, without addresses.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// Whether a change of voters is under way.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// A voter of either half: it campaigns and its vote counts.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member: voters of both halves and learners, in id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .copied()
            .collect()
    }

    /// Whether the members for which `yes` holds are a quorum: a majority
    /// of the voters and, while joint, a majority of the old voters too.
    pub fn has_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        majority_of(&self.voters, &yes)
            && (self.outgoing.is_empty() || majority_of(&self.outgoing, &yes))
    }

    /// The highest index stored on a quorum, given each voter's index.
    pub fn committed_index(&self, index_of: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let new = quorum_index(&self.voters, &index_of);
        if self.outgoing.is_empty() {
            new
        } else {
            new.min(quorum_index(&self.outgoing, &index_of))
        }
    }

    /// The outcome of an election with these votes (true: granted).
    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let granted = |id| votes.get(&id) == Some(&true);
        if self.has_quorum(granted) {
            return VoteResult::Won;
        }
        // Lost once the votes still out cannot make a quorum.
        let could = |id| votes.get(&id) != Some(&false);
        if self.has_quorum(could) {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }

    /// The membership `change` leads to from this settled one, or why it
    /// cannot be made. A change of voters gives a joint membership; a
    /// change of learners alone takes effect directly (it moves no quorum).
    pub fn apply_change(&self, change: &ConfChange) -> Result<Membership, String> {
        if self.is_joint() {
            return Err("a membership change is in progress".into());
        }
        let mut next = self.clone();
        match change {
            ConfChange::Add { id, addr, learner } => {
                if self.contains(*id) {
                    let role = if self.is_learner(*id) {
                        "learner"
                    } else {
                        "voter"
                    };
                    return Err(format!("{id} is already a member (a {role})"));
                }
                if addr.is_empty() || addr.len() > MEMBER_ADDR_BYTES_MAX {
                    return Err(format!(
                        "{id}'s address must be 1 to {MEMBER_ADDR_BYTES_MAX} bytes"
                    ));
                }
                if self.members().len() >= MEMBERS_MAX {
                    return Err(format!("the cluster already has {MEMBERS_MAX} members"));
                }
                next.addrs.insert(*id, addr.clone());
                if *learner {
                    next.learners.insert(*id);
                    return Ok(next);
                }
                next.voters.insert(*id);
            }
            ConfChange::Promote { id } => {
                if !self.is_learner(*id) {
                    return Err(format!("{id} is not a learner"));
                }
                next.learners.remove(id);
                next.voters.insert(*id);
            }
            ConfChange::Remove { id } => {
                if self.is_learner(*id) {
                    next.learners.remove(id);
                    next.addrs.remove(id);
                    return Ok(next);
                }
                if !self.voters.contains(id) {
                    return Err(format!("{id} is not a member"));
                }
                if self.voters.len() == 1 {
                    return Err(format!("{id} is the last voter"));
                }
                next.voters.remove(id);
            }
        }
        next.outgoing = self.voters.clone();
        Ok(next)
    }

    /// The settled membership that ends this joint one: the new voters,
    /// without the addresses of the members that left.
    pub fn leave_joint(&self) -> Membership {
        let mut next = self.clone();
        next.outgoing.clear();
        let members = next.members();
        next.addrs.retain(|id, _| members.contains(id));
        next
    }

    /// Encodes the membership (big-endian, as a ConfChange entry's data;
    /// docs/PROTOCOL.md): voters, old voters, learners, then addresses.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u8(out, 1); // format version
        for set in [&self.voters, &self.outgoing, &self.learners] {
            put_u32(out, set.len() as u32);
            for id in set {
                put_u64(out, id.0);
            }
        }
        put_u32(out, self.addrs.len() as u32);
        for (id, addr) in &self.addrs {
            put_u64(out, id.0);
            put_bytes(out, addr.as_bytes());
        }
        put_bool(out, false); // reserved: no extension follows
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes what `encode` wrote; a membership that could not have been
    /// made (a node both voter and learner, too many members) is refused.
    pub fn decode(r: &mut Reader<'_>) -> Result<Membership, DecodeError> {
        let version = r.u8("membership.version")?;
        if version != 1 {
            return Err(DecodeError::BadTag {
                field: "membership.version",
                tag: version as u64,
            });
        }
        let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
        for set in sets.iter_mut() {
            let n = r.count("membership.ids", 8)?;
            for _ in 0..n {
                set.insert(NodeId(r.u64("membership.id")?));
            }
        }
        let [voters, outgoing, learners] = sets;
        let n = r.count("membership.addrs", 12)?;
        let mut addrs = BTreeMap::new();
        for _ in 0..n {
            let id = NodeId(r.u64("membership.addr.id")?);
            addrs.insert(id, r.string("membership.addr")?);
        }
        if r.bool("membership.extension")? {
            return Err(DecodeError::BadTag {
                field: "membership.extension",
                tag: 1,
            });
        }
        let m = Membership {
            voters,
            outgoing,
            learners,
            addrs,
        };
        let voter_learner = m.learners.iter().any(|&l| m.is_voter(l));
        let stray_addr = m
            .addrs
            .iter()
            .any(|(id, a)| !m.contains(*id) || a.len() > MEMBER_ADDR_BYTES_MAX);
        if voter_learner || stray_addr || m.members().len() > MEMBERS_MAX {
            return Err(DecodeError::BadTag {
                field: "membership",
                tag: m.members().len() as u64,
            });
        }
        Ok(m)
    }

    pub fn from_bytes(b: &[u8]) -> Result<Membership, DecodeError> {
        let mut r = Reader::new(b);
        let m = Membership::decode(&mut r)?;
        r.finish()?;
        Ok(m)
    }
}

fn ids(set: &BTreeSet<NodeId>) -> String {
    let v: Vec<String> = set.iter().map(|id| id.to_string()).collect();
    v.join(",")
}

impl fmt::Display for Membership {
    /// `voters n1,n2,n4 (joint with n1,n2,n3) learners n5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters {}", ids(&self.voters))?;
        if self.is_joint() {
            write!(f, " (joint with {})", ids(&self.outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners {}", ids(&self.learners))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    #[test]
    fn joint_quorum_needs_both_majorities() {
        let m = Membership {
            voters: set(&[2, 3, 4]),
            outgoing: set(&[1, 2, 3]),
            ..Membership::default()
        };
        // n3 and n4: a majority of the new voters only.
        assert!(!m.has_quorum(|id| id.0 == 3 || id.0 == 4));
        // n2 and n3: a majority of both.
        assert!(m.has_quorum(|id| id.0 == 2 || id.0 == 3));
        let idx = |id: NodeId| LogIndex([0, 9, 5, 7, 8][id.0 as usize]);
        // new {5,7,8} -> 7; old {9,5,7} -> 7
        assert_eq!(m.committed_index(idx), LogIndex(7));
        let idx = |id: NodeId| LogIndex([0, 1, 1, 7, 8][id.0 as usize]);
        // new {1,7,8} -> 7; old {1,1,7} -> 1
        assert_eq!(m.committed_index(idx), LogIndex(1));
    }

    #[test]
    fn an_empty_membership_never_has_a_quorum() {
        let m = Membership::default();
        assert!(!m.has_quorum(|_| true));
        assert_eq!(m.committed_index(|_| LogIndex(5)), LogIndex(0));
        assert_eq!(m.vote_result(&BTreeMap::new()), VoteResult::Lost);
    }

    #[test]
    fn votes_are_won_lost_or_pending() {
        let m = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(1), true);
        assert_eq!(m.vote_result(&votes), VoteResult::Pending);
        votes.insert(NodeId(2), false);
        assert_eq!(m.vote_result(&votes), VoteResult::Pending);
        votes.insert(NodeId(3), false);
        assert_eq!(m.vote_result(&votes), VoteResult::Lost);
        votes.insert(NodeId(3), true);
        assert_eq!(m.vote_result(&votes), VoteResult::Won);
        // A learner's or a stranger's vote counts for nothing.
        let mut votes = BTreeMap::new();
        votes.insert(NodeId(1), true);
        votes.insert(NodeId(9), true);
        assert_eq!(m.vote_result(&votes), VoteResult::Pending);
    }

    #[test]
    fn changes_of_voters_go_joint_and_learners_do_not() {
        let mut m = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
        m.addrs.insert(NodeId(1), "a:1".into());
        let add = ConfChange::Add {
            id: NodeId(4),
            addr: "h:4".into(),
            learner: true,
        };
        let l = m.apply_change(&add).expect("add learner");
        assert!(!l.is_joint() && l.is_learner(NodeId(4)));
        assert!(l.apply_change(&add).is_err(), "added twice");
        let p = l
            .apply_change(&ConfChange::Promote { id: NodeId(4) })
            .expect("promote");
        assert!(p.is_joint());
        assert_eq!(p.outgoing, set(&[1, 2, 3]));
        assert_eq!(p.voters, set(&[1, 2, 3, 4]));
        assert!(p
            .apply_change(&ConfChange::Remove { id: NodeId(1) })
            .is_err());
        let settled = p.leave_joint();
        let r = settled
            .apply_change(&ConfChange::Remove { id: NodeId(1) })
            .expect("remove");
        assert_eq!(r.voters, set(&[2, 3, 4]));
        let done = r.leave_joint();
        assert!(!done.contains(NodeId(1)));
        assert!(!done.addrs.contains_key(&NodeId(1)), "its address goes");
        assert!(Membership::new([NodeId(1)])
            .apply_change(&ConfChange::Remove { id: NodeId(1) })
            .is_err());
    }

    #[test]
    fn encoding_round_trips_and_refuses_impossible_memberships() {
        let mut m = Membership {
            voters: set(&[2, 3, 4]),
            outgoing: set(&[1, 2, 3]),
            learners: set(&[5]),
            ..Membership::default()
        };
        m.addrs.insert(NodeId(4), "127.0.0.1:7004".into());
        let b = m.to_bytes();
        assert_eq!(Membership::from_bytes(&b).expect("decodes"), m);
        for cut in 0..b.len() {
            assert!(Membership::from_bytes(&b[..cut]).is_err());
        }
        m.learners.insert(NodeId(2));
        assert!(Membership::from_bytes(&m.to_bytes()).is_err());
        assert_eq!(
            m.to_string(),
            "voters n2,n3,n4 (joint with n1,n2,n3) learners n2,n5"
        );
    }
}
