//! `raft-node`: one Raft server. A single `mio` thread owns the sockets and
//! the [`Driver`] (the consensus core, the state machine and the client
//! waiters); a storage thread owns the log files.
//!
//! The rooms, one job each:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the event loop: poll, tick, drive, empty the outboxes |
//! | `driver.rs` | the pure driver: `Ready` → sends, storage jobs, held-back messages, `persisted`, apply (no mio, no sockets, no clock; the simulator runs it too) |
//! | `requests.rs` | client requests and their waiters, inside the driver |
//! | `snapshots.rs` | the node's own snapshots (frozen on the loop, encoded on a thread of their own) and a leader's, inside the driver |
//! | `net.rs` | connections: accept, read, frame decode, buffered writes |
//! | `peers.rs` | peer links (reconnect with backoff), the handshake, frames by connection kind |
//! | `clients.rs` | client frames to the driver, answers back to connections |
//! | `faults.rs` | injected partitions, blocks, drops, duplicates and delays on outgoing peer messages (disk faults: `storage::faulty`) |
//! | `signals.rs` | SIGINT/SIGTERM/SIGHUP to a stop flag |
//! | `metrics.rs` | optional Prometheus metrics, served by a small thread from values the loop publishes |
//!
//! Each loop iteration: poll sockets (bounded by the next tick), feed frames
//! to the driver, tick the core when a tick is due, let the driver carry out
//! every `Ready`, then send what it put in its outboxes.

mod clients;
pub mod driver;
mod faults;
mod members;
mod metrics;
mod net;
mod peers;
mod requests;
mod signals;
mod snapshots;
mod transfer;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::{Config, ConfigError};
use crate::raft::{self, NodeId};
use crate::storage::{
    DiskFaults, Durable, FaultyStore, Job, LogStore, Recovered, StorageError, StorageThread,
};
use crate::tls::{self, NodeTls, TlsError};
use crate::wire::{Frame, ResponseBody};

pub use driver::{Answer, ClientRef, Disk, Driver, DriverConfig, DriverError, DriverEvent};
pub use net::{
    CLIENT_CONNECTIONS_MAX, CLIENT_WRITE_BYTES_MAX, CONNECTIONS_MAX, HANDSHAKE_DEADLINE,
    PENDING_CONNECTIONS_MAX, PENDING_READ_BYTES_MAX, READ_BYTES_PER_EVENT_MAX,
};
pub use peers::PEER_WRITE_BYTES_MAX;
pub use requests::{
    COPIES_WAITING_MAX, LOG_ENTRIES_MAX, LOG_RESPONSE_BYTES_MAX, PENDING_REQUESTS_MAX,
};
pub use signals::stop_on_signals;
pub use snapshots::{SnapshotDone, SnapshotJob};

use driver::IdMap;
use faults::Faults;
use net::Conn;
use peers::PeerLink;
use snapshots::SnapshotEncoder;

/// Readiness events taken from one `poll` at most; more wait for the next.
const EVENTS_MAX: usize = 1024;
/// Ticks caught up in one loop iteration at most, after a stall (a long
/// fsync, the machine descheduling the process): past it the missed ticks
/// are dropped, so a stall does not turn into a burst of elections.
const TICKS_CATCH_UP_MAX: u32 = 5;
/// How long a stopping node keeps flushing its last answers to clients.
const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(1);

const LISTENER: Token = Token(0);
/// Wakes the event loop when the storage thread has made a batch durable,
/// or the snapshot encoder has finished a snapshot.
const WAKER: Token = Token(usize::MAX - 1);

/// Why a node could not start or had to stop.
#[derive(Debug)]
pub enum NodeError {
    /// The node's own entry in cluster.toml is missing or unusable.
    Config(ConfigError),
    Bind {
        addr: SocketAddr,
        source: io::Error,
    },
    Io(io::Error),
    /// Storage failed, or recovered state does not load.
    Driver(DriverError),
    /// A `[tls]` file is missing or unusable.
    Tls(TlsError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Config(e) => write!(f, "config: {e}"),
            NodeError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            NodeError::Io(e) => write!(f, "I/O error: {e}"),
            NodeError::Driver(e) => write!(f, "{e}"),
            NodeError::Tls(e) => write!(f, "tls: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

impl From<io::Error> for NodeError {
    fn from(e: io::Error) -> Self {
        NodeError::Io(e)
    }
}

impl From<DriverError> for NodeError {
    fn from(e: DriverError) -> Self {
        NodeError::Driver(e)
    }
}

/// The node's TLS from `[tls]`, or `None` (with the one warning that
/// nothing is authenticated) when cluster.toml has no such section.
fn load_tls(config: &Config, id: NodeId) -> Result<Option<NodeTls>, NodeError> {
    let Some(t) = &config.tls else {
        warn!(
            "{id}: no [tls] in {}: connections are not authenticated; anyone who reaches \
             this port can read, write, inject faults and pose as a peer",
            config.path.display()
        );
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
        return Err(NodeError::Tls(TlsError {
            path: config.path.clone(),
            message: "[tls] has no cert and key for the node".into(),
        }));
    };
    let (cert, key) = (tls::for_node(cert, id), tls::for_node(key, id));
    let node_tls = NodeTls::load(&t.ca, &cert, &key).map_err(NodeError::Tls)?;
    info!("{id}: TLS on: certificate {}", cert.display());
    Ok(Some(node_tls))
}

/// Raises the soft limit on open files to the hard one: the node's
/// own limits (`CONNECTIONS_MAX`) bound its connections, not the default
/// of 1024 file descriptors.
fn raise_fd_limit(id: NodeId) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            log::debug!(
                "{id}: open files limit raised from {before} to {}",
                lim.rlim_max
            );
        }
    }
}

/// The storage thread is the node's disk: jobs go down its channel, and
/// its reports come back through the waker to [`Node::storage_done`].
impl Disk for StorageThread {
    fn submit(&mut self, job: Job) -> Result<(), DriverError> {
        if StorageThread::submit(self, job) {
            Ok(())
        } else {
            Err(DriverError::Storage(StorageError::Stopped {
                what: "the storage thread has stopped",
            }))
        }
    }

    /// Declined while a disk fault is in force or the disk is full: the
    /// storage thread, not the event loop, stalls and retries.
    fn write_inline(&mut self, job: &Job) -> Result<bool, DriverError> {
        if !self.inline_allowed() {
            return Ok(false);
        }
        match StorageThread::write_inline(self, job) {
            Ok(()) => Ok(true),
            // Nothing durable; the storage thread writes it over and
            // retries until space returns.
            Err(e) if e.is_no_space() => Ok(false),
            Err(e) => Err(DriverError::Storage(e)),
        }
    }
}

/// The node's disk as the driver sees it: the storage thread for the log,
/// and the encoder thread for snapshots.
struct NodeDisk<'a> {
    pub(super) storage: &'a mut StorageThread,
    pub(super) encoder: &'a SnapshotEncoder,
}

impl Disk for NodeDisk<'_> {
    fn submit(&mut self, job: Job) -> Result<(), DriverError> {
        Disk::submit(self.storage, job)
    }

    fn write_inline(&mut self, job: &Job) -> Result<bool, DriverError> {
        Disk::write_inline(self.storage, job)
    }

    /// Off the event loop: the result comes back through the waker to
    /// [`Node::storage_done`].
    fn encode_snapshot(&mut self, job: SnapshotJob) -> Result<Option<SnapshotDone>, DriverError> {
        self.encoder.encode(job)?;
        Ok(None)
    }
}

/// The running node.
pub struct Node {
    config: Config,
    id: NodeId,
    addr: SocketAddr,
    driver: Driver,
    storage: StorageThread,
    /// Encodes the node's snapshots while the loop serves.
    encoder: SnapshotEncoder,
    poll: Poll,
    listener: TcpListener,
    conns: IdMap<Token, Conn>,
    next_token: usize,
    peers: BTreeMap<NodeId, PeerLink>,
    /// The data dir: snapshots received are written there.
    data_dir: std::path::PathBuf,
    /// The last snapshot transfer id this node started.
    next_transfer: u64,
    /// Snapshots received are decoded on a thread of their own, which
    /// reports here and wakes the loop (see `transfer`).
    decode_waker: Arc<Waker>,
    decoded_tx: crossbeam_channel::Sender<transfer::Decoded>,
    decoded_rx: crossbeam_channel::Receiver<transfer::Decoded>,
    /// A received snapshot is being decoded.
    decoding: bool,
    /// Connections with bytes to send, flushed once per loop iteration.
    dirty: Vec<Token>,
    /// Connections whose read stopped at `READ_BYTES_PER_EVENT_MAX` with
    /// more to read: read again next iteration (readiness is
    /// edge-triggered, so no new event would come for those bytes).
    reread: Vec<Token>,
    /// Reused for every socket read.
    read_chunk: Vec<u8>,
    faults: Faults,
    /// Mutual TLS for every connection, with `[tls]` in cluster.toml.
    tls: Option<NodeTls>,
    /// Connections accepted and not past their Hello, by accept time
    /// (some may have moved on or closed: skipped when met).
    pending: VecDeque<(Instant, Token)>,
    /// Connections of kind Pending open now.
    pending_open: usize,
    /// Pending connections closed for the deadline or the limit, in all.
    pending_dropped: u64,
    /// Client connections past their Hello open now.
    clients_open: usize,
    /// The disk fault of `faults.spec`, applied by the storage thread.
    disk_faults: Arc<DiskFaults>,
    /// With `metrics_addr` in cluster.toml: the values scrapes show.
    metrics: Option<Box<metrics::Metrics>>,
    started: Instant,
    stop: Arc<AtomicBool>,
}

impl Node {
    /// Binds the listener and restarts the driver from what storage
    /// recovered.
    pub fn new(
        config: Config,
        id: NodeId,
        recovered: Recovered,
        store: Box<dyn LogStore>,
        stop: Arc<AtomicBool>,
    ) -> Result<Node, NodeError> {
        let me = config.require_node(id).map_err(NodeError::Config)?.clone();
        let (emin, emax) = config.election_timeout_ticks();
        let mut rc = raft::Config::new(id, config.cluster.initial_members.clone());
        rc.initial_addrs = config
            .nodes
            .iter()
            .map(|n| (n.id, n.addr_text.clone()))
            .collect();
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
            recovered.hard_state.current_term,
            recovered.hard_state.voted_for.map(|v| v.to_string()),
            recovered
                .snapshot
                .as_ref()
                .map_or("no snapshot".to_string(), |s| format!(
                    "a snapshot at {}/{} ({} bytes)",
                    s.index,
                    s.term,
                    s.data.len()
                )),
            recovered.entries.len()
        );
        let dc = DriverConfig {
            snapshot_entries: config.cluster.snapshot_entries,
            snapshot_keep_entries: config.cluster.snapshot_keep_entries,
            addrs: config
                .nodes
                .iter()
                .map(|n| (n.id, n.addr.to_string()))
                .collect(),
        };
        let mut driver = Driver::restore(rc, recovered, dc).map_err(|e| match e {
            DriverError::Snapshot(why) => NodeError::Driver(DriverError::Snapshot(format!(
                "{}: {why}",
                me.data_dir.join("snapshot").display()
            ))),
            e => NodeError::Driver(e),
        })?;
        let tls = load_tls(&config, id)?;
        raise_fd_limit(id);
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(me.addr).map_err(|source| NodeError::Bind {
            addr: me.addr,
            source,
        })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let metrics = match me.metrics_addr {
            Some(addr) => {
                let peers: Vec<NodeId> = config.ids().into_iter().filter(|&p| p != id).collect();
                let m = metrics::Metrics::start(addr, id, &config.cluster.name, &peers)
                    .map_err(|source| NodeError::Bind { addr, source })?;
                // Snapshots reach the metrics as the driver's events.
                driver.record_events = true;
                Some(Box::new(m))
            }
            None => None,
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let encoder_waker = Arc::clone(&waker);
        let decode_waker = Arc::clone(&waker);
        let (decoded_tx, decoded_rx) = crossbeam_channel::unbounded();
        let encoder = SnapshotEncoder::spawn(
            me.data_dir.clone(),
            config.cluster.fsync,
            Box::new(move || {
                let _ = encoder_waker.wake();
            }),
        )?;
        let disk_faults = Arc::new(DiskFaults::default());
        let store = Box::new(FaultyStore::new(store, Arc::clone(&disk_faults)));
        let storage = StorageThread::spawn(
            store,
            Some(Box::new(move || {
                let _ = waker.wake();
            })),
        )?
        .with_disk_faults(Arc::clone(&disk_faults));
        let now = Instant::now();
        let peers = config
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| (n.id, PeerLink::new(n.addr, now)))
            .collect();
        Ok(Node {
            id,
            addr: me.addr,
            driver,
            storage,
            encoder,
            poll,
            listener,
            conns: IdMap::default(),
            next_token: 1,
            peers,
            data_dir: me.data_dir.clone(),
            next_transfer: 0,
            decode_waker,
            decoded_tx,
            decoded_rx,
            decoding: false,
            dirty: Vec::new(),
            reread: Vec::new(),
            read_chunk: vec![0; net::READ_CHUNK_BYTES],
            faults: Faults::new(seed),
            tls,
            pending: VecDeque::new(),
            pending_open: 0,
            pending_dropped: 0,
            clients_open: 0,
            disk_faults,
            metrics,
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
        let mut events = Events::with_capacity(EVENTS_MAX);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut timeout = next_tick.saturating_duration_since(now);
            if let Some(due) = self.faults.next_due() {
                timeout = timeout.min(due.saturating_duration_since(now));
            }
            if !self.reread.is_empty() {
                timeout = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for token in std::mem::take(&mut self.reread) {
                self.read(token, false);
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
            while now >= next_tick && ticks < TICKS_CATCH_UP_MAX {
                self.driver.tick();
                next_tick += tick;
                ticks += 1;
            }
            if now >= next_tick {
                next_tick = now + tick;
            }
            self.release_delayed(now);
            self.expire_pending(now, false);
            self.driver.disk_full = self.storage.no_space();
            self.maintain_peer_links(now);
            self.expire_transfers(now);
            self.process_ready_metered()?;
            self.sync_peer_links(now);
            self.drain_outboxes();
            self.flush_dirty();
        }
        self.shut_down_clients();
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

    /// The storage thread reported: the driver sends what waited and tells
    /// the core. The encoder finished a snapshot: the core compacts behind
    /// it and the storage thread writes it.
    fn storage_done(&mut self) -> Result<(), NodeError> {
        while let Ok(d) = self.storage.done().try_recv() {
            match d {
                Durable::Upto(seq) => {
                    if let Some(m) = self.metrics.as_deref_mut() {
                        m.durable(seq, Instant::now());
                    }
                    self.driver.durable(seq)
                }
                Durable::Failed(e) => return Err(NodeError::Driver(DriverError::Storage(e))),
            }
        }
        while let Some(done) = self.encoder.finished() {
            let mut disk = NodeDisk {
                storage: &mut self.storage,
                encoder: &self.encoder,
            };
            self.driver.snapshot_encoded(done, &mut disk)?;
        }
        while let Ok(d) = self.decoded_rx.try_recv() {
            self.snapshot_decoded(d);
        }
        Ok(())
    }

    /// Sends what the driver put in its outboxes: peer messages through
    /// the fault layer, answers onto their client connections.
    fn drain_outboxes(&mut self) {
        let mut messages = std::mem::take(&mut self.driver.messages);
        for m in messages.drain(..) {
            self.send_message(m);
        }
        self.driver.messages = messages;
        let mut answers = std::mem::take(&mut self.driver.answers);
        for a in answers.drain(..) {
            self.respond(a.to, a.body);
        }
        self.driver.answers = answers;
    }

    fn respond(&mut self, to: ClientRef, body: ResponseBody) {
        let frame = Frame::Response {
            request_id: to.request_id,
            body,
        };
        self.send_frame(Token(to.conn as usize), &frame);
    }

    /// Stopping: every waiting request is answered Unavailable, and the
    /// answers are flushed for up to `SHUTDOWN_FLUSH_MAX` before the
    /// connections close with the process.
    fn shut_down_clients(&mut self) {
        let n = self.driver.shut_down();
        if n > 0 {
            info!("{}: stopping: answered {n} waiting requests", self.id);
        }
        self.drain_outboxes();
        let deadline = Instant::now() + SHUTDOWN_FLUSH_MAX;
        loop {
            self.flush_dirty();
            let pending: Vec<Token> = self
                .conns
                .iter()
                .filter(|(_, c)| c.is_client() && c.has_output())
                .map(|(t, _)| *t)
                .collect();
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            for t in pending {
                self.mark_dirty(t);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
