//! Connections: accepting, nonblocking reads into a per-connection buffer
//! (decoded in place, frame by frame), and buffered writes flushed once per
//! loop iteration, with WRITABLE interest registered only while output is
//! queued.

use std::io;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::conn::{FramedConn, ReadEnd};
use crate::raft::NodeId;
use crate::tls::Role;
use crate::wire::{decode_frame_ref, Frame, FrameRef};

use super::transfer::IncomingSnapshot;
use super::Node;

/// Client connections past their Hello at once; a further client's Hello
/// is refused (TooBusy). Peers never count against it.
pub const CLIENT_CONNECTIONS_MAX: usize = 1024;
/// Connections accepted and not yet past their Hello (TLS handshake
/// included) at once. A new one past it pushes out the oldest: a flood of
/// idle or slow connections costs at most this many sockets and buffers,
/// and a real client or peer, which says Hello within milliseconds, still
/// gets in.
pub const PENDING_CONNECTIONS_MAX: usize = 256;
/// How long a connection may take from accept to its Hello (TLS handshake
/// included) before it is closed.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes a connection may send before its Hello is complete: a Hello is a
/// few dozen bytes, so a "frame" of megabytes is refused before it is read.
pub const PENDING_READ_BYTES_MAX: usize = 4 << 10;
/// Peer links (both directions) a node may hold besides the limits above.
const PEER_CONNECTIONS_RESERVED: usize = 256;
/// Connections (clients, peers and pending) open at once; more are
/// refused at accept. Never reached while the limits above hold.
pub const CONNECTIONS_MAX: usize =
    CLIENT_CONNECTIONS_MAX + PENDING_CONNECTIONS_MAX + PEER_CONNECTIONS_RESERVED;
/// Bytes of answers queued for one client; past it, the client (which is
/// not reading them) is disconnected. One answer is always queued whole.
pub const CLIENT_WRITE_BYTES_MAX: usize = 16 << 20;
/// Bytes read from one connection per readiness event at most; the rest
/// is read in the next loop iteration, so one busy connection cannot hold
/// the loop (and every heartbeat) for long.
pub const READ_BYTES_PER_EVENT_MAX: usize = 4 << 20;
/// One `read` call's buffer.
pub(super) const READ_CHUNK_BYTES: usize = 64 << 10;
/// Capacity a connection's write buffer keeps once flushed; a larger one
/// (after a snapshot) is shrunk back to it.
const WRITE_BUF_KEEP_BYTES: usize = 4 << 20;

const _: () = assert!(READ_BYTES_PER_EVENT_MAX >= READ_CHUNK_BYTES);
const _: () = assert!(PENDING_READ_BYTES_MAX <= READ_BYTES_PER_EVENT_MAX);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnKind {
    /// Accepted; waiting for its Hello.
    Pending,
    /// A peer's link to us: it sends Raft messages here.
    InPeer(NodeId),
    /// Our link to a peer: we send Raft messages on it.
    OutPeer(NodeId),
    Client,
}

pub(super) struct Conn {
    /// The socket and its read and write buffers.
    pub(super) io: FramedConn,
    pub(super) kind: ConnKind,
    /// An outbound connect not yet confirmed.
    pub(super) connecting: bool,
    /// Close once everything queued is flushed.
    pub(super) close_after_flush: bool,
    /// In `Node::dirty`, to be flushed at the end of the loop iteration.
    pub(super) dirty: bool,
    /// The fragments of a Raft message received so far (an inbound peer
    /// link; empty between messages).
    pub(super) fragments: Vec<u8>,
    /// A snapshot being streamed to us (an inbound peer link).
    pub(super) incoming: Option<Box<IncomingSnapshot>>,
    /// What a client connection may ask: from its certificate with TLS,
    /// admin without (anyone who reaches the port, as before TLS).
    pub(super) role: Role,
}

impl Conn {
    pub(super) fn is_client(&self) -> bool {
        self.kind == ConnKind::Client
    }

    /// Bytes queued and not yet written.
    pub(super) fn has_output(&self) -> bool {
        self.io.queued_bytes() > 0
    }
}

impl Node {
    pub(super) fn add_conn(
        &mut self,
        mut stream: TcpStream,
        kind: ConnKind,
        connecting: bool,
    ) -> io::Result<Token> {
        let token = Token(self.next_token);
        self.next_token += 1;
        let interest = if connecting {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .register(&mut stream, token, interest)?;
        let _ = stream.set_nodelay(true);
        self.conns.insert(
            token,
            Conn {
                io: FramedConn::new(stream, connecting),
                kind,
                connecting,
                close_after_flush: false,
                dirty: false,
                fragments: Vec::new(),
                incoming: None,
                role: Role::Admin,
            },
        );
        Ok(token)
    }

    /// A connection left Pending (its Hello was accepted).
    pub(super) fn left_pending(&mut self) {
        self.pending_open = self.pending_open.saturating_sub(1);
    }

    /// Closes the oldest pending connections until one more fits under
    /// `PENDING_CONNECTIONS_MAX`, and those past `HANDSHAKE_DEADLINE`.
    pub(super) fn expire_pending(&mut self, now: Instant, room_for_one: bool) {
        let limit = if room_for_one {
            PENDING_CONNECTIONS_MAX - 1
        } else {
            PENDING_CONNECTIONS_MAX
        };
        while let Some(&(since, token)) = self.pending.front() {
            let still_pending = self
                .conns
                .get(&token)
                .is_some_and(|c| c.kind == ConnKind::Pending);
            if !still_pending {
                self.pending.pop_front();
                continue;
            }
            let why = if now.duration_since(since) >= HANDSHAKE_DEADLINE {
                "no Hello within the handshake deadline"
            } else if self.pending_open > limit {
                "pushed out by newer connections (too many before Hello)"
            } else {
                return;
            };
            self.pending.pop_front();
            self.pending_dropped += 1;
            self.close(token, why);
        }
    }

    pub(super) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let now = Instant::now();
                    self.expire_pending(now, true);
                    if self.conns.len() >= CONNECTIONS_MAX {
                        warn!(
                            "{}: refusing connection from {peer}: {CONNECTIONS_MAX} open",
                            self.id
                        );
                        continue;
                    }
                    debug!("{}: accepted {peer}", self.id);
                    match self.add_conn(stream, ConnKind::Pending, false) {
                        Ok(token) => {
                            self.pending_open += 1;
                            self.pending.push_back((now, token));
                            if let Some(tls) = &self.tls {
                                self.start_server_tls(token, tls.server.clone());
                            }
                        }
                        Err(e) => {
                            warn!("{}: cannot register connection from {peer}: {e}", self.id)
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("{}: accept failed: {e}", self.id);
                    return;
                }
            }
        }
    }

    /// Puts a TLS server session on a just accepted connection.
    fn start_server_tls(&mut self, token: Token, config: std::sync::Arc<rustls::ServerConfig>) {
        let session = rustls::ServerConnection::new(config).map(rustls::Connection::Server);
        self.set_conn_tls(token, session, "");
    }

    /// Puts a new TLS session (server side or client side) on connection
    /// `token`, or closes it if the session could not be made; `to` names
    /// the peer for the log (empty for an accepted connection). Whether
    /// the connection stays.
    pub(super) fn set_conn_tls(
        &mut self,
        token: Token,
        session: Result<rustls::Connection, rustls::Error>,
        to: &str,
    ) -> bool {
        match session {
            Ok(tls) => {
                if let Some(c) = self.conns.get_mut(&token) {
                    c.io.set_tls(tls);
                }
                true
            }
            Err(e) => {
                warn!("{}: cannot start TLS{to}: {e}", self.id);
                self.close(token, "cannot start TLS");
                false
            }
        }
    }

    pub(super) fn close(&mut self, token: Token, why: &str) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.io.stream);
        match conn.kind {
            ConnKind::Pending => self.left_pending(),
            ConnKind::Client => self.clients_open = self.clients_open.saturating_sub(1),
            _ => {}
        }
        match conn.kind {
            ConnKind::OutPeer(p) => {
                debug!("{}: link to {p} closed: {why}", self.id);
                if let Some(link) = self.peers.get_mut(&p) {
                    link.down(std::time::Instant::now());
                }
            }
            ConnKind::InPeer(p) => debug!("{}: link from {p} closed: {why}", self.id),
            _ => debug!("{}: connection closed: {why}", self.id),
        }
    }

    pub(super) fn conn_event(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        read_closed: bool,
    ) {
        if writable {
            if let Some(c) = self.conns.get_mut(&token) {
                if c.connecting {
                    // A nonblocking connect is confirmed before use.
                    match (c.io.stream.take_error(), c.io.stream.peer_addr()) {
                        (Ok(None), Ok(_)) => {
                            c.connecting = false;
                            if let ConnKind::OutPeer(p) = c.kind {
                                info!("{}: connected to {p}", self.id);
                                if let Some(l) = self.peers.get_mut(&p) {
                                    l.connected();
                                }
                            }
                        }
                        (Ok(Some(e)), _) | (Err(e), _) | (_, Err(e)) => {
                            if e.kind() == io::ErrorKind::NotConnected {
                                return; // spurious: not yet
                            }
                            self.close(token, &format!("connect failed: {e}"));
                            return;
                        }
                    }
                }
            }
            self.flush(token);
        }
        if readable {
            self.read(token, read_closed);
        }
    }

    /// Reads what the socket has; `read_closed`: the peer has shut down its
    /// side, so read on to the end (a short read is not the end then).
    pub(super) fn read(&mut self, token: Token, read_closed: bool) {
        let closed = {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            let budget = if c.kind == ConnKind::Pending {
                PENDING_READ_BYTES_MAX
            } else {
                READ_BYTES_PER_EVENT_MAX
            };
            let end = c.io.fill(&mut self.read_chunk, read_closed, budget);
            // A handshake message or an alert to answer with.
            let answer = c.io.is_tls() && c.io.wants_flush();
            if answer {
                self.mark_dirty(token);
            }
            match end {
                ReadEnd::Tls(why) => {
                    let peer = self.conn_name(token);
                    warn!(
                        "{}: TLS refused {peer}: {why}; closing that connection",
                        self.id
                    );
                    self.flush(token);
                    self.close(token, &why);
                    return;
                }
                ReadEnd::Drained => None,
                ReadEnd::Budget => {
                    // Fair to the other connections: read the rest next
                    // iteration.
                    self.reread.push(token);
                    None
                }
                ReadEnd::Closed(why) => Some(why),
            }
        };
        // Decode every whole frame, in place: the buffer is taken out of the
        // connection meanwhile and put back after.
        let Some(mut buf) = self
            .conns
            .get_mut(&token)
            .map(|c| std::mem::take(&mut c.io.read_buf))
        else {
            return;
        };
        let mut pos = 0;
        loop {
            let handled = match decode_frame_ref(&buf[pos..]) {
                Ok(None) => break,
                Ok(Some((frame, used))) => {
                    pos += used;
                    match frame {
                        FrameRef::Kv(kv) => self.handle_kv_frame(token, kv),
                        FrameRef::Other(frame) => self.handle_frame(token, frame),
                    }
                }
                Err(e) => {
                    if let Some(c) = self.conns.get(&token) {
                        let peer =
                            c.io.stream
                                .peer_addr()
                                .map(|a| a.to_string())
                                .unwrap_or_default();
                        warn!(
                            "{}: bad frame from {peer} ({:?}): {e}; closing that connection",
                            self.id, c.kind
                        );
                    }
                    self.close(token, &e.to_string());
                    return;
                }
            };
            if let Err(why) = handled {
                warn!("{}: closing connection: {why}", self.id);
                self.close(token, &why);
                return;
            }
            if !self.conns.contains_key(&token) {
                return; // closed while handling (a client not reading)
            }
        }
        buf.drain(..pos);
        let pending = self
            .conns
            .get(&token)
            .is_some_and(|c| c.kind == ConnKind::Pending);
        if pending && buf.len() > PENDING_READ_BYTES_MAX {
            {
                let peer = self.conn_name(token);
                warn!(
                    "{}: closing {peer}: more than {PENDING_READ_BYTES_MAX} bytes before its Hello",
                    self.id
                );
                self.close(token, "too many bytes before Hello");
                return;
            }
        }
        if let Some(c) = self.conns.get_mut(&token) {
            c.io.read_buf = buf;
        }
        if let Some(why) = closed {
            self.close(token, &why);
        }
    }

    /// The connection's address and kind, for a log line.
    pub(super) fn conn_name(&self, token: Token) -> String {
        match self.conns.get(&token) {
            Some(c) => {
                let addr =
                    c.io.stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| "?".into());
                let kind = match c.kind {
                    ConnKind::Pending => "before its Hello".to_string(),
                    ConnKind::InPeer(p) => format!("link from {p}"),
                    ConnKind::OutPeer(p) => format!("link to {p}"),
                    ConnKind::Client => format!("{} client", c.role),
                };
                format!("{addr} ({kind})")
            }
            None => "a closed connection".into(),
        }
    }

    pub(super) fn flush(&mut self, token: Token) {
        let mut close: Option<String> = None;
        let mut sent_to_peer = None;
        {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            c.dirty = false;
            if c.connecting {
                return;
            }
            let queued = c.io.queued_bytes();
            match c.io.flush(WRITE_BUF_KEEP_BYTES) {
                Ok(true) if c.close_after_flush => close = Some("done".into()),
                Ok(_) => c.io.update_interest(self.poll.registry(), token),
                Err(why) => close = Some(why),
            }
            if let ConnKind::OutPeer(peer) = c.kind {
                sent_to_peer = Some((peer, queued.saturating_sub(c.io.queued_bytes())));
            }
        }
        if let Some((peer, bytes)) = sent_to_peer {
            self.count_sent_bytes(peer, bytes);
        }
        if let Some(why) = close {
            self.close(token, &why);
        }
    }

    pub(super) fn send_frame(&mut self, token: Token, frame: &Frame) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        // A client that lets answers pile up is closed; one answer is
        // always queued whole, however large.
        let queued = c.io.queued_bytes();
        if c.kind == ConnKind::Client && queued > CLIENT_WRITE_BYTES_MAX {
            warn!(
                "{}: closing a client connection: {queued} bytes of answers unread, over {CLIENT_WRITE_BYTES_MAX}",
                self.id
            );
            self.close(token, "client is not reading its responses");
            return;
        }
        c.io.queue(frame);
        self.mark_dirty(token);
    }

    /// Queues a flush for the end of this loop iteration: everything a
    /// connection gets in one iteration goes out in one `write`.
    pub(super) fn mark_dirty(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(&token) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(token);
            }
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for token in dirty.drain(..) {
            self.flush(token);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }
}
