//! `raft-node`: one Raft server. A single `mio` thread owns the sockets, the
//! consensus core, the log store and the key-value state machine.
//!
//! Each loop iteration: poll sockets (bounded by the next tick), feed frames
//! to the core or answer clients, tick the core when a tick is due, then run
//! `ready()`: send, persist, send what waited for the persist, apply, answer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Config;
use crate::kv::{ClientId, CommandRef, KvStore, OpRef, OpResult};
use crate::raft::{
    self, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, NotLeader, Raft, Role, Snapshot,
};
use crate::rng::Rng;
use crate::storage::{Durable, Job, LogStore, Recovered, StorageThread};
use crate::wire::{
    decode_frame_ref, decode_raft_fragments, encode_frame, encode_raft_fragments, ErrorCode,
    FaultSpec, Frame, FrameRef, KvRequestRef, NodeStatus, RequestBody, ResponseBody, Sender,
    FRAGMENTED_BYTES_MAX, SNAPSHOT_DATA_BYTES_MAX,
};

/// Connections (clients and peers) open at once; more are refused.
pub const CONNECTIONS_MAX: usize = 1024;
/// Bytes queued for one peer; past it, messages to that peer are dropped
/// (Raft retransmits) rather than growing memory without bound.
pub const PEER_WRITE_BYTES_MAX: usize = 64 << 20;
/// Bytes queued for one client; past it, the client is disconnected.
pub const CLIENT_WRITE_BYTES_MAX: usize = 16 << 20;
/// Client requests waiting for commit or read confirmation.
pub const PENDING_REQUESTS_MAX: usize = 100_000;
/// Entries returned by one log request.
pub const LOG_ENTRIES_MAX: u32 = 10_000;
/// Reconnect backoff bounds for peer links.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Capacity a connection's write buffer keeps once flushed; a larger one
/// (after a snapshot) is shrunk back to it.
const WRITE_BUF_KEEP_BYTES: usize = 4 << 20;

const LISTENER: Token = Token(0);

/// Why a node could not start or had to stop.
#[derive(Debug)]
pub enum NodeError {
    Bind { addr: SocketAddr, source: io::Error },
    Io(io::Error),
    Storage(String),
}

/// Wakes the event loop when the storage thread has made a batch durable.
const WAKER: Token = Token(usize::MAX - 1);

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            NodeError::Io(e) => write!(f, "I/O error: {e}"),
            NodeError::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<io::Error> for NodeError {
    fn from(e: io::Error) -> Self {
        NodeError::Io(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnKind {
    /// Accepted; waiting for its Hello.
    Pending,
    /// A peer's link to us: it sends Raft messages here.
    InPeer(NodeId),
    /// Our link to a peer: we send Raft messages on it.
    OutPeer(NodeId),
    Client,
}

struct Conn {
    stream: TcpStream,
    kind: ConnKind,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    /// Bytes of `write_buf` already written.
    write_pos: usize,
    /// An outbound connect not yet confirmed.
    connecting: bool,
    /// Close once `write_buf` is flushed.
    close_after_flush: bool,
    writable_registered: bool,
    /// In `Node::dirty`, to be flushed at the end of the loop iteration.
    dirty: bool,
    /// The fragments of a Raft message received so far (an inbound peer
    /// link; empty between messages).
    fragments: Vec<u8>,
}

struct PeerLink {
    addr: SocketAddr,
    token: Option<Token>,
    next_attempt: Instant,
    backoff: Duration,
}

/// A map keyed by numbers this node hands out itself (connection tokens,
/// read ids), looked up several times per request: they need no defence
/// against chosen keys, so one multiplication replaces SipHash.
type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 << 8 | b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits
        // that the table's control bytes use, and keeps the low bits apart.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A storage job's number, the last entry it writes, and the messages
/// that wait for it.
type AfterDurable = (u64, Option<(LogIndex, raft::Term)>, Vec<Message>);

struct Waiter {
    token: Token,
    request_id: u64,
}

struct ReadWaiter {
    token: Token,
    request_id: u64,
    key: Vec<u8>,
}

/// The running node.
pub struct Node {
    config: Config,
    id: NodeId,
    addr: SocketAddr,
    raft: Raft,
    storage: StorageThread,
    /// Jobs sent to the storage thread, and the highest one known durable.
    storage_seq: u64,
    storage_durable: u64,
    /// Per storage job: the last entry it writes, and the messages that
    /// wait for it (acknowledgements, votes).
    after_durable: VecDeque<AfterDurable>,
    kv: KvStore,
    poll: Poll,
    listener: TcpListener,
    conns: IdMap<Token, Conn>,
    next_token: usize,
    peers: BTreeMap<NodeId, PeerLink>,
    /// Writes proposed and waiting to be applied, by (client, seq).
    waiting_writes: HashMap<(ClientId, u64), Waiter>,
    /// ReadIndex requests sent to the core, by read id.
    waiting_reads: IdMap<u64, ReadWaiter>,
    /// Reads confirmed by a quorum, waiting for `last_applied` to reach them.
    confirmed_reads: Vec<(LogIndex, ReadWaiter)>,
    next_read_id: u64,
    /// Where the last snapshot was taken, or skipped as too large to send.
    snapshot_tried: LogIndex,
    /// The state of the last snapshot a peer sent, decoded when it arrived.
    decoded_snapshot: Option<(LogIndex, raft::Term, KvStore)>,
    /// Connections with bytes to send, flushed once per loop iteration.
    dirty: Vec<Token>,
    /// Reused for every socket read.
    read_chunk: Vec<u8>,
    /// Reused to encode a proposed command.
    entry_buf: Vec<u8>,
    fault: FaultSpec,
    /// Messages held back by a delay fault: (due, seq), and the messages
    /// by seq.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_msgs: HashMap<u64, Message>,
    delayed_seq: u64,
    rng: Rng,
    started: Instant,
    stop: Arc<AtomicBool>,
}

impl Node {
    /// Binds the listener and restarts the core from `store`.
    pub fn new(
        config: Config,
        id: NodeId,
        recovered: Recovered,
        store: Box<dyn LogStore>,
        stop: Arc<AtomicBool>,
    ) -> Result<Node, NodeError> {
        let me = config
            .require_node(id)
            .map_err(|e| NodeError::Storage(e.to_string()))?
            .clone();
        let Recovered {
            hard_state,
            entries,
            snapshot,
            ..
        } = recovered;
        let kv = match &snapshot {
            Some(snap) => kv_of_snapshot(snap).map_err(|e| {
                NodeError::Storage(format!("{}: {e}", me.data_dir.join("snapshot").display()))
            })?,
            None => KvStore::new(),
        };
        let (emin, emax) = config.election_timeout_ticks();
        let mut rc = raft::Config::new(id, config.ids());
        rc.election_timeout_ticks_min = emin;
        rc.election_timeout_ticks_max = emax;
        rc.heartbeat_interval_ticks = config.heartbeat_interval_ticks().min(emin - 1).max(1);
        rc.append_bytes_max = config.cluster.append_bytes_max;
        rc.inflight_msgs_max = config.cluster.inflight_msgs_max;
        rc.pre_vote = config.cluster.pre_vote;
        rc.check_quorum = config.cluster.check_quorum;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (std::process::id() as u64) << 32
            ^ id.0;
        rc.seed = seed;
        info!(
            "{id}: starting with term {} vote {:?}, {} and {} log entries",
            hard_state.current_term,
            hard_state.voted_for.map(|v| v.to_string()),
            snapshot
                .as_ref()
                .map_or("no snapshot".to_string(), |s| format!(
                    "a snapshot at {}/{} ({} bytes)",
                    s.index,
                    s.term,
                    s.data.len()
                )),
            entries.len()
        );
        let raft = Raft::restore(rc, hard_state, snapshot, entries);
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(me.addr).map_err(|source| NodeError::Bind {
            addr: me.addr,
            source,
        })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let storage = StorageThread::spawn(
            store,
            Some(Box::new(move || {
                let _ = waker.wake();
            })),
        )?;
        let now = Instant::now();
        let peers = config
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| {
                (
                    n.id,
                    PeerLink {
                        addr: n.addr,
                        token: None,
                        next_attempt: now,
                        backoff: BACKOFF_MIN,
                    },
                )
            })
            .collect();
        Ok(Node {
            id,
            addr: me.addr,
            raft,
            storage,
            storage_seq: 0,
            storage_durable: 0,
            after_durable: VecDeque::new(),
            kv,
            poll,
            listener,
            conns: IdMap::default(),
            next_token: 1,
            peers,
            waiting_writes: HashMap::new(),
            waiting_reads: IdMap::default(),
            confirmed_reads: Vec::new(),
            next_read_id: 1,
            snapshot_tried: LogIndex(0),
            decoded_snapshot: None,
            dirty: Vec::new(),
            read_chunk: vec![0; READ_CHUNK_BYTES],
            entry_buf: Vec::new(),
            fault: FaultSpec::default(),
            delayed: BinaryHeap::new(),
            delayed_msgs: HashMap::new(),
            delayed_seq: 0,
            rng: Rng::new(seed),
            started: now,
            stop,
            config,
        })
    }

    /// Runs until `stop` is set (SIGINT/SIGTERM/SIGHUP) or storage fails.
    pub fn run(&mut self) -> Result<(), NodeError> {
        info!(
            "{}: listening on {} (cluster {:?})",
            self.id, self.addr, self.config.cluster.name
        );
        let tick = Duration::from_millis(self.config.cluster.tick_ms);
        let mut next_tick = Instant::now() + tick;
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut timeout = next_tick.saturating_duration_since(now);
            if let Some(Reverse((due, _))) = self.delayed.peek() {
                timeout = timeout.min(due.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.storage_done()?,
                    t => {
                        self.conn_event(t, ev.is_readable(), ev.is_writable(), ev.is_read_closed())
                    }
                }
            }
            let now = Instant::now();
            let mut ticks = 0;
            while now >= next_tick && ticks < 5 {
                self.raft.tick();
                next_tick += tick;
                ticks += 1;
            }
            if now >= next_tick {
                next_tick = now + tick;
            }
            self.release_delayed(now);
            self.maintain_peer_links(now);
            self.process_ready()?;
            self.flush_dirty();
        }
        let st = self.storage.stats();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        info!(
            "{}: stopping; wrote {} entries ({} bytes) in {} jobs under {} syncs",
            self.id,
            get(&st.entries),
            get(&st.bytes),
            get(&st.jobs),
            get(&st.syncs)
        );
        Ok(())
    }

    // ---- connections ------------------------------------------------------

    fn add_conn(
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
                stream,
                kind,
                read_buf: Vec::with_capacity(READ_CHUNK_BYTES),
                write_buf: Vec::new(),
                write_pos: 0,
                connecting,
                close_after_flush: false,
                writable_registered: connecting,
                dirty: false,
                fragments: Vec::new(),
            },
        );
        Ok(token)
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.conns.len() >= CONNECTIONS_MAX {
                        warn!(
                            "{}: refusing connection from {peer}: {CONNECTIONS_MAX} open",
                            self.id
                        );
                        continue;
                    }
                    debug!("{}: accepted {peer}", self.id);
                    if let Err(e) = self.add_conn(stream, ConnKind::Pending, false) {
                        warn!("{}: cannot register connection from {peer}: {e}", self.id);
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

    fn close(&mut self, token: Token, why: &str) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        match conn.kind {
            ConnKind::OutPeer(p) => {
                debug!("{}: link to {p} closed: {why}", self.id);
                if let Some(link) = self.peers.get_mut(&p) {
                    link.token = None;
                    link.next_attempt = Instant::now() + link.backoff;
                    link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
                }
            }
            ConnKind::InPeer(p) => debug!("{}: link from {p} closed: {why}", self.id),
            _ => debug!("{}: connection closed: {why}", self.id),
        }
    }

    fn maintain_peer_links(&mut self, now: Instant) {
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
                        let hello = Frame::Hello {
                            cluster: self.config.cluster.name.clone(),
                            from: Sender::Peer(self.id),
                        };
                        if let Some(c) = self.conns.get_mut(&token) {
                            encode_frame(&hello, &mut c.write_buf);
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
                        l.next_attempt = now + l.backoff;
                        l.backoff = (l.backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
    }

    fn conn_event(&mut self, token: Token, readable: bool, writable: bool, read_closed: bool) {
        if writable {
            if let Some(c) = self.conns.get_mut(&token) {
                if c.connecting {
                    // A nonblocking connect is confirmed before use.
                    match (c.stream.take_error(), c.stream.peer_addr()) {
                        (Ok(None), Ok(_)) => {
                            c.connecting = false;
                            if let ConnKind::OutPeer(p) = c.kind {
                                info!("{}: connected to {p}", self.id);
                                if let Some(l) = self.peers.get_mut(&p) {
                                    l.backoff = BACKOFF_MIN;
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
    fn read(&mut self, token: Token, read_closed: bool) {
        let mut closed: Option<String> = None;
        {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            let chunk = &mut self.read_chunk;
            loop {
                match c.stream.read(chunk) {
                    Ok(0) => {
                        closed = Some("closed by the other side".into());
                        break;
                    }
                    Ok(n) => {
                        c.read_buf.extend_from_slice(&chunk[..n]);
                        // A short read drained the socket: with edge-triggered
                        // readiness, more data brings a new event, so skip the
                        // read that would only say WouldBlock.
                        if n < chunk.len() && !read_closed {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        closed = Some(format!("read error: {e}"));
                        break;
                    }
                }
            }
        }
        // Decode every whole frame, in place: the buffer is taken out of the
        // connection meanwhile and put back after.
        let Some(mut buf) = self
            .conns
            .get_mut(&token)
            .map(|c| std::mem::take(&mut c.read_buf))
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
                        let peer = c
                            .stream
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
        if let Some(c) = self.conns.get_mut(&token) {
            c.read_buf = buf;
        }
        if let Some(why) = closed {
            self.close(token, &why);
        }
    }

    fn flush(&mut self, token: Token) {
        let mut close: Option<String> = None;
        {
            let Some(c) = self.conns.get_mut(&token) else {
                return;
            };
            c.dirty = false;
            if c.connecting {
                return;
            }
            while c.write_pos < c.write_buf.len() {
                match c.stream.write(&c.write_buf[c.write_pos..]) {
                    Ok(0) => {
                        close = Some("write returned 0".into());
                        break;
                    }
                    Ok(n) => c.write_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        close = Some(format!("write error: {e}"));
                        break;
                    }
                }
            }
            if c.write_pos == c.write_buf.len() {
                c.write_buf.clear();
                if c.write_buf.capacity() > WRITE_BUF_KEEP_BYTES {
                    // A snapshot went out: do not hold its size for good.
                    c.write_buf.shrink_to(WRITE_BUF_KEEP_BYTES);
                }
                c.write_pos = 0;
                if c.close_after_flush {
                    close = Some("done".into());
                }
            }
            if close.is_none() {
                let want = c.write_pos < c.write_buf.len();
                if want != c.writable_registered {
                    let interest = if want {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if self
                        .poll
                        .registry()
                        .reregister(&mut c.stream, token, interest)
                        .is_ok()
                    {
                        c.writable_registered = want;
                    }
                }
            }
        }
        if let Some(why) = close {
            self.close(token, &why);
        }
    }

    fn send_frame(&mut self, token: Token, frame: &Frame) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        encode_frame(frame, &mut c.write_buf);
        if c.kind == ConnKind::Client && c.write_buf.len() > CLIENT_WRITE_BYTES_MAX {
            self.close(token, "client is not reading its responses");
            return;
        }
        self.mark_dirty(token);
    }

    /// Queues a flush for the end of this loop iteration: everything a
    /// connection gets in one iteration goes out in one `write`.
    fn mark_dirty(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(&token) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(token);
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for token in dirty.drain(..) {
            self.flush(token);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    fn respond(&mut self, token: Token, request_id: u64, body: ResponseBody) {
        self.send_frame(token, &Frame::Response { request_id, body });
    }

    // ---- frames -------------------------------------------------------------

    fn handle_frame(&mut self, token: Token, frame: Frame) -> Result<(), String> {
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
                if let Some(c) = self.conns.get_mut(&token) {
                    c.kind = new_kind;
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
            (ConnKind::InPeer(p), Frame::Raft(m)) => {
                if m.from != p || m.to != self.id {
                    return Err(format!("{p} sent a message addressed {}->{}", m.from, m.to));
                }
                if self.partitioned_from(p) {
                    return Ok(());
                }
                if let MessageBody::InstallSnapshot { snapshot, .. } = &m.body {
                    self.decode_snapshot(p, snapshot)?;
                }
                self.raft.step(m);
                Ok(())
            }
            (ConnKind::OutPeer(_), Frame::HelloOk { .. }) => Ok(()),
            (ConnKind::OutPeer(p), Frame::HelloReject { code, reason }) => {
                error!("{}: {p} refused our link ({code:?}): {reason}", self.id);
                Err(format!("refused by {p}"))
            }
            (ConnKind::Client, Frame::Request { request_id, body }) => {
                self.handle_request(token, request_id, body);
                Ok(())
            }
            (k, f) => Err(misplaced(k, frame_name(&f))),
        }
    }

    fn handle_kv_frame(&mut self, token: Token, kv: KvRequestRef<'_>) -> Result<(), String> {
        match self.conns.get(&token).map(|c| c.kind).ok_or("gone")? {
            ConnKind::Client => {
                self.handle_kv(token, kv.request_id, kv.command, kv.stale_read);
                Ok(())
            }
            k => Err(misplaced(k, "Request")),
        }
    }

    fn reject(&mut self, token: Token, code: ErrorCode, reason: String) {
        warn!("{}: refusing connection: {reason}", self.id);
        self.send_frame(token, &Frame::HelloReject { code, reason });
        if let Some(c) = self.conns.get_mut(&token) {
            c.close_after_flush = true;
        }
        self.flush(token);
    }

    fn not_leader(&self) -> ResponseBody {
        let leader = self.raft.leader().filter(|&l| l != self.id);
        let leader_addr = leader
            .and_then(|l| self.config.node(l))
            .map(|n| n.addr.to_string())
            .unwrap_or_default();
        ResponseBody::NotLeader {
            leader,
            leader_addr,
        }
    }

    fn pending_count(&self) -> usize {
        self.waiting_writes.len() + self.waiting_reads.len() + self.confirmed_reads.len()
    }

    fn handle_request(&mut self, token: Token, request_id: u64, body: RequestBody) {
        match body {
            RequestBody::Status => {
                let status = NodeStatus {
                    status: self.raft.status(),
                    addr: self.addr.to_string(),
                    fault: self.fault.clone(),
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                };
                self.respond(token, request_id, ResponseBody::Status(status));
            }
            RequestBody::Log {
                from,
                to,
                entries_max,
            } => {
                let log = self.raft.log();
                let to = if to.0 == 0 { log.last_index() } else { to };
                let max = entries_max.clamp(1, LOG_ENTRIES_MAX) as usize;
                let mut entries = log.slice(from.max(LogIndex(1)), to).to_vec();
                entries.truncate(max);
                let body = ResponseBody::Log {
                    commit_index: self.raft.commit_index(),
                    first_index: log.first_index(),
                    last_index: log.last_index(),
                    entries,
                };
                self.respond(token, request_id, body);
            }
            RequestBody::Fault(spec) => {
                info!("{}: fault injection now {spec:?}", self.id);
                self.fault = spec;
                self.respond(token, request_id, ResponseBody::FaultOk);
            }
            RequestBody::Kv {
                command,
                stale_read,
            } => self.handle_kv(token, request_id, command.as_ref(), stale_read),
        }
    }

    fn handle_kv(
        &mut self,
        token: Token,
        request_id: u64,
        command: CommandRef<'_>,
        stale_read: bool,
    ) {
        if let OpRef::Get { key } = command.op {
            if stale_read {
                let value = self.kv.get(key).map(<[u8]>::to_vec);
                let index = self.kv.last_applied();
                self.respond(
                    token,
                    request_id,
                    ResponseBody::Kv {
                        index,
                        result: OpResult::Value(value),
                    },
                );
                return;
            }
            if self.pending_count() >= PENDING_REQUESTS_MAX {
                self.busy(token, request_id);
                return;
            }
            let read_id = self.next_read_id;
            self.next_read_id += 1;
            match self.raft.read_index(read_id) {
                Ok(()) => {
                    let key = key.to_vec();
                    self.waiting_reads.insert(
                        read_id,
                        ReadWaiter {
                            token,
                            request_id,
                            key,
                        },
                    );
                }
                Err(NotLeader::Redirect(_)) => {
                    let body = self.not_leader();
                    self.respond(token, request_id, body);
                }
            }
            return;
        }
        // A write. A retry of one already applied gets the first answer.
        if let Some(result) = self.kv.cached(command.client_id, command.seq) {
            let body = ResponseBody::Kv {
                index: self.kv.last_applied(),
                result: result.clone(),
            };
            self.respond(token, request_id, body);
            return;
        }
        let key = (command.client_id, command.seq);
        if self.raft.role() != Role::Leader {
            let body = self.not_leader();
            self.respond(token, request_id, body);
            return;
        }
        if let Some(w) = self.waiting_writes.get_mut(&key) {
            // Already in the log, not yet applied: answer this connection.
            w.token = token;
            w.request_id = request_id;
            return;
        }
        if self.pending_count() >= PENDING_REQUESTS_MAX {
            self.busy(token, request_id);
            return;
        }
        // The entry's data: one allocation, shared from here on by the log,
        // the storage job, the followers' AppendEntries and the apply.
        let buf = &mut self.entry_buf;
        buf.clear();
        command.encode(buf);
        match self.raft.propose(Arc::<[u8]>::from(&buf[..])) {
            Ok(_) => {
                self.waiting_writes
                    .insert(key, Waiter { token, request_id });
            }
            Err(NotLeader::Redirect(_)) => {
                let body = self.not_leader();
                self.respond(token, request_id, body);
            }
        }
    }

    fn busy(&mut self, token: Token, request_id: u64) {
        let body = ResponseBody::Error {
            code: ErrorCode::TooBusy,
            message: format!("{PENDING_REQUESTS_MAX} requests already waiting"),
        };
        self.respond(token, request_id, body);
    }

    // ---- faults --------------------------------------------------------------

    fn partitioned_from(&self, peer: NodeId) -> bool {
        if self.fault.partition.is_empty() {
            return false;
        }
        let group_of = |n: NodeId| self.fault.partition.iter().position(|g| g.contains(&n));
        group_of(self.id) != group_of(peer)
    }

    fn release_delayed(&mut self, now: Instant) {
        while let Some(Reverse((due, _))) = self.delayed.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, seq))) = self.delayed.pop() else {
                break;
            };
            if let Some(m) = self.delayed_msgs.remove(&seq) {
                self.transmit(m);
            }
        }
    }

    // ---- ready ----------------------------------------------------------------

    fn send_message(&mut self, m: Message) {
        if self.partitioned_from(m.to) {
            return;
        }
        if self.fault.drop_rate_ppm > 0
            && self.rng.range(0, 1_000_000) < self.fault.drop_rate_ppm as u64
        {
            return;
        }
        if self.fault.delay_ms > 0 || self.fault.jitter_ms > 0 {
            let ms =
                self.fault.delay_ms as u64 + self.rng.range(0, self.fault.jitter_ms as u64 + 1);
            self.delayed_seq += 1;
            let seq = self.delayed_seq;
            self.delayed_msgs.insert(seq, m);
            self.delayed
                .push(Reverse((Instant::now() + Duration::from_millis(ms), seq)));
            return;
        }
        self.transmit(m);
    }

    fn transmit(&mut self, m: Message) {
        let Some(token) = self.peers.get(&m.to).and_then(|l| l.token) else {
            return; // link down: Raft retransmits
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if c.write_buf.len() > PEER_WRITE_BYTES_MAX {
            debug!(
                "{}: dropping {m}: {} bytes queued",
                self.id,
                c.write_buf.len()
            );
            return;
        }
        if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
            // A snapshot may not fit one frame.
            encode_raft_fragments(&m, &mut c.write_buf);
        } else {
            encode_frame(&Frame::Raft(m), &mut c.write_buf);
        }
        self.mark_dirty(token);
    }

    fn process_ready(&mut self) -> Result<(), NodeError> {
        for _ in 0..16 {
            if !self.raft.has_ready() {
                return Ok(());
            }
            let rd = self.raft.ready();
            if let Some(ss) = rd.soft_state {
                info!(
                    "{} t{}: {} (leader {})",
                    self.id,
                    ss.term,
                    ss.role,
                    ss.leader.map_or("none".into(), |l| l.to_string())
                );
                if ss.role != Role::Leader {
                    self.fail_waiting();
                }
            }
            let must_persist = rd.must_persist();
            for m in rd.messages {
                self.send_message(m);
            }
            if let Some(snap) = &rd.snapshot {
                self.install_snapshot(snap)?;
            }
            if must_persist {
                self.storage_seq += 1;
                let last = rd
                    .entries
                    .last()
                    .map(|e| (e.index, e.term))
                    .or(rd.snapshot.as_ref().map(|s| (s.index, s.term)));
                let job = Job {
                    seq: self.storage_seq,
                    hard_state: rd.hard_state,
                    snapshot: rd.snapshot,
                    entries: rd.entries,
                    release: Vec::new(),
                };
                let idle = self.storage_seq == self.storage_durable + 1;
                // Nothing else in flight: a vote, or one entry right after
                // the commit index (one client waiting, nothing to batch).
                let lone = job.snapshot.is_none()
                    && match &job.entries[..] {
                        [] => true,
                        [e] => e.index == self.raft.commit_index().next(),
                        _ => false,
                    };
                self.after_durable
                    .push_back((self.storage_seq, last, rd.messages_after_persist));
                // Such a job, at a follower whose storage thread is idle,
                // is written here and answered at once, saving two thread
                // hand-offs. Everything else goes to the thread: the next
                // batch is read while this one is written, and the leader's
                // write runs in parallel with the replication sent above.
                if self.raft.role() != Role::Leader && idle && lone {
                    self.storage
                        .write_inline(&job)
                        .map_err(|e| NodeError::Storage(e.to_string()))?;
                    self.storage_durable = self.storage_seq;
                    self.release_durable();
                } else if !self.storage.submit(job) {
                    return Err(NodeError::Storage("the storage thread has stopped".into()));
                }
            } else if !rd.messages_after_persist.is_empty() {
                if self.storage_seq > self.storage_durable {
                    // They may speak for entries still on their way to disk.
                    self.after_durable.push_back((
                        self.storage_seq,
                        None,
                        rd.messages_after_persist,
                    ));
                } else {
                    for m in rd.messages_after_persist {
                        self.send_message(m);
                    }
                }
            }
            for e in rd.committed_entries {
                self.apply(e);
            }
            self.maybe_snapshot()?;
            for rs in rd.read_states {
                if let Some(w) = self.waiting_reads.remove(&rs.id) {
                    self.confirmed_reads.push((rs.index, w));
                }
            }
            self.answer_reads();
        }
        Ok(())
    }

    /// The storage thread reported: send what waited, tell the core.
    fn storage_done(&mut self) -> Result<(), NodeError> {
        while let Ok(d) = self.storage.done().try_recv() {
            match d {
                Durable::Upto(seq) => self.storage_durable = seq,
                Durable::Failed(e) => return Err(NodeError::Storage(e.to_string())),
            }
        }
        self.release_durable();
        Ok(())
    }

    /// Tells the core what is now durable and sends what waited for it.
    fn release_durable(&mut self) {
        while self
            .after_durable
            .front()
            .is_some_and(|(seq, _, _)| *seq <= self.storage_durable)
        {
            let Some((_, last, msgs)) = self.after_durable.pop_front() else {
                break;
            };
            if let Some((index, term)) = last {
                self.raft.persisted(index, term);
            }
            for m in msgs {
                self.send_message(m);
            }
        }
    }

    /// A snapshot from a peer is decoded before the core sees it: one that
    /// does not decode is a bad frame (the link closes, the node goes on),
    /// not a state the core has already switched to.
    fn decode_snapshot(&mut self, from: NodeId, snap: &Snapshot) -> Result<(), String> {
        if snap.index <= self.raft.commit_index() {
            return Ok(()); // the core acknowledges it and changes nothing
        }
        let kv = kv_of_snapshot(snap).map_err(|e| format!("from {from}: {e}"))?;
        self.decoded_snapshot = Some((snap.index, snap.term, kv));
        Ok(())
    }

    /// The leader sent its snapshot: it replaces the state machine (the
    /// core has already replaced the log).
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), NodeError> {
        let kv = match self.decoded_snapshot.take() {
            Some((index, term, kv)) if index == snap.index && term == snap.term => kv,
            _ => kv_of_snapshot(snap)
                .map_err(|e| NodeError::Storage(format!("from the leader: {e}")))?,
        };
        info!(
            "{}: installed the leader's snapshot at {}/{} ({} bytes, {} keys)",
            self.id,
            snap.index,
            snap.term,
            snap.data.len(),
            kv.len()
        );
        self.kv = kv;
        Ok(())
    }

    /// Every `snapshot_entries` applied entries: snapshot the state
    /// machine, let the core drop the log behind it (keeping
    /// `snapshot_keep_entries`), and have the storage thread write it and
    /// delete the WAL segments it covers.
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        let every = self.config.cluster.snapshot_entries;
        let applied = self.raft.last_applied();
        let last = self
            .raft
            .snapshot()
            .map_or(LogIndex(0), |s| s.index)
            .max(self.snapshot_tried);
        if every == 0 || applied.0 < last.0 + every {
            return Ok(());
        }
        self.snapshot_tried = applied;
        let Some(term) = self.raft.log().term_at(applied) else {
            return Ok(());
        };
        debug_assert_eq!(self.kv.last_applied(), applied);
        let started = Instant::now();
        let snap = Snapshot {
            index: applied,
            term,
            data: self.kv.snapshot().into(),
        };
        let encoded = started.elapsed();
        if snap.data.len() > SNAPSHOT_DATA_BYTES_MAX {
            // A follower that fell behind could never be sent it: keep
            // the log rather than compact it away.
            warn!(
                "{}: not compacting: the state is {} bytes, past the {} a snapshot can carry to a follower",
                self.id,
                snap.data.len(),
                SNAPSHOT_DATA_BYTES_MAX
            );
            return Ok(());
        }
        let keep = self.config.cluster.snapshot_keep_entries;
        let release = self
            .raft
            .compact(snap.clone(), LogIndex((applied.0 + 1).saturating_sub(keep)));
        info!(
            "{}: snapshot at {applied}/{term} ({} bytes, {} keys, encoded in {} µs); log now from {}, {} entries to free",
            self.id,
            snap.data.len(),
            self.kv.len(),
            encoded.as_micros(),
            self.raft.log().first_index(),
            release.len()
        );
        self.storage_seq += 1;
        self.after_durable
            .push_back((self.storage_seq, None, Vec::new()));
        let job = Job {
            seq: self.storage_seq,
            hard_state: None,
            snapshot: Some(snap),
            entries: Vec::new(),
            release,
        };
        if !self.storage.submit(job) {
            return Err(NodeError::Storage("the storage thread has stopped".into()));
        }
        Ok(())
    }

    fn apply(&mut self, e: Entry) {
        if e.kind == EntryKind::Noop {
            self.kv.note_applied(e.index);
            return;
        }
        match self.kv.apply(e.index, &e.data) {
            Ok(applied) => {
                if let Some(w) = self
                    .waiting_writes
                    .remove(&(applied.client_id, applied.seq))
                {
                    let body = match applied.result {
                        Ok(result) => ResponseBody::Kv {
                            index: e.index,
                            result,
                        },
                        Err(message) => ResponseBody::Error {
                            code: ErrorCode::BadRequest,
                            message,
                        },
                    };
                    self.respond(w.token, w.request_id, body);
                }
            }
            Err(why) => error!("{}: {why}", self.id),
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.kv.last_applied();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.confirmed_reads = waiting;
        for (_, w) in ready {
            let value = self.kv.get(&w.key).map(<[u8]>::to_vec);
            self.respond(
                w.token,
                w.request_id,
                ResponseBody::Kv {
                    index: applied,
                    result: OpResult::Value(value),
                },
            );
        }
    }

    /// Leadership lost: nobody here will answer the waiting requests.
    fn fail_waiting(&mut self) {
        let writes: Vec<Waiter> = self.waiting_writes.drain().map(|(_, w)| w).collect();
        for w in writes {
            let body = ResponseBody::Error {
                code: ErrorCode::Unavailable,
                message: "leadership lost before the write was applied; outcome unknown, retry"
                    .into(),
            };
            self.respond(w.token, w.request_id, body);
        }
        let reads: Vec<ReadWaiter> = self
            .waiting_reads
            .drain()
            .map(|(_, w)| w)
            .chain(self.confirmed_reads.drain(..).map(|(_, w)| w))
            .collect();
        for w in reads {
            let body = self.not_leader();
            self.respond(w.token, w.request_id, body);
        }
    }
}

/// Why a frame of this type may not come on a connection of this kind.
/// The key-value state a snapshot holds, which must be the state at the
/// snapshot's index.
fn kv_of_snapshot(snap: &Snapshot) -> Result<KvStore, String> {
    let kv = KvStore::restore(&snap.data).map_err(|e| {
        format!(
            "the snapshot at {}/{} does not decode: {e}",
            snap.index, snap.term
        )
    })?;
    if kv.last_applied() != snap.index {
        return Err(format!(
            "the snapshot at {}/{} holds the state at {}",
            snap.index,
            snap.term,
            kv.last_applied()
        ));
    }
    Ok(kv)
}

fn misplaced(kind: ConnKind, frame: &str) -> String {
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
        Frame::Request { .. } => "Request",
        Frame::Response { .. } => "Response",
    }
}

static STOP_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP_SIGNALLED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers and returns a flag that turns true when
/// one arrives.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        // SIGHUP too (a closed terminal, a killed tmux pane), unless the
        // node was started with it ignored (nohup).
        let previous = libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
        if previous == libc::SIG_IGN {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
    let f = flag.clone();
    std::thread::spawn(move || loop {
        if STOP_SIGNALLED.load(Ordering::SeqCst) {
            f.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    flag
}
