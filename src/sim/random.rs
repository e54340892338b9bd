//! The randomized cluster simulator: 3 or 5 cores in one process on a
//! network that delays, drops, duplicates and reorders messages and
//! partitions the cluster in changing ways, with simulated disks that lose
//! whatever was not reported durable when a node crashes. Nodes snapshot
//! their state machine and compact their logs at random points, so lagging
//! followers are caught up with InstallSnapshot. After every step it
//! checks Raft's safety properties; everything follows from the seed, so a
//! failing seed replays exactly.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::raft::{
    Config, Entry, HardState, LogIndex, Message, NodeId, Raft, Role, Snapshot, Term,
};
use crate::rng::Rng;

/// What a run does; every field has a default in `SimOptions::new`.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    /// Steps (ticks) with faults; then the network heals for the liveness
    /// check.
    pub steps: u64,
    pub loss: f64,
    pub duplicate: f64,
    /// Message delay in steps, uniformly drawn from `[min, max]`.
    pub delay_steps_min: u64,
    pub delay_steps_max: u64,
    /// Disk write latency in steps, `[0, max]`.
    pub disk_steps_max: u64,
    /// Per step: chance that the partition changes.
    pub partition_change: f64,
    /// Per step and node: chance of a crash.
    pub crash: f64,
    /// Steps a crashed node stays down, `[min, max]`.
    pub down_steps_min: u64,
    pub down_steps_max: u64,
    /// Per step: chance of a client proposal at the leader.
    pub propose: f64,
    /// Per step and node: chance of taking a snapshot and compacting the log.
    pub compact: f64,
    /// After healing: steps allowed to elect a leader and commit a new entry
    /// everywhere.
    pub liveness_steps_max: u64,
    /// Print every event.
    pub trace: bool,
}

impl SimOptions {
    /// Options for `seed`. The fault mix itself varies with the seed (calm
    /// to hostile network, fast to slow disks, rare to frequent crashes), so
    /// that many seeds cover many kinds of trouble.
    pub fn new(seed: u64) -> SimOptions {
        let mut r = Rng::new(seed ^ 0xA5A5_5A5A_0F0F_F0F0);
        let pick = |r: &mut Rng, xs: &[f64]| xs[r.range(0, xs.len() as u64) as usize];
        SimOptions {
            seed,
            nodes: 3,
            steps: 1500,
            loss: pick(&mut r, &[0.0, 0.02, 0.05, 0.2]),
            duplicate: pick(&mut r, &[0.0, 0.02, 0.1]),
            delay_steps_min: 0,
            delay_steps_max: r.range(1, 5),
            disk_steps_max: r.range(0, 7),
            partition_change: pick(&mut r, &[0.002, 0.01, 0.03]),
            crash: pick(&mut r, &[0.0005, 0.002, 0.006]),
            // Sometimes a crash is followed by an instant restart: the
            // window in which unpersisted votes and entries would matter.
            down_steps_min: 1,
            down_steps_max: pick(&mut r, &[3.0, 80.0]) as u64,
            propose: 0.3,
            compact: pick(&mut r, &[0.0, 0.005, 0.03]),
            liveness_steps_max: 400,
            trace: false,
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub steps: u64,
    pub elections: u64,
    pub commit_index_max: u64,
    pub crashes: u64,
    pub messages: u64,
    /// Snapshots taken, and installed from a leader.
    pub snapshots: u64,
    pub installs: u64,
    /// The first safety or liveness violation, if any.
    pub violation: Option<String>,
    /// The transcript, when tracing.
    pub trace: String,
}

struct DiskWrite {
    done_at: u64,
    hard_state: Option<HardState>,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    messages: Vec<Message>,
}

struct SimNode {
    id: NodeId,
    /// `None` while crashed.
    raft: Option<Raft>,
    restarts: u64,
    down_until: u64,
    /// What survives a crash.
    disk_hard_state: HardState,
    disk_snapshot: Option<Snapshot>,
    /// The stored log after `disk_snapshot`.
    disk_log: Vec<Entry>,
    /// Writes handed to the disk and not yet durable, oldest first.
    writing: Vec<DiskWrite>,
    /// The state machine: a hash chain over every applied entry, up to
    /// `sm_index`; its snapshot is these two numbers.
    sm_index: u64,
    sm_hash: u64,
    /// The commit index at the last check, since the last restart: it
    /// never decreases while the node is up.
    seen_commit: u64,
    /// Entries applied since the last restart or installed snapshot, from
    /// `applied_base + 1`.
    applied_base: u64,
    applied: Vec<Entry>,
}

const CHAIN_START: u64 = 0xcbf2_9ce4_8422_2325;

fn encode_sm(index: u64, hash: u64) -> Arc<[u8]> {
    let mut v = index.to_le_bytes().to_vec();
    v.extend_from_slice(&hash.to_le_bytes());
    v.into()
}

fn decode_sm(data: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let hash = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
    Some((index, hash))
}

struct InFlight {
    deliver_at: u64,
    /// Tie-breaker that reorders messages due at the same step.
    order: u64,
    msg: Message,
}

/// One simulated cluster.
pub struct Sim {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    net: Vec<InFlight>,
    /// Partition groups: a message passes only inside a group.
    group_of: BTreeMap<NodeId, u32>,
    proposals: u64,
    report: SimReport,
    // Safety bookkeeping.
    leader_of_term: BTreeMap<Term, NodeId>,
    /// Committed entries known so far, by index: (term, data, lowest term of
    /// an observer that saw it committed).
    committed: Vec<(Term, std::sync::Arc<[u8]>, Term)>,
    /// Each node's log as last seen while it was leader: (term, first
    /// index held, terms from there).
    leader_logs: HashMap<NodeId, (Term, LogIndex, Vec<Term>)>,
    /// A violation found while a node applied or installed a snapshot,
    /// reported by the next check.
    install_violation: Option<String>,
}

impl Sim {
    pub fn new(opts: SimOptions) -> Sim {
        let ids: Vec<NodeId> = (1..=opts.nodes).map(NodeId).collect();
        let mut sim = Sim {
            rng: Rng::new(opts.seed),
            now: 0,
            nodes: Vec::new(),
            net: Vec::new(),
            group_of: ids.iter().map(|&i| (i, 0)).collect(),
            proposals: 0,
            report: SimReport {
                seed: opts.seed,
                ..SimReport::default()
            },
            leader_of_term: BTreeMap::new(),
            committed: Vec::new(),
            leader_logs: HashMap::new(),
            install_violation: None,
            opts,
        };
        for &id in &ids {
            let mut node = SimNode {
                id,
                raft: None,
                restarts: 0,
                down_until: 0,
                disk_hard_state: HardState::default(),
                disk_snapshot: None,
                disk_log: Vec::new(),
                writing: Vec::new(),
                sm_index: 0,
                sm_hash: CHAIN_START,
                seen_commit: 0,
                applied_base: 0,
                applied: Vec::new(),
            };
            node.raft = Some(sim.boot(&node));
            sim.nodes.push(node);
        }
        sim
    }

    fn boot(&self, node: &SimNode) -> Raft {
        let ids: Vec<NodeId> = (1..=self.opts.nodes).map(NodeId).collect();
        let mut config = Config::new(node.id, ids);
        config.seed = self
            .opts
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(node.id.0 * 7919 + node.restarts);
        config.inflight_msgs_max = 8;
        config.append_bytes_max = 256;
        Raft::restore(
            config,
            node.disk_hard_state,
            node.disk_snapshot.clone(),
            node.disk_log.clone(),
        )
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.opts.trace {
            let l = line();
            let _ = writeln!(self.report.trace, "[{:>5}] {l}", self.now);
        }
    }

    /// Runs the faulty phase, then heals and checks liveness.
    pub fn run(mut self) -> SimReport {
        for _ in 0..self.opts.steps {
            if let Err(v) = self.step(true) {
                self.report.violation = Some(v);
                return self.finish();
            }
        }
        if let Err(v) = self.check_liveness() {
            self.report.violation = Some(v);
        }
        self.finish()
    }

    fn finish(mut self) -> SimReport {
        self.report.steps = self.now;
        self.report.commit_index_max = self.committed.len() as u64;
        self.report
    }

    /// One step: faults, deliveries, disk completions, ticks, client load,
    /// `ready` processing, then the safety checks.
    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        if faults {
            self.inject_faults();
        }
        self.complete_disk_writes();
        self.deliver_messages();
        for i in 0..self.nodes.len() {
            if let Some(r) = self.nodes[i].raft.as_mut() {
                r.tick();
            }
        }
        if self.rng.chance(self.opts.propose) {
            self.propose();
        }
        for i in 0..self.nodes.len() {
            self.process_ready(i);
        }
        self.check_safety()?;
        // After the check: everything committed so far has been recorded
        // from the logs before any of it is compacted away.
        for i in 0..self.nodes.len() {
            if self.rng.chance(self.opts.compact) {
                self.take_snapshot(i);
            }
        }
        Ok(())
    }

    /// The node snapshots its state machine and compacts its log, keeping
    /// a few entries behind the snapshot at random.
    fn take_snapshot(&mut self, i: usize) {
        let keep = self.rng.range(0, 5);
        let node = &mut self.nodes[i];
        let Some(r) = node.raft.as_mut() else {
            return;
        };
        let index = LogIndex(node.sm_index);
        if r.snapshot().map_or(0, |s| s.index.0) >= index.0 || index.0 == 0 {
            return;
        }
        let Some(term) = r.log().term_at(index) else {
            return;
        };
        let snap = Snapshot {
            index,
            term,
            data: encode_sm(node.sm_index, node.sm_hash),
        };
        r.compact(snap.clone(), LogIndex((index.0 + 1).saturating_sub(keep)));
        let done_at = self.disk_done_at(i);
        self.nodes[i].writing.push(DiskWrite {
            done_at,
            hard_state: None,
            snapshot: Some(snap),
            entries: Vec::new(),
            messages: Vec::new(),
        });
        self.report.snapshots += 1;
        let id = self.nodes[i].id;
        self.trace(|| format!("{id} snapshot at {index}/{term}"));
    }

    fn inject_faults(&mut self) {
        if self.rng.chance(self.opts.partition_change) {
            self.change_partition();
        }
        for i in 0..self.nodes.len() {
            let crashed = self.nodes[i].raft.is_none();
            if !crashed && self.rng.chance(self.opts.crash) {
                self.crash(i);
            } else if crashed && self.now >= self.nodes[i].down_until {
                self.restart(i);
            }
        }
    }

    fn change_partition(&mut self) {
        let n = self.opts.nodes;
        let kind = self.rng.range(0, 3);
        for (&id, g) in self.group_of.iter_mut() {
            *g = 0;
            let _ = id;
        }
        match kind {
            0 => self.trace(|| "network healed".to_string()),
            1 => {
                let lone = NodeId(self.rng.range(1, n + 1));
                self.group_of.insert(lone, 1);
                self.trace(|| format!("{lone} isolated"));
            }
            _ => {
                let ids: Vec<NodeId> = self.group_of.keys().copied().collect();
                for id in ids {
                    let g = self.rng.range(0, 2) as u32;
                    self.group_of.insert(id, g);
                }
                let groups = format!("{:?}", self.group_of);
                self.trace(|| format!("partition {groups}"));
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let down = self
            .rng
            .range(self.opts.down_steps_min, self.opts.down_steps_max + 1);
        let node = &mut self.nodes[i];
        node.raft = None;
        // Whatever the disk had not made durable is gone; the state
        // machine restarts from the stored snapshot.
        node.writing.clear();
        node.applied.clear();
        let (index, hash) = node
            .disk_snapshot
            .as_ref()
            .and_then(|s| decode_sm(&s.data))
            .unwrap_or((0, CHAIN_START));
        node.sm_index = index;
        node.sm_hash = hash;
        node.applied_base = index;
        node.seen_commit = 0;
        node.down_until = self.now + down;
        self.report.crashes += 1;
        let id = node.id;
        self.trace(|| format!("{id} crashed"));
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i].restarts += 1;
        let raft = self.boot(&self.nodes[i]);
        self.nodes[i].raft = Some(raft);
        let id = self.nodes[i].id;
        self.trace(|| format!("{id} restarted"));
    }

    fn complete_disk_writes(&mut self) {
        for i in 0..self.nodes.len() {
            while self.nodes[i]
                .writing
                .first()
                .is_some_and(|w| w.done_at <= self.now)
            {
                let w = self.nodes[i].writing.remove(0);
                let node = &mut self.nodes[i];
                if let Some(hs) = w.hard_state {
                    node.disk_hard_state = hs;
                }
                let mut last = None;
                if let Some(snap) = w.snapshot {
                    // As the real store: keep the stored entries after the
                    // snapshot if the log holds its last entry, else none.
                    let base = node.disk_snapshot.as_ref().map_or(0, |s| s.index.0);
                    let at = snap.index.0.checked_sub(base + 1).map(|k| k as usize);
                    let holds = match at {
                        Some(k) => node.disk_log.get(k).map(|e| e.term) == Some(snap.term),
                        None => snap.index.0 == base,
                    };
                    if holds {
                        let drop = (snap.index.0 - base) as usize;
                        node.disk_log.drain(..drop.min(node.disk_log.len()));
                    } else {
                        node.disk_log.clear();
                    }
                    last = Some((snap.index, snap.term));
                    node.disk_snapshot = Some(snap);
                }
                if let Some(e) = w.entries.last() {
                    last = Some((e.index, e.term));
                }
                if let Some(first) = w.entries.first() {
                    let base = node.disk_snapshot.as_ref().map_or(0, |s| s.index.0);
                    assert!(
                        first.index.0 > base,
                        "entries {} written at or before the stored snapshot {base}",
                        first.index
                    );
                    node.disk_log.truncate((first.index.0 - base - 1) as usize);
                    assert_eq!(
                        base + node.disk_log.len() as u64 + 1,
                        first.index.0,
                        "gap in the stored log"
                    );
                    node.disk_log.extend(w.entries);
                }
                if let (Some((idx, term)), Some(r)) = (last, node.raft.as_mut()) {
                    r.persisted(idx, term);
                }
                for m in w.messages {
                    self.send(m);
                }
            }
        }
    }

    /// The state machine hash after the committed entries `1..=index`, if
    /// all of them are known.
    fn committed_hash(&self, index: u64) -> Option<u64> {
        let mut h = CHAIN_START;
        for (term, data, _) in self.committed.get(..index as usize)? {
            h = chain_parts(h, *term, data);
        }
        Some(h)
    }

    /// The node replaces its state machine with a leader's snapshot, which
    /// must be the state after the committed prefix.
    fn install(&mut self, i: usize, snap: &Snapshot) -> Result<(), String> {
        let Some((index, hash)) = decode_sm(&snap.data) else {
            return Err(format!("step {}: malformed snapshot", self.now));
        };
        if index != snap.index.0 {
            return Err(format!(
                "step {}: snapshot at {} holds the state at {index}",
                self.now, snap.index
            ));
        }
        match self.committed_hash(index) {
            Some(h) if h == hash => {}
            Some(_) => {
                return Err(format!(
                    "step {}: state machine safety: {} installed a snapshot at {index} that is not the committed prefix",
                    self.now, self.nodes[i].id
                ))
            }
            None => {
                return Err(format!(
                    "step {}: {} installed a snapshot at {index}, past what is known committed ({})",
                    self.now,
                    self.nodes[i].id,
                    self.committed.len()
                ))
            }
        }
        if index < self.nodes[i].sm_index {
            return Err(format!(
                "step {}: {} rolled its state machine back from {} to a snapshot at {index}",
                self.now, self.nodes[i].id, self.nodes[i].sm_index
            ));
        }
        let node = &mut self.nodes[i];
        node.sm_index = index;
        node.sm_hash = hash;
        node.applied.clear();
        node.applied_base = index;
        Ok(())
    }

    fn send(&mut self, m: Message) {
        self.report.messages += 1;
        if self.rng.chance(self.opts.loss) {
            self.trace(|| format!("lost {m}"));
            return;
        }
        let copies = if self.rng.chance(self.opts.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .range(self.opts.delay_steps_min, self.opts.delay_steps_max + 1);
            let order = self.rng.next_u64();
            self.net.push(InFlight {
                deliver_at: self.now + delay,
                order,
                msg: m.clone(),
            });
        }
    }

    fn deliver_messages(&mut self) {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].deliver_at <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|f| (f.deliver_at, f.order));
        for f in due {
            let m = f.msg;
            if self.group_of.get(&m.from) != self.group_of.get(&m.to) {
                self.trace(|| format!("partitioned {m}"));
                continue;
            }
            let to = m.to.0 as usize - 1;
            if self.nodes[to].raft.is_none() {
                continue;
            }
            if self.opts.trace {
                let line = format!("deliver {m}");
                self.trace(|| line);
            }
            self.nodes[to].raft.as_mut().expect("checked").step(m);
            self.process_ready(to);
        }
    }

    fn propose(&mut self) {
        let leader = self
            .nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.current_term())
            .map(|r| r.id());
        let Some(leader) = leader else {
            return;
        };
        self.proposals += 1;
        let data = format!("s{}-p{}", self.opts.seed, self.proposals).into_bytes();
        let r = self.nodes[leader.0 as usize - 1]
            .raft
            .as_mut()
            .expect("leader is up");
        if let Ok(idx) = r.propose(data) {
            self.trace(|| format!("{leader} proposed at {idx}"));
        }
    }

    fn process_ready(&mut self, i: usize) {
        let Some(r) = self.nodes[i].raft.as_mut() else {
            return;
        };
        let rd = r.ready();
        if let Some(ss) = rd.soft_state {
            if ss.role == Role::Leader {
                self.report.elections += 1;
            }
            let id = self.nodes[i].id;
            self.trace(|| format!("{id} t{}: {} (leader {:?})", ss.term, ss.role, ss.leader));
        }
        if let Some(snap) = &rd.snapshot {
            self.report.installs += 1;
            let id = self.nodes[i].id;
            let (index, term) = (snap.index, snap.term);
            self.trace(|| format!("{id} installs snapshot {index}/{term}"));
            if let Err(v) = self.install(i, snap) {
                self.install_violation.get_or_insert(v);
            }
        }
        let node = &mut self.nodes[i];
        for e in &rd.committed_entries {
            if e.index.0 == node.sm_index + 1 {
                node.sm_hash = chain(node.sm_hash, e);
                node.sm_index = e.index.0;
            } else {
                self.install_violation.get_or_insert(format!(
                    "step {}: {} applied {} after {}",
                    self.now, node.id, e.index, node.sm_index
                ));
            }
        }
        let must_persist = rd.must_persist();
        node.applied.extend(rd.committed_entries);
        let messages_now = rd.messages;
        if must_persist || !rd.messages_after_persist.is_empty() {
            let done_at = self.disk_done_at(i);
            self.nodes[i].writing.push(DiskWrite {
                done_at,
                hard_state: rd.hard_state,
                snapshot: rd.snapshot,
                entries: rd.entries,
                messages: rd.messages_after_persist,
            });
        }
        for m in messages_now {
            self.send(m);
        }
    }

    /// When a write node `i` starts now completes: after a random latency,
    /// and never before the writes ahead of it (they complete in order).
    fn disk_done_at(&mut self, i: usize) -> u64 {
        let prev_done = self.nodes[i].writing.last().map_or(self.now, |w| w.done_at);
        let latency = self.rng.range(0, self.opts.disk_steps_max + 1);
        prev_done.max(self.now + latency)
    }

    // ---- checks -----------------------------------------------------------

    fn check_safety(&mut self) -> Result<(), String> {
        if let Some(v) = self.install_violation.take() {
            return Err(v);
        }
        let now = self.now;
        for i in 0..self.nodes.len() {
            let Some(r) = self.nodes[i].raft.as_ref() else {
                continue;
            };
            let id = r.id();
            let term = r.current_term();
            let log = r.log().entries();
            let offset = r.log().offset().0 as usize;
            // Election Safety: at most one leader per term.
            if r.role() == Role::Leader {
                let first = *self.leader_of_term.entry(term).or_insert(id);
                if first != id {
                    return Err(format!(
                        "step {now}: election safety: {first} and {id} both leaders of term {term}"
                    ));
                }
                // Leader Append-Only: a leader never changes or drops entries
                // (it may compact committed ones away).
                let terms: Vec<Term> = log.iter().map(|e| e.term).collect();
                let first = r.log().first_index();
                if let Some((t, before_first, before)) = self.leader_logs.get(&id) {
                    let before_last = before_first.0 + before.len() as u64;
                    let changed = before.iter().enumerate().any(|(k, bt)| {
                        let idx = LogIndex(before_first.0 + k as u64);
                        idx >= first && r.log().term_at(idx) != Some(*bt)
                    });
                    if *t == term && (r.log().last_index().0 + 1 < before_last || changed) {
                        return Err(format!(
                            "step {now}: leader append-only: {id} t{term} changed its log"
                        ));
                    }
                }
                // Leader Completeness: entries committed in earlier terms are
                // in this leader's log.
                for (idx, (cterm, _, seen_term)) in self.committed.iter().enumerate() {
                    if idx < offset {
                        continue; // in its snapshot, checked when installed
                    }
                    if *seen_term < term && log.get(idx - offset).map(|e| e.term) != Some(*cterm) {
                        return Err(format!(
                            "step {now}: leader completeness: {id} t{term} lacks committed entry {}/{cterm}",
                            idx + 1
                        ));
                    }
                }
                self.leader_logs.insert(id, (term, first, terms));
            }
            if r.commit_index().0 < self.nodes[i].seen_commit {
                return Err(format!(
                    "step {now}: {id} commit index went back from {} to {}",
                    self.nodes[i].seen_commit,
                    r.commit_index()
                ));
            }
            if r.last_applied() > r.commit_index() {
                return Err(format!(
                    "step {now}: {id} applied {} past commit {}",
                    r.last_applied(),
                    r.commit_index()
                ));
            }
            // Committed prefix agrees with everything committed elsewhere.
            let commit = r.commit_index().0 as usize;
            if commit > offset + log.len() || commit < offset {
                return Err(format!(
                    "step {now}: {id} commit {commit} outside its log {}..{}",
                    offset + 1,
                    offset + log.len()
                ));
            }
            if offset > self.committed.len() {
                return Err(format!(
                    "step {now}: {id} compacted to {offset}, past what is known committed ({})",
                    self.committed.len()
                ));
            }
            for (k, e) in log[..commit - offset].iter().enumerate() {
                let idx = offset + k;
                match self.committed.get_mut(idx) {
                    Some((t, data, seen)) => {
                        if *t != e.term || *data != e.data {
                            return Err(format!(
                                "step {now}: state machine safety: {id} committed {}/{} where {}/{t} was committed",
                                e.index, e.term, e.index
                            ));
                        }
                        if term < *seen {
                            *seen = term;
                        }
                    }
                    None => self.committed.push((e.term, e.data.clone(), term)),
                }
            }
        }
        for node in &mut self.nodes {
            if let Some(r) = node.raft.as_ref() {
                node.seen_commit = r.commit_index().0;
            }
        }
        // State Machine Safety on what was actually applied.
        for node in &self.nodes {
            for (k, e) in node.applied.iter().enumerate() {
                let idx = node.applied_base as usize + k;
                if e.index.0 as usize != idx + 1 {
                    return Err(format!(
                        "step {now}: {} applied {} out of order",
                        node.id, e.index
                    ));
                }
                match self.committed.get(idx) {
                    Some((t, data, _)) if *t == e.term && *data == e.data => {}
                    _ => {
                        return Err(format!(
                            "step {now}: state machine safety: {} applied {} which is not the committed entry",
                            node.id, e
                        ))
                    }
                }
            }
        }
        self.check_log_matching()
    }

    /// Log Matching: two logs with the same term at an index are identical
    /// up to it. Checked through a hash chain of each log.
    fn check_log_matching(&self) -> Result<(), String> {
        // Compacted entries are committed (checked against the committed
        // record), so the chains start after the highest compaction point,
        // where every log that reaches it holds its entries.
        let base = self
            .nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.log().offset())
            .max()
            .unwrap_or(LogIndex(0));
        let mut seen: HashMap<(u64, u64), (u64, NodeId)> = HashMap::new();
        for node in &self.nodes {
            let Some(r) = node.raft.as_ref() else {
                continue;
            };
            let mut h = CHAIN_START;
            for e in r.log().slice(base.next(), r.log().last_index()) {
                h = chain(h, e);
                match seen.get(&(e.index.0, e.term.0)) {
                    Some(&(other, who)) if other != h => {
                        return Err(format!(
                            "step {}: log matching: {} and {who} agree on {e} but not before it",
                            self.now, node.id
                        ))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((e.index.0, e.term.0), (h, node.id));
                    }
                }
            }
        }
        Ok(())
    }

    /// Heals everything, restarts crashed nodes, and requires a leader and a
    /// new entry committed and applied on every node within the bound.
    fn check_liveness(&mut self) -> Result<(), String> {
        for (_, g) in self.group_of.iter_mut() {
            *g = 0;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].raft.is_none() {
                self.restart(i);
            }
        }
        self.trace(|| "healed: liveness check".to_string());
        let saved = (self.opts.loss, self.opts.duplicate);
        self.opts.loss = 0.0;
        self.opts.duplicate = 0.0;
        let deadline = self.now + self.opts.liveness_steps_max;
        let mut marker: Option<(NodeId, LogIndex, Term)> = None;
        while self.now < deadline {
            self.step(false)?;
            // A leader that lost its place may take its proposal with it:
            // propose again through the next one.
            if let Some((id, _, term)) = marker {
                let still = self.nodes[id.0 as usize - 1]
                    .raft
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.current_term() == term);
                if !still {
                    marker = None;
                }
            }
            if marker.is_none() {
                let leader = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.raft.as_ref())
                    .find(|r| r.role() == Role::Leader);
                if let Some(id) = leader.map(|r| r.id()) {
                    let r = self.nodes[id.0 as usize - 1].raft.as_mut().expect("up");
                    let term = r.current_term();
                    if let Ok(idx) = r.propose(b"liveness".to_vec()) {
                        marker = Some((id, idx, term));
                    }
                }
            }
            if marker.is_some() {
                // Applied, or taken in with a snapshot that covers it.
                let first_marker = self
                    .committed
                    .iter()
                    .position(|(_, data, _)| &data[..] == b"liveness");
                let everywhere =
                    first_marker.is_some_and(|k| self.nodes.iter().all(|n| n.sm_index > k as u64));
                if everywhere {
                    self.opts.loss = saved.0;
                    self.opts.duplicate = saved.1;
                    return Ok(());
                }
            }
        }
        Err(format!(
            "liveness: after healing, no entry committed on every node within {} steps (leader proposal {:?})",
            self.opts.liveness_steps_max, marker
        ))
    }
}

fn chain(h: u64, e: &Entry) -> u64 {
    chain_parts(h, e.term, &e.data)
}

fn chain_parts(h: u64, term: Term, data: &[u8]) -> u64 {
    let mut h = h;
    for b in term.0.to_le_bytes().iter().chain(data.iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Runs one seed.
pub fn run_seed(opts: SimOptions) -> SimReport {
    Sim::new(opts).run()
}
