//! raft-sim: runs the deterministic cluster simulator over many seeds, or
//! replays one seed event by event. Each seed runs the real node driver,
//! key-value state machine and client sessions; clients' histories are
//! checked for linearizability.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use raftkit::sim::{run_seed, SimOptions};

/// Randomized Raft cluster simulation with safety checks after every step.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of seeds to run (starting at --first-seed).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of a multi-seed run.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Run just this seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes in the cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Spare nodes (not initial members) the operator may add; default:
    /// drawn per seed (0 to 2).
    #[arg(long)]
    spares: Option<u64>,
    /// Per step: chance that the operator changes the membership or hands
    /// leadership over; default: drawn per seed (0 to 0.03).
    #[arg(long)]
    membership_change: Option<f64>,
    /// Steps of faults per seed before the liveness check.
    #[arg(long, default_value_t = 1500)]
    steps: u64,
    /// Print every event of the run (with --seed).
    #[arg(long)]
    trace: bool,
    /// Stop at the first seed with a violation (the mutation suite).
    #[arg(long)]
    stop: bool,
    /// Write the run (with --seed) as a self-contained HTML page: the
    /// message sequence diagram and the logs at the end.
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.html.is_some() && args.seed.is_none() {
        eprintln!("error: --html draws one run: give --seed too");
        return ExitCode::from(2);
    }
    if args.nodes < 1 || args.nodes > 9 {
        eprintln!("error: --nodes must be between 1 and 9, got {}", args.nodes);
        return ExitCode::from(2);
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let start = Instant::now();
    let (mut steps, mut elections, mut commits, mut crashes, mut messages) = (0, 0, 0, 0, 0);
    let (mut snapshots, mut installs) = (0, 0);
    let (mut ops, mut answered, mut retries, mut undecided) = (0, 0, 0, 0);
    let mut violations = Vec::new();
    for &seed in &seeds {
        let mut opts = SimOptions::new(seed);
        opts.nodes = args.nodes;
        opts.steps = args.steps;
        if let Some(s) = args.spares {
            opts.spares = s;
        }
        if let Some(p) = args.membership_change {
            opts.membership_change = p;
        }
        opts.trace = args.trace;
        opts.diagram = args.html.is_some();
        // A panic (an assertion in the driver or the store) is a violation
        // of its seed too, not the end of the run.
        let report = match std::panic::catch_unwind(|| run_seed(opts)) {
            Ok(r) => r,
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                raftkit::sim::SimReport {
                    seed,
                    violation: Some(format!("panic: {why}")),
                    ..Default::default()
                }
            }
        };
        if args.trace {
            print!("{}", report.trace);
        }
        if let (Some(path), Some(page)) = (&args.html, &report.diagram) {
            if let Err(e) = std::fs::write(path, page) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::from(2);
            }
            println!("wrote {}", path.display());
        }
        steps += report.steps;
        elections += report.elections;
        commits += report.commit_index_max;
        crashes += report.crashes;
        messages += report.messages;
        snapshots += report.snapshots;
        installs += report.installs;
        ops += report.ops;
        answered += report.ops_answered;
        retries += report.retries;
        undecided += report.keys_undecided;
        if let Some(v) = report.violation {
            println!("seed {seed}: VIOLATION: {v}");
            let mut extra = String::new();
            if let Some(s) = args.spares {
                extra.push_str(&format!(" --spares {s}"));
            }
            if let Some(p) = args.membership_change {
                extra.push_str(&format!(" --membership-change {p}"));
            }
            println!(
                "  replay: raft-sim --seed {seed} --nodes {} --steps {}{extra} --trace",
                args.nodes, args.steps
            );
            violations.push(seed);
            if args.stop {
                break;
            }
        }
    }
    println!(
        "seeds={} nodes={} steps={steps} elections={elections} commits={commits} crashes={crashes} messages={messages} snapshots={snapshots} installs={installs} ops={ops} answered={answered} retries={retries} undecided_keys={undecided} violations={} time={:.1}s",
        seeds.len(),
        args.nodes,
        violations.len(),
        start.elapsed().as_secs_f64()
    );
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
