//! The views a person reads: `raft-ctl watch` (one frame as text) against
//! a real cluster, with a node down.

use std::process::Command;

mod common;
use common::TestCluster;

#[test]
fn watch_shows_roles_lag_and_a_node_down() {
    let mut tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let down = (1..=3).find(|&i| i != leader).expect("a follower");
    tc.kill(down);
    let out = Command::new(env!("CARGO_BIN_EXE_raft-ctl"))
        .arg("--config")
        .arg(&tc.config_path)
        .args(["watch", "--dump", "3", "--width", "110", "--height", "30"])
        .output()
        .expect("run raft-ctl watch");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("leader n{leader} in t")),
        "headline names the leader:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("n{down}")) && l.contains("down")),
        "n{down} shows as down:\n{text}"
    );
    assert!(text.contains("followers behind the leader"), "{text}");
    assert!(
        text.contains(&format!("n{down} is not answering")),
        "the event:\n{text}"
    );
}
