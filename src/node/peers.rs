//! Peer links and the handshake. Each node dials every peer and sends
//! its Raft messages on its own outbound link, reconnecting with
//! exponential backoff; it receives on the links its peers dial. A
//! connection says who it is with its first frame (Hello), and from then on
//! only the frames of its kind are accepted: a misplaced frame closes it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::TcpStream;
use mio::Token;

use crate::raft::{Message, MessageBody, NodeId};
use crate::tls::{self, Role};
use crate::wire::{decode_raft_fragments, ErrorCode, Frame, Sender, FRAGMENTED_BYTES_MAX};

use super::driver::ClientRef;
use super::net::ConnKind;
use super::transfer::OutgoingSnapshot;
use super::Node;

/// Bytes queued for one peer; past it, messages to that peer are dropped
/// (Raft retransmits) rather than growing memory without bound.
pub const PEER_WRITE_BYTES_MAX: usize = 64 << 20;
/// Reconnect backoff bounds for peer links.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// This node's outbound link to one peer.
pub(super) struct PeerLink {
    addr: SocketAddr,
    /// The connection, while there is one.
    pub(super) token: Option<Token>,
    next_attempt: Instant,
    backoff: Duration,
    /// The snapshot being streamed on the link, if one is.
    pub(super) transfer: Option<OutgoingSnapshot>,
    /// The last snapshot streamed whole on this connection, and when:
    /// asked for again soon after, it is not sent again (see
    /// `Node::stream_snapshot`).
    pub(super) streamed: Option<(super::transfer::TransferKey, Instant)>,
}

impl PeerLink {
    pub(super) fn new(addr: SocketAddr, now: Instant) -> PeerLink {
        PeerLink {
            addr,
            token: None,
            next_attempt: now,
            backoff: BACKOFF_MIN,
            transfer: None,
            streamed: None,
        }
    }

    /// The link failed or closed: try again after the backoff, which
    /// doubles up to `BACKOFF_MAX`.
    pub(super) fn down(&mut self, now: Instant) {
        self.token = None;
        self.transfer = None;
        self.streamed = None;
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// The connect went through: the next failure starts from the minimum.
    pub(super) fn connected(&mut self) {
        self.backoff = BACKOFF_MIN;
    }
}

impl ClientRef {
    pub(super) fn new(token: Token, request_id: u64) -> ClientRef {
        ClientRef {
            conn: token.0 as u64,
            request_id,
        }
    }
}

impl Node {
    pub(super) fn maintain_peer_links(&mut self, now: Instant) {
        let due: Vec<(NodeId, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(_, l)| l.token.is_none() && now >= l.next_attempt)
            .map(|(&id, l)| (id, l.addr))
            .collect();
        for (peer, addr) in due {
            match TcpStream::connect(addr) {
                Ok(stream) => match self.add_conn(stream, ConnKind::OutPeer(peer), true) {
                    Ok(token) => {
                        if let Some(t) = &self.tls {
                            let session =
                                tls::connect_to(&t.client, peer).map(rustls::Connection::Client);
                            if !self.set_conn_tls(token, session, &format!(" to {peer}")) {
                                continue;
                            }
                        }
                        let hello = Frame::Hello {
                            cluster: self.config.cluster.name.clone(),
                            from: Sender::Peer(self.id),
                        };
                        if let Some(c) = self.conns.get_mut(&token) {
                            c.io.queue(&hello);
                        }
                        if let Some(l) = self.peers.get_mut(&peer) {
                            l.token = Some(token);
                        }
                    }
                    Err(e) => warn!("{}: cannot register link to {peer}: {e}", self.id),
                },
                Err(e) => {
                    debug!("{}: connect to {peer} at {addr} failed: {e}", self.id);
                    if let Some(l) = self.peers.get_mut(&peer) {
                        l.down(now);
                    }
                }
            }
        }
    }

    /// The membership changed: link to every member (at the address the
    /// membership records, else the one in cluster.toml), and drop links
    /// to nodes that are neither members nor in cluster.toml.
    pub(super) fn sync_peer_links(&mut self, now: Instant) {
        let Some(m) = self.driver.new_membership.take() else {
            return;
        };
        let members = m.members();
        for &id in &members {
            if id == self.id || self.peers.contains_key(&id) {
                continue;
            }
            let addr = m
                .addrs
                .get(&id)
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .or_else(|| self.config.node(id).map(|n| n.addr));
            match addr {
                Some(addr) => {
                    info!("{}: {id} is a member; linking to it at {addr}", self.id);
                    self.peers.insert(id, PeerLink::new(addr, now));
                }
                None => warn!("{}: member {id} has no address we know", self.id),
            }
        }
        let gone: Vec<NodeId> = self
            .peers
            .keys()
            .copied()
            .filter(|id| !members.contains(id) && self.config.node(*id).is_none())
            .collect();
        for id in gone {
            info!("{}: {id} is no longer a member; dropping its link", self.id);
            if let Some(token) = self.peers.remove(&id).and_then(|l| l.token) {
                self.close(token, "no longer a member");
            }
        }
    }

    pub(super) fn handle_frame(&mut self, token: Token, frame: Frame) -> Result<(), String> {
        let kind = self.conns.get(&token).map(|c| c.kind).ok_or("gone")?;
        match (kind, frame) {
            (ConnKind::Pending, Frame::Hello { cluster, from }) => {
                if cluster != self.config.cluster.name {
                    self.reject(
                        token,
                        ErrorCode::WrongCluster,
                        format!(
                            "this is cluster {:?}, not {cluster:?}",
                            self.config.cluster.name
                        ),
                    );
                    return Ok(());
                }
                let new_kind = match from {
                    Sender::Client => ConnKind::Client,
                    Sender::Peer(p) if p != self.id && self.peers.contains_key(&p) => {
                        ConnKind::InPeer(p)
                    }
                    Sender::Peer(p) => {
                        self.reject(
                            token,
                            ErrorCode::UnknownPeer,
                            format!("{p} is not a peer of {} in this cluster", self.id),
                        );
                        return Ok(());
                    }
                };
                let role = match self.authorize_hello(token, new_kind) {
                    Ok(role) => role,
                    Err((code, reason)) => {
                        self.reject(token, code, reason);
                        return Ok(());
                    }
                };
                if let Some(c) = self.conns.get_mut(&token) {
                    c.kind = new_kind;
                    c.role = role;
                }
                self.left_pending();
                if new_kind == ConnKind::Client {
                    self.clients_open += 1;
                }
                if let ConnKind::InPeer(p) = new_kind {
                    info!("{}: {p} connected to us", self.id);
                }
                self.send_frame(token, &Frame::HelloOk { node: self.id });
                Ok(())
            }
            (ConnKind::Pending, f) => Err(misplaced(ConnKind::Pending, frame_name(&f))),
            (ConnKind::InPeer(p), Frame::Fragment { last, data }) => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return Ok(());
                };
                if c.fragments.len() + data.len() > FRAGMENTED_BYTES_MAX {
                    return Err(format!(
                        "{p} sent a message of more than {FRAGMENTED_BYTES_MAX} bytes in fragments"
                    ));
                }
                c.fragments.extend_from_slice(&data);
                if !last {
                    return Ok(());
                }
                let body = std::mem::take(&mut c.fragments);
                let m = decode_raft_fragments(&body)
                    .map_err(|e| format!("{p} sent a bad message in fragments: {e}"))?;
                drop(body);
                self.handle_frame(token, Frame::Raft(m))
            }
            (
                ConnKind::InPeer(p),
                Frame::SnapshotBegin {
                    transfer,
                    len,
                    message,
                },
            ) => self.snapshot_begins(token, p, transfer, len, message),
            (
                ConnKind::InPeer(p),
                Frame::SnapshotChunk {
                    transfer,
                    offset,
                    data,
                },
            ) => self.snapshot_chunk(token, p, transfer, offset, data),
            (ConnKind::OutPeer(p), Frame::SnapshotAck { transfer, received }) => {
                self.snapshot_acked(p, transfer, received);
                Ok(())
            }
            (ConnKind::InPeer(p), Frame::Raft(m)) => {
                if m.from != p || m.to != self.id {
                    return Err(format!("{p} sent a message addressed {}->{}", m.from, m.to));
                }
                if self.partitioned_from(p) {
                    return Ok(());
                }
                self.driver.step(m)
            }
            (ConnKind::OutPeer(_), Frame::HelloOk { .. }) => Ok(()),
            (ConnKind::OutPeer(p), Frame::HelloReject { code, reason }) => {
                error!("{}: {p} refused our link ({code:?}): {reason}", self.id);
                Err(format!("refused by {p}"))
            }
            (ConnKind::Client, Frame::Request { request_id, body }) => {
                self.handle_request(ClientRef::new(token, request_id), body);
                Ok(())
            }
            (k, f) => Err(misplaced(k, frame_name(&f))),
        }
    }

    /// Whether the connection's certificate allows the Hello it sent, and
    /// the role a client gets; without TLS, every Hello is allowed (admin).
    /// Also the client connection limit.
    fn authorize_hello(&self, token: Token, kind: ConnKind) -> Result<Role, (ErrorCode, String)> {
        if kind == ConnKind::Client && self.clients_open >= super::net::CLIENT_CONNECTIONS_MAX {
            return Err((
                ErrorCode::TooBusy,
                format!(
                    "{} client connections open, the most this node serves; retry later",
                    super::net::CLIENT_CONNECTIONS_MAX
                ),
            ));
        }
        if self.tls.is_none() {
            return Ok(Role::Admin);
        }
        let cert = self.conns.get(&token).and_then(|c| c.io.peer_cert());
        let Some(cert) = cert else {
            return Err((
                ErrorCode::Forbidden,
                "no client certificate (this node requires TLS with one)".into(),
            ));
        };
        match kind {
            ConnKind::InPeer(p) if tls::cert_names(cert, &tls::node_name(p)) => Ok(Role::Admin),
            ConnKind::InPeer(p) => Err((
                ErrorCode::Forbidden,
                format!(
                    "the certificate is not {p}'s (it does not name {}): a peer link must show its own node's certificate",
                    tls::node_name(p)
                ),
            )),
            _ => tls::client_role(cert).ok_or_else(|| {
                (
                    ErrorCode::Forbidden,
                    format!(
                        "the certificate is not a client's or an admin's (it names neither {} nor {})",
                        tls::CLIENT_NAME,
                        tls::ADMIN_NAME
                    ),
                )
            }),
        }
    }

    pub(super) fn reject(&mut self, token: Token, code: ErrorCode, reason: String) {
        warn!("{}: refusing connection: {reason}", self.id);
        self.send_frame(token, &Frame::HelloReject { code, reason });
        if let Some(c) = self.conns.get_mut(&token) {
            c.close_after_flush = true;
        }
        self.flush(token);
    }

    pub(super) fn transmit(&mut self, m: Message) {
        let Some(token) = self.peers.get(&m.to).and_then(|l| l.token) else {
            return; // link down: Raft retransmits
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.io.queued_bytes() > PEER_WRITE_BYTES_MAX {
            debug!(
                "{}: dropping {m}: {} bytes queued",
                self.id,
                c.io.queued_bytes()
            );
            return;
        }
        if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
            // Streamed from its file, in chunks (see `transfer`).
            self.stream_snapshot(token, m);
            return;
        }
        c.io.queue(&Frame::Raft(m));
        self.mark_dirty(token);
    }
}

pub(super) fn misplaced(kind: ConnKind, frame: &str) -> String {
    match kind {
        ConnKind::Pending => format!("expected Hello first, got {frame}"),
        k => format!("unexpected {frame} on a {k:?} connection"),
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::HelloOk { .. } => "HelloOk",
        Frame::HelloReject { .. } => "HelloReject",
        Frame::Raft(_) => "Raft",
        Frame::Fragment { .. } => "Fragment",
        Frame::SnapshotBegin { .. } => "SnapshotBegin",
        Frame::SnapshotChunk { .. } => "SnapshotChunk",
        Frame::SnapshotAck { .. } => "SnapshotAck",
        Frame::Request { .. } => "Request",
        Frame::Response { .. } => "Response",
    }
}
