//! The randomized simulator over a few hundred seeds: any violation fails
//! with its seed and the command that replays it.

use raftkit::sim::{run_seed, SimOptions};

fn run_many(first: u64, count: u64, nodes: u64) {
    let mut failures = Vec::new();
    for seed in first..first + count {
        let mut opts = SimOptions::new(seed);
        opts.nodes = nodes;
        let report = run_seed(opts);
        if let Some(v) = report.violation {
            failures.push(format!(
                "seed {seed}: {v}\n  replay: cargo run --release --bin raft-sim -- --seed {seed} --nodes {nodes} --trace"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sim_three_nodes_200_seeds_are_safe_and_live() {
    run_many(1, 200, 3);
}

#[test]
fn sim_five_nodes_100_seeds_are_safe_and_live() {
    run_many(10_001, 100, 5);
}

#[test]
fn sim_same_seed_replays_exactly() {
    let mut a = SimOptions::new(42);
    a.trace = true;
    let b = a.clone();
    let ra = run_seed(a);
    let rb = run_seed(b);
    assert_eq!(ra.trace, rb.trace);
    assert!(ra.trace.len() > 1000);
}

#[test]
fn sim_html_draws_the_run_as_a_diagram() {
    let mut opts = SimOptions::new(7);
    opts.diagram = true;
    let report = run_seed(opts);
    let page = report.diagram.expect("a page");
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    for lane in ["n1</text>", "n2</text>", "n3</text>"] {
        assert!(page.contains(lane), "lane {lane}");
    }
    assert!(page.contains("leader t"), "elections are marked");
    assert!(page.contains("AppendEntries"), "messages are drawn");
    assert_eq!(page.matches("<g ").count(), page.matches("</g>").count());
    assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
    assert!(
        page.contains("<table class=\"log\">"),
        "the logs at the end"
    );
    assert!(report.violation.is_none());
}

/// The operator at work: spare nodes added as learners and voters,
/// learners promoted, members (leaders too) removed, leadership handed
/// over, under the full fault mix; every committed membership must follow
/// from the one before by joint consensus, and the usual safety, history
/// and liveness checks hold.
#[test]
fn sim_membership_churn_150_seeds_is_safe_and_live() {
    let mut failures = Vec::new();
    let (mut requests, mut committed) = (0, 0);
    for seed in 20_001..20_151 {
        let mut opts = SimOptions::new(seed);
        opts.spares = 2;
        opts.membership_change = 0.02;
        let report = run_seed(opts);
        requests += report.member_requests;
        committed += report.memberships_committed;
        if let Some(v) = report.violation {
            failures.push(format!(
                "seed {seed}: {v}\n  replay: cargo run --release --bin raft-sim -- --seed {seed} --spares 2 --membership-change 0.02 --trace"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(requests > 1000, "the operator acted {requests} times");
    assert!(committed > 300, "{committed} memberships committed");
}
