//! Snapshots over real processes: a follower that was down while the
//! others compacted their logs catches up from the leader's snapshot, and a
//! whole cluster restarts from snapshot plus WAL with its data intact.

mod common;

use std::time::{Duration, Instant};

use common::{put, TestCluster};
use raftkit::client::Client;
const SMALL_SNAPSHOTS: &str =
    "snapshot_entries = 50\nsnapshot_keep_entries = 10\nsegment_bytes_max = 65536\n";

/// Files in `dir` of node `id`'s data dir whose name passes `keep`.
fn count_files(tc: &TestCluster, id: u64, dir: &str, keep: impl Fn(&str) -> bool) -> usize {
    let dir = tc.dir.path().join(format!("data/n{id}")).join(dir);
    std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| keep(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

fn wal_segments(tc: &TestCluster, id: u64) -> usize {
    count_files(tc, id, "wal", |n| n.ends_with(".wal"))
}

/// Node `id`'s log says it installed a snapshot from the leader.
fn assert_installed_a_snapshot(tc: &TestCluster, id: u64) {
    let log = std::fs::read_to_string(tc.dir.path().join(format!("n{id}.log"))).expect("node log");
    assert!(
        log.contains("installed the leader's snapshot"),
        "n{id} caught up without a snapshot"
    );
}

/// The first index of `node`'s log once it is past `past`, or after a
/// generous deadline: a snapshot is encoded off the event loop, and the
/// log compacted once that is done.
fn wait_log_start_past(tc: &TestCluster, c: &mut Client, node: u64, past: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let first = tc.status(c, node).expect("status").first_index.0;
        if first > past || Instant::now() >= deadline {
            return first;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lagging_follower_catches_up_from_a_snapshot_and_all_restart_intact() {
    let mut tc = TestCluster::start_with(3, SMALL_SNAPSHOTS);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let lagger = if leader == 3 { 2 } else { 3 };
    tc.kill(lagger);
    let mut c = tc.client();
    // Values of 2 000 bytes fill 64 KiB segments every ~30 entries.
    let pad = "x".repeat(2_000);
    for i in 0..400 {
        put(&mut c, &format!("k{}", i % 20), &format!("v{i}-{pad}"));
    }
    put(&mut c, "last", "before-restart");

    // The leader compacted: its log starts well past 1, and old segments
    // are gone.
    let first = wait_log_start_past(&tc, &mut c, leader, 300);
    assert!(first > 300, "leader log still starts at {first}");
    assert!(
        wal_segments(&tc, leader) < 10,
        "leader keeps {} WAL segments",
        wal_segments(&tc, leader)
    );

    tc.start_node(lagger);
    tc.wait_value_everywhere(&[lagger], "last", "before-restart");
    tc.wait_value_everywhere(&[lagger], "k19", &format!("v399-{pad}"));
    assert_installed_a_snapshot(&tc, lagger);

    // Everyone restarts from snapshot + WAL.
    for id in 1..=3 {
        tc.kill(id);
    }
    for id in 1..=3 {
        tc.start_node(id);
    }
    tc.wait_leader(&[1, 2, 3]);
    tc.wait_value_everywhere(&[1, 2, 3], "last", "before-restart");
    tc.wait_value_everywhere(&[1, 2, 3], "k7", &format!("v387-{pad}"));
    let mut c = tc.client();
    put(&mut c, "after", "restart");
    tc.wait_value_everywhere(&[1, 2, 3], "after", "restart");
    // Every node's commit index covers everything written.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let commits: Vec<u64> = (1..=3)
            .filter_map(|id| tc.status(&mut c, id).map(|s| s.commit_index.0))
            .collect();
        if commits.len() == 3 && commits.iter().all(|&x| x >= 402) {
            break;
        }
        assert!(Instant::now() < deadline, "commit indexes {commits:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A snapshot whose state does not decode, from a node posing as the
/// leader, closes that link and is logged, and so do fragments that do not
/// join into a message; the follower keeps its state and goes on following
/// the real leader.
#[test]
fn a_snapshot_that_does_not_decode_closes_the_link_only() {
    use raftkit::raft::{LogIndex, Message, MessageBody, NodeId, Snapshot};
    use raftkit::wire::{encode_frame, encode_raft_fragments, Frame, Sender};
    use std::io::Write;

    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let mut c = tc.client();
    put(&mut c, "before", "1");
    tc.wait_value_everywhere(&[follower], "before", "1");
    let term = tc.status(&mut c, follower).expect("status").current_term;

    let addr = tc.config.node(NodeId(follower)).expect("node").addr;
    let log_path = tc.dir.path().join(format!("n{follower}.log"));
    // Connects as the leader, sends `frames` after the Hello, and waits
    // for the follower to log `reason`.
    let send_as_leader = |frames: &[u8], reason: &str| {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let mut out = Vec::new();
        encode_frame(
            &Frame::Hello {
                cluster: tc.config.cluster.name.clone(),
                from: Sender::Peer(NodeId(leader)),
            },
            &mut out,
        );
        out.extend_from_slice(frames);
        s.write_all(&out).expect("send");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains(reason)
        {
            assert!(Instant::now() < deadline, "not reported: {reason}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let bogus = Message {
        from: NodeId(leader),
        to: NodeId(follower),
        term,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                membership: Default::default(),
                index: LogIndex(1_000_000),
                term,
                data: b"not a key-value state".to_vec().into(),
            },
            read_round: 0,
        },
    };
    // In fragments, as a leader sends it.
    let mut frames = Vec::new();
    encode_raft_fragments(&bogus, &mut frames);
    send_as_leader(&frames, "does not decode");
    // Fragments whose joined bytes are not a message.
    let mut frames = Vec::new();
    for (last, data) in [(false, &b"\0\0\0"[..]), (true, &b"not a message"[..])] {
        encode_frame(
            &Frame::Fragment {
                last,
                data: data.to_vec(),
            },
            &mut frames,
        );
    }
    send_as_leader(&frames, "sent a bad message in fragments");
    // Streamed, as a leader of this release sends it: received whole,
    // then refused when it does not decode (off the event loop).
    let garbage = b"not a key-value state either".to_vec();
    let mut frames = Vec::new();
    let mut header = bogus.clone();
    if let MessageBody::InstallSnapshot { snapshot, .. } = &mut header.body {
        snapshot.data = Vec::new().into();
    }
    encode_frame(
        &Frame::SnapshotBegin {
            transfer: 1,
            len: garbage.len() as u64,
            message: header,
        },
        &mut frames,
    );
    encode_frame(
        &Frame::SnapshotChunk {
            transfer: 1,
            offset: 0,
            data: garbage,
        },
        &mut frames,
    );
    send_as_leader(&frames, "refusing the snapshot from");
    put(&mut c, "after", "2");
    tc.wait_value_everywhere(&[follower], "after", "2");
    tc.wait_value_everywhere(&[follower], "before", "1");
    let st = tc.status(&mut c, follower).expect("status");
    assert!(
        st.commit_index.0 < 1_000_000,
        "the bogus snapshot was taken"
    );
}

/// A state larger than one frame (64 MiB) is still snapshotted, compacted
/// and sent to a follower that needs it: InstallSnapshot is streamed from
/// the leader's snapshot file in chunks, into a file at the follower.
#[test]
fn a_snapshot_larger_than_a_frame_reaches_a_lagging_follower() {
    // Every 30 entries (33 to 39 as the nodes stagger them): by the 90th
    // put every node has compacted past entry 60 at least once.
    let mut tc = TestCluster::start_with(3, "snapshot_entries = 30\nsnapshot_keep_entries = 5\n");
    let leader = tc.wait_leader(&[1, 2, 3]);
    let lagger = if leader == 3 { 2 } else { 3 };
    tc.kill(lagger);
    let mut c = tc.client();
    // 90 distinct keys of 1 MiB: the last snapshot (at entry 66 to 78)
    // holds 65 to 77 MiB of state, more than one frame.
    let pad = "y".repeat(1 << 20);
    for i in 0..90 {
        put(&mut c, &format!("big{i}"), &format!("{i}-{pad}"));
    }
    let first = wait_log_start_past(&tc, &mut c, leader, 60);
    assert!(
        first > 60,
        "the leader did not compact (log from {first}): the state was too large?"
    );

    tc.start_node(lagger);
    tc.wait_value_everywhere(&[lagger], "big89", &format!("89-{pad}"));
    tc.wait_value_everywhere(&[lagger], "big0", &format!("0-{pad}"));
    assert_installed_a_snapshot(&tc, lagger);
    let log =
        std::fs::read_to_string(tc.dir.path().join(format!("n{lagger}.log"))).expect("node log");
    assert!(
        log.contains("received the snapshot at"),
        "the snapshot did not come as a stream"
    );
    assert_eq!(snapshot_tmp_files(&tc, lagger), 0, "a partial file is left");
}

/// `snapshot.*.tmp` files in node `id`'s data dir: snapshots being
/// received or encoded.
fn snapshot_tmp_files(tc: &TestCluster, id: u64) -> usize {
    count_files(tc, id, ".", |n| {
        n.starts_with("snapshot.") && n.ends_with(".tmp")
    })
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A streamed InstallSnapshot cut off, by its link closing or by the
/// receiver being killed, leaves nothing behind that matters: the partial
/// file goes (at once, or when the node next starts), the node keeps
/// serving, and after a restart it takes the real leader's snapshot and
/// catches up.
#[test]
fn an_interrupted_streamed_install_leaves_the_follower_able_to_start_and_catch_up() {
    use raftkit::raft::{LogIndex, Message, MessageBody, NodeId, Snapshot};
    use raftkit::wire::{encode_frame, Frame, Sender};
    use std::io::Write;

    let mut tc = TestCluster::start_with(3, SMALL_SNAPSHOTS);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let follower = if leader == 3 { 2 } else { 3 };
    let mut c = tc.client();
    put(&mut c, "before", "1");
    tc.wait_value_everywhere(&[follower], "before", "1");
    let term = tc.status(&mut c, follower).expect("status").current_term;
    let addr = tc.config.node(NodeId(follower)).expect("node").addr;
    let log_path = tc.dir.path().join(format!("n{follower}.log"));
    let log_has = |what: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches(what)
            .count()
    };

    // Connects to the follower as the leader and starts a transfer of a
    // 16 MiB snapshot, sending only its first 3 MiB.
    let start_transfer = |transfer: u64| {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let mut out = Vec::new();
        encode_frame(
            &Frame::Hello {
                cluster: tc.config.cluster.name.clone(),
                from: Sender::Peer(NodeId(leader)),
            },
            &mut out,
        );
        let message = Message {
            from: NodeId(leader),
            to: NodeId(follower),
            term,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    membership: Default::default(),
                    index: LogIndex(1_000_000),
                    term,
                    data: Vec::new().into(),
                },
                read_round: 0,
            },
        };
        encode_frame(
            &Frame::SnapshotBegin {
                transfer,
                len: 16 << 20,
                message,
            },
            &mut out,
        );
        for i in 0..3u64 {
            encode_frame(
                &Frame::SnapshotChunk {
                    transfer,
                    offset: i << 20,
                    data: vec![b'z'; 1 << 20],
                },
                &mut out,
            );
        }
        s.write_all(&out).expect("send");
        s
    };

    // Cut off by the link closing: the partial file goes at once.
    let receiving = log_has("receiving the snapshot at 1000000");
    let link = start_transfer(7);
    wait_for("the follower receiving the fake transfer", || {
        log_has("receiving the snapshot at 1000000") > receiving
            && snapshot_tmp_files(&tc, follower) == 1
    });
    drop(link);
    wait_for("the partial file removed when its link closed", || {
        snapshot_tmp_files(&tc, follower) == 0
    });
    put(&mut c, "between", "2");
    tc.wait_value_everywhere(&[follower], "between", "2");

    // Cut off by the follower dying mid-transfer: the file stays on disk.
    let receiving = log_has("receiving the snapshot at 1000000");
    let _link = start_transfer(8);
    wait_for("the follower receiving the second fake transfer", || {
        log_has("receiving the snapshot at 1000000") > receiving
            && snapshot_tmp_files(&tc, follower) == 1
    });
    tc.kill(follower);
    assert_eq!(snapshot_tmp_files(&tc, follower), 1);

    // The others go on and compact past everything the follower has, so
    // that it can only catch up from the leader's (streamed) snapshot.
    let pad = "x".repeat(2_000);
    for i in 0..300 {
        put(&mut c, &format!("k{}", i % 20), &format!("v{i}-{pad}"));
    }
    put(&mut c, "after", "3");
    let first = wait_log_start_past(&tc, &mut c, leader, 200);
    assert!(first > 200, "the leader did not compact (log from {first})");

    tc.start_node(follower);
    tc.wait_value_everywhere(&[follower], "after", "3");
    tc.wait_value_everywhere(&[follower], "k19", &format!("v299-{pad}"));
    tc.wait_value_everywhere(&[follower], "between", "2");
    assert_installed_a_snapshot(&tc, follower);
    assert!(
        log_has("removed 1 unfinished snapshot file") >= 1,
        "the leftover was not reported removed at start"
    );
    assert_eq!(snapshot_tmp_files(&tc, follower), 0);
    let st = tc.status(&mut c, follower).expect("status");
    assert!(st.commit_index.0 < 1_000_000, "the fake snapshot was taken");
}
