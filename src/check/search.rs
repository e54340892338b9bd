//! The per-key linearizability search: Wing & Gong's algorithm with Lowe's
//! memoisation, as in Porcupine.
//!
//! The operations on one key are turned into a doubly linked list of call
//! and return events in time order. At each step the calls before the
//! first pending return may come next; the search tries each (the model
//! must accept it, and the pair (set of linearized operations, register
//! state) must not have been seen before), removes the call and its return
//! from the list and goes on; when none can come next it undoes the most
//! recent choice. The history is linearizable once every operation with a
//! known outcome is linearized, and not linearizable once every choice has
//! been undone.
//!
//! # Intervals
//!
//! Intervals are closed: an operation that returns at time `t` and one
//! invoked at the same `t` are concurrent (at equal times, calls come
//! before returns in the event list).
//!
//! # Pruning
//!
//! None of these changes the answer:
//!
//! * values that no operation reads or compares with are one value;
//! * a read (a `get`, a failed `cas`) that holds now is placed now, alone:
//!   it changes nothing, so any order with it later stays valid with it
//!   moved earlier;
//! * the register never leaves a value written by one operation only while
//!   an operation that must see that value is still to come (it could
//!   never come back);
//! * calls that may come next are tried earliest return first.
//!
//! # Unknown outcomes
//!
//! A write whose outcome is unknown has no return event: it may be
//! linearized at any point after its call, or never.
//!
//! * Such a write whose value is read by a `get` or compared by a
//!   successful `cas` (one that must take effect), and is written by no
//!   other operation on the key, must have happened before the earliest of
//!   those readers completed: it gets that completion as its return and
//!   becomes a definite write.
//! * Such a write whose value nobody compares with is dropped when the key
//!   has no failed `cas`: after it no read can hold, so only an
//!   unconditional `put` or `delete` can follow, and leaving it out
//!   changes nothing.
//! * The others are only placed just before an operation that needs them,
//!   and interchangeable ones (same effect) in call order; see [`Mode`].
//!
//! # Optional writes
//!
//! For shrinking counterexamples, writes can be made optional: they take
//! effect within their interval or not at all. Those that return before
//! every other operation is called only matter through the value they
//! leave, so the search starts from each such value in turn.
//!
//! # Memoisation
//!
//! The set of linearized operations with a return is a bitset over them
//! numbered by return order, hashed by Zobrist hashing (an xor of one
//! random word per operation). A cache key stores the state and the set
//! compactly: the first operation not yet linearized (every earlier one
//! is) and the words of the bitset from there to the last linearized one.
//! Unknown-outcome writes used are counted per class of interchangeable
//! ones; a position is skipped if one with the same key and no more used
//! in any class was seen. Keys live in a flat arena behind an
//! open-addressing table.

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
    /// For a violation: the time of the return that no search path got
    /// past (or saw it could not get past). When a budget ran out: the
    /// furthest return got past, where trouble probably lies.
    pub stuck_at: Option<u64>,
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
///
/// Optional writes that complete before every other operation is called
/// only matter through the value they may leave: they are not returned,
/// and the second result lists the values the register may hold when the
/// other operations start (absent, or what any one of them writes).
/// Optional and unknown-outcome writes called after all others returned
/// are not returned either.
fn prepare(ops: &[&Operation], optional: &[&Operation]) -> (Vec<Prepared>, Vec<u32>) {
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

    let start = out
        .iter()
        .filter(|p| !p.optional && p.ret.is_some())
        .map(|p| p.invoke)
        .min()
        .unwrap_or(u64::MAX);
    // Optional and unknown-outcome writes called after every other
    // operation has returned change nothing that matters.
    let end = out
        .iter()
        .filter(|p| !p.optional)
        .filter_map(|p| p.ret)
        .max()
        .unwrap_or(0);
    out.retain(|p| p.invoke <= end || !(p.optional || p.ret.is_none()));
    let mut initial = vec![ABSENT];
    out.retain(|p| match p.ret {
        Some(r) if p.optional && r < start => {
            if let Effect::Write(v) | Effect::Cas { new: v, .. } = p.effect {
                if !initial.contains(&v) {
                    initial.push(v);
                }
            }
            false
        }
        _ => true,
    });
    (out, initial)
}

/// Decides whether the operations (all on one key) are linearizable when
/// the writes in `optional` (on the same key) may also take effect within
/// their interval, or not at all.
pub(crate) fn check_key(ops: &[&Operation], optional: &[&Operation], limits: &Limits) -> Run {
    let (prepared, initial) = prepare(ops, optional);
    let chains = may_chain(&prepared);
    let mut steps = 0;
    let mut stuck_at = None;
    for &start in &initial {
        for mode in [Mode::Helpers, Mode::InList] {
            let left = Limits {
                steps: limits.steps.saturating_sub(steps),
                ..*limits
            };
            let run = Search::new(prepared.clone(), mode, &initial).run(&left, start);
            steps += run.steps;
            match run.outcome {
                Outcome::Linearizable => {
                    return Run {
                        outcome: Outcome::Linearizable,
                        steps,
                        stuck_at: None,
                    }
                }
                Outcome::Unknown(Exhausted::Steps(_)) => {
                    return Run {
                        outcome: Outcome::Unknown(Exhausted::Steps(limits.steps)),
                        steps,
                        stuck_at: run.stuck_at,
                    }
                }
                Outcome::Unknown(e) => {
                    return Run {
                        outcome: Outcome::Unknown(e),
                        steps,
                        stuck_at: run.stuck_at,
                    }
                }
                Outcome::Violation => stuck_at = stuck_at.max(run.stuck_at),
            }
            // Unknown-outcome writes might have to follow each other: only
            // the slower search tries that.
            if !chains {
                break;
            }
        }
    }
    Run {
        outcome: Outcome::Violation,
        steps,
        stuck_at,
    }
}

/// Whether an unknown-outcome write might be needed just before another
/// one: an unknown `cas` whose new value an operation with a return must
/// see (a `get` that returned it, a `cas` that expected it), and whose
/// expected value some unknown-outcome write writes. (Before a failed
/// `cas` or a read of null one write is always enough, and a write whose
/// value a must-take-effect operation sees was given a deadline if it is
/// the only writer of that value.)
fn may_chain(ops: &[Prepared]) -> bool {
    let unknown = || ops.iter().filter(|p| p.ret.is_none());
    let written: std::collections::HashSet<u32> = unknown()
        .filter_map(|p| match p.effect {
            Effect::Write(v) | Effect::Cas { new: v, .. } => Some(v),
            _ => None,
        })
        .collect();
    let seen: std::collections::HashSet<u32> = ops
        .iter()
        .filter(|p| p.ret.is_some())
        .filter_map(|p| match p.effect {
            Effect::Read(v) | Effect::Cas { expected: v, .. } => Some(v),
            _ => None,
        })
        .collect();
    unknown().any(|p| match p.effect {
        Effect::Cas { expected, new } => seen.contains(&new) && written.contains(&expected),
        _ => false,
    })
}

/// SplitMix64: a tiny, good-quality generator for hashing constants.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// How the search places unknown-outcome writes. Either way, such a write
/// is only placed just before an operation that needs it: one that is
/// valid after the write but not before. Any linearization can be
/// rearranged that way: if the operation after the write is valid without
/// it, then it is a read (swap the two) or a write that makes the first
/// one pointless (drop it), and an unknown-outcome write may take effect
/// as late as we like, or not at all. And unknown-outcome writes with the
/// same effect are interchangeable, so they are used in call order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Unknown-outcome writes are not in the event list. When an operation
    /// with a return cannot come next as things are, the search tries each
    /// class of interchangeable unknown-outcome writes that would make it
    /// valid, placing the class's next unused write just before it. Fast,
    /// but it never places two unknown-outcome writes in a row.
    Helpers,
    /// Unknown-outcome writes are calls in the event list, like any other;
    /// placing one leads to a pending state after which only an operation
    /// that needs it may come. Complete, but the search walks over every
    /// unused unknown-outcome call at every step.
    InList,
}

/// A choice made by the search, to undo on backtracking.
#[derive(Clone, Copy)]
struct Frame {
    /// The call node linearized.
    node: u32,
    /// Which alternative: `ALT_EFFECT`, `ALT_LEFT_OUT`, or `ALT_HELPER + k`
    /// for the k-th candidate class of unknown-outcome writes placed just
    /// before it.
    alt: u32,
    /// The search state before the choice.
    state: u32,
    first_open: u32,
    top: u32,
}

/// The operation takes effect.
const ALT_EFFECT: u32 = 0;
/// An optional operation is left out.
const ALT_LEFT_OUT: u32 = 1;
/// An unknown-outcome write is placed just before the operation.
const ALT_HELPER: u32 = 2;

/// Unknown-outcome writes with the same effect, in call order.
struct Class {
    effect: Effect,
    /// Ranks, ascending (so by call time).
    members: Vec<u32>,
}

struct Search {
    mode: Mode,
    /// Operations numbered by rank: those with a return by return order,
    /// then the unknown-outcome ones by call order.
    effects: Vec<Effect>,
    optional: Vec<bool>,
    /// How many operations have a return.
    timed: u32,
    /// Event list; node 0 is the head sentinel. Nodes are numbered in time
    /// order.
    next: Vec<u32>,
    prev: Vec<u32>,
    node_rank: Vec<u32>,
    node_is_call: Vec<bool>,
    /// For a call node: its return node, or `NIL` without one.
    node_match: Vec<u32>,
    /// By node: the time of the event.
    node_time: Vec<u64>,
    /// By rank: the call node, and the return node (`NIL` without one).
    call_node: Vec<u32>,
    ret_node: Vec<u32>,
    zobrist: Vec<u64>,
    /// By rank, for unknown-outcome operations: the class.
    class_of: Vec<u32>,
    classes: Vec<Class>,
    /// Classes by the value they write.
    classes_writing: HashMap<u32, Vec<u32>>,
    /// (register before, register after) of the pending unknown-outcome
    /// writes met so far, indexed by `state & !PENDING` (`InList` mode).
    pending: Vec<(u32, u32)>,
    pending_ids: HashMap<(u32, u32), u32>,
    /// By rank: the value the operation must see, if it must take effect
    /// and that value is written by one operation only.
    must_see: Vec<Option<u32>>,
    /// By value: how many operations must see it.
    readers: Vec<u32>,
}

/// The set of linearized operations and the register: what the search
/// memoises.
struct Position {
    /// Linearized operations with a return, by rank.
    timed_bits: Vec<u64>,
    /// How many members of each class of unknown-outcome writes are
    /// linearized (always the first ones, by call time).
    used: Vec<u32>,
    /// The same, sparse: `class << 32 | count` for each class used, by
    /// class.
    used_list: Vec<u64>,
    /// Zobrist hash of the linearized operations with a return.
    hash: u64,
    state: u32,
    /// The first operation with a return not linearized; all earlier ones
    /// are.
    first_open: u32,
    /// One past the highest operation with a return linearized.
    top: u32,
    /// By value: how many operations that must see it (see
    /// `Search::readers`) are not linearized yet.
    readers_left: Vec<u32>,
}

impl Search {
    /// `initial`: the values the register may start with.
    fn new(mut ops: Vec<Prepared>, mode: Mode, initial: &[u32]) -> Search {
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
        let mut node_rank = vec![0; nodes];
        let mut node_is_call = vec![false; nodes];
        let mut node_match = vec![NIL; nodes];
        let mut call_node = vec![NIL; ops.len()];
        let mut ret_node = vec![NIL; ops.len()];
        let mut node_time = vec![0; nodes];
        for (i, &(time, kind, rank)) in events.iter().enumerate() {
            let n = i as u32 + 1;
            node_time[n as usize] = time;
            node_rank[n as usize] = rank;
            node_is_call[n as usize] = kind == 0;
            if kind == 0 {
                call_node[rank as usize] = n;
            } else {
                ret_node[rank as usize] = n;
            }
        }
        for rank in 0..ops.len() {
            node_match[call_node[rank] as usize] = ret_node[rank];
        }
        // Link the nodes in time order; in `Helpers` mode, without the
        // unknown-outcome calls.
        let mut next = vec![NIL; nodes];
        let mut prev = vec![HEAD; nodes];
        let mut last = HEAD;
        for n in 1..nodes as u32 {
            if mode == Mode::Helpers && node_rank[n as usize] >= timed {
                continue;
            }
            next[last as usize] = n;
            prev[n as usize] = last;
            last = n;
        }
        let zobrist = (0..ops.len() as u64).map(splitmix).collect();

        let mut class_of = vec![NIL; ops.len()];
        let mut classes: Vec<Class> = Vec::new();
        let mut class_ids: HashMap<Effect, u32> = HashMap::new();
        let mut classes_writing: HashMap<u32, Vec<u32>> = HashMap::new();
        for rank in timed as usize..ops.len() {
            let effect = ops[rank].effect;
            let c = *class_ids.entry(effect).or_insert_with(|| {
                classes.push(Class {
                    effect,
                    members: Vec::new(),
                });
                let c = classes.len() as u32 - 1;
                if let Effect::Write(v) | Effect::Cas { new: v, .. } = effect {
                    classes_writing.entry(v).or_default().push(c);
                }
                c
            });
            classes[c as usize].members.push(rank as u32);
            class_of[rank] = c;
        }
        // Values written by exactly one operation: once the register leaves
        // such a value it never holds it again, so it must not leave while
        // an operation that has to see it is still to come.
        let mut writers: HashMap<u32, u32> = HashMap::new();
        for &v in initial {
            *writers.entry(v).or_default() += 1;
        }
        for p in &ops {
            if let Effect::Write(v) | Effect::Cas { new: v, .. } = p.effect {
                *writers.entry(v).or_default() += 1;
            }
        }
        let must_see: Vec<Option<u32>> = ops
            .iter()
            .map(|p| match p.effect {
                _ if p.ret.is_none() || p.optional => None,
                Effect::Read(v) | Effect::Cas { expected: v, .. }
                    if v > OTHER && writers.get(&v) == Some(&1) =>
                {
                    Some(v)
                }
                _ => None,
            })
            .collect();
        let values = ops
            .iter()
            .map(|p| match p.effect {
                Effect::Write(v) | Effect::Read(v) | Effect::CasFails(v) => v,
                Effect::Cas { expected, new } => expected.max(new),
            })
            .chain(initial.iter().copied())
            .max()
            .map_or(0, |v| v as usize + 1);
        let mut readers = vec![0; values];
        for v in must_see.iter().flatten() {
            readers[*v as usize] += 1;
        }
        Search {
            mode,
            node_time,
            must_see,
            readers,
            effects: ops.iter().map(|p| p.effect).collect(),
            optional: ops.iter().map(|p| p.optional).collect(),
            timed,
            next,
            prev,
            node_rank,
            node_is_call,
            node_match,
            call_node,
            ret_node,
            zobrist,
            class_of,
            classes,
            classes_writing,
            pending: Vec::new(),
            pending_ids: HashMap::new(),
        }
    }

    /// The search state after operation `rank` in `state`, or `None` if
    /// the operation cannot (or need not be tried to) come next. In
    /// `InList` mode an unknown-outcome write leads to the state
    /// `PENDING | i`, with `pending[i]` = (register before, register
    /// after), and only an operation that needs the write may follow.
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

    /// The classes of unknown-outcome writes that could make the operation
    /// with this effect valid, as (list, how many); `None` for "every
    /// class".
    fn helper_classes(&self, effect: Effect) -> Option<&[u32]> {
        match effect {
            Effect::Read(v) | Effect::Cas { expected: v, .. } => Some(
                self.classes_writing
                    .get(&v)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            ),
            Effect::CasFails(_) => None,
            Effect::Write(_) => Some(&[]),
        }
    }

    /// The k-th candidate helper class for an operation with this effect.
    fn helper_class(&self, effect: Effect, k: u32) -> Option<u32> {
        match self.helper_classes(effect) {
            Some(list) => list.get(k as usize).copied(),
            None => (k < self.classes.len() as u32).then_some(k),
        }
    }

    /// The next unused member of class `c`, if it has been called before
    /// the earliest pending return (so it can be placed now).
    fn next_member(&self, pos: &Position, c: u32) -> Option<u32> {
        let class = &self.classes[c as usize];
        let m = *class.members.get(pos.used[c as usize] as usize)?;
        let frontier = self.ret_node[pos.first_open as usize];
        (self.call_node[m as usize] < frontier).then_some(m)
    }

    /// Takes a call node and its return node out of the list.
    fn lift(&mut self, n: u32) {
        self.unlink(n);
        let m = self.node_match[n as usize];
        if m != NIL {
            self.unlink(m);
        }
    }

    /// Puts back what `lift(n)` took out (in reverse order).
    fn unlift(&mut self, n: u32) {
        let m = self.node_match[n as usize];
        if m != NIL {
            self.relink(m);
        }
        self.relink(n);
    }

    /// Takes node `n` out of the list; it keeps its own links, so that
    /// `relink` can put it back.
    #[inline]
    fn unlink(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = x;
        if x != NIL {
            self.prev[x as usize] = p;
        }
    }

    /// Puts back node `n`, taken out by `unlink`, between its old
    /// neighbours.
    #[inline]
    fn relink(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = n;
        if x != NIL {
            self.prev[x as usize] = n;
        }
    }

    /// Adds operation `rank` to the set of linearized operations.
    fn mark(&self, pos: &mut Position, rank: u32) {
        let timed = self.timed;
        if rank < timed {
            set_bit(&mut pos.timed_bits, rank);
            if rank == pos.first_open {
                pos.first_open = first_zero(&pos.timed_bits, rank + 1, timed);
            }
            pos.top = pos.top.max(rank + 1);
            pos.hash ^= self.zobrist[rank as usize];
            if let Some(v) = self.must_see[rank as usize] {
                pos.readers_left[v as usize] -= 1;
            }
        } else {
            bump(pos, self.class_of[rank as usize], true);
        }
    }

    /// Takes operation `rank` out of the set (`first_open` and `top` are
    /// restored by the caller).
    fn unmark(&self, pos: &mut Position, rank: u32) {
        if rank < self.timed {
            clear_bit(&mut pos.timed_bits, rank);
            pos.hash ^= self.zobrist[rank as usize];
            if let Some(v) = self.must_see[rank as usize] {
                pos.readers_left[v as usize] += 1;
            }
        } else {
            bump(pos, self.class_of[rank as usize], false);
        }
    }

    /// Whether the position is new (in `Helpers` mode: not dominated by
    /// one seen before); records it.
    fn remember(&self, pos: &Position, cache: &mut Cache, record: &mut Vec<u64>) -> bool {
        encode(record, pos.state, pos.first_open, pos.top, &pos.timed_bits);
        let hash = pos.hash ^ splitmix(u64::from(pos.state));
        let dominance = self.mode == Mode::Helpers;
        cache.insert(hash, record, &pos.used_list, &pos.used, dominance)
    }

    /// Tries alternative `alt` for the call node `node`; on success the
    /// position includes the choice and the frame to undo it is returned.
    fn try_alt(
        &mut self,
        pos: &mut Position,
        node: u32,
        alt: u32,
        cache: &mut Cache,
        record: &mut Vec<u64>,
    ) -> Option<Frame> {
        let rank = self.node_rank[node as usize];
        let frame = Frame {
            node,
            alt,
            state: pos.state,
            first_open: pos.first_open,
            top: pos.top,
        };
        let undo = |this: &Search, pos: &mut Position, helper: Option<u32>| {
            this.unmark(pos, rank);
            if let Some(m) = helper {
                this.unmark(pos, m);
            }
            pos.state = frame.state;
            pos.first_open = frame.first_open;
            pos.top = frame.top;
        };
        let helper = match alt {
            ALT_EFFECT => {
                if rank >= self.timed {
                    // An unknown-outcome call in the list: only after every
                    // earlier write with the same effect.
                    let c = self.class_of[rank as usize];
                    if self.next_member(pos, c) != Some(rank) {
                        return None;
                    }
                }
                pos.state = self.step(pos.state, rank)?;
                None
            }
            ALT_LEFT_OUT => None,
            _ => {
                // An unknown-outcome write just before this operation,
                // which it makes valid.
                let effect = self.effects[rank as usize];
                let c = self.helper_class(effect, alt - ALT_HELPER)?;
                let m = self.next_member(pos, c)?;
                let n = self.classes[c as usize].effect.apply(pos.state)?;
                if n == pos.state || effect.apply(pos.state).is_some() {
                    return None;
                }
                pos.state = effect.apply(n)?;
                self.mark(pos, m);
                Some((m, n))
            }
        };
        self.mark(pos, rank);
        // Leaving a value written once while an operation that must see it
        // is still to come leads nowhere.
        let abandons = |from: u32, to: u32| {
            from != to && pos.readers_left.get(from as usize).is_some_and(|&k| k > 0)
        };
        let (before, after) = (self.register(frame.state), self.register(pos.state));
        let dead = match helper {
            Some((_, n)) => abandons(before, n) || abandons(n, after),
            None => abandons(before, after),
        };
        if !dead && self.remember(pos, cache, record) {
            return Some(frame);
        }
        undo(self, pos, helper.map(|(m, _)| m));
        None
    }

    /// The register's value in a search state.
    fn register(&self, state: u32) -> u32 {
        if state & PENDING != 0 {
            self.pending[(state & !PENDING) as usize].1
        } else {
            state
        }
    }

    /// One past the last alternative to try for a call node in `state`.
    fn alternatives(&self, node: u32, state: u32) -> u32 {
        let rank = self.node_rank[node as usize];
        if rank >= self.timed {
            return ALT_EFFECT + 1;
        }
        let effect = self.effects[rank as usize];
        if self.mode == Mode::InList || self.classes.is_empty() || effect.apply(state).is_some() {
            // No helper needed, or none possible.
            return ALT_HELPER;
        }
        let helpers = match self.helper_classes(effect) {
            Some(list) => list.len() as u32,
            None => self.classes.len() as u32,
        };
        ALT_HELPER + helpers
    }

    /// Searches from the register holding `start`.
    fn run(mut self, limits: &Limits, start: u32) -> Run {
        let timed = self.timed;
        let done = |outcome, steps| Run {
            outcome,
            steps,
            stuck_at: None,
        };
        if timed == 0 {
            return done(Outcome::Linearizable, 0);
        }
        let mut pos = Position {
            timed_bits: vec![0; (timed as usize).div_ceil(64)],
            used: vec![0; self.classes.len()],
            used_list: Vec::new(),
            hash: 0,
            state: start,
            first_open: 0,
            top: 0,
            readers_left: self.readers.clone(),
        };
        let mut cache = Cache::new();
        let mut record: Vec<u64> = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();

        // The calls that may come next (those before the first pending
        // return), by return time: the one due first is tried first.
        let mut window: Vec<u32> = Vec::new();
        self.fill_window(&mut window, pos.state);
        // The next call to try, and its first alternative.
        let mut i = 0;
        let mut alt = ALT_EFFECT;
        // Whether this is the second pass over the window, which tries
        // unknown-outcome writes just before the calls (the first pass
        // tries the calls as they are).
        let mut helping = false;
        // The highest `first_open` reached.
        let mut furthest = 0;
        let mut steps = 0u64;
        loop {
            steps += 1;
            let exhausted = if steps > limits.steps {
                Some(Exhausted::Steps(limits.steps))
            } else if cache.bytes() > limits.cache_bytes {
                Some(Exhausted::Cache(limits.cache_bytes))
            } else {
                None
            };
            if let Some(e) = exhausted {
                let stuck = self.ret_node[furthest as usize];
                return Run {
                    outcome: Outcome::Unknown(e),
                    steps,
                    stuck_at: Some(self.node_time[stuck as usize]),
                };
            }
            if let Some(&node) = window.get(i) {
                let rank = self.node_rank[node as usize];
                let mut chosen = None;
                let (from, to) = if helping {
                    (alt.max(ALT_HELPER), self.alternatives(node, pos.state))
                } else {
                    (alt, ALT_HELPER.min(self.alternatives(node, pos.state)))
                };
                for a in from..to {
                    if a == ALT_LEFT_OUT && !self.optional[rank as usize] {
                        continue;
                    }
                    if let Some(f) = self.try_alt(&mut pos, node, a, &mut cache, &mut record) {
                        chosen = Some(f);
                        break;
                    }
                }
                alt = ALT_EFFECT;
                if let Some(f) = chosen {
                    stack.push(f);
                    self.lift(node);
                    if pos.first_open == timed {
                        return done(Outcome::Linearizable, steps);
                    }
                    furthest = furthest.max(pos.first_open);
                    self.fill_window(&mut window, pos.state);
                    i = 0;
                    helping = false;
                } else {
                    i += 1;
                }
            } else if !helping && self.mode == Mode::Helpers && !self.classes.is_empty() {
                // Nothing can come next as things are: now try placing
                // unknown-outcome writes just before the calls.
                helping = true;
                i = 0;
                alt = ALT_HELPER;
            } else {
                // Nothing can come next: undo the last choice, then try
                // its next alternative.
                let Some(f) = stack.pop() else {
                    let stuck = self.ret_node[furthest as usize];
                    return Run {
                        outcome: Outcome::Violation,
                        steps,
                        stuck_at: Some(self.node_time[stuck as usize]),
                    };
                };
                let rank = self.node_rank[f.node as usize];
                self.unmark(&mut pos, rank);
                if f.alt >= ALT_HELPER {
                    let effect = self.effects[rank as usize];
                    if let Some(c) = self.helper_class(effect, f.alt - ALT_HELPER) {
                        let m = self.classes[c as usize].members[pos.used[c as usize] as usize - 1];
                        self.unmark(&mut pos, m);
                    }
                }
                pos.state = f.state;
                pos.first_open = f.first_open;
                pos.top = f.top;
                self.unlift(f.node);
                self.fill_window(&mut window, pos.state);
                i = window
                    .iter()
                    .position(|&n| n == f.node)
                    .unwrap_or(window.len());
                alt = f.alt + 1;
                helping = f.alt >= ALT_HELPER;
            }
        }
    }

    /// The call nodes before the first return node in the list, by rank
    /// (return time first; unknown-outcome calls last, by call time).
    ///
    /// If one of them is a read (a `get`, a failed `cas`) that holds in
    /// `state`, it alone: a read changes nothing, so placing it now rather
    /// than later loses nothing (any order with it later stays valid with
    /// it moved here), and trying the others first would only multiply the
    /// orders explored.
    fn fill_window(&self, window: &mut Vec<u32>, state: u32) {
        window.clear();
        let mut n = self.next[HEAD as usize];
        while n != NIL && self.node_is_call[n as usize] {
            let rank = self.node_rank[n as usize];
            let read = matches!(
                self.effects[rank as usize],
                Effect::Read(_) | Effect::CasFails(_)
            );
            if read
                && rank < self.timed
                && state & PENDING == 0
                && self.effects[rank as usize].apply(state).is_some()
            {
                window.clear();
                window.push(n);
                return;
            }
            window.push(n);
            n = self.next[n as usize];
        }
        window.sort_unstable_by_key(|&n| self.node_rank[n as usize]);
    }
}

fn set_bit(bits: &mut [u64], i: u32) {
    bits[(i / 64) as usize] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: u32) {
    bits[(i / 64) as usize] &= !(1 << (i % 64));
}

/// One more (or one fewer) member of class `c` used.
fn bump(pos: &mut Position, c: u32, up: bool) {
    let count = &mut pos.used[c as usize];
    let old = *count;
    *count = if up { old + 1 } else { old - 1 };
    let new = *count;
    let i = pos.used_list.partition_point(|&e| (e >> 32) < u64::from(c));
    let entry = u64::from(c) << 32 | u64::from(new);
    match (old, new) {
        (0, _) => pos.used_list.insert(i, entry),
        (_, 0) => {
            pos.used_list.remove(i);
        }
        _ => pos.used_list[i] = entry,
    }
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

/// The canonical cache key of (state, set of linearized operations with
/// a return): `[state << 32 | first_open, n, n window words]`, the window
/// being the words of `timed_bits` from `first_open` to `top - 1`. Every
/// such operation below `first_open` is linearized and none at or above
/// `top` is, so the key determines the set.
fn encode(record: &mut Vec<u64>, state: u32, first_open: u32, top: u32, timed_bits: &[u64]) {
    record.clear();
    record.push(u64::from(state) << 32 | u64::from(first_open));
    if top > first_open {
        let (lo, hi) = ((first_open / 64) as usize, ((top - 1) / 64) as usize);
        record.push((hi - lo + 1) as u64);
        record.extend_from_slice(&timed_bits[lo..=hi]);
    } else {
        record.push(0);
    }
}

/// The positions seen. Each distinct key (see `encode`) is stored once in
/// `keys`, behind an open-addressing hash table; the sparse used counts
/// seen with it form a chain in `chains`: `[next, n, n entries]`.
struct Cache {
    /// (hash, offset of the key in `keys`, offset of the chain's head in
    /// `chains`); `EMPTY` key offsets are free.
    slots: Vec<(u64, u64, u64)>,
    len: usize,
    keys: Vec<u64>,
    chains: Vec<u64>,
}

const EMPTY: u64 = u64::MAX;

impl Cache {
    fn new() -> Cache {
        Cache {
            slots: vec![(0, EMPTY, EMPTY); 1024],
            len: 0,
            keys: Vec::new(),
            chains: Vec::new(),
        }
    }

    fn bytes(&self) -> usize {
        self.slots.len() * 24 + (self.keys.len() + self.chains.len()) * 8
    }

    /// Adds a position, given by its key and its used counts (sparse and
    /// dense); false if it was seen before, or (with `dominance`) if a
    /// position with the same key and no more unknown-outcome writes used
    /// in any class was: whatever can follow this one could follow that
    /// one, with earlier-called writes. A key's second word gives its
    /// length.
    fn insert(
        &mut self,
        hash: u64,
        key: &[u64],
        sparse: &[u64],
        used: &[u32],
        dominance: bool,
    ) -> bool {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let (h, key_off, head) = self.slots[i];
            if key_off == EMPTY {
                let key_off = self.keys.len() as u64;
                self.keys.extend_from_slice(key);
                let head = self.push_chain(EMPTY, sparse);
                self.slots[i] = (hash, key_off, head);
                self.len += 1;
                return true;
            }
            let k = key_off as usize;
            if h == hash && self.keys.get(k..k + key.len()) == Some(key) {
                let mut at = head as usize;
                loop {
                    let next = self.chains[at];
                    let n = self.chains[at + 1] as usize;
                    let seen = &self.chains[at + 2..at + 2 + n];
                    let covered = |&e: &u64| used[(e >> 32) as usize] >= e as u32;
                    // Classes missing from `seen` count 0, below anything.
                    if seen == sparse || (dominance && seen.iter().all(covered)) {
                        return false;
                    }
                    if next == EMPTY {
                        break;
                    }
                    at = next as usize;
                }
                self.slots[i].2 = self.push_chain(head, sparse);
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    /// Appends a chain entry; returns its offset.
    fn push_chain(&mut self, next: u64, sparse: &[u64]) -> u64 {
        let at = self.chains.len() as u64;
        self.chains.push(next);
        self.chains.push(sparse.len() as u64);
        self.chains.extend_from_slice(sparse);
        at
    }

    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let mask = size - 1;
        let mut slots = vec![(0, EMPTY, EMPTY); size];
        for &slot in &self.slots {
            if slot.1 != EMPTY {
                let mut i = slot.0 as usize & mask;
                while slots[i].1 != EMPTY {
                    i = (i + 1) & mask;
                }
                slots[i] = slot;
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
        assert_eq!(prepare(&refs, &[]).0.len(), 1);
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
