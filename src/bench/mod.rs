//! A closed-loop load generator: many logical clients, each with its own
//! client id and one request in flight, sharing a number of connections
//! (one per client by default) through the multiplexed client
//! ([`crate::client::mux`]), from one or a few threads.
//!
//! The mux follows "not the leader" hints, retries a write with the same
//! client id and sequence number (the state machine applies it once), and
//! gives up on an operation after `op_timeout`, whose outcome is then
//! unknown. Every operation can be recorded as one JSON line for
//! `raft-ctl check` (docs/HISTORY.md), each logical client a history client.

pub mod hist;
pub mod series;
pub mod timeline;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::mux::{Mux, MuxDone, MuxOptions, MuxReply, MuxRequest};
use crate::config::Config;
use crate::kv::{Command, Op, OpResult};
use crate::rng::Rng;
use crate::wire::{RequestBody, ResponseBody};
pub use hist::Histogram;
pub use series::Series;

/// Nanoseconds on the system's monotonic clock (`CLOCK_MONOTONIC`), shared
/// by every process on the machine: histories recorded by different
/// processes line up.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The disk's own commit latency: a loop of `pwrite` of one 125-byte
/// record at the end of a fresh file in `dir`, then `fdatasync`, for `secs`
/// seconds. Returns each iteration's latency in nanoseconds, sorted.
pub fn fdatasync_loop(dir: &std::path::Path, secs: f64) -> io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!(".raftkit-fdatasync-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let rec = [7u8; 125];
    let mut lat = Vec::new();
    let mut off = 0;
    let start = Instant::now();
    let result = loop {
        if start.elapsed().as_secs_f64() >= secs && !lat.is_empty() {
            break Ok(());
        }
        let t = Instant::now();
        if let Err(e) = f.write_all_at(&rec, off).and_then(|_| f.sync_data()) {
            break Err(e);
        }
        lat.push(t.elapsed().as_nanos() as u64);
        off += rec.len() as u64;
    };
    let _ = std::fs::remove_file(&path);
    result?;
    lat.sort_unstable();
    Ok(lat)
}

/// Which operations the clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpMix {
    Put,
    Get,
    /// Gets (`read_pct` %) and puts.
    Mixed {
        read_pct: u32,
    },
    /// Gets (`read_pct` %), the rest puts, cas and deletes (6:3:1): the
    /// drills' workload.
    Kv {
        read_pct: u32,
    },
}

/// Where clients connect first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    Spread,
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub clients: usize,
    /// Connections the clients share (0: one per client). Client `i` uses
    /// connection `i % conns` of its thread.
    pub conns: usize,
    /// Requests in flight per connection at most.
    pub window: usize,
    pub threads: usize,
    pub op: OpMix,
    pub keys: u64,
    /// Every operation on a key of its own (`key-0`, `key-1`, … in the
    /// order they are issued, over all threads), instead of one of `keys`
    /// at random: loads that many distinct keys.
    pub distinct_keys: bool,
    /// Share of operations, in percent, on one hot key (`key-0`); the
    /// rest spread over `keys` as usual.
    pub hot_key_pct: u32,
    pub value_size: usize,
    /// Stop after this long past the warmup…
    pub duration: Option<Duration>,
    /// …or after this many operations.
    pub total: Option<u64>,
    pub warmup: Duration,
    pub target: Target,
    /// An operation without an answer after this long has an unknown
    /// outcome.
    pub op_timeout: Duration,
    /// Record every operation for the linearizability check.
    pub record: bool,
    /// Keep operations over time (`BenchResult::series`), for a picture.
    pub series: bool,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            clients: 8,
            conns: 0,
            window: 1024,
            threads: 1,
            op: OpMix::Put,
            keys: 1000,
            distinct_keys: false,
            hot_key_pct: 0,
            value_size: 100,
            duration: Some(Duration::from_secs(10)),
            total: None,
            warmup: Duration::from_secs(1),
            target: Target::Leader,
            op_timeout: Duration::from_secs(5),
            record: false,
            series: false,
            seed: 1,
        }
    }
}

/// Counters the threads update as they go, for live progress.
#[derive(Debug, Default)]
pub struct Live {
    /// The next key of `distinct_keys`, shared by the threads.
    pub next_key: AtomicU64,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct BenchResult {
    /// Operations that succeeded / failed definitely (cas mismatch, refused)
    /// / had no answer in time.
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Completed operations invoked after the warmup and before the end.
    pub measured_ops: u64,
    pub measured_secs: f64,
    pub hist: Histogram,
    pub errors: BTreeMap<String, u64>,
    pub redirects: u64,
    pub retries: u64,
    pub reconnects: u64,
    /// Nodes that answered a write successfully.
    pub leaders_seen: BTreeSet<u64>,
    /// Longest stretch without a successful write completing (after the
    /// first one, and to the end).
    pub max_write_gap: Duration,
    /// History lines (when recording).
    pub history: Vec<u8>,
    /// Operations over time (with `BenchOptions::series`).
    pub series: Option<Series>,
    pub wall_secs: f64,
}

impl BenchResult {
    pub fn ops_per_s(&self) -> f64 {
        if self.measured_secs > 0.0 {
            self.measured_ops as f64 / self.measured_secs
        } else {
            0.0
        }
    }

    fn merge(&mut self, o: BenchResult) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.unknown += o.unknown;
        self.measured_ops += o.measured_ops;
        self.measured_secs = self.measured_secs.max(o.measured_secs);
        self.hist.merge(&o.hist);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.redirects += o.redirects;
        self.retries += o.retries;
        self.reconnects += o.reconnects;
        self.leaders_seen.extend(o.leaders_seen);
        self.history.extend(o.history);
        match (&mut self.series, o.series) {
            (Some(s), Some(o)) => s.merge(&o),
            (s @ None, o) => *s = o,
            (Some(_), None) => {}
        }
        self.wall_secs = self.wall_secs.max(o.wall_secs);
    }
}

/// Runs the load; blocks until done. `live` may be watched from another
/// thread.
pub fn run(config: &Config, opts: &BenchOptions, live: Arc<Live>) -> io::Result<BenchResult> {
    let first_node = match opts.target {
        Target::Leader => find_leader(config).unwrap_or(0),
        Target::Spread => 0,
    };
    let threads = opts.threads.clamp(1, opts.clients.max(1));
    let clock_base = monotonic_ns();
    let start = Instant::now();
    let base_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ ((std::process::id() as u64) << 40);
    let mut handles = Vec::new();
    for t in 0..threads {
        let clients: Vec<usize> = (0..opts.clients).filter(|c| c % threads == t).collect();
        // This thread's share of the connections, at least one.
        let conns_all = if opts.conns == 0 {
            opts.clients
        } else {
            opts.conns.min(opts.clients)
        };
        let conns = (conns_all / threads + usize::from(t < conns_all % threads)).max(1);
        let total = opts
            .total
            .map(|n| n / threads as u64 + u64::from((t as u64) < n % threads as u64));
        let (config, opts, live) = (config.clone(), opts.clone(), Arc::clone(&live));
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn(move || -> io::Result<(BenchResult, Vec<Instant>)> {
                    let mut e = Engine::new(
                        &config, &opts, &clients, conns, first_node, start, base_id, live,
                    )?;
                    e.total = total;
                    e.clock_base = clock_base;
                    if opts.series {
                        e.result.series = Some(Series::new(clock_base, series::SLOT_NS_DEFAULT));
                    }
                    e.run()?;
                    let times = std::mem::take(&mut e.write_done);
                    Ok((e.result, times))
                })?,
        );
    }
    let mut result = BenchResult::default();
    let mut writes: Vec<Instant> = Vec::new();
    for h in handles {
        let (r, w) = h
            .join()
            .map_err(|_| io::Error::other("a bench thread panicked"))??;
        result.merge(r);
        writes.extend(w);
    }
    let end = Instant::now();
    writes.sort();
    if let Some(&first) = writes.first() {
        let mut prev = first;
        let mut gap = Duration::ZERO;
        for &w in &writes[1..] {
            gap = gap.max(w - prev);
            prev = w;
        }
        result.max_write_gap = gap.max(end - prev);
    } else {
        result.max_write_gap = end - start;
    }
    Ok(result)
}

/// The node that says it leads, by index in the config.
pub fn find_leader(config: &Config) -> Option<usize> {
    let mut client = crate::client::Client::new(config.clone(), None);
    client.timeout = Duration::from_secs(2);
    for (i, n) in config.nodes.iter().enumerate() {
        if let Ok(ResponseBody::Status(s)) = client.call(n.id, RequestBody::Status) {
            if s.status.role == crate::raft::Role::Leader {
                return Some(i);
            }
            if let Some(l) = s.status.leader {
                return config.nodes.iter().position(|n| n.id == l);
            }
        }
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Put,
    Get,
    Cas,
    Delete,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::Get => "get",
            Kind::Cas => "cas",
            Kind::Delete => "delete",
        }
    }
}

/// A logical client's operation in flight; its command (with the value
/// written) travels in the mux and comes back with the answer.
struct Pending {
    kind: Kind,
    key: u64,
    /// The value written (kept only when `keep_values`).
    value: Option<String>,
    expected: Option<Option<String>>,
    invoke: Instant,
}

struct ClientState {
    /// Number in the history (`client` field).
    number: u64,
    client_id: u64,
    seq: u64,
    pending: Option<Pending>,
    /// Last value this client saw per key (for cas).
    seen: HashMap<u64, Option<String>>,
}

/// Outcome of one operation.
enum Outcome {
    Ok(Option<String>),
    Failed(Option<String>),
    Unknown,
}

struct Engine<'a> {
    opts: &'a BenchOptions,
    mux: Mux,
    clients: Vec<ClientState>,
    rng: Rng,
    start: Instant,
    warm_end: Instant,
    end: Option<Instant>,
    total: Option<u64>,
    issued: u64,
    stopping: bool,
    live: Arc<Live>,
    result: BenchResult,
    write_done: Vec<Instant>,
    filler: String,
    /// Keep what reads return and what each client last saw of a key: only
    /// the cas mix and `--record` need them.
    keep_values: bool,
    /// Errors the mux had counted when last looked at (for `live`).
    errors_seen: u64,
    /// `monotonic_ns()` at `start`.
    clock_base: u64,
}

/// How long one poll waits at most (the end of the run is checked this
/// often).
const POLL_MAX: Duration = Duration::from_millis(5);
const DRAIN_MAX: Duration = Duration::from_secs(10);

impl<'a> Engine<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &Config,
        opts: &'a BenchOptions,
        numbers: &[usize],
        conns: usize,
        first_node: usize,
        start: Instant,
        base_id: u64,
        live: Arc<Live>,
    ) -> io::Result<Engine<'a>> {
        let clients = numbers
            .iter()
            .map(|&i| ClientState {
                number: i as u64,
                client_id: base_id.wrapping_add(i as u64 + 1),
                seq: 0,
                pending: None,
                seen: HashMap::new(),
            })
            .collect();
        let mux = Mux::new(
            config.clone(),
            MuxOptions {
                conns,
                window: opts.window,
                op_timeout: opts.op_timeout,
                first_node,
                spread: opts.target == Target::Spread,
            },
        )?;
        Ok(Engine {
            opts,
            mux,
            clients,
            rng: Rng::new(opts.seed ^ base_id ^ numbers.first().copied().unwrap_or(0) as u64),
            start,
            warm_end: start + opts.warmup,
            end: opts.duration.map(|d| start + opts.warmup + d),
            total: None,
            issued: 0,
            stopping: false,
            live,
            result: BenchResult::default(),
            write_done: Vec::new(),
            filler: "x".repeat(opts.value_size),
            keep_values: opts.record || matches!(opts.op, OpMix::Kv { .. }),
            errors_seen: 0,
            clock_base: 0,
        })
    }

    /// `t` on the monotonic clock of `monotonic_ns`.
    fn ns(&self, t: Instant) -> u64 {
        self.clock_base + (t - self.start).as_nanos() as u64
    }

    fn run(&mut self) -> io::Result<()> {
        let now = Instant::now();
        for c in 0..self.clients.len() {
            self.next_op(c, now);
        }
        let mut done = Vec::new();
        let mut drain_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if !self.stopping && self.end.is_some_and(|e| now >= e) {
                self.stopping = true;
            }
            if self.stopping {
                let until = *drain_until.get_or_insert(now + DRAIN_MAX.min(self.opts.op_timeout));
                if self.mux.outstanding() == 0 || now >= until {
                    break;
                }
            }
            self.mux.poll(POLL_MAX, &mut done)?;
            let now = Instant::now();
            for d in done.drain(..) {
                self.done(d, now);
            }
            let errors = self.mux.stats.errors_total();
            if errors > self.errors_seen {
                self.live
                    .errors
                    .fetch_add(errors - self.errors_seen, Ordering::Relaxed);
                self.errors_seen = errors;
            }
        }
        // Whatever is still waiting has an unknown outcome.
        let now = Instant::now();
        for c in 0..self.clients.len() {
            if self.clients[c].pending.is_some() {
                self.complete(c, Outcome::Unknown, now);
            }
        }
        let stats = std::mem::take(&mut self.mux.stats);
        self.result.redirects = stats.redirects;
        self.result.retries = stats.retries;
        self.result.reconnects = stats.reconnects;
        self.result.errors = stats.errors;
        self.result.measured_secs = match self.end {
            Some(e) => (e.min(now) - self.warm_end.min(now)).as_secs_f64(),
            None => (now - self.warm_end.min(now)).as_secs_f64(),
        };
        self.result.wall_secs = (now - self.start).as_secs_f64();
        Ok(())
    }

    fn choose(&mut self) -> Kind {
        let pct = self.rng.range(0, 100) as u32;
        match self.opts.op {
            OpMix::Put => Kind::Put,
            OpMix::Get => Kind::Get,
            OpMix::Mixed { read_pct } => {
                if pct < read_pct {
                    Kind::Get
                } else {
                    Kind::Put
                }
            }
            OpMix::Kv { read_pct } => {
                if pct < read_pct {
                    Kind::Get
                } else {
                    match self.rng.range(0, 10) {
                        0..=5 => Kind::Put,
                        6..=8 => Kind::Cas,
                        _ => Kind::Delete,
                    }
                }
            }
        }
    }

    /// Starts the client's next operation, unless the run is ending.
    fn next_op(&mut self, c: usize, now: Instant) {
        if self.stopping || self.total.is_some_and(|t| self.issued >= t) {
            if self.total.is_some_and(|t| self.issued >= t) && self.mux.outstanding() == 0 {
                self.stopping = true;
            }
            return;
        }
        self.issued += 1;
        let kind = self.choose();
        let key = if self.opts.distinct_keys {
            self.live.next_key.fetch_add(1, Ordering::Relaxed)
        } else if self.opts.hot_key_pct > 0
            && self.rng.range(0, 100) < u64::from(self.opts.hot_key_pct)
        {
            0
        } else {
            self.rng.range(0, self.opts.keys.max(1))
        };
        let cl = &mut self.clients[c];
        // A session's seq counts writes only: reads ignore it, and a write
        // of a client id without a session must come with seq 1.
        if kind != Kind::Get {
            cl.seq += 1;
        }
        let value = match kind {
            Kind::Put | Kind::Cas => {
                let mut v = format!("c{}-s{}", cl.number, cl.seq).into_bytes();
                if v.len() < self.opts.value_size {
                    v.push(b'-');
                    let pad = self.opts.value_size - v.len();
                    v.extend_from_slice(&self.filler.as_bytes()[..pad]);
                }
                v
            }
            _ => Vec::new(),
        };
        let expected = (kind == Kind::Cas).then(|| cl.seen.get(&key).cloned().flatten());
        let key_bytes = Self::key_name(key).into_bytes();
        let op = match kind {
            Kind::Put => Op::Put {
                key: key_bytes,
                value,
            },
            Kind::Get => Op::Get { key: key_bytes },
            Kind::Delete => Op::Delete { key: key_bytes },
            Kind::Cas => Op::Cas {
                key: key_bytes,
                expected: expected.clone().flatten().map(String::into_bytes),
                new: value,
            },
        };
        let kept = match &op {
            Op::Put { value, .. } | Op::Cas { new: value, .. } if self.keep_values => {
                Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => None,
        };
        let request = MuxRequest {
            tag: c as u64,
            client: c as u64,
            command: Command {
                client_id: cl.client_id,
                seq: cl.seq,
                op,
            },
            stale_read: false,
        };
        cl.pending = Some(Pending {
            kind,
            key,
            value: kept,
            expected,
            invoke: now,
        });
        if self.mux.submit(request).is_err() {
            // Never: a mux holds far more than one request per client.
            self.complete(c, Outcome::Unknown, now);
        }
    }

    fn key_name(key: u64) -> String {
        format!("key-{key}")
    }

    /// A request the mux gave back.
    fn done(&mut self, d: MuxDone, now: Instant) {
        let c = d.request.tag as usize;
        let text = |v: Option<Vec<u8>>, keep: bool| {
            v.filter(|_| keep)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        let outcome = match d.reply {
            MuxReply::Kv { node, result, .. } => {
                let outcome = match result {
                    OpResult::Done | OpResult::CasOk | OpResult::Deleted(_) => Outcome::Ok(None),
                    OpResult::Value(v) => Outcome::Ok(text(v, self.keep_values)),
                    OpResult::CasMismatch(cur) => Outcome::Failed(text(cur, self.keep_values)),
                };
                let write = !matches!(d.request.command.op, Op::Get { .. });
                if write && matches!(outcome, Outcome::Ok(_)) {
                    self.result.leaders_seen.insert(node.0);
                    self.write_done.push(now);
                }
                outcome
            }
            MuxReply::Refused { .. } => Outcome::Failed(None),
            MuxReply::TimedOut => Outcome::Unknown,
        };
        self.complete(c, outcome, now);
    }

    /// Ends client `c`'s operation and starts its next.
    fn complete(&mut self, c: usize, outcome: Outcome, now: Instant) {
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        let measured = p.invoke >= self.warm_end && self.end.is_none_or(|e| now <= e);
        match &outcome {
            Outcome::Ok(_) => self.result.ok += 1,
            Outcome::Failed(_) => self.result.failed += 1,
            Outcome::Unknown => self.result.unknown += 1,
        }
        if !matches!(outcome, Outcome::Unknown) {
            let (done_ns, us) = (self.ns(now), (now - p.invoke).as_micros() as u64);
            if let Some(s) = &mut self.result.series {
                s.record(done_ns, us, matches!(outcome, Outcome::Ok(_)));
            }
        }
        if measured && !matches!(outcome, Outcome::Unknown) {
            self.result.measured_ops += 1;
            self.result.hist.record((now - p.invoke).as_micros() as u64);
        }
        self.live.completed.fetch_add(1, Ordering::Relaxed);
        let value = p.value.clone();
        // What this client now knows of the key (for its next cas).
        let cl = &mut self.clients[c];
        match (&outcome, p.kind) {
            _ if !self.keep_values => {}
            (Outcome::Ok(v), Kind::Get) => {
                cl.seen.insert(p.key, v.clone());
            }
            (Outcome::Ok(_), Kind::Put | Kind::Cas) => {
                cl.seen.insert(p.key, value.clone());
            }
            (Outcome::Ok(_), Kind::Delete) => {
                cl.seen.insert(p.key, None);
            }
            (Outcome::Failed(cur), Kind::Cas) => {
                cl.seen.insert(p.key, cur.clone());
            }
            _ => {}
        }
        if self.opts.record {
            let (ok, complete) = match &outcome {
                Outcome::Ok(_) => (Some(true), Some(self.ns(now))),
                Outcome::Failed(_) => (Some(false), Some(self.ns(now))),
                Outcome::Unknown => (None, None),
            };
            let result = match (&outcome, p.kind) {
                (Outcome::Ok(v), Kind::Get) => v.clone(),
                _ => None,
            };
            let line = json!({
                "client": self.clients[c].number,
                "op": p.kind.name(),
                "key": Self::key_name(p.key),
                "value": value,
                "expected": if p.kind == Kind::Cas { json!(p.expected.clone().flatten()) } else { json!(null) },
                "invoke_ns": self.ns(p.invoke),
                "complete_ns": complete,
                "ok": ok,
                "result": result,
            });
            let _ = writeln!(self.result.history, "{line}");
        }
        self.next_op(c, now);
    }
}
