//! raft-ctl: the client and operator CLI of a raftkit cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use raftkit::client::{Client, ClientError};
use raftkit::config::{parse_node_id, Config};
use raftkit::kv::{Op, OpResult};
use raftkit::raft::{Entry, EntryKind, NodeId, Role};
use raftkit::wire::{NodeStatus, RequestBody, ResponseBody};
use serde_json::{json, Value};

mod bench;
mod certs;
mod check;
mod config;
mod fault;
mod member;
mod plot;
mod query;
mod settle;
mod wal;
mod watch;

/// Exit codes (also listed in the README).
pub(crate) const EXIT_ERROR: u8 = 1;
pub(crate) const EXIT_BAD_ARGS: u8 = 2;
pub(crate) const EXIT_NO_LEADER: u8 = 3;
pub(crate) const EXIT_UNREACHABLE: u8 = 4;
const EXIT_CAS_MISMATCH: u8 = 5;
const EXIT_NOT_FOUND: u8 = 6;

/// Client and operator CLI for a raftkit cluster.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The cluster description.
    #[arg(long, global = true, default_value = "cluster.toml")]
    config: PathBuf,
    /// Node to contact first (1 or n1); requests follow the leader from there.
    #[arg(long, global = true, value_parser = parse_node_id)]
    node: Option<NodeId>,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this many seconds without a leader.
    #[arg(long, global = true, default_value_t = 10.0)]
    timeout: f64,
    /// With [tls]: the certificate to show, in place of cluster.toml's
    /// client_cert (e.g. the admin certificate for fault or member).
    #[arg(long = "cert", id = "tls_cert", global = true, requires = "tls_key")]
    cert: Option<PathBuf>,
    /// The key of --cert.
    #[arg(long = "key", id = "tls_key", global = true, requires = "tls_cert")]
    key: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY (linearizable unless --stale).
    Get {
        key: String,
        /// Read the contacted node's local state without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Remove KEY.
    Delete { key: String },
    /// Set KEY to NEW if its value is EXPECTED: `cas KEY EXPECTED NEW`, or
    /// `cas --absent KEY NEW` to require that KEY has no value.
    Cas {
        /// KEY EXPECTED NEW (or KEY NEW with --absent).
        #[arg(num_args = 2..=3, required = true, value_names = ["KEY", "EXPECTED", "NEW"])]
        args: Vec<String>,
        /// Require the key to be absent.
        #[arg(long)]
        absent: bool,
    },
    /// Append a raw entry to the log.
    Append { data: String },
    /// Show every node's role, term, leader, indexes and follower progress.
    Status,
    /// Print the id of the node that says it leads (in the highest term any
    /// node says so); exit 3 when none does. `--json`: the leader, its term,
    /// and the nodes that answered (`up`) and did not (`down`).
    Leader,
    /// A live view of the cluster: every node's role, term, commit and
    /// applied index, each follower's lag behind the leader, faults in
    /// force, the last events. `q`, Esc or Ctrl-C quits.
    Watch {
        /// Print one frame as text after this many seconds, then exit
        /// (no terminal needed: for scripts and documentation).
        #[arg(long, value_name = "SECONDS")]
        dump: Option<f64>,
        /// Size of the dumped frame.
        #[arg(long, default_value_t = 100)]
        width: u16,
        #[arg(long, default_value_t = 30)]
        height: u16,
    },
    /// Show a node's log entries (--node), or all logs side by side (--all).
    Log {
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
        /// Draw every node's log, term by index, like the Raft paper's figures.
        #[arg(long)]
        all: bool,
    },
    /// Closed-loop load: throughput, latency percentiles, errors; --record
    /// writes the history for `check`.
    Bench(bench::BenchArgs),
    /// Draw a recorded run as an SVG timeline: throughput and p50/p99
    /// latency from a history, the leader, elections and nodes not
    /// answering from a timeline, named fault windows from an events file.
    Plot(plot::PlotArgs),
    /// Ask every node for its status every --interval-ms and write one
    /// JSON line per answer (or its absence) to FILE, for `plot`; stops
    /// after --seconds (or when signalled).
    Timeline {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        #[arg(long, default_value_t = 3600.0)]
        seconds: f64,
    },
    /// Wait until the cluster has converged, compare every member's log
    /// and the keys of a history on every member; append final reads to
    /// it. Nodes that are not members (as the leader sees it) are skipped.
    Settle {
        /// A history written by `bench --record`.
        #[arg(long)]
        history: Option<PathBuf>,
        /// Seconds to wait for convergence.
        #[arg(long, default_value_t = 60.0)]
        wait: f64,
    },
    /// Is a recorded history linearizable? Prints `linearizable` (exit 0) or
    /// a counterexample (exit 1); exit 3 when the search ran out of budget.
    Check {
        file: PathBuf,
        /// Also fail if a write was acknowledged between these two instants
        /// (ns on the history's clock).
        #[arg(long, num_args = 2, value_names = ["FROM_NS", "TO_NS"])]
        no_acks_between: Option<Vec<u64>>,
        /// Also fail unless some write was acknowledged after this instant.
        #[arg(long, value_name = "NS")]
        acks_after: Option<u64>,
    },
    /// Measure the floor under commit latency here: fdatasync p50 after a
    /// small append (in DIR) and the loopback TCP round trip.
    Floor {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Print the monotonic clock (ns), the clock histories use.
    Now,
    /// Print what cluster.toml says, read by raft-node's own parser: the
    /// whole file resolved, or one value. Paths are absolute; a relative
    /// data_dir is relative to the config file's directory.
    Config {
        #[command(subcommand)]
        query: Option<config::ConfigQuery>,
    },
    /// Print one value of a JSON document (stdin or FILE) for a script:
    /// `raft-ctl --json status | raft-ctl json id=2.role`. PATH steps,
    /// separated by `.`: a field, an index, `FIELD=VALUE` (the first array
    /// element whose FIELD is VALUE), `*` (every element). Strings print
    /// without quotes, null as an empty line, arrays one element a line.
    Json { path: String, file: Option<PathBuf> },
    /// Print the directory of this raft-ctl binary, where cargo put the
    /// binaries; the scripts ask `cargo run --bin raft-ctl -- bin-dir`, so
    /// they follow CARGO_TARGET_DIR and cargo's own configuration.
    BinDir,
    /// Inject network and disk faults (applied by the nodes; client
    /// traffic is never blocked): partition, heal, drop, delay, duplicate,
    /// block, disk.
    Fault {
        #[command(subcommand)]
        action: fault::FaultCmd,
    },
    /// List the members, add or remove one, promote a learner; changes go
    /// to the leader and are answered once committed.
    Member {
        #[command(subcommand)]
        action: member::MemberCmd,
    },
    /// Make the certificates for mutual TLS: a cluster CA, node, client
    /// and admin certificates (`init`), or one for a new node (`add-node`).
    Certs {
        #[command(subcommand)]
        action: certs::CertsCmd,
    },
    /// Hand leadership to a voter; exit 0 once it leads.
    TransferLeader {
        #[arg(value_parser = parse_node_id)]
        id: NodeId,
    },
    /// Print a stopped node's data dir: hard state, segments, entries (offline).
    WalDump {
        dir: PathBuf,
        /// Only the summary, not every entry.
        #[arg(long)]
        summary: bool,
    },
    /// Cut a damaged log at its first bad record (offline; loses the entries
    /// from there on).
    WalRepair {
        dir: PathBuf,
        /// Really do it.
        #[arg(long)]
        yes: bool,
    },
}

pub(crate) fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

pub(crate) fn client_fail(e: ClientError) -> ExitCode {
    let code = match e {
        ClientError::NoLeader { .. } => EXIT_NO_LEADER,
        ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
        _ => EXIT_ERROR,
    };
    fail(code, e)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Offline commands need no cluster.toml.
    match &args.cmd {
        Cmd::Check {
            file,
            no_acks_between,
            acks_after,
        } => {
            let windows = check::Windows {
                no_acks_between: no_acks_between.as_ref().map(|v| (v[0], v[1])),
                acks_after: *acks_after,
            };
            return check::run(file, &windows, args.json);
        }
        Cmd::Now => {
            println!("{}", raftkit::bench::monotonic_ns());
            return ExitCode::SUCCESS;
        }
        Cmd::Floor { dir, seconds } => return bench::floor(dir, *seconds, args.json),
        Cmd::WalDump { dir, summary } => return wal::dump(dir, args.json, !summary),
        Cmd::WalRepair { dir, yes } => return wal::repair(dir, *yes),
        Cmd::Config { query } => return config::run(&args.config, query.as_ref(), args.json),
        Cmd::Json { path, file } => return query::run(path, file.as_deref()),
        Cmd::BinDir => return bin_dir(),
        Cmd::Plot(p) => return plot::plot(p),
        Cmd::Certs { action } => return certs::run(action, &args.config),
        _ => {}
    }
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_ARGS, e),
    };
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let Some(tls) = config.tls.as_mut() else {
            return fail(
                EXIT_BAD_ARGS,
                format!(
                    "--cert needs a [tls] section in {} (for the CA)",
                    args.config.display()
                ),
            );
        };
        tls.client_cert = Some(cert.clone());
        tls.client_key = Some(key.clone());
    }
    let config = config;
    // Bad [tls] files are named now, not reported as unreachable nodes.
    if let Err(e) = raftkit::client::tls_client_config(&config) {
        return fail(EXIT_BAD_ARGS, format!("tls: {e}"));
    }
    if let Some(n) = args.node {
        if let Err(e) = config.require_node(n) {
            return fail(EXIT_BAD_ARGS, e);
        }
    }
    let mut client = Client::new(config.clone(), args.node);
    client.timeout = std::time::Duration::from_secs_f64(args.timeout.max(0.1));
    match &args.cmd {
        Cmd::Put { key, value } => write(
            &mut client,
            &args,
            Op::Put {
                key: key.clone().into(),
                value: value.clone().into(),
            },
        ),
        Cmd::Delete { key } => write(
            &mut client,
            &args,
            Op::Delete {
                key: key.clone().into(),
            },
        ),
        Cmd::Append { data } => write(
            &mut client,
            &args,
            Op::Append {
                data: data.clone().into(),
            },
        ),
        Cmd::Cas {
            args: words,
            absent,
        } => {
            let (key, expected, new) = match (words.as_slice(), absent) {
                ([k, n], true) => (k, None, n),
                ([k, e, n], false) => (k, Some(e.clone().into_bytes()), n),
                _ => return fail(2, "usage: cas KEY EXPECTED NEW, or cas --absent KEY NEW"),
            };
            write(
                &mut client,
                &args,
                Op::Cas {
                    key: key.clone().into(),
                    expected,
                    new: new.clone().into(),
                },
            )
        }
        Cmd::Get { key, stale } => get(&mut client, &args, key, *stale),
        Cmd::Status => status(&mut client, &config, args.json),
        Cmd::Leader => leader(&client, &config, args.json),
        Cmd::Watch {
            dump,
            width,
            height,
        } => {
            let dump = match dump.map(|s| std::time::Duration::try_from_secs_f64(s.max(0.0))) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    eprintln!("error: --dump: {e}");
                    return ExitCode::from(2);
                }
                None => None,
            };
            watch::run(&with_members(&config), dump, *width, *height)
        }
        Cmd::Log { from, to, all } => {
            if *all {
                let all = with_members(&config);
                let mut all_client = Client::new(all.clone(), None);
                all_client.timeout = client.timeout;
                log_all(&mut all_client, &all, args.json)
            } else {
                let node = args.node.unwrap_or(config.nodes[0].id);
                log_one(&mut client, node, *from, *to, args.json)
            }
        }
        Cmd::Settle { history, wait } => settle::run(&config, history.as_deref(), *wait, args.json),
        Cmd::Now | Cmd::Check { .. } | Cmd::Floor { .. } => ExitCode::SUCCESS, // handled above
        Cmd::Bench(b) => bench::run(&config, b, args.json),
        Cmd::Timeline {
            out,
            interval_ms,
            seconds,
        } => plot::timeline(&config, out, *interval_ms, *seconds),
        Cmd::Plot(_) | Cmd::Certs { .. } => ExitCode::SUCCESS, // handled above
        Cmd::Fault { action } => fault::run(&mut client, &config, args.node, action),
        Cmd::Member { action } => member::run(&mut client, action, args.json),
        Cmd::TransferLeader { id } => member::transfer(&mut client, &config, *id, args.json),
        Cmd::WalDump { .. } | Cmd::WalRepair { .. } => ExitCode::SUCCESS, // handled above
        Cmd::Config { .. } | Cmd::Json { .. } | Cmd::BinDir => ExitCode::SUCCESS, // handled above
    }
}

fn write(client: &mut Client, args: &Args, op: Op) -> ExitCode {
    let key = op.key().map(text);
    match client.kv(op, false) {
        Ok((index, OpResult::CasMismatch(current))) => {
            if args.json {
                println!(
                    "{}",
                    json!({"ok": false, "index": index.0, "error": "cas mismatch", "current": current.as_deref().map(text)})
                );
            }
            fail(
                EXIT_CAS_MISMATCH,
                format!(
                    "cas mismatch on {:?}: current value is {}",
                    key.unwrap_or_default(),
                    current
                        .as_deref()
                        .map_or("absent".into(), |c| format!("{:?}", text(c)))
                ),
            )
        }
        Ok((index, result)) => {
            if args.json {
                let mut v = json!({"ok": true, "index": index.0});
                if let OpResult::Deleted(existed) = result {
                    v["existed"] = json!(existed);
                }
                println!("{v}");
            } else {
                match result {
                    OpResult::Deleted(false) => println!("OK (index {index}; key was absent)"),
                    _ => println!("OK (index {index})"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => client_fail(e),
    }
}

fn get(client: &mut Client, args: &Args, key: &str, stale: bool) -> ExitCode {
    if stale && args.node.is_none() {
        // A stale read is of one node's state: without --node, the first.
    }
    match client.kv(Op::Get { key: key.into() }, stale) {
        Ok((_, OpResult::Value(v))) => {
            if args.json {
                println!("{}", json!({"key": key, "value": v.as_deref().map(text)}));
            }
            match v {
                Some(v) => {
                    if !args.json {
                        println!("{}", text(&v));
                    }
                    ExitCode::SUCCESS
                }
                None => fail(EXIT_NOT_FOUND, format!("key {key:?} not found")),
            }
        }
        Ok((_, other)) => fail(EXIT_ERROR, format!("unexpected answer {other:?}")),
        Err(e) => client_fail(e),
    }
}

/// Every node's status, asked at once, each on its own connection (a node
/// that holds a connection without answering costs one read timeout, not
/// one per such node): cluster.toml's nodes, then the members it does not
/// list, found in the membership of the nodes that answered. Returns the
/// config with those members added, and the statuses in its node order.
pub(crate) fn statuses_with_members(
    config: &Config,
    timeout: std::time::Duration,
) -> (Config, Vec<(NodeId, Option<NodeStatus>)>) {
    let ask_all = |config: &Config, ids: &[NodeId]| -> Vec<(NodeId, Option<NodeStatus>)> {
        std::thread::scope(|scope| {
            let asks: Vec<_> = ids
                .iter()
                .map(|&id| {
                    let mut own = Client::new(config.clone(), Some(id));
                    own.timeout = timeout;
                    scope.spawn(move || (id, fetch_status(&mut own, id)))
                })
                .collect();
            asks.into_iter()
                .zip(ids)
                .map(|(ask, &id)| ask.join().unwrap_or((id, None)))
                .collect()
        })
    };
    let mut config = config.clone();
    let mut statuses = ask_all(&config, &config.ids());
    let known = config.nodes.len();
    for ns in statuses.iter().filter_map(|(_, s)| s.as_ref()) {
        for (&id, addr) in &ns.status.membership.addrs {
            config.learn_member(id, addr);
        }
    }
    let found: Vec<NodeId> = config.nodes[known..].iter().map(|n| n.id).collect();
    if !found.is_empty() {
        statuses.extend(ask_all(&config, &found));
    }
    (config, statuses)
}

/// cluster.toml's nodes and the members it does not list.
pub(crate) fn with_members(config: &Config) -> Config {
    statuses_with_members(config, std::time::Duration::from_secs(1)).0
}

pub(crate) fn fetch_status(client: &mut Client, node: NodeId) -> Option<NodeStatus> {
    match client.call(node, RequestBody::Status) {
        Ok(ResponseBody::Status(s)) => Some(*s),
        _ => None,
    }
}

/// The role a status row shows: a follower that is a learner, or not a
/// member at all, says so.
fn role_label(s: &raftkit::raft::Status) -> &'static str {
    if s.role != Role::Follower {
        s.role.name()
    } else if s.membership.is_learner(s.id) {
        "learner"
    } else if !s.membership.is_voter(s.id) {
        "non-member"
    } else {
        "follower"
    }
}

fn membership_json(s: &raftkit::raft::Status) -> Value {
    let ids =
        |set: &std::collections::BTreeSet<NodeId>| set.iter().map(|i| i.0).collect::<Vec<_>>();
    json!({
        "voters": ids(&s.membership.voters), "outgoing": ids(&s.membership.outgoing),
        "learners": ids(&s.membership.learners), "index": s.membership_index.0,
        "changing": s.membership_changing, "transferring_to": s.transferring_to.map(|t| t.0),
    })
}

fn status(client: &mut Client, config: &Config, json_out: bool) -> ExitCode {
    struct Row {
        id: NodeId,
        addr: String,
    }
    // Members cluster.toml does not list come from the membership.
    let (all, statuses) = statuses_with_members(config, client.timeout);
    let rows: Vec<(Row, Option<NodeStatus>)> = all
        .nodes
        .iter()
        .zip(statuses)
        .map(|(n, (_, s))| {
            let row = Row {
                id: n.id,
                addr: n.addr_text.clone(),
            };
            (row, s)
        })
        .collect();
    if json_out {
        let arr: Vec<Value> = rows
            .iter()
            .map(|(n, s)| match s {
                Some(ns) => {
                    let s = &ns.status;
                    json!({
                        "id": n.id.0, "addr": n.addr, "reachable": true, "role": s.role.name(),
                        "member": role_label(s), "membership": membership_json(s),
                        "term": s.current_term.0, "leader": s.leader.map(|l| l.0),
                        "commit_index": s.commit_index.0, "last_applied": s.last_applied.0,
                        "first_index": s.first_index.0, "last_index": s.last_index.0,
                        "voted_for": s.voted_for.map(|v| v.0), "uptime_ms": ns.uptime_ms,
                        "fault": fault_json(&ns.fault),
                        "peers": s.peers.iter().map(|p| json!({"id": p.id.0, "match_index": p.match_index.0, "next_index": p.next_index.0, "state": format!("{:?}", p.state).to_lowercase(), "inflight": p.inflight})).collect::<Vec<_>>(),
                    })
                }
                None => json!({"id": n.id.0, "addr": n.addr, "reachable": false, "role": null, "term": null, "leader": null, "commit_index": null, "last_applied": null, "first_index": null, "last_index": null}),
            })
            .collect();
        println!("{}", Value::Array(arr));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<4} {:<21} {:<12} {:>5} {:>6} {:>8} {:>8} {:>6} {:>6}  followers (match/next)",
        "id", "addr", "role", "term", "leader", "commit", "applied", "first", "last"
    );
    for (n, s) in &rows {
        match s {
            Some(ns) => {
                let s = &ns.status;
                let followers: Vec<String> = s
                    .peers
                    .iter()
                    .map(|p| format!("{}:{}/{}", p.id, p.match_index, p.next_index))
                    .collect();
                let mut extra = followers.join(" ");
                if !ns.fault.is_none() {
                    extra.push_str(&format!("  [{}]", fault::describe(&ns.fault)));
                }
                println!(
                    "{:<4} {:<21} {:<12} {:>5} {:>6} {:>8} {:>8} {:>6} {:>6}  {}",
                    n.id.to_string(),
                    n.addr,
                    role_label(s),
                    s.current_term.0,
                    s.leader.map_or("-".into(), |l| l.to_string()),
                    s.commit_index.0,
                    s.last_applied.0,
                    s.first_index.0,
                    s.last_index.0,
                    extra
                );
            }
            None => println!("{:<4} {:<21} {:<12}", n.id.to_string(), n.addr, "down"),
        }
    }
    // The membership as the node in the highest term sees it.
    if let Some(s) = rows
        .iter()
        .filter_map(|(_, s)| s.as_ref().map(|s| &s.status))
        .max_by_key(|s| (s.current_term, s.role == Role::Leader, s.membership_index))
    {
        let mut line = format!(
            "membership: {} (entry {})",
            s.membership, s.membership_index
        );
        if s.membership_changing {
            line.push_str("; a change is in progress");
        }
        if let Some(t) = s.transferring_to {
            line.push_str(&format!("; handing leadership to {t}"));
        }
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// The node that says it leads in the highest term any node says so (two
/// nodes can both say it for a moment: an old leader that has not yet
/// heard of the new term).
/// The nodes are asked at once (`statuses_with_members`), members that
/// cluster.toml does not list included.
fn leader(client: &Client, config: &Config, json_out: bool) -> ExitCode {
    let (_, statuses) = statuses_with_members(config, client.timeout);
    let mut up = Vec::new();
    let mut down = Vec::new();
    let mut best: Option<(NodeId, u64)> = None;
    for (id, status) in statuses {
        let Some(ns) = status else {
            down.push(id.0);
            continue;
        };
        up.push(id.0);
        let term = ns.status.current_term.0;
        let leads = ns.status.role == Role::Leader;
        if leads && best.is_none_or(|(_, t)| term > t) {
            best = Some((id, term));
        }
    }
    if json_out {
        println!(
            "{}",
            json!({"leader": best.map(|b| b.0 .0), "term": best.map(|b| b.1), "up": up, "down": down})
        );
    }
    match best {
        Some((id, _)) => {
            if !json_out {
                println!("{}", id.0);
            }
            ExitCode::SUCCESS
        }
        None if down.is_empty() => fail(EXIT_NO_LEADER, "no node says it leads"),
        None => fail(
            EXIT_NO_LEADER,
            format!(
                "no node says it leads (no answer from {})",
                down.iter()
                    .map(|d| format!("n{d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

fn bin_dir() -> ExitCode {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(EXIT_ERROR, format!("cannot find this binary's path: {e}")),
    };
    let Some(dir) = exe.parent() else {
        return fail(
            EXIT_ERROR,
            format!("{}: no parent directory", exe.display()),
        );
    };
    let mut out = std::io::stdout().lock();
    match out
        .write_all(dir.as_os_str().as_bytes())
        .and_then(|()| out.write_all(b"\n"))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_ERROR, format!("cannot write to stdout: {e}")),
    }
}

fn fault_json(f: &raftkit::wire::FaultSpec) -> Value {
    json!({
        "partition": f.partition.iter().map(|g| g.iter().map(|n| n.0).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "drop_rate": f.drop_rate_ppm as f64 / 1e6, "delay_ms": f.delay_ms, "jitter_ms": f.jitter_ms,
        "duplicate_rate": f.duplicate_rate_ppm as f64 / 1e6,
        "block_to": f.block_to.iter().map(|n| n.0).collect::<Vec<_>>(),
        "disk": match f.disk {
            raftkit::wire::DiskFault::None => "ok",
            raftkit::wire::DiskFault::Stall { .. } => "stall",
            raftkit::wire::DiskFault::Eio => "eio",
            raftkit::wire::DiskFault::Full => "full",
        },
        "disk_stall_ms": match f.disk {
            raftkit::wire::DiskFault::Stall { ms } => ms,
            _ => 0,
        },
    })
}

pub(crate) fn payload(e: &Entry) -> String {
    match e.kind {
        EntryKind::Noop => "(no-op)".into(),
        EntryKind::ConfChange => match raftkit::raft::Membership::from_bytes(&e.data) {
            Ok(m) => format!("membership: {m}"),
            Err(_) => format!(
                "(membership entry, {} bytes that do not decode)",
                e.data.len()
            ),
        },
        EntryKind::Command => match raftkit::kv::Command::decode(&e.data) {
            Ok(c) => match c.op {
                Op::Put { key, value } => format!("put {} {}", text(&key), text(&value)),
                Op::Get { key } => format!("get {}", text(&key)),
                Op::Delete { key } => format!("delete {}", text(&key)),
                Op::Cas { key, expected, new } => format!(
                    "cas {} {} {}",
                    text(&key),
                    expected.as_deref().map_or("(absent)".into(), text),
                    text(&new)
                ),
                Op::Append { data } => format!("append {}", text(&data)),
            },
            Err(_) => format!("({} raw bytes)", e.data.len()),
        },
    }
}

fn log_one(
    client: &mut Client,
    node: NodeId,
    from: Option<u64>,
    to: Option<u64>,
    json_out: bool,
) -> ExitCode {
    match client.log(node, from.unwrap_or(1), to.unwrap_or(0)) {
        Ok((commit, entries)) => {
            if json_out {
                let arr: Vec<Value> = entries
                    .iter()
                    .map(|e| json!({"index": e.index.0, "term": e.term.0, "committed": e.index <= commit, "payload": payload(e)}))
                    .collect();
                println!(
                    "{}",
                    json!({"node": node.0, "commit_index": commit.0, "entries": arr})
                );
            } else {
                println!("{node}: commit index {commit}");
                for e in &entries {
                    let mark = if e.index <= commit { ' ' } else { '*' };
                    println!("{:>7} t{:<4}{mark} {}", e.index.0, e.term.0, payload(e));
                }
                if entries.iter().any(|e| e.index > commit) {
                    println!("(* = not yet committed)");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => client_fail(e),
    }
}

/// All logs side by side, one row per node, one column per index, each
/// cell the entry's term; `|` after the cell of each node's commit index.
fn log_all(client: &mut Client, config: &Config, json_out: bool) -> ExitCode {
    let mut logs = Vec::new();
    for n in &config.nodes {
        logs.push((n.id, client.log(n.id, 1, 0).ok()));
    }
    if json_out {
        let arr: Vec<Value> = logs
            .iter()
            .map(|(id, l)| match l {
                Some((c, es)) => json!({"id": id.0, "reachable": true, "commit_index": c.0, "first_index": es.first().map_or(c.0 + 1, |e| e.index.0), "terms": es.iter().map(|e| e.term.0).collect::<Vec<_>>()}),
                None => json!({"id": id.0, "reachable": false}),
            })
            .collect();
        println!("{}", Value::Array(arr));
        return ExitCode::SUCCESS;
    }
    let last = logs
        .iter()
        .filter_map(|(_, l)| l.as_ref())
        .filter_map(|(_, es)| es.last().map(|e| e.index.0 as usize))
        .max()
        .unwrap_or(0);
    let first = last.saturating_sub(40) + 1;
    let w = format!("{last}").len().max(2) + 1;
    print!("{:<8}", "index");
    for i in first..=last {
        print!("{:>w$}", i);
    }
    println!();
    for (id, l) in &logs {
        print!("{:<8}", id.to_string());
        match l {
            None => println!("  (down)"),
            Some((commit, es)) => {
                // A node's log may start past 1 (compacted behind a
                // snapshot): `s` marks indexes its snapshot holds.
                let held_from = es
                    .first()
                    .map_or(commit.0 as usize + 1, |e| e.index.0 as usize);
                for i in first..=last {
                    let cell = if i < held_from && i as u64 <= commit.0 {
                        String::from("s")
                    } else {
                        i.checked_sub(held_from)
                            .and_then(|k| es.get(k))
                            .map_or(String::from("."), |e| e.term.0.to_string())
                    };
                    let mark = if i as u64 == commit.0 { "|" } else { "" };
                    print!("{:>w$}", format!("{cell}{mark}"), w = w);
                }
                println!("   commit={commit}");
            }
        }
    }
    if first > 1 {
        println!(
            "(showing the last {} indexes; cells are terms, | marks each node's commit index)",
            last - first + 1
        );
    } else {
        println!("(cells are terms; | marks each node's commit index)");
    }
    if logs
        .iter()
        .filter_map(|(_, l)| l.as_ref())
        .any(|(_, es)| es.first().is_some_and(|e| e.index.0 > 1))
    {
        println!("(s: compacted into the node's snapshot)");
    }
    ExitCode::SUCCESS
}
