//! Shrinking a non-linearizable key history to a small counterexample.
//!
//! First the shortest failing prefix by call time is looked for (by
//! doubling, then bisection, so it is a prefix one operation shorter than
//! which no longer fails), then operations are removed from it, in
//! halving chunks and finally one by one, for as long as what remains is
//! still not linearizable.
//!
//! A write is never removed while a remaining operation needs the value it
//! wrote (a `get` that returned it, a `cas` that expected it): otherwise a
//! read would be "explained" as reading a value nobody wrote, which is a
//! valid but useless counterexample.

use std::collections::HashMap;

use super::history::{OpKind, Operation};
use super::search::{check_key, Limits, Outcome};

/// A failing subset of one key's operations.
pub(crate) struct Shrunk<'a> {
    /// In call order.
    pub ops: Vec<&'a Operation>,
    /// False when the step budget ran out before shrinking finished (the
    /// operations still form a counterexample, just maybe not a small one).
    pub finished: bool,
    pub steps: u64,
}

/// Whether the checker looks at the operation at all.
fn relevant(op: &Operation) -> bool {
    match (op.kind, op.ok) {
        (OpKind::Get, ok) => ok == Some(true),
        (OpKind::Put | OpKind::Delete, ok) => ok != Some(false),
        (OpKind::Cas, _) => true,
    }
}

/// The register value this operation may write, if it writes.
fn writes(op: &Operation) -> Option<Option<&str>> {
    match (op.kind, op.ok) {
        (OpKind::Put, _) => Some(op.value.as_deref()),
        (OpKind::Delete, _) => Some(None),
        (OpKind::Cas, Some(true) | None) => Some(op.value.as_deref()),
        _ => None,
    }
}

/// The register value this operation needs to find, if any.
fn needs(op: &Operation) -> Option<Option<&str>> {
    match (op.kind, op.ok) {
        (OpKind::Get, Some(true)) => Some(op.result.as_deref()),
        (OpKind::Cas, Some(true) | None) => Some(op.expected.as_deref()),
        _ => None,
    }
}

struct Shrinker<'l> {
    limits: &'l Limits,
    budget: u64,
    steps: u64,
}

impl Shrinker<'_> {
    fn out_of_budget(&self) -> bool {
        self.steps >= self.budget
    }

    /// True only when the set is shown not linearizable within the limits.
    fn fails(&mut self, ops: &[&Operation]) -> bool {
        if self.out_of_budget() {
            return false;
        }
        let run = check_key(ops, self.limits);
        self.steps += run.steps;
        run.outcome == Outcome::Violation
    }
}

/// Shrinks `ops` (one key's operations, not linearizable) to a small set
/// that is still not linearizable, spending at most about `budget` search
/// steps.
pub(crate) fn shrink<'a>(ops: &[&'a Operation], limits: &Limits, budget: u64) -> Shrunk<'a> {
    let mut set: Vec<&'a Operation> = ops.iter().copied().filter(|op| relevant(op)).collect();
    set.sort_by_key(|op| op.invoke_ns);
    let mut s = Shrinker {
        limits,
        budget,
        steps: 0,
    };

    // A short failing prefix: double, then bisect between a passing and a
    // failing length. The whole set fails.
    let n = set.len();
    let (mut lo, mut hi) = (0, n);
    let mut k = 1;
    while k < n {
        if s.fails(&set[..k]) {
            hi = k;
            break;
        }
        lo = k;
        k *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if s.fails(&set[..mid]) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    set.truncate(hi);

    // Remove chunks, halving their size, then single operations until
    // nothing more can go.
    let mut chunk = (set.len() / 2).max(1);
    loop {
        let mut removed_any = false;
        let mut i = 0;
        while i < set.len() && !s.out_of_budget() {
            let end = (i + chunk).min(set.len());
            match try_remove(&mut s, &set, i, end) {
                Some(smaller) => {
                    set = smaller;
                    removed_any = true;
                }
                None => i = end,
            }
        }
        if s.out_of_budget() {
            break;
        }
        if chunk > 1 {
            chunk /= 2;
        } else if !removed_any {
            break;
        }
    }
    Shrunk {
        finished: !s.out_of_budget(),
        ops: set,
        steps: s.steps,
    }
}

/// The set without the operations in `set[start..end]` (less any write a
/// remaining operation needs), if that still fails.
fn try_remove<'a>(
    s: &mut Shrinker<'_>,
    set: &[&'a Operation],
    start: usize,
    end: usize,
) -> Option<Vec<&'a Operation>> {
    let mut keep = vec![true; set.len()];
    keep[start..end].iter_mut().for_each(|k| *k = false);
    let mut needed: HashMap<Option<&str>, usize> = HashMap::new();
    for (op, _) in set.iter().zip(&keep).filter(|(_, &k)| k) {
        if let Some(v) = needs(op) {
            *needed.entry(v).or_default() += 1;
        }
    }
    // Put back writes that remaining operations need, and whatever those
    // writes need in turn.
    loop {
        let mut changed = false;
        for i in start..end {
            if keep[i] {
                continue;
            }
            if let Some(v) = writes(set[i]) {
                if needed.contains_key(&v) {
                    keep[i] = true;
                    changed = true;
                    if let Some(w) = needs(set[i]) {
                        *needed.entry(w).or_default() += 1;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if keep[start..end].iter().all(|&k| k) {
        return None;
    }
    let candidate: Vec<&Operation> = set
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(op, _)| *op)
        .collect();
    s.fails(&candidate).then_some(candidate)
}
