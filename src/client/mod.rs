//! Clients of the client protocol (docs/PROTOCOL.md).
//!
//! - [`Client`]: blocking, one request at a time on one connection, for
//!   raft-ctl's commands and tests: leader discovery, redirects, and
//!   retries that reuse the request's (client id, sequence number) so a
//!   retried write applies once.
//! - [`mux::Mux`]: nonblocking and multiplexed, for the load generator and
//!   anything that keeps many requests in flight: many logical clients (each
//!   its own client id and seq, one write in flight) share a few
//!   connections, answers are matched by request id.

pub mod mux;

pub use mux::{Mux, MuxDone, MuxOptions, MuxReply, MuxRequest, MuxStats};

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::kv::{ClientId, Command, Op, OpResult};
use crate::raft::{Entry, LogIndex, NodeId};
use crate::tls::TlsError;
use crate::wire::{
    decode_frame, encode_frame, ErrorCode, Frame, FrameError, RequestBody, ResponseBody, Sender,
};

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The node could not be reached.
    Unreachable {
        node: NodeId,
        addr: String,
        source: io::Error,
    },
    /// No leader answered within the timeout.
    NoLeader { waited: Duration, last: String },
    /// The node is not in the client's config.
    NotInConfig { node: NodeId },
    /// The node sent bytes that are not a frame; the connection is closed.
    BadFrame {
        node: NodeId,
        addr: String,
        source: FrameError,
    },
    /// The node answered with a frame that does not answer the request.
    Unexpected { node: NodeId, answer: String },
    /// The node answered with an error.
    Server { code: ErrorCode, message: String },
    /// The `[tls]` files cannot be used.
    Tls(TlsError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { node, addr, source } => {
                write!(f, "{node} at {addr} is unreachable: {source}")
            }
            ClientError::NoLeader { waited, last } => {
                write!(
                    f,
                    "no leader answered within {:.1}s (last: {last})",
                    waited.as_secs_f64()
                )
            }
            ClientError::NotInConfig { node } => {
                write!(f, "protocol error: {node} is not in the config")
            }
            ClientError::BadFrame { node, addr, source } => {
                write!(
                    f,
                    "protocol error: {node} at {addr} sent a bad frame: {source}"
                )
            }
            ClientError::Unexpected { node, answer } => {
                write!(
                    f,
                    "protocol error: {node} answered with an unexpected {answer}"
                )
            }
            ClientError::Server { code, message } => write!(f, "node error {code:?}: {message}"),
            ClientError::Tls(e) => write!(f, "tls: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Unreachable { source, .. } => Some(source),
            ClientError::BadFrame { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why no frame could be read.
enum ReadError {
    Io(io::Error),
    Frame(FrameError),
}

impl ReadError {
    fn into_client_error(self, node: NodeId, addr: String) -> ClientError {
        match self {
            ReadError::Io(source) => ClientError::Unreachable { node, addr, source },
            ReadError::Frame(source) => ClientError::BadFrame { node, addr, source },
        }
    }
}

/// The client side of `[tls]` (the CA and `client_cert`/`client_key`),
/// or `None` without a `[tls]` section.
pub fn tls_client_config(config: &Config) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    let Some(t) = &config.tls else {
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (&t.client_cert, &t.client_key) else {
        return Err(TlsError {
            path: config.path.clone(),
            message: "[tls] has no client_cert and client_key to connect with".into(),
        });
    };
    crate::tls::client_config(&t.ca, cert, key).map(Some)
}

/// A blocking connection to a node: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A connection-per-node blocking client.
pub struct Client {
    config: Config,
    pub client_id: ClientId,
    seq: u64,
    next_request_id: u64,
    /// Node to contact first (the last known leader).
    pub target: NodeId,
    conn: Option<(NodeId, Stream)>,
    pub timeout: Duration,
    buf: Vec<u8>,
    /// The TLS client configuration, built from the config's `[tls]` at
    /// the first connect (`Some(None)`: no TLS).
    tls: Option<Option<Arc<rustls::ClientConfig>>>,
}

impl Client {
    pub fn new(config: Config, first: Option<NodeId>) -> Client {
        let target = first.unwrap_or_else(|| config.nodes[0].id);
        let client_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 40);
        Client {
            config,
            client_id,
            seq: 0,
            next_request_id: 1,
            target,
            conn: None,
            timeout: Duration::from_secs(10),
            buf: Vec::new(),
            tls: None,
        }
    }

    /// Remembers the address of a member cluster.toml does not list (from
    /// the membership: a Members or Status answer, a NotLeader hint), in
    /// the client's copy of the config. Returns whether it was news.
    pub fn learn(&mut self, node: NodeId, addr: &str) -> bool {
        let known = self.config.nodes.len();
        self.config.learn_member(node, addr);
        self.config.nodes.len() > known
    }

    /// Learns every address a membership records.
    pub fn learn_membership(&mut self, m: &crate::raft::Membership) {
        for (&id, addr) in &m.addrs {
            self.learn(id, addr);
        }
    }

    /// The address of `node`: cluster.toml's, else a learned one.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.config.node(node).map(|n| n.addr)
    }

    /// Every node this client knows: cluster.toml's, then learned ones.
    pub fn known_ids(&self) -> Vec<NodeId> {
        self.config.ids()
    }

    fn connect(&mut self, node: NodeId) -> Result<&mut Stream, ClientError> {
        if self.tls.is_none() {
            self.tls = Some(tls_client_config(&self.config).map_err(ClientError::Tls)?);
        }
        if self.conn.as_ref().map(|(n, _)| *n) != Some(node) {
            self.conn = None;
            let addr = self
                .addr_of(node)
                .ok_or(ClientError::NotInConfig { node })?;
            let unreachable = |source| ClientError::Unreachable {
                node,
                addr: addr.to_string(),
                source,
            };
            // A node that holds the connection without answering (stopped,
            // say) costs at most the caller's timeout, never more.
            let wait = self.timeout.max(Duration::from_millis(100));
            let s = TcpStream::connect_timeout(&addr, wait.min(Duration::from_secs(2)))
                .map_err(unreachable)?;
            s.set_nodelay(true).map_err(unreachable)?;
            s.set_read_timeout(Some(wait.min(Duration::from_secs(5))))
                .map_err(unreachable)?;
            let mut s = match self.tls.as_ref().and_then(Option::as_ref) {
                Some(tls) => {
                    let session = crate::tls::connect_to(tls, node)
                        .map_err(|e| unreachable(io::Error::other(e)))?;
                    Stream::Tls(Box::new(rustls::StreamOwned::new(session, s)))
                }
                None => Stream::Plain(s),
            };
            let mut out = Vec::new();
            let hello = Frame::Hello {
                cluster: self.config.cluster.name.clone(),
                from: Sender::Client,
            };
            encode_frame(&hello, &mut out);
            s.write_all(&out).map_err(unreachable)?;
            self.buf.clear();
            let hello = read_frame(&mut s, &mut self.buf)
                .map_err(|e| e.into_client_error(node, addr.to_string()))?;
            match hello {
                Frame::HelloOk { .. } => {}
                Frame::HelloReject { code, reason } => {
                    return Err(ClientError::Server {
                        code,
                        message: reason,
                    })
                }
                other => {
                    return Err(ClientError::Unexpected {
                        node,
                        answer: format!("{other:?}"),
                    })
                }
            }
            self.conn = Some((node, s));
        }
        Ok(&mut self.conn.as_mut().expect("just set").1)
    }

    /// One request to one node, no retries.
    pub fn call(&mut self, node: NodeId, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut out = Vec::new();
        encode_frame(&Frame::Request { request_id, body }, &mut out);
        let addr = self
            .addr_of(node)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let result = (|| {
            let s = self.connect(node)?;
            s.write_all(&out)
                .map_err(|source| ClientError::Unreachable {
                    node,
                    addr: addr.clone(),
                    source,
                })?;
            loop {
                let mut buf = std::mem::take(&mut self.buf);
                let s = &mut self.conn.as_mut().expect("connected").1;
                let frame = read_frame(s, &mut buf);
                self.buf = buf;
                match frame.map_err(|e| e.into_client_error(node, addr.clone()))? {
                    Frame::Response {
                        request_id: r,
                        body,
                    } if r == request_id => return Ok(body),
                    Frame::Response { .. } => continue,
                    other => {
                        return Err(ClientError::Unexpected {
                            node,
                            answer: format!("{other:?}"),
                        })
                    }
                }
            }
        })();
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Entries `from..=to` of `node`'s log (`to` 0: to its end), fetched in
    /// chunks, with the node's commit index.
    pub fn log(
        &mut self,
        node: NodeId,
        from: u64,
        to: u64,
    ) -> Result<(LogIndex, Vec<Entry>), ClientError> {
        let mut entries = Vec::new();
        let mut next = from.max(1);
        loop {
            let body = RequestBody::Log {
                from: LogIndex(next),
                to: LogIndex(to),
                entries_max: 10_000,
            };
            match self.call(node, body)? {
                ResponseBody::Log {
                    commit_index,
                    last_index,
                    entries: got,
                    ..
                } => {
                    let done = got.is_empty()
                        || got.last().map(|e| e.index)
                            >= Some(if to == 0 { last_index } else { LogIndex(to) });
                    next = got.last().map_or(next, |e| e.index.0 + 1);
                    entries.extend(got);
                    if done {
                        return Ok((commit_index, entries));
                    }
                }
                other => {
                    return Err(ClientError::Unexpected {
                        node,
                        answer: format!("{other:?}"),
                    })
                }
            }
        }
    }

    /// A key-value operation, following redirects and retrying (with the
    /// same sequence number) until a leader answers or the timeout passes.
    /// A stale read (`stale_read`) is answered by the target node alone,
    /// from its own state; if it stays unreachable, that is the error.
    pub fn kv(&mut self, op: Op, stale_read: bool) -> Result<(LogIndex, OpResult), ClientError> {
        // A session's seq counts writes: a read ignores it, and the first
        // write of a client id must come with seq 1.
        if !matches!(op, Op::Get { .. }) {
            self.seq += 1;
        }
        let command = Command {
            client_id: self.client_id,
            seq: self.seq,
            op,
        };
        let start = Instant::now();
        let mut ids = self.known_ids();
        let mut last = String::from("nothing tried");
        let mut unreachable = None;
        let mut attempt = 0usize;
        while start.elapsed() < self.timeout {
            let node = self.target;
            let body = RequestBody::Kv {
                command: command.clone(),
                stale_read,
            };
            match self.call(node, body) {
                Ok(ResponseBody::Kv { index, result }) => return Ok((index, result)),
                Ok(ResponseBody::NotLeader {
                    leader,
                    leader_addr,
                }) => {
                    last = format!("{node} is not the leader");
                    if let Some(l) = leader {
                        if self.learn(l, &leader_addr) {
                            ids = self.known_ids();
                        }
                    }
                    match leader {
                        Some(l) if l != node => {
                            self.target = l;
                            continue;
                        }
                        _ => {
                            self.target = ids
                                [(ids.iter().position(|&i| i == node).unwrap_or(0) + 1) % ids.len()]
                        }
                    }
                }
                Ok(ResponseBody::Error { code, message }) => {
                    // DiskFull: this copy was not proposed, but one sent
                    // to an earlier leader may still apply, so the same
                    // seq is retried; the full leader hands over within
                    // an election timeout.
                    if matches!(
                        code,
                        ErrorCode::Unavailable
                            | ErrorCode::TooBusy
                            | ErrorCode::Timeout
                            | ErrorCode::DiskFull
                    ) {
                        last = format!("{node}: {message}");
                    } else {
                        if code == ErrorCode::BadRequest
                            && !matches!(command.op, Op::Get { .. })
                            && command.seq == self.seq
                        {
                            // Refused before it was proposed (a limit): the
                            // seq was not used, and must be reused if it
                            // was the session's first (docs/PROTOCOL.md).
                            self.seq -= 1;
                        }
                        return Err(ClientError::Server { code, message });
                    }
                }
                Ok(other) => {
                    return Err(ClientError::Unexpected {
                        node,
                        answer: format!("{other:?}"),
                    })
                }
                // A stale read is of the target's own state: another node
                // must not answer in its place. A node that sent a bad
                // frame is passed over like one that cannot be reached.
                Err(e @ (ClientError::Unreachable { .. } | ClientError::BadFrame { .. }))
                    if stale_read =>
                {
                    unreachable = Some(e);
                }
                Err(e @ (ClientError::Unreachable { .. } | ClientError::BadFrame { .. })) => {
                    last = e.to_string();
                    self.target =
                        ids[(ids.iter().position(|&i| i == node).unwrap_or(0) + 1) % ids.len()];
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis((20 * attempt as u64).min(200)));
        }
        if let Some(e) = unreachable {
            return Err(e);
        }
        Err(ClientError::NoLeader {
            waited: start.elapsed(),
            last,
        })
    }
}

/// Reads one whole frame (blocking).
fn read_frame(s: &mut impl Read, buf: &mut Vec<u8>) -> Result<Frame, ReadError> {
    let mut chunk = [0u8; 16 << 10];
    loop {
        match decode_frame(buf) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => return Err(ReadError::Frame(e)),
        }
        let n = s.read(&mut chunk).map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::path::Path;

    fn config_for(addr: std::net::SocketAddr) -> Config {
        let text = format!(
            "[cluster]\nname = \"t\"\ndata_dir = \"d\"\nelection_timeout_ms = [150, 300]\n\
             heartbeat_interval_ms = 50\n\n[[node]]\nid = 1\naddr = \"{addr}\"\n"
        );
        Config::parse(&text, Path::new("cluster.toml")).expect("test config")
    }

    /// A node that answers the Hello with bytes that are not a frame gives
    /// a `BadFrame` naming the node and the frame error, not an I/O error.
    #[test]
    fn client_bad_frame_is_a_typed_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let _ = s.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0]);
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink);
        });
        let mut c = Client::new(config_for(addr), None);
        let e = c.call(NodeId(1), RequestBody::Status).unwrap_err();
        match &e {
            ClientError::BadFrame { node, source, .. } => {
                assert_eq!(*node, NodeId(1));
                assert_eq!(*source, FrameError::BadMagic(0xdead));
            }
            other => panic!("expected a bad frame, got {other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with("protocol error: n1 at 127.0.0.1:"),
            "{e}"
        );
        drop(c);
        server.join().expect("server");
    }

    #[test]
    fn client_node_not_in_config() {
        let mut c = Client::new(config_for("127.0.0.1:9".parse().expect("addr")), None);
        let e = c.call(NodeId(7), RequestBody::Status).unwrap_err();
        assert!(matches!(e, ClientError::NotInConfig { node } if node == NodeId(7)));
        assert_eq!(e.to_string(), "protocol error: n7 is not in the config");
    }
}
