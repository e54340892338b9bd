//! A small synchronous cluster for scripted tests: every node persists
//! instantly to an in-memory disk, and messages move only when the test says
//! so. The scenario tests of the Raft paper's figures are written with it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::raft::{
    Config, Entry, EntryKind, HardState, LogIndex, Message, MessageBody, NodeId, Raft, Role,
    Snapshot, Term,
};

/// One node of a `TestCluster`: its core, its "disk" and what it applied.
pub struct TestNode {
    pub raft: Raft,
    pub hard_state: HardState,
    /// The durable snapshot (received from a leader).
    pub snapshot: Option<Snapshot>,
    /// The durable log after `snapshot`, kept in step with every `Ready`.
    pub disk: Vec<Entry>,
    /// Entries handed out as committed, in order.
    pub applied: Vec<Entry>,
}

/// A cluster whose network is a queue the test drains explicitly.
pub struct TestCluster {
    pub nodes: BTreeMap<NodeId, TestNode>,
    /// Messages sent and not yet delivered, in send order.
    pub queue: VecDeque<Message>,
    /// Links that drop everything: (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, for assertions.
    pub delivered: Vec<Message>,
    /// Called on each message before delivery: may change it, or return
    /// false to drop it.
    pub filter: Option<fn(&mut Message) -> bool>,
}

/// A log of the given terms, indexes 1.., with payload `"i/t"`.
pub fn log_of_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            index: LogIndex(i as u64 + 1),
            term: Term(t),
            kind: EntryKind::Command,
            data: format!("{}/{}", i + 1, t).into_bytes().into(),
        })
        .collect()
}

impl TestCluster {
    /// `n` empty nodes n1..n`n` with the test defaults of `Config::new`.
    pub fn new(n: u64) -> TestCluster {
        let logs = (1..=n).map(|_| (0, Vec::new())).collect();
        TestCluster::with_logs(logs, |_| {})
    }

    /// Nodes n1.. restarted with (current_term, log) each; `tweak` may adjust
    /// each node's config.
    pub fn with_logs(logs: Vec<(u64, Vec<Entry>)>, tweak: impl Fn(&mut Config)) -> TestCluster {
        let ids: Vec<NodeId> = (1..=logs.len() as u64).map(NodeId).collect();
        let mut nodes = BTreeMap::new();
        for (i, (term, log)) in logs.into_iter().enumerate() {
            let mut config = Config::new(ids[i], ids.clone());
            tweak(&mut config);
            let hard_state = HardState {
                current_term: Term(term),
                voted_for: None,
            };
            let raft = Raft::new(config, hard_state, log.clone());
            nodes.insert(
                ids[i],
                TestNode {
                    raft,
                    hard_state,
                    snapshot: None,
                    disk: log,
                    applied: Vec::new(),
                },
            );
        }
        TestCluster {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            delivered: Vec::new(),
            filter: None,
        }
    }

    /// A new, empty node `id` whose config names the same initial voters
    /// as the others: it is not a member until a change adds it.
    pub fn add_node(&mut self, id: u64, tweak: impl Fn(&mut Config)) {
        let voters = self
            .nodes
            .values()
            .next()
            .map(|n| n.raft.config().voters.clone())
            .unwrap_or_default();
        let mut config = Config::new(NodeId(id), voters);
        tweak(&mut config);
        let raft = Raft::new(config, HardState::default(), Vec::new());
        self.nodes.insert(
            NodeId(id),
            TestNode {
                raft,
                hard_state: HardState::default(),
                snapshot: None,
                disk: Vec::new(),
                applied: Vec::new(),
            },
        );
    }

    /// Restarts `id` from what it persisted (hard state, snapshot, log).
    pub fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&NodeId(id)).expect("node exists");
        let config = node.raft.config().clone();
        node.raft = Raft::restore(
            config,
            node.hard_state,
            node.snapshot.clone(),
            node.disk.clone(),
        );
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[&NodeId(id)]
    }

    pub fn raft(&mut self, id: u64) -> &mut Raft {
        &mut self.nodes.get_mut(&NodeId(id)).expect("node exists").raft
    }

    /// Runs `ready` on one node: persist instantly, queue its messages,
    /// record what it applied.
    pub fn process(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let rd = node.raft.ready();
        self.queue.extend(rd.messages);
        if let Some(hs) = rd.hard_state {
            node.hard_state = hs;
        }
        if let Some(snap) = rd.snapshot {
            // Keep the stored entries after the snapshot only if the log
            // holds its last entry.
            let base = node.snapshot.as_ref().map_or(0, |s| s.index.0);
            let k = snap.index.0.saturating_sub(base + 1) as usize;
            if snap.index.0 > base && node.disk.get(k).map(|e| e.term) == Some(snap.term) {
                node.disk.drain(..=k);
            } else {
                node.disk.clear();
            }
            node.raft.persisted(snap.index, snap.term);
            node.snapshot = Some(snap);
        }
        if let Some(first) = rd.entries.first() {
            let base = node.snapshot.as_ref().map_or(0, |s| s.index.0);
            node.disk.truncate((first.index.0 - base - 1) as usize);
            let last = rd.entries.last().map(|e| (e.index, e.term));
            node.disk.extend(rd.entries);
            if let Some((i, t)) = last {
                node.raft.persisted(i, t);
            }
        }
        self.queue.extend(rd.messages_after_persist);
        node.applied.extend(rd.committed_entries);
    }

    /// Runs `ready` on every node until none has anything more to do (it
    /// does not deliver messages).
    pub fn process_all(&mut self) {
        for _ in 0..4 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.process(id);
            }
        }
    }

    /// Delivers every queued message (and those they cause) until the
    /// network is quiet or `max` messages were delivered. Returns how many.
    pub fn deliver_all(&mut self, max: usize) -> usize {
        let mut n = 0;
        self.process_all();
        while let Some(mut m) = self.queue.pop_front() {
            if n >= max {
                self.queue.push_front(m);
                break;
            }
            n += 1;
            if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            if let Some(filter) = self.filter {
                if !filter(&mut m) {
                    continue;
                }
            }
            let to = m.to;
            self.delivered.push(m.clone());
            self.nodes.get_mut(&to).expect("checked").raft.step(m);
            self.process(to);
        }
        n
    }

    /// Makes `id` campaign now and delivers until quiet; returns whether it
    /// became leader.
    pub fn elect(&mut self, id: u64) -> bool {
        self.raft(id).campaign_now();
        self.deliver_all(100_000);
        self.node(id).raft.role() == Role::Leader
    }

    /// Ticks every node `n` times, delivering after each tick.
    pub fn tick_all(&mut self, n: u32) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.nodes.get_mut(&id).expect("exists").raft.tick();
            }
            self.deliver_all(100_000);
        }
    }

    /// Cuts every link between `id` and the others, both ways.
    pub fn isolate(&mut self, id: u64) {
        let me = NodeId(id);
        for &other in self.nodes.keys() {
            if other != me {
                self.cut.insert((me, other));
                self.cut.insert((other, me));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The terms of a node's log, for comparisons.
    pub fn terms(&self, id: u64) -> Vec<u64> {
        self.node(id)
            .raft
            .log()
            .entries()
            .iter()
            .map(|e| e.term.0)
            .collect()
    }

    /// AppendEntries delivered to `to` so far.
    pub fn append_entries_to(&self, to: u64) -> usize {
        self.delivered
            .iter()
            .filter(|m| m.to == NodeId(to) && matches!(m.body, MessageBody::AppendEntries { .. }))
            .count()
    }
}
