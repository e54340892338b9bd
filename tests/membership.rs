//! Membership changes on real raft-node processes: a learner added,
//! promoted and a voter removed; a second change refused while one is in
//! progress; nodes that are not members (never added, or removed and still
//! running) disturb nobody; the membership survives a restart of every node
//! and a snapshot; a learner far behind is not promoted. The changes go
//! through the raft-ctl binary, as an operator makes them.
//!
//! Free ports, temp dirs, every child killed by PID when the test ends (also
//! on panic). One cluster at a time (the machines are small), and generous
//! deadlines: no test asserts how fast anything happens.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftkit::client::Client;
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{NodeId, Role, Term};
use serde_json::Value;

mod common;
use common::{put, TestCluster};

/// Held by each test: one cluster runs at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every [[node]] 1..=n; the first three are the initial voters.
const THREE_OF: &str = "initial_members = [1, 2, 3]\n";

fn ctl_cmd(tc: &TestCluster, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_raft-ctl"));
    c.arg("--config").arg(&tc.config_path).args(args);
    c
}

struct Ctl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ctl {
    fn from(o: Output) -> Ctl {
        Ctl {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Ctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}, stdout {:?}, stderr {:?}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn ctl(tc: &TestCluster, args: &[&str]) -> Ctl {
    ctl_cmd(tc, args).output().expect("run raft-ctl").into()
}

/// A membership change, asked again while the leader refuses it for a
/// passing reason (a new leader that has not committed in its term yet, a
/// change still completing, a learner still catching up) or no leader
/// answers; panics unless it is answered OK within a minute.
fn change(tc: &TestCluster, args: &[&str]) -> Ctl {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ctl(tc, args);
        if out.code == Some(0) {
            return out;
        }
        let passing = [
            "not yet committed",
            "in progress",
            "entries behind",
            "being handed",
        ]
        .iter()
        .any(|p| out.stderr.contains(p))
            || out.code == Some(3);
        assert!(passing, "{args:?}: {out:?}");
        assert!(
            Instant::now() < deadline,
            "{args:?} never went through: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `raft-ctl --json member list`, asked of each node in turn until the
/// answer comes from a leader. (A node that knows no leader answers with
/// its own view, `leader` null: a removed node that keeps running does so
/// for good, and without `--node` raft-ctl asks n1 first.)
fn member_list(tc: &TestCluster) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids: Vec<String> = tc.config.ids().iter().map(|i| i.0.to_string()).collect();
    loop {
        for id in &ids {
            let out = ctl(
                tc,
                &["--timeout", "2", "--node", id, "--json", "member", "list"],
            );
            if out.code == Some(0) {
                let v: Value = serde_json::from_str(&out.stdout).expect("member list prints JSON");
                if v["leader"].is_u64() {
                    return v;
                }
            }
        }
        assert!(Instant::now() < deadline, "no member list from a leader");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The members a member list names, with their roles: `[(1, "voter"), ..]`.
fn roles(list: &Value) -> Vec<(u64, String)> {
    list["members"]
        .as_array()
        .expect("members is an array")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().expect("id"),
                m["role"].as_str().expect("role").to_string(),
            )
        })
        .collect()
}

fn voters(ids: &[u64]) -> Vec<(u64, String)> {
    ids.iter().map(|&i| (i, "voter".to_string())).collect()
}

/// Waits until the leader lists exactly `want`, with no change under way.
fn wait_members(tc: &TestCluster, want: &[(u64, String)]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = member_list(tc);
        if roles(&list) == want && list["changing"] == Value::Bool(false) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "the members never became {want:?}: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn term_of(tc: &TestCluster, client: &mut Client, id: u64) -> Term {
    tc.status(client, id)
        .unwrap_or_else(|| panic!("n{id} answers status"))
        .current_term
}

/// Over `secs` seconds (several election timeouts of 300..600 ms), the
/// nodes `ids` keep the term and the leader they have now, while writes go
/// on; and `quiet` (a node that is not a voter) never campaigns: no node
/// grants it a vote or a pre-vote, and it starts no election.
///
/// A node of this small, shared machine can stall for a second (an fsync,
/// the scheduler), which moves the term without any help: the window is
/// tried again, up to three times. A node that disturbs the cluster does so
/// every election timeout, in every window, and the logs show it.
fn assert_undisturbed(tc: &TestCluster, ids: &[u64], quiet: u64, secs: u64, why: &str) {
    let mut client = tc.client();
    let log_of = |id: NodeId| {
        std::fs::read_to_string(tc.dir.path().join(format!("n{}.log", id.0))).unwrap_or_default()
    };
    // Only what the nodes log from now on counts.
    let from: Vec<usize> = tc
        .config
        .ids()
        .into_iter()
        .map(|id| log_of(id).len())
        .collect();
    let mut moved = Vec::new();
    for _window in 0..3 {
        let leader = tc.wait_leader(ids);
        let term = term_of(tc, &mut client, leader);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut i = 0;
        while Instant::now() < end {
            put(&mut client, &format!("undisturbed-{i}"), "x");
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        moved.clear();
        for &id in ids {
            let st = tc
                .status(&mut client, id)
                .unwrap_or_else(|| panic!("n{id} answers"));
            if (st.current_term, st.leader) != (term, Some(NodeId(leader))) {
                moved.push(format!(
                    "n{id} moved from term {term} under n{leader} to term {} under {:?}",
                    st.current_term, st.leader
                ));
            }
        }
        if moved.is_empty() {
            break;
        }
        eprintln!("{why}: {} (a stall?); watching again", moved.join("; "));
    }
    let campaigned: Vec<String> = tc
        .config
        .ids()
        .into_iter()
        .zip(from)
        .flat_map(|(id, from)| {
            let text = log_of(id);
            text.get(from..)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    let granted = l.contains(&format!("granting a pre-vote to n{quiet} "))
                        || l.contains(&format!("granting my vote to n{quiet} "));
                    let own = id.0 == quiet
                        && (l.contains("starting election") || l.contains("became leader"));
                    granted || own
                })
                .map(|l| format!("n{}: {l}", id.0))
                .collect::<Vec<_>>()
        })
        .collect();
    if !moved.is_empty() || !campaigned.is_empty() {
        print_logs(tc);
        panic!("{why}: {} {}", moved.join("; "), campaigned.join("\n"));
    }
}

/// The nodes' logs, for a failure's report (the temp dir goes with the test).
fn print_logs(tc: &TestCluster) {
    for id in tc.config.ids() {
        let path = tc.dir.path().join(format!("n{}.log", id.0));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("DEBUG")).collect();
        eprintln!("---- {} (the last 60 lines above debug)", path.display());
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{l}");
        }
    }
}

/// The value of `key` in `id`'s own state (a stale read of that node).
fn local_value(tc: &TestCluster, id: u64, key: &str) -> Option<Vec<u8>> {
    let mut c = Client::new(tc.config.clone(), Some(NodeId(id)));
    c.timeout = Duration::from_secs(5);
    match c.kv(Op::Get { key: key.into() }, true) {
        Ok((_, OpResult::Value(v))) => v,
        _ => None,
    }
}

fn wait_local(tc: &TestCluster, id: u64, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while local_value(tc, id, key).as_deref() != Some(want.as_bytes()) {
        assert!(Instant::now() < deadline, "n{id} never held {key}={want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A raft-ctl child killed when dropped (the test may panic first).
struct Bg(Option<Child>);

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn membership_learner_added_promoted_voter_removed_leadership_transferred() {
    let _one = serial();
    let tc = TestCluster::start_with(4, THREE_OF);
    tc.wait_leader(&[1, 2, 3]);
    let list = wait_members(&tc, &voters(&[1, 2, 3]));
    // The shape of `member list --json`.
    for field in [
        "changing",
        "joint",
        "membership_index",
        "leader",
        "commit_index",
        "last_index",
    ] {
        assert!(list.get(field).is_some(), "no {field} in {list}");
    }
    for m in list["members"].as_array().expect("members") {
        assert!(m["addr"].is_string(), "{m}");
        assert!(m["match_index"].is_u64(), "{m}");
    }
    let mut c = tc.client();
    for i in 0..50 {
        put(&mut c, &format!("k{i}"), &format!("v{i}"));
    }

    // n4 joins as a learner: it receives the log and counts for nothing.
    let out = change(&tc, &["member", "add", "4", "--learner"]);
    assert!(out.stdout.contains("learner"), "{out:?}");
    let mut want = voters(&[1, 2, 3]);
    want.push((4, "learner".into()));
    wait_members(&tc, &want);
    wait_local(&tc, 4, "k49", "v49");
    put(&mut c, "after-learner", "1");
    wait_local(&tc, 4, "after-learner", "1");
    let st = ctl(&tc, &["--json", "status"]);
    let st: Value = serde_json::from_str(&st.stdout).expect("status JSON");
    let n4 = st
        .as_array()
        .and_then(|a| a.iter().find(|n| n["id"] == 4))
        .expect("n4 in status");
    assert_eq!(n4["member"], "learner", "{n4}");
    assert_eq!(n4["membership"]["learners"], serde_json::json!([4]), "{n4}");

    // Promoted, then n1 removed: the voters are n2, n3, n4.
    change(&tc, &["member", "promote", "4"]);
    wait_members(&tc, &voters(&[1, 2, 3, 4]));
    change(&tc, &["member", "remove", "1"]);
    let list = wait_members(&tc, &voters(&[2, 3, 4]));
    assert_eq!(list["joint"], false);
    let leader = tc.wait_leader(&[2, 3, 4]);
    put(&mut c, "after-remove", "1");
    for id in [2, 3, 4] {
        wait_local(&tc, id, "after-remove", "1");
    }

    // settle waits for and compares the members only: n1 still runs, with
    // its log cut short at the joint membership, and is named as skipped.
    let out = ctl(&tc, &["--json", "settle", "--wait", "60"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let settled: Value = serde_json::from_str(&out.stdout).expect("settle JSON");
    assert_eq!(
        settled["members"],
        serde_json::json!([2, 3, 4]),
        "{settled}"
    );
    assert_eq!(settled["skipped"], serde_json::json!([1]), "{settled}");

    // Leadership handed to each other voter in turn.
    for target in [2u64, 3, 4].into_iter().filter(|&t| t != leader) {
        let out = ctl(
            &tc,
            &["--timeout", "30", "transfer-leader", &target.to_string()],
        );
        assert_eq!(out.code, Some(0), "transfer to n{target}: {out:?}");
        assert_eq!(tc.wait_leader(&[2, 3, 4]), target);
        put(&mut c, &format!("under-{target}"), "1");
    }
    // A node that is not a voter cannot be handed leadership.
    let out = ctl(&tc, &["transfer-leader", "1"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("not a voter"), "{out:?}");
}

#[test]
fn membership_second_change_while_one_is_in_progress_is_refused() {
    let _one = serial();
    let mut tc = TestCluster::start_with(5, THREE_OF);
    let leader = tc.wait_leader(&[1, 2, 3]);
    // n4's messages arrive 2 s late: once it is a learner the leader hears
    // from it all the time (late), so it stays leader; but with one old
    // voter down, the joint membership {1,2,3} + {1,2,3,4} needs n4 to
    // commit, and every step of the promotion waits 2 s for its answer.
    let out = ctl(&tc, &["--node", "4", "fault", "delay", "--ms", "2000"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    change(&tc, &["member", "add", "4", "--learner"]);
    let down = [1u64, 2, 3]
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    tc.kill(down);
    // Let n4's late answers start arriving.
    std::thread::sleep(Duration::from_secs(3));
    let promote = ctl_cmd(&tc, &["--timeout", "60", "member", "promote", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn raft-ctl");
    let mut promote = Bg(Some(promote));
    // Once the leader says the change is under way, a second one is
    // refused, with the reason and exit 1.
    let mut client = tc.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = tc.status(&mut client, leader).expect("the leader answers");
        if st.membership_changing && st.role == Role::Leader {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the promotion never started: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = ctl(&tc, &["member", "add", "5", "--learner"]);
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(
        second.stderr.contains("a membership change is in progress")
            && second.stderr.contains("(Refused)"),
        "{second:?}"
    );
    // The first completes.
    let first: Ctl = promote
        .0
        .take()
        .expect("running")
        .wait_with_output()
        .expect("promote ends")
        .into();
    assert_eq!(first.code, Some(0), "{first:?}");
    let out = ctl(&tc, &["--node", "4", "fault", "heal"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    tc.start_node(down);
    wait_members(&tc, &voters(&[1, 2, 3, 4]));
    // Nothing half-done is left: n5 is added now.
    change(&tc, &["member", "add", "5", "--learner"]);
}

#[test]
fn membership_empty_non_member_disturbs_nobody_and_answers_status() {
    let _one = serial();
    let tc = TestCluster::start_with(4, THREE_OF);
    tc.wait_leader(&[1, 2, 3]);
    assert_undisturbed(&tc, &[1, 2, 3], 4, 4, "n4 waits as a non-member");
    let mut client = tc.client();
    let st = tc.status(&mut client, 4).expect("n4 answers status");
    assert!(!st.membership.contains(NodeId(4)), "{:?}", st.membership);
    assert_eq!(st.role, Role::Follower);
    assert_eq!(st.current_term, Term(0), "n4 never campaigned");
    let log = std::fs::read_to_string(tc.dir.path().join("n4.log")).expect("n4's log");
    assert!(
        !log.contains("starting pre-vote") && !log.contains("starting election"),
        "a non-member campaigned:\n{log}"
    );
    let out = ctl(&tc, &["--json", "status"]);
    let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
    let n4 = v
        .as_array()
        .and_then(|a| a.iter().find(|n| n["id"] == 4))
        .expect("n4 in status");
    assert_eq!(n4["member"], "non-member", "{n4}");
    let text = ctl(&tc, &["status"]);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("n4") && l.contains("non-member")),
        "{text:?}"
    );
}

#[test]
fn membership_removed_node_that_keeps_running_disturbs_nobody() {
    let _one = serial();
    let tc = TestCluster::start(4);
    let leader = tc.wait_leader(&[1, 2, 3, 4]);
    // A follower removed, still running.
    let gone = (1..=4).find(|&i| i != leader).expect("a follower");
    change(&tc, &["member", "remove", &gone.to_string()]);
    let rest: Vec<u64> = (1..=4).filter(|&i| i != gone).collect();
    wait_members(&tc, &voters(&rest));
    assert_undisturbed(
        &tc,
        &rest,
        gone,
        4,
        &format!("removed n{gone} keeps running"),
    );
    // The leader removed: it hands over and steps down, and keeps running.
    change(&tc, &["member", "remove", &leader.to_string()]);
    let last: Vec<u64> = rest.iter().copied().filter(|&i| i != leader).collect();
    wait_members(&tc, &voters(&last));
    let next = tc.wait_leader(&last);
    assert_ne!(next, leader);
    assert_undisturbed(
        &tc,
        &last,
        leader,
        4,
        &format!("removed n{leader} keeps running"),
    );
    for id in [gone, leader] {
        let pid = tc.pid(id);
        assert_eq!(common::signal(pid, 0), 0, "n{id} still runs");
    }
    let mut client = tc.client();
    let st = tc.status(&mut client, leader).expect("old leader answers");
    assert_ne!(st.role, Role::Leader, "the removed leader stepped down");
}

#[test]
fn membership_survives_restart_of_every_node_and_snapshots() {
    let _one = serial();
    let extra = format!("{THREE_OF}snapshot_entries = 50\nsnapshot_keep_entries = 10\n");
    let mut tc = TestCluster::start_with(4, &extra);
    tc.wait_leader(&[1, 2, 3]);
    change(&tc, &["member", "add", "4", "--learner"]);
    change(&tc, &["member", "promote", "4"]);
    change(&tc, &["member", "remove", "1"]);
    let list = wait_members(&tc, &voters(&[2, 3, 4]));
    let membership_index = list["membership_index"].as_u64().expect("index");
    tc.kill(1);
    let mut c = tc.client();
    for i in 0..300 {
        put(&mut c, &format!("k{i}"), &format!("v{i}"));
    }
    for id in [2, 3, 4] {
        wait_local(&tc, id, "k299", "v299");
    }
    // Every node compacted its log past the membership's entry: after the
    // restart, the membership comes from the snapshot.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in [2, 3, 4] {
        loop {
            let st = tc.status(&mut c, id).expect("answers");
            if st.first_index.0 > membership_index + 1 {
                break;
            }
            assert!(Instant::now() < deadline, "n{id} never compacted: {st:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for id in [2, 3, 4] {
        tc.kill(id);
    }
    for id in [2, 3, 4] {
        tc.start_node(id);
    }
    tc.wait_leader(&[2, 3, 4]);
    wait_members(&tc, &voters(&[2, 3, 4]));
    for id in [2, 3, 4] {
        let st = tc.status(&mut c, id).expect("answers");
        let want: std::collections::BTreeSet<NodeId> = [2, 3, 4].map(NodeId).into();
        assert_eq!(st.membership.voters, want, "n{id}: {}", st.membership);
        assert!(!st.membership_changing, "n{id}");
    }
    put(&mut c, "after-restart", "1");
    for id in [2, 3, 4] {
        wait_local(&tc, id, "k150", "v150");
        wait_local(&tc, id, "after-restart", "1");
    }
}

#[test]
fn membership_promotion_of_a_learner_far_behind_is_refused_with_how_far() {
    let _one = serial();
    let mut tc = TestCluster::start_with(4, THREE_OF);
    tc.wait_leader(&[1, 2, 3]);
    change(&tc, &["member", "add", "4", "--learner"]);
    tc.kill(4);
    // Over a thousand entries while n4 is down, from a few clients at once.
    std::thread::scope(|s| {
        for t in 0..4 {
            let tc = &tc;
            s.spawn(move || {
                let mut c = tc.client();
                for i in 0..300 {
                    put(&mut c, &format!("t{t}-{i}"), "x");
                }
            });
        }
    });
    let out = ctl(&tc, &["member", "promote", "4"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("(Refused)"), "{out:?}");
    // "n4 is 1203 entries behind (it has 2 of 1205); promote it once ..."
    let behind: u64 = out
        .stderr
        .split(" entries behind")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of entries behind: {out:?}"));
    assert!(behind >= 1000, "{out:?}");
    assert!(out.stderr.contains("within 1000"), "{out:?}");
    wait_members(&tc, &{
        let mut w = voters(&[1, 2, 3]);
        w.push((4, "learner".into()));
        w
    });
    // Back up, it catches up and the promotion goes through.
    tc.start_node(4);
    change(&tc, &["member", "promote", "4"]);
    wait_members(&tc, &voters(&[1, 2, 3, 4]));
    wait_local(&tc, 4, "t3-299", "x");
}
