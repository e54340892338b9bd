//! A bad cluster.toml is refused with the file, the line and what is wrong.

use std::path::Path;

use raftkit::config::{parse_node_id, Config};
use raftkit::raft::NodeId;

const GOOD: &str = r#"[cluster]
name = "demo"
data_dir = "data"
election_timeout_ms = [150, 300]
heartbeat_interval_ms = 50

[[node]]
id = 1
addr = "127.0.0.1:7001"

[[node]]
id = 2
addr = "127.0.0.1:7002"
"#;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("/etc/rk/cluster.toml")).map_err(|e| e.to_string())
}

#[test]
fn config_good_file_resolves_paths_against_its_directory() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.nodes[1].data_dir, Path::new("/etc/rk/data/n2"));
    assert_eq!(c.election_timeout_ticks(), (15, 30));
    assert_eq!(c.heartbeat_interval_ticks(), 5);
}

#[test]
fn config_duplicate_id_names_both_lines() {
    let bad = GOOD.replace("id = 2", "id = 1");
    assert_eq!(
        parse(&bad).unwrap_err(),
        "/etc/rk/cluster.toml:12: duplicate node id 1 (first at line 8)"
    );
}

#[test]
fn config_duplicate_address() {
    let bad = GOOD.replace("7002", "7001");
    assert_eq!(
        parse(&bad).unwrap_err(),
        "/etc/rk/cluster.toml:13: duplicate address 127.0.0.1:7001 (first at line 9)"
    );
}

#[test]
fn config_syntax_error_has_line() {
    let bad = GOOD.replace("heartbeat_interval_ms = 50", "heartbeat_interval_ms = = 50");
    let e = parse(&bad).unwrap_err();
    assert!(e.starts_with("/etc/rk/cluster.toml:5:"), "{e}");
}

#[test]
fn config_unknown_key_has_line() {
    let bad = GOOD.replace(
        "addr = \"127.0.0.1:7002\"",
        "addr = \"127.0.0.1:7002\"\nport = 3",
    );
    let e = parse(&bad).unwrap_err();
    assert!(
        e.starts_with("/etc/rk/cluster.toml:14:") && e.contains("port"),
        "{e}"
    );
}

#[test]
fn config_missing_key_is_named() {
    let bad = GOOD.replace("heartbeat_interval_ms = 50\n", "");
    let e = parse(&bad).unwrap_err();
    assert!(e.contains("heartbeat_interval_ms"), "{e}");
}

#[test]
fn config_bad_timeouts() {
    let e = parse(&GOOD.replace("[150, 300]", "[300, 150]")).unwrap_err();
    assert!(e.starts_with("/etc/rk/cluster.toml:4:"), "{e}");
    let e = parse(&GOOD.replace("= 50", "= 200")).unwrap_err();
    assert!(e.starts_with("/etc/rk/cluster.toml:5:"), "{e}");
}

#[test]
fn config_zero_id_and_bad_address() {
    let e = parse(&GOOD.replace("id = 2", "id = 0")).unwrap_err();
    assert!(e.starts_with("/etc/rk/cluster.toml:12:"), "{e}");
    let e = parse(&GOOD.replace("127.0.0.1:7002", "nowhere")).unwrap_err();
    assert!(
        e.starts_with("/etc/rk/cluster.toml:13:") && e.contains("nowhere"),
        "{e}"
    );
}

#[test]
fn config_unknown_node_lists_ids() {
    let c = parse(GOOD).unwrap();
    let e = c.require_node(NodeId(9)).unwrap_err().to_string();
    assert_eq!(
        e,
        "/etc/rk/cluster.toml: no node n9 in this config (it has n1, n2)"
    );
}

#[test]
fn config_node_id_accepts_n_prefix() {
    assert_eq!(parse_node_id("n3"), Ok(NodeId(3)));
    assert_eq!(parse_node_id("3"), Ok(NodeId(3)));
    assert!(parse_node_id("x").is_err());
    assert!(parse_node_id("0").is_err());
    let e = parse_node_id("n0x").unwrap_err();
    assert_eq!(e.text, "n0x");
    assert_eq!(
        e.to_string(),
        "invalid node id \"n0x\": expected a number like 1 or n1"
    );
}

#[test]
fn config_metrics_addr_is_optional_and_resolved() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.nodes[0].metrics_addr, None);
    let with = GOOD.replace(
        "addr = \"127.0.0.1:7002\"",
        "addr = \"127.0.0.1:7002\"\nmetrics_addr = \"127.0.0.1:9102\"",
    );
    let c = parse(&with).unwrap();
    assert_eq!(
        c.nodes[1].metrics_addr,
        Some("127.0.0.1:9102".parse().unwrap())
    );
}

#[test]
fn config_bad_metrics_addr_names_the_line_and_why() {
    let cases = [
        (
            "metrics_addr = \"nowhere\"",
            "cannot resolve metrics_addr \"nowhere\" (want host:port)",
        ),
        (
            "metrics_addr = \"127.0.0.1:7002\"",
            "metrics_addr 127.0.0.1:7002 is the node's own addr: give metrics a port of their own",
        ),
        (
            "metrics_addr = \"127.0.0.1:7001\"",
            "metrics_addr 127.0.0.1:7001 is already taken by node n1",
        ),
        (
            "metrics_addr = 9102",
            "invalid type: integer `9102`, expected a string",
        ),
    ];
    for (line, why) in cases {
        let bad = GOOD.replace(
            "addr = \"127.0.0.1:7002\"",
            &format!("addr = \"127.0.0.1:7002\"\n{line}"),
        );
        assert_eq!(
            parse(&bad).unwrap_err(),
            format!("/etc/rk/cluster.toml:14: {why}"),
            "{line}"
        );
    }
    // A later node may not listen on an earlier node's metrics port.
    let bad = GOOD.replace(
        "addr = \"127.0.0.1:7001\"",
        "addr = \"127.0.0.1:7001\"\nmetrics_addr = \"127.0.0.1:7002\"",
    );
    assert_eq!(
        parse(&bad).unwrap_err(),
        "/etc/rk/cluster.toml:14: address 127.0.0.1:7002 is node n1's metrics_addr"
    );
}

#[test]
fn config_tls_paths_resolve_against_its_directory() {
    let text = format!(
        "{GOOD}\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/n{{id}}.pem\"\nkey = \"/abs/n{{id}}.key\"\n"
    );
    let c = parse(&text).unwrap();
    let t = c.tls.expect("a [tls] section");
    assert_eq!(t.ca, Path::new("/etc/rk/certs/ca.pem"));
    let cert = t.cert.expect("cert");
    assert_eq!(
        raftkit::tls::for_node(&cert, NodeId(2)),
        Path::new("/etc/rk/certs/n2.pem")
    );
    assert_eq!(t.key.expect("key"), Path::new("/abs/n{id}.key"));
    assert!(t.client_cert.is_none());
    assert!(parse(GOOD).unwrap().tls.is_none());
}

#[test]
fn config_tls_cert_without_key_names_the_line() {
    let text = format!("{GOOD}\n[tls]\nca = \"ca.pem\"\ncert = \"n{{id}}.pem\"\n");
    let e = parse(&text).unwrap_err();
    assert!(
        e.starts_with("/etc/rk/cluster.toml:17:") && e.contains("cert and key together"),
        "{e}"
    );
}

#[test]
fn config_tls_files_missing_are_named() {
    let e = raftkit::tls::client_config(
        Path::new("/nonexistent/ca.pem"),
        Path::new("/nonexistent/client.pem"),
        Path::new("/nonexistent/client.key"),
    )
    .expect_err("missing files refused");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/ca.pem: cannot read"),
        "{e}"
    );
}
