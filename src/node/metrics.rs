//! Metrics for operators: with `metrics_addr` set for the node in
//! cluster.toml, the node serves the Prometheus text format (version
//! 0.0.4) at `http://<metrics_addr>/metrics`.
//!
//! Why a thread and not the event loop: the loop keeps every value in
//! plain fields it alone writes (no atomics, no locks on the hot path) and,
//! every `PUBLISH_EVERY`, copies them into a shared snapshot with a
//! `try_lock` that never waits. A small thread owns a blocking listener,
//! answers each scrape from the latest snapshot, and closes the connection.
//! A slow or hostile scraper, or a bug in the HTTP handling, can then only
//! delay other scrapes: it never holds the loop, its heartbeats or its
//! fsync reports, and the loop's `mio::Poll` keeps its one `Waker` for the
//! storage thread. No HTTP or metrics crate is needed for one GET and a
//! page of text; the format is small (`# HELP`, `# TYPE`, one sample a
//! line, histograms as cumulative `_bucket{le=...}` with `_sum` and
//! `_count`).
//!
//! Where each value comes from, without touching the core or the driver:
//!
//! | metric | measured |
//! |---|---|
//! | `raft_term`, `raft_role`, `raft_commit_index`, `raft_applied_index`, `raft_first_log_index`, `raft_last_log_index` | read from the core at each publish |
//! | `raft_leader_changes_total` | the leader the core knows differs from the one it knew after the last loop iteration (a new leader, not a lost one) |
//! | `raft_proposals_total` | client commands this node appended to its log as leader (entries of its own term handed to storage) |
//! | `raft_commit_latency_seconds` | at the leader, from handing an entry to storage (its append) to the commit index passing it, one observation per entry |
//! | `raft_fsync_latency_seconds` | from handing a storage job to the storage thread to its report that the job is durable (one synchronous write, or write and `fdatasync`, plus any wait behind the batch before it); a write done on the loop itself is timed directly |
//! | `raft_peer_sent_messages_total{peer}` | Raft messages handed to the link to that peer (after injected faults) |
//! | `raft_peer_sent_bytes_total{peer}` | bytes written to the socket of the link to that peer |
//! | `raft_snapshots_total{kind}` | snapshots `taken` of the node's own state, and `installed` from a leader |
//! | `raft_snapshot_duration_seconds` | the loop time of the step that took or installed a snapshot (encoding the state and compacting the log dominate it; the file is written in the background) |

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::raft::{EntryKind, LogIndex, Message, NodeId, Role, Term};
use crate::storage::Job;

use super::driver::{Disk, Driver, DriverError, DriverEvent};
use super::Node;

/// How often the loop copies its values for the scraper: a scrape sees
/// values at most this old.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Bytes of an HTTP request read at most; a longer one is refused.
const REQUEST_BYTES_MAX: usize = 8 << 10;
/// How long one scrape may take to send its request or read the answer.
const SCRAPE_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Storage jobs and leader appends remembered for timing at most (the
/// driver bounds what is in flight far below this; past it, the oldest
/// are forgotten rather than memory grown).
const IN_FLIGHT_MAX: usize = 1 << 16;

/// Upper bounds of the latency histograms' buckets, in seconds: from
/// 50 µs (a follower's lone write on a fast disk) to 10 s (a stall).
const LATENCY_BOUNDS_S: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// A Prometheus histogram: counts per bucket (not cumulative here; the
/// text is), the sum of the observations and their number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; LATENCY_BOUNDS_S.len()],
    /// Observations above the last bound (`le="+Inf"` adds them).
    over: u64,
    sum_s: f64,
    count: u64,
}

impl Histogram {
    /// `n` observations of `d` each.
    pub fn observe_n(&mut self, d: Duration, n: u64) {
        let s = d.as_secs_f64();
        match LATENCY_BOUNDS_S.iter().position(|&b| s <= b) {
            Some(i) => self.counts[i] += n,
            None => self.over += n,
        }
        self.sum_s += s * n as f64;
        self.count += n;
    }

    pub fn observe(&mut self, d: Duration) {
        self.observe_n(d, 1);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in LATENCY_BOUNDS_S.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            cumulative + self.over,
            self.sum_s,
            self.count
        );
    }
}

/// What one peer link carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSent {
    pub peer: NodeId,
    pub messages: u64,
    pub bytes: u64,
}

/// Every value a scrape shows, as of one instant of the loop.
#[derive(Clone, Debug, PartialEq)]
pub struct Values {
    pub node: NodeId,
    pub cluster: String,
    pub term: Term,
    pub role: Role,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub first_log_index: LogIndex,
    pub last_log_index: LogIndex,
    pub leader_changes: u64,
    pub proposals: u64,
    pub commit_latency: Histogram,
    pub fsync_latency: Histogram,
    pub peers: Vec<PeerSent>,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub snapshot_duration: Histogram,
}

impl Values {
    /// A node's values before anything happened.
    pub fn new(node: NodeId, cluster: &str, peers: &[NodeId]) -> Values {
        Values {
            node,
            cluster: cluster.to_string(),
            term: Term(0),
            role: Role::Follower,
            commit_index: LogIndex(0),
            applied_index: LogIndex(0),
            first_log_index: LogIndex(0),
            last_log_index: LogIndex(0),
            leader_changes: 0,
            proposals: 0,
            commit_latency: Histogram::default(),
            fsync_latency: Histogram::default(),
            peers: peers
                .iter()
                .map(|&peer| PeerSent {
                    peer,
                    messages: 0,
                    bytes: 0,
                })
                .collect(),
            snapshots_taken: 0,
            snapshots_installed: 0,
            snapshot_duration: Histogram::default(),
        }
    }

    /// The Prometheus text format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP raft_node_info This node's id and cluster (always 1).\n# TYPE raft_node_info gauge\nraft_node_info{{node=\"{}\",cluster=\"{}\"}} 1",
            self.node,
            label_value(&self.cluster)
        );
        gauge(&mut o, "raft_term", "The current term.", self.term.0);
        let _ = writeln!(
            o,
            "# HELP raft_role The node's role: 1 for the role it has, 0 for the others.\n# TYPE raft_role gauge"
        );
        for r in [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
        ] {
            let _ = writeln!(
                o,
                "raft_role{{role=\"{}\"}} {}",
                r.name(),
                u8::from(r == self.role)
            );
        }
        gauge(
            &mut o,
            "raft_commit_index",
            "The highest log index known committed.",
            self.commit_index.0,
        );
        gauge(
            &mut o,
            "raft_applied_index",
            "The highest log index applied to the state machine.",
            self.applied_index.0,
        );
        gauge(
            &mut o,
            "raft_first_log_index",
            "The first index the log holds (after the last snapshot's compaction).",
            self.first_log_index.0,
        );
        gauge(
            &mut o,
            "raft_last_log_index",
            "The last index of the log.",
            self.last_log_index.0,
        );
        counter(
            &mut o,
            "raft_leader_changes_total",
            "Times this node learned of a new leader (itself included).",
            self.leader_changes,
        );
        counter(
            &mut o,
            "raft_proposals_total",
            "Client commands this node appended to its log as leader.",
            self.proposals,
        );
        self.commit_latency.render(
            &mut o,
            "raft_commit_latency_seconds",
            "At the leader, from an entry's append to its commit.",
        );
        self.fsync_latency.render(
            &mut o,
            "raft_fsync_latency_seconds",
            "From handing a storage job to the storage thread to its durable report.",
        );
        let _ = writeln!(o, "# HELP raft_peer_sent_messages_total Raft messages handed to the link to each peer.\n# TYPE raft_peer_sent_messages_total counter");
        for p in &self.peers {
            let _ = writeln!(
                o,
                "raft_peer_sent_messages_total{{peer=\"{}\"}} {}",
                p.peer, p.messages
            );
        }
        let _ = writeln!(o, "# HELP raft_peer_sent_bytes_total Bytes written to the link to each peer.\n# TYPE raft_peer_sent_bytes_total counter");
        for p in &self.peers {
            let _ = writeln!(
                o,
                "raft_peer_sent_bytes_total{{peer=\"{}\"}} {}",
                p.peer, p.bytes
            );
        }
        let _ = writeln!(
            o,
            "# HELP raft_snapshots_total Snapshots taken of this node's state, and installed from a leader.\n# TYPE raft_snapshots_total counter\nraft_snapshots_total{{kind=\"taken\"}} {}\nraft_snapshots_total{{kind=\"installed\"}} {}",
            self.snapshots_taken, self.snapshots_installed
        );
        self.snapshot_duration.render(
            &mut o,
            "raft_snapshot_duration_seconds",
            "Event-loop time of the step that took or installed a snapshot.",
        );
        o
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines
/// escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The loop's side: the values, and what it needs to time things.
pub(super) struct Metrics {
    values: Values,
    shared: Arc<Mutex<Values>>,
    next_publish: Instant,
    leader_seen: Option<NodeId>,
    /// Storage jobs handed over and not yet durable: (seq, when).
    jobs: VecDeque<(u64, Instant)>,
    /// The leader's appends not yet committed: (last index, entries,
    /// when), oldest first.
    appends: VecDeque<(LogIndex, u64, Instant)>,
}

impl Metrics {
    /// Binds `addr` and starts the thread that answers scrapes.
    pub(super) fn start(
        addr: SocketAddr,
        node: NodeId,
        cluster: &str,
        peers: &[NodeId],
    ) -> std::io::Result<Metrics> {
        let listener = TcpListener::bind(addr)?;
        let values = Values::new(node, cluster, peers);
        let shared = Arc::new(Mutex::new(values.clone()));
        let for_thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, &for_thread))?;
        info!("{node}: metrics at http://{addr}/metrics");
        Ok(Metrics {
            values,
            shared,
            next_publish: Instant::now(),
            leader_seen: None,
            jobs: VecDeque::new(),
            appends: VecDeque::new(),
        })
    }

    /// Storage reported every job up to `seq` durable.
    pub(super) fn durable(&mut self, seq: u64, now: Instant) {
        while let Some(&(s, t)) = self.jobs.front() {
            if s > seq {
                break;
            }
            self.values.fsync_latency.observe(now - t);
            self.jobs.pop_front();
        }
    }

    pub(super) fn sent_message(&mut self, to: NodeId) {
        if let Some(p) = self.values.peers.iter_mut().find(|p| p.peer == to) {
            p.messages += 1;
        }
    }

    pub(super) fn sent_bytes(&mut self, to: NodeId, bytes: usize) {
        if let Some(p) = self.values.peers.iter_mut().find(|p| p.peer == to) {
            p.bytes += bytes as u64;
        }
    }

    /// After the driver's `Ready`s of one loop iteration, which took
    /// `ready_time`: leader changes, commits, snapshots, and (now and
    /// then) a copy for the scraper.
    pub(super) fn after_ready(&mut self, driver: &mut Driver, ready_time: Duration, now: Instant) {
        let raft = driver.raft();
        let leader = raft.leader();
        if leader.is_some() && leader != self.leader_seen {
            self.values.leader_changes += 1;
        }
        self.leader_seen = leader;
        if raft.role() == Role::Leader {
            let commit = raft.commit_index();
            while let Some(&(last, n, t)) = self.appends.front() {
                if last > commit {
                    break;
                }
                self.values.commit_latency.observe_n(now - t, n);
                self.appends.pop_front();
            }
        } else {
            self.appends.clear();
        }
        for e in driver.events.drain(..) {
            match e {
                DriverEvent::SnapshotTaken(_) => {
                    self.values.snapshots_taken += 1;
                    self.values.snapshot_duration.observe(ready_time);
                }
                DriverEvent::SnapshotInstalled(_) => {
                    self.values.snapshots_installed += 1;
                    self.values.snapshot_duration.observe(ready_time);
                }
                DriverEvent::Elected { .. } | DriverEvent::Applied(_) => {}
            }
        }
        if now >= self.next_publish {
            self.next_publish = now + PUBLISH_EVERY;
            self.publish(driver);
        }
    }

    fn publish(&mut self, driver: &Driver) {
        let raft = driver.raft();
        let v = &mut self.values;
        v.term = raft.current_term();
        v.role = raft.role();
        v.commit_index = raft.commit_index();
        v.applied_index = raft.last_applied();
        v.first_log_index = raft.log().first_index();
        v.last_log_index = raft.log().last_index();
        // Never wait: a scrape copying the values out holds the lock for
        // microseconds, and the next publish comes soon.
        if let Ok(mut shared) = self.shared.try_lock() {
            shared.clone_from(v);
        }
    }
}

/// The storage thread, timed: every job handed over (and every write done
/// on the loop) passes here on its way to the disk.
pub(super) struct MeteredDisk<'a> {
    pub(super) inner: &'a mut dyn Disk,
    pub(super) metrics: &'a mut Metrics,
    /// The term this node leads, if it leads: its entries of that term
    /// are its proposals.
    pub(super) leading: Option<Term>,
}

impl MeteredDisk<'_> {
    fn appended(&mut self, job: &Job, now: Instant) {
        let Some(term) = self.leading else {
            return;
        };
        let ours = job.entries.iter().filter(|e| e.term == term);
        let commands = ours
            .clone()
            .filter(|e| e.kind == EntryKind::Command)
            .count() as u64;
        let (n, last) = ours.fold((0u64, None), |(n, _), e| (n + 1, Some(e.index)));
        self.metrics.values.proposals += commands;
        if let Some(last) = last {
            if self.metrics.appends.len() >= IN_FLIGHT_MAX {
                self.metrics.appends.pop_front();
            }
            self.metrics.appends.push_back((last, n, now));
        }
    }
}

impl Disk for MeteredDisk<'_> {
    fn submit(&mut self, job: Job) -> Result<(), DriverError> {
        let now = Instant::now();
        self.appended(&job, now);
        if self.metrics.jobs.len() >= IN_FLIGHT_MAX {
            self.metrics.jobs.pop_front();
        }
        self.metrics.jobs.push_back((job.seq, now));
        Disk::submit(self.inner, job)
    }

    fn write_inline(&mut self, job: &Job) -> Result<bool, DriverError> {
        let now = Instant::now();
        self.appended(job, now);
        let r = Disk::write_inline(self.inner, job);
        self.metrics.values.fsync_latency.observe(now.elapsed());
        r
    }

    fn encode_snapshot(
        &mut self,
        job: super::snapshots::SnapshotJob,
    ) -> Result<Option<super::snapshots::SnapshotDone>, DriverError> {
        self.inner.encode_snapshot(job)
    }
}

impl Node {
    /// Lets the driver carry out its `Ready`s, timed when metrics are on.
    pub(super) fn process_ready_metered(&mut self) -> Result<(), DriverError> {
        let mut node_disk = super::NodeDisk {
            storage: &mut self.storage,
            encoder: &self.encoder,
        };
        let Some(metrics) = self.metrics.as_deref_mut() else {
            return self.driver.process_ready(&mut node_disk);
        };
        let raft = self.driver.raft();
        let leading = (raft.role() == Role::Leader).then(|| raft.current_term());
        let started = Instant::now();
        let mut disk = MeteredDisk {
            inner: &mut node_disk,
            metrics,
            leading,
        };
        let r = self.driver.process_ready(&mut disk);
        let now = Instant::now();
        metrics_after(self, now - started, now);
        r
    }

    /// A Raft message past the injected faults goes to its peer's link,
    /// counted when the link is up.
    pub(super) fn transmit_counted(&mut self, m: Message) {
        if let Some(metrics) = self.metrics.as_deref_mut() {
            if self.peers.get(&m.to).is_some_and(|l| l.token.is_some()) {
                metrics.sent_message(m.to);
            }
        }
        self.transmit(m);
    }

    /// Bytes written to the link to `to`.
    pub(super) fn count_sent_bytes(&mut self, to: NodeId, bytes: usize) {
        if let Some(m) = self.metrics.as_deref_mut() {
            m.sent_bytes(to, bytes);
        }
    }
}

fn metrics_after(node: &mut Node, ready_time: Duration, now: Instant) {
    if let Some(m) = node.metrics.as_deref_mut() {
        m.after_ready(&mut node.driver, ready_time, now);
    }
}

/// Answers scrapes one at a time until the process ends.
fn serve(listener: TcpListener, shared: &Mutex<Values>) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = answer(s, shared) {
                    debug!("metrics: a scrape failed: {e}");
                }
            }
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One HTTP/1.1 exchange: `GET /metrics` (or `/`) gets the text format,
/// anything else a 404 or 405; the connection closes after the answer.
fn answer(mut s: TcpStream, shared: &Mutex<Values>) -> std::io::Result<()> {
    s.set_read_timeout(Some(SCRAPE_IO_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_IO_TIMEOUT))?;
    let mut req = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&chunk[..n]);
        if req.len() > REQUEST_BYTES_MAX {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let line = req.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics" | "/") => {
            let values = match shared.lock() {
                Ok(v) => v.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &values.render(),
            )
        }
        ("GET", _) => respond(&mut s, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics only\n",
        ),
    }
}

fn respond(s: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(80));
        h.observe_n(Duration::from_millis(3), 2);
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00005\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
        assert!(out.contains("# TYPE x_seconds histogram\n"), "{out}");
    }

    #[test]
    fn values_render_every_family_once() {
        let mut v = Values::new(NodeId(1), "de\"mo", &[NodeId(2)]);
        v.role = Role::Leader;
        v.peers[0].messages = 3;
        v.peers[0].bytes = 400;
        let text = v.render();
        assert!(text.contains("raft_node_info{node=\"n1\",cluster=\"de\\\"mo\"} 1"));
        assert!(text.contains("raft_role{role=\"leader\"} 1\n"));
        assert!(text.contains("raft_role{role=\"follower\"} 0\n"));
        assert!(text.contains("raft_peer_sent_bytes_total{peer=\"n2\"} 400\n"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut names: Vec<&str> = types
            .iter()
            .map(|l| l.split(' ').nth(2).unwrap_or(""))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "each family once: {types:?}");
    }
}
