//! The frame decoder never panics: random bytes, and valid frames with bit
//! flips, truncations and corrupted lengths (CRC recomputed so the body
//! parser really runs).

use raftkit::codec::DecodeError;
use raftkit::kv::{Command, Op};
use raftkit::raft::membership::MEMBERSHIP_BYTES_MAX;
use raftkit::raft::{
    Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, PeerStatus, ProgressState, Role,
    Snapshot, Status, Term,
};
use raftkit::wire::{
    decode_frame, decode_frame_ref, decode_raft_fragments, encode_frame, encode_raft_fragments,
    FaultSpec, Frame, FrameError, FrameRef, NodeStatus, RequestBody, ResponseBody, Sender,
    FRAGMENTED_BYTES_MAX, FRAGMENT_BYTES_MAX, HEADER_BYTES, SNAPSHOT_DATA_BYTES_MAX,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 17
    }
}

fn install_snapshot(data: &[u8], read_round: u64) -> Frame {
    Frame::Raft(Message {
        from: NodeId(1),
        to: NodeId(3),
        term: Term(5),
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                membership: Default::default(),
                index: LogIndex(1000),
                term: Term(4),
                data: data.into(),
            },
            read_round,
        },
    })
}

fn samples() -> Vec<Vec<u8>> {
    let frames = [
        Frame::Hello {
            cluster: "demo".into(),
            from: Sender::Peer(NodeId(2)),
        },
        Frame::Raft(Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::AppendEntries {
                prev_log_index: LogIndex(7),
                prev_log_term: Term(2),
                entries: (8..12)
                    .map(|i| Entry {
                        index: LogIndex(i),
                        term: Term(3),
                        kind: EntryKind::Command,
                        data: vec![i as u8; 5].into(),
                    })
                    .collect(),
                leader_commit: LogIndex(7),
                read_round: 4,
            },
        }),
        Frame::Fragment {
            last: false,
            data: b"part of a message".to_vec(),
        },
        {
            let Frame::Raft(message) = install_snapshot(&[], 2) else {
                unreachable!()
            };
            Frame::SnapshotBegin {
                transfer: 3,
                len: 5 << 30,
                message,
            }
        },
        Frame::SnapshotChunk {
            transfer: 3,
            offset: 1 << 20,
            data: vec![0x5A; 100],
        },
        Frame::SnapshotAck {
            transfer: 3,
            received: 2 << 20,
        },
        Frame::Request {
            request_id: 9,
            body: RequestBody::Kv {
                command: Command {
                    client_id: 1,
                    seq: 2,
                    op: Op::Cas {
                        key: b"k".to_vec(),
                        expected: None,
                        new: b"v".to_vec(),
                    },
                },
                stale_read: false,
            },
        },
        install_snapshot(&[0xAB; 40], 6),
    ];
    frames
        .iter()
        .map(|f| {
            let mut b = Vec::new();
            encode_frame(f, &mut b);
            assert_eq!(
                decode_frame(&b).expect("valid").expect("whole").0,
                *f,
                "round trip"
            );
            for cut in 0..b.len() {
                assert!(
                    matches!(decode_frame(&b[..cut]), Ok(None)),
                    "prefix {cut} is incomplete, not an error"
                );
            }
            b
        })
        .collect()
}

/// Decodes `b` both ways; the borrowed decoder must agree with the owned
/// one on every outcome: incomplete, the same error, or the same frame.
fn decode_both(b: &[u8]) {
    let owned = decode_frame(b);
    let borrowed = decode_frame_ref(b).map(|o| {
        o.map(|(f, used)| {
            let f = match f {
                FrameRef::Kv(kv) => Frame::Request {
                    request_id: kv.request_id,
                    body: RequestBody::Kv {
                        command: kv.command.to_owned(),
                        stale_read: kv.stale_read,
                    },
                },
                FrameRef::Other(f) => f,
            };
            (f, used)
        })
    });
    match (&owned, &borrowed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("decoders disagree: {owned:?} vs {borrowed:?}"),
    }
}

fn fix_crc(b: &mut [u8]) {
    if b.len() >= HEADER_BYTES {
        let crc = crc32c::crc32c(&b[HEADER_BYTES..]);
        b[8..12].copy_from_slice(&crc.to_be_bytes());
    }
}

#[test]
fn wire_decoder_never_panics_on_random_or_mutated_bytes() {
    let mut rng = Rng(7);
    let base = samples();
    for _ in 0..5000 {
        let len = (rng.next() % 200) as usize;
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        decode_both(&junk);
    }
    for _ in 0..20_000 {
        let mut b = base[(rng.next() % base.len() as u64) as usize].clone();
        match rng.next() % 4 {
            0 => {
                let i = (rng.next() as usize) % b.len();
                b[i] ^= 1 << (rng.next() % 8);
            }
            1 => {
                let i = HEADER_BYTES + (rng.next() as usize) % (b.len() - HEADER_BYTES);
                b[i] = rng.next() as u8;
                fix_crc(&mut b);
            }
            2 => {
                let keep = HEADER_BYTES + (rng.next() as usize) % (b.len() - HEADER_BYTES);
                b.truncate(keep);
                let len = (keep - HEADER_BYTES) as u32;
                b[4..8].copy_from_slice(&len.to_be_bytes());
                fix_crc(&mut b);
            }
            _ => {
                let len = rng.next() as u32;
                b[4..8].copy_from_slice(&len.to_be_bytes());
            }
        }
        decode_both(&b);
    }
}

#[test]
fn wire_rejects_oversized_length_before_allocating() {
    let mut b = Vec::new();
    encode_frame(&Frame::HelloOk { node: NodeId(1) }, &mut b);
    b[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_frame(&b).is_err());
}

/// The load generator's borrowed encoder writes the same bytes as encoding
/// the equivalent owned frame, for every kind of op.
#[test]
fn wire_kv_request_from_borrowed_parts_matches_the_frame() {
    let ops = [
        Op::Put {
            key: b"key-7".to_vec(),
            value: vec![b'x'; 100],
        },
        Op::Get {
            key: b"key-7".to_vec(),
        },
        Op::Delete { key: Vec::new() },
        Op::Cas {
            key: b"k".to_vec(),
            expected: None,
            new: b"v".to_vec(),
        },
        Op::Cas {
            key: b"k".to_vec(),
            expected: Some(b"old".to_vec()),
            new: Vec::new(),
        },
        Op::Append {
            data: vec![0, 1, 2],
        },
    ];
    for (i, op) in ops.iter().enumerate() {
        for stale_read in [false, true] {
            let frame = Frame::Request {
                request_id: 1000 + i as u64,
                body: RequestBody::Kv {
                    command: Command {
                        client_id: u64::MAX - i as u64,
                        seq: 42,
                        op: op.clone(),
                    },
                    stale_read,
                },
            };
            let mut owned = Vec::new();
            encode_frame(&frame, &mut owned);
            let mut borrowed = vec![9u8; 3]; // appends after what is there
            let Frame::Request {
                body: RequestBody::Kv { command, .. },
                ..
            } = &frame
            else {
                unreachable!()
            };
            raftkit::wire::frame::encode_kv_request(
                1000 + i as u64,
                command.as_ref(),
                stale_read,
                &mut borrowed,
            );
            assert_eq!(&borrowed[3..], &owned[..], "{op:?}");
            let (decoded, used) = decode_frame(&borrowed[3..]).unwrap().unwrap();
            assert_eq!(used, owned.len());
            assert!(matches!(decoded, Frame::Request { .. }));
        }
    }
}

/// Encodes `frame` and decodes it whole, both ways.
fn round_trip(frame: &Frame) -> Vec<u8> {
    let mut b = Vec::new();
    encode_frame(frame, &mut b);
    let (decoded, used) = decode_frame(&b).expect("valid").expect("whole");
    assert_eq!(decoded, *frame);
    assert_eq!(used, b.len());
    match decode_frame_ref(&b).expect("valid").expect("whole") {
        (FrameRef::Other(f), used) => {
            assert_eq!(f, *frame);
            assert_eq!(used, b.len());
        }
        (FrameRef::Kv(kv), _) => panic!("not a KV request: {kv:?}"),
    }
    b
}

#[test]
fn wire_install_snapshot_round_trips() {
    for data in [
        &[][..],
        &[0][..],
        &b"state machine bytes"[..],
        &[7u8; 70_000][..],
    ] {
        for read_round in [0, 1, u64::MAX] {
            round_trip(&install_snapshot(data, read_round));
        }
    }
}

/// The bytes of docs/PROTOCOL.md: after from, to and term, message type 5,
/// index, term, read_round, the membership as `bytes`, then the data as
/// `bytes`.
#[test]
fn wire_install_snapshot_layout_is_as_documented() {
    let b = round_trip(&install_snapshot(b"xyz", 6));
    let body = &b[HEADER_BYTES..];
    let mut expected = Vec::new();
    for v in [1u64, 3, 5] {
        expected.extend_from_slice(&v.to_be_bytes());
    }
    expected.push(5);
    for v in [1000u64, 4, 6] {
        expected.extend_from_slice(&v.to_be_bytes());
    }
    // An empty membership: version 1, three empty id lists, no addresses,
    // no extension.
    let membership = [&[1u8][..], &[0; 16], &[0]].concat();
    expected.extend_from_slice(&(membership.len() as u32).to_be_bytes());
    expected.extend_from_slice(&membership);
    expected.extend_from_slice(&3u32.to_be_bytes());
    expected.extend_from_slice(b"xyz");
    assert_eq!(body, &expected[..]);
    assert_eq!(b[3], 10, "a Raft frame");
    // The largest snapshot that can be sent, with the largest membership,
    // fills the fragments' bound exactly.
    assert_eq!(
        body.len() - 3 - membership.len() + MEMBERSHIP_BYTES_MAX + SNAPSHOT_DATA_BYTES_MAX,
        FRAGMENTED_BYTES_MAX
    );
}

fn snapshot_message(data: &[u8]) -> raftkit::raft::Message {
    match install_snapshot(data, 2) {
        Frame::Raft(m) => m,
        _ => unreachable!(),
    }
}

/// Decodes `buf` as a run of Fragment frames and joins their payloads;
/// checks that only the last is flagged and none is over the maximum.
fn join_fragments(mut buf: &[u8]) -> (Vec<u8>, usize) {
    let mut joined = Vec::new();
    let mut n = 0;
    while !buf.is_empty() {
        let (frame, used) = decode_frame(buf).expect("valid").expect("whole");
        assert_eq!(buf[3], 11, "a Fragment frame");
        let Frame::Fragment { last, data } = frame else {
            panic!("not a fragment: {frame:?}");
        };
        assert!(data.len() <= FRAGMENT_BYTES_MAX);
        buf = &buf[used..];
        assert_eq!(last, buf.is_empty(), "only the last fragment is flagged");
        joined.extend_from_slice(&data);
        n += 1;
    }
    (joined, n)
}

/// An InstallSnapshot in fragments: as many as the message needs, each at
/// most 1 MiB of payload, which joined are the body of the Raft frame that
/// would carry it whole.
#[test]
fn wire_install_snapshot_in_fragments_round_trips() {
    for (len, fragments) in [
        (0, 1),
        (100, 1),
        (FRAGMENT_BYTES_MAX - 75, 1),
        (FRAGMENT_BYTES_MAX - 74, 2),
        (5 * FRAGMENT_BYTES_MAX / 2, 3),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let m = snapshot_message(&data);
        let mut out = Vec::new();
        encode_raft_fragments(&m, &mut out);
        let (joined, n) = join_fragments(&out);
        assert_eq!(n, fragments, "fragments for {len} bytes");
        let mut whole = Vec::new();
        encode_frame(&Frame::Raft(m.clone()), &mut whole);
        assert_eq!(joined, whole[HEADER_BYTES..], "the Raft frame's body");
        assert_eq!(decode_raft_fragments(&joined).expect("decodes"), m);
    }
}

/// The bytes of docs/PROTOCOL.md: a Fragment frame (type 11) is a bool
/// `last`, then the payload.
#[test]
fn wire_fragment_layout_is_as_documented() {
    let b = round_trip(&Frame::Fragment {
        last: true,
        data: b"abc".to_vec(),
    });
    assert_eq!(b[3], 11);
    assert_eq!(&b[HEADER_BYTES..], &[1, b'a', b'b', b'c']);
    let b = round_trip(&Frame::Fragment {
        last: false,
        data: Vec::new(),
    });
    assert_eq!(&b[HEADER_BYTES..], &[0]);
    // A flag other than 0 or 1 is an error.
    let mut bad = b.clone();
    bad[HEADER_BYTES] = 2;
    fix_crc(&mut bad);
    assert!(matches!(
        decode_frame(&bad),
        Err(FrameError::Body { frame_type: 11, .. })
    ));
}

/// Joined fragments that are cut short, or carry bytes after the message,
/// are an error, never a panic.
#[test]
fn wire_bad_joined_fragments_are_an_error() {
    let mut whole = Vec::new();
    encode_frame(&install_snapshot(b"0123456789", 1), &mut whole);
    let body = &whole[HEADER_BYTES..];
    for keep in 0..body.len() {
        assert!(
            decode_raft_fragments(&body[..keep]).is_err(),
            "cut to {keep}"
        );
    }
    let mut longer = body.to_vec();
    longer.push(0);
    assert!(decode_raft_fragments(&longer).is_err());
    assert!(decode_raft_fragments(body).is_ok());
}

/// A body cut anywhere (length and CRC made to match, so the body parser
/// runs) is a decode error, never a panic or a short read; so is a data
/// length that claims more bytes than the frame holds.
#[test]
fn wire_truncated_install_snapshot_is_an_error() {
    let whole = round_trip(&install_snapshot(&[1, 2, 3, 4, 5, 6, 7, 8], 9));
    for keep in HEADER_BYTES..whole.len() {
        let mut b = whole[..keep].to_vec();
        b[4..8].copy_from_slice(&((keep - HEADER_BYTES) as u32).to_be_bytes());
        fix_crc(&mut b);
        match decode_frame(&b) {
            Err(FrameError::Body {
                frame_type: 10,
                error: DecodeError::Truncated { .. },
            }) => {}
            other => panic!("body cut to {} bytes: {other:?}", keep - HEADER_BYTES),
        }
        decode_both(&b);
    }
    // The data length field (last 4 bytes before the 8 data bytes) claims
    // far more than is there.
    let mut b = whole.clone();
    let at = b.len() - 8 - 4;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        decode_frame(&b),
        Err(FrameError::Body {
            error: DecodeError::Truncated {
                field: "snapshot.data",
                ..
            },
            ..
        })
    ));
    // One byte more than the data length says: trailing bytes.
    let mut b = whole;
    b.push(0);
    let len = (b.len() - HEADER_BYTES) as u32;
    b[4..8].copy_from_slice(&len.to_be_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        decode_frame(&b),
        Err(FrameError::Body {
            error: DecodeError::Trailing { bytes: 1 },
            ..
        })
    ));
}

/// A leader's status shows a follower being sent a snapshot as peer state 3.
#[test]
fn wire_status_with_a_peer_in_snapshot_state_round_trips() {
    let peer = |id, state| PeerStatus {
        id: NodeId(id),
        match_index: LogIndex(10),
        next_index: LogIndex(11),
        state,
        inflight: 0,
    };
    let frame = Frame::Response {
        request_id: 3,
        body: ResponseBody::Status(Box::new(NodeStatus {
            status: Status {
                id: NodeId(1),
                role: Role::Leader,
                current_term: Term(2),
                voted_for: Some(NodeId(1)),
                leader: Some(NodeId(1)),
                commit_index: LogIndex(10),
                last_applied: LogIndex(10),
                first_index: LogIndex(5),
                last_index: LogIndex(12),
                peers: vec![
                    peer(2, ProgressState::Snapshot),
                    peer(3, ProgressState::Replicate),
                    peer(4, ProgressState::Probe),
                ],
                membership: raftkit::raft::Membership {
                    voters: [1, 2, 3].map(NodeId).into(),
                    learners: [4].map(NodeId).into(),
                    ..Default::default()
                },
                membership_index: LogIndex(7),
                membership_changing: false,
                transferring_to: Some(NodeId(2)),
            },
            addr: "127.0.0.1:7001".into(),
            fault: FaultSpec::default(),
            uptime_ms: 1234,
        })),
    };
    let b = round_trip(&frame);
    // The first peer's state byte: after the fixed status fields (request
    // id, response type, id, role, term, two opt-u64 with values, four
    // indexes, peer count) and the peer's id, match and next index.
    let at = HEADER_BYTES + 8 + 1 + 8 + 1 + 8 + 9 + 9 + 8 * 4 + 4 + 8 * 3;
    assert_eq!(b[at], 3);
}
