//! `raft-ctl fault`: network faults applied by the nodes themselves (no
//! root needed). Each node drops, delays or partitions its own peer
//! messages; client connections are never affected, so the operator can
//! always heal.

use std::process::ExitCode;

use clap::Subcommand;
use raftkit::client::Client;
use raftkit::config::{parse_node_id, Config};
use raftkit::raft::NodeId;
use raftkit::wire::{FaultSpec, RequestBody, ResponseBody};

use crate::{fail, fetch_status, EXIT_UNREACHABLE};

#[derive(Subcommand, Debug)]
pub enum FaultCmd {
    /// Split the cluster into groups that cannot talk to each other:
    /// `fault partition 1,2 3`. Nodes left out form one more group.
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
        }
        match client.call(id, RequestBody::Fault(spec.clone())) {
            Ok(ResponseBody::FaultOk) => println!("{id}: {}", describe(&spec)),
            // A refusal (a client certificate, a bad spec) is the same on
            // every node: say it once and stop.
            Ok(ResponseBody::Error { code, message }) => {
                return fail(
                    crate::EXIT_ERROR,
                    format!("{id} refused the fault ({code:?}): {message}"),
                )
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

fn parse_groups(config: &Config, groups: &[String]) -> Result<Vec<Vec<NodeId>>, String> {
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

/// `partition {n1,n2} | {n3}, drop 30%, delay 40±20 ms`, or `no fault`.
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
    if f.delay_ms > 0 || f.jitter_ms > 0 {
        parts.push(if f.jitter_ms > 0 {
            format!("delay {}±{} ms", f.delay_ms, f.jitter_ms)
        } else {
            format!("delay {} ms", f.delay_ms)
        });
    }
    if parts.is_empty() {
        "no fault".into()
    } else {
        parts.join(", ")
    }
}
