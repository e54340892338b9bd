//! Shrinking a non-linearizable key history to a small counterexample.
//!
//! The key's operations are taken in call order. First the shortest
//! failing prefix is found, then the shortest failing window at the end of
//! that prefix (each by doubling, then bisection); then the writes of the
//! values that the window reads are added, and operations are removed, in
//! halving chunks and finally one by one, for as long as what remains
//! still fails.
//!
//! "Fails" is checked with every write of the key that is left out kept as
//! optional: it takes effect within its interval (any time after its call
//! if its outcome is unknown) or not at all. Leaving out a read (a `get`,
//! a failed `cas`) and making a write optional only remove constraints, so
//! a set that fails this way proves the whole history of the key wrong,
//! whatever the other writes did; and adding operations to a failing set
//! keeps it failing, which makes the bisections exact.
//!
//! A write is not removed while a remaining operation needs the value it
//! wrote (a `get` that returned it, a `cas` that expected it), so that the
//! counterexample shows where the values it reads come from.

use std::collections::HashSet;

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

/// Runs the checks of one shrinking, within a step budget.
struct Shrinker<'a, 'l> {
    /// The key's operations that the checker looks at, in call order.
    all: Vec<&'a Operation>,
    limits: &'l Limits,
    budget: u64,
    steps: u64,
}

impl<'a> Shrinker<'a, '_> {
    fn out_of_budget(&self) -> bool {
        self.steps >= self.budget
    }

    /// True only when the operations `set` (indices into `all`, ascending)
    /// are shown not linearizable within the limits, even with the writes
    /// left out of `set` allowed to take effect at any time after their
    /// call, or not at all.
    fn fails(&mut self, set: &[usize]) -> bool {
        if self.out_of_budget() {
            return false;
        }
        let mut ops = Vec::with_capacity(set.len());
        let mut rest = Vec::with_capacity(self.all.len() - set.len());
        let mut next = set.iter().peekable();
        for (i, op) in self.all.iter().enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                ops.push(*op);
            } else {
                rest.push(*op);
            }
        }
        let run = check_key(&ops, &rest, self.limits);
        self.steps += run.steps;
        run.outcome == Outcome::Violation
    }
}

/// Shrinks `ops` (one key's operations, not linearizable) to a small set
/// that is still not linearizable, spending at most about `budget` search
/// steps.
///
/// Every reduction is checked with the writes left out made optional (they
/// may take effect at any time after their call, or not at all), which
/// only relaxes the history: so the result proves the whole key history
/// wrong, whatever the other writes did.
pub(crate) fn shrink<'a>(ops: &[&'a Operation], limits: &Limits, budget: u64) -> Shrunk<'a> {
    let mut all: Vec<&'a Operation> = ops.iter().copied().filter(|op| relevant(op)).collect();
    all.sort_by_key(|op| op.invoke_ns);
    let n = all.len();
    let mut s = Shrinker {
        all,
        limits,
        budget,
        steps: 0,
    };

    // The shortest failing prefix. With the writes left out kept as
    // optional, adding operations only adds constraints, so failure is
    // monotone: double, then bisect. The whole set fails.
    let range = |a: usize, b: usize| (a..b).collect::<Vec<usize>>();
    let (mut lo, mut hi) = (0, n);
    let mut k = 1;
    while k < n {
        if s.fails(&range(0, k)) {
            hi = k;
            break;
        }
        lo = k;
        k *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if s.fails(&range(0, mid)) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let end = hi;

    // The shortest failing window ending there, the same way from the end.
    let (mut short, mut long) = (0, end);
    let mut w = 1;
    while w < end {
        if s.fails(&range(end - w, end)) {
            long = w;
            break;
        }
        short = w;
        w *= 2;
    }
    while long - short > 1 {
        let mid = short + (long - short) / 2;
        if s.fails(&range(end - mid, end)) {
            long = mid;
        } else {
            short = mid;
        }
    }
    let mut set = range(end - long, end);

    // Add the writes of the values the window reads (adding operations
    // keeps it failing), so that the counterexample shows where they come
    // from.
    let mut wanted: Vec<&str> = set
        .iter()
        .filter_map(|&i| needs(s.all[i]).flatten())
        .collect();
    while let Some(v) = wanted.pop() {
        for i in 0..end {
            if writes(s.all[i]) == Some(Some(v)) && !set.contains(&i) {
                set.push(i);
                wanted.extend(needs(s.all[i]).flatten());
            }
        }
    }
    set.sort_unstable();

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
        ops: set.iter().map(|&i| s.all[i]).collect(),
        steps: s.steps,
    }
}

/// The set without the operations at `set[start..end]` (less any write a
/// remaining operation needs), if that still fails.
fn try_remove(
    s: &mut Shrinker<'_, '_>,
    set: &[usize],
    start: usize,
    end: usize,
) -> Option<Vec<usize>> {
    let op = |j: usize| s.all[set[j]];
    let mut keep = vec![true; set.len()];
    keep[start..end].iter_mut().for_each(|k| *k = false);
    let mut needed: HashSet<&str> = HashSet::new();
    for j in (0..set.len()).filter(|&j| keep[j]) {
        needed.extend(needs(op(j)).flatten());
    }
    // Put back writes that remaining operations need, and whatever those
    // writes need in turn.
    loop {
        let mut changed = false;
        for (j, kept) in keep.iter_mut().enumerate().take(end).skip(start) {
            if *kept {
                continue;
            }
            if let Some(Some(v)) = writes(op(j)) {
                if needed.contains(v) {
                    *kept = true;
                    changed = true;
                    needed.extend(needs(op(j)).flatten());
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
    let candidate: Vec<usize> = (0..set.len())
        .filter(|&j| keep[j])
        .map(|j| set[j])
        .collect();
    s.fails(&candidate).then_some(candidate)
}
