//! Real raft-node processes on loopback: free ports, temp dirs, and every
//! child killed by PID when the test ends, also on panic. Deadlines are
//! generous: these machines are small and noisy.

use std::io::Write;
use std::net::TcpStream;

use raftkit::client::Client;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{NodeId, Role};
use raftkit::wire::{RequestBody, ResponseBody};

mod common;
use common::{put, signal, TestCluster};

#[test]
fn cluster_elects_replicates_and_survives_leader_kill() {
    let mut tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut c = tc.client();
    for i in 0..200 {
        put(&mut c, &format!("k{i}"), &format!("v{i}"));
    }
    tc.wait_value_everywhere(&[1, 2, 3], "k199", "v199");
    for id in 1..=3u64 {
        let mut sc = Client::new(tc.config.clone(), Some(NodeId(id)));
        for i in (0..200).step_by(37) {
            let r = sc.kv(
                Op::Get {
                    key: format!("k{i}").into_bytes(),
                },
                true,
            );
            assert!(
                matches!(r, Ok((_, OpResult::Value(Some(ref v)))) if *v == format!("v{i}").into_bytes()),
                "n{id} k{i}: {r:?}"
            );
        }
    }

    // SIGKILL the leader: the others elect a new one and writes go on.
    tc.kill(leader);
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let new_leader = tc.wait_leader(&others);
    assert_ne!(new_leader, leader);
    put(&mut c, "after-kill", "1");
    // A stale read is the named node's state: while it is down, no other
    // node answers in its place.
    let mut down = Client::new(tc.config.clone(), Some(NodeId(leader)));
    down.timeout = std::time::Duration::from_millis(500);
    let r = down.kv(
        Op::Get {
            key: b"after-kill".to_vec(),
        },
        true,
    );
    assert!(
        matches!(r, Err(raftkit::client::ClientError::Unreachable { node, .. }) if node == NodeId(leader)),
        "a stale read of the stopped n{leader}: {r:?}"
    );
    // The old leader restarts, rejoins as a follower and catches up.
    tc.start_node(leader);
    tc.wait_value_everywhere(&[leader], "after-kill", "1");
    tc.wait_value_everywhere(&[leader], "k150", "v150");
    let st = tc.status(&mut c, leader).expect("restarted node answers");
    assert_eq!(st.role, Role::Follower);
}

#[test]
fn cluster_redirects_writes_and_ignores_garbage() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    // A write sent to a follower is answered "not the leader" with a hint…
    let mut raw = Client::new(tc.config.clone(), Some(NodeId(follower)));
    let cmd = raftkit::kv::Command {
        client_id: 77,
        seq: 1,
        op: Op::Put {
            key: b"r".to_vec(),
            value: b"1".to_vec(),
        },
    };
    match raw.call(
        NodeId(follower),
        RequestBody::Kv {
            command: cmd,
            stale_read: false,
        },
    ) {
        Ok(ResponseBody::NotLeader { leader: hint, .. }) => assert_eq!(hint, Some(NodeId(leader))),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // …and the client follows it.
    let mut c = Client::new(tc.config.clone(), Some(NodeId(follower)));
    put(&mut c, "redirected", "yes");
    assert_eq!(c.target, NodeId(leader));

    // Random bytes on a node's port close that connection only.
    let addr = tc.config.node(NodeId(leader)).expect("leader").addr;
    let mut seed = 12345u64;
    for _ in 0..20 {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let bytes: Vec<u8> = (0..4096)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = s.write_all(&bytes);
        }
    }
    put(&mut c, "after-garbage", "ok");
    assert_eq!(
        tc.wait_leader(&[1, 2, 3]),
        leader,
        "garbage did not disturb the leader"
    );
}

#[test]
fn cluster_paused_leader_is_replaced_and_steps_down() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut c = tc.client();
    put(&mut c, "before-pause", "1");
    let pid = tc.pid(leader);
    assert_eq!(signal(pid, libc::SIGSTOP), 0);
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let new_leader = tc.wait_leader(&others);
    put(&mut c, "during-pause", "2");
    assert_eq!(signal(pid, libc::SIGCONT), 0);
    let after = tc.wait_leader(&[1, 2, 3]);
    assert_eq!(
        after, new_leader,
        "the old leader stepped down instead of taking over"
    );
    tc.wait_value_everywhere(&[1, 2, 3], "before-pause", "1");
    tc.wait_value_everywhere(&[1, 2, 3], "during-pause", "2");
}
