//! Process tests of the faults `raft-ctl fault` injects beyond partitions,
//! drops and delays: duplicated messages, one-way blocks, and the disk
//! faults (stall, EIO on fsync, full), each checked against its defined
//! behaviour (README, "Faults by hand"), plus a real ENOSPC on a small
//! tmpfs. Deadlines are generous; no assertion depends on tight timing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestCluster;
use raftkit::client::{Client, ClientError};
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{NodeId, Role};
use raftkit::wire::{DiskFault, FaultSpec, RequestBody, ResponseBody};

const DEADLINE: Duration = Duration::from_secs(60);

fn set_fault(c: &mut Client, id: u64, spec: FaultSpec) {
    match c.call(NodeId(id), RequestBody::Fault(spec.clone())) {
        Ok(ResponseBody::FaultOk) => {}
        other => panic!("n{id} refused {spec:?}: {other:?}"),
    }
}

fn fault_of(c: &mut Client, id: u64) -> FaultSpec {
    match c.call(NodeId(id), RequestBody::Status) {
        Ok(ResponseBody::Status(s)) => s.fault,
        other => panic!("status of n{id}: {other:?}"),
    }
}

fn put(c: &mut Client, k: &str, v: &str) -> Result<(), ClientError> {
    match c.kv(
        Op::Put {
            key: k.into(),
            value: v.into(),
        },
        false,
    )? {
        (_, OpResult::Done) => Ok(()),
        (_, other) => panic!("put {k}: {other:?}"),
    }
}

fn get(c: &mut Client, k: &str, stale: bool) -> Option<Vec<u8>> {
    match c.kv(Op::Get { key: k.into() }, stale) {
        Ok((_, OpResult::Value(v))) => v,
        other => panic!("get {k}: {other:?}"),
    }
}

/// A counter advanced by compare-and-set: each step must find the value
/// the previous one left. A write applied twice, or lost, breaks the
/// chain.
fn cas_chain(c: &mut Client, key: &str, from: u64, steps: u64) {
    for i in from..from + steps {
        let expected = (i > 0).then(|| i.to_string().into_bytes());
        let r = c.kv(
            Op::Cas {
                key: key.into(),
                expected,
                new: (i + 1).to_string().into_bytes(),
            },
            false,
        );
        assert!(
            matches!(r, Ok((_, OpResult::CasOk))),
            "cas {key} {i} -> {}: {r:?}",
            i + 1
        );
    }
}

fn leader_of(tc: &TestCluster, c: &mut Client, among: &[u64]) -> Option<u64> {
    among
        .iter()
        .copied()
        .find(|&i| tc.status(c, i).is_some_and(|s| s.role == Role::Leader))
}

#[test]
fn faults_duplicates_and_one_way_blocks_keep_the_cluster_consistent() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut c = tc.client();
    let dup = FaultSpec {
        duplicate_rate_ppm: 500_000,
        ..FaultSpec::default()
    };
    for id in 1..=3 {
        set_fault(&mut c, id, dup.clone());
    }
    cas_chain(&mut c, "counter", 0, 20);
    // One way: the leader stops sending to one follower, which still
    // sends to it.
    let cut = if leader == 1 { 2 } else { 1 };
    let one_way = FaultSpec {
        block_to: vec![NodeId(cut)],
        ..dup.clone()
    };
    set_fault(&mut c, leader, one_way.clone());
    assert_eq!(fault_of(&mut c, leader), one_way, "status shows the block");
    cas_chain(&mut c, "counter", 20, 20);
    // A bridge: n1 and n3 cannot reach each other either way, n2 reaches
    // both.
    for (id, other) in [(1, 3), (3, 1)] {
        let spec = FaultSpec {
            block_to: vec![NodeId(other)],
            ..dup.clone()
        };
        set_fault(&mut c, id, spec);
    }
    set_fault(&mut c, 2, dup.clone());
    cas_chain(&mut c, "counter", 40, 20);
    for id in 1..=3 {
        set_fault(&mut c, id, FaultSpec::default());
        assert!(fault_of(&mut c, id).is_none(), "n{id} healed");
    }
    tc.wait_value_everywhere(&[1, 2, 3], "counter", "60");
}

/// Writes of a client, each well under `stall_ms`: none waited for the
/// stalled disk.
fn writes_do_not_wait(c: &mut Client, prefix: &str, stall_ms: u64) {
    for i in 0..10 {
        let t0 = Instant::now();
        put(c, &format!("{prefix}{i}"), "v").unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(stall_ms / 2),
            "a write waited {:?} behind the stalled disk ({stall_ms} ms)",
            t0.elapsed()
        );
    }
}

#[test]
fn faults_disk_stall_on_a_follower_or_the_leader_does_not_slow_commits() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut c = tc.client();
    put(&mut c, "warm", "up").unwrap();
    let follower = if leader == 1 { 2 } else { 1 };
    let stall = FaultSpec {
        disk: DiskFault::Stall { ms: 5_000 },
        ..FaultSpec::default()
    };
    // A follower's disk takes 5 s per write: the other follower's acks
    // commit every write long before that.
    set_fault(&mut c, follower, stall.clone());
    writes_do_not_wait(&mut c, "f", 5_000);
    set_fault(&mut c, follower, FaultSpec::default());
    // The write under way on the follower's disk finishes its stall first:
    // wait until the follower holds the whole log durably again, so that
    // the leader's stall below meets two working followers.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let st = tc.status(&mut c, leader).expect("the leader answers");
        let caught_up = st
            .peers
            .iter()
            .any(|p| p.id == NodeId(follower) && p.match_index == st.last_index);
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n{follower} never caught up: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The leader's own disk takes 5 s per write: it counts a majority of
    // followers without its own copy, and serves on.
    set_fault(&mut c, leader, stall);
    writes_do_not_wait(&mut c, "l", 5_000);
    set_fault(&mut c, leader, FaultSpec::default());
    put(&mut c, "after", "stall").unwrap();
    tc.wait_value_everywhere(&[1, 2, 3], "after", "stall");
}

#[test]
fn faults_disk_eio_on_fsync_stops_the_node() {
    let mut tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut c = tc.client();
    let victim = if leader == 3 { 2 } else { 3 };
    let eio = FaultSpec {
        disk: DiskFault::Eio,
        ..FaultSpec::default()
    };
    set_fault(&mut c, victim, eio);
    // The next write reaches the victim's fsync, which fails: it stops,
    // and the two others go on.
    let deadline = Instant::now() + DEADLINE;
    let mut i = 0;
    let status = loop {
        put(&mut c, &format!("k{i}"), "v").unwrap();
        i += 1;
        let child = tc.children[victim as usize - 1].as_mut().expect("started");
        if let Some(st) = child.try_wait().expect("wait on the child") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "n{victim} survived a failed fsync"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    tc.children[victim as usize - 1] = None;
    assert!(!status.success(), "n{victim} exited {status} after EIO");
    let log =
        std::fs::read_to_string(tc.dir.path().join(format!("n{victim}.log"))).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("fsync failed"))
        .unwrap_or_else(|| panic!("no fsync failure in n{victim}'s log:\n{log}"));
    assert!(line.contains(".wal"), "the line names no file: {line}");
    put(&mut c, "still", "going").unwrap();
}

/// Writes to a node until it refuses them with DiskFull (the client gives
/// up after its retries and names the refusal); each attempt with a client
/// of its own and a short timeout, as a write proposed before the node
/// knew waits for the space to come back.
fn write_until_disk_full(tc: &TestCluster, id: u64, value: &[u8]) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut i = 0;
    loop {
        let mut c = Client::new(tc.config.clone(), Some(NodeId(id)));
        c.timeout = Duration::from_secs(2);
        let r = c.kv(
            Op::Put {
                key: format!("fill{i}").into_bytes(),
                value: value.to_vec(),
            },
            false,
        );
        i += 1;
        // The client retries DiskFull like Unavailable (the same seq), and
        // names it when it gives up.
        if let Err(ClientError::NoLeader { last, .. }) = r {
            if last.contains("disk full") {
                return last;
            }
        }
        assert!(Instant::now() < deadline, "n{id} never refused a write");
    }
}

/// A full disk, injected on the single node of a cluster: writes refused
/// with a clear error, reads and status served, and the write that was
/// waiting when the disk filled is made durable, committed and answered
/// once space returns.
#[test]
fn faults_disk_full_refuses_writes_serves_reads_and_recovers() {
    let tc = TestCluster::start(1);
    tc.wait_leader(&[1]);
    let mut c = tc.client();
    put(&mut c, "before", "full").unwrap();
    let full = FaultSpec {
        disk: DiskFault::Full,
        ..FaultSpec::default()
    };
    set_fault(&mut c, 1, full.clone());
    let message = write_until_disk_full(&tc, 1, b"v");
    assert!(message.contains("n1: disk full: "), "{message}");
    assert_eq!(get(&mut c, "before", false).as_deref(), Some(&b"full"[..]));
    assert_eq!(get(&mut c, "before", true).as_deref(), Some(&b"full"[..]));
    assert_eq!(fault_of(&mut c, 1), full, "status answers, and shows it");
    set_fault(&mut c, 1, FaultSpec::default());
    let deadline = Instant::now() + DEADLINE;
    while put(&mut c, "after", "space").is_err() {
        assert!(Instant::now() < deadline, "writes never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&mut c, "after", false).as_deref(), Some(&b"space"[..]));
    // The first write that met the full disk was proposed and waited; it
    // is applied now, with everything after it.
    assert_eq!(get(&mut c, "fill0", false).as_deref(), Some(&b"v"[..]));
}

/// A leader whose disk fills: it refuses new writes (DiskFull), its followers
/// commit what it had sent, and within an election timeout it hands
/// leadership to one of them; writes go on there, the full node still
/// answers stale reads, and it catches up once its disk has space again.
#[test]
fn faults_disk_full_leader_hands_over_and_catches_up() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut c = tc.client();
    put(&mut c, "warm", "up").unwrap();
    let full = FaultSpec {
        disk: DiskFault::Full,
        ..FaultSpec::default()
    };
    set_fault(&mut c, leader, full);
    let deadline = Instant::now() + DEADLINE;
    let mut i = 0;
    loop {
        let mut w = Client::new(tc.config.clone(), None);
        w.timeout = Duration::from_secs(5);
        // Refused (DiskFull, retried by the client) until the handover,
        // or a write that waited: then the client gives up.
        let written = put(&mut w, &format!("k{i}"), "v");
        if written.is_ok() {
            i += 1;
        }
        let moved = leader_of(&tc, &mut c, &[1, 2, 3]).is_some_and(|l| l != leader);
        if moved && written.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write committed away from the full n{leader}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log =
        std::fs::read_to_string(tc.dir.path().join(format!("n{leader}.log"))).unwrap_or_default();
    assert!(
        log.contains("own log stuck") && log.contains("the disk is full"),
        "n{leader} handed over without saying why"
    );
    let mut stale = Client::new(tc.config.clone(), Some(NodeId(leader)));
    assert_eq!(get(&mut stale, "warm", true).as_deref(), Some(&b"up"[..]));
    set_fault(&mut c, leader, FaultSpec::default());
    put(&mut c, "last", "one").unwrap();
    tc.wait_value_everywhere(&[1, 2, 3], "last", "one");
}

/// A tmpfs mounted for one test, unmounted on drop (also on panic).
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("mount -o remount");
        assert!(st.success(), "remount {} to {size}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A real ENOSPC: the node's data dir is an 8 MiB tmpfs, filled by the
/// node's own writes. It refuses writes with DiskFull, answers reads and
/// status, and takes writes again once the tmpfs grows.
#[test]
fn faults_real_enospc_on_a_small_tmpfs() {
    let root = tempfile::tempdir().expect("tempdir");
    let mnt = root.path().join("n1-data");
    // Declared before the cluster: dropped (unmounted) after its node is
    // killed.
    let tmpfs = match Tmpfs::mount(&mnt, "8m") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED faults_real_enospc_on_a_small_tmpfs: cannot mount a tmpfs ({e})");
            return;
        }
    };
    let data_dir = mnt.display().to_string();
    let mut tc = TestCluster::start_with_nodes(1, "", |_| format!("data_dir = \"{data_dir}\"\n"));
    tc.wait_leader(&[1]);
    let mut c = tc.client();
    put(&mut c, "before", "full").unwrap();
    let message = write_until_disk_full(&tc, 1, &[b'x'; 64 << 10]);
    assert!(
        message.contains("n1: disk full: ") && message.contains("No space left on device"),
        "{message}"
    );
    assert_eq!(get(&mut c, "before", false).as_deref(), Some(&b"full"[..]));
    assert_eq!(get(&mut c, "before", true).as_deref(), Some(&b"full"[..]));
    assert!(tc.status(&mut c, 1).is_some(), "status answers");
    tmpfs.resize("64m");
    let deadline = Instant::now() + DEADLINE;
    while put(&mut c, "after", "space").is_err() {
        assert!(Instant::now() < deadline, "writes never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&mut c, "after", false).as_deref(), Some(&b"space"[..]));
    // The log the refused writes were retried into is whole: the node
    // restarts from it (a torn record in the middle would stop it) with
    // every acknowledged write.
    tc.kill(1);
    tc.start_node(1);
    tc.wait_leader(&[1]);
    let mut c = tc.client();
    assert_eq!(get(&mut c, "before", false).as_deref(), Some(&b"full"[..]));
    assert_eq!(get(&mut c, "after", false).as_deref(), Some(&b"space"[..]));
    put(&mut c, "after", "restart").unwrap();
    drop(tc);
    drop(tmpfs);
}
