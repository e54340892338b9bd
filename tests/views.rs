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

/// The elements of a parsed SVG document with this `id`.
fn by_id<'a>(doc: &'a roxmltree::Document<'a>, id: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .find(|n| n.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no element with id {id:?}"))
}

/// Points of a path's `d` (each `M` or `L` starts one).
fn points(path: roxmltree::Node<'_, '_>) -> usize {
    path.attribute("d")
        .unwrap_or("")
        .matches(['M', 'L'])
        .count()
}

/// The `<title>` texts of the children of `g`.
fn titles(g: roxmltree::Node<'_, '_>) -> Vec<String> {
    g.descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text().map(str::to_string))
        .collect()
}

fn parse_svg(text: &str) -> roxmltree::Document<'_> {
    let doc = roxmltree::Document::parse(text).expect("the SVG is well-formed XML");
    assert!(doc.root_element().has_tag_name("svg"), "root is <svg>");
    doc
}

#[test]
fn bench_plot_draws_throughput_latency_leader_and_faults() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let svg_path = tc.dir.path().join("bench.svg");
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_raft-ctl"))
            .arg("--config")
            .arg(&tc.config_path)
            .args(args)
            .output()
            .expect("run raft-ctl")
    };
    // A network fault in the middle of the run, set and healed by hand.
    let config_path = tc.config_path.clone();
    let faults = std::thread::spawn(move || {
        let fault = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_raft-ctl"))
                .arg("--config")
                .arg(&config_path)
                .arg("fault")
                .args(args)
                .output()
                .expect("run raft-ctl fault")
        };
        std::thread::sleep(std::time::Duration::from_millis(1500));
        fault(&["delay", "--ms", "5"]);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        fault(&["heal"]);
    });
    let out = ctl(&[
        "bench",
        "--op",
        "kv",
        "-c",
        "4",
        "--duration",
        "5",
        "--warmup",
        "0",
        "--quiet",
        "--plot",
        svg_path.to_str().expect("utf-8 path"),
    ]);
    faults.join().expect("fault thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("picture: "), "{stdout}");
    let text = std::fs::read_to_string(&svg_path).expect("the picture was written");
    let doc = parse_svg(&text);
    for id in ["throughput", "latency-p50", "latency-p99"] {
        assert!(
            points(by_id(&doc, id)) >= 10,
            "{id} is a line of many points"
        );
    }
    let leader_rects: Vec<_> = by_id(&doc, "leader")
        .children()
        .filter(|n| n.attribute("data-leader").is_some())
        .collect();
    assert!(
        leader_rects
            .iter()
            .any(|r| r.attribute("data-leader") == Some(format!("n{leader}").as_str())),
        "the leader band shows n{leader}"
    );
    let elected = titles(by_id(&doc, "elections"));
    assert!(
        elected.iter().any(|t| t.contains(&format!("n{leader} t"))),
        "the first election is marked: {elected:?}"
    );
    let faults = titles(by_id(&doc, "faults"));
    assert!(
        faults.iter().any(|t| t == "delay 5±0 ms"),
        "the fault window is named: {faults:?}"
    );
    let lanes = by_id(&doc, "nodes");
    assert!(
        lanes
            .descendants()
            .filter(|n| n.attribute("class") == Some("lane-leader"))
            .count()
            >= 1
    );
}

/// A drill's picture is drawn from its files: the history, the status
/// samples and the fault schedule (as scripts/drill.sh writes them).
#[test]
fn plot_of_drill_files_names_fault_windows_and_elections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = 1_000_000_000u64;
    let t0 = 50 * s;
    let mut history = String::new();
    for i in 0..400u64 {
        let invoke = t0 + i * 25_000_000;
        history.push_str(&format!(
            "{{\"client\":{},\"op\":\"put\",\"key\":\"k\",\"value\":\"v{i}\",\"expected\":null,\"invoke_ns\":{invoke},\"complete_ns\":{},\"ok\":true,\"result\":null}}\n",
            i % 4,
            invoke + 1_000_000 + (i % 7) * 300_000
        ));
    }
    let mut timeline = String::new();
    for k in 0..50u64 {
        let t = t0 + k * 200_000_000;
        // n1 leads t1 for 4 s, then is killed; n2 leads t2 from 5 s on.
        let (n1, n2) = if t < t0 + 4 * s {
            (
                r#""up":true,"role":"leader","term":1,"leader":1,"fault":"""#,
                r#""up":true,"role":"follower","term":1,"leader":1,"fault":"""#,
            )
        } else if t < t0 + 5 * s {
            (
                r#""up":false"#,
                r#""up":true,"role":"candidate","term":2,"leader":null,"fault":"""#,
            )
        } else {
            (
                r#""up":false"#,
                r#""up":true,"role":"leader","term":2,"leader":2,"fault":"""#,
            )
        };
        timeline.push_str(&format!(
            "{{\"t_ns\":{t},\"node\":1,{n1}}}\n{{\"t_ns\":{t},\"node\":2,{n2}}}\n"
        ));
    }
    timeline.push_str("{\"t_ns\":1,\"node\""); // a torn last line
    let events = format!("{} + n1 down\n{} ! restarted n1\n", t0 + 4 * s, t0 + 9 * s);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let (h, t, e) = (
        write("history.jsonl", &history),
        write("timeline.jsonl", &timeline),
        write("events.txt", &events),
    );
    let svg_path = dir.path().join("history.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_raft-ctl"))
        .arg("plot")
        .arg("--history")
        .arg(&h)
        .arg("--timeline")
        .arg(&t)
        .arg("--events")
        .arg(&e)
        .args(["--title", "drill <leader-kill> & co", "--out"])
        .arg(&svg_path)
        .output()
        .expect("run raft-ctl plot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg_path).expect("picture");
    let doc = parse_svg(&text);
    assert_eq!(
        by_id(&doc, "title").text(),
        Some("drill <leader-kill> & co"),
        "the title is escaped and reads back"
    );
    assert!(points(by_id(&doc, "throughput")) >= 50);
    assert!(points(by_id(&doc, "latency-p99")) >= 50);
    assert_eq!(titles(by_id(&doc, "faults")), ["n1 down"]);
    let elected = titles(by_id(&doc, "elections"));
    assert_eq!(elected, ["elected: n1 t1", "elected: n2 t2"]);
    let leaders: Vec<&str> = by_id(&doc, "leader")
        .children()
        .filter_map(|n| n.attribute("data-leader"))
        .collect();
    assert_eq!(leaders, ["n1", "n2"]);
    assert_eq!(titles(by_id(&doc, "marks")), ["restarted n1"]);
}
