//! The client protocol's promises (docs/PROTOCOL.md), checked against real
//! raft-node processes through raw frames, as a client in another language
//! would send them: every copy of a request is answered, a retry gets the
//! first answer with its index, the limits are enforced before proposing and
//! everything accepted reads back, sessions expire loudly, fault specs are
//! validated, and a stopping node answers what waits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use raftkit::kv::{Command, Op, OpResult, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use raftkit::raft::{LogIndex, NodeId};
use raftkit::wire::{
    decode_frame, encode_frame, ErrorCode, FaultSpec, Frame, RequestBody, ResponseBody, Sender,
};

mod common;
use common::{put, signal, TestCluster};

/// One client connection speaking raw frames.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    next_request_id: u64,
}

impl Raw {
    fn connect(tc: &TestCluster, id: u64) -> Raw {
        Raw::try_connect(tc, id).unwrap_or_else(|| panic!("no handshake with n{id}"))
    }

    fn try_connect(tc: &TestCluster, id: u64) -> Option<Raw> {
        let addr = tc.config.node(NodeId(id)).expect("node").addr;
        let s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut r = Raw {
            s,
            buf: Vec::new(),
            next_request_id: 1,
        };
        r.send(&Frame::Hello {
            cluster: tc.config.cluster.name.clone(),
            from: Sender::Client,
        });
        match r.read() {
            Some(Frame::HelloOk { .. }) => Some(r),
            _ => None,
        }
    }

    fn send(&mut self, f: &Frame) {
        let mut out = Vec::new();
        encode_frame(f, &mut out);
        let _ = self.s.write_all(&out); // a closed connection shows in read()
    }

    /// Sends a request; returns its id.
    fn request(&mut self, body: RequestBody) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.send(&Frame::Request { request_id, body });
        request_id
    }

    /// The next frame, or `None` if the node closed the connection or
    /// nothing came within the read timeout.
    fn read(&mut self) -> Option<Frame> {
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match decode_frame(&self.buf) {
                Ok(Some((f, used))) => {
                    self.buf.drain(..used);
                    return Some(f);
                }
                Ok(None) => {}
                Err(e) => panic!("bad frame from the node: {e}"),
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn response(&mut self) -> (u64, ResponseBody) {
        match self.read() {
            Some(Frame::Response { request_id, body }) => (request_id, body),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn call(&mut self, body: RequestBody) -> ResponseBody {
        let id = self.request(body);
        let (got, body) = self.response();
        assert_eq!(got, id, "answer to another request");
        body
    }
}

fn kv(client_id: u64, seq: u64, op: Op) -> RequestBody {
    RequestBody::Kv {
        command: Command { client_id, seq, op },
        stale_read: false,
    }
}

fn put_op(k: &str, v: &[u8]) -> Op {
    Op::Put {
        key: k.into(),
        value: v.to_vec(),
    }
}

fn get_op(k: &str) -> Op {
    Op::Get { key: k.into() }
}

fn stale_get(k: &str) -> RequestBody {
    RequestBody::Kv {
        command: Command {
            client_id: 0,
            seq: 0,
            op: get_op(k),
        },
        stale_read: true,
    }
}

fn done_index(body: &ResponseBody) -> LogIndex {
    match body {
        ResponseBody::Kv {
            index,
            result: OpResult::Done,
        } => *index,
        other => panic!("expected Done, got {other:?}"),
    }
}

fn value_of(body: ResponseBody) -> Option<Vec<u8>> {
    match body {
        ResponseBody::Kv {
            result: OpResult::Value(v),
            ..
        } => v,
        other => panic!("expected a value, got {other:?}"),
    }
}

fn error_of(body: ResponseBody) -> (ErrorCode, String) {
    match body {
        ResponseBody::Error { code, message } => (code, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A stale read at `id` until it shows `want` (bytes compared).
fn wait_stale_value(tc: &TestCluster, id: u64, key: &str, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(mut r) = Raw::try_connect(tc, id) {
            if value_of(r.call(stale_get(key))).as_deref() == Some(want) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "n{id} never showed {key}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn protocol_every_copy_of_a_pending_write_is_answered() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut a = Raw::connect(&tc, leader);
    let mut b = Raw::connect(&tc, leader);

    // Two copies pipelined on one connection, in one write: the second
    // arrives while the first is pending.
    let req = kv(0x51, 1, put_op("s1", b"one"));
    let mut out = Vec::new();
    for request_id in [10, 11] {
        encode_frame(
            &Frame::Request {
                request_id,
                body: req.clone(),
            },
            &mut out,
        );
    }
    a.s.write_all(&out).expect("write");
    let mut answers = [a.response(), a.response()];
    answers.sort_by_key(|(id, _)| *id);
    assert_eq!(
        [answers[0].0, answers[1].0],
        [10, 11],
        "both copies answered"
    );
    let index = done_index(&answers[0].1);
    assert_eq!(done_index(&answers[1].1), index, "one apply, one index");

    // A copy on each of two connections.
    let req = kv(0x52, 1, put_op("s1b", b"two"));
    let ida = a.request(req.clone());
    let idb = b.request(req);
    let (ra, body_a) = a.response();
    let (rb, body_b) = b.response();
    assert_eq!((ra, rb), (ida, idb));
    assert_eq!(done_index(&body_a), done_index(&body_b));
}

#[test]
fn protocol_retry_gets_the_first_answer_with_its_index() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut r = Raw::connect(&tc, leader);
    let req = kv(0x61, 1, put_op("s2", b"v"));
    let first = done_index(&r.call(req.clone()));
    // Other writes move the applied index on.
    let mut c = tc.client();
    for i in 0..20 {
        put(&mut c, &format!("other{i}"), "x");
    }
    assert_eq!(done_index(&r.call(req.clone())), first, "leader");
    // A follower that applied the write answers the retry itself, with the
    // same first answer.
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    wait_stale_value(&tc, follower, "other19", b"x");
    let mut f = Raw::connect(&tc, follower);
    assert_eq!(done_index(&f.call(req)), first, "follower");
}

#[test]
fn protocol_limits_are_enforced_and_the_largest_value_survives_everything() {
    let mut tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut r = Raw::connect(&tc, leader);

    // Over the limits: refused before proposing, naming the limit; the
    // connection stays open and the cluster keeps committing.
    let big = vec![b'x'; VALUE_BYTES_MAX + 1];
    let (code, msg) = error_of(r.call(kv(0x71, 1, put_op("k", &big))));
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(msg.contains("VALUE_BYTES_MAX"), "{msg}");
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    let (code, msg) = error_of(r.call(kv(0x71, 1, put_op(&long_key, b"v"))));
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(msg.contains("KEY_BYTES_MAX"), "{msg}");
    let (code, _) = error_of(r.call(kv(
        0x71,
        1,
        Op::Cas {
            key: "k".into(),
            expected: Some(big.clone()),
            new: b"v".to_vec(),
        },
    )));
    assert_eq!(code, ErrorCode::BadRequest);
    done_index(&r.call(kv(0x71, 1, put_op("after-refusal", b"1"))));

    // The largest value: put, read back linearizably and stale.
    let max: Vec<u8> = (0..VALUE_BYTES_MAX).map(|i| (i % 251) as u8).collect();
    done_index(&r.call(kv(0x71, 2, put_op("max1", &max))));
    assert_eq!(
        value_of(r.call(kv(0, 0, get_op("max1")))).as_deref(),
        Some(&max[..])
    );

    // It replicates to a follower that was down when it was written.
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    tc.kill(follower);
    done_index(&r.call(kv(0x71, 3, put_op("max2", &max))));
    tc.start_node(follower);
    wait_stale_value(&tc, follower, "max2", &max);

    // Log answers are bounded by bytes: a few maximum entries do not fit
    // one answer, and paging gets them all.
    for seq in 4..=7 {
        done_index(&r.call(kv(0x71, seq, put_op("maxn", &max))));
    }
    let body = r.call(RequestBody::Log {
        from: LogIndex(1),
        to: LogIndex(0),
        entries_max: 10_000,
    });
    let ResponseBody::Log {
        last_index,
        entries,
        ..
    } = body
    else {
        panic!("expected a Log answer");
    };
    let bytes: usize = entries.iter().map(|e| e.data.len()).sum();
    assert!(!entries.is_empty());
    assert!(bytes <= raftkit::node::LOG_RESPONSE_BYTES_MAX, "{bytes}");
    assert!(
        entries.last().map(|e| e.index) < Some(last_index),
        "six maximum values do not fit one answer"
    );
    let mut c = tc.client();
    let (_, all) = c.log(NodeId(leader), 1, 0).expect("paged log");
    assert_eq!(all.len() as u64, all.last().map_or(0, |e| e.index.0));
    assert!(
        all.iter()
            .filter(|e| e.data.len() > VALUE_BYTES_MAX)
            .count()
            >= 6
    );

    // And it survives a restart of the whole cluster.
    for id in 1..=3 {
        tc.kill(id);
    }
    for id in 1..=3 {
        tc.start_node(id);
    }
    tc.wait_leader(&[1, 2, 3]);
    for id in 1..=3 {
        wait_stale_value(&tc, id, "max2", &max);
    }
}

#[test]
fn protocol_write_without_a_session_past_seq_1_is_session_expired() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut r = Raw::connect(&tc, leader);
    let (code, msg) = error_of(r.call(kv(0x81, 5, put_op("s5", b"v"))));
    assert_eq!(code, ErrorCode::SessionExpired, "{msg}");
    assert_eq!(
        value_of(r.call(kv(0, 0, get_op("s5")))),
        None,
        "not applied"
    );
    // A new session (seq 1) works, and its gaps are allowed.
    done_index(&r.call(kv(0x82, 1, put_op("s5", b"a"))));
    done_index(&r.call(kv(0x82, 9, put_op("s5", b"b"))));
    // A write older than the session's last is refused, not applied.
    let (code, _) = error_of(r.call(kv(0x82, 3, put_op("s5", b"c"))));
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(
        value_of(r.call(kv(0, 0, get_op("s5")))).as_deref(),
        Some(&b"b"[..])
    );
}

#[test]
fn protocol_fault_specs_are_validated() {
    let tc = TestCluster::start(3);
    tc.wait_leader(&[1, 2, 3]);
    let mut r = Raw::connect(&tc, 1);
    let bad = [
        FaultSpec {
            drop_rate_ppm: 2_000_000,
            ..FaultSpec::default()
        },
        FaultSpec {
            partition: vec![vec![NodeId(1)], vec![NodeId(99)]],
            ..FaultSpec::default()
        },
        FaultSpec {
            partition: vec![vec![NodeId(1), NodeId(2)], vec![NodeId(2), NodeId(3)]],
            ..FaultSpec::default()
        },
        FaultSpec {
            partition: vec![vec![NodeId(1)], vec![]],
            ..FaultSpec::default()
        },
        FaultSpec {
            delay_ms: 3_600_000,
            ..FaultSpec::default()
        },
    ];
    for spec in bad {
        let (code, msg) = error_of(r.call(RequestBody::Fault(spec.clone())));
        assert_eq!(code, ErrorCode::BadRequest, "{spec:?}: {msg}");
    }
    match r.call(RequestBody::Status) {
        ResponseBody::Status(s) => assert!(s.fault.is_none(), "nothing changed: {:?}", s.fault),
        other => panic!("{other:?}"),
    }
    let ok = FaultSpec {
        drop_rate_ppm: 1_000_000,
        ..FaultSpec::default()
    };
    assert_eq!(r.call(RequestBody::Fault(ok)), ResponseBody::FaultOk);
    assert_eq!(
        r.call(RequestBody::Fault(FaultSpec::default())),
        ResponseBody::FaultOk
    );
}

#[test]
fn protocol_stopping_leader_answers_waiting_writes_unavailable() {
    let tc = TestCluster::start(3);
    let leader = tc.wait_leader(&[1, 2, 3]);
    let mut r = Raw::connect(&tc, leader);
    // Cut the leader off so the write cannot commit, then stop it at once
    // (well inside an election timeout, before CheckQuorum steps it down).
    let others: Vec<NodeId> = (1..=3).filter(|&i| i != leader).map(NodeId).collect();
    let cut = FaultSpec {
        partition: vec![vec![NodeId(leader)], others],
        ..FaultSpec::default()
    };
    assert_eq!(r.call(RequestBody::Fault(cut)), ResponseBody::FaultOk);
    let id = r.request(kv(0x91, 1, put_op("pending", b"v")));
    std::thread::sleep(Duration::from_millis(20));
    signal(tc.pid(leader), libc::SIGTERM);
    let (got, body) = r.response();
    assert_eq!(got, id);
    let (code, msg) = error_of(body);
    assert_eq!(code, ErrorCode::Unavailable, "{msg}");
}
