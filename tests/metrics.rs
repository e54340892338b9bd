//! Metrics for operators: a real cluster with `metrics_addr` on every
//! node, scraped over plain TCP as Prometheus would.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, put, TestCluster};

/// One HTTP GET; the status line, the headers and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The samples of a text-format page, by `name{labels}`; checks that
/// every sample's family was declared with `# TYPE` before it, once.
fn samples(body: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("name value");
        let name = key.split('{').next().expect("name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no # TYPE");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        if types[family] == "counter" {
            assert!(name.ends_with("_total"), "counter {name} ends with _total");
        }
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        out.insert(key.to_string(), v);
    }
    out
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

/// A histogram's buckets only grow, and `+Inf` is the count.
fn check_histogram(s: &BTreeMap<String, f64>, name: &str) {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = s
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 5, "{name} has buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} buckets are cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
    assert_eq!(
        buckets.last().map(|b| b.1),
        Some(value(s, &format!("{name}_count")))
    );
}

#[test]
fn metrics_scrape_shows_roles_commits_latencies_peers_and_snapshots() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let tc = TestCluster::start_with_nodes(
        3,
        "snapshot_entries = 40\nsnapshot_keep_entries = 5\n",
        |id| format!("metrics_addr = \"127.0.0.1:{}\"\n", ports[id as usize - 1]),
    );
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut c = tc.client();
    for i in 0..100 {
        put(&mut c, &format!("k{i}"), "v");
    }
    let addr = |id: u64| -> SocketAddr {
        format!("127.0.0.1:{}", ports[id as usize - 1])
            .parse()
            .expect("addr")
    };
    // Values are published every 100 ms: wait for the writes to show.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let (status, headers, body) = get(addr(leader), "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains("Content-Type: text/plain; version=0.0.4"),
            "{headers}"
        );
        let s = samples(&body);
        if value(&s, "raft_proposals_total") >= 100.0
            && value(&s, "raft_snapshots_total{kind=\"taken\"}") >= 1.0
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the writes never showed:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value(&s, "raft_role{role=\"leader\"}"), 1.0);
    assert_eq!(value(&s, "raft_role{role=\"follower\"}"), 0.0);
    assert!(value(&s, "raft_term") >= 1.0);
    assert!(value(&s, "raft_commit_index") >= 100.0);
    assert!(value(&s, "raft_applied_index") >= 100.0);
    assert!(value(&s, "raft_leader_changes_total") >= 1.0);
    assert!(value(&s, "raft_commit_latency_seconds_count") >= 100.0);
    assert!(value(&s, "raft_fsync_latency_seconds_count") >= 1.0);
    assert!(value(&s, "raft_snapshot_duration_seconds_count") >= 1.0);
    for h in [
        "raft_commit_latency_seconds",
        "raft_fsync_latency_seconds",
        "raft_snapshot_duration_seconds",
    ] {
        check_histogram(&s, h);
    }
    for peer in (1..=3).filter(|&p| p != leader) {
        assert!(
            value(
                &s,
                &format!("raft_peer_sent_messages_total{{peer=\"n{peer}\"}}")
            ) >= 1.0
        );
        assert!(
            value(
                &s,
                &format!("raft_peer_sent_bytes_total{{peer=\"n{peer}\"}}")
            ) >= 1.0
        );
    }
    assert_eq!(
        value(
            &s,
            &format!("raft_node_info{{node=\"n{leader}\",cluster=\"test\"}}")
        ),
        1.0
    );
    // A follower says so, and counts no proposals of its own.
    let follower = (1..=3).find(|&p| p != leader).expect("a follower");
    let (_, _, body) = get(addr(follower), "/metrics");
    let f = samples(&body);
    assert_eq!(value(&f, "raft_role{role=\"follower\"}"), 1.0);
    assert_eq!(value(&f, "raft_proposals_total"), 0.0);
    // Anything but GET /metrics is refused.
    assert_eq!(get(addr(leader), "/nope").0, "HTTP/1.1 404 Not Found");
}
