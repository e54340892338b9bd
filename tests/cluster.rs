//! Real raft-node processes on loopback: free ports, temp dirs, and every
//! child killed by PID when the test ends, also on panic. Deadlines are
//! generous: these machines are small and noisy.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftkit::client::Client;
use raftkit::config::Config;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{NodeId, Role};
use raftkit::wire::{RequestBody, ResponseBody};

struct TestCluster {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    config: Config,
    children: Vec<Option<Child>>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) -> i32 {
    // SAFETY: sending a signal to our own child by PID.
    unsafe { libc::kill(pid as i32, sig) }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TestCluster {
    fn start(n: u64) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = String::from(
            "[cluster]\nname = \"test\"\ndata_dir = \"data\"\nelection_timeout_ms = [300, 600]\nheartbeat_interval_ms = 50\n",
        );
        for id in 1..=n {
            text.push_str(&format!(
                "\n[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\n",
                free_port()
            ));
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write config");
        let config = Config::load(&config_path).expect("config");
        let mut c = TestCluster {
            dir,
            config_path,
            config,
            children: (0..n).map(|_| None).collect(),
        };
        for id in 1..=n {
            c.start_node(id);
        }
        c
    }

    fn start_node(&mut self, id: u64) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("n{id}.log"))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .arg("--config")
            .arg(&self.config_path)
            .arg("--id")
            .arg(id.to_string())
            .arg("--log-level")
            .arg("debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raft-node");
        self.children[id as usize - 1] = Some(child);
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self, id: u64) -> u32 {
        self.children[id as usize - 1]
            .as_ref()
            .expect("running")
            .id()
    }

    fn client(&self) -> Client {
        let mut c = Client::new(self.config.clone(), None);
        c.timeout = Duration::from_secs(30);
        c
    }

    fn status(&self, client: &mut Client, id: u64) -> Option<raftkit::raft::Status> {
        match client.call(NodeId(id), RequestBody::Status) {
            Ok(ResponseBody::Status(s)) => Some(s.status),
            _ => None,
        }
    }

    /// Waits for a leader among `among` that all of them agree on.
    fn wait_leader(&self, among: &[u64]) -> u64 {
        let mut client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let st: Vec<_> = among
                .iter()
                .filter_map(|&i| self.status(&mut client, i))
                .collect();
            if let Some(l) = st.iter().find(|s| s.role == Role::Leader) {
                if st.len() == among.len()
                    && st
                        .iter()
                        .all(|s| s.leader == Some(l.id) && s.current_term == l.current_term)
                {
                    return l.id.0;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader among {among:?} within 60 s");
    }

    fn wait_value_everywhere(&self, nodes: &[u64], key: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for &id in nodes {
            let mut c = Client::new(self.config.clone(), Some(NodeId(id)));
            c.timeout = Duration::from_secs(5);
            loop {
                if let Ok((_, OpResult::Value(Some(v)))) = c.kv(Op::Get { key: key.into() }, true) {
                    if v == want.as_bytes() {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "n{id} never showed {key}={want}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn put(c: &mut Client, k: &str, v: &str) {
    let r = c.kv(
        Op::Put {
            key: k.into(),
            value: v.into(),
        },
        false,
    );
    assert!(matches!(r, Ok((_, OpResult::Done))), "put {k}: {r:?}");
}

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
