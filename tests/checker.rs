//! The linearizability checker on hand-written histories, on randomized
//! histories recorded from a real sequential run (which must pass) and on
//! the same histories with one read corrupted (which must fail), and on
//! large histories for speed.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use raftkit::check::{
    check, parse_history, read_history, write_op, CheckOptions, Exhausted, HistoryError, OpKind,
    Operation, Verdict,
};
use raftkit::rng::Rng;

// ---------------------------------------------------------------------------
// Building operations by hand. Times are in ns; every helper makes an
// operation that completed with ok=true unless changed by `failed` or
// `unknown`.

fn base(client: u64, kind: OpKind, key: &str, t: (u64, u64)) -> Operation {
    Operation {
        client,
        kind,
        key: key.to_string(),
        value: None,
        expected: None,
        invoke_ns: t.0,
        complete_ns: Some(t.1),
        ok: Some(true),
        result: None,
    }
}

fn put(client: u64, key: &str, value: &str, t: (u64, u64)) -> Operation {
    Operation {
        value: Some(value.to_string()),
        ..base(client, OpKind::Put, key, t)
    }
}

fn get(client: u64, key: &str, result: Option<&str>, t: (u64, u64)) -> Operation {
    Operation {
        result: result.map(str::to_string),
        ..base(client, OpKind::Get, key, t)
    }
}

fn cas(client: u64, key: &str, expected: Option<&str>, new: &str, t: (u64, u64)) -> Operation {
    Operation {
        expected: expected.map(str::to_string),
        value: Some(new.to_string()),
        ..base(client, OpKind::Cas, key, t)
    }
}

fn delete(client: u64, key: &str, t: (u64, u64)) -> Operation {
    base(client, OpKind::Delete, key, t)
}

/// The operation definitely failed (for cas: the comparison failed).
fn failed(op: Operation) -> Operation {
    Operation {
        ok: Some(false),
        ..op
    }
}

/// No answer came: the outcome is unknown.
fn unknown(op: Operation) -> Operation {
    Operation {
        ok: None,
        complete_ns: None,
        ..op
    }
}

fn verdict(ops: &[Operation]) -> Verdict {
    let v = check(ops, &CheckOptions::default());
    // Every report is well formed whatever the answer.
    let text = v.to_string();
    assert!(text.ends_with('\n'), "{text}");
    v
}

fn assert_linearizable(ops: &[Operation]) {
    let v = verdict(ops);
    assert!(v.is_linearizable(), "expected linearizable:\n{v}");
    assert_eq!(v.exit_code(), 0);
    assert!(v.to_string().ends_with("\nlinearizable\n"), "{v}");
}

/// Asserts that exactly `key` fails and returns its counterexample.
fn assert_violation(ops: &[Operation], key: &str) -> Vec<Operation> {
    let v = verdict(ops);
    assert!(v.has_violation(), "expected a violation:\n{v}");
    assert!(!v.is_linearizable());
    assert_eq!(v.exit_code(), 1);
    assert_eq!(v.failures.len(), 1, "{v}");
    let fail = &v.failures[0];
    assert_eq!(fail.key, key);
    assert!(fail.shrunk, "{v}");
    let last = v.to_string().lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with(&format!("NOT linearizable: key \"{key}\": ")),
        "{v}"
    );
    // The counterexample really cannot be ordered on its own.
    assert!(check(&fail.ops, &CheckOptions::default()).has_violation());
    fail.ops.clone()
}

// ---------------------------------------------------------------------------
// Hand-written histories.

#[test]
fn empty_history_is_linearizable() {
    let v = verdict(&[]);
    assert!(v.is_linearizable());
    assert_eq!((v.operations, v.keys), (0, 0));
}

#[test]
fn sequential_history() {
    assert_linearizable(&[
        get(1, "k", None, (0, 10)),
        put(1, "k", "a", (20, 30)),
        get(2, "k", Some("a"), (40, 50)),
        put(2, "k", "b", (60, 70)),
        get(1, "k", Some("b"), (80, 90)),
        cas(1, "k", Some("b"), "c", (100, 110)),
        failed(cas(2, "k", Some("b"), "d", (120, 130))),
        get(3, "k", Some("c"), (140, 150)),
        delete(3, "k", (160, 170)),
        get(1, "k", None, (180, 190)),
        cas(2, "k", None, "e", (200, 210)),
        get(2, "k", Some("e"), (220, 230)),
    ]);
}

#[test]
fn concurrent_overlapping_writes_and_reads() {
    // Two writes overlap each other and four reads; the reads are explained
    // by put b at ~25, get b, put a at ~65, get a.
    assert_linearizable(&[
        put(1, "k", "a", (0, 100)),
        put(2, "k", "b", (10, 40)),
        get(3, "k", Some("b"), (20, 50)),
        get(4, "k", Some("b"), (30, 60)),
        get(3, "k", Some("a"), (55, 120)),
        get(4, "k", Some("a"), (70, 80)),
        get(5, "k", None, (0, 5)),
    ]);
    // A read overlapping a write may see either value.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        put(2, "k", "b", (20, 60)),
        get(3, "k", Some("a"), (25, 30)),
        get(4, "k", Some("b"), (30, 40)),
    ]);
}

#[test]
fn stale_read_after_completed_write() {
    let ce = assert_violation(
        &[
            put(1, "k", "a", (0, 10)),
            put(2, "k", "b", (20, 30)),
            get(3, "k", Some("a"), (40, 50)),
        ],
        "k",
    );
    // The whole story is needed: the value read, the write that replaced
    // it, and the read.
    assert_eq!(ce.len(), 3, "{ce:?}");
}

#[test]
fn lost_acknowledged_write() {
    // put b was acknowledged, yet later reads return the older a.
    let ce = assert_violation(
        &[
            put(1, "k", "a", (0, 10)),
            get(2, "k", Some("a"), (15, 18)),
            put(1, "k", "b", (20, 30)),
            get(2, "k", Some("a"), (40, 50)),
            get(3, "k", Some("a"), (60, 70)),
            put(1, "other", "x", (20, 30)),
            get(2, "other", Some("x"), (40, 50)),
        ],
        "k",
    );
    assert!(ce.len() <= 4, "{ce:?}");
    assert!(ce.iter().any(|op| op.value.as_deref() == Some("b")));
}

#[test]
fn readers_see_concurrent_writes_in_opposite_orders() {
    let ce = assert_violation(
        &[
            put(1, "k", "a", (0, 100)),
            put(2, "k", "b", (0, 100)),
            get(3, "k", Some("a"), (10, 20)),
            get(3, "k", Some("b"), (30, 40)),
            get(4, "k", Some("b"), (10, 20)),
            get(4, "k", Some("a"), (30, 40)),
        ],
        "k",
    );
    assert_eq!(ce.len(), 6, "{ce:?}");
}

#[test]
fn unknown_outcome_write_that_alone_explains_a_read() {
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        unknown(put(2, "k", "b", (20, 0))),
        get(3, "k", Some("b"), (1000, 1010)),
        get(3, "k", Some("b"), (2000, 2010)),
    ]);
    // Even when the client recorded when it gave up: the write may take
    // effect at any time after its call.
    let mut timed_out = unknown(put(2, "k", "b", (20, 0)));
    timed_out.complete_ns = Some(25);
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        timed_out,
        get(3, "k", Some("a"), (30, 40)),
        get(3, "k", Some("b"), (1000, 1010)),
    ]);
    // But not before its call.
    assert_violation(
        &[
            put(1, "k", "a", (0, 10)),
            get(3, "k", Some("b"), (12, 15)),
            unknown(put(2, "k", "b", (20, 0))),
        ],
        "k",
    );
}

#[test]
fn unknown_outcome_write_never_read() {
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        unknown(put(2, "k", "lost", (20, 0))),
        unknown(delete(2, "k", (25, 0))),
        get(3, "k", Some("a"), (30, 40)),
        get(3, "k", Some("a"), (50, 60)),
    ]);
    // Same with a failed cas on the key, which keeps the unread write in
    // the search (it could explain the failure).
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        unknown(put(2, "k", "lost", (20, 0))),
        failed(cas(3, "k", Some("zz"), "c", (30, 40))),
        get(3, "k", Some("a"), (50, 60)),
    ]);
    // Here only the lost write explains why the cas failed.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        unknown(put(2, "k", "lost", (20, 0))),
        failed(cas(3, "k", Some("a"), "c", (30, 40))),
    ]);
}

#[test]
fn compare_and_set() {
    // Success.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        cas(2, "k", Some("a"), "b", (20, 30)),
        get(3, "k", Some("b"), (40, 50)),
    ]);
    // Success on an absent key.
    assert_linearizable(&[
        cas(2, "k", None, "b", (0, 30)),
        get(3, "k", Some("b"), (40, 50)),
    ]);
    // Reported success although the value never matched.
    assert_violation(
        &[
            put(1, "k", "a", (0, 10)),
            cas(2, "k", Some("z"), "b", (20, 30)),
        ],
        "k",
    );
    assert_violation(
        &[put(1, "k", "a", (0, 10)), cas(2, "k", None, "b", (20, 30))],
        "k",
    );
    // Failure while the value differs.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        failed(cas(2, "k", Some("z"), "b", (20, 30))),
        get(3, "k", Some("a"), (40, 50)),
    ]);
    // Failure explained by a concurrent write.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        put(2, "k", "c", (15, 40)),
        failed(cas(3, "k", Some("a"), "b", (20, 30))),
        get(3, "k", Some("c"), (50, 60)),
    ]);
    // Failure although the value equals `expected` at every point where
    // the cas could have happened.
    let ce = assert_violation(
        &[
            put(1, "k", "a", (0, 10)),
            failed(cas(2, "k", Some("a"), "b", (20, 30))),
            get(3, "k", Some("a"), (40, 50)),
        ],
        "k",
    );
    assert_eq!(ce.len(), 2, "{ce:?}");
    // Failure on an absent key when expecting absence.
    assert_violation(&[failed(cas(2, "k", None, "b", (20, 30)))], "k");
    // An unknown cas whose comparison cannot hold cannot explain a read.
    assert_violation(
        &[
            put(1, "k", "a", (0, 10)),
            unknown(cas(2, "k", Some("z"), "b", (20, 0))),
            get(3, "k", Some("b"), (40, 50)),
        ],
        "k",
    );
    // An unknown cas that can hold can.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        unknown(cas(2, "k", Some("a"), "b", (20, 0))),
        get(3, "k", Some("b"), (40, 50)),
    ]);
}

#[test]
fn delete_then_get_null() {
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        delete(2, "k", (20, 30)),
        get(3, "k", None, (40, 50)),
    ]);
    assert_violation(
        &[
            put(1, "k", "a", (0, 10)),
            delete(2, "k", (20, 30)),
            get(3, "k", Some("a"), (40, 50)),
        ],
        "k",
    );
    // A read of null before anything was written, and after a put, without
    // a delete in between.
    assert_violation(
        &[put(1, "k", "a", (0, 10)), get(3, "k", None, (40, 50))],
        "k",
    );
}

#[test]
fn failed_and_unanswered_operations() {
    // A get without an answer, or that failed, constrains nothing.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        unknown(get(2, "k", Some("nonsense"), (20, 0))),
        failed(get(2, "k", Some("nonsense"), (30, 40))),
    ]);
    // A put that failed did not take effect.
    assert_violation(
        &[
            failed(put(1, "k", "a", (0, 10))),
            get(3, "k", Some("a"), (40, 50)),
        ],
        "k",
    );
    // Nor did a failed delete.
    assert_linearizable(&[
        put(1, "k", "a", (0, 10)),
        failed(delete(2, "k", (20, 30))),
        get(3, "k", Some("a"), (40, 50)),
    ]);
}

#[test]
fn intervals_are_closed() {
    // The read ends at the very instant the write begins: concurrent.
    assert_linearizable(&[get(1, "k", Some("a"), (0, 10)), put(2, "k", "a", (10, 20))]);
    assert_violation(
        &[get(1, "k", Some("a"), (0, 9)), put(2, "k", "a", (10, 20))],
        "k",
    );
}

#[test]
fn keys_are_independent_and_the_report_names_the_bad_one() {
    let mut ops = vec![
        put(1, "k1", "a", (0, 10)),
        get(2, "k1", Some("a"), (20, 30)),
        put(1, "k2", "b", (0, 10)),
        put(1, "k2", "c", (15, 18)),
        get(2, "k2", Some("b"), (20, 30)),
        put(1, "k3", "d", (0, 10)),
    ];
    // Reads of another key's values are not explained by that key.
    ops.push(get(3, "k3", Some("d"), (40, 50)));
    let v = verdict(&ops);
    assert_eq!(v.failures.len(), 1, "{v}");
    assert_eq!(v.failures[0].key, "k2");
    assert_eq!(v.keys, 3);
    assert_eq!(v.operations, 7);
    let text = v.to_string();
    assert!(
        text.contains(r#"client 2: get("k2") -> "b": ok, invoked at 20 ns, completed at 30 ns"#),
        "{text}"
    );
    assert!(
        text.ends_with("NOT linearizable: key \"k2\": 3 operations cannot be ordered\n"),
        "{text}"
    );
    ops.push(get(3, "k3", Some("a"), (60, 70)));
    let v = verdict(&ops);
    assert_eq!(v.failures.len(), 2, "{v}");
    assert!(v.to_string().ends_with("(2 keys fail)\n"), "{v}");
}

#[test]
fn budget_exceeded_is_reported_not_passed() {
    // Many concurrent writes and a read nobody wrote: the search has to try
    // every order before it can give up.
    let mut ops: Vec<Operation> = (0..12)
        .map(|i| put(i, "hot", &format!("v{i}"), (0, 1000)))
        .collect();
    ops.push(get(99, "hot", Some("never"), (0, 1000)));
    ops.push(put(1, "fine", "x", (0, 10)));
    let opts = CheckOptions {
        step_budget: 100,
        ..CheckOptions::default()
    };
    let v = check(&ops, &opts);
    assert!(!v.is_linearizable());
    assert!(!v.has_violation());
    assert_eq!(v.exit_code(), 3);
    assert_eq!(v.unknown.len(), 1);
    assert_eq!(v.unknown[0].key, "hot");
    assert_eq!(v.unknown[0].reason, Exhausted::Steps(100));
    let text = v.to_string();
    assert!(
        text.ends_with("UNKNOWN: key \"hot\": step budget of 100 exceeded\n"),
        "{text}"
    );
    // With the default budget it is decided.
    assert!(check(&ops, &CheckOptions::default()).has_violation());
}

#[test]
fn file_round_trip_and_errors() {
    let ops = vec![
        put(1, "k", "a\"quoted\"", (0, 10)),
        get(2, "k", Some("a\"quoted\""), (20, 30)),
        failed(cas(3, "k", None, "b", (40, 50))),
        unknown(delete(4, "k", (60, 0))),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.jsonl");
    let mut file = std::fs::File::create(&path).expect("create");
    for op in &ops {
        write_op(&mut file, op).expect("write");
    }
    drop(file);
    assert_eq!(read_history(&path).expect("read back"), ops);

    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(r#""expected":null"#), "cas keeps expected");
    assert_eq!(text.matches("expected").count(), 1, "only cas writes it");

    // A bad third line is named with the file and the line.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(
        2,
        r#"{"client":1,"op":"put","key":"k","value":"x","invoke_ns":9}"#,
    );
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).expect("write");
    let e = read_history(&bad).expect_err("bad line");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:3: ", bad.display())), "{msg}");
    assert!(msg.contains("missing field"), "{msg}");
    assert!(matches!(e, HistoryError::Line { line: 3, .. }));

    let e = read_history(&dir.path().join("missing.jsonl")).expect_err("no file");
    assert!(matches!(e, HistoryError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.jsonl"), "{e}");

    let e = parse_history("{\"client\":1,\n").expect_err("truncated");
    assert!(e.to_string().starts_with("line 1: "), "{e}");
    let mut not_utf8 = b"\n".to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe]);
    std::fs::write(&bad, not_utf8).expect("write");
    let e = read_history(&bad).expect_err("not utf-8");
    assert!(e.to_string().contains(":2: not valid UTF-8"), "{e}");
}

// ---------------------------------------------------------------------------
// Randomized histories from a real run.

/// Test-data shorthands on the project's SplitMix64.
trait Draw {
    /// A number in `[0, n)`.
    fn below(&mut self, n: u64) -> u64;
    /// True `percent` times in a hundred.
    fn percent(&mut self, percent: u64) -> bool;
}

impl Draw for Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.range(0, n)
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Shape {
    ops: usize,
    keys: u64,
    clients: u64,
    /// Usual latency of each half of an operation (call to effect, effect
    /// to answer), in µs.
    latency: u64,
}

/// When one operation was called, took effect and was answered.
struct Timing {
    client: u64,
    invoke: u64,
    effect: u64,
    /// `None`: the client gave up waiting.
    complete: Option<u64>,
}

/// A run of clients against an in-memory map. Each client calls one
/// operation at a time on a random key; the operation takes effect at a
/// random instant after its call and is answered some time later. A few
/// operations are slow, and a few are never answered: their client gives
/// up after a while and moves on, and such a write takes effect (maybe
/// after the client gave up) or not. The map applies operations in the
/// order of their effect instants, which is the true linearization. The
/// lines are shuffled.
fn random_history(seed: u64, shape: &Shape) -> Vec<Operation> {
    let mut rng = Rng::new(seed);
    let unit = shape.latency * 1000;

    // When every operation happens, client by client.
    let mut timings: Vec<Timing> = Vec::with_capacity(shape.ops);
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>> = (0..shape.clients)
        .map(|c| std::cmp::Reverse((1_000_000 + rng.below(unit + 1), c)))
        .collect();
    while timings.len() < shape.ops {
        let Some(std::cmp::Reverse((invoke, client))) = ready.pop() else {
            break;
        };
        let slow = if rng.percent(5) { 10 } else { 1 };
        let effect = invoke + rng.below(slow * unit + 1);
        let (complete, next) = if rng.percent(8) {
            (None, invoke + rng.below(2 * unit + 1))
        } else {
            let done = effect + rng.below(slow * unit + 1);
            (Some(done), done + rng.below(unit / 2 + 1))
        };
        timings.push(Timing {
            client,
            invoke,
            effect,
            complete,
        });
        ready.push(std::cmp::Reverse((next, client)));
    }
    let mut order: Vec<usize> = (0..timings.len()).collect();
    order.sort_by_key(|&i| timings[i].effect);

    // What every operation did, in effect order.
    let mut store: BTreeMap<String, String> = BTreeMap::new();
    let mut written: Vec<String> = Vec::new();
    let mut ops = Vec::with_capacity(timings.len());
    for i in order {
        let t = &timings[i];
        let times = (t.invoke, t.complete.unwrap_or(0));
        let client = t.client;
        let key = format!("k{}", rng.below(shape.keys));
        let fresh = format!("v{i}");
        let current = store.get(&key).cloned();
        let answered = t.complete.is_some();
        // Whether an unanswered write took effect anyway.
        let applied = answered || rng.percent(50);
        let mut op = match rng.below(10) {
            0..=3 => get(client, &key, current.as_deref(), times),
            4..=6 => {
                if applied {
                    store.insert(key.clone(), fresh.clone());
                }
                written.push(fresh.clone());
                put(client, &key, &fresh, times)
            }
            7 => {
                if applied {
                    store.remove(&key);
                }
                delete(client, &key, times)
            }
            _ => {
                let expected = match rng.below(4) {
                    0 | 1 => current.clone(),
                    2 => None,
                    _ if written.is_empty() => Some("never".to_string()),
                    _ => Some(written[rng.below(written.len() as u64) as usize].clone()),
                };
                written.push(fresh.clone());
                let matches = expected == current;
                if matches && applied {
                    store.insert(key.clone(), fresh.clone());
                }
                let op = cas(client, &key, expected.as_deref(), &fresh, times);
                if matches {
                    op
                } else {
                    failed(op)
                }
            }
        };
        if !answered {
            op = unknown(op);
            op.result = if op.kind == OpKind::Get && rng.percent(50) {
                // Whatever an unanswered read claims is ignored.
                Some("garbage".to_string())
            } else {
                None
            };
        }
        ops.push(op);
    }
    for i in (1..ops.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ops.swap(i, j);
    }
    ops
}

/// Writes and reads back the history, as a recorder and the checker would.
fn through_file(ops: &[Operation]) -> Vec<Operation> {
    let mut buf = Vec::new();
    for op in ops {
        write_op(&mut buf, op).expect("write to memory");
    }
    buf.flush().expect("flush");
    let text = String::from_utf8(buf).expect("utf-8");
    let back = parse_history(&text).expect("valid history");
    assert_eq!(back, ops);
    back
}

/// An answered get and a value that it cannot have read: one written by a
/// definite write that completed before another definite write on the key
/// began, which itself completed before the get began.
fn impossible_old_value(ops: &[Operation]) -> Option<(usize, String)> {
    let definite_write =
        |op: &Operation| op.ok == Some(true) && op.kind != OpKind::Get && op.complete_ns.is_some();
    for (g, read) in ops.iter().enumerate() {
        if read.kind != OpKind::Get || read.ok != Some(true) {
            continue;
        }
        for later in ops
            .iter()
            .filter(|w| w.key == read.key && definite_write(w))
        {
            if later.complete_ns >= Some(read.invoke_ns) {
                continue;
            }
            for earlier in ops
                .iter()
                .filter(|w| w.key == read.key && definite_write(w))
            {
                let Some(v) = earlier.value.as_deref() else {
                    continue;
                };
                if earlier.complete_ns < Some(later.invoke_ns)
                    && later.value.as_deref() != Some(v)
                    && read.result.as_deref() != Some(v)
                {
                    return Some((g, v.to_string()));
                }
            }
        }
    }
    None
}

#[test]
fn random_histories_pass_and_corrupted_reads_fail() {
    let mut with_old_value = 0;
    // CHECKER_SEED=n replays one seed.
    let seeds = match std::env::var("CHECKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => seed..seed + 1,
        None => 0..300u64,
    };
    let all_seeds = seeds.end - seeds.start == 300;
    for seed in seeds {
        let mut rng = Rng::new(seed ^ 0x5EED);
        let shape = Shape {
            ops: 20 + rng.below(200) as usize,
            keys: 1 + rng.below(4),
            clients: 2 + rng.below(6),
            latency: 1 + rng.below(20),
        };
        let ops = through_file(&random_history(seed, &shape));
        let v = check(&ops, &CheckOptions::default());
        assert!(v.is_linearizable(), "seed {seed}: true run rejected:\n{v}");

        // A read of a value that was never written.
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].kind == OpKind::Get && ops[i].ok == Some(true))
            .collect();
        if reads.is_empty() {
            continue;
        }
        let g = reads[rng.below(reads.len() as u64) as usize];
        let mut bad = ops.clone();
        bad[g].result = Some("never-written".to_string());
        let v = check(&bad, &CheckOptions::default());
        assert!(
            v.has_violation(),
            "seed {seed}: corrupted read accepted:\n{v}"
        );
        assert_eq!(v.failures.len(), 1, "seed {seed}:\n{v}");
        assert_eq!(v.failures[0].key, ops[g].key, "seed {seed}");
        assert!(
            v.failures[0]
                .ops
                .iter()
                .any(|op| op.result.as_deref() == Some("never-written")),
            "seed {seed}: counterexample misses the bad read:\n{v}"
        );

        // A read of an overwritten value.
        if let Some((g, old)) = impossible_old_value(&ops) {
            with_old_value += 1;
            let mut bad = ops.clone();
            bad[g].result = Some(old);
            let v = check(&bad, &CheckOptions::default());
            assert!(v.has_violation(), "seed {seed}: stale read accepted:\n{v}");
            assert_eq!(v.failures[0].key, ops[g].key, "seed {seed}");
            assert!(
                check(&v.failures[0].ops, &CheckOptions::default()).has_violation(),
                "seed {seed}: counterexample passes on its own:\n{v}"
            );
        }
    }
    assert!(
        !all_seeds || with_old_value > 100,
        "only {with_old_value} stale-read cases"
    );
}

// ---------------------------------------------------------------------------
// Small arbitrary histories against a brute-force oracle.

/// Whether `ops` (one key) is linearizable, by trying every subset of the
/// unknown-outcome writes and every order of the operations that respects
/// real time (`a` before `b` when `a` completed before `b` was called).
fn brute_force(ops: &[Operation]) -> bool {
    // Operations that count: answered gets, writes that did not fail, and
    // all cas (a failed one must see a value other than `expected`).
    let ops: Vec<&Operation> = ops
        .iter()
        .filter(|op| match (op.kind, op.ok) {
            (OpKind::Get, ok) => ok == Some(true),
            (OpKind::Put | OpKind::Delete, ok) => ok != Some(false),
            (OpKind::Cas, _) => true,
        })
        .collect();
    let unknown: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ok.is_none()).collect();
    for mask in 0..1u32 << unknown.len() {
        let chosen: Vec<&Operation> = (0..ops.len())
            .filter(|&i| match unknown.iter().position(|&u| u == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .map(|i| ops[i])
            .collect();
        if any_order(&chosen, &mut vec![false; chosen.len()], None) {
            return true;
        }
    }
    false
}

fn any_order(ops: &[&Operation], placed: &mut Vec<bool>, state: Option<String>) -> bool {
    if placed.iter().all(|&p| p) {
        return true;
    }
    let end = |op: &Operation| match op.ok {
        None => u64::MAX,
        Some(_) => op.complete_ns.unwrap_or(u64::MAX),
    };
    for i in 0..ops.len() {
        if placed[i] {
            continue;
        }
        // Every operation that must come before this one is placed.
        let ready = (0..ops.len()).all(|j| placed[j] || j == i || end(ops[j]) >= ops[i].invoke_ns);
        if !ready {
            continue;
        }
        let op = ops[i];
        let next = match (op.kind, op.ok) {
            (OpKind::Put, _) => Some(op.value.clone()),
            (OpKind::Delete, _) => Some(None),
            (OpKind::Get, _) => (op.result == state).then(|| state.clone()),
            (OpKind::Cas, Some(false)) => (op.expected != state).then(|| state.clone()),
            (OpKind::Cas, _) => (op.expected == state).then(|| op.value.clone()),
        };
        if let Some(next) = next {
            placed[i] = true;
            let found = any_order(ops, placed, next);
            placed[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

/// A small arbitrary history on one key: few values (so some repeat),
/// arbitrary answers, overlapping intervals, all kinds of outcomes.
fn arbitrary_history(rng: &mut Rng) -> Vec<Operation> {
    let values = ["a", "b", "c"];
    let value = |rng: &mut Rng| values[rng.below(3) as usize];
    let maybe = |rng: &mut Rng| {
        if rng.percent(30) {
            None
        } else {
            Some(value(rng))
        }
    };
    let n = 1 + rng.below(8);
    (0..n)
        .map(|i| {
            let invoke = rng.below(20);
            let t = (invoke, invoke + rng.below(12));
            let op = match rng.below(4) {
                0 => put(i, "k", value(rng), t),
                1 => get(i, "k", maybe(rng), t),
                2 => delete(i, "k", t),
                _ => cas(i, "k", maybe(rng), value(rng), t),
            };
            match rng.below(10) {
                0 | 1 => unknown(op),
                2 => failed(op),
                _ => op,
            }
        })
        .collect()
}

#[test]
fn small_histories_agree_with_brute_force() {
    let mut failing = 0;
    for seed in 0..5000u64 {
        let mut rng = Rng::new(seed);
        let ops = arbitrary_history(&mut rng);
        let expected = brute_force(&ops);
        let v = check(&ops, &CheckOptions::default());
        assert!(v.unknown.is_empty(), "seed {seed}:\n{v}");
        assert_eq!(v.is_linearizable(), expected, "seed {seed}: {ops:#?}\n{v}");
        if let Some(fail) = v.failures.first() {
            failing += 1;
            assert!(
                !brute_force(&fail.ops),
                "seed {seed}: counterexample passes: {ops:#?}\n{v}"
            );
        }
    }
    // Both answers are well represented.
    assert!((1000..4000).contains(&failing), "{failing} failing");
}

// ---------------------------------------------------------------------------
// Speed.

fn timed_check(seed: u64, shape: &Shape) -> Verdict {
    let ops = random_history(seed, shape);
    let start = Instant::now();
    let v = check(&ops, &CheckOptions::default());
    println!(
        "{} ops on {} keys, {} clients, latency {} µs: {:.3} s, {} steps",
        shape.ops,
        v.keys,
        shape.clients,
        shape.latency,
        start.elapsed().as_secs_f64(),
        v.steps
    );
    assert!(v.is_linearizable(), "seed {seed}:\n{v}");
    v
}

#[test]
fn twenty_thousand_operations() {
    timed_check(
        1,
        &Shape {
            ops: 20_000,
            keys: 200,
            clients: 16,
            latency: 10,
        },
    );
    timed_check(
        2,
        &Shape {
            ops: 20_000,
            keys: 5,
            clients: 8,
            latency: 10,
        },
    );
}

/// Run with `cargo test --release --test checker -- --ignored --nocapture`
/// (these print their timings).
#[test]
#[ignore]
fn hundred_thousand_operations_on_a_thousand_keys() {
    let shape = Shape {
        ops: 100_000,
        keys: 1000,
        clients: 64,
        latency: 10,
    };
    let start = Instant::now();
    let v = timed_check(3, &shape);
    assert_eq!((v.operations, v.keys), (100_000, 1000));
    assert!(start.elapsed().as_secs() < 60);

    // The same with one read of an overwritten value near the end: found,
    // and shrunk to a few operations.
    let mut ops = random_history(3, &shape);
    let (g, old) = impossible_old_value_late(&ops).expect("a stale read to plant");
    ops[g].result = Some(old);
    let start = Instant::now();
    let v = check(&ops, &CheckOptions::default());
    println!(
        "with one stale read: {:.3} s, counterexample of {} operations",
        start.elapsed().as_secs_f64(),
        v.failures.first().map_or(0, |f| f.ops.len())
    );
    assert!(v.has_violation(), "{v}");
    assert!(v.failures[0].shrunk && v.failures[0].ops.len() <= 6, "{v}");
    assert!(start.elapsed().as_secs() < 60);
}

/// Fewer keys, more operations per key: a linearizable run, then the same
/// with one read of an overwritten value planted in the second half.
#[test]
#[ignore]
fn many_operations_on_few_keys() {
    for (seed, ops, keys, clients) in [
        (4, 100_000, 10, 16),
        (5, 100_000, 1, 16),
        (6, 20_000, 1, 16),
    ] {
        let shape = Shape {
            ops,
            keys,
            clients,
            latency: 10,
        };
        timed_check(seed, &shape);
        let mut ops = random_history(seed, &shape);
        let (g, old) = impossible_old_value_late(&ops).expect("a stale read to plant");
        ops[g].result = Some(old);
        let start = Instant::now();
        let v = check(&ops, &CheckOptions::default());
        println!(
            "  with one stale read: {:.3} s, {}",
            start.elapsed().as_secs_f64(),
            v.to_string().lines().last().unwrap_or_default()
        );
    }
}

/// Like `impossible_old_value`, for a read in the second half of the run
/// (by call time), looking only at the writes shortly before it.
fn impossible_old_value_late(ops: &[Operation]) -> Option<(usize, String)> {
    let mut by_call: Vec<usize> = (0..ops.len()).collect();
    by_call.sort_by_key(|&i| ops[i].invoke_ns);
    let definite_write =
        |op: &Operation| op.ok == Some(true) && op.kind != OpKind::Get && op.complete_ns.is_some();
    for at in by_call.len() / 2..by_call.len() {
        let read = &ops[by_call[at]];
        if read.kind != OpKind::Get || read.ok != Some(true) {
            continue;
        }
        let before: Vec<&Operation> = by_call[at.saturating_sub(400)..at]
            .iter()
            .map(|&i| &ops[i])
            .filter(|w| w.key == read.key && definite_write(w))
            .collect();
        for later in before
            .iter()
            .filter(|w| w.complete_ns < Some(read.invoke_ns))
        {
            for earlier in &before {
                let Some(v) = earlier.value.as_deref() else {
                    continue;
                };
                if earlier.complete_ns < Some(later.invoke_ns)
                    && later.value.as_deref() != Some(v)
                    && read.result.as_deref() != Some(v)
                {
                    return Some((by_call[at], v.to_string()));
                }
            }
        }
    }
    None
}
