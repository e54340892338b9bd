//! Shared by the process tests: a cluster of real raft-node processes on
//! free loopback ports with data in a temp dir. Every child is killed by
//! PID when the cluster is dropped, also on panic.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftkit::client::Client;
use raftkit::config::Config;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{NodeId, Role};
use raftkit::wire::{RequestBody, ResponseBody};

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Config,
    pub children: Vec<Option<Child>>,
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

pub fn signal(pid: u32, sig: i32) -> i32 {
    // SAFETY: sending a signal to our own child by PID.
    unsafe { libc::kill(pid as i32, sig) }
}

/// A loopback port free now and never handed out before in this test
/// process: a port of a node a test has stopped must not go to another
/// test's cluster, or the node could not restart on it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Keep each probe bound until a new port is found, so that the
    // system offers another one each time.
    let mut held = Vec::new();
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        held.push(l);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl TestCluster {
    pub fn start(n: u64) -> TestCluster {
        TestCluster::start_with(n, "")
    }

    /// As `start`, with `extra` lines added to the `[cluster]` table.
    pub fn start_with(n: u64, extra: &str) -> TestCluster {
        TestCluster::start_with_nodes(n, extra, |_| String::new())
    }

    /// As `start_with`, with `node_extra(id)` lines added to each node's
    /// `[[node]]` table.
    pub fn start_with_nodes(
        n: u64,
        extra: &str,
        node_extra: impl Fn(u64) -> String,
    ) -> TestCluster {
        let mut c = TestCluster::configure(n, extra, node_extra, |_| String::new());
        for id in 1..=n {
            c.start_node(id);
        }
        c
    }

    /// A cluster with mutual TLS: `raft-ctl certs init` makes a CA and
    /// certificates in `certs/`, and cluster.toml gets a `[tls]` section
    /// with the client certificate as raft-ctl's default.
    pub fn start_tls(n: u64) -> TestCluster {
        let mut c = TestCluster::configure_tls(n);
        for id in 1..=n {
            c.start_node(id);
        }
        c
    }

    /// As `start_tls`, with no node started yet.
    pub fn configure_tls(n: u64) -> TestCluster {
        TestCluster::configure(
            n,
            "",
            |_| String::new(),
            |dir| {
                make_certs(&dir.join("certs"), n);
                TLS_SECTION.to_string()
            },
        )
    }

    /// Writes cluster.toml (with `tail(dir)` at its end) without starting
    /// any node.
    pub fn configure(
        n: u64,
        extra: &str,
        node_extra: impl Fn(u64) -> String,
        tail: impl FnOnce(&std::path::Path) -> String,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = String::from(
            "[cluster]\nname = \"test\"\ndata_dir = \"data\"\nelection_timeout_ms = [300, 600]\nheartbeat_interval_ms = 50\n",
        );
        text.push_str(extra);
        for id in 1..=n {
            text.push_str(&format!(
                "\n[[node]]\nid = {id}\naddr = \"127.0.0.1:{}\"\n{}",
                free_port(),
                node_extra(id)
            ));
        }
        text.push_str(&tail(dir.path()));
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).expect("write config");
        let config = Config::load(&config_path).expect("config");
        TestCluster {
            dir,
            config_path,
            config,
            children: (0..n).map(|_| None).collect(),
        }
    }

    pub fn start_node(&mut self, id: u64) {
        let path = self.config_path.clone();
        self.start_node_with(id, &path);
    }

    /// Starts node `id` with a config file of its own.
    pub fn start_node_with(&mut self, id: u64, config_path: &std::path::Path) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("n{id}.log"))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .arg("--config")
            .arg(config_path)
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

    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self, id: u64) -> u32 {
        self.children[id as usize - 1]
            .as_ref()
            .expect("running")
            .id()
    }

    pub fn client(&self) -> Client {
        let mut c = Client::new(self.config.clone(), None);
        c.timeout = Duration::from_secs(30);
        c
    }

    pub fn status(&self, client: &mut Client, id: u64) -> Option<raftkit::raft::Status> {
        match client.call(NodeId(id), RequestBody::Status) {
            Ok(ResponseBody::Status(s)) => Some(s.status),
            _ => None,
        }
    }

    /// Waits for a leader among `among` that all of them agree on.
    pub fn wait_leader(&self, among: &[u64]) -> u64 {
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

    pub fn wait_value_everywhere(&self, nodes: &[u64], key: &str, want: &str) {
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

/// The `[tls]` section of a test cluster made by `make_certs`.
pub const TLS_SECTION: &str = "\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/n{id}.pem\"\nkey = \"certs/n{id}.key\"\nclient_cert = \"certs/client.pem\"\nclient_key = \"certs/client.key\"\n";

/// `raft-ctl certs init` for nodes 1..=n into `dir`.
pub fn make_certs(dir: &std::path::Path, n: u64) {
    let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_raft-ctl"))
        .args(["certs", "init", "--dir"])
        .arg(dir)
        .args(["--nodes", &ids.join(",")])
        .output()
        .expect("run raft-ctl certs init");
    assert!(
        out.status.success(),
        "certs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn put(c: &mut Client, k: &str, v: &str) {
    let r = c.kv(
        Op::Put {
            key: k.into(),
            value: v.into(),
        },
        false,
    );
    assert!(matches!(r, Ok((_, OpResult::Done))), "put {k}: {r:?}");
}
