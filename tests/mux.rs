//! The multiplexed client against a real 3-node cluster: many logical
//! clients over few connections, the leader killed in the middle. The
//! recorded history must be linearizable, and every acknowledged write must
//! be in the new leader's committed log. Nothing here asserts on timing.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::TestCluster;
use raftkit::bench::{self, BenchOptions, Live, OpMix, Target};
use raftkit::check::{check, parse_history, CheckOptions, OpKind};
use raftkit::client::{Mux, MuxOptions, MuxReply, MuxRequest};
use raftkit::kv::{Command, Op, OpResult};
use raftkit::raft::{EntryKind, NodeId};

/// 96 logical clients over 4 connections, the drills' mix (gets, puts, cas,
/// deletes), the leader killed with SIGKILL after 2 s of load.
#[test]
fn mux_many_clients_few_conns_survive_leader_kill() {
    // No snapshots: every acknowledged write must still be in the log at
    // the end (thousands of writes a second pass `snapshot_entries`).
    let mut cluster = TestCluster::start_with(3, "snapshot_entries = 0\n");
    let leader = cluster.wait_leader(&[1, 2, 3]);
    let opts = BenchOptions {
        clients: 96,
        conns: 4,
        window: 64,
        threads: 1,
        op: OpMix::Kv { read_pct: 30 },
        keys: 40,
        distinct_keys: false,
        hot_key_pct: 0,
        value_size: 16,
        duration: Some(Duration::from_secs(6)),
        total: None,
        warmup: Duration::ZERO,
        target: Target::Leader,
        op_timeout: Duration::from_secs(4),
        record: true,
        series: false,
        seed: 7,
    };
    let load = {
        let (config, live) = (cluster.config.clone(), Arc::new(Live::default()));
        std::thread::spawn(move || bench::run(&config, &opts, live))
    };
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill(leader);
    let result = load
        .join()
        .expect("load thread")
        .expect("bench ran to its end");
    let survivors: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(&survivors);
    // A new leader learns what its predecessor committed only once an
    // entry of its own term commits (Raft paper, section 5.4.2): wait for
    // its commit index to reach its last entry (the load has ended).
    let mut client = cluster.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = cluster
            .status(&mut client, new_leader)
            .expect("status of the new leader");
        if s.commit_index >= s.last_index {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n{new_leader} never committed its log: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let history = parse_history(std::str::from_utf8(&result.history).expect("utf-8"))
        .expect("the recorded history parses");
    assert_eq!(
        history.len() as u64,
        result.ok + result.failed + result.unknown,
        "one history line per operation"
    );
    let clients: HashSet<u64> = history.iter().map(|o| o.client).collect();
    assert_eq!(clients.len(), 96, "each logical client is a history client");
    assert!(result.ok > 0, "some operations succeeded: {result:?}");

    let verdict = check(&history, &CheckOptions::default());
    assert!(
        verdict.is_linearizable(),
        "history not linearizable:\n{verdict}"
    );

    // Every acknowledged put and cas is in the committed log (values are
    // unique: they start with the client's number and seq).
    let (commit, entries) = client
        .log(NodeId(new_leader), 1, 0)
        .expect("log of the new leader");
    let logged: HashSet<Vec<u8>> = entries
        .iter()
        .filter(|e| e.index <= commit && e.kind != EntryKind::Noop)
        .filter_map(|e| Command::decode(&e.data).ok())
        .filter_map(|c| match c.op {
            Op::Put { value, .. } => Some(value),
            Op::Cas { new, .. } => Some(new),
            _ => None,
        })
        .collect();
    let mut acked = 0;
    for op in &history {
        let write = matches!(op.kind, OpKind::Put | OpKind::Cas);
        if write && op.ok == Some(true) {
            let v = op.value.as_deref().expect("a write has a value");
            assert!(
                logged.contains(v.as_bytes()),
                "acknowledged {op:?} is not in n{new_leader}'s committed log"
            );
            acked += 1;
        }
    }
    assert!(acked > 0, "some writes were acknowledged");
}

/// `Mux::run_all`: requests of many logical clients on one connection,
/// their answers given back in the order the requests went in.
#[test]
fn mux_run_all_answers_every_request() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3]);
    let first_node = cluster
        .config
        .nodes
        .iter()
        .position(|n| n.id == NodeId(leader))
        .expect("leader in config");
    let opts = MuxOptions {
        conns: 1,
        window: 8,
        op_timeout: Duration::from_secs(20),
        first_node,
        spread: false,
    };
    let mut mux = Mux::new(cluster.config.clone(), opts).expect("mux");
    let put = |i: u64| MuxRequest {
        tag: i,
        client: i,
        command: Command {
            client_id: 1000 + i,
            seq: 1,
            op: Op::Put {
                key: format!("k{i}").into_bytes(),
                value: format!("v{i}").into_bytes(),
            },
        },
        stale_read: false,
    };
    let done = mux.run_all((0..50).map(put).collect()).expect("run");
    assert_eq!(done.len(), 50);
    for (i, d) in done.iter().enumerate() {
        assert_eq!(d.request.tag, i as u64);
        assert!(
            matches!(
                d.reply,
                MuxReply::Kv {
                    result: OpResult::Done,
                    ..
                }
            ),
            "{d:?}"
        );
    }
    // A retry of a write (same client id and seq) gets the first answer.
    let again = mux.run_all(vec![put(3)]).expect("retry");
    match (&again[0].reply, &done[3].reply) {
        (MuxReply::Kv { index: a, .. }, MuxReply::Kv { index: b, .. }) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
    let get = |i: u64| MuxRequest {
        tag: 100 + i,
        client: i,
        command: Command {
            client_id: 5000 + i,
            seq: 0,
            op: Op::Get {
                key: format!("k{i}").into_bytes(),
            },
        },
        stale_read: false,
    };
    let reads = mux.run_all((0..50).map(get).collect()).expect("reads");
    for (i, d) in reads.iter().enumerate() {
        match &d.reply {
            MuxReply::Kv {
                result: OpResult::Value(Some(v)),
                ..
            } => assert_eq!(v, format!("v{i}").as_bytes()),
            other => panic!("get k{i}: {other:?}"),
        }
    }
}
