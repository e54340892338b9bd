//! A multiplexed, nonblocking client: many requests in flight on each of a
//! few connections, answers matched by request id (they come in any order,
//! docs/PROTOCOL.md "Answers come out of order").
//!
//! The caller hands in requests ([`MuxRequest`]), each with a tag of its
//! own and the logical client it belongs to, and gets back one
//! [`MuxDone`] per request from [`Mux::poll`]. Between the two the mux:
//!
//! - puts a logical client's requests on connection `client % conns`, and
//!   keeps at most `window` requests in flight per connection (the rest
//!   wait in order for a free place);
//! - writes everything queued on a connection in one `write` per poll;
//! - follows NotLeader: the connection moves to the leader named (or the
//!   next node while none is known), and every request in flight on it is
//!   sent again there;
//! - retries after Unavailable, TooBusy, Timeout and a lost connection,
//!   with a growing pause, always with the request's own client id and
//!   sequence number, so a retried write applies once;
//! - gives up on a request at its deadline (`op_timeout` after it was
//!   handed in): its outcome is unknown ([`MuxReply::TimedOut`]).
//!
//! Sessions: the node keeps one write in flight per client id (a session
//! remembers its last answer only), so the caller gives each logical client
//! its own client id and sends a client's next write only after the
//! previous one is answered. The mux does not check this; it needs no
//! per-client window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::config::Config;
use crate::conn::{FramedConn, ReadEnd};
use crate::kv::{Command, OpResult};
use crate::raft::{LogIndex, NodeId};
use crate::wire::frame::encode_kv_request;
use crate::wire::{decode_frame, ErrorCode, Frame, ResponseBody, Sender};

/// Requests in flight on one connection at most (the window's ceiling).
/// The node answers a client that has more waiting than it holds with
/// TooBusy, so the window stays far below its limit.
pub const WINDOW_MAX: usize = 4096;
/// Requests a mux holds at once (waiting, in flight or pausing before a
/// retry); [`Mux::submit`] refuses more.
pub const REQUESTS_MAX: usize = 1 << 20;
/// Capacity a connection's write buffer keeps once flushed.
const WRITE_BUF_KEEP_BYTES: usize = 256 << 10;
/// One `read` call's buffer.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Bytes read from one connection per readiness event at most, so that one
/// busy connection does not starve the others.
const READ_BYTES_PER_EVENT_MAX: usize = 1 << 20;
/// The first pause before a retry; the n-th pause is n times this, up to
/// `RETRY_STEPS_MAX` times.
const RETRY_DELAY: Duration = Duration::from_millis(20);
const RETRY_STEPS_MAX: u32 = 10;
/// How often deadlines and retries are looked at.
const SCAN_EVERY: Duration = Duration::from_millis(5);

const _: () = assert!(WINDOW_MAX <= crate::node::PENDING_REQUESTS_MAX);
const _: () = assert!(READ_BYTES_PER_EVENT_MAX >= READ_CHUNK_BYTES);

/// How a mux connects and how long it waits.
#[derive(Clone, Debug)]
pub struct MuxOptions {
    /// Connections, at least 1.
    pub conns: usize,
    /// Requests in flight per connection, 1 to `WINDOW_MAX`.
    pub window: usize,
    /// A request without an answer this long after it was handed in has
    /// an unknown outcome.
    pub op_timeout: Duration,
    /// The node (index in the config) every connection goes to first…
    pub first_node: usize,
    /// …or connection `j` goes to node `j % nodes` first.
    pub spread: bool,
}

impl Default for MuxOptions {
    fn default() -> Self {
        MuxOptions {
            conns: 1,
            window: 1024,
            op_timeout: Duration::from_secs(5),
            first_node: 0,
            spread: false,
        }
    }
}

/// One key-value request.
#[derive(Clone, Debug)]
pub struct MuxRequest {
    /// The caller's own number for the request; comes back with the answer.
    pub tag: u64,
    /// The logical client: its requests go on connection `client % conns`.
    pub client: u64,
    pub command: Command,
    pub stale_read: bool,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxReply {
    /// Answered by `node`: applied at `index` (a write) or read there.
    Kv {
        node: NodeId,
        index: LogIndex,
        result: OpResult,
    },
    /// Refused definitely (BadRequest, SessionExpired, …): not applied.
    Refused { code: ErrorCode, message: String },
    /// No answer before the deadline: the outcome is unknown.
    TimedOut,
}

/// A request that ended, given back whole with its reply.
#[derive(Clone, Debug)]
pub struct MuxDone {
    pub request: MuxRequest,
    pub reply: MuxReply,
}

/// What a mux did on the way, for reports.
#[derive(Clone, Debug, Default)]
pub struct MuxStats {
    /// NotLeader answers followed.
    pub redirects: u64,
    /// Requests sent again (after a pause, a redirect or a lost connection).
    pub retries: u64,
    /// Connections lost (and made again).
    pub reconnects: u64,
    /// Why requests were retried or refused, by kind.
    pub errors: BTreeMap<String, u64>,
}

impl MuxStats {
    fn error(&mut self, why: &str) {
        match self.errors.get_mut(why) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(why.to_string(), 1);
            }
        }
    }

    /// Errors of every kind.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In its connection's `waiting` queue.
    Waiting,
    /// Sent with this request id; in its connection's `in_flight`.
    InFlight(u64),
    /// Pausing before it goes back to `waiting`.
    RetryAt(Instant),
}

struct Slot {
    request: MuxRequest,
    conn: usize,
    state: State,
    deadline: Instant,
    /// Pauses so far (the next one is longer).
    attempts: u32,
}

struct MuxConn {
    io: Option<FramedConn>,
    /// The node (index in the config) this connection goes to.
    node: usize,
    /// Request id → slot id, for the requests sent and not yet answered.
    in_flight: HashMap<u64, u64>,
    /// Slot ids waiting for a place in the window, oldest first. An id of a
    /// slot that has ended or moved on is skipped.
    waiting: VecDeque<u64>,
    /// No connection before this (after one failed).
    reconnect_at: Option<Instant>,
    /// The last frame read, or the send that started a busy stretch: a
    /// connection silent for `op_timeout` while requests wait is dropped.
    heard_at: Instant,
    /// Has output queued since the last flush.
    dirty: bool,
}

/// The multiplexed client. Not thread-safe: one per thread.
pub struct Mux {
    config: Config,
    /// With `[tls]` in the config: every connection is TLS, showing the
    /// config's client certificate.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    opts: MuxOptions,
    poll: Poll,
    events: Events,
    conns: Vec<MuxConn>,
    slots: HashMap<u64, Slot>,
    next_slot: u64,
    next_request_id: u64,
    read_chunk: Vec<u8>,
    next_scan: Instant,
    pub stats: MuxStats,
}

impl Mux {
    pub fn new(config: Config, opts: MuxOptions) -> io::Result<Mux> {
        let n = config.nodes.len().max(1);
        let now = Instant::now();
        let conns = (0..opts.conns.max(1))
            .map(|j| MuxConn {
                io: None,
                node: if opts.spread {
                    j % n
                } else {
                    opts.first_node % n
                },
                in_flight: HashMap::new(),
                waiting: VecDeque::new(),
                reconnect_at: None,
                heard_at: now,
                dirty: false,
            })
            .collect();
        let mut opts = opts;
        opts.window = opts.window.clamp(1, WINDOW_MAX);
        let tls = super::tls_client_config(&config).map_err(io::Error::other)?;
        Ok(Mux {
            config,
            tls,
            opts,
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns,
            slots: HashMap::new(),
            next_slot: 1,
            next_request_id: 1,
            read_chunk: vec![0; READ_CHUNK_BYTES],
            next_scan: now + SCAN_EVERY,
            stats: MuxStats::default(),
        })
    }

    /// Requests handed in and not yet given back.
    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    /// Hands in a request; it is sent at the next [`Mux::poll`]. Gives the
    /// request back when the mux already holds `REQUESTS_MAX`.
    pub fn submit(&mut self, request: MuxRequest) -> Result<(), MuxRequest> {
        if self.slots.len() >= REQUESTS_MAX {
            return Err(request);
        }
        let conn = (request.client % self.conns.len() as u64) as usize;
        let id = self.next_slot;
        self.next_slot += 1;
        let slot = Slot {
            request,
            conn,
            state: State::Waiting,
            deadline: Instant::now() + self.opts.op_timeout,
            attempts: 0,
        };
        self.slots.insert(id, slot);
        self.conns[conn].waiting.push_back(id);
        self.pump(conn);
        Ok(())
    }

    /// Sends what waits, waits up to `timeout` for answers (less when a
    /// deadline or retry is due), and appends every request that ended to
    /// `done`. An error is fatal: the poll failed, or a node refused the
    /// handshake (another cluster).
    pub fn poll(&mut self, timeout: Duration, done: &mut Vec<MuxDone>) -> io::Result<()> {
        self.flush_dirty();
        let now = Instant::now();
        let timeout = timeout.min(self.next_scan.saturating_duration_since(now));
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let polled = self.poll.poll(&mut events, Some(timeout));
        let result = match polled {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
            Ok(()) => {
                let mut result = Ok(());
                for ev in events.iter() {
                    let j = ev.token().0;
                    if j >= self.conns.len() {
                        continue;
                    }
                    if ev.is_writable() {
                        self.conns[j].dirty = true;
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        let closed = ev.is_read_closed() || ev.is_error();
                        if let Err(e) = self.read(j, closed, done) {
                            result = Err(e);
                            break;
                        }
                    }
                }
                result
            }
        };
        self.events = events;
        result?;
        let now = Instant::now();
        if now >= self.next_scan {
            self.next_scan = now + SCAN_EVERY;
            self.scan(now, done);
        }
        self.flush_dirty();
        Ok(())
    }

    /// Sends every request and waits until each has ended; the replies
    /// come back in the order the requests went in.
    pub fn run_all(&mut self, requests: Vec<MuxRequest>) -> io::Result<Vec<MuxDone>> {
        let n = requests.len();
        let mut order = HashMap::with_capacity(n);
        for (i, r) in requests.into_iter().enumerate() {
            order.insert(r.tag, i);
            self.submit(r)
                .map_err(|_| io::Error::other("too many requests at once"))?;
        }
        let mut out: Vec<Option<MuxDone>> = (0..n).map(|_| None).collect();
        let mut done = Vec::new();
        let mut left = n;
        while left > 0 {
            self.poll(Duration::from_millis(50), &mut done)?;
            for d in done.drain(..) {
                if let Some(&i) = order.get(&d.request.tag) {
                    if out[i].is_none() {
                        left -= 1;
                    }
                    out[i] = Some(d);
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Fills connection `j`'s window from its waiting queue, connecting
    /// first when needed.
    fn pump(&mut self, j: usize) {
        let now = Instant::now();
        let c = &mut self.conns[j];
        if c.waiting.is_empty() || c.in_flight.len() >= self.opts.window {
            return;
        }
        if c.io.is_none() {
            if c.reconnect_at.is_some_and(|t| now < t) {
                return;
            }
            if !self.connect(j) {
                self.conn_failed(j, "connect");
                return;
            }
        }
        let c = &mut self.conns[j];
        let Some(io) = c.io.as_mut() else {
            return;
        };
        if c.in_flight.is_empty() {
            c.heard_at = now;
        }
        while c.in_flight.len() < self.opts.window {
            let Some(id) = c.waiting.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                continue; // ended while waiting
            };
            if slot.state != State::Waiting || slot.conn != j {
                continue;
            }
            let request_id = self.next_request_id;
            self.next_request_id += 1;
            let r = &slot.request;
            encode_kv_request(
                request_id,
                r.command.as_ref(),
                r.stale_read,
                &mut io.write_buf,
            );
            slot.state = State::InFlight(request_id);
            c.in_flight.insert(request_id, id);
            c.dirty = true;
        }
    }

    fn connect(&mut self, j: usize) -> bool {
        let node = self.conns[j].node;
        let Some(nc) = self.config.nodes.get(node) else {
            return false;
        };
        let Ok(mut stream) = TcpStream::connect(nc.addr) else {
            return false;
        };
        let _ = stream.set_nodelay(true);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut stream, Token(j), interest)
            .is_err()
        {
            return false;
        }
        let mut io = FramedConn::new(stream, true);
        if let Some(tls) = &self.tls {
            match crate::tls::connect_to(tls, nc.id) {
                Ok(session) => io.set_tls(rustls::Connection::Client(session)),
                Err(_) => return false,
            }
        }
        io.queue(&Frame::Hello {
            cluster: self.config.cluster.name.clone(),
            from: Sender::Client,
        });
        let c = &mut self.conns[j];
        c.io = Some(io);
        c.heard_at = Instant::now();
        c.dirty = true;
        true
    }

    /// Closes connection `j`'s socket; what was in flight on it goes back
    /// to the front of its waiting queue, in the order it was sent.
    fn drop_socket(&mut self, j: usize) {
        let c = &mut self.conns[j];
        if let Some(mut io) = c.io.take() {
            let _ = self.poll.registry().deregister(&mut io.stream);
        }
        let mut resend: Vec<(u64, u64)> = c.in_flight.drain().collect();
        resend.sort_unstable();
        for &(_, id) in resend.iter().rev() {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.state = State::Waiting;
                c.waiting.push_front(id);
            }
        }
        self.stats.retries += resend.len() as u64;
        c.dirty = false;
    }

    /// Connection `j` failed: it moves to the next node after a pause, and
    /// its requests go there with it.
    fn conn_failed(&mut self, j: usize, why: &str) {
        self.drop_socket(j);
        self.stats.reconnects += 1;
        self.stats.error(why);
        let n = self.config.nodes.len().max(1);
        let c = &mut self.conns[j];
        c.node = (c.node + 1) % n;
        c.reconnect_at = Some(Instant::now() + RETRY_DELAY);
    }

    /// Connection `j` moves to node `to` at once (a redirect), taking its
    /// requests with it.
    fn move_conn(&mut self, j: usize, to: usize) {
        self.drop_socket(j);
        let c = &mut self.conns[j];
        c.node = to;
        c.reconnect_at = None;
    }

    fn flush_dirty(&mut self) {
        for j in 0..self.conns.len() {
            self.pump(j);
            let c = &mut self.conns[j];
            if !c.dirty {
                continue;
            }
            c.dirty = false;
            let Some(io) = c.io.as_mut() else {
                continue;
            };
            match io.flush(WRITE_BUF_KEEP_BYTES) {
                Ok(_) => io.update_interest(self.poll.registry(), Token(j)),
                Err(_) => self.conn_failed(j, "connection"),
            }
        }
    }

    fn read(&mut self, j: usize, read_closed: bool, done: &mut Vec<MuxDone>) -> io::Result<()> {
        loop {
            let Some(io) = self.conns[j].io.as_mut() else {
                return Ok(());
            };
            let end = io.fill(&mut self.read_chunk, read_closed, READ_BYTES_PER_EVENT_MAX);
            if io.is_tls() && io.wants_flush() {
                // Handshake messages to answer, or frames it held back.
                self.conns[j].dirty = true;
            }
            let Some(io) = self.conns[j].io.as_mut() else {
                return Ok(());
            };
            let buf = std::mem::take(&mut io.read_buf);
            let Some(buf) = self.decode(j, buf, done)? else {
                return Ok(()); // the connection failed or moved
            };
            if let Some(io) = self.conns[j].io.as_mut() {
                io.read_buf = buf;
            }
            match end {
                ReadEnd::Drained => break,
                // More may wait, and no event will come for it.
                ReadEnd::Budget => continue,
                ReadEnd::Closed(_) => {
                    self.conn_failed(j, "connection");
                    return Ok(());
                }
                ReadEnd::Tls(why) => {
                    let node = self.config.nodes[self.conns[j].node].id;
                    return Err(io::Error::other(format!("TLS with {node} failed: {why}")));
                }
            }
        }
        self.pump(j);
        Ok(())
    }

    /// Handles every whole frame in `buf` (read on connection `j`); gives
    /// back what is left of it, or `None` when the connection failed or
    /// moved on the way (the rest came on the old socket: its requests are
    /// sent again).
    fn decode(
        &mut self,
        j: usize,
        mut buf: Vec<u8>,
        done: &mut Vec<MuxDone>,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut pos = 0;
        loop {
            let (frame, used) = match decode_frame(&buf[pos..]) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(_) => {
                    self.conn_failed(j, "bad frame");
                    return Ok(None);
                }
            };
            pos += used;
            self.conns[j].heard_at = Instant::now();
            match frame {
                Frame::HelloOk { .. } => {}
                Frame::HelloReject { reason, .. } => {
                    let node = self.conns[j].node;
                    return Err(io::Error::other(format!(
                        "{} refused the connection: {reason}",
                        self.config.nodes[node].id
                    )));
                }
                Frame::Response { request_id, body } => {
                    let Some(id) = self.conns[j].in_flight.remove(&request_id) else {
                        continue; // its request ended (a deadline passed)
                    };
                    self.answer(j, id, body, done);
                    if self.conns[j].io.is_none() {
                        return Ok(None);
                    }
                }
                _ => {
                    self.conn_failed(j, "unexpected frame");
                    return Ok(None);
                }
            }
        }
        buf.drain(..pos);
        Ok(Some(buf))
    }

    /// The answer to slot `id`, read on connection `j`.
    fn answer(&mut self, j: usize, id: u64, body: ResponseBody, done: &mut Vec<MuxDone>) {
        let node = self.conns[j].node;
        match body {
            ResponseBody::Kv { index, result } => {
                let node = self.config.nodes[node].id;
                self.finish(
                    id,
                    MuxReply::Kv {
                        node,
                        index,
                        result,
                    },
                    done,
                );
            }
            ResponseBody::NotLeader {
                leader,
                leader_addr,
            } => {
                self.stats.redirects += 1;
                // A leader cluster.toml does not list is reached at the
                // address its membership records.
                let to = leader.and_then(|l| self.config.learn_member(l, &leader_addr));
                match to {
                    Some(to) if to != node => {
                        if let Some(slot) = self.slots.get_mut(&id) {
                            slot.state = State::Waiting;
                            self.conns[j].waiting.push_front(id);
                        }
                        self.stats.retries += 1;
                        self.move_conn(j, to);
                    }
                    _ => {
                        // No leader known (an election is on): try the
                        // next node after a pause.
                        let n = self.config.nodes.len().max(1);
                        self.move_conn(j, (node + 1) % n);
                        self.conns[j].reconnect_at = Some(Instant::now() + RETRY_DELAY);
                        self.retry_later(id, "no leader");
                    }
                }
            }
            ResponseBody::Error { code, message } => match code {
                // DiskFull: this copy was not proposed, but an earlier one
                // may still apply; never "not applied".
                ErrorCode::Unavailable
                | ErrorCode::TooBusy
                | ErrorCode::Timeout
                | ErrorCode::DiskFull => {
                    let why = format!("{code:?}").to_lowercase();
                    self.retry_later(id, &why);
                }
                _ => {
                    self.stats.error(&format!("{code:?}: {message}"));
                    self.finish(id, MuxReply::Refused { code, message }, done);
                }
            },
            _ => self.conn_failed(j, "unexpected answer"),
        }
    }

    fn retry_later(&mut self, id: u64, why: &str) {
        self.stats.error(why);
        self.stats.retries += 1;
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.attempts += 1;
            let pause = RETRY_DELAY * slot.attempts.min(RETRY_STEPS_MAX);
            slot.state = State::RetryAt(Instant::now() + pause);
        }
    }

    fn finish(&mut self, id: u64, reply: MuxReply, done: &mut Vec<MuxDone>) {
        if let Some(slot) = self.slots.remove(&id) {
            done.push(MuxDone {
                request: slot.request,
                reply,
            });
        }
    }

    /// Silent connections, deadlines, and retries whose pause is over.
    fn scan(&mut self, now: Instant, done: &mut Vec<MuxDone>) {
        for j in 0..self.conns.len() {
            let c = &self.conns[j];
            if c.io.is_some()
                && !c.in_flight.is_empty()
                && now.duration_since(c.heard_at) >= self.opts.op_timeout
            {
                self.conn_failed(j, "silent connection");
            }
        }
        let mut ended = Vec::new();
        for (&id, slot) in self.slots.iter_mut() {
            if now >= slot.deadline {
                ended.push(id);
            } else if matches!(slot.state, State::RetryAt(t) if now >= t) {
                slot.state = State::Waiting;
                self.conns[slot.conn].waiting.push_back(id);
            }
        }
        ended.sort_unstable();
        for id in ended {
            if let Some(slot) = self.slots.get(&id) {
                if let State::InFlight(r) = slot.state {
                    self.conns[slot.conn].in_flight.remove(&r);
                }
            }
            self.stats.error("timeout");
            self.finish(id, MuxReply::TimedOut, done);
        }
    }
}
