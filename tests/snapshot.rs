//! Snapshots and log compaction in the core (Raft paper, section 7): a
//! leader that compacted its log catches a lagging follower up with
//! InstallSnapshot, and a follower takes a snapshot safely whatever its log
//! holds.

use raftkit::raft::{
    Config, HardState, LogIndex, Message, MessageBody, NodeId, ProgressState, Raft, Role, Snapshot,
    Term,
};
use raftkit::sim::cluster::{log_of_terms, TestCluster};

fn propose(c: &mut TestCluster, leader: u64, n: usize) {
    for i in 0..n {
        c.raft(leader)
            .propose(format!("p{i}").into_bytes())
            .expect("leader");
        c.deliver_all(100_000);
    }
}

/// The leader snapshots at its commit index and drops its whole log.
fn compact_leader(c: &mut TestCluster, leader: u64, keep: u64) -> Snapshot {
    let r = c.raft(leader);
    let index = r.last_applied();
    let snap = Snapshot {
        membership: Default::default(),
        index,
        term: r.log().term_at(index).expect("held"),
        data: format!("state@{}", index.0).into_bytes().into(),
    };
    r.compact(snap.clone(), LogIndex(index.0 + 1 - keep));
    snap
}

fn installs_to(c: &TestCluster, to: u64) -> usize {
    c.delivered
        .iter()
        .filter(|m| m.to == NodeId(to) && matches!(m.body, MessageBody::InstallSnapshot { .. }))
        .count()
}

#[test]
fn lagging_follower_is_caught_up_with_a_snapshot_then_entries() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    c.isolate(3);
    propose(&mut c, 1, 10);
    let snap = compact_leader(&mut c, 1, 0);
    assert_eq!(c.node(1).raft.log().first_index(), snap.index.next());
    c.heal();
    propose(&mut c, 1, 3);
    c.tick_all(5);
    assert_eq!(installs_to(&c, 3), 1, "exactly one snapshot sent");
    let n3 = c.node(3);
    assert_eq!(n3.snapshot.as_ref(), Some(&snap));
    assert_eq!(n3.raft.log().offset(), snap.index);
    assert_eq!(
        n3.raft.log().last_index(),
        c.node(1).raft.log().last_index()
    );
    assert_eq!(n3.raft.commit_index(), c.node(1).raft.commit_index());
    // After the snapshot, only the entries past it were applied there.
    assert_eq!(
        n3.applied.first().map(|e| e.index),
        Some(snap.index.next()),
        "applies resume after the snapshot"
    );
    let st = c.node(1).raft.status();
    let p3 = st.peers.iter().find(|p| p.id == NodeId(3)).expect("peer");
    assert_eq!(p3.state, ProgressState::Replicate);
    assert_eq!(p3.match_index, c.node(1).raft.log().last_index());
}

#[test]
fn a_kept_window_spares_a_slightly_lagging_follower_the_snapshot() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    propose(&mut c, 1, 5);
    c.isolate(3);
    propose(&mut c, 1, 3);
    compact_leader(&mut c, 1, 5);
    c.heal();
    // Long enough for the leader to find the AppendEntries lost in the
    // partition and probe again.
    c.tick_all(30);
    assert_eq!(installs_to(&c, 3), 0);
    assert_eq!(
        c.node(3).raft.log().last_index(),
        c.node(1).raft.log().last_index()
    );
}

fn install(to: u64, term: u64, index: u64, snap_term: u64) -> Message {
    Message {
        from: NodeId(1),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                membership: Default::default(),
                index: LogIndex(index),
                term: Term(snap_term),
                data: b"s".to_vec().into(),
            },
            read_round: 7,
        },
    }
}

fn follower(log: &[u64], term: u64) -> Raft {
    let hs = HardState {
        current_term: Term(term),
        voted_for: None,
    };
    let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
    Raft::new(Config::new(NodeId(2), ids), hs, log_of_terms(log))
}

fn ack(msgs: &[Message]) -> Option<(bool, LogIndex)> {
    msgs.iter().find_map(|m| match m.body {
        MessageBody::AppendEntriesResponse {
            success,
            match_index,
            ..
        } => Some((success, match_index)),
        _ => None,
    })
}

#[test]
fn follower_whose_log_conflicts_at_the_snapshot_drops_its_log() {
    // Entries 3..5 of term 2 were never committed; the leader's snapshot
    // at 4 has term 3.
    let mut r = follower(&[1, 1, 2, 2, 2], 3);
    r.step(install(2, 3, 4, 3));
    let rd = r.ready();
    let snap = rd.snapshot.as_ref().expect("snapshot to persist");
    assert_eq!((snap.index, snap.term), (LogIndex(4), Term(3)));
    assert!(rd.entries.is_empty());
    assert!(rd.committed_entries.is_empty(), "the snapshot is the state");
    // The acknowledgement waits for the snapshot to be durable.
    assert_eq!(ack(&rd.messages), None);
    assert_eq!(ack(&rd.messages_after_persist), Some((true, LogIndex(4))));
    assert_eq!(r.log().last_index(), LogIndex(4));
    assert_eq!(r.log().last_term(), Term(3));
    assert!(r.log().entries().is_empty());
    assert_eq!(
        (r.commit_index(), r.last_applied()),
        (LogIndex(4), LogIndex(4))
    );
    assert_eq!(r.leader(), Some(NodeId(1)));
}

#[test]
fn follower_that_holds_the_snapshot_entry_keeps_what_follows() {
    let mut r = follower(&[1, 1, 2, 2, 2], 2);
    r.step(install(2, 2, 3, 2));
    let rd = r.ready();
    assert!(rd.snapshot.is_some());
    assert_eq!(ack(&rd.messages_after_persist), Some((true, LogIndex(3))));
    assert_eq!(r.log().first_index(), LogIndex(4));
    assert_eq!(r.log().last_index(), LogIndex(5));
    assert_eq!(r.commit_index(), LogIndex(3));
}

#[test]
fn stale_snapshot_is_acknowledged_and_changes_nothing() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    propose(&mut c, 1, 4);
    let commit = c.node(2).raft.commit_index();
    let last = c.node(2).raft.log().last_index();
    let term = c.node(1).raft.current_term().0;
    c.raft(2).step(install(2, term, commit.0 - 1, 1));
    let rd = c.raft(2).ready();
    assert!(rd.snapshot.is_none());
    assert_eq!(
        ack(&rd.messages_after_persist),
        Some((true, LogIndex(commit.0 - 1)))
    );
    assert_eq!(c.node(2).raft.log().last_index(), last);
    assert_eq!(c.node(2).raft.commit_index(), commit);
}

#[test]
fn node_restarted_from_a_snapshot_leads_and_catches_up_an_empty_follower() {
    let snap = Snapshot {
        membership: Default::default(),
        index: LogIndex(6),
        term: Term(2),
        data: b"state@6".to_vec().into(),
    };
    let hs = HardState {
        current_term: Term(2),
        voted_for: None,
    };
    let mut c = TestCluster::with_logs(
        vec![(2, Vec::new()), (0, Vec::new()), (0, Vec::new())],
        |_| {},
    );
    let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
    let entries = log_of_terms(&[1, 1, 2, 2, 2, 2, 2, 2])[6..].to_vec();
    let r1 = Raft::restore(
        Config::new(NodeId(1), ids),
        hs,
        Some(snap.clone()),
        entries.clone(),
    );
    assert_eq!(r1.commit_index(), LogIndex(6));
    assert_eq!(r1.last_applied(), LogIndex(6));
    assert_eq!(r1.log().last_index(), LogIndex(8));
    let n1 = c.nodes.get_mut(&NodeId(1)).expect("n1");
    n1.raft = r1;
    n1.disk = entries;
    n1.snapshot = Some(snap.clone());
    assert!(c.elect(1));
    propose(&mut c, 1, 2);
    c.tick_all(3);
    for id in [2, 3] {
        assert_eq!(installs_to(&c, id), 1);
        let n = c.node(id);
        assert_eq!(n.snapshot.as_ref(), Some(&snap));
        assert_eq!(n.raft.log().last_index(), LogIndex(11));
        assert_eq!(n.raft.commit_index(), LogIndex(11));
        assert_eq!(n.raft.role(), Role::Follower);
    }
}
