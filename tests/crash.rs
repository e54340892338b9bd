//! Crash test with real processes: clients write thousands of keys while
//! nodes are SIGKILLed at random moments, one at a time and all three at
//! once, and restarted. Every acknowledged write must be on every node at
//! the end, with the value of the last acknowledged write (or of a later
//! write whose answer was lost), and all logs must agree up to the commit
//! index.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use raftkit::client::Client;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{NodeId, Role};
use raftkit::rng::Rng;

const WRITERS: u64 = 5;
const KEYS_PER_WRITER: u64 = 500;

/// What the clients know about one key.
#[derive(Default, Clone)]
struct KeyLedger {
    /// Value of the last write that was acknowledged.
    acked: Option<String>,
    /// Writes sent after it whose outcome is unknown (no answer).
    unknown_after: Vec<String>,
}

/// A random pause in `[lo, hi)` ms.
fn pause(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo, hi))
}

#[test]
fn acknowledged_writes_survive_random_sigkills() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("crash test seed {seed} (replay the kill schedule with CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    // Snapshots every 20 000 entries: several per node during the run, so
    // kills also land while one is being written or installed.
    let mut tc = TestCluster::start_with(3, "snapshot_entries = 20000\n");
    tc.wait_leader(&[1, 2, 3]);

    let ledger: Arc<Mutex<HashMap<String, KeyLedger>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, acked, unknown) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let config = tc.config.clone();
            let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
            let (sent, acked, unknown) =
                (Arc::clone(&sent), Arc::clone(&acked), Arc::clone(&unknown));
            std::thread::spawn(move || {
                let mut c = Client::new(config, None);
                c.timeout = Duration::from_secs(20);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-k{}", n % KEYS_PER_WRITER);
                    let value = format!("w{w}-s{n}");
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let r = c.kv(
                        Op::Put {
                            key: key.clone().into_bytes(),
                            value: value.clone().into_bytes(),
                        },
                        false,
                    );
                    let mut l = ledger.lock().expect("ledger");
                    let e = l.entry(key).or_default();
                    match r {
                        Ok((_, OpResult::Done)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            e.acked = Some(value);
                            e.unknown_after.clear();
                        }
                        _ => {
                            unknown.fetch_add(1, Ordering::Relaxed);
                            e.unknown_after.push(value);
                        }
                    }
                }
            })
        })
        .collect();

    // Warm up, then kill one node at a time.
    std::thread::sleep(Duration::from_millis(800));
    let mut kills = 0;
    for _ in 0..10 {
        let victim = 1 + rng.range(0, 3);
        tc.kill(victim);
        kills += 1;
        std::thread::sleep(pause(&mut rng, 50, 900));
        tc.start_node(victim);
        std::thread::sleep(pause(&mut rng, 300, 1500));
    }
    // All three at once, restarted in random order.
    let mut all_at_once = 0;
    for _ in 0..3 {
        let before = acked.load(Ordering::Relaxed);
        for id in 1..=3 {
            tc.kill(id);
            kills += 1;
        }
        all_at_once += 1;
        std::thread::sleep(pause(&mut rng, 50, 500));
        let mut order = vec![1u64, 2, 3];
        for i in (1..3).rev() {
            order.swap(i, rng.range(0, i as u64 + 1) as usize);
        }
        for id in order {
            tc.start_node(id);
            std::thread::sleep(pause(&mut rng, 0, 300));
        }
        // Writes resume after the restart.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::Relaxed) < before + 50 {
            assert!(Instant::now() < deadline, "no writes after restarting all");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }

    // Let the cluster settle: one leader, every node applied up to the
    // same commit index.
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut client = tc.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let commit = loop {
        let st: Vec<_> = (1..=3).filter_map(|i| tc.status(&mut client, i)).collect();
        let lc = st
            .iter()
            .find(|s| s.id == NodeId(leader) && s.role == Role::Leader)
            .map(|s| s.commit_index);
        if let Some(c) = lc {
            if st.len() == 3
                && st
                    .iter()
                    .all(|s| s.commit_index == c && s.last_applied == c)
            {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "nodes did not converge: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    };

    // Identical logs up to the commit index, over the part every node
    // still holds (each compacts its log behind its own snapshots; what
    // the snapshots cover is checked through the values below).
    let first = (1..=3)
        .filter_map(|i| tc.status(&mut client, i))
        .map(|s| s.first_index.0)
        .max()
        .expect("statuses");
    assert!(
        first <= commit.0,
        "no log left to compare: first {first}, commit {commit}"
    );
    let (_, reference) = client
        .log(NodeId(leader), first, commit.0)
        .expect("leader's log");
    assert_eq!(reference.len() as u64, commit.0 + 1 - first);
    for id in (1..=3).filter(|&i| i != leader) {
        let (_, log) = client.log(NodeId(id), first, commit.0).expect("log");
        assert_eq!(log.len(), reference.len(), "n{id} log length");
        if let Some((a, b)) = log.iter().zip(&reference).find(|(a, b)| a != b) {
            panic!("n{id} differs from the leader n{leader} at {a} vs {b}");
        }
    }

    // Every acknowledged write, on every node.
    let ledger = ledger.lock().expect("ledger").clone();
    let mut checked = 0;
    for id in 1..=3u64 {
        let mut c = Client::new(tc.config.clone(), Some(NodeId(id)));
        c.timeout = Duration::from_secs(10);
        for (key, l) in &ledger {
            let Some(acked_value) = &l.acked else {
                continue;
            };
            let r = c.kv(
                Op::Get {
                    key: key.clone().into_bytes(),
                },
                true,
            );
            let got = match r {
                Ok((_, OpResult::Value(v))) => v.map(|v| String::from_utf8_lossy(&v).into_owned()),
                other => panic!("n{id}: get {key}: {other:?}"),
            };
            let ok = got.as_ref() == Some(acked_value)
                || got.as_ref().is_some_and(|g| l.unknown_after.contains(g));
            assert!(
                ok,
                "n{id}: {key} = {got:?}, last acknowledged {acked_value:?} (later unknown: {:?})",
                l.unknown_after
            );
            checked += 1;
        }
    }
    eprintln!(
        "crash test: {kills} SIGKILLs ({all_at_once} of all three at once), {} writes sent, \
         {} acknowledged, {} unknown outcome, {} keys, {checked} acknowledged values checked \
         on 3 nodes, logs identical from {first} up to commit index {commit}",
        sent.load(Ordering::Relaxed),
        acked.load(Ordering::Relaxed),
        unknown.load(Ordering::Relaxed),
        ledger.len()
    );
}
