//! Shrinking a non-linearizable key history to a small counterexample.
//!
//! The key's operations are taken in call order. First a failing window of
//! consecutive operations is found: one growing, in doubling steps, around
//! the return at which the search of the whole key got stuck, until it
//! fails; then each end moves in, by bisection, as far as it still fails.
//! Then the writes of the values that the window reads are added, and
//! operations are removed, in halving chunks and finally one by one, for
//! as long as what remains still fails.
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
        if self.out_of_budget() || set.is_empty() {
            return false;
        }
        let ops: Vec<&Operation> = set.iter().map(|&i| self.all[i]).collect();
        let start = ops.iter().map(|op| op.invoke_ns).min().unwrap_or(0);
        let end = ops
            .iter()
            .map(|op| match op.ok {
                Some(_) => op.complete_ns.unwrap_or(u64::MAX),
                None => u64::MAX,
            })
            .max()
            .unwrap_or(u64::MAX);
        // The other writes that may matter. Writes called after every
        // operation of the set returned cannot; of the definite writes that
        // returned before the set began, only the value they may leave
        // matters, so one writer per value that some operation compares
        // with, and one of any other value, stand for all of them.
        let called = self.all.partition_point(|op| op.invoke_ns <= end);
        let mut in_set = vec![false; called];
        for &i in set.iter().filter(|&&i| i < called) {
            in_set[i] = true;
        }
        // An unknown-outcome write whose value an operation of the set must
        // see may turn out to be required (see the search's rewrites), so
        // the set may begin as early as the first of them.
        let seen: HashSet<&str> = ops.iter().filter_map(|op| needs(op).flatten()).collect();
        let start = self.all[..called]
            .iter()
            .zip(&in_set)
            .filter(|(op, &member)| {
                !member && op.ok.is_none() && writes(op).flatten().is_some_and(|v| seen.contains(v))
            })
            .map(|(op, _)| op.invoke_ns)
            .fold(start, u64::min);
        let before = |op: &Operation| op.ok.is_some() && op.complete_ns.is_some_and(|t| t < start);
        let compared_by = |op: &'a Operation| match (op.kind, op.ok) {
            (OpKind::Get, Some(true)) => op.result.as_deref(),
            (OpKind::Cas, _) => op.expected.as_deref(),
            _ => None,
        };
        let mut compared: HashSet<&str> = ops.iter().filter_map(|op| compared_by(op)).collect();
        let mut rest = Vec::new();
        for (i, op) in self.all[..called].iter().enumerate() {
            if !in_set[i] && writes(op).is_some() && !before(op) {
                compared.extend(compared_by(op));
                rest.push(*op);
            }
        }
        let mut standing: HashSet<Option<&str>> = HashSet::new();
        for (i, op) in self.all[..called].iter().enumerate() {
            if in_set[i] || !before(op) {
                continue;
            }
            match writes(op) {
                // Absent is a starting value anyway.
                None | Some(None) => {}
                Some(Some(v)) => {
                    if standing.insert(compared.contains(v).then_some(v)) {
                        rest.push(*op);
                    }
                }
            }
        }
        let limits = Limits {
            steps: self.limits.steps.min(self.budget - self.steps),
            ..*self.limits
        };
        let run = check_key(&ops, &rest, &limits);
        self.steps += run.steps;
        run.outcome == Outcome::Violation
    }
}

/// Looks for a violation in windows of 64, then 512, then 4096 consecutive
/// operations (in call order) of one key, each checked with the key's
/// other writes optional:
/// for a key whose whole search ran out of budget. A window that fails
/// proves the key wrong; the operations of the first one found are
/// returned, shrunk.
///
/// Windows are tried nearest to `near` first (where the search of the
/// whole key stopped).
pub(crate) fn find_in_windows<'a>(
    ops: &[&'a Operation],
    near: Option<u64>,
    limits: &Limits,
    budget: u64,
) -> Option<Shrunk<'a>> {
    let mut all: Vec<&'a Operation> = ops.iter().copied().filter(|op| relevant(op)).collect();
    all.sort_by_key(|op| op.invoke_ns);
    let n = all.len();
    let mut s = Shrinker {
        all,
        limits,
        budget,
        steps: 0,
    };
    let centre = near.map_or(0, |t| s.all.partition_point(|op| op.invoke_ns <= t));
    for width in [64, 512, 4096] {
        let mut starts: Vec<usize> = (0..n).step_by(width / 2).collect();
        starts.sort_by_key(|&a| (a + width / 2).abs_diff(centre));
        for a in starts {
            if s.out_of_budget() {
                return None;
            }
            let b = (a + width).min(n);
            if s.fails(&(a..b).collect::<Vec<usize>>()) {
                let centre = s.all[(a + b) / 2].invoke_ns;
                let left = budget.saturating_sub(s.steps);
                let mut shrunk = shrink(ops, Some(centre), limits, left);
                shrunk.steps += s.steps;
                return Some(shrunk);
            }
        }
        if width >= n {
            break;
        }
    }
    None
}

/// Shrinks `ops` (one key's operations, not linearizable) to a small set
/// that is still not linearizable, spending at most about `budget` search
/// steps.
///
/// Every reduction is checked with the writes left out made optional (they
/// may take effect at any time after their call, or not at all), which
/// only relaxes the history: so the result proves the whole key history
/// wrong, whatever the other writes did.
///
/// `stuck_at` is where the search of the whole key got stuck (see
/// `Run::stuck_at`): the operations called until then already fail, which
/// saves looking for the failing prefix.
pub(crate) fn shrink<'a>(
    ops: &[&'a Operation],
    stuck_at: Option<u64>,
    limits: &Limits,
    budget: u64,
) -> Shrunk<'a> {
    let mut all: Vec<&'a Operation> = ops.iter().copied().filter(|op| relevant(op)).collect();
    all.sort_by_key(|op| op.invoke_ns);
    let n = all.len();
    let mut s = Shrinker {
        all,
        limits,
        budget,
        steps: 0,
    };

    // A failing window of consecutive operations (in call order). Leaving
    // operations out only relaxes the history, so a window that fails
    // stays failing when it grows: grow one around where the search of the
    // whole key got stuck (the start, without that), doubling, until it
    // fails. The whole set fails.
    let range = |a: usize, b: usize| (a..b).collect::<Vec<usize>>();
    let centre = stuck_at.map_or(0, |t| s.all.partition_point(|op| op.invoke_ns <= t));
    let (mut start, mut end) = (0, n);
    let mut w = 4;
    while w < 2 * n {
        let (a, b) = (centre.saturating_sub(w), (centre + w).min(n));
        if (a, b) == (0, n) {
            break;
        }
        if s.fails(&range(a, b)) {
            (start, end) = (a, b);
            break;
        }
        w *= 2;
    }
    // Then move each end in as far as it still fails, by bisection.
    end = bisect(end, start, |mid| s.fails(&range(start, mid)));
    start = bisect(start, end, |mid| s.fails(&range(mid, end)));
    let mut set = range(start, end);

    // Add the writes of the values the window reads (adding operations
    // keeps it failing), so that the counterexample shows where they come
    // from.
    let mut wanted: Vec<&str> = set
        .iter()
        .filter_map(|&i| needs(s.all[i]).flatten())
        .collect();
    while let Some(v) = wanted.pop() {
        for i in 0..n {
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

/// Between a point where `fails_at` holds (`fails`) and one where it does
/// not (`passes`), in either order: the point nearest `passes` found to
/// hold, by bisection.
fn bisect(mut fails: usize, mut passes: usize, mut fails_at: impl FnMut(usize) -> bool) -> usize {
    while fails.abs_diff(passes) > 1 {
        let mid = fails.min(passes) + fails.abs_diff(passes) / 2;
        if fails_at(mid) {
            fails = mid;
        } else {
            passes = mid;
        }
    }
    fails
}
