//! Membership changes in the pure core (Raft paper section 6, thesis
//! chapter 4 and section 3.10), on the deterministic test cluster: joint
//! consensus needs both majorities, learners count for nothing, one change
//! at a time, leadership transfer, a removed leader steps down, and the
//! membership survives restarts, conflicts and snapshots.

use std::sync::Arc;

use raftkit::raft::{
    ConfChange, ConfChangeError, EntryKind, LogIndex, Membership, MessageBody, NodeId, Role,
    Snapshot,
};
use raftkit::sim::cluster::TestCluster;

fn ids(v: &[u64]) -> std::collections::BTreeSet<NodeId> {
    v.iter().map(|&i| NodeId(i)).collect()
}

fn add(id: u64, learner: bool) -> ConfChange {
    ConfChange::Add {
        id: NodeId(id),
        addr: format!("127.0.0.1:{}", 7000 + id),
        learner,
    }
}

/// Three voters led by n1, plus non-member nodes `extra` (empty, not in
/// the initial membership).
fn cluster(extra: &[u64]) -> TestCluster {
    let mut c = TestCluster::new(3);
    for &id in extra {
        c.add_node(id, |_| {});
    }
    assert!(c.elect(1));
    c
}

fn propose(c: &mut TestCluster, id: u64, n: usize) {
    for i in 0..n {
        c.raft(id).propose(vec![i as u8]).expect("leader accepts");
    }
    c.deliver_all(1_000_000);
}

fn refused(r: Result<LogIndex, ConfChangeError>) -> String {
    match r {
        Err(ConfChangeError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn membership_a_non_member_waits_quietly() {
    let mut c = cluster(&[4]);
    c.isolate(4);
    c.tick_all(200);
    let n4 = &c.node(4).raft;
    assert_eq!(n4.role(), Role::Follower);
    assert_eq!(n4.current_term().0, 0, "it never campaigned");
    assert!(!c.delivered.iter().any(|m| m.from == NodeId(4)));
}

#[test]
fn membership_joint_consensus_needs_both_majorities() {
    let mut c = cluster(&[4, 5]);
    c.raft(1)
        .propose_conf_change(&add(4, false))
        .expect("first change");
    // Joint: old {1,2,3}, new {1,2,3,4}. Cut n2 and n3: n1 and n4 are a
    // majority of neither half.
    c.isolate(2);
    c.isolate(3);
    c.deliver_all(100_000);
    let m = c.node(1).raft.membership().clone();
    assert!(m.is_joint());
    assert_eq!(m.outgoing, ids(&[1, 2, 3]));
    assert_eq!(m.voters, ids(&[1, 2, 3, 4]));
    let joint_index = c.node(1).raft.membership_index();
    assert!(c.node(1).raft.commit_index() < joint_index);
    // A second change meanwhile is refused, not queued.
    let why = refused(c.raft(1).propose_conf_change(&add(5, true)));
    assert!(why.contains("in progress"), "{why}");
    c.heal();
    // Messages lost to the cut are found lost after an election timeout
    // of heartbeats, then sent again.
    c.tick_all(15);
    // The joint entry committed, and the leader left the joint state by
    // itself; the settled membership committed too.
    let r = &c.node(1).raft;
    assert!(!r.membership().is_joint(), "{}", r.membership());
    assert_eq!(r.membership().voters, ids(&[1, 2, 3, 4]));
    assert!(r.commit_index() >= r.membership_index());
    assert!(!r.membership_changing());
    for id in [2, 3, 4] {
        assert_eq!(c.node(id).raft.membership(), r.membership(), "n{id}");
    }
    // Now a change goes through.
    c.raft(1).propose_conf_change(&add(5, true)).expect("next");
}

#[test]
fn membership_old_majority_alone_cannot_commit_a_joint_entry() {
    // Replacing n3 by n4: old {1,2,3}, new {1,2,4}. With n2 and n3 cut
    // off, n1 and n4 hold a majority of the new voters only.
    let mut c = cluster(&[4]);
    c.raft(1)
        .propose_conf_change(&add(4, true))
        .expect("learner");
    c.tick_all(3);
    c.raft(1)
        .propose_conf_change(&ConfChange::Promote { id: NodeId(4) })
        .expect("promote");
    c.tick_all(3);
    c.raft(1)
        .propose_conf_change(&ConfChange::Remove { id: NodeId(3) })
        .expect("remove");
    c.isolate(2);
    c.isolate(3);
    c.deliver_all(100_000);
    let r = &c.node(1).raft;
    assert_eq!(r.membership().voters, ids(&[1, 2, 4]));
    assert!(r.membership().is_joint());
    assert!(
        r.commit_index() < r.membership_index(),
        "needs n2 or n3 too"
    );
}

#[test]
fn membership_learner_gets_the_log_and_counts_for_nothing() {
    let mut c = cluster(&[4]);
    c.raft(1).propose_conf_change(&add(4, true)).expect("add");
    c.tick_all(3);
    propose(&mut c, 1, 5);
    c.tick_all(2);
    assert_eq!(c.terms(4), c.terms(1), "the learner has the whole log");
    assert_eq!(c.node(4).raft.commit_index(), c.node(1).raft.commit_index());
    // With both other voters gone, leader and learner commit nothing.
    c.isolate(2);
    c.isolate(3);
    let before = c.node(1).raft.commit_index();
    c.raft(1).propose(vec![9]).expect("leader");
    c.deliver_all(100_000);
    assert_eq!(c.node(1).raft.commit_index(), before);
    // Nor does a learner campaign when the leader goes quiet.
    c.isolate(1);
    c.tick_all(100);
    assert_eq!(c.node(4).raft.role(), Role::Follower);
    assert!(!c
        .delivered
        .iter()
        .any(|m| m.from == NodeId(4) && matches!(m.body, MessageBody::RequestVote { .. })));
}

#[test]
fn membership_promotion_of_a_learner_far_behind_is_refused_with_its_lag() {
    let mut c = TestCluster::with_logs(vec![(0, vec![]); 3], |cfg| cfg.promote_lag_entries_max = 5);
    c.add_node(4, |cfg| cfg.promote_lag_entries_max = 5);
    assert!(c.elect(1));
    c.raft(1).propose_conf_change(&add(4, true)).expect("add");
    c.tick_all(3);
    c.isolate(4);
    propose(&mut c, 1, 10);
    let why = refused(
        c.raft(1)
            .propose_conf_change(&ConfChange::Promote { id: NodeId(4) }),
    );
    assert!(why.contains("n4 is 10 entries behind"), "{why}");
    c.heal();
    c.tick_all(15);
    c.raft(1)
        .propose_conf_change(&ConfChange::Promote { id: NodeId(4) })
        .expect("caught up");
}

#[test]
fn membership_change_waits_for_an_entry_of_the_leaders_term() {
    let mut c = TestCluster::new(3);
    // Elect n1 but lose every acknowledgement of its no-op.
    c.filter = Some(|m| !matches!(m.body, MessageBody::AppendEntriesResponse { .. }));
    assert!(c.elect(1));
    let why = refused(c.raft(1).propose_conf_change(&add(4, true)));
    assert!(
        why.contains("not yet committed an entry of its term"),
        "{why}"
    );
    c.filter = None;
    c.tick_all(3);
    c.raft(1).propose_conf_change(&add(4, true)).expect("now");
}

#[test]
fn membership_changes_that_cannot_be_made_are_refused() {
    let mut c = cluster(&[]);
    for (change, want) in [
        (add(2, false), "already a member"),
        (ConfChange::Promote { id: NodeId(2) }, "not a learner"),
        (ConfChange::Remove { id: NodeId(9) }, "not a member"),
    ] {
        let why = refused(c.raft(1).propose_conf_change(&change));
        assert!(why.contains(want), "{change}: {why}");
    }
    assert!(matches!(
        c.raft(2).propose_conf_change(&add(4, true)),
        Err(ConfChangeError::NotLeader(_))
    ));
}

#[test]
fn membership_leadership_transfer_hands_over_at_once() {
    let mut c = cluster(&[]);
    propose(&mut c, 1, 3);
    let term = c.node(1).raft.current_term();
    c.raft(1).transfer_leadership(NodeId(3)).expect("transfer");
    // Proposals wait for the next leader meanwhile.
    assert!(c.raft(1).propose(vec![1]).is_err());
    c.deliver_all(100_000);
    assert_eq!(c.node(3).raft.role(), Role::Leader);
    assert_eq!(c.node(3).raft.current_term(), term.next());
    assert_eq!(c.node(1).raft.role(), Role::Follower);
    // No election timeout passed: TimeoutNow, then one election that the
    // voters joined although they had just heard from n1 (leader lease).
    assert!(c
        .delivered
        .iter()
        .any(|m| matches!(m.body, MessageBody::TimeoutNow)));
    c.raft(3).propose(vec![2]).expect("new leader");
}

#[test]
fn membership_transfer_to_an_unreachable_node_times_out_and_the_leader_resumes() {
    let mut c = cluster(&[]);
    c.isolate(3);
    c.raft(1).transfer_leadership(NodeId(3)).expect("transfer");
    assert!(c.raft(1).propose(vec![1]).is_err());
    c.tick_all(25); // past the election timeout maximum of 20 ticks
    assert_eq!(c.node(1).raft.role(), Role::Leader);
    assert_eq!(c.node(1).raft.lead_transferee(), None);
    c.raft(1).propose(vec![1]).expect("leading on");
    // A learner cannot be the target.
    let mut c = cluster(&[4]);
    c.raft(1).propose_conf_change(&add(4, true)).expect("add");
    c.tick_all(3);
    assert!(matches!(
        c.raft(1).transfer_leadership(NodeId(4)),
        Err(ConfChangeError::Refused(_))
    ));
}

#[test]
fn membership_removed_leader_steps_down_after_handing_over() {
    let mut c = cluster(&[]);
    propose(&mut c, 1, 2);
    c.raft(1)
        .propose_conf_change(&ConfChange::Remove { id: NodeId(1) })
        .expect("remove the leader");
    c.tick_all(4);
    let r1 = &c.node(1).raft;
    assert_eq!(r1.role(), Role::Follower);
    assert!(!r1.membership().contains(NodeId(1)));
    let leader = [2, 3]
        .into_iter()
        .find(|&id| c.node(id).raft.role() == Role::Leader)
        .expect("a remaining voter leads without waiting for an election timeout");
    assert_eq!(c.node(leader).raft.membership().voters, ids(&[2, 3]));
    // The removed node, left running, never campaigns and the cluster's
    // term does not move.
    let term = c.node(leader).raft.current_term();
    c.tick_all(200);
    assert_eq!(c.node(leader).raft.current_term(), term);
    assert_eq!(c.node(leader).raft.role(), Role::Leader);
}

#[test]
fn membership_removed_node_that_missed_its_removal_does_not_disturb() {
    let mut c = cluster(&[]);
    propose(&mut c, 1, 2);
    // n3 is cut off before it hears it is removed; it keeps campaigning
    // with PreVote, which the others refuse (their log is ahead and they
    // hear from their leader).
    c.isolate(3);
    c.raft(1)
        .propose_conf_change(&ConfChange::Remove { id: NodeId(3) })
        .expect("remove");
    c.tick_all(4);
    assert_eq!(c.node(1).raft.membership().voters, ids(&[1, 2]));
    assert!(!c.node(1).raft.membership_changing());
    let term = c.node(1).raft.current_term();
    c.heal();
    c.tick_all(300);
    assert_eq!(c.node(1).raft.role(), Role::Leader);
    assert_eq!(c.node(1).raft.current_term(), term);
}

#[test]
fn membership_is_restored_from_the_log_on_restart() {
    let mut c = cluster(&[4]);
    c.raft(1).propose_conf_change(&add(4, true)).expect("add");
    c.tick_all(3);
    c.raft(1)
        .propose_conf_change(&ConfChange::Promote { id: NodeId(4) })
        .expect("promote");
    c.tick_all(4);
    let want = c.node(1).raft.membership().clone();
    assert_eq!(want.voters, ids(&[1, 2, 3, 4]));
    for id in 1..=4 {
        c.restart(id);
        assert_eq!(c.node(id).raft.membership(), &want, "n{id}");
    }
    // n4, a member now, campaigns and can win after a restart.
    c.tick_all(60);
    assert!((1..=4).any(|id| c.node(id).raft.role() == Role::Leader));
}

#[test]
fn membership_cut_by_a_conflict_is_undone() {
    let mut c = cluster(&[4]);
    propose(&mut c, 1, 1);
    // n1 appends a change no one else gets, then loses leadership.
    c.isolate(1);
    c.raft(1).propose_conf_change(&add(4, true)).expect("add");
    c.deliver_all(100_000);
    assert!(c.node(1).raft.membership().contains(NodeId(4)));
    // n2 and n3 elect a leader once their lease on n1 runs out.
    c.tick_all(40);
    let leader = [2, 3]
        .into_iter()
        .find(|&id| c.node(id).raft.role() == Role::Leader)
        .expect("n2 or n3 leads");
    propose(&mut c, leader, 2);
    c.heal();
    c.tick_all(15);
    // n2's log replaced the entry: n1's membership is the old one again.
    let r1 = &c.node(1).raft;
    assert_eq!(r1.role(), Role::Follower);
    assert_eq!(r1.membership(), c.node(leader).raft.membership());
    assert!(!r1.membership().contains(NodeId(4)));
    assert!(!r1
        .log()
        .entries()
        .iter()
        .any(|e| e.kind == EntryKind::ConfChange));
}

#[test]
fn membership_travels_in_snapshots() {
    let mut c = cluster(&[4, 5]);
    c.raft(1).propose_conf_change(&add(4, true)).expect("add");
    c.tick_all(3);
    propose(&mut c, 1, 3);
    let r = c.raft(1);
    let applied = r.last_applied();
    let snap = Snapshot {
        index: applied,
        term: r.log().term_at(applied).expect("in log"),
        membership: r.membership_at(applied),
        data: Arc::<[u8]>::from(&b"state"[..]).into(),
    };
    assert!(snap.membership.is_learner(NodeId(4)));
    r.compact(snap, applied.next());
    // n5, added now, can only get the snapshot: it learns the membership
    // from it.
    c.raft(1)
        .propose_conf_change(&add(5, true))
        .expect("add n5");
    c.tick_all(6);
    let n5 = &c.node(5).raft;
    assert!(n5.membership().is_learner(NodeId(5)));
    assert!(n5.membership().is_learner(NodeId(4)));
    assert!(c.node(5).snapshot.is_some(), "it got the snapshot");
    c.restart(5);
    assert_eq!(
        c.node(5).raft.membership(),
        c.node(1).raft.membership(),
        "restored from the snapshot and the log after it"
    );
    // A snapshot without a membership (an older file) means the
    // bootstrap one.
    assert_eq!(
        Membership::new([NodeId(1), NodeId(2), NodeId(3)]).voters,
        ids(&[1, 2, 3])
    );
}
