//! The Python client (`clients/python/`), written from docs/PROTOCOL.md
//! alone, against a real 3-node cluster: its unittest suite must pass. And
//! the document's example frames, byte for byte, against the encoder the
//! nodes use, so that a client written from the document speaks to them.

use std::path::Path;
use std::process::Command;

use raftkit::kv::{self, Op, OpResult};
use raftkit::raft::{LogIndex, NodeId};
use raftkit::wire::{encode_frame, Frame, RequestBody, ResponseBody, Sender};

mod common;
use common::TestCluster;

fn hex(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(" ")
}

fn frame_hex(frame: &Frame) -> String {
    let mut out = Vec::new();
    encode_frame(frame, &mut out);
    hex(&out)
}

#[test]
fn python_client_suite_passes_against_a_cluster() {
    if Command::new("python3").arg("--version").output().is_err() {
        println!("python3 not found: skipping the Python client's tests");
        return;
    }
    let tc = TestCluster::start(3);
    tc.wait_leader(&[1, 2, 3]);
    let addrs: Vec<String> = tc.config.nodes.iter().map(|n| n.addr.to_string()).collect();
    let out = Command::new("python3")
        .arg("clients/python/test_client.py")
        .arg("-v")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .env("RAFTKIT_ADDRS", addrs.join(","))
        .env("RAFTKIT_CLUSTER", &tc.config.cluster.name)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        print_log_tails(&tc);
    }
    assert!(
        out.status.success(),
        "the Python client's tests failed ({}); their output and the nodes' logs are above",
        out.status
    );
}

/// The last lines of each node's log above debug level, for a failure
/// report (the cluster's directory goes away with it).
fn print_log_tails(tc: &TestCluster) {
    for id in 1..=tc.children.len() {
        let path = tc.dir.path().join(format!("n{id}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("[DEBUG]")).collect();
        println!("--- n{id}.log, its last 40 lines above debug");
        for line in &lines[lines.len().saturating_sub(40)..] {
            println!("{line}");
        }
    }
}

#[test]
fn python_client_protocol_doc_examples_match_the_encoder() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283, "check value");
    assert_eq!(crc32c::crc32c(b""), 0);

    let hello = Frame::Hello {
        cluster: "test".into(),
        from: Sender::Client,
    };
    assert_eq!(
        frame_hex(&hello),
        "52 4b 01 01 00 00 00 09 3c 2f 8c f1 00 00 00 04 74 65 73 74 02"
    );
    let hello_ok = Frame::HelloOk { node: NodeId(1) };
    assert_eq!(
        frame_hex(&hello_ok),
        "52 4b 01 02 00 00 00 08 7e 43 31 89 00 00 00 00 00 00 00 01"
    );

    let command = kv::Command {
        client_id: 1,
        seq: 1,
        op: Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    };
    let put = Frame::Request {
        request_id: 1,
        body: RequestBody::Kv {
            command: command.clone(),
            stale_read: false,
        },
    };
    assert_eq!(
        frame_hex(&put),
        "52 4b 01 14 00 00 00 25 e0 9e 23 b2 \
         00 00 00 00 00 00 00 01 01 00 \
         00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 \
         01 00 00 00 01 6b 00 00 00 01 76"
    );
    let done = Frame::Response {
        request_id: 1,
        body: ResponseBody::Kv {
            index: LogIndex(2),
            result: OpResult::Done,
        },
    };
    assert_eq!(
        frame_hex(&done),
        "52 4b 01 15 00 00 00 12 40 2c f2 ad \
         00 00 00 00 00 00 00 01 01 00 00 00 00 00 00 00 02 01"
    );

    let mut entry_data = Vec::new();
    command.encode(&mut entry_data);
    assert_eq!(
        hex(&entry_data),
        "01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 \
         01 00 00 00 01 6b 00 00 00 01 76"
    );
}
