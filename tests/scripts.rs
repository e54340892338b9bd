//! The cluster scripts as a newcomer runs them: from another directory,
//! with `CARGO_TARGET_DIR` set to a target dir that is not the checkout's
//! `target/`, on a config with comments, single quotes and a space in its
//! data dir. `cluster.sh start`/`stop`, `kill-node.sh` and
//! `restart-node.sh` must find the binaries where cargo put them, and a
//! start whose nodes exit must say which did and whether any still runs.
//!
//! Every node the scripts start is killed by PID when a test ends, also
//! on panic (see `Scripted`'s `Drop`), and only if its command line names
//! the test's own config: a PID file never makes us kill a stranger.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{free_port, signal};

/// The first script run may compile the binaries' dev profile from
/// scratch on a busy 2-core machine.
const BUILD_DEADLINE: Duration = Duration::from_secs(1200);
/// Any later script run (cargo finds everything fresh); the scripts' own
/// waits are 30 s at most, plus SIGTERM's 5 s.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);
/// A killed or stopped node is gone well within this.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

/// A target dir of its own for the scripts (`CARGO_TARGET_DIR`), that
/// shares the compiled artifacts of the target dir these tests were built
/// in: its `debug/` links to theirs, so cargo finds them fresh and only
/// links the binaries into it. Built once per test process, by one
/// `cargo build` (the tests then build in it one at a time: cargo's lock).
fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_raft-node"));
        let real_target = built
            .parent()
            .and_then(Path::parent)
            .expect("raft-node lies in <target>/<profile>/");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scripts-target");
        let debug = dir.join("debug");
        std::fs::create_dir_all(&debug).expect("create the scripts' target dir");
        for shared in [".fingerprint", "build", "deps", "incremental"] {
            let real = real_target.join("debug").join(shared);
            std::fs::create_dir_all(&real).expect("create a dir of the real target dir");
            let link = debug.join(shared);
            if std::fs::read_link(&link).ok().as_deref() != Some(real.as_path()) {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&real, &link).expect("link the shared artifacts");
            }
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &dir)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --bins: {status}");
        dir
    })
}

/// What a script run printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A cluster run by the scripts, in a temp dir; stopped by `Drop`.
struct Scripted {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    /// Where the scripts run from: neither the checkout nor the config's
    /// directory.
    cwd: PathBuf,
    ids: Vec<u64>,
    ports: Vec<u16>,
    /// Every node PID read from a PID file, for `Drop`.
    pids_seen: Mutex<Vec<u32>>,
}

impl Scripted {
    fn new() -> Scripted {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = vec![1, 2, 3];
        let ports: Vec<u16> = ids.iter().map(|_| free_port()).collect();
        // What broke the scripts' awk: comments, single quotes, and a space.
        let mut text = String::from(
            "# scripts read this through raft-ctl config\n[cluster]\nname = 'scripts' # the name\ndata_dir = 'data dir'\nelection_timeout_ms = [300, 600]\nheartbeat_interval_ms = 50\n",
        );
        for (id, port) in ids.iter().zip(&ports) {
            text.push_str(&format!(
                "\n[[node]]\nid = {id} # n{id}\naddr = '127.0.0.1:{port}'\n"
            ));
        }
        let config_path = dir.path().join("conf").join("cluster.toml");
        let cwd = dir.path().join("elsewhere");
        std::fs::create_dir_all(config_path.parent().expect("parent")).expect("mkdir conf");
        std::fs::create_dir_all(&cwd).expect("mkdir elsewhere");
        std::fs::write(&config_path, text).expect("write config");
        Scripted {
            dir,
            config_path,
            cwd,
            ids,
            ports,
            pids_seen: Mutex::new(Vec::new()),
        }
    }

    fn node_dir(&self, id: u64) -> PathBuf {
        self.dir
            .path()
            .join("conf")
            .join("data dir")
            .join(format!("n{id}"))
    }

    fn pid_file(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("node.pid")
    }

    /// The PID in the node's PID file, remembered for `Drop`.
    fn pid(&self, id: u64) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file(id)).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        self.pids_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
        Some(pid)
    }

    /// Runs scripts/NAME ARGS --config <ours> from `cwd` with
    /// CARGO_TARGET_DIR set; kills it (its process group) past `deadline`.
    fn script(&self, name: &str, args: &[&str], deadline: Duration) -> Run {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name);
        let out_path = self.dir.path().join(format!("{name}.out"));
        let err_path = self.dir.path().join(format!("{name}.err"));
        let out = std::fs::File::create(&out_path).expect("stdout file");
        let err = std::fs::File::create(&err_path).expect("stderr file");
        let mut child = Command::new(&script)
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.cwd)
            .env("CARGO_TARGET_DIR", target_dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() > deadline => {
                    // The whole group: the script, cargo, the nodes it started.
                    signal(child.id(), libc::SIGKILL);
                    // SAFETY: signalling the process group we created.
                    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                    let _ = child.wait();
                    panic!(
                        "{name} {args:?} still runs after {deadline:?}; stderr:\n{}",
                        std::fs::read_to_string(&err_path).unwrap_or_default()
                    );
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("wait for {name}: {e}"),
            }
        };
        Run {
            status,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Is `pid` one of our nodes, running (not a zombie)?
    fn is_our_node(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let ours = self.config_path.as_os_str().as_encoded_bytes();
        let names_ours = cmdline.split(|b| *b == 0).any(|arg| arg == ours);
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        names_ours && !zombie
    }

    fn wait_gone(&self, pid: u32) {
        let start = Instant::now();
        while self.is_our_node(pid) {
            assert!(
                start.elapsed() < EXIT_DEADLINE,
                "node pid {pid} still runs after {EXIT_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The binary the node runs: must be under the scripts' target dir.
    fn assert_runs_from_target_dir(&self, pid: u32) {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe");
        assert!(
            exe.starts_with(target_dir()),
            "node pid {pid} runs {} instead of a binary under {}",
            exe.display(),
            target_dir().display()
        );
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.script("cluster.sh", &["stop"], SCRIPT_DEADLINE)
        }));
        let mut pids = self
            .pids_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        pids.extend(self.ids.iter().filter_map(|&id| {
            let text = std::fs::read_to_string(self.pid_file(id)).ok()?;
            text.trim().parse::<u32>().ok()
        }));
        for pid in pids {
            if self.is_our_node(pid) {
                signal(pid, libc::SIGCONT);
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn scripts_start_kill_restart_stop_with_target_dir_elsewhere() {
    let c = Scripted::new();
    let start = c.script("cluster.sh", &["start"], BUILD_DEADLINE);
    assert!(start.status.success(), "cluster.sh start: {start}");
    assert!(
        start.stdout.contains("leader: n"),
        "cluster.sh start: {start}"
    );
    for &id in &c.ids {
        let pid = c.pid(id).expect("a PID file for every node");
        assert!(c.is_our_node(pid), "n{id} (pid {pid}) is not running");
        c.assert_runs_from_target_dir(pid);
    }

    let victim = c.pid(2).expect("n2's PID file");
    let kill = c.script("kill-node.sh", &["2"], SCRIPT_DEADLINE);
    assert!(kill.status.success(), "kill-node.sh 2: {kill}");
    c.wait_gone(victim);
    assert!(!c.pid_file(2).exists(), "kill-node.sh leaves n2's PID file");

    let restart = c.script("restart-node.sh", &["n2"], SCRIPT_DEADLINE);
    assert!(restart.status.success(), "restart-node.sh n2: {restart}");
    let back = c.pid(2).expect("n2's new PID file");
    assert!(
        c.is_our_node(back),
        "restarted n2 (pid {back}) is not running"
    );
    c.assert_runs_from_target_dir(back);

    // A running node: stopped (SIGTERM) and started again.
    let before = c.pid(1).expect("n1's PID file");
    let restart = c.script("restart-node.sh", &["1"], SCRIPT_DEADLINE);
    assert!(restart.status.success(), "restart-node.sh 1: {restart}");
    c.wait_gone(before);
    let after = c.pid(1).expect("n1's new PID file");
    assert_ne!(before, after, "restart-node.sh 1 did not start a new n1");

    let running: Vec<u32> = c.ids.iter().filter_map(|&id| c.pid(id)).collect();
    let stop = c.script("cluster.sh", &["stop"], SCRIPT_DEADLINE);
    assert!(stop.status.success(), "cluster.sh stop: {stop}");
    for pid in running {
        c.wait_gone(pid);
    }
    for &id in &c.ids {
        assert!(
            !c.pid_file(id).exists(),
            "cluster.sh stop leaves n{id}'s PID file"
        );
    }
}

#[test]
fn scripts_start_says_when_every_node_exited() {
    let c = Scripted::new();
    // Every node's port is taken: every node exits at start.
    let _held: Vec<TcpListener> = c
        .ports
        .iter()
        .map(|p| TcpListener::bind(("127.0.0.1", *p)).expect("hold a node's port"))
        .collect();
    let start = c.script("cluster.sh", &["start"], BUILD_DEADLINE);
    assert!(
        !start.status.success(),
        "cluster.sh start succeeded: {start}"
    );
    assert!(
        start
            .stderr
            .contains("every node exited at start: none is running"),
        "{start}"
    );
    assert!(!start.stderr.contains("still running"), "{start}");
    for &id in &c.ids {
        assert!(
            start.stderr.contains(&format!("n{id} (pid ")),
            "n{id} not named: {start}"
        );
        assert!(!c.pid_file(id).exists(), "n{id}'s stale PID file is left");
    }
    // Each node's last log lines, with the cause.
    assert_eq!(
        start.stderr.matches("cannot listen on").count(),
        3,
        "{start}"
    );
}

#[test]
fn scripts_start_names_the_exited_node_and_those_still_running() {
    let c = Scripted::new();
    let held = TcpListener::bind(("127.0.0.1", c.ports[1])).expect("hold n2's port");
    let start = c.script("cluster.sh", &["start"], BUILD_DEADLINE);
    drop(held);
    assert!(
        !start.status.success(),
        "cluster.sh start succeeded: {start}"
    );
    assert!(start.stderr.contains("n2 (pid "), "{start}");
    assert!(start.stderr.contains("cannot listen on"), "{start}");
    assert!(start.stderr.contains("still running: n1 n3"), "{start}");
    assert!(!start.stderr.contains("every node exited"), "{start}");
    let running: Vec<u32> = [1, 3].iter().filter_map(|&id| c.pid(id)).collect();
    assert_eq!(running.len(), 2, "n1 and n3 have PID files: {start}");
    let stop = c.script("cluster.sh", &["stop"], SCRIPT_DEADLINE);
    assert!(stop.status.success(), "cluster.sh stop: {stop}");
    for pid in running {
        c.wait_gone(pid);
    }
}

/// Runs raft-ctl ARGS from `cwd`; returns (exit code, stdout, stderr).
fn raft_ctl(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raft-ctl"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run raft-ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn raft_ctl_config_prints_what_raft_node_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir_all(&conf).expect("mkdir conf");
    std::fs::create_dir_all(&cwd).expect("mkdir elsewhere");
    let text = "# ids need not be 1..n; n7 has a data dir of its own\n[cluster]\nname = 'cfg' # the name\ndata_dir = 'data dir'\nelection_timeout_ms = [300, 600]\nheartbeat_interval_ms = 50\n\n[[node]]\nid = 1\naddr = '127.0.0.1:7101' # n1\n\n[[node]]\nid = 2\naddr = \"127.0.0.1:7102\"\n\n[[node]]\nid = 7\naddr = '127.0.0.1:7107'\ndata_dir = 'seven'\n";
    std::fs::write(conf.join("cluster.toml"), text).expect("write config");
    // Relative to the current directory, as a user types it.
    let rel = "../conf/cluster.toml";
    let loaded = raftkit::config::Config::load(&cwd.join(rel)).expect("the config loads");

    let (code, ids, err) = raft_ctl(&cwd, &["--config", rel, "config", "ids"]);
    assert_eq!((code, ids.as_str()), (Some(0), "1\n2\n7\n"), "{err}");
    for (id, want) in [
        (2, conf.join("data dir").join("n2")),
        (7, conf.join("seven")),
    ] {
        let (code, out, err) = raft_ctl(
            &cwd,
            &[
                "--config",
                rel,
                "config",
                "data-dir",
                "--id",
                &id.to_string(),
            ],
        );
        assert_eq!(code, Some(0), "{err}");
        let printed = PathBuf::from(out.trim_end_matches('\n'));
        assert!(printed.is_absolute(), "n{id}: {printed:?} is not absolute");
        // The directory raft-node resolves from the same file...
        let node = loaded.node(raftkit::raft::NodeId(id)).expect("node");
        assert_eq!(printed, node.data_dir, "n{id}");
        // ...which is relative to the file's directory.
        std::fs::create_dir_all(&want).expect("mkdir the data dir");
        assert_eq!(
            std::fs::canonicalize(&printed).ok(),
            std::fs::canonicalize(&want).ok(),
            "n{id}"
        );
    }
    let (code, addr, _) = raft_ctl(&cwd, &["--config", rel, "config", "addr", "--id", "n7"]);
    assert_eq!((code, addr.as_str()), (Some(0), "127.0.0.1:7107\n"));

    let (code, json, err) = raft_ctl(&cwd, &["--config", rel, "--json", "config"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["name"], "cfg");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[2]["id"], 7);
    assert_eq!(nodes[2]["addr"], "127.0.0.1:7107");
    assert!(nodes[2]["data_dir"]
        .as_str()
        .is_some_and(|d| d.ends_with("/conf/seven")));

    let (code, _, err) = raft_ctl(&cwd, &["--config", rel, "config", "data-dir", "--id", "4"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no node n4"), "{err}");
    std::fs::write(conf.join("bad.toml"), text.replace("id = 7", "id = 2")).expect("write");
    let (code, _, err) = raft_ctl(&cwd, &["--config", "../conf/bad.toml", "config", "ids"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.toml:17: duplicate node id 2"), "{err}");
}

/// The random drill's schedule comes from its seed alone: the same seed
/// draws the same schedule, another seed another one, and over a few seeds
/// every kind of fault is drawn, starts and ends in time order.
#[test]
fn random_drill_schedule_is_a_function_of_its_seed() {
    let draw = |seed: u32| -> String {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -euo pipefail; source scripts/nemesis.sh; gen_schedule {seed} 60"
            ))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let a = draw(7);
    assert_eq!(a, draw(7), "the same seed drew two schedules");
    assert_ne!(a, draw(8), "two seeds drew the same schedule");
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=20 {
        let mut last = 0u64;
        for line in draw(seed).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 7, "seed {seed}: {line}");
            let ms: u64 = f[0].parse().expect("time");
            assert!(ms >= last, "seed {seed}: out of order at {line}");
            last = ms;
            kinds.insert(f[3].to_string());
        }
    }
    for k in [
        "kill-node",
        "kill-leader",
        "kill-all",
        "pause-node",
        "pause-leader",
        "restart",
        "partition-minority",
        "partition-leader",
        "partition-bridge",
        "one-way",
        "flaky",
        "disk-stall",
        "disk-full",
        "disk-eio",
        "member",
    ] {
        assert!(kinds.contains(k), "no {k} in 20 seeds: {kinds:?}");
    }
}
