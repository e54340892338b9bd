//! `raft-ctl fault`: network and disk faults applied by the nodes
//! themselves (no root needed). Each node drops, delays, duplicates,
//! blocks or partitions its own peer messages, and its storage thread
//! stalls, fails or fills its own writes; client connections are never
//! affected, so the operator can always heal.

use std::process::ExitCode;

use clap::Subcommand;
use raftkit::client::Client;
use raftkit::config::{parse_node_id, Config};
use raftkit::raft::NodeId;
use raftkit::wire::{DiskFault, FaultSpec, RequestBody, ResponseBody};

use crate::{fail, fetch_status, EXIT_UNREACHABLE};

#[derive(Subcommand, Debug)]
pub enum FaultCmd {
    /// Split the cluster into groups that cannot talk to each other:
    /// `fault partition 1,2 3`. Nodes left out form one more group.
    /// `fault partition none` ends the partition and leaves other faults.
    Partition {
        /// Comma-separated node ids, one argument per group.
        #[arg(required = true, num_args = 1..)]
        groups: Vec<String>,
    },
    /// Remove every fault (on --node only, if given).
    Heal,
    /// Drop this share (0..1) of the peer messages sent by --node (every
    /// node when --node is not given).
    Drop {
        #[arg(long)]
        rate: f64,
    },
    /// Delay the peer messages sent by --node (every node when not given).
    Delay {
        #[arg(long)]
        ms: u32,
        /// Extra random delay, uniform in [0, jitter].
        #[arg(long, default_value_t = 0)]
        jitter_ms: u32,
    },
    /// Send this share (0..1) of the peer messages of --node twice (every
    /// node when not given); the second copy may arrive after later
    /// messages.
    Duplicate {
        #[arg(long)]
        rate: f64,
    },
    /// One way: --node sends nothing to these peers (it still hears them):
    /// `fault --node 1 block --to 2,3`; `--to ''` clears the block.
    Block {
        #[arg(long)]
        to: String,
    },
    /// A fault of --node's own disk, applied by its storage thread.
    Disk {
        #[command(subcommand)]
        fault: DiskCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// Every write and fsync of the node's log takes this much longer.
    Stall {
        #[arg(long)]
        ms: u32,
    },
    /// The next fsync fails: `error eio`. The node stops (exit code 1).
    Error {
        #[arg(value_enum)]
        kind: DiskErrorKind,
    },
    /// Writes fail with ENOSPC until `disk ok`: the node refuses client
    /// writes, serves reads, and retries its pending write.
    Full,
    /// Clears the disk fault (every node when --node is not given).
    Ok,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DiskErrorKind {
    Eio,
}

pub fn run(client: &mut Client, config: &Config, node: Option<NodeId>, cmd: &FaultCmd) -> ExitCode {
    let targets: Vec<NodeId> = match (cmd, node) {
        (FaultCmd::Partition { .. }, _) => config.ids(),
        (_, Some(n)) => vec![n],
        (_, None) => config.ids(),
    };
    let groups = match cmd {
        FaultCmd::Partition { groups } => match parse_groups(config, groups) {
            Ok(g) => Some(g),
            Err(e) => return fail(2, e),
        },
        _ => None,
    };
    if let FaultCmd::Drop { rate } = cmd {
        if !(0.0..=1.0).contains(rate) {
            return fail(2, format!("--rate {rate}: a share between 0 and 1"));
        }
    }
    let block_to = match (cmd, node) {
        (FaultCmd::Block { .. }, None) => {
            return fail(2, "fault block: which node blocks? give --node N")
        }
        (FaultCmd::Block { to }, Some(n)) => match parse_block(config, n, to) {
            Ok(b) => b,
            Err(e) => return fail(2, e),
        },
        _ => Vec::new(),
    };
    if let (FaultCmd::Disk { fault }, None) = (cmd, node) {
        if !matches!(fault, DiskCmd::Ok) {
            return fail(2, "fault disk: whose disk? give --node N");
        }
    }
    if let FaultCmd::Duplicate { rate } = cmd {
        if !(0.0..=1.0).contains(rate) {
            return fail(2, format!("--rate {rate}: a share between 0 and 1"));
        }
    }
    let mut unreachable = Vec::new();
    for id in targets {
        // Read-modify-write: each command changes its own kind of fault.
        let Some(ns) = fetch_status(client, id) else {
            unreachable.push(id);
            continue;
        };
        let mut spec = ns.fault;
        match cmd {
            FaultCmd::Partition { .. } => spec.partition = groups.clone().unwrap_or_default(),
            FaultCmd::Heal => spec = FaultSpec::default(),
            FaultCmd::Drop { rate } => spec.drop_rate_ppm = (rate * 1e6).round() as u32,
            FaultCmd::Delay { ms, jitter_ms } => {
                spec.delay_ms = *ms;
                spec.jitter_ms = *jitter_ms;
            }
            FaultCmd::Duplicate { rate } => spec.duplicate_rate_ppm = (rate * 1e6).round() as u32,
            FaultCmd::Block { .. } => spec.block_to = block_to.clone(),
            FaultCmd::Disk { fault } => {
                spec.disk = match fault {
                    DiskCmd::Stall { ms } => DiskFault::Stall { ms: *ms },
                    DiskCmd::Error {
                        kind: DiskErrorKind::Eio,
                    } => DiskFault::Eio,
                    DiskCmd::Full => DiskFault::Full,
                    DiskCmd::Ok => DiskFault::None,
                }
            }
        }
        match client.call(id, RequestBody::Fault(spec.clone())) {
            Ok(ResponseBody::FaultOk) => println!("{id}: {}", describe(&spec)),
            // A refusal (a client certificate, a bad spec) is the same on
            // every node: say it once and stop.
            Ok(ResponseBody::Error { code, message }) => {
                let exit = if code == raftkit::wire::ErrorCode::Forbidden {
                    crate::EXIT_ERROR
                } else {
                    2
                };
                return fail(
                    exit,
                    format!("{id} refused the fault ({code:?}): {message}"),
                );
            }
            _ => unreachable.push(id),
        }
    }
    if !unreachable.is_empty() {
        let list: Vec<String> = unreachable.iter().map(|n| n.to_string()).collect();
        return fail(
            EXIT_UNREACHABLE,
            format!("not reached (down?): {}", list.join(" ")),
        );
    }
    ExitCode::SUCCESS
}

/// `2,3` for `block --to`: nodes of the config other than `me`; `''`
/// clears the block.
fn parse_block(config: &Config, me: NodeId, to: &str) -> Result<Vec<NodeId>, String> {
    let mut out = Vec::new();
    for part in to.split(',').filter(|p| !p.trim().is_empty()) {
        let id = parse_node_id(part.trim()).map_err(|e| e.to_string())?;
        if config.node(id).is_none() {
            return Err(format!("{id} is not in the config"));
        }
        if id == me {
            return Err(format!("{id} cannot block itself"));
        }
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn parse_groups(config: &Config, groups: &[String]) -> Result<Vec<Vec<NodeId>>, String> {
    if let [only] = groups {
        if only == "none" {
            return Ok(Vec::new());
        }
    }
    let mut out: Vec<Vec<NodeId>> = Vec::new();
    let mut seen = Vec::new();
    for g in groups {
        let mut group = Vec::new();
        for part in g.split(',').filter(|p| !p.trim().is_empty()) {
            let id = parse_node_id(part.trim()).map_err(|e| e.to_string())?;
            if config.node(id).is_none() {
                return Err(format!("{id} is not in the config"));
            }
            if seen.contains(&id) {
                return Err(format!("{id} is in two groups"));
            }
            seen.push(id);
            group.push(id);
        }
        if group.is_empty() {
            return Err(format!("empty group {g:?}"));
        }
        out.push(group);
    }
    let rest: Vec<NodeId> = config
        .ids()
        .into_iter()
        .filter(|i| !seen.contains(i))
        .collect();
    if !rest.is_empty() {
        out.push(rest);
    }
    if out.len() < 2 {
        return Err("a partition needs at least two groups".into());
    }
    Ok(out)
}

/// `partition {n1,n2} | {n3}, drop 30%, duplicate 10%, block ->{n2},
/// delay 40±20 ms, disk stall 200 ms`, or `no fault`.
pub fn describe(f: &FaultSpec) -> String {
    let mut parts = Vec::new();
    if !f.partition.is_empty() {
        let gs: Vec<String> = f
            .partition
            .iter()
            .map(|g| {
                let ids: Vec<String> = g.iter().map(|n| n.to_string()).collect();
                format!("{{{}}}", ids.join(","))
            })
            .collect();
        parts.push(format!("partition {}", gs.join(" | ")));
    }
    if f.drop_rate_ppm > 0 {
        parts.push(format!("drop {}%", f.drop_rate_ppm as f64 / 1e4));
    }
    if f.duplicate_rate_ppm > 0 {
        parts.push(format!("duplicate {}%", f.duplicate_rate_ppm as f64 / 1e4));
    }
    if !f.block_to.is_empty() {
        let ids: Vec<String> = f.block_to.iter().map(|n| n.to_string()).collect();
        parts.push(format!("block ->{{{}}}", ids.join(",")));
    }
    if f.delay_ms > 0 || f.jitter_ms > 0 {
        parts.push(if f.jitter_ms > 0 {
            format!("delay {}±{} ms", f.delay_ms, f.jitter_ms)
        } else {
            format!("delay {} ms", f.delay_ms)
        });
    }
    if f.disk != DiskFault::None {
        parts.push(f.disk.to_string());
    }
    if parts.is_empty() {
        "no fault".into()
    } else {
        parts.join(", ")
    }
}
