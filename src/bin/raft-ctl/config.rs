//! `raft-ctl config`: what cluster.toml says, read by the parser raft-node
//! itself uses, so that scripts need no parser of their own (awk broke on
//! comments and single quotes).
//!
//! Paths come out absolute. A relative `data_dir` (of `[cluster]` or of a
//! `[[node]]`) is relative to the directory of the config file, as
//! raft-node resolves it, never to the current directory; a node without
//! its own `data_dir` uses `<cluster data_dir>/n<id>`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use raftkit::config::{parse_node_id, Config, ConfigError};
use raftkit::raft::NodeId;
use serde_json::{json, Value};

use crate::{fail, EXIT_BAD_ARGS, EXIT_ERROR};

/// One value of the config, printed alone for a script to read.
#[derive(Subcommand, Debug)]
pub enum ConfigQuery {
    /// The node ids, one per line (`--json`: an array).
    Ids,
    /// The node's data directory (absolute): its log and snapshot, and the
    /// scripts' node.pid and node.log.
    DataDir {
        /// The node (1 or n1).
        #[arg(long, value_parser = parse_node_id)]
        id: NodeId,
    },
    /// The node's address, as written in the file.
    Addr {
        /// The node (1 or n1).
        #[arg(long, value_parser = parse_node_id)]
        id: NodeId,
    },
    /// The cluster's name.
    Name,
}

/// Loads `path` as raft-node would, but with the file's path made
/// absolute first (without resolving symlinks, as raft-node does not), so
/// that every path derived from it is absolute.
fn load(path: &Path) -> Result<Config, ConfigError> {
    let absolute = std::path::absolute(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        message: format!("cannot make the path absolute: {e}"),
    })?;
    Config::load(&absolute)
}

pub fn run(path: &Path, query: Option<&ConfigQuery>, json_out: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_ARGS, e),
    };
    let printed = match query {
        None if json_out => print_json(&whole(&config)),
        None => print_whole(&config),
        Some(ConfigQuery::Ids) if json_out => print_json(&json!(id_numbers(&config))),
        Some(ConfigQuery::Ids) => {
            let ids: Vec<String> = id_numbers(&config).iter().map(u64::to_string).collect();
            print_line(ids.join("\n").as_bytes())
        }
        Some(ConfigQuery::DataDir { id }) => match config.require_node(*id) {
            Ok(n) if json_out => print_json(&json!(n.data_dir.display().to_string())),
            Ok(n) => print_path(&n.data_dir),
            Err(e) => return fail(EXIT_BAD_ARGS, e),
        },
        Some(ConfigQuery::Addr { id }) => match config.require_node(*id) {
            Ok(n) if json_out => print_json(&json!(n.addr_text)),
            Ok(n) => print_line(n.addr_text.as_bytes()),
            Err(e) => return fail(EXIT_BAD_ARGS, e),
        },
        Some(ConfigQuery::Name) if json_out => print_json(&json!(config.cluster.name)),
        Some(ConfigQuery::Name) => print_line(config.cluster.name.as_bytes()),
    };
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_ERROR, format!("cannot write to stdout: {e}")),
    }
}

fn id_numbers(config: &Config) -> Vec<u64> {
    config.nodes.iter().map(|n| n.id.0).collect()
}

/// Every setting, resolved (defaults filled in, paths absolute).
fn whole(config: &Config) -> Value {
    let c = &config.cluster;
    json!({
        "path": config.path.display().to_string(),
        "name": c.name,
        "data_dir": c.data_dir.display().to_string(),
        "election_timeout_ms": [c.election_timeout_ms_min, c.election_timeout_ms_max],
        "heartbeat_interval_ms": c.heartbeat_interval_ms,
        "tick_ms": c.tick_ms,
        "append_bytes_max": c.append_bytes_max,
        "inflight_msgs_max": c.inflight_msgs_max,
        "segment_bytes_max": c.segment_bytes_max,
        "snapshot_entries": c.snapshot_entries,
        "snapshot_keep_entries": c.snapshot_keep_entries,
        "fsync": c.fsync,
        "direct_io": c.direct_io,
        "pre_vote": c.pre_vote,
        "check_quorum": c.check_quorum,
        "nodes": config.nodes.iter().map(|n| json!({
            "id": n.id.0,
            "addr": n.addr_text,
            "data_dir": n.data_dir.display().to_string(),
            "metrics_addr": n.metrics_addr.map(|a| a.to_string()),
        })).collect::<Vec<_>>(),
    })
}

fn print_whole(config: &Config) -> std::io::Result<()> {
    let c = &config.cluster;
    let mut out = std::io::stdout().lock();
    writeln!(out, "config              {}", config.path.display())?;
    writeln!(out, "name                {}", c.name)?;
    writeln!(out, "data_dir            {}", c.data_dir.display())?;
    writeln!(
        out,
        "election_timeout_ms [{}, {})",
        c.election_timeout_ms_min, c.election_timeout_ms_max
    )?;
    writeln!(out, "heartbeat_interval  {} ms", c.heartbeat_interval_ms)?;
    writeln!(out, "tick                {} ms", c.tick_ms)?;
    writeln!(
        out,
        "snapshot_entries    {} (keep {})",
        c.snapshot_entries, c.snapshot_keep_entries
    )?;
    writeln!(
        out,
        "fsync {}, direct_io {}, pre_vote {}, check_quorum {}",
        c.fsync, c.direct_io, c.pre_vote, c.check_quorum
    )?;
    for n in &config.nodes {
        let metrics = n
            .metrics_addr
            .map(|a| format!("  metrics http://{a}/metrics"))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<4} {:<21} {}{metrics}",
            n.id.to_string(),
            n.addr_text,
            n.data_dir.display()
        )?;
    }
    Ok(())
}

fn print_json(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")
}

fn print_line(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.write_all(b"\n")
}

/// The path's bytes as they are: a script must get the directory the node
/// uses even when its name is not UTF-8.
fn print_path(p: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    print_line(p.as_os_str().as_bytes())
}
