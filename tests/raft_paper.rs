//! Scenario tests from the Raft paper (Figures 6, 7 and 8) and one test per
//! safety rule, on the deterministic core driven by a hand-run network.

use raftkit::raft::{
    Config, Entry, EntryKind, HardState, LogIndex, Message, MessageBody, NodeId, Raft, Role, Term,
};
use raftkit::sim::cluster::{log_of_terms, TestCluster};

fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

fn core(id: u64, n: u64, term: u64, log: &[u64]) -> Raft {
    let hs = HardState {
        current_term: Term(term),
        voted_for: None,
    };
    Raft::new(Config::new(NodeId(id), ids(n)), hs, log_of_terms(log))
}

fn request_vote(from: u64, to: u64, term: u64, last_index: u64, last_term: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: LogIndex(last_index),
            last_log_term: Term(last_term),
            transfer: false,
        },
    }
}

fn granted(rd: &raftkit::raft::Ready) -> Option<bool> {
    rd.messages_after_persist
        .iter()
        .chain(rd.messages.iter())
        .find_map(|m| match m.body {
            MessageBody::RequestVoteResponse { vote_granted, .. } => Some(vote_granted),
            _ => None,
        })
}

// ---- Figure 7 ---------------------------------------------------------------

/// Figure 7: a term-8 leader and followers (a)-(f) with exactly the logs of
/// the figure. After replication every follower's log equals the leader's,
/// each repaired in at most (conflicting terms + 2) AppendEntries round trips.
#[test]
fn figure7_leader_repairs_every_follower() {
    let leader = vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: Vec<(&str, Vec<u64>)> = vec![
        ("a", vec![1, 1, 1, 4, 4, 5, 5, 6, 6]),
        ("b", vec![1, 1, 1, 4]),
        ("c", vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        ("d", vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        ("e", vec![1, 1, 1, 4, 4, 4, 4]),
        ("f", vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    let mut logs = vec![(7, log_of_terms(&leader))];
    for (_, f) in &followers {
        logs.push((7, log_of_terms(f)));
    }
    let mut c = TestCluster::with_logs(logs, |_| {});
    assert!(
        c.elect(1),
        "the figure's leader wins term 8 with votes of a, b, e, f"
    );
    assert_eq!(c.node(1).raft.current_term(), Term(8));
    c.deliver_all(100_000);

    let want = c.terms(1);
    let mut expected = leader.clone();
    expected.push(8); // the new leader's no-op
    assert_eq!(want, expected);
    for (i, (name, f)) in followers.iter().enumerate() {
        let id = i as u64 + 2;
        assert_eq!(c.terms(id), want, "follower ({name}) equals the leader");
        let conflicting_terms: std::collections::BTreeSet<u64> = f
            .iter()
            .enumerate()
            .filter(|(j, t)| want.get(*j) != Some(*t))
            .map(|(_, t)| *t)
            .collect();
        let round_trips = c.append_entries_to(id);
        assert!(
            round_trips <= conflicting_terms.len() + 2,
            "follower ({name}) took {round_trips} round trips for {} conflicting terms",
            conflicting_terms.len()
        );
    }
    c.tick_all(2); // heartbeats carry the leader's commit index
    for id in 1..=7 {
        assert_eq!(
            c.node(id).raft.commit_index(),
            LogIndex(11),
            "n{id} commits everything"
        );
    }
}

// ---- Figure 8 ---------------------------------------------------------------

/// Drops a new leader's term-4 entries: S1's no-op never leaves it, as in
/// Figure 8 (c).
fn strip_term4_entries(m: &mut Message) -> bool {
    if let MessageBody::AppendEntries { entries, .. } = &mut m.body {
        entries.retain(|e| e.term != Term(4));
    }
    true
}

fn figure8_cluster() -> TestCluster {
    // (c): S1 is leader of term 4; index 2 of term 2 is on S1, S2, S3 (a
    // majority); S5 holds index 2 of term 3.
    let logs = vec![
        (3, log_of_terms(&[1, 2])),
        (3, log_of_terms(&[1, 2])),
        (3, log_of_terms(&[1, 2])),
        (3, log_of_terms(&[1])),
        (3, log_of_terms(&[1, 3])),
    ];
    // No leader lease: this figure is about the commit rule alone.
    TestCluster::with_logs(logs, |c| c.check_quorum = false)
}

/// Figure 8: an entry of an earlier term replicated on a majority is never
/// counted as committed by a later leader, and when a newer leader
/// overwrites it, it was never applied anywhere.
#[test]
fn figure8_old_term_entry_on_majority_is_not_committed() {
    let mut c = figure8_cluster();
    c.filter = Some(strip_term4_entries);
    // S5 is down while S1 leads term 4.
    c.cut.insert((NodeId(1), NodeId(5)));
    c.cut.insert((NodeId(5), NodeId(1)));
    assert!(c.elect(1), "S1 wins term 4 with S2, S3, S4");
    c.tick_all(3); // heartbeats: S2 and S3 acknowledge index 2
    let s1 = c.node(1).raft.status();
    let on_majority = s1
        .peers
        .iter()
        .filter(|p| p.match_index >= LogIndex(2))
        .count()
        + 1;
    assert!(on_majority >= 3, "index 2 is on a majority: {s1:?}");
    assert_eq!(
        c.node(1).raft.commit_index(),
        LogIndex(0),
        "S1 must not commit index 2 of term 2"
    );

    // (d): S1 crashes; S5 wins term 5 and overwrites index 2 everywhere.
    c.filter = None;
    c.isolate(1);
    // S5 is still at term 3: its first pre-vote (for term 4) is refused and
    // teaches it the current term; the next one, for term 5, succeeds.
    assert!(!c.elect(5));
    assert!(c.elect(5), "S5 wins term 5 with S2, S3, S4");
    c.deliver_all(100_000);
    c.heal();
    c.tick_all(20);
    for id in 1..=5 {
        assert_eq!(c.terms(id)[1], 3, "S{id} holds S5's entry at index 2");
        for e in &c.node(id).applied {
            assert!(
                !(e.index == LogIndex(2) && e.term == Term(2)),
                "S{id} applied the overwritten entry"
            );
        }
        assert!(
            c.node(id).applied.len() >= 3,
            "S{id} applied the new leader's entries"
        );
    }
}

/// Figure 8 (e): once the leader's own-term entry is on a majority, the
/// earlier entry commits with it and S5 can no longer win.
#[test]
fn figure8_current_term_entry_commits_earlier_ones() {
    let mut c = figure8_cluster();
    // S1 reaches S2, S3 (and S4) but never S5.
    c.cut.insert((NodeId(1), NodeId(5)));
    c.cut.insert((NodeId(5), NodeId(1)));
    assert!(c.elect(1));
    c.tick_all(3);
    assert_eq!(
        c.node(1).raft.commit_index(),
        LogIndex(3),
        "no-op of term 4 commits index 2 too"
    );
    c.isolate(1);
    assert!(!c.elect(5), "S5's log is behind the committed entries");
}

// ---- Figure 6 ---------------------------------------------------------------

/// Figure 6: a leader brings four followers with different log lengths to an
/// identical log, and all commit and apply the same entries.
#[test]
fn figure6_followers_of_different_lengths_converge() {
    let leader = vec![1, 1, 1, 2, 3, 3, 3, 3];
    let logs = vec![
        (3, log_of_terms(&leader)),
        (3, log_of_terms(&[1, 1, 1, 2, 3])),
        (3, log_of_terms(&[1, 1, 1, 2, 3, 3, 3, 3])),
        (3, log_of_terms(&[1, 1])),
        (3, log_of_terms(&[1, 1, 1, 2, 3, 3, 3])),
    ];
    let mut c = TestCluster::with_logs(logs, |_| {});
    assert!(c.elect(1));
    for i in 0..5 {
        c.raft(1)
            .propose(format!("x{i}").into_bytes())
            .expect("leader");
    }
    c.deliver_all(100_000);
    c.tick_all(3);
    let want = c.terms(1);
    assert_eq!(want.len(), 8 + 1 + 5);
    let applied_1: Vec<(LogIndex, Term)> = c
        .node(1)
        .applied
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert_eq!(applied_1.len(), want.len());
    for id in 2..=5 {
        assert_eq!(c.terms(id), want, "n{id} log");
        let applied: Vec<(LogIndex, Term)> = c
            .node(id)
            .applied
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(applied, applied_1, "n{id} applied the same entries");
    }
}

// ---- election rules -----------------------------------------------------------

#[test]
fn election_vote_requires_up_to_date_log() {
    // Our log ends 3/2.
    let mut r = core(1, 3, 2, &[1, 2, 2]);
    r.step(request_vote(2, 1, 3, 5, 1)); // longer but older last term
    assert_eq!(granted(&r.ready()), Some(false));
    let mut r = core(1, 3, 2, &[1, 2, 2]);
    r.step(request_vote(2, 1, 3, 2, 2)); // same term, shorter
    assert_eq!(granted(&r.ready()), Some(false));
    let mut r = core(1, 3, 2, &[1, 2, 2]);
    r.step(request_vote(2, 1, 3, 3, 2)); // same term, same length
    assert_eq!(granted(&r.ready()), Some(true));
    let mut r = core(1, 3, 2, &[1, 2, 2]);
    r.step(request_vote(2, 1, 3, 1, 3)); // newer last term wins
    assert_eq!(granted(&r.ready()), Some(true));
}

#[test]
fn election_one_vote_per_term() {
    let mut r = core(1, 3, 1, &[]);
    r.step(request_vote(2, 1, 2, 0, 0));
    assert_eq!(granted(&r.ready()), Some(true));
    r.step(request_vote(3, 1, 2, 0, 0));
    assert_eq!(
        granted(&r.ready()),
        Some(false),
        "second candidate of term 2"
    );
    r.step(request_vote(2, 1, 2, 0, 0));
    assert_eq!(
        granted(&r.ready()),
        Some(true),
        "a retried request from the same candidate"
    );
}

#[test]
fn election_vote_is_persisted_before_it_is_sent() {
    let mut r = core(1, 3, 1, &[]);
    r.step(request_vote(2, 1, 2, 0, 0));
    let rd = r.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            current_term: Term(2),
            voted_for: Some(NodeId(2))
        })
    );
    assert!(
        rd.messages.is_empty(),
        "nothing may leave before the vote is durable"
    );
    assert_eq!(rd.messages_after_persist.len(), 1);
}

#[test]
fn election_candidate_persists_term_before_request_vote() {
    let mut cfg = Config::new(NodeId(1), ids(3));
    cfg.pre_vote = false;
    let mut r = Raft::new(cfg, HardState::default(), vec![]);
    r.campaign_now();
    let rd = r.ready();
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            current_term: Term(1),
            voted_for: Some(NodeId(1))
        })
    );
    assert!(rd.messages.is_empty());
    // RequestVote to n2 and n3, and the candidate's own vote, which counts
    // only once it is durable too.
    let mut to: Vec<u64> = rd.messages_after_persist.iter().map(|m| m.to.0).collect();
    to.sort_unstable();
    assert_eq!(to, vec![1, 2, 3]);
    assert!(rd.messages_after_persist.iter().any(|m| m.to == NodeId(1)
        && m.from == NodeId(1)
        && matches!(
            m.body,
            MessageBody::RequestVoteResponse {
                vote_granted: true,
                ..
            }
        )));
}

/// A single voter elects itself only once its vote is durable: leading on
/// an unpersisted vote, it could crash, forget it, and vote for another
/// node in the same term.
#[test]
fn election_single_voter_leads_only_once_its_vote_is_durable() {
    let mut cfg = Config::new(NodeId(1), ids(1));
    cfg.pre_vote = false;
    let mut r = Raft::new(cfg, HardState::default(), vec![]);
    r.campaign_now();
    assert_eq!(r.role(), Role::Candidate);
    let rd = r.ready();
    assert!(rd.hard_state.is_some());
    assert_eq!(r.role(), Role::Candidate, "not before the persist");
    for m in rd.messages_after_persist {
        r.step(m);
    }
    assert_eq!(r.role(), Role::Leader);
}

#[test]
fn election_timeout_is_randomized_within_range() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut cfg = Config::new(NodeId(1), ids(3));
        cfg.seed = seed;
        cfg.election_timeout_ticks_min = 10;
        cfg.election_timeout_ticks_max = 20;
        let mut r = Raft::new(cfg, HardState::default(), vec![]);
        let mut ticks = 0;
        while r.role() == Role::Follower {
            r.tick();
            ticks += 1;
            assert!(ticks < 20, "timeout fired only after {ticks} ticks");
        }
        assert!(ticks >= 10, "timeout fired after only {ticks} ticks");
        seen.insert(ticks);
    }
    assert!(seen.len() > 3, "timeouts are spread out: {seen:?}");
}

#[test]
fn election_leader_appends_noop() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    let e = c
        .node(1)
        .raft
        .log()
        .get(LogIndex(1))
        .cloned()
        .expect("no-op");
    assert_eq!(e.kind, EntryKind::Noop);
    assert_eq!(e.term, c.node(1).raft.current_term());
}

#[test]
fn prevote_partitioned_node_does_not_raise_its_term_or_disrupt() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    let term = c.node(1).raft.current_term();
    c.isolate(3);
    c.tick_all(100);
    assert_eq!(
        c.node(3).raft.current_term(),
        term,
        "pre-votes failed: term unchanged"
    );
    c.heal();
    c.tick_all(30);
    assert_eq!(
        c.node(1).raft.role(),
        Role::Leader,
        "the rejoining node did not depose the leader"
    );
    assert_eq!(c.node(1).raft.current_term(), term);
}

#[test]
fn check_quorum_isolated_leader_steps_down() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    c.isolate(1);
    c.tick_all(60);
    assert_ne!(
        c.node(1).raft.role(),
        Role::Leader,
        "a leader cut off from a majority steps down"
    );
    let new_leaders: Vec<u64> = (2..=3)
        .filter(|&i| c.node(i).raft.role() == Role::Leader)
        .collect();
    assert_eq!(new_leaders.len(), 1, "the majority elected a new leader");
}

#[test]
fn check_quorum_follower_in_lease_ignores_disruptive_vote() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    let term = c.node(2).raft.current_term();
    c.raft(2).step(request_vote(3, 2, term.0 + 5, 100, term.0));
    c.process_all();
    assert_eq!(
        c.node(2).raft.current_term(),
        term,
        "in lease: higher term ignored"
    );
}

// ---- replication rules ----------------------------------------------------------

fn append_entries(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    entries: &[(u64, u64)],
    commit: u64,
) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::AppendEntries {
            prev_log_index: LogIndex(prev.0),
            prev_log_term: Term(prev.1),
            entries: entries
                .iter()
                .map(|&(i, t)| Entry {
                    index: LogIndex(i),
                    term: Term(t),
                    kind: EntryKind::Command,
                    data: Vec::new().into(),
                })
                .collect(),
            leader_commit: LogIndex(commit),
            read_round: 0,
        },
    }
}

fn terms_of(r: &Raft) -> Vec<u64> {
    r.log().entries().iter().map(|e| e.term.0).collect()
}

#[test]
fn handle_append_entries_rejects_gap_with_log_length_hint() {
    let mut r = core(2, 3, 2, &[1, 1]);
    r.step(append_entries(1, 2, 2, (5, 2), &[(6, 2)], 0));
    let rd = r.ready();
    match &rd.messages_after_persist[0].body {
        MessageBody::AppendEntriesResponse {
            success: false,
            reject: Some(h),
            ..
        } => {
            assert_eq!(h.conflict_term, Term(0));
            assert_eq!(h.conflict_index, LogIndex(3));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn handle_append_entries_rejects_conflict_with_term_hint() {
    let mut r = core(2, 3, 5, &[1, 2, 2, 2, 3]);
    r.step(append_entries(1, 2, 5, (4, 4), &[], 0));
    let rd = r.ready();
    match &rd.messages_after_persist[0].body {
        MessageBody::AppendEntriesResponse {
            reject: Some(h), ..
        } => {
            assert_eq!(h.conflict_term, Term(2));
            assert_eq!(
                h.conflict_index,
                LogIndex(2),
                "first index of the conflicting term"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        terms_of(&r),
        vec![1, 2, 2, 2, 3],
        "a rejection deletes nothing"
    );
}

#[test]
fn handle_append_entries_truncates_only_on_conflict() {
    let mut r = core(2, 3, 3, &[1, 1, 2, 2]);
    // A stale, reordered AppendEntries carrying a prefix we already hold.
    r.step(append_entries(1, 2, 3, (1, 1), &[(2, 1)], 0));
    assert_eq!(
        terms_of(&r),
        vec![1, 1, 2, 2],
        "matching entries are kept, nothing after them is cut"
    );
    // A real conflict at index 3.
    r.step(append_entries(1, 2, 3, (2, 1), &[(3, 3)], 0));
    assert_eq!(terms_of(&r), vec![1, 1, 3]);
    let rd = r.ready();
    assert_eq!(
        rd.entries.first().map(|e| e.index),
        Some(LogIndex(3)),
        "storage truncates from 3"
    );
}

#[test]
fn handle_append_entries_reordered_old_message_keeps_newer_entries() {
    let mut r = core(2, 3, 1, &[]);
    r.step(append_entries(
        1,
        2,
        1,
        (0, 0),
        &[(1, 1), (2, 1), (3, 1)],
        0,
    ));
    r.step(append_entries(1, 2, 1, (0, 0), &[(1, 1)], 0));
    assert_eq!(terms_of(&r), vec![1, 1, 1]);
}

#[test]
fn follower_commit_is_min_of_leader_commit_and_last_new_entry() {
    let mut r = core(2, 3, 1, &[1, 1, 1, 1, 1]);
    // Entries 4.. of ours may not match the leader: only up to the last new
    // entry of this message counts.
    r.step(append_entries(1, 2, 1, (1, 1), &[(2, 1)], 5));
    assert_eq!(r.commit_index(), LogIndex(2));
    r.step(append_entries(1, 2, 1, (2, 1), &[(3, 1)], 2));
    assert_eq!(
        r.commit_index(),
        LogIndex(2),
        "commit never decreases nor jumps past leader_commit"
    );
}

#[test]
fn follower_acknowledges_only_after_persisting() {
    let mut r = core(2, 3, 1, &[]);
    r.step(append_entries(1, 2, 1, (0, 0), &[(1, 1)], 0));
    let rd = r.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(
        rd.messages.is_empty(),
        "no acknowledgement before the entries are durable"
    );
    assert!(matches!(
        rd.messages_after_persist[0].body,
        MessageBody::AppendEntriesResponse { success: true, .. }
    ));
}

#[test]
fn leader_sends_before_its_own_fsync_but_counts_itself_only_when_durable() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    c.tick_all(2);
    let commit0 = c.node(1).raft.commit_index();
    let idx = c.raft(1).propose(b"x".to_vec()).expect("leader");
    let rd = c.raft(1).ready();
    assert!(
        rd.messages.iter().any(
            |m| matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
        ),
        "AppendEntries go out before the leader's fsync"
    );
    // One follower acknowledges; the leader has not persisted: no quorum yet
    // (leader not durable + one follower = 1 durable copy... plus follower).
    let ae = rd
        .messages
        .into_iter()
        .find(|m| m.to == NodeId(2))
        .expect("to n2");
    c.raft(2).step(ae);
    let rd2 = c.raft(2).ready();
    for m in rd2.messages_after_persist {
        c.raft(1).step(m);
    }
    // Two durable copies would need the leader's own: still only n2 has it.
    assert_eq!(
        c.node(1).raft.commit_index(),
        commit0,
        "leader counted itself before its fsync"
    );
    let term = c.node(1).raft.current_term();
    c.raft(1).persisted(idx, term);
    assert_eq!(
        c.node(1).raft.commit_index(),
        idx,
        "durable on leader + n2 = majority"
    );
}

#[test]
fn replication_pipelines_a_bounded_window_and_batches_by_size() {
    let mut c = TestCluster::with_logs(vec![(0, vec![]), (0, vec![]), (0, vec![])], |cfg| {
        cfg.inflight_msgs_max = 4;
        cfg.append_bytes_max = 200;
    });
    assert!(c.elect(1));
    c.tick_all(2);
    for i in 0..100 {
        c.raft(1).propose(vec![i as u8; 50]).expect("leader");
    }
    let rd = c.raft(1).ready();
    let to2: Vec<&Message> = rd.messages.iter().filter(|m| m.to == NodeId(2)).collect();
    assert_eq!(to2.len(), 4, "window of 4 AppendEntries in flight");
    for m in to2 {
        if let MessageBody::AppendEntries { entries, .. } = &m.body {
            let bytes: usize = entries.iter().map(|e| e.data.len() + 21).sum();
            assert!(
                bytes <= 200 || entries.len() == 1,
                "message of {bytes} bytes"
            );
            assert!(!entries.is_empty());
        }
    }
    c.queue.extend(rd.messages);
    c.deliver_all(100_000);
    assert_eq!(
        c.terms(2).len(),
        101,
        "all entries arrive as the window slides"
    );
}

#[test]
fn replication_probes_one_message_at_a_time_after_rejection() {
    let logs = vec![
        (2, log_of_terms(&[1, 1, 2, 2, 2])),
        (2, log_of_terms(&[1])),
        (2, log_of_terms(&[1, 1, 2, 2, 2])),
    ];
    let mut c = TestCluster::with_logs(logs, |_| {});
    c.cut.insert((NodeId(1), NodeId(2)));
    assert!(c.elect(1));
    c.cut.clear();
    for i in 0..10 {
        c.raft(1).propose(vec![i]).expect("leader");
    }
    let rd = c.raft(1).ready();
    let to2 = rd.messages.iter().filter(|m| m.to == NodeId(2)).count();
    assert!(
        to2 <= 1,
        "a follower in probe state gets one AppendEntries at a time"
    );
    c.queue.extend(rd.messages);
    c.deliver_all(100_000);
    c.tick_all(2);
    assert_eq!(c.terms(2), c.terms(1));
}

#[test]
fn commit_only_counts_current_term_entries() {
    // Covered in depth by figure8_*; here the smallest case: a leader whose
    // only replicated entry is from an older term does not commit it.
    let logs = vec![
        (1, log_of_terms(&[1])),
        (1, log_of_terms(&[1])),
        (1, vec![]),
    ];
    let mut c = TestCluster::with_logs(logs, |_| {});
    c.filter = Some(|m| {
        if let MessageBody::AppendEntries { entries, .. } = &mut m.body {
            entries.retain(|e| e.term == Term(1));
        }
        true
    });
    assert!(c.elect(1));
    c.tick_all(4);
    assert_eq!(c.node(1).raft.commit_index(), LogIndex(0));
}

#[test]
fn last_applied_never_passes_commit_index() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    for i in 0..20 {
        c.raft(1).propose(vec![i]).expect("leader");
        c.deliver_all(7);
        for id in 1..=3 {
            let r = &c.node(id).raft;
            assert!(r.last_applied() <= r.commit_index());
        }
    }
}

#[test]
fn read_index_waits_for_a_quorum_round() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    c.tick_all(2);
    c.raft(1).read_index(7).expect("leader");
    let rd = c.raft(1).ready();
    assert!(
        rd.read_states.is_empty(),
        "not confirmed before a quorum answers"
    );
    c.queue.extend(rd.messages);
    c.isolate(1);
    c.deliver_all(1000);
    c.heal();
    // Nothing got through: ask again by ticking (heartbeats carry the round).
    let mut confirmed = Vec::new();
    for _ in 0..5 {
        c.raft(1).tick();
        let rd = c.raft(1).ready();
        confirmed.extend(rd.read_states);
        c.queue.extend(rd.messages);
        c.queue.extend(rd.messages_after_persist);
        while let Some(m) = c.queue.pop_front() {
            let to = m.to;
            c.raft(to.0).step(m);
            let rd = c.raft(to.0).ready();
            confirmed.extend(rd.read_states);
            c.queue.extend(rd.messages);
            c.queue.extend(rd.messages_after_persist);
        }
    }
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].id, 7);
}

#[test]
fn read_index_refused_by_follower_with_leader_hint() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    c.tick_all(1);
    assert_eq!(
        c.raft(2).read_index(1),
        Err(raftkit::raft::NotLeader::Redirect(Some(NodeId(1))))
    );
    assert_eq!(
        c.raft(3).propose(vec![]),
        Err(raftkit::raft::NotLeader::Redirect(Some(NodeId(1))))
    );
}

// ---- gaps found by mutation testing ---------------------------------------

/// Section 5.1: a request with a stale term is rejected, and the reply
/// carries the receiver's term so that the stale leader or pre-candidate
/// updates its own and steps down.
#[test]
fn stale_term_requests_are_answered_with_the_current_term() {
    let mut r = core(2, 3, 3, &[1, 2]);
    r.step(append_entries(1, 2, 2, (2, 2), &[(3, 2)], 2));
    let mut stale_prevote = request_vote(3, 2, 2, 2, 2);
    if let MessageBody::RequestVote { pre_vote, .. } = &mut stale_prevote.body {
        *pre_vote = true;
    }
    r.step(stale_prevote);
    let rd = r.ready();
    let replies: Vec<&Message> = rd
        .messages
        .iter()
        .chain(rd.messages_after_persist.iter())
        .collect();
    assert_eq!(replies.len(), 2, "both stale requests are answered");
    for m in replies {
        assert_eq!(m.term, Term(3), "{m} carries our term");
        match m.body {
            MessageBody::AppendEntriesResponse { success, .. } => assert!(!success),
            MessageBody::RequestVoteResponse { vote_granted, .. } => assert!(!vote_granted),
            _ => panic!("unexpected reply {m}"),
        }
    }
    assert_eq!(terms_of(&r), vec![1, 2], "the stale entry was not appended");

    // The stale leader, told the newer term, steps down.
    let mut old_leader = core(1, 3, 1, &[]);
    old_leader.campaign_now();
    for voter in [2, 3] {
        for pre_vote in [true, false] {
            old_leader.step(Message {
                from: NodeId(voter),
                to: NodeId(1),
                term: Term(2),
                body: MessageBody::RequestVoteResponse {
                    pre_vote,
                    vote_granted: true,
                },
            });
        }
    }
    assert_eq!(old_leader.role(), Role::Leader);
    let mut follower = core(2, 3, 5, &[]);
    follower.step(append_entries(1, 2, 2, (0, 0), &[], 0));
    for m in follower.ready().messages_after_persist {
        old_leader.step(m);
    }
    assert_eq!(old_leader.role(), Role::Follower);
    assert_eq!(old_leader.current_term(), Term(5));
}

/// A refused PreVote is answered in the voter's own term, not the term the
/// pre-candidate asked about: otherwise every refusal would raise the
/// pre-candidate's term, and PreVote would no longer keep a lagging node
/// from disrupting the cluster (thesis section 9.6). A granted PreVote
/// carries the requested term, which `step` lets through unadopted.
#[test]
fn prevote_refusal_carries_the_voters_term() {
    let prevote = |last_index, last_term| {
        let mut m = request_vote(3, 2, 3, last_index, last_term);
        if let MessageBody::RequestVote { pre_vote, .. } = &mut m.body {
            *pre_vote = true;
        }
        m
    };
    let reply = |r: &mut Raft| {
        let rd = r.ready();
        assert_eq!(rd.hard_state, None, "a PreVote changes no durable state");
        rd.messages
            .into_iter()
            .chain(rd.messages_after_persist)
            .find(|m| matches!(m.body, MessageBody::RequestVoteResponse { .. }))
            .expect("a PreVote is answered")
    };

    let mut r = core(2, 3, 2, &[1, 2]);
    r.step(prevote(1, 1)); // its log is behind ours
    let m = reply(&mut r);
    assert!(matches!(
        m.body,
        MessageBody::RequestVoteResponse {
            pre_vote: true,
            vote_granted: false
        }
    ));
    assert_eq!(m.term, Term(2), "refused in our own term");
    assert_eq!(r.current_term(), Term(2));

    let mut r = core(2, 3, 2, &[1, 2]);
    r.step(prevote(2, 2));
    let m = reply(&mut r);
    assert!(matches!(
        m.body,
        MessageBody::RequestVoteResponse {
            pre_vote: true,
            vote_granted: true
        }
    ));
    assert_eq!(m.term, Term(3), "granted for the requested term");
    assert_eq!(r.current_term(), Term(2));
}

/// Drops AppendEntries that carry entries to n2.
fn drop_entries_to_n2(m: &mut Message) -> bool {
    !(m.to == NodeId(2)
        && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty()))
}

/// Section 5.3: "if network packets are lost, the leader retries
/// AppendEntries RPCs indefinitely". A pipelined AppendEntries that is lost
/// while nothing else follows it is noticed by heartbeats that do not
/// advance `match_index`, and the follower is probed again.
#[test]
fn replication_resends_a_lost_append_entries() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    c.tick_all(2);
    c.filter = Some(drop_entries_to_n2);
    let idx = c.raft(1).propose(b"x".to_vec()).expect("leader");
    c.deliver_all(100_000);
    c.filter = None;
    assert_eq!(c.node(1).raft.commit_index(), idx, "committed with n3");
    c.tick_all(2);
    assert!(
        c.node(2).raft.log().get(idx).is_none(),
        "heartbeats alone do not carry the lost entry"
    );
    c.tick_all(30);
    assert_eq!(c.terms(2), c.terms(1), "the lost entry was sent again");
}

/// A follower that truncates entries it had made durable no longer holds
/// them durably: its durable index drops to before the conflict until the
/// replacing entries are reported persisted (Figure 2: persist before
/// answering; the leader counts itself only up to what is durable).
#[test]
fn handle_append_entries_truncation_lowers_the_durable_index() {
    let mut r = core(2, 3, 2, &[1, 1, 1]);
    assert_eq!(r.stable_index(), LogIndex(3));
    r.step(append_entries(1, 2, 2, (1, 1), &[(2, 2)], 0));
    assert_eq!(terms_of(&r), vec![1, 2]);
    assert_eq!(r.stable_index(), LogIndex(1), "entries 2..3 were replaced");
    let rd = r.ready();
    let last = rd.entries.last().expect("entries to persist");
    r.persisted(last.index, last.term);
    assert_eq!(r.stable_index(), LogIndex(2));
}

/// `has_ready` tells the driver whether `ready` has anything: an idle
/// leader must say no, or the driver spins through empty rounds.
#[test]
fn has_ready_is_false_for_an_idle_leader() {
    let mut c = TestCluster::new(3);
    assert!(c.elect(1));
    c.tick_all(1);
    for id in 1..=3 {
        assert!(!c.node(id).raft.has_ready(), "n{id} is idle");
    }
    c.raft(1).propose(b"x".to_vec()).expect("leader");
    assert!(c.node(1).raft.has_ready(), "a proposal is to be sent");
}
