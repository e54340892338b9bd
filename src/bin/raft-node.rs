//! raft-node: one Raft server of the cluster described by cluster.toml.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::LevelFilter;
use raftkit::config::{parse_node_id, Config};
use raftkit::node::{stop_on_signals, Node};
use raftkit::storage::{DiskStore, Meta, WalOptions};

/// Runs one Raft server: elects leaders, replicates the log and applies it to
/// a key-value store.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The cluster description.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// This server's id in the config (1 or n1).
    #[arg(long, value_parser = parse_node_id)]
    id: raftkit::raft::NodeId,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = simplelog::TermLogger::init(
        args.log_level,
        // Compact lines for a narrow terminal pane: a wall-clock time to the
        // millisecond, the level, then the message (which starts with the
        // node and its term); no module path or thread.
        simplelog::ConfigBuilder::new()
            .set_time_format_custom(time::macros::format_description!(
                "[hour]:[minute]:[second].[subsecond digits:3]"
            ))
            .set_target_level(simplelog::LevelFilter::Off)
            .set_thread_level(simplelog::LevelFilter::Off)
            .set_location_level(simplelog::LevelFilter::Off)
            .build(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let me = match config.require_node(args.id) {
        Ok(n) => n.clone(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let owner = Meta {
        node_id: args.id,
        cluster: config.cluster.name.clone(),
    };
    let opts = WalOptions {
        segment_bytes_max: config.cluster.segment_bytes_max,
        fsync: config.cluster.fsync,
        direct_io: config.cluster.direct_io,
    };
    let (store, recovered) = match DiskStore::open(&me.data_dir, &owner, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = stop_on_signals();
    let mut node = match Node::new(config, args.id, recovered, Box::new(store), stop) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match node.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
