//! The per-key linearizability search: Wing & Gong's algorithm with Lowe's
//! memoisation, as in Porcupine.
//!
//! The operations on one key are turned into a doubly linked list of call
//! and return events in time order. The search walks the list from the
//! front: at a call it tries to linearize that operation next (the model
//! must accept it, and the pair (set of linearized operations, register
//! state) must not have been seen before), removes the call and its return
//! from the list and starts again from the front; at a return it has found
//! an operation whose answer came before it was linearized, so it undoes
//! the most recent choice. The history is linearizable once every
//! operation with a known outcome is linearized, and not linearizable once
//! every choice has been undone.
//!
//! # Intervals
//!
//! Intervals are closed: an operation that returns at time `t` and one
//! invoked at the same `t` are concurrent (at equal times, calls come
//! before returns in the event list).
//!
//! # Unknown outcomes
//!
//! A write whose outcome is unknown has no return event: it may be
//! linearized at any point after its call, or never. Two rewrites shrink
//! the search without changing the answer:
//!
//! * such a write whose value is read by a `get` or compared by a
//!   successful `cas` (one that must take effect), and is written by no
//!   other operation on the key,
//!   must have happened before the earliest of those readers completed:
//!   it gets that completion as its return and becomes a definite write;
//! * such a write whose value nobody compares with (no `get` result, no
//!   `cas` expected value) is dropped when the key has no failed `cas`:
//!   after it the register holds a value that no read can accept, so only
//!   an unconditional `put` or `delete` can follow it, and leaving it out
//!   changes nothing.
//!
//! And unknown-outcome operations with the same effect (deletes; writes of
//! values nobody compares with) are interchangeable once called, so they
//! are only ever linearized in call order: a later one is tried only after
//! every earlier twin has been linearized.
//!
//! # Memoisation
//!
//! The set of linearized operations is a bitset over operations numbered
//! by return order (operations without a return come last), hashed by
//! Zobrist hashing (an xor of one random word per operation). A cache
//! record stores the state and the set compactly: the first operation not
//! yet linearized (every earlier one is), the words of the bitset from
//! there to the last linearized one, and the words of the unknown-outcome
//! operations. Records live in one flat arena behind an open-addressing
//! table.

use std::collections::HashMap;

use super::history::{OpKind, Operation};

/// The register is absent.
const ABSENT: u32 = 0;
/// A value that no operation on the key reads or compares with: all such
/// values behave alike.
const OTHER: u32 = 1;
/// End of the event list.
const NIL: u32 = u32::MAX;
/// The list head (a sentinel node).
const HEAD: u32 = 0;
/// Marks a search state that is not a register value but a pending
/// unknown-outcome write (see `Search::step`); value ids stay below it.
const PENDING: u32 = 1 << 31;

/// Bounds on the work spent on one key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub steps: u64,
    pub cache_bytes: usize,
}

/// Which bound stopped a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// More search steps than the step budget.
    Steps(u64),
    /// The memoisation cache outgrew its byte budget.
    Cache(usize),
}

/// The answer for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Linearizable,
    Violation,
    Unknown(Exhausted),
}

/// The answer and the number of search steps taken.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    pub outcome: Outcome,
    pub steps: u64,
}

/// What an operation does to the register, with values as small ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Effect {
    /// `put` or `delete`: set the register.
    Write(u32),
    /// `get` with a known answer: the register must hold this.
    Read(u32),
    /// Successful (or possibly successful) `cas`.
    Cas { expected: u32, new: u32 },
    /// `cas` that failed its comparison: the register must not hold this.
    CasFails(u32),
}

impl Effect {
    /// The register after the operation, or `None` if the operation cannot
    /// happen in `state`.
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Effect::Write(v) => Some(v),
            Effect::Read(v) => (state == v).then_some(state),
            Effect::Cas { expected, new } => (state == expected).then_some(new),
            Effect::CasFails(v) => (state != v).then_some(state),
        }
    }
}

/// An operation prepared for the search.
#[derive(Clone, Copy, Debug)]
struct Prepared {
    effect: Effect,
    invoke: u64,
    /// `None`: outcome unknown, no return event.
    ret: Option<u64>,
    /// May be left out although it has a return: it takes effect within
    /// its interval or not at all.
    optional: bool,
    /// Position in the input, to break ties deterministically.
    order: usize,
}

/// Turns the operations of one key into the search's form: drops what the
/// checker ignores, names values by small ids and applies the rewrites for
/// unknown outcomes described in the module documentation.
///
/// The operations are expected to be valid (see `Operation::validate`);
/// anything else is still handled without panicking: a missing completion
/// of an answered operation means "completed at the end of time", a
/// completion before the call is moved to the call, a missing value is the
/// absent value.
///
/// The writes in `optional` may be left out: they take effect within their
/// interval (any time after their call, if their outcome is unknown) or not
/// at all. Reads in `optional` are ignored.
fn prepare(ops: &[&Operation], optional: &[&Operation]) -> Vec<Prepared> {
    let writes = |op: &&&Operation| match (op.kind, op.ok) {
        (OpKind::Get, _) | (_, Some(false)) => false,
        (OpKind::Put | OpKind::Delete | OpKind::Cas, _) => true,
    };
    let ops: Vec<(&Operation, bool)> = ops
        .iter()
        .map(|op| (*op, false))
        .chain(optional.iter().filter(writes).map(|op| (*op, true)))
        .collect();

    // Values that some operation compares the register with.
    let mut ids: HashMap<&str, u32> = HashMap::new();
    for &(op, _) in &ops {
        let compared = match (op.kind, op.ok) {
            (OpKind::Get, Some(true)) => op.result.as_deref(),
            (OpKind::Cas, _) => op.expected.as_deref(),
            _ => None,
        };
        if let Some(s) = compared {
            let next = ids.len() as u32 + 2;
            ids.entry(s).or_insert(next);
        }
    }
    let id = |v: &Option<String>| match v.as_deref() {
        None => ABSENT,
        Some(s) => ids.get(s).copied().unwrap_or(OTHER),
    };

    let mut out = Vec::with_capacity(ops.len());
    let mut has_failed_cas = false;
    for (order, &(op, optional)) in ops.iter().enumerate() {
        let effect = match (op.kind, op.ok) {
            // Failed or unanswered reads and failed writes change nothing
            // and constrain nothing.
            (OpKind::Get, Some(false) | None) => continue,
            (OpKind::Put | OpKind::Delete, Some(false)) => continue,
            (OpKind::Get, Some(true)) => Effect::Read(id(&op.result)),
            (OpKind::Put, _) => Effect::Write(id(&op.value)),
            (OpKind::Delete, _) => Effect::Write(ABSENT),
            (OpKind::Cas, Some(false)) => {
                has_failed_cas = true;
                Effect::CasFails(id(&op.expected))
            }
            (OpKind::Cas, _) => Effect::Cas {
                expected: id(&op.expected),
                new: id(&op.value),
            },
        };
        let ret = op
            .ok
            .map(|_| op.complete_ns.unwrap_or(u64::MAX).max(op.invoke_ns));
        out.push(Prepared {
            effect,
            invoke: op.invoke_ns,
            ret,
            optional: optional && ret.is_some(),
            order,
        });
    }

    // How many operations write each value, and the earliest completion of
    // an operation that needs the register to hold it.
    let mut writers: HashMap<u32, usize> = HashMap::new();
    let mut needed_by: HashMap<u32, u64> = HashMap::new();
    for p in &out {
        match p.effect {
            Effect::Write(v) | Effect::Cas { new: v, .. } => *writers.entry(v).or_default() += 1,
            _ => {}
        }
        let needs = match p.effect {
            // An optional operation forces nothing.
            _ if p.optional => None,
            Effect::Read(v) | Effect::Cas { expected: v, .. } => Some(v),
            _ => None,
        };
        if let (Some(v), Some(ret)) = (needs, p.ret) {
            let t = needed_by.entry(v).or_insert(ret);
            *t = (*t).min(ret);
        }
    }
    out.retain_mut(|p| {
        let new = match (p.ret, p.effect) {
            (None, Effect::Write(v) | Effect::Cas { new: v, .. }) => v,
            _ => return true,
        };
        if new == OTHER {
            return has_failed_cas;
        }
        if new != ABSENT && writers.get(&new) == Some(&1) {
            if let Some(&t) = needed_by.get(&new) {
                p.ret = Some(t.max(p.invoke));
            }
        }
        true
    });
    out
}

/// Decides whether the operations (all on one key) are linearizable when
/// the writes in `optional` (on the same key) may also take effect within
/// their interval, or not at all.
pub(crate) fn check_key(ops: &[&Operation], optional: &[&Operation], limits: &Limits) -> Run {
    Search::new(prepare(ops, optional)).run(limits)
}

/// SplitMix64: a tiny, good-quality generator for hashing constants.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A choice made by the search, to undo on backtracking.
#[derive(Clone, Copy)]
struct Frame {
    /// The call node linearized.
    node: u32,
    /// 0: with its effect; 1: without (an optional operation left out).
    alt: u8,
    /// The search state before the choice.
    state: u32,
    first_open: u32,
    top: u32,
}

struct Search {
    /// Operations numbered by rank: those with a return by return order,
    /// then the unknown-outcome ones by call order.
    effects: Vec<Effect>,
    optional: Vec<bool>,
    /// How many operations have a return.
    timed: u32,
    /// Event list; node 0 is the head sentinel.
    next: Vec<u32>,
    prev: Vec<u32>,
    node_rank: Vec<u32>,
    node_is_call: Vec<bool>,
    /// For a call node: its return node, or `NIL` without one.
    node_match: Vec<u32>,
    /// For an unknown-outcome operation: the previous one (by call time)
    /// with the same effect, or `NIL`.
    twin: Vec<u32>,
    zobrist: Vec<u64>,
    /// (register before, register after) of the pending unknown-outcome
    /// writes met so far, indexed by `state & !PENDING`.
    pending: Vec<(u32, u32)>,
    pending_ids: HashMap<(u32, u32), u32>,
}

/// The set of linearized operations and the register: what the search
/// memoises.
struct Position {
    /// Linearized operations with a return, by rank.
    timed_bits: Vec<u64>,
    /// Linearized unknown-outcome operations, by rank minus `timed`.
    unknown_bits: Vec<u64>,
    /// Zobrist hash of the set.
    hash: u64,
    state: u32,
    /// The first operation with a return not linearized; all earlier ones
    /// are.
    first_open: u32,
    /// One past the highest operation with a return linearized.
    top: u32,
}

impl Search {
    fn new(mut ops: Vec<Prepared>) -> Search {
        ops.sort_by_key(|p| match p.ret {
            Some(r) => (0, r, p.invoke, p.order),
            None => (1, 0, p.invoke, p.order),
        });
        let timed = ops.iter().filter(|p| p.ret.is_some()).count() as u32;
        let mut events: Vec<(u64, u8, u32)> = Vec::with_capacity(2 * ops.len());
        for (rank, p) in ops.iter().enumerate() {
            events.push((p.invoke, 0, rank as u32));
            if let Some(r) = p.ret {
                events.push((r, 1, rank as u32));
            }
        }
        // At equal times calls come first: intervals are closed.
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut next = vec![NIL; nodes];
        let mut prev = vec![HEAD; nodes];
        let mut node_rank = vec![0; nodes];
        let mut node_is_call = vec![false; nodes];
        let mut node_match = vec![NIL; nodes];
        let mut ret_node = vec![NIL; ops.len()];
        for (i, &(_, kind, rank)) in events.iter().enumerate() {
            let n = i as u32 + 1;
            prev[n as usize] = n - 1;
            next[n as usize - 1] = n;
            node_rank[n as usize] = rank;
            node_is_call[n as usize] = kind == 0;
            if kind == 1 {
                ret_node[rank as usize] = n;
            }
        }
        for n in 1..nodes {
            if node_is_call[n] {
                node_match[n] = ret_node[node_rank[n] as usize];
            }
        }
        let zobrist = (0..ops.len() as u64).map(splitmix).collect();
        let mut twin = vec![NIL; ops.len()];
        let mut last: HashMap<Effect, u32> = HashMap::new();
        for rank in timed as usize..ops.len() {
            if let Some(prev) = last.insert(ops[rank].effect, rank as u32) {
                twin[rank] = prev;
            }
        }
        Search {
            effects: ops.iter().map(|p| p.effect).collect(),
            optional: ops.iter().map(|p| p.optional).collect(),
            timed,
            next,
            prev,
            node_rank,
            node_is_call,
            node_match,
            twin,
            zobrist,
            pending: Vec::new(),
            pending_ids: HashMap::new(),
        }
    }

    /// The search state after operation `rank` in `state`, or `None` if
    /// the operation cannot (or need not be tried to) come next.
    ///
    /// An unknown-outcome write is only ever placed just before an
    /// operation that needs it: one that is valid after the write but not
    /// before it. Any linearization can be rearranged that way: if the
    /// operation after the write is valid without it, then it is a read
    /// (swap the two) or a write that makes the first one pointless (drop
    /// it), and an unknown-outcome write may take effect as late as we
    /// like, or not at all. So after such a write the state is
    /// `PENDING | i`, with `pending[i]` = (register before, register after),
    /// and only an operation that needs the write may follow.
    fn step(&mut self, state: u32, rank: u32) -> Option<u32> {
        let effect = self.effects[rank as usize];
        let (before, after) = if state & PENDING != 0 {
            let (s, n) = self.pending[(state & !PENDING) as usize];
            if effect.apply(s).is_some() {
                return None;
            }
            (n, effect.apply(n)?)
        } else {
            (state, effect.apply(state)?)
        };
        if rank < self.timed {
            return Some(after);
        }
        if after == before {
            // Changes nothing: pointless.
            return None;
        }
        let next = self.pending.len() as u32;
        let id = *self.pending_ids.entry((before, after)).or_insert(next);
        if id == next {
            self.pending.push((before, after));
        }
        Some(PENDING | id)
    }

    /// Takes a call node and its return node out of the list.
    fn lift(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = x;
        if x != NIL {
            self.prev[x as usize] = p;
        }
        let m = self.node_match[n as usize];
        if m != NIL {
            let (p, x) = (self.prev[m as usize], self.next[m as usize]);
            self.next[p as usize] = x;
            if x != NIL {
                self.prev[x as usize] = p;
            }
        }
    }

    /// Puts back what `lift(n)` took out (in reverse order).
    fn unlift(&mut self, n: u32) {
        let m = self.node_match[n as usize];
        if m != NIL {
            let (p, x) = (self.prev[m as usize], self.next[m as usize]);
            self.next[p as usize] = m;
            if x != NIL {
                self.prev[x as usize] = m;
            }
        }
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = n;
        if x != NIL {
            self.prev[x as usize] = n;
        }
    }

    /// Adds operation `rank` to the set, with the register becoming
    /// `state`; false (and nothing changed) if that position was seen
    /// before.
    fn advance(
        &self,
        pos: &mut Position,
        rank: u32,
        state: u32,
        cache: &mut Cache,
        record: &mut Vec<u64>,
    ) -> bool {
        let timed = self.timed;
        let (first_open, top) = if rank < timed {
            set_bit(&mut pos.timed_bits, rank);
            let f = if rank == pos.first_open {
                first_zero(&pos.timed_bits, rank + 1, timed)
            } else {
                pos.first_open
            };
            (f, pos.top.max(rank + 1))
        } else {
            set_bit(&mut pos.unknown_bits, rank - timed);
            (pos.first_open, pos.top)
        };
        let hash = pos.hash ^ self.zobrist[rank as usize];
        encode(
            record,
            state,
            first_open,
            top,
            &pos.timed_bits,
            &pos.unknown_bits,
        );
        if cache.insert(hash ^ splitmix(u64::from(state)), record) {
            pos.hash = hash;
            pos.state = state;
            pos.first_open = first_open;
            pos.top = top;
            true
        } else {
            self.clear(pos, rank);
            false
        }
    }

    fn clear(&self, pos: &mut Position, rank: u32) {
        if rank < self.timed {
            clear_bit(&mut pos.timed_bits, rank);
        } else {
            clear_bit(&mut pos.unknown_bits, rank - self.timed);
        }
    }

    fn run(mut self, limits: &Limits) -> Run {
        let timed = self.timed;
        let done = |outcome, steps| Run { outcome, steps };
        if timed == 0 {
            return done(Outcome::Linearizable, 0);
        }
        let unknown = self.effects.len() - timed as usize;
        let mut pos = Position {
            timed_bits: vec![0; (timed as usize).div_ceil(64)],
            unknown_bits: vec![0; unknown.div_ceil(64)],
            hash: 0,
            state: ABSENT,
            first_open: 0,
            top: 0,
        };
        let mut cache = Cache::new();
        let mut record: Vec<u64> = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();

        let mut node = self.next[HEAD as usize];
        // The first alternative to try at `node`.
        let mut alt = 0u8;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > limits.steps {
                return done(Outcome::Unknown(Exhausted::Steps(limits.steps)), steps);
            }
            if cache.bytes() > limits.cache_bytes {
                return done(
                    Outcome::Unknown(Exhausted::Cache(limits.cache_bytes)),
                    steps,
                );
            }
            if node != NIL && self.node_is_call[node as usize] {
                let rank = self.node_rank[node as usize];
                let last_alt = u8::from(self.optional[rank as usize]);
                let before = (pos.state, pos.first_open, pos.top);
                let mut chosen = None;
                for a in alt..=last_alt {
                    let new_state = if a == 1 {
                        // Left out: no effect.
                        Some(pos.state)
                    } else {
                        let twin = self.twin[rank as usize];
                        if twin != NIL && !bit(&pos.unknown_bits, twin - timed) {
                            // Interchangeable with an earlier unknown-outcome
                            // operation not yet used: use that one first.
                            None
                        } else {
                            self.step(pos.state, rank)
                        }
                    };
                    if let Some(s) = new_state {
                        if self.advance(&mut pos, rank, s, &mut cache, &mut record) {
                            chosen = Some(a);
                            break;
                        }
                    }
                }
                alt = 0;
                if let Some(a) = chosen {
                    stack.push(Frame {
                        node,
                        alt: a,
                        state: before.0,
                        first_open: before.1,
                        top: before.2,
                    });
                    self.lift(node);
                    if pos.first_open == timed {
                        return done(Outcome::Linearizable, steps);
                    }
                    node = self.next[HEAD as usize];
                } else {
                    node = self.next[node as usize];
                }
            } else {
                // A return whose operation is not linearized (or nothing
                // left to try): undo the last choice.
                let Some(f) = stack.pop() else {
                    return done(Outcome::Violation, steps);
                };
                let rank = self.node_rank[f.node as usize];
                self.clear(&mut pos, rank);
                pos.hash ^= self.zobrist[rank as usize];
                pos.state = f.state;
                pos.first_open = f.first_open;
                pos.top = f.top;
                self.unlift(f.node);
                if f.alt == 0 && self.optional[rank as usize] {
                    // Try leaving it out next.
                    node = f.node;
                    alt = 1;
                } else {
                    node = self.next[f.node as usize];
                }
            }
        }
    }
}

fn bit(bits: &[u64], i: u32) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set_bit(bits: &mut [u64], i: u32) {
    bits[(i / 64) as usize] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: u32) {
    bits[(i / 64) as usize] &= !(1 << (i % 64));
}

/// The first clear bit at or after `from`, or `end` if there is none
/// before `end`.
fn first_zero(bits: &[u64], from: u32, end: u32) -> u32 {
    let mut w = (from / 64) as usize;
    if w >= bits.len() {
        return end;
    }
    // Treat the bits below `from` in the first word as set.
    let mut word = bits[w] | ((1u64 << (from % 64)) - 1);
    loop {
        if word != u64::MAX {
            let i = w as u32 * 64 + (!word).trailing_zeros();
            return i.min(end);
        }
        w += 1;
        if w == bits.len() {
            return end;
        }
        word = bits[w];
    }
}

/// The canonical cache record of (state, set of linearized operations):
/// `[state << 32 | first_open, n, n window words, unknown-outcome words]`,
/// the window being the words of `timed_bits` from `first_open` to
/// `top - 1`. Every timed operation below `first_open` is linearized and none at
/// or above `top` is, so the record determines the set.
fn encode(
    record: &mut Vec<u64>,
    state: u32,
    first_open: u32,
    top: u32,
    timed_bits: &[u64],
    unknown_bits: &[u64],
) {
    record.clear();
    record.push(u64::from(state) << 32 | u64::from(first_open));
    if top > first_open {
        let (lo, hi) = ((first_open / 64) as usize, ((top - 1) / 64) as usize);
        record.push((hi - lo + 1) as u64);
        record.extend_from_slice(&timed_bits[lo..=hi]);
    } else {
        record.push(0);
    }
    record.extend_from_slice(unknown_bits);
}

/// A set of records in a flat arena behind an open-addressing hash table.
struct Cache {
    /// (hash, offset of the record in `arena`); `EMPTY` offsets are free.
    slots: Vec<(u64, u64)>,
    len: usize,
    arena: Vec<u64>,
}

const EMPTY: u64 = u64::MAX;

impl Cache {
    fn new() -> Cache {
        Cache {
            slots: vec![(0, EMPTY); 1024],
            len: 0,
            arena: Vec::new(),
        }
    }

    fn bytes(&self) -> usize {
        self.slots.len() * 16 + self.arena.len() * 8
    }

    /// Adds a record; false if it was already there. All records of one
    /// search have the same number of unknown-outcome words, so the length
    /// stored in the record's second word delimits it.
    fn insert(&mut self, hash: u64, record: &[u64]) -> bool {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let (h, off) = self.slots[i];
            if off == EMPTY {
                self.slots[i] = (hash, self.arena.len() as u64);
                self.arena.extend_from_slice(record);
                self.len += 1;
                return true;
            }
            if h == hash {
                let off = off as usize;
                let stored = self.arena.get(off..off + record.len());
                if stored == Some(record) {
                    return false;
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let mask = size - 1;
        let mut slots = vec![(0, EMPTY); size];
        for &(h, off) in &self.slots {
            if off != EMPTY {
                let mut i = h as usize & mask;
                while slots[i].1 != EMPTY {
                    i = (i + 1) & mask;
                }
                slots[i] = (h, off);
            }
        }
        self.slots = slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, value: Option<&str>, t: (u64, Option<u64>), ok: Option<bool>) -> Operation {
        Operation {
            client: 0,
            kind,
            key: "k".into(),
            value: if kind == OpKind::Get {
                None
            } else {
                value.map(str::to_string)
            },
            expected: None,
            invoke_ns: t.0,
            complete_ns: t.1,
            ok,
            result: if kind == OpKind::Get {
                value.map(str::to_string)
            } else {
                None
            },
        }
    }

    fn run(ops: &[Operation]) -> Outcome {
        let refs: Vec<&Operation> = ops.iter().collect();
        let limits = Limits {
            steps: 1_000_000,
            cache_bytes: 1 << 26,
        };
        check_key(&refs, &[], &limits).outcome
    }

    #[test]
    fn first_zero_scans_words() {
        let bits = [u64::MAX, 0b1011];
        assert_eq!(first_zero(&bits, 0, 128), 66);
        assert_eq!(first_zero(&bits, 67, 128), 68);
        assert_eq!(first_zero(&bits, 70, 68), 68);
        assert_eq!(first_zero(&[u64::MAX], 3, 64), 64);
    }

    #[test]
    fn closed_intervals_touching_at_one_instant_are_concurrent() {
        // The read completes at the instant the write is invoked: the two
        // are concurrent, so the read may see the write.
        let ops = [
            op(OpKind::Get, Some("a"), (0, Some(10)), Some(true)),
            op(OpKind::Put, Some("a"), (10, Some(20)), Some(true)),
        ];
        assert_eq!(run(&ops), Outcome::Linearizable);
        let ops = [
            op(OpKind::Get, Some("a"), (0, Some(9)), Some(true)),
            op(OpKind::Put, Some("a"), (10, Some(20)), Some(true)),
        ];
        assert_eq!(run(&ops), Outcome::Violation);
    }

    #[test]
    fn unknown_write_read_before_its_call_is_a_violation() {
        let ops = [
            op(OpKind::Get, Some("a"), (0, Some(5)), Some(true)),
            op(OpKind::Put, Some("a"), (10, None), None),
        ];
        assert_eq!(run(&ops), Outcome::Violation);
    }

    #[test]
    fn unread_unknown_writes_are_dropped_without_failed_cas() {
        let ops: Vec<Operation> = (0..200)
            .map(|i| op(OpKind::Put, Some(&format!("u{i}")), (i, None), None))
            .chain([op(OpKind::Get, None, (500, Some(501)), Some(true))])
            .collect();
        let refs: Vec<&Operation> = ops.iter().collect();
        assert_eq!(prepare(&refs, &[]).len(), 1);
        assert_eq!(run(&ops), Outcome::Linearizable);
    }

    #[test]
    fn step_budget_is_reported() {
        let ops: Vec<Operation> = (0..10)
            .map(|i| {
                op(
                    OpKind::Put,
                    Some(&format!("v{i}")),
                    (0, Some(100)),
                    Some(true),
                )
            })
            .chain([op(OpKind::Get, Some("nope"), (0, Some(100)), Some(true))])
            .collect();
        let refs: Vec<&Operation> = ops.iter().collect();
        let limits = Limits {
            steps: 50,
            cache_bytes: 1 << 26,
        };
        assert_eq!(
            check_key(&refs, &[], &limits).outcome,
            Outcome::Unknown(Exhausted::Steps(50))
        );
    }
}
