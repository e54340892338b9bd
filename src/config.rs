//! `cluster.toml`: the cluster's name, timeouts, data directory and nodes.
//! A bad file is refused with the file, the line and what is wrong.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::kv::COMMAND_BYTES_MAX;
use crate::raft::NodeId;
use crate::wire::FRAME_BYTES_MAX;

/// The largest `append_bytes_max` a config may set. The leader fills an
/// AppendEntries up to `append_bytes_max` and always sends at least one
/// entry, so a message holds at most that plus one more entry (a command of
/// at most `COMMAND_BYTES_MAX`) plus its fields; that must fit one frame.
pub const APPEND_BYTES_MAX_LIMIT: usize = 16 << 20;

/// Fixed bytes of an AppendEntries frame body besides its entries: from, to,
/// term, type, prev_log_index, prev_log_term, leader_commit, read_round,
/// entry count; and per entry index, term, kind, data length.
const APPEND_ENTRIES_FIXED_BYTES: usize = 8 * 3 + 1 + 8 * 4 + 4;
const ENTRY_FIXED_BYTES: usize = 8 + 8 + 1 + 4;
const _: () = assert!(
    APPEND_BYTES_MAX_LIMIT + ENTRY_FIXED_BYTES + COMMAND_BYTES_MAX + APPEND_ENTRIES_FIXED_BYTES
        <= FRAME_BYTES_MAX
);

/// A config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: Spanned<RawCluster>,
    node: Option<Vec<Spanned<RawNode>>>,
    tls: Option<Spanned<RawTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: String,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    data_dir: Spanned<String>,
    election_timeout_ms: Spanned<Vec<u64>>,
    heartbeat_interval_ms: Spanned<u64>,
    tick_ms: Option<Spanned<u64>>,
    append_bytes_max: Option<Spanned<usize>>,
    inflight_msgs_max: Option<usize>,
    segment_bytes_max: Option<u64>,
    snapshot_entries: Option<u64>,
    snapshot_keep_entries: Option<u64>,
    fsync: Option<bool>,
    direct_io: Option<bool>,
    pre_vote: Option<bool>,
    check_quorum: Option<bool>,
    initial_members: Option<Spanned<Vec<u64>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<u64>,
    addr: Spanned<String>,
    data_dir: Option<String>,
    metrics_addr: Option<Spanned<String>>,
}

/// Cluster-wide settings, resolved.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    pub heartbeat_interval_ms: u64,
    pub tick_ms: u64,
    pub append_bytes_max: usize,
    pub inflight_msgs_max: usize,
    pub segment_bytes_max: u64,
    /// Take a snapshot of the state machine (and compact the log) once
    /// this many entries were applied since the last one; 0: never.
    pub snapshot_entries: u64,
    /// Entries kept in memory behind a snapshot, so that a follower a
    /// little behind gets entries rather than the whole snapshot.
    pub snapshot_keep_entries: u64,
    /// Off only for experiments: a crash can then lose acknowledged writes.
    pub fsync: bool,
    /// With fsync on: write the log with O_DIRECT | O_DSYNC where the file
    /// system allows it (see `storage::direct`).
    pub direct_io: bool,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Who forms the cluster on its first start (every `[[node]]` unless
    /// `initial_members` says otherwise). Read only while a node's data
    /// holds no membership: after that the membership lives in the log.
    pub initial_members: Vec<NodeId>,
}

/// One server.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// As written in the file (for display).
    pub addr_text: String,
    pub data_dir: PathBuf,
    /// Where the node serves Prometheus metrics over HTTP (`/metrics`), if
    /// anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// The `[tls]` section: mutual TLS for every connection (src/tls.rs).
/// Relative paths are resolved against the file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The cluster CA's certificate: every node and client shows a
    /// certificate it signed.
    pub ca: PathBuf,
    /// A node's certificate and key, `{id}` replaced by the node's id.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// What raft-ctl and other clients show, unless told otherwise.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A whole, checked `cluster.toml`.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub cluster: ClusterConfig,
    pub nodes: Vec<NodeConfig>,
    /// Mutual TLS, when the file has a `[tls]` section.
    pub tls: Option<TlsConfig>,
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |span: Option<Range<usize>>, message: String| ConfigError {
            path: path.to_path_buf(),
            line: span.map(|s| line_of(text, s)),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            err(e.span(), msg)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let c = raw.cluster.get_ref();
        if c.name.get_ref().is_empty() {
            return Err(err(
                Some(c.name.span()),
                "cluster name must not be empty".into(),
            ));
        }
        let et = c.election_timeout_ms.get_ref();
        if et.len() != 2 || et[0] >= et[1] || et[0] == 0 {
            return Err(err(
                Some(c.election_timeout_ms.span()),
                format!("election_timeout_ms must be [min, max] with 0 < min < max, got {et:?}"),
            ));
        }
        let hb = *c.heartbeat_interval_ms.get_ref();
        if hb == 0 || hb >= et[0] {
            return Err(err(
                Some(c.heartbeat_interval_ms.span()),
                format!("heartbeat_interval_ms {hb} must be above 0 and below the election timeout minimum {}", et[0]),
            ));
        }
        let tick_ms = c.tick_ms.as_ref().map_or(10.min(hb), |t| *t.get_ref());
        if tick_ms == 0 || tick_ms > hb {
            let span = c.tick_ms.as_ref().map(|t| t.span());
            return Err(err(
                span,
                format!("tick_ms {tick_ms} must be between 1 and heartbeat_interval_ms {hb}"),
            ));
        }
        let append_bytes_max = c
            .append_bytes_max
            .as_ref()
            .map_or(1 << 20, |a| *a.get_ref());
        if !(1..=APPEND_BYTES_MAX_LIMIT).contains(&append_bytes_max) {
            let span = c.append_bytes_max.as_ref().map(|a| a.span());
            return Err(err(
                span,
                format!("append_bytes_max {append_bytes_max} must be between 1 and {APPEND_BYTES_MAX_LIMIT}, so that an AppendEntries fits one frame"),
            ));
        }
        let cluster = ClusterConfig {
            name: c.name.get_ref().clone(),
            data_dir: resolve(c.data_dir.get_ref()),
            election_timeout_ms_min: et[0],
            election_timeout_ms_max: et[1],
            heartbeat_interval_ms: hb,
            tick_ms,
            append_bytes_max,
            inflight_msgs_max: c.inflight_msgs_max.unwrap_or(64).max(1),
            segment_bytes_max: c.segment_bytes_max.unwrap_or(64 << 20),
            snapshot_entries: c.snapshot_entries.unwrap_or(100_000),
            snapshot_keep_entries: c.snapshot_keep_entries.unwrap_or(5_000),
            fsync: c.fsync.unwrap_or(true),
            direct_io: c.direct_io.unwrap_or(true),
            pre_vote: c.pre_vote.unwrap_or(true),
            check_quorum: c.check_quorum.unwrap_or(true),
            initial_members: Vec::new(),
        };
        let mut cluster = cluster;
        let raw_nodes = raw.node.unwrap_or_default();
        if raw_nodes.is_empty() {
            return Err(err(
                None,
                "no [[node]] entries: a cluster needs at least one node".into(),
            ));
        }
        let mut nodes: Vec<NodeConfig> = Vec::new();
        let mut lines: Vec<(usize, usize)> = Vec::new();
        for n in &raw_nodes {
            let rn = n.get_ref();
            let id = *rn.id.get_ref();
            let id_line = line_of(text, rn.id.span());
            if id == 0 {
                return Err(err(Some(rn.id.span()), "node id must be 1 or more".into()));
            }
            if let Some(i) = nodes.iter().position(|x| x.id == NodeId(id)) {
                return Err(err(
                    Some(rn.id.span()),
                    format!("duplicate node id {id} (first at line {})", lines[i].0),
                ));
            }
            let addr_text = rn.addr.get_ref().clone();
            let addr = addr_text
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    err(
                        Some(rn.addr.span()),
                        format!("cannot resolve address {addr_text:?} (want host:port)"),
                    )
                })?;
            let addr_line = line_of(text, rn.addr.span());
            if let Some(n) = nodes.iter().find(|x| x.metrics_addr == Some(addr)) {
                return Err(err(
                    Some(rn.addr.span()),
                    format!("address {addr_text} is node {}'s metrics_addr", n.id),
                ));
            }
            if let Some(i) = nodes.iter().position(|x| x.addr == addr) {
                return Err(err(
                    Some(rn.addr.span()),
                    format!(
                        "duplicate address {addr_text} (first at line {})",
                        lines[i].1
                    ),
                ));
            }
            let data_dir = match &rn.data_dir {
                Some(d) => resolve(d),
                None => cluster.data_dir.join(format!("n{id}")),
            };
            let metrics_addr = match &rn.metrics_addr {
                Some(m) => Some(
                    check_metrics_addr(m, &nodes, addr).map_err(|why| err(Some(m.span()), why))?,
                ),
                None => None,
            };
            nodes.push(NodeConfig {
                id: NodeId(id),
                addr,
                addr_text,
                data_dir,
                metrics_addr,
            });
            lines.push((id_line, addr_line));
        }
        cluster.initial_members = match &c.initial_members {
            None => nodes.iter().map(|n| n.id).collect(),
            Some(m) => {
                let ids = m.get_ref();
                if ids.is_empty() {
                    return Err(err(
                        Some(m.span()),
                        "initial_members must name at least one node".into(),
                    ));
                }
                let mut out: Vec<NodeId> = Vec::new();
                for &id in ids {
                    if !nodes.iter().any(|n| n.id == NodeId(id)) {
                        return Err(err(
                            Some(m.span()),
                            format!("initial_members names {id}, which has no [[node]] entry"),
                        ));
                    }
                    if out.contains(&NodeId(id)) {
                        return Err(err(
                            Some(m.span()),
                            format!("initial_members names {id} twice"),
                        ));
                    }
                    out.push(NodeId(id));
                }
                out
            }
        };
        let tls = raw.tls.as_ref().map(|t| {
            let t = t.get_ref();
            TlsConfig {
                ca: resolve(&t.ca),
                cert: t.cert.as_ref().map(|p| resolve(p.get_ref())),
                key: t.key.as_ref().map(|p| resolve(p.get_ref())),
                client_cert: t.client_cert.as_ref().map(|p| resolve(p.get_ref())),
                client_key: t.client_key.as_ref().map(|p| resolve(p.get_ref())),
            }
        });
        if let Some(t) = &raw.tls {
            let r = t.get_ref();
            let one = |a: &Option<Spanned<String>>, b: &Option<Spanned<String>>| match (a, b) {
                (Some(x), None) | (None, Some(x)) => Some(x.span()),
                _ => None,
            };
            if let Some(span) = one(&r.cert, &r.key) {
                return Err(err(
                    Some(span),
                    "[tls] needs cert and key together (or neither)".into(),
                ));
            }
            if let Some(span) = one(&r.client_cert, &r.client_key) {
                return Err(err(
                    Some(span),
                    "[tls] needs client_cert and client_key together (or neither)".into(),
                ));
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            cluster,
            nodes,
            tls,
        })
    }

    /// Adds a member cluster.toml does not list, at an address learned
    /// from the membership (a NotLeader hint, a Members answer), for a
    /// client to reach it. Returns its position in `nodes`, or `None` if
    /// the address is not an IP address and port.
    pub fn learn_member(&mut self, id: NodeId, addr: &str) -> Option<usize> {
        if let Some(i) = self.nodes.iter().position(|n| n.id == id) {
            return Some(i);
        }
        let parsed: SocketAddr = addr.parse().ok()?;
        self.nodes.push(NodeConfig {
            id,
            addr: parsed,
            addr_text: addr.to_string(),
            data_dir: PathBuf::new(),
            metrics_addr: None,
        });
        Some(self.nodes.len() - 1)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node, or an error naming the file and the ids it has.
    pub fn require_node(&self, id: NodeId) -> Result<&NodeConfig, ConfigError> {
        self.node(id).ok_or_else(|| ConfigError {
            path: self.path.clone(),
            line: None,
            message: format!(
                "no node {id} in this config (it has {})",
                self.nodes
                    .iter()
                    .map(|n| n.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Election timeout range in ticks, `[min, max)`.
    pub fn election_timeout_ticks(&self) -> (u32, u32) {
        let t = self.cluster.tick_ms;
        let min = (self.cluster.election_timeout_ms_min / t).max(2) as u32;
        let max = ((self.cluster.election_timeout_ms_max / t) as u32).max(min + 1);
        (min, max)
    }

    pub fn heartbeat_interval_ticks(&self) -> u32 {
        (self.cluster.heartbeat_interval_ms / self.cluster.tick_ms).max(1) as u32
    }
}

/// A node's `metrics_addr`: a host:port that no node's `addr` or other
/// `metrics_addr` already takes (`nodes`: those before it; `addr`: its own).
fn check_metrics_addr(
    m: &Spanned<String>,
    nodes: &[NodeConfig],
    addr: SocketAddr,
) -> Result<SocketAddr, String> {
    let text = m.get_ref();
    let metrics = text
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve metrics_addr {text:?} (want host:port)"))?;
    if metrics == addr {
        return Err(format!(
            "metrics_addr {text} is the node's own addr: give metrics a port of their own"
        ));
    }
    if let Some(n) = nodes
        .iter()
        .find(|n| n.addr == metrics || n.metrics_addr == Some(metrics))
    {
        return Err(format!(
            "metrics_addr {text} is already taken by node {}",
            n.id
        ));
    }
    Ok(metrics)
}

/// A node id on the command line that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdError {
    /// What was given.
    pub text: String,
}

impl fmt::Display for NodeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid node id {:?}: expected a number like 1 or n1",
            self.text
        )
    }
}

impl std::error::Error for NodeIdError {}

/// Parses a node id as the CLI accepts it: `1` or `n1`.
pub fn parse_node_id(s: &str) -> Result<NodeId, NodeIdError> {
    let digits = s.strip_prefix('n').unwrap_or(s);
    match digits.parse::<u64>() {
        Ok(0) | Err(_) => Err(NodeIdError {
            text: s.to_string(),
        }),
        Ok(n) => Ok(NodeId(n)),
    }
}
