//! Injected faults on this node's outgoing peer messages (failure drills):
//! a partition (groups that cannot talk to each other), a one-way block of
//! some peers, a drop rate, a duplicate rate, and a delay with jitter.
//! Incoming messages from a peer across a partition are dropped too (a
//! block is one-way: they are heard). Set by a Fault request (`raft-ctl
//! fault`), validated there. Disk faults in the same spec are applied by
//! the storage layer (`storage::faulty`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use log::debug;

use crate::raft::{Message, NodeId};
use crate::rng::Rng;
use crate::wire::FaultSpec;

use super::Node;

/// Messages held back by a delay fault at most; past it a message that
/// would be delayed is dropped (Raft retransmits), so a long delay under
/// load cannot grow memory without bound.
pub const DELAYED_MESSAGES_MAX: usize = 100_000;
/// A duplicated message's second copy leaves up to this much later than
/// the first (on top of any delay), so it may arrive after messages sent
/// after it.
pub const DUPLICATE_LAG_MS_MAX: u64 = 20;

pub(super) struct Faults {
    pub(super) spec: FaultSpec,
    /// Messages held back by a delay fault: (due, seq), and the messages
    /// by seq.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_msgs: HashMap<u64, Message>,
    delayed_seq: u64,
    rng: Rng,
}

impl Faults {
    pub(super) fn new(seed: u64) -> Faults {
        Faults {
            spec: FaultSpec::default(),
            delayed: BinaryHeap::new(),
            delayed_msgs: HashMap::new(),
            delayed_seq: 0,
            rng: Rng::new(seed),
        }
    }

    /// When the next delayed message is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((due, _))| *due)
    }

    /// Whether `me` and `peer` are on different sides of the partition.
    pub(super) fn partitioned(&self, me: NodeId, peer: NodeId) -> bool {
        let groups = &self.spec.partition;
        if groups.is_empty() {
            return false;
        }
        let group_of = |n: NodeId| groups.iter().position(|g| g.contains(&n));
        group_of(me) != group_of(peer)
    }
}

impl Node {
    pub(super) fn partitioned_from(&self, peer: NodeId) -> bool {
        self.faults.partitioned(self.id, peer)
    }

    /// Sends the delayed messages that are due.
    pub(super) fn release_delayed(&mut self, now: Instant) {
        while self.faults.next_due().is_some_and(|due| due <= now) {
            let Some(Reverse((_, seq))) = self.faults.delayed.pop() else {
                break;
            };
            if let Some(m) = self.faults.delayed_msgs.remove(&seq) {
                self.transmit_counted(m);
            }
        }
    }

    /// A peer message from the driver, through the faults in force.
    pub(super) fn send_message(&mut self, m: Message) {
        if self.partitioned_from(m.to) || self.faults.spec.block_to.contains(&m.to) {
            return;
        }
        let f = &mut self.faults;
        if f.spec.drop_rate_ppm > 0 && f.rng.range(0, 1_000_000) < f.spec.drop_rate_ppm as u64 {
            return;
        }
        if f.spec.duplicate_rate_ppm > 0
            && f.rng.range(0, 1_000_000) < f.spec.duplicate_rate_ppm as u64
        {
            let lag_ms = f.rng.range(1, DUPLICATE_LAG_MS_MAX + 1);
            self.send_later(m.clone(), lag_ms);
        }
        let f = &mut self.faults;
        if f.spec.delay_ms > 0 || f.spec.jitter_ms > 0 {
            self.send_later(m, 0);
            return;
        }
        self.transmit_counted(m);
    }

    /// Holds `m` back for the delay fault's delay and jitter, plus
    /// `extra_ms`.
    fn send_later(&mut self, m: Message, extra_ms: u64) {
        let f = &mut self.faults;
        if f.delayed_msgs.len() >= DELAYED_MESSAGES_MAX {
            debug!(
                "{}: dropping {m}: {DELAYED_MESSAGES_MAX} messages delayed",
                self.id
            );
            return;
        }
        let ms = f.spec.delay_ms as u64 + f.rng.range(0, f.spec.jitter_ms as u64 + 1) + extra_ms;
        f.delayed_seq += 1;
        let seq = f.delayed_seq;
        f.delayed_msgs.insert(seq, m);
        f.delayed
            .push(Reverse((Instant::now() + Duration::from_millis(ms), seq)));
    }
}
