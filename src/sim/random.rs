//! The randomized cluster simulator: 3 or 5 nodes in one process, each the
//! real driver of a node ([`Driver`]: the consensus core, the `Ready`
//! handling, the key-value state machine with client sessions, snapshots,
//! client waiters), on a network that delays, drops, duplicates and
//! reorders messages and partitions the cluster in changing ways, with a
//! simulated disk per node ([`SimDisk`]) that completes jobs after a random
//! latency and, when the node crashes, loses exactly what it had not yet
//! reported durable. Nodes snapshot and compact at random points, so lagging
//! and restarted nodes are caught up with InstallSnapshot.
//!
//! Simulated clients issue put, get, cas, delete and append through the
//! request path real clients use: sessions, retries with the same client id
//! and sequence number after a timeout, redirects on NotLeader, ReadIndex
//! reads, and stale reads. Their history is checked for linearizability at
//! the end of every seed, and Raft's safety properties after every step.
//!
//! An operator changes the membership at random at the leader: spare nodes
//! (not initial members) are added as learners or voters, learners
//! promoted, members removed, leadership transferred, all under the same
//! fault mix; every committed membership must follow from the one before
//! through joint consensus, so that no two disjoint majorities can decide.
//! Everything follows from the seed, so a failing seed replays exactly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;

use super::html::{self, DiagramEvent, Fate, FinalLog};
use crate::check::{self, CheckOptions, OpKind, Operation};
use crate::kv::{Command, Op, OpResult};
use crate::node::{ClientRef, Disk, Driver, DriverConfig, DriverError, DriverEvent};
use crate::raft::{
    ConfChange, Config, Entry, EntryKind, LogIndex, Membership, Message, MessageBody, NodeId, Role,
    Snapshot, Term,
};
use crate::rng::Rng;
use crate::storage::{write_jobs, Job, MemStore};
use crate::wire::{ErrorCode, MemberRequest, ResponseBody};

/// The connection number of the operator's membership requests (clients
/// are numbered from 1).
const OPERATOR: u64 = u64::MAX;

/// What a run does; every field has a default in `SimOptions::new`.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// The initial voters, n1..n`nodes`.
    pub nodes: u64,
    /// Further nodes, started empty and not members: the operator may add
    /// them.
    pub spares: u64,
    /// Per step: chance that the operator changes the membership or moves
    /// leadership (at the leader of the highest term, if any).
    pub membership_change: f64,
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
    /// Simulated clients, each with one operation in flight at most.
    pub clients: u64,
    /// Per step and idle client: chance of starting an operation.
    pub client_rate: f64,
    /// Keys the clients operate on (few keys: much contention).
    pub keys: u64,
    /// Steps a client waits for an answer before it retries elsewhere.
    pub client_timeout_steps: u64,
    /// Sends of one operation before the client gives up (outcome unknown).
    pub client_attempts_max: u32,
    /// Per step and node: chance of taking a snapshot and compacting the log.
    pub compact: f64,
    /// Per step and slow node: chance that its clock misses a tick (clock
    /// drift, a paused process). Half the nodes, drawn per seed, are slow.
    /// Raft's safety must not depend on clocks: a leader whose clock runs
    /// slow keeps believing it leads after a new leader is elected. Clocks
    /// run true again once the network heals for the liveness check.
    pub tick_skip: f64,
    /// On a partition change: chance that the change isolates the current
    /// leader (from the other nodes; clients still reach it).
    pub isolate_leader: f64,
    /// Per step: chance that a leader with disk writes in flight crashes,
    /// losing them (the window in which a leader must not count what it
    /// has not made durable).
    pub crash_leader_busy: f64,
    /// Nodes whose disk stalls (a bit per node, bit 0 for n1), and the
    /// longest such a disk takes for one write, in steps: long enough for
    /// a truncation and an election to happen while an older write is still
    /// on its way, so that its late completion meets a log that has changed.
    pub slow_disk_nodes: u64,
    pub slow_disk_steps_max: u64,
    /// After healing: steps allowed to elect a leader and commit a new entry
    /// everywhere.
    pub liveness_steps_max: u64,
    /// Print every event.
    pub trace: bool,
    /// Record the run for [`SimReport::diagram`] (an HTML page).
    pub diagram: bool,
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
            clients: r.range(2, 6),
            client_rate: pick(&mut r, &[0.1, 0.3, 0.6]),
            keys: r.range(1, 5),
            client_timeout_steps: pick(&mut r, &[15.0, 40.0, 120.0]) as u64,
            client_attempts_max: 12,
            compact: pick(&mut r, &[0.0, 0.005, 0.03]),
            // Drawn last, so that the draws above are those of earlier
            // releases and a seed keeps its network, disks and clients.
            tick_skip: pick(&mut r, &[0.0, 0.0, 0.5, 0.9]),
            isolate_leader: pick(&mut r, &[0.0, 0.5]),
            crash_leader_busy: pick(&mut r, &[0.0, 0.0, 0.01, 0.05]),
            slow_disk_nodes: r.range(0, 1 << 9),
            slow_disk_steps_max: pick(&mut r, &[0.0, 0.0, 30.0, 80.0]) as u64,
            spares: r.range(0, 3),
            membership_change: pick(&mut r, &[0.0, 0.003, 0.01, 0.03]),
            liveness_steps_max: 400,
            trace: false,
            diagram: false,
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
    /// Client operations issued, answered, and sends that were retries.
    pub ops: u64,
    pub ops_answered: u64,
    pub retries: u64,
    /// The history's operations checked for linearizability, and keys the
    /// checker could not decide within its budget (no violation found).
    pub ops_checked: u64,
    pub keys_undecided: u64,
    /// Membership changes and leadership transfers the operator asked
    /// for, and memberships committed.
    pub member_requests: u64,
    pub memberships_committed: u64,
    /// The first safety, linearizability or liveness violation, if any.
    pub violation: Option<String>,
    /// The transcript, when tracing.
    pub trace: String,
    /// The run as a self-contained HTML page, when asked for
    /// (`SimOptions::diagram`).
    pub diagram: Option<String>,
}

/// A node's disk: jobs complete in order after a random latency; a crash
/// loses the ones not yet complete. Completed jobs are written into the
/// node's [`MemStore`] through the storage thread's own `write_jobs`.
pub struct SimDisk {
    store: MemStore,
    /// Jobs submitted and not yet durable, with the step they complete at.
    queue: VecDeque<(u64, Job)>,
    now: u64,
    disk_steps_max: u64,
    rng: Rng,
}

impl SimDisk {
    fn new(seed: u64, disk_steps_max: u64) -> SimDisk {
        SimDisk {
            store: MemStore::new(),
            queue: VecDeque::new(),
            now: 0,
            disk_steps_max,
            rng: Rng::new(seed),
        }
    }

    /// Writes the jobs due by `now`; returns the last one's number.
    fn complete(&mut self, now: u64) -> Result<Option<u64>, String> {
        let mut last = None;
        while self.queue.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, job)) = self.queue.pop_front() else {
                break;
            };
            write_jobs(&mut self.store, std::slice::from_ref(&job)).map_err(|e| e.to_string())?;
            last = Some(job.seq);
        }
        Ok(last)
    }

    /// The crash: what was not durable is gone.
    fn crash(&mut self) {
        self.queue.clear();
    }
}

impl Disk for SimDisk {
    fn submit(&mut self, job: Job) -> Result<(), DriverError> {
        let prev = self.queue.back().map_or(self.now, |(at, _)| *at);
        let latency = self.rng.range(0, self.disk_steps_max + 1);
        self.queue.push_back((prev.max(self.now + latency), job));
        Ok(())
    }

    fn write_inline(&mut self, job: &Job) -> Result<bool, DriverError> {
        assert!(self.queue.is_empty(), "an inline write with jobs in flight");
        write_jobs(&mut self.store, std::slice::from_ref(job)).map_err(DriverError::Storage)?;
        Ok(true)
    }
}

struct SimNode {
    id: NodeId,
    /// `None` while crashed.
    driver: Option<Driver>,
    disk: SimDisk,
    restarts: u64,
    /// Chance per step that its clock misses a tick (`SimOptions::tick_skip`
    /// for a slow node, else 0).
    tick_skip: f64,
    down_until: u64,
    /// The commit index at the last check, since the last restart: it
    /// never decreases while the node is up.
    seen_commit: u64,
    /// Entries applied since the last check, from `applied_base + 1`.
    applied_base: u64,
    applied: Vec<Entry>,
}

struct InFlight {
    sent_at: u64,
    deliver_at: u64,
    /// Tie-breaker that reorders messages due at the same step.
    order: u64,
    msg: Message,
}

/// A client request or answer on its way.
enum ClientMsg {
    Request {
        node: usize,
        to: ClientRef,
        command: Command,
        stale_read: bool,
    },
    Answer {
        to: ClientRef,
        from: NodeId,
        body: ResponseBody,
    },
}

/// An operation a client has in flight.
struct Pending {
    command: Command,
    stale_read: bool,
    /// Index into the history, for recorded operations.
    record: Option<usize>,
    /// Request ids of every send of it: an answer to any of them answers
    /// the operation.
    request_ids: Vec<u64>,
    target: usize,
    sent_at: u64,
    attempts: u32,
    /// The liveness check's marker write.
    marker: bool,
}

struct SimClient {
    number: u64,
    client_id: u64,
    /// The session's last write seq; 0 before the first.
    seq: u64,
    pending: Option<Pending>,
    values: u64,
    /// Where to send next: the last leader hint.
    target: usize,
}

/// One simulated cluster.
pub struct Sim {
    opts: SimOptions,
    rng: Rng,
    /// Draws of the clock and leader-isolation faults, apart from `rng`, so
    /// that a seed with them off runs as it did before they existed.
    fault_rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    net: Vec<InFlight>,
    client_net: Vec<(u64, u64, ClientMsg)>,
    clients: Vec<SimClient>,
    next_request_id: u64,
    /// The clients' history, in the format of docs/HISTORY.md; times are
    /// a counter of client events, so they order every send and answer.
    history: Vec<Option<Operation>>,
    clock: u64,
    /// Group of each node: a message passes only inside a group.
    group_of: BTreeMap<NodeId, u32>,
    report: SimReport,
    // Safety bookkeeping.
    leader_of_term: BTreeMap<Term, NodeId>,
    /// Committed entries known so far, by index: (term, data, lowest term of
    /// an observer that saw it committed).
    committed: Vec<(Term, std::sync::Arc<[u8]>, Term)>,
    /// Each node's log as last seen while it was leader: (term, first
    /// index held, terms from there).
    leader_logs: HashMap<NodeId, (Term, LogIndex, Vec<Term>)>,
    /// The state machine snapshot taken at each index: every node that
    /// snapshots at an index must produce the same bytes, and an installed
    /// snapshot must be one of them.
    snapshots_at: HashMap<LogIndex, Snapshot>,
    /// A violation found while a node applied, snapshotted or answered,
    /// reported by the next check.
    pending_violation: Option<String>,
    /// The liveness check's marker write, once answered: its index.
    marker_index: Option<LogIndex>,
    /// What the HTML diagram shows, when `opts.diagram`.
    diagram: Vec<DiagramEvent>,
    /// Draws of the operator's membership changes, apart from `rng`.
    member_rng: Rng,
    /// The newest membership known committed, and the index of its entry.
    committed_membership: (LogIndex, Membership),
}

impl Sim {
    pub fn new(opts: SimOptions) -> Sim {
        let ids: Vec<NodeId> = (1..=opts.nodes + opts.spares).map(NodeId).collect();
        let initial = Membership::new((1..=opts.nodes).map(NodeId));
        let mut sim = Sim {
            rng: Rng::new(opts.seed),
            fault_rng: Rng::new(opts.seed ^ 0x00C1_0C5E_ED0F_F5E7),
            now: 0,
            nodes: Vec::new(),
            net: Vec::new(),
            client_net: Vec::new(),
            clients: Vec::new(),
            next_request_id: 1,
            history: Vec::new(),
            clock: 0,
            group_of: ids.iter().map(|&i| (i, 0)).collect(),
            report: SimReport {
                seed: opts.seed,
                ..SimReport::default()
            },
            leader_of_term: BTreeMap::new(),
            committed: Vec::new(),
            leader_logs: HashMap::new(),
            snapshots_at: HashMap::new(),
            pending_violation: None,
            marker_index: None,
            diagram: Vec::new(),
            member_rng: Rng::new(opts.seed ^ 0x3E3B_E125_C4A2_6E00),
            committed_membership: (LogIndex(0), initial),
            opts,
        };
        for &id in &ids {
            let disk_seed = sim.opts.seed.wrapping_mul(31).wrapping_add(id.0);
            sim.nodes.push(SimNode {
                id,
                driver: None,
                disk: SimDisk::new(
                    disk_seed,
                    if sim.opts.slow_disk_nodes & (1 << (id.0 - 1)) != 0 {
                        sim.opts.disk_steps_max.max(sim.opts.slow_disk_steps_max)
                    } else {
                        sim.opts.disk_steps_max
                    },
                ),
                restarts: 0,
                tick_skip: 0.0,
                down_until: 0,
                seen_commit: 0,
                applied_base: 0,
                applied: Vec::new(),
            });
        }
        if sim.opts.tick_skip > 0.0 {
            for i in 0..sim.nodes.len() {
                if sim.fault_rng.chance(0.5) {
                    sim.nodes[i].tick_skip = sim.opts.tick_skip;
                }
            }
        }
        for i in 0..sim.nodes.len() {
            sim.boot(i);
        }
        for number in 1..=sim.opts.clients {
            let client_id = sim.rng.next_u64();
            let target = sim.rng.range(0, sim.opts.nodes) as usize;
            sim.clients.push(SimClient {
                number,
                client_id,
                seq: 0,
                pending: None,
                values: 0,
                target,
            });
        }
        sim
    }

    /// Starts node `i`'s driver from what its disk holds.
    fn boot(&mut self, i: usize) {
        let ids: Vec<NodeId> = (1..=self.nodes.len() as u64).map(NodeId).collect();
        let voters: Vec<NodeId> = (1..=self.opts.nodes).map(NodeId).collect();
        let node = &mut self.nodes[i];
        let mut config = Config::new(node.id, voters);
        // Learners are promoted only once close behind, as in a node.
        config.promote_lag_entries_max = 50;
        config.seed = self
            .opts
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(node.id.0 * 7919 + node.restarts);
        config.inflight_msgs_max = 8;
        config.append_bytes_max = 256;
        let dc = DriverConfig {
            snapshot_entries: 0, // the simulator snapshots at random points
            snapshot_keep_entries: 0,
            addrs: ids.iter().map(|&id| (id, format!("sim:{id}"))).collect(),
        };
        let recovered = node.disk.store.recover();
        let base = recovered.snapshot.as_ref().map_or(0, |s| s.index.0);
        match Driver::restore(config, recovered, dc) {
            Ok(mut d) => {
                d.record_events = true;
                node.driver = Some(d);
                node.applied_base = base;
                node.seen_commit = 0;
            }
            Err(e) => {
                let v = format!("step {}: {} cannot restart: {e}", self.now, node.id);
                self.pending_violation.get_or_insert(v);
            }
        }
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.opts.trace {
            let l = line();
            let _ = writeln!(self.report.trace, "[{:>5}] {l}", self.now);
        }
    }

    fn draw(&mut self, e: impl FnOnce() -> DiagramEvent) {
        if self.opts.diagram {
            self.diagram.push(e());
        }
    }

    fn draw_message(&mut self, m: &Message, sent: u64, fate: Fate) {
        if !self.opts.diagram {
            return;
        }
        let empty =
            matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.is_empty());
        self.diagram.push(DiagramEvent::Message {
            from: m.from,
            to: m.to,
            sent,
            at: self.now,
            kind: m.body.name(),
            empty,
            label: m.to_string(),
            fate,
        });
    }

    fn violation(&mut self, v: String) {
        self.pending_violation.get_or_insert(v);
    }

    /// Runs the faulty phase, then heals and checks liveness, then checks
    /// the clients' history for linearizability.
    pub fn run(mut self) -> SimReport {
        for _ in 0..self.opts.steps {
            if let Err(v) = self.step(true) {
                self.report.violation = Some(v);
                return self.finish();
            }
        }
        if let Err(v) = self.check_liveness() {
            self.report.violation = Some(v);
            return self.finish();
        }
        if let Err(v) = self.check_history() {
            self.report.violation = Some(v);
        }
        self.finish()
    }

    fn finish(mut self) -> SimReport {
        self.report.steps = self.now;
        self.report.commit_index_max = self.committed.len() as u64;
        if self.opts.diagram {
            if let Some(v) = &self.report.violation {
                let text = v.clone();
                self.diagram
                    .push(DiagramEvent::Violation { at: self.now, text });
            }
            let logs: Vec<FinalLog> = self
                .nodes
                .iter()
                .map(|n| {
                    let (up, recovered);
                    let r = match n.driver.as_ref() {
                        Some(d) => {
                            up = true;
                            let r = d.raft();
                            (
                                r.log().offset().0,
                                r.log()
                                    .entries()
                                    .iter()
                                    .map(|e| (e.index.0, e.term.0))
                                    .collect(),
                                r.commit_index().0,
                            )
                        }
                        None => {
                            up = false;
                            recovered = n.disk.store.recover();
                            let base = recovered.snapshot.as_ref().map_or(0, |s| s.index.0);
                            (
                                base,
                                recovered
                                    .entries
                                    .iter()
                                    .map(|e| (e.index.0, e.term.0))
                                    .collect(),
                                0,
                            )
                        }
                    };
                    FinalLog {
                        node: n.id,
                        up,
                        snapshot_index: r.0,
                        entries: r.1,
                        commit_index: r.2,
                    }
                })
                .collect();
            self.report.diagram = Some(html::render(
                self.opts.seed,
                self.nodes.len() as u64,
                self.opts.steps,
                self.now,
                &self.diagram,
                &logs,
                self.report.violation.as_deref(),
            ));
        }
        self.report
    }

    /// One step: faults, disk completions, deliveries, ticks, client load,
    /// `Ready` processing, then the safety checks.
    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        for n in &mut self.nodes {
            n.disk.now = self.now;
        }
        if faults {
            self.inject_faults();
        }
        self.complete_disk_writes();
        self.deliver_messages();
        self.deliver_client_messages();
        for n in &mut self.nodes {
            if faults && n.tick_skip > 0.0 && self.fault_rng.chance(n.tick_skip) {
                continue; // a slow clock
            }
            if let Some(d) = n.driver.as_mut() {
                d.tick();
            }
        }
        self.clients_act();
        for i in 0..self.nodes.len() {
            self.process(i);
        }
        self.check_safety()?;
        // After the check: everything committed so far has been recorded
        // from the logs before any of it is compacted away.
        for i in 0..self.nodes.len() {
            if self.rng.chance(self.opts.compact) {
                let keep = self.rng.range(0, 5);
                let node = &mut self.nodes[i];
                if let Some(d) = node.driver.as_mut() {
                    if let Err(e) = d.snapshot_now(keep, &mut node.disk) {
                        self.violation(format!("step {}: snapshot: {e}", self.now));
                    }
                }
                self.drain(i);
            }
        }
        Ok(())
    }

    /// Lets node `i`'s driver carry out its `Ready`s, then empties its
    /// outboxes.
    fn process(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(d) = node.driver.as_mut() else {
            return;
        };
        if let Err(e) = d.process_ready(&mut node.disk) {
            let v = format!("step {}: {}: {e}", self.now, node.id);
            self.violation(v);
        }
        self.drain(i);
    }

    /// Node `i`'s messages go on the network, its answers to the clients,
    /// its events to the checks.
    fn drain(&mut self, i: usize) {
        let Some(d) = self.nodes[i].driver.as_mut() else {
            return;
        };
        let id = d.id();
        let messages = std::mem::take(&mut d.messages);
        let answers = std::mem::take(&mut d.answers);
        let events = std::mem::take(&mut d.events);
        for m in messages {
            self.send(m);
        }
        for a in answers {
            let delay = self.client_delay();
            let order = self.rng.next_u64();
            let msg = ClientMsg::Answer {
                to: a.to,
                from: id,
                body: a.body,
            };
            self.client_net.push((self.now + delay, order, msg));
        }
        for e in events {
            self.observe(i, e);
        }
    }

    fn observe(&mut self, i: usize, e: DriverEvent) {
        let now = self.now;
        let id = self.nodes[i].id;
        match e {
            DriverEvent::Applied(entry) => {
                let node = &mut self.nodes[i];
                let next = node.applied_base + node.applied.len() as u64 + 1;
                if entry.index.0 != next {
                    let v = format!(
                        "step {now}: {id} applied {} where {next} was next",
                        entry.index
                    );
                    self.violation(v);
                    return;
                }
                node.applied.push(entry);
            }
            DriverEvent::Elected { term } => {
                self.report.elections += 1;
                if let Some(r) = self.nodes[i].driver.as_ref().map(Driver::raft) {
                    if !r.may_campaign() {
                        let v = format!(
                            "step {now}: {id} became leader of t{term} but may not campaign ({})",
                            r.membership()
                        );
                        self.violation(v);
                    }
                }
                if self.opts.diagram {
                    self.diagram.push(DiagramEvent::Leader {
                        node: id,
                        term: term.0,
                        at: now,
                    });
                }
                self.trace(|| format!("{id} t{term}: leader"));
            }
            DriverEvent::SnapshotTaken(snap) => {
                self.report.snapshots += 1;
                self.draw(|| DiagramEvent::Snapshot {
                    node: id,
                    at: now,
                    text: format!("snapshot {}", snap.index),
                });
                self.trace(|| format!("{id} snapshot at {}/{}", snap.index, snap.term));
                match self.snapshots_at.get(&snap.index) {
                    Some(s) if s.term != snap.term || s.data != snap.data => {
                        let v = format!(
                            "step {now}: state machine safety: {id}'s snapshot at {} differs from another node's",
                            snap.index
                        );
                        self.violation(v);
                    }
                    Some(_) => {}
                    None => {
                        self.snapshots_at.insert(snap.index, snap);
                    }
                }
            }
            DriverEvent::SnapshotInstalled(snap) => {
                self.report.installs += 1;
                self.draw(|| DiagramEvent::Snapshot {
                    node: id,
                    at: now,
                    text: format!("installs {}", snap.index),
                });
                self.trace(|| format!("{id} installs snapshot {}/{}", snap.index, snap.term));
                if self.snapshots_at.get(&snap.index) != Some(&snap) {
                    let v = format!(
                        "step {now}: state machine safety: {id} installed a snapshot at {} that no node took",
                        snap.index
                    );
                    self.violation(v);
                }
                let node = &mut self.nodes[i];
                let applied = node.applied_base + node.applied.len() as u64;
                if snap.index.0 < applied {
                    let v = format!(
                        "step {now}: {id} rolled its state machine back from {applied} to a snapshot at {}",
                        snap.index
                    );
                    self.violation(v);
                }
                // What it applied before is still checked against the
                // committed entries; the state machine goes on from here.
                self.verify_applied(i);
                let node = &mut self.nodes[i];
                node.applied.clear();
                node.applied_base = snap.index.0;
            }
        }
    }

    fn inject_faults(&mut self) {
        if self.rng.chance(self.opts.partition_change) {
            self.change_partition();
        }
        for i in 0..self.nodes.len() {
            let crashed = self.nodes[i].driver.is_none();
            if !crashed && self.rng.chance(self.opts.crash) {
                self.crash(i);
            } else if crashed && self.now >= self.nodes[i].down_until {
                self.restart(i);
            }
        }
        if self.member_rng.chance(self.opts.membership_change) {
            self.operate();
        }
        if self.opts.crash_leader_busy > 0.0 {
            for i in 0..self.nodes.len() {
                let node = &self.nodes[i];
                let busy_leader = !node.disk.queue.is_empty()
                    && node
                        .driver
                        .as_ref()
                        .is_some_and(|d| d.raft().role() == Role::Leader);
                if busy_leader && self.fault_rng.chance(self.opts.crash_leader_busy) {
                    self.crash(i);
                }
            }
        }
    }

    /// The operator, at the leader of the highest term: adds a spare node
    /// (as learner or voter), promotes a learner, removes a member, or
    /// hands leadership to another voter. Refusals (a change in progress,
    /// a learner far behind) are expected; the answer is not waited for.
    fn operate(&mut self) {
        let leader = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.driver.as_ref().map(|d| (i, d.raft())))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.current_term())
            .map(|(i, r)| (i, r.id(), r.membership().clone()));
        let Some((li, lid, m)) = leader else {
            return;
        };
        let all: Vec<NodeId> = (1..=self.nodes.len() as u64).map(NodeId).collect();
        let outsiders: Vec<NodeId> = all.iter().copied().filter(|&id| !m.contains(id)).collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let members: Vec<NodeId> = m.members().into_iter().collect();
        let others: Vec<NodeId> = m.voters.iter().copied().filter(|&v| v != lid).collect();
        let rng = &mut self.member_rng;
        let pick = |rng: &mut Rng, v: &[NodeId]| v[rng.range(0, v.len() as u64) as usize];
        let roll = rng.range(0, 100);
        let action = if roll < 30 && !outsiders.is_empty() {
            let id = pick(rng, &outsiders);
            let learner = rng.chance(0.6);
            Some(ConfChange::Add {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id.0),
                learner,
            })
        } else if roll < 50 && !learners.is_empty() {
            Some(ConfChange::Promote {
                id: pick(rng, &learners),
            })
        } else if roll < 75 && members.len() > 1 {
            Some(ConfChange::Remove {
                id: pick(rng, &members),
            })
        } else {
            None
        };
        self.report.member_requests += 1;
        self.next_request_id += 1;
        let to = ClientRef {
            conn: OPERATOR,
            request_id: self.next_request_id,
        };
        let what = match &action {
            Some(c) => c.to_string(),
            None if others.is_empty() => return,
            None => String::new(),
        };
        let Some(d) = self.nodes[li].driver.as_mut() else {
            return;
        };
        let what = match action {
            Some(c) => {
                d.handle_member(to, MemberRequest::Change(c));
                what
            }
            None => {
                let target = pick(&mut self.member_rng, &others);
                d.handle_transfer(to, target);
                format!("transfer leadership to {target}")
            }
        };
        self.trace(|| format!("operator at {lid}: {what}"));
        let at = self.now;
        self.draw(|| DiagramEvent::Partition {
            at,
            text: format!("operator: {what}"),
        });
        self.drain(li);
    }

    /// A membership entry became committed: it must follow from the last
    /// committed one by a step of joint consensus (enter joint from a
    /// settled membership, leave joint to its new voters) or change only
    /// learners, so that a majority of any membership in force on any node
    /// meets a majority of the next.
    fn check_membership_step(&mut self, index: LogIndex, m: Membership) -> Result<(), String> {
        let (pi, prev) = &self.committed_membership;
        // Entering joint: the old voters are the settled ones before.
        // Leaving joint, or changing learners only: the voters stay.
        let ok = if m.is_joint() {
            !prev.is_joint() && m.outgoing == prev.voters
        } else {
            m.voters == prev.voters
        };
        if !ok {
            return Err(format!(
                "step {}: membership safety: {m} committed at {index} does not follow from {prev} committed at {pi} by joint consensus",
                self.now
            ));
        }
        self.report.memberships_committed += 1;
        self.committed_membership = (index, m);
        Ok(())
    }

    fn change_partition(&mut self) {
        let n = self.nodes.len() as u64;
        let kind = self.rng.range(0, 3);
        for g in self.group_of.values_mut() {
            *g = 0;
        }
        match kind {
            0 => {
                self.trace(|| "network healed".to_string());
                let at = self.now;
                self.draw(|| DiagramEvent::Partition {
                    at,
                    text: "healed".into(),
                });
            }
            1 => {
                let lone = NodeId(self.rng.range(1, n + 1));
                self.group_of.insert(lone, 1);
                self.trace(|| format!("{lone} isolated"));
                let at = self.now;
                self.draw(|| DiagramEvent::Partition {
                    at,
                    text: format!("{lone} isolated"),
                });
            }
            _ => {
                let ids: Vec<NodeId> = self.group_of.keys().copied().collect();
                for id in ids {
                    let g = self.rng.range(0, 2) as u32;
                    self.group_of.insert(id, g);
                }
                let groups = format!("{:?}", self.group_of);
                let at = self.now;
                self.draw(|| DiagramEvent::Partition {
                    at,
                    text: format!("partition {groups}"),
                });
                self.trace(|| format!("partition {groups}"));
            }
        }
        if self.opts.isolate_leader > 0.0 && self.fault_rng.chance(self.opts.isolate_leader) {
            self.isolate_leader();
        }
    }

    /// Cuts the leader of the highest term off from the other nodes (its
    /// clients still reach it): until it notices, it is a deposed leader
    /// that still answers.
    fn isolate_leader(&mut self) {
        let leader = self
            .nodes
            .iter()
            .filter_map(|n| n.driver.as_ref().map(Driver::raft))
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.current_term())
            .map(|r| r.id());
        let Some(leader) = leader else {
            return;
        };
        for g in self.group_of.values_mut() {
            *g = 0;
        }
        self.group_of.insert(leader, 1);
        self.trace(|| format!("leader {leader} isolated"));
    }

    fn crash(&mut self, i: usize) {
        let down = self
            .rng
            .range(self.opts.down_steps_min, self.opts.down_steps_max + 1);
        self.verify_applied(i);
        let node = &mut self.nodes[i];
        node.driver = None;
        // Whatever the disk had not made durable is gone.
        node.disk.crash();
        node.applied.clear();
        node.down_until = self.now + down;
        self.report.crashes += 1;
        let id = node.id;
        self.trace(|| format!("{id} crashed"));
        let at = self.now;
        self.draw(|| DiagramEvent::Crash { node: id, at });
    }

    fn restart(&mut self, i: usize) {
        self.nodes[i].restarts += 1;
        self.boot(i);
        let id = self.nodes[i].id;
        self.trace(|| format!("{id} restarted"));
        let at = self.now;
        self.draw(|| DiagramEvent::Restart { node: id, at });
    }

    fn complete_disk_writes(&mut self) {
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if node.driver.is_none() {
                continue;
            }
            match node.disk.complete(self.now) {
                Ok(Some(seq)) => {
                    if let Some(d) = node.driver.as_mut() {
                        d.durable(seq);
                    }
                    self.drain(i);
                }
                Ok(None) => {}
                Err(e) => {
                    let v = format!("step {}: {} disk: {e}", self.now, node.id);
                    self.violation(v);
                }
            }
        }
    }

    fn send(&mut self, m: Message) {
        self.report.messages += 1;
        if self.rng.chance(self.opts.loss) {
            self.trace(|| format!("lost {m}"));
            self.draw_message(&m, self.now, Fate::Lost);
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
                sent_at: self.now,
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
                self.draw_message(&m, f.sent_at, Fate::Partitioned);
                continue;
            }
            let to = m.to.0 as usize - 1;
            if self.nodes[to].driver.is_none() {
                self.draw_message(&m, f.sent_at, Fate::Down);
                continue;
            }
            self.draw_message(&m, f.sent_at, Fate::Delivered);
            let Some(d) = self.nodes[to].driver.as_mut() else {
                continue;
            };
            if self.opts.trace {
                let line = format!("deliver {m}");
                let _ = writeln!(self.report.trace, "[{:>5}] {line}", now);
            }
            if let Err(e) = d.step(m) {
                self.violation(format!("step {now}: a message was refused: {e}"));
            }
            self.process(to);
        }
    }

    // ---- clients ----------------------------------------------------------

    fn client_delay(&mut self) -> u64 {
        self.rng
            .range(self.opts.delay_steps_min, self.opts.delay_steps_max + 1)
    }

    fn deliver_client_messages(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.client_net.len() {
            if self.client_net[i].0 <= now {
                due.push(self.client_net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|(at, order, _)| (*at, *order));
        for (_, _, msg) in due {
            match msg {
                ClientMsg::Request {
                    node,
                    to,
                    command,
                    stale_read,
                } => {
                    let Some(d) = self.nodes[node].driver.as_mut() else {
                        continue; // lost with the node
                    };
                    d.handle_kv(to, command.as_ref(), stale_read);
                    self.drain(node);
                }
                ClientMsg::Answer { to, from, body } => self.client_answer(to, from, body),
            }
        }
    }

    /// Each client: retry a request that timed out, or start a new one.
    fn clients_act(&mut self) {
        for c in 0..self.clients.len() {
            match &self.clients[c].pending {
                Some(p) if self.now >= p.sent_at + self.opts.client_timeout_steps => {
                    let next = (p.target + 1) % self.nodes.len();
                    self.resend(c, next);
                }
                Some(_) => {}
                None if self.rng.chance(self.opts.client_rate) => self.start_op(c, false),
                None => {}
            }
        }
    }

    /// A new operation of client `c` (the liveness marker: a put).
    fn start_op(&mut self, c: usize, marker: bool) {
        let roll = if marker { 0 } else { self.rng.range(0, 100) };
        let key = if marker {
            "liveness".to_string()
        } else {
            format!("k{}", self.rng.range(0, self.opts.keys))
        };
        let cl = &mut self.clients[c];
        cl.values += 1;
        let value = format!("c{}.{}", cl.number, cl.values);
        let (op, kind, stale_read) = match roll {
            0..=29 => (
                Op::Put {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                },
                Some(OpKind::Put),
                false,
            ),
            30..=54 => (
                Op::Get {
                    key: key.clone().into_bytes(),
                },
                Some(OpKind::Get),
                false,
            ),
            55..=69 => {
                // Expect a value some client wrote, or absence.
                let expected = match self.rng.range(0, 3) {
                    0 => None,
                    _ => Some(format!(
                        "c{}.{}",
                        self.rng.range(1, self.opts.clients + 1),
                        self.rng.range(1, self.clients[c].values + 1)
                    )),
                };
                (
                    Op::Cas {
                        key: key.clone().into_bytes(),
                        expected: expected.map(String::into_bytes),
                        new: value.clone().into_bytes(),
                    },
                    Some(OpKind::Cas),
                    false,
                )
            }
            70..=79 => (
                Op::Delete {
                    key: key.clone().into_bytes(),
                },
                Some(OpKind::Delete),
                false,
            ),
            80..=89 => (
                Op::Append {
                    data: value.clone().into_bytes(),
                },
                None,
                false,
            ),
            _ => (
                Op::Get {
                    key: key.clone().into_bytes(),
                },
                None,
                true,
            ),
        };
        let cl = &mut self.clients[c];
        let seq = if matches!(op, Op::Get { .. }) {
            cl.seq
        } else {
            cl.seq += 1;
            cl.seq
        };
        let command = Command {
            client_id: cl.client_id,
            seq,
            op,
        };
        let record = kind.map(|kind| {
            self.clock += 1;
            let (value, expected) = match &command.op {
                Op::Put { .. } => (Some(value.clone()), None),
                Op::Cas { expected, .. } => (
                    Some(value.clone()),
                    expected
                        .as_ref()
                        .map(|e| String::from_utf8_lossy(e).into_owned()),
                ),
                _ => (None, None),
            };
            self.history.push(Some(Operation {
                client: cl.number,
                kind,
                key: key.clone(),
                value,
                expected,
                invoke_ns: self.clock,
                complete_ns: None,
                ok: None,
                result: None,
            }));
            self.history.len() - 1
        });
        self.report.ops += 1;
        let target = cl.target;
        cl.pending = Some(Pending {
            command,
            stale_read,
            record,
            request_ids: Vec::new(),
            target,
            sent_at: self.now,
            attempts: 0,
            marker,
        });
        self.resend(c, target);
    }

    /// Sends client `c`'s pending operation (again) to node `target`, or
    /// gives it up after `client_attempts_max` sends: its outcome stays
    /// unknown.
    fn resend(&mut self, c: usize, target: usize) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let now = self.now;
        let delay = self.client_delay();
        let order = self.rng.next_u64();
        let attempts_max = self.opts.client_attempts_max;
        let cl = &mut self.clients[c];
        let number = cl.number;
        let Some(p) = cl.pending.as_mut() else {
            return;
        };
        if p.attempts >= attempts_max {
            cl.pending = None;
            self.trace(|| format!("client {number} gives up"));
            return;
        }
        if p.attempts > 0 {
            self.report.retries += 1;
        }
        p.attempts += 1;
        p.target = target;
        p.sent_at = now;
        p.request_ids.push(request_id);
        cl.target = target;
        let msg = ClientMsg::Request {
            node: target,
            to: ClientRef {
                conn: number,
                request_id,
            },
            command: p.command.clone(),
            stale_read: p.stale_read,
        };
        let line = self.opts.trace.then(|| {
            format!(
                "client {number} -> n{} {:?} (request {request_id})",
                target + 1,
                p.command
            )
        });
        self.client_net.push((now + delay, order, msg));
        if let Some(l) = line {
            self.trace(|| l);
        }
    }

    fn client_answer(&mut self, to: ClientRef, from: NodeId, body: ResponseBody) {
        if to.conn == OPERATOR {
            self.trace(|| format!("operator <- {from} {body:?}"));
            return;
        }
        let Some(c) = self.clients.iter().position(|c| c.number == to.conn) else {
            return;
        };
        let answers_pending = self.clients[c]
            .pending
            .as_ref()
            .is_some_and(|p| p.request_ids.contains(&to.request_id));
        if !answers_pending {
            return; // an earlier operation's late answer
        }
        let now = self.now;
        self.trace(|| format!("client {} <- {from} {body:?}", to.conn));
        let nodes = self.nodes.len();
        let from_index = from.0 as usize - 1;
        match body {
            ResponseBody::Kv { index, result } => self.complete(c, index, result),
            ResponseBody::NotLeader { leader, .. } => {
                let next = match leader {
                    Some(l) if l != from => l.0 as usize - 1,
                    _ => (from_index + 1) % nodes,
                };
                self.resend(c, next);
            }
            ResponseBody::Error {
                code: ErrorCode::Unavailable | ErrorCode::TooBusy,
                ..
            } => self.resend(c, (from_index + 1) % nodes),
            ResponseBody::Error {
                code: ErrorCode::SessionExpired,
                ..
            } => {
                // Not applied, definitely: the op failed; a new session.
                self.fail(c);
                let cl = &mut self.clients[c];
                cl.client_id = self.rng.next_u64();
                cl.seq = 0;
            }
            other => {
                let v = format!("step {now}: client {} got {other:?} from {from}", to.conn);
                self.violation(v);
                self.clients[c].pending = None;
            }
        }
    }

    /// Client `c`'s operation was answered with `result` at `index`.
    fn complete(&mut self, c: usize, index: LogIndex, result: OpResult) {
        let now = self.now;
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        self.report.ops_answered += 1;
        if p.marker {
            self.marker_index = Some(index);
        }
        self.clock += 1;
        let Some(op) = p.record.and_then(|k| self.history[k].as_mut()) else {
            return;
        };
        op.complete_ns = Some(self.clock);
        let fits = match (op.kind, result) {
            (OpKind::Put, OpResult::Done) => {
                op.ok = Some(true);
                true
            }
            (OpKind::Delete, OpResult::Deleted(_)) => {
                op.ok = Some(true);
                true
            }
            (OpKind::Cas, OpResult::CasOk) => {
                op.ok = Some(true);
                true
            }
            (OpKind::Cas, OpResult::CasMismatch(_)) => {
                op.ok = Some(false);
                true
            }
            (OpKind::Get, OpResult::Value(v)) => {
                op.ok = Some(true);
                op.result = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                true
            }
            _ => false,
        };
        if !fits {
            let v = format!(
                "step {now}: client {} got an answer of the wrong type",
                c + 1
            );
            self.violation(v);
        }
    }

    /// Client `c`'s operation definitely did not take effect, and saw
    /// nothing: it leaves the history (for a cas, a recorded failure would
    /// claim the comparison failed).
    fn fail(&mut self, c: usize) {
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        if let Some(k) = p.record {
            self.history[k] = None;
        }
    }

    /// The clients' history must be linearizable: no acknowledged write
    /// lost, no retried write applied twice, no stale linearizable read.
    fn check_history(&mut self) -> Result<(), String> {
        let opts = CheckOptions {
            step_budget: 2_000_000,
            cache_budget_bytes: 64 << 20,
            shrink: true,
            shrink_budget: 2_000_000,
        };
        let history: Vec<Operation> = self.history.iter().flatten().cloned().collect();
        let verdict = check::check(&history, &opts);
        self.report.ops_checked = history.len() as u64;
        self.report.keys_undecided = verdict.unknown.len() as u64;
        if let Some(f) = verdict.failures.first() {
            let ops: Vec<String> = f
                .ops
                .iter()
                .map(|o| format!("client {} {} {}", o.client, o.call(), o.outcome()))
                .collect();
            return Err(format!(
                "linearizability: key {:?} ({} of its {} operations cannot be ordered): {}",
                f.key,
                f.ops.len(),
                f.key_ops,
                ops.join("; ")
            ));
        }
        Ok(())
    }

    /// The persistence contract, against the disk itself: what the core
    /// believes durable is on the disk. The entry at its `stable_index`
    /// (which a leader counts towards a majority) is stored with the same
    /// term; and with no write in flight, the stored term and vote are the
    /// core's (a vote or a new term is never announced from memory alone).
    fn check_durable(&self) -> Result<(), String> {
        let now = self.now;
        for n in &self.nodes {
            let Some(r) = n.driver.as_ref().map(Driver::raft) else {
                continue;
            };
            let store = &n.disk.store;
            let stable = r.stable_index();
            if stable.0 > store.base().max(r.log().offset().0) {
                let stored = store.term_at(stable);
                if stored.is_none() || stored != r.log().term_at(stable) {
                    return Err(format!(
                        "step {now}: persistence: {} counts {stable}/{} as durable, but its disk holds {}",
                        n.id,
                        r.log().term_at(stable).map_or("none".into(), |t| t.to_string()),
                        stored.map_or("no entry there".into(), |t| format!("term {t} there"))
                    ));
                }
            }
            if n.disk.queue.is_empty() {
                let hs = store.hard_state();
                if hs.current_term != r.current_term() || hs.voted_for != r.voted_for() {
                    return Err(format!(
                        "step {now}: persistence: {} is at t{} (vote {:?}) but its disk says t{} (vote {:?}) with nothing in flight",
                        n.id,
                        r.current_term(),
                        r.voted_for(),
                        hs.current_term,
                        hs.voted_for
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks node `i`'s applied entries that are known committed by now;
    /// the others wait for a later check.
    fn verify_applied(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let known = self.committed.len() as u64;
        let mut verified = 0;
        for e in &node.applied {
            if e.index.0 > known {
                break;
            }
            match self.committed.get(e.index.0 as usize - 1) {
                Some((t, data, _)) if *t == e.term && *data == e.data => verified += 1,
                _ => {
                    let v = format!(
                        "step {now}: state machine safety: {} applied {} which is not the committed entry",
                        node.id, e
                    );
                    self.pending_violation.get_or_insert(v);
                    return;
                }
            }
        }
        node.applied.drain(..verified);
        node.applied_base += verified as u64;
    }

    // ---- checks -----------------------------------------------------------

    fn check_safety(&mut self) -> Result<(), String> {
        if let Some(v) = self.pending_violation.take() {
            return Err(v);
        }
        let now = self.now;
        let mut newly_committed = Vec::new();
        for i in 0..self.nodes.len() {
            let Some(r) = self.nodes[i].driver.as_ref().map(Driver::raft) else {
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
                    None => {
                        self.committed.push((e.term, e.data.clone(), term));
                        if e.kind == EntryKind::ConfChange {
                            if let Ok(m) = Membership::from_bytes(&e.data) {
                                newly_committed.push((e.index, m));
                            }
                        }
                    }
                }
            }
        }
        for (index, m) in newly_committed {
            self.check_membership_step(index, m)?;
        }
        for node in &mut self.nodes {
            if let Some(r) = node.driver.as_ref().map(Driver::raft) {
                node.seen_commit = r.commit_index().0;
            }
        }
        // State Machine Safety on what was actually applied.
        for i in 0..self.nodes.len() {
            self.verify_applied(i);
        }
        self.check_durable()?;
        if let Some(v) = self.pending_violation.take() {
            return Err(v);
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
            .filter_map(|n| n.driver.as_ref().map(Driver::raft))
            .map(|r| r.log().offset())
            .max()
            .unwrap_or(LogIndex(0));
        let mut seen: HashMap<(u64, u64), (u64, NodeId)> = HashMap::new();
        for node in &self.nodes {
            let Some(r) = node.driver.as_ref().map(Driver::raft) else {
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

    /// Heals everything, restarts crashed nodes, and requires a write to be
    /// answered and then applied on every node within the bound.
    fn check_liveness(&mut self) -> Result<(), String> {
        for g in self.group_of.values_mut() {
            *g = 0;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].driver.is_none() {
                self.restart(i);
            }
            // Stalling disks recover too: a disk slower than an election
            // timeout stops every election, so liveness is asked of a
            // healthy cluster.
            self.nodes[i].disk.disk_steps_max = self.opts.disk_steps_max;
        }
        self.trace(|| "healed: liveness check".to_string());
        let saved = (self.opts.loss, self.opts.duplicate);
        self.opts.loss = 0.0;
        self.opts.duplicate = 0.0;
        let deadline = self.now + self.opts.liveness_steps_max;
        let mut marker_sent = false;
        while self.now < deadline {
            self.step(false)?;
            if !marker_sent && self.clients[0].pending.is_none() {
                self.start_op(0, true);
                marker_sent = true;
            }
            if marker_sent && self.marker_index.is_none() && self.clients[0].pending.is_none() {
                // Given up: send another.
                self.start_op(0, true);
            }
            if let Some(index) = self.marker_index {
                // Every member of the newest membership any node holds
                // (nodes removed for good are not caught up).
                let members = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.driver.as_ref().map(Driver::raft))
                    .max_by_key(|r| (r.commit_index(), r.membership_index()))
                    .map(|r| r.membership().members())
                    .unwrap_or_default();
                let everywhere = self.nodes.iter().all(|n| {
                    !members.contains(&n.id)
                        || n.driver
                            .as_ref()
                            .is_some_and(|d| d.kv().last_applied() >= index)
                });
                if everywhere {
                    self.opts.loss = saved.0;
                    self.opts.duplicate = saved.1;
                    return Ok(());
                }
            }
        }
        Err(format!(
            "liveness: after healing, no write answered and applied on every node within {} steps (marker at {:?})",
            self.opts.liveness_steps_max, self.marker_index
        ))
    }
}

const CHAIN_START: u64 = 0xcbf2_9ce4_8422_2325;

fn chain(h: u64, e: &Entry) -> u64 {
    let mut h = h;
    for b in e.term.0.to_le_bytes().iter().chain(e.data.iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Runs one seed.
pub fn run_seed(opts: SimOptions) -> SimReport {
    Sim::new(opts).run()
}
