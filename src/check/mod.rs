//! Linearizability checking of key-value client histories.
//!
//! A history is a list of client [`Operation`]s, each with the interval of
//! time between its call and its answer (see `docs/HISTORY.md` for the
//! JSON-lines file format and the exact semantics). The history is
//! linearizable if every operation can be placed at one instant inside its
//! interval so that, in that order, every answer agrees with a key-value
//! store in which each key is a register that starts absent.
//!
//! Keys are independent, so [`check`] splits the history by key and runs,
//! per key, the Wing–Gong/Lowe search with memoisation (the algorithm of
//! Porcupine). A key whose search exceeds its budget is reported as
//! undecided, never as passing. For a key that is not linearizable the
//! report carries a small set of its operations that cannot be ordered.
//!
//! ```
//! use raftkit::check::{check, parse_history, CheckOptions};
//!
//! let history = parse_history(concat!(
//!     r#"{"client":1,"op":"put","key":"k","value":"a","invoke_ns":0,"complete_ns":10,"ok":true,"result":null}"#,
//!     "\n",
//!     r#"{"client":2,"op":"get","key":"k","value":null,"invoke_ns":20,"complete_ns":30,"ok":true,"result":null}"#,
//!     "\n",
//! ))?;
//! let verdict = check(&history, &CheckOptions::default());
//! assert!(!verdict.is_linearizable());
//! assert!(verdict.to_string().ends_with("NOT linearizable: key \"k\": 2 operations cannot be ordered\n"));
//! # Ok::<(), raftkit::check::HistoryError>(())
//! ```

mod history;
mod minimize;
mod search;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

pub use history::{parse_history, read_history, write_op, HistoryError, OpKind, Operation};
pub use search::Exhausted;

use search::{check_key, Limits, Outcome};

/// Budgets for [`check`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Search steps allowed for one key (about 4 million a second); past
    /// it the key's operations are searched in windows instead, and the key
    /// is undecided unless one of them fails.
    pub step_budget: u64,
    /// Bytes the memoisation cache of one key may use; past it, as for the
    /// step budget.
    pub cache_budget_bytes: usize,
    /// Shrink the operations of a failing key to a small counterexample.
    /// Without it the report lists all of the key's operations.
    pub shrink: bool,
    /// Search steps allowed, in total, for shrinking one key's
    /// counterexample (or for the window search); past it the
    /// counterexample found so far is reported.
    pub shrink_budget: u64,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            step_budget: 100_000_000,
            cache_budget_bytes: 512 << 20,
            shrink: true,
            shrink_budget: 50_000_000,
        }
    }
}

/// A key whose operations cannot be linearized.
#[derive(Clone, Debug)]
pub struct KeyFailure {
    pub key: String,
    /// Operations of the key that cannot be ordered, in call order: not
    /// even if every other write on the key took effect (within its
    /// interval) or not, as suits.
    pub ops: Vec<Operation>,
    /// False when shrinking ran out of budget: `ops` still cannot be
    /// ordered but may not be minimal.
    pub shrunk: bool,
    /// How many operations the key has in the history.
    pub key_ops: usize,
}

/// A key the search could not decide within its budget.
#[derive(Clone, Debug)]
pub struct UnknownKey {
    pub key: String,
    pub reason: Exhausted,
    pub key_ops: usize,
}

/// The result of [`check`].
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Operations in the history.
    pub operations: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Search steps over all keys (including shrinking).
    pub steps: u64,
    pub elapsed: Duration,
    /// Keys that are not linearizable, in key order.
    pub failures: Vec<KeyFailure>,
    /// Keys left undecided, in key order.
    pub unknown: Vec<UnknownKey>,
}

impl Verdict {
    /// True when every key was shown linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.failures.is_empty() && self.unknown.is_empty()
    }

    /// True when some key was shown not linearizable.
    pub fn has_violation(&self) -> bool {
        !self.failures.is_empty()
    }

    /// The exit status of `raft-ctl check`: 0 linearizable, 1 not
    /// linearizable, 3 undecided (budget exceeded on some key, no
    /// violation found).
    pub fn exit_code(&self) -> i32 {
        if self.has_violation() {
            1
        } else if !self.unknown.is_empty() {
            3
        } else {
            0
        }
    }
}

/// Counterexamples printed in full by `Display`; the rest are counted.
const SHOWN_FAILURES: usize = 5;

impl fmt::Display for Verdict {
    /// A short report: one summary line, the counterexample of each failing
    /// key (up to five keys), the undecided keys, and a last line that is
    /// `linearizable`, `NOT linearizable: key "k": ...` or
    /// `UNKNOWN: key "k": ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} on {} in {:.3} s",
            counted(self.operations, "operation"),
            counted(self.keys, "key"),
            self.elapsed.as_secs_f64()
        )?;
        for fail in self.failures.iter().take(SHOWN_FAILURES) {
            let note = if fail.shrunk {
                ""
            } else {
                " (not fully shrunk)"
            };
            writeln!(
                f,
                "key {}: not linearizable ({} on the key); these {} cannot be ordered, whatever the key's other writes did{note}:",
                quote(&fail.key),
                counted(fail.key_ops, "operation"),
                fail.ops.len()
            )?;
            for op in &fail.ops {
                writeln!(f, "  {op}")?;
            }
        }
        if self.failures.len() > SHOWN_FAILURES {
            writeln!(
                f,
                "... and {} more keys that are not linearizable",
                self.failures.len() - SHOWN_FAILURES
            )?;
        }
        for u in &self.unknown {
            writeln!(
                f,
                "key {}: undecided ({}): {}",
                quote(&u.key),
                counted(u.key_ops, "operation"),
                reason(u.reason)
            )?;
        }
        if let Some(first) = self.failures.first() {
            write!(
                f,
                "NOT linearizable: key {}: {} cannot be ordered",
                quote(&first.key),
                counted(first.ops.len(), "operation")
            )?;
            if self.failures.len() > 1 {
                write!(f, " ({} keys fail)", self.failures.len())?;
            }
            writeln!(f)
        } else if let Some(first) = self.unknown.first() {
            write!(
                f,
                "UNKNOWN: key {}: {}",
                quote(&first.key),
                reason(first.reason)
            )?;
            if self.unknown.len() > 1 {
                write!(f, " ({} keys undecided)", self.unknown.len())?;
            }
            writeln!(f)
        } else {
            writeln!(f, "linearizable")
        }
    }
}

/// `1 key`, `2 keys`.
fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

fn reason(e: Exhausted) -> String {
    match e {
        Exhausted::Steps(n) => format!("step budget of {n} exceeded"),
        Exhausted::Cache(n) => format!("cache budget of {n} bytes exceeded"),
    }
}

/// Checks a history for linearizability, key by key.
///
/// The operations may come in any order. They are expected to be valid
/// ([`Operation::validate`], which [`read_history`] applies); others are
/// still checked without panicking, under the interpretation documented in
/// `docs/HISTORY.md`.
pub fn check(ops: &[Operation], opts: &CheckOptions) -> Verdict {
    let start = Instant::now();
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let limits = Limits {
        steps: opts.step_budget,
        cache_bytes: opts.cache_budget_bytes,
    };
    let mut verdict = Verdict {
        operations: ops.len(),
        keys: by_key.len(),
        steps: 0,
        elapsed: Duration::ZERO,
        failures: Vec::new(),
        unknown: Vec::new(),
    };
    for (key, key_ops) in &by_key {
        let run = check_key(key_ops, &[], &limits);
        verdict.steps += run.steps;
        match run.outcome {
            Outcome::Linearizable => {}
            Outcome::Unknown(reason) => {
                // Too hard as a whole: look for a violation in windows.
                match minimize::find_in_windows(key_ops, run.stuck_at, &limits, opts.shrink_budget)
                {
                    Some(s) => {
                        verdict.steps += s.steps;
                        verdict.failures.push(KeyFailure {
                            key: key.to_string(),
                            ops: s.ops.into_iter().cloned().collect(),
                            shrunk: s.finished,
                            key_ops: key_ops.len(),
                        });
                    }
                    None => verdict.unknown.push(UnknownKey {
                        key: key.to_string(),
                        reason,
                        key_ops: key_ops.len(),
                    }),
                }
            }
            Outcome::Violation => {
                let (ops, shrunk) = if opts.shrink {
                    let s = minimize::shrink(key_ops, run.stuck_at, &limits, opts.shrink_budget);
                    verdict.steps += s.steps;
                    (s.ops, s.finished)
                } else {
                    let mut all = key_ops.clone();
                    all.sort_by_key(|op| op.invoke_ns);
                    (all, false)
                };
                verdict.failures.push(KeyFailure {
                    key: key.to_string(),
                    ops: ops.into_iter().cloned().collect(),
                    shrunk,
                    key_ops: key_ops.len(),
                });
            }
        }
    }
    verdict.elapsed = start.elapsed();
    verdict
}
