//! `raft-ctl bench`: closed-loop load, live progress, a latency report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use raftkit::bench::timeline::Sampler;
use raftkit::bench::{self, BenchOptions, BenchResult, Live, OpMix, Target};
use raftkit::config::Config;
use raftkit::plot::{fault_windows_of_samples, Picture};
use serde_json::json;

use crate::{fail, EXIT_ERROR};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OpArg {
    /// Puts only.
    Put,
    /// Linearizable gets only.
    Get,
    /// Gets (--read-pct) and puts.
    Mixed,
    /// Gets (--read-pct), puts, cas and deletes: the drills' workload.
    Kv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// Every client starts at the leader.
    Leader,
    /// Clients start spread over the nodes (and follow redirects).
    Spread,
}

#[derive(ClapArgs, Debug)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request in flight (and its own
    /// client id).
    #[arg(long, short = 'c', default_value_t = 8)]
    clients: usize,
    /// Connections the clients share, their requests multiplexed (0: one
    /// per client).
    #[arg(long, default_value_t = 0)]
    conns: usize,
    /// Requests in flight per connection at most.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    #[arg(long, value_enum, default_value_t = OpArg::Put)]
    op: OpArg,
    /// Share of gets, in percent, for --op mixed and --op kv.
    #[arg(long, default_value_t = 50)]
    read_pct: u32,
    /// Keys are key-0 .. key-(K-1), chosen uniformly.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Every operation on a new key (key-0, key-1, … in the order issued)
    /// instead of --keys at random: `--op put --total N --distinct-keys`
    /// loads N distinct keys.
    #[arg(long)]
    distinct_keys: bool,
    /// Share of operations, in percent, on one hot key (key-0): a single
    /// key under contention, as a failure drill's load also wants.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    hot_key_pct: u32,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Seconds to measure after the warmup.
    #[arg(long, conflicts_with = "total")]
    duration: Option<f64>,
    /// Stop after this many operations instead.
    #[arg(long)]
    total: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, value_enum, default_value_t = TargetArg::Leader)]
    target: TargetArg,
    /// Generator threads (each drives its share of the clients with mio).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds without an answer after which an operation's outcome is
    /// unknown.
    #[arg(long, default_value_t = 5.0)]
    op_timeout: f64,
    /// Write every operation as a JSON line to FILE (see docs/HISTORY.md).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Draw the run as an SVG timeline to FILE: throughput, p50/p99
    /// latency, the leader over time, elections, injected network faults.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn op_name(op: OpMix) -> &'static str {
    match op {
        OpMix::Put => "put",
        OpMix::Get => "get",
        OpMix::Mixed { .. } => "mixed",
        OpMix::Kv { .. } => "kv",
    }
}

/// CPU seconds (user + system) of this process.
fn self_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU seconds of a process by PID, from /proc.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; 12 and 13 after the state field.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / hz)
}

/// Resident set and its peak of a process by PID, in MiB, from /proc.
fn proc_rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        line[field.len()..].split_whitespace().next()?.parse().ok()
    };
    Some((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

/// The node processes this machine runs, found by their PID files
/// (`<data_dir>/node.pid`, written by scripts/cluster.sh).
fn node_pids(config: &Config) -> Vec<(String, u32)> {
    config
        .nodes
        .iter()
        .filter_map(|n| {
            let text = std::fs::read_to_string(n.data_dir.join("node.pid")).ok()?;
            let pid: u32 = text.trim().parse().ok()?;
            proc_cpu(pid).map(|_| (n.id.to_string(), pid))
        })
        .collect()
}

pub fn run(config: &Config, a: &BenchArgs, json_out: bool) -> ExitCode {
    if a.clients == 0 {
        return fail(2, "--clients must be at least 1");
    }
    if a.read_pct > 100 {
        return fail(2, "--read-pct is a percentage (0 to 100)");
    }
    let op = match a.op {
        OpArg::Put => OpMix::Put,
        OpArg::Get => OpMix::Get,
        OpArg::Mixed => OpMix::Mixed {
            read_pct: a.read_pct,
        },
        OpArg::Kv => OpMix::Kv {
            read_pct: a.read_pct,
        },
    };
    let duration = match (a.duration, a.total) {
        (Some(d), _) => Some(Duration::from_secs_f64(d.max(0.0))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let opts = BenchOptions {
        clients: a.clients,
        conns: a.conns,
        window: a.window.max(1),
        threads: a.threads.max(1),
        op,
        keys: a.keys.max(1),
        distinct_keys: a.distinct_keys,
        hot_key_pct: a.hot_key_pct,
        value_size: a.value_size,
        duration,
        total: a.total,
        warmup: Duration::from_secs_f64(a.warmup.max(0.0)),
        target: match a.target {
            TargetArg::Leader => Target::Leader,
            TargetArg::Spread => Target::Spread,
        },
        op_timeout: Duration::from_secs_f64(a.op_timeout.max(0.01)),
        record: a.record.is_some(),
        series: a.plot.is_some(),
        seed: a.seed,
    };
    // Connections in use: --conns, at most one per client.
    let conns = if a.conns == 0 {
        a.clients
    } else {
        a.conns.min(a.clients)
    };
    let pids = node_pids(config);
    let nodes_cpu0: Vec<Option<f64>> = pids.iter().map(|(_, p)| proc_cpu(*p)).collect();
    let cpu0 = self_cpu();
    let sampler = match &a.plot {
        Some(_) => match Sampler::start(config, crate::plot::SAMPLE_EVERY) {
            Ok(s) => Some(s),
            Err(e) => return fail(EXIT_ERROR, format!("cannot start the status sampler: {e}")),
        },
        None => None,
    };
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let worker = {
        let (config, opts, live) = (config.clone(), opts.clone(), Arc::clone(&live));
        std::thread::spawn(move || bench::run(&config, &opts, live))
    };
    let mut last = 0u64;
    let mut tick = started;
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        if tick.elapsed() >= Duration::from_secs(1) {
            tick = Instant::now();
            let done = live.completed.load(Ordering::Relaxed);
            if !a.quiet {
                eprintln!(
                    "[{:>4.0} s] {:>8} ops/s  {:>9} done  {:>5} errors",
                    started.elapsed().as_secs_f64(),
                    done - last,
                    done,
                    live.errors.load(Ordering::Relaxed)
                );
            }
            last = done;
        }
    }
    let r: BenchResult = match worker.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(EXIT_ERROR, format!("bench: {e}")),
        Err(_) => return fail(EXIT_ERROR, "bench: the load generator panicked"),
    };
    let cpu = self_cpu() - cpu0;
    let samples = sampler.map(Sampler::stop).unwrap_or_default();
    let nodes_cpu: Vec<(String, f64)> = pids
        .iter()
        .zip(nodes_cpu0)
        .filter_map(|((n, p), c0)| Some((n.clone(), proc_cpu(*p)? - c0?)))
        .collect();
    let nodes_rss: Vec<(String, (f64, f64))> = pids
        .iter()
        .filter_map(|(n, p)| Some((n.clone(), proc_rss_mib(*p)?)))
        .collect();
    let completed = (r.ok + r.failed).max(1) as f64;
    let node_us_per_op = (!nodes_cpu.is_empty())
        .then(|| nodes_cpu.iter().map(|(_, c)| c).sum::<f64>() * 1e6 / completed);
    if let Some(path) = &a.record {
        if let Err(e) = std::fs::write(path, &r.history) {
            return fail(EXIT_ERROR, format!("{}: {e}", path.display()));
        }
    }
    let h = &r.hist;
    if let (Some(path), Some(series)) = (&a.plot, &r.series) {
        let picture = Picture {
            title: format!(
                "raft-ctl bench: {}, {} clients, {}-byte values, {} keys",
                op_name(op),
                a.clients,
                a.value_size,
                a.keys
            ),
            subtitle: format!(
                "{:.0} ops/s over {:.1} s after {:.1} s warmup; latency p50 {} µs, p99 {} µs; {} ok, {} failed, {} unknown",
                r.ops_per_s(),
                r.measured_secs,
                a.warmup,
                h.quantile(0.5),
                h.quantile(0.99),
                r.ok,
                r.failed,
                r.unknown
            ),
            series: series.clone(),
            faults: fault_windows_of_samples(&samples),
            samples,
            marks: Vec::new(),
        };
        if let Err(e) = std::fs::write(path, picture.svg()) {
            return fail(EXIT_ERROR, format!("{}: {e}", path.display()));
        }
    }
    let errors_total: u64 = r.errors.values().sum();
    if json_out {
        let out = json!({
            "ops_per_s": (r.ops_per_s() * 10.0).round() / 10.0,
            "lat": {
                "p50": h.quantile(0.50), "p90": h.quantile(0.90), "p99": h.quantile(0.99),
                "p999": h.quantile(0.999), "max": h.max(), "mean": (h.mean() * 10.0).round() / 10.0,
            },
            "clients": a.clients, "conns": conns, "op": op_name(op), "value_size": a.value_size, "keys": a.keys, "distinct_keys": a.distinct_keys, "hot_key_pct": a.hot_key_pct,
            "read_pct": a.read_pct, "threads": opts.threads,
            "duration_s": r.measured_secs, "measured_ops": r.measured_ops,
            "ok": r.ok, "failed": r.failed, "unknown": r.unknown,
            "errors": errors_total, "errors_by_kind": r.errors,
            "redirects": r.redirects, "retries": r.retries, "reconnects": r.reconnects,
            "leaders_seen": r.leaders_seen, "max_write_gap_ms": r.max_write_gap.as_millis() as u64,
            "client_cpu_pct": (cpu / r.wall_secs.max(1e-9) * 1000.0).round() / 10.0,
            "node_cpu_us_per_op": node_us_per_op.map(|v| v.round()),
            "node_cpu_s": nodes_cpu.iter().map(|(n, c)| (n.clone(), (c * 1000.0).round() / 1000.0)).collect::<std::collections::BTreeMap<_, _>>(),
            "node_rss_mib": nodes_rss.iter().map(|(n, (now, _))| (n.clone(), now.round())).collect::<std::collections::BTreeMap<_, _>>(),
            "node_peak_rss_mib": nodes_rss.iter().map(|(n, (_, peak))| (n.clone(), peak.round())).collect::<std::collections::BTreeMap<_, _>>(),
            "picture": a.plot.as_ref().map(|p| p.display().to_string()),
        });
        println!("{out}");
    } else {
        println!(
            "{}, {} clients over {} connections, {}-byte values, {} keys, {:.1} s measured after {:.1} s warmup",
            op_name(op),
            a.clients,
            conns,
            a.value_size,
            a.keys,
            r.measured_secs,
            a.warmup
        );
        println!(
            "  {:.0} ops/s   ({} ok, {} failed, {} unknown outcome)",
            r.ops_per_s(),
            r.ok,
            r.failed,
            r.unknown
        );
        println!(
            "  latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            h.quantile(0.5),
            h.quantile(0.9),
            h.quantile(0.99),
            h.quantile(0.999),
            h.max()
        );
        let errs: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "  errors: {}   redirects {}  retries {}  reconnects {}",
            if errs.is_empty() {
                "none".into()
            } else {
                errs.join(", ")
            },
            r.redirects,
            r.retries,
            r.reconnects
        );
        let per_node: Vec<String> = nodes_cpu
            .iter()
            .map(|(n, c)| format!("{n} {:.0}", c * 1e6 / completed))
            .collect();
        println!(
            "  CPU: generator {:.0}% of one core; nodes {}",
            cpu / r.wall_secs.max(1e-9) * 100.0,
            match node_us_per_op {
                Some(t) => format!("{t:.0} µs per op ({})", per_node.join(", ")),
                None => "not visible (no PID files in the data dirs)".into(),
            }
        );
        if !nodes_rss.is_empty() {
            let rss: Vec<String> = nodes_rss
                .iter()
                .map(|(n, (now, peak))| format!("{n} {now:.0} MiB (peak {peak:.0})"))
                .collect();
            println!(
                "  memory: nodes' resident sets at the end {}",
                rss.join(", ")
            );
        }
        if let Some(p) = &a.record {
            println!(
                "  history: {} ({} operations)",
                p.display(),
                r.ok + r.failed + r.unknown
            );
        }
        if let Some(p) = &a.plot {
            println!("  picture: {}", p.display());
        }
    }
    ExitCode::SUCCESS
}

/// The floor under any commit latency on this machine: `fdatasync` after a
/// small append in `dir`, and a loopback TCP round trip. Medians in µs.
pub fn floor(dir: &std::path::Path, secs: f64, json_out: bool) -> ExitCode {
    use std::io::{Read, Write};
    let lat = match bench::fdatasync_loop(dir, secs) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                EXIT_ERROR,
                format!("{}: write/fdatasync: {e}", dir.display()),
            )
        }
    };
    let fsync_p50 = lat[lat.len() / 2] as f64 / 1000.0;
    // Loopback ping-pong of one byte, Nagle off.
    let rtt = (|| -> std::io::Result<f64> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = l.accept()?;
            s.set_nodelay(true)?;
            let mut b = [0u8; 1];
            while s.read(&mut b)? == 1 {
                s.write_all(&b)?;
            }
            Ok(())
        });
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        let mut rtts = Vec::new();
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            let t = Instant::now();
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            rtts.push(t.elapsed().as_nanos() as u64);
        }
        drop(s);
        let _ = echo.join();
        rtts.sort_unstable();
        Ok(rtts[rtts.len() / 2] as f64 / 1000.0)
    })();
    let rtt_p50 = match rtt {
        Ok(r) => r,
        Err(e) => return fail(EXIT_ERROR, format!("loopback round trip: {e}")),
    };
    if json_out {
        println!(
            "{}",
            json!({"fdatasync_p50_us": (fsync_p50 * 10.0).round() / 10.0,
                   "rtt_p50_us": (rtt_p50 * 10.0).round() / 10.0,
                   "fsyncs": lat.len()})
        );
    } else {
        println!(
            "fdatasync p50 {fsync_p50:.0} µs (append of 125 bytes, {} samples in {})",
            lat.len(),
            dir.display()
        );
        println!("loopback TCP round trip p50 {rtt_p50:.0} µs");
        println!(
            "commit latency target for c=1 puts: 1.5 x ({fsync_p50:.0} + {rtt_p50:.0}) = {:.0} µs",
            1.5 * (fsync_p50 + rtt_p50)
        );
    }
    ExitCode::SUCCESS
}
