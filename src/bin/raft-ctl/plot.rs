//! `raft-ctl timeline` (sample every node's status into a file while a run
//! goes on) and `raft-ctl plot` (draw a recorded run as an SVG timeline);
//! `bench --plot` does both in one process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use raftkit::bench::series::SLOT_NS_DEFAULT;
use raftkit::bench::timeline::{Sample, Sampler};
use raftkit::config::Config;
use raftkit::plot::{events_of_text, fault_windows_of_samples, series_of_history, Picture};

use crate::{fail, EXIT_BAD_ARGS, EXIT_ERROR};

/// How often each node is asked for its status while a run is pictured.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

#[derive(ClapArgs, Debug)]
pub struct PlotArgs {
    /// A history written by `bench --record` (docs/HISTORY.md).
    #[arg(long)]
    history: PathBuf,
    /// Status samples written by `raft-ctl timeline`: the leader over time,
    /// elections, nodes not answering, network faults the nodes reported.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// A fault schedule, one event a line: `NS + LABEL` opens a window,
    /// `NS - LABEL` closes it, `NS ! LABEL` marks an instant (ns on the
    /// history's clock, `raft-ctl now`). Without it, the network faults the
    /// nodes reported are the windows.
    #[arg(long)]
    events: Option<PathBuf>,
    #[arg(long, default_value = "a run")]
    title: String,
    /// A line under the title.
    #[arg(long, default_value = "")]
    subtitle: String,
    /// Leave out operations invoked after this instant, and samples taken
    /// after it (ns on the history's clock): the end of the load.
    #[arg(long, value_name = "NS")]
    until: Option<u64>,
    /// Where to write the SVG.
    #[arg(long, value_name = "FILE.svg")]
    out: PathBuf,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `raft-ctl plot`: offline, from files.
pub fn plot(a: &PlotArgs) -> ExitCode {
    let history = match read(&a.history) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_BAD_ARGS, e),
    };
    let series = series_of_history(&history, SLOT_NS_DEFAULT, a.until);
    let samples: Vec<Sample> = match &a.timeline {
        Some(p) => match read(p) {
            Ok(t) => t
                .lines()
                .filter_map(Sample::parse)
                .filter(|s| a.until.is_none_or(|u| s.t_ns <= u))
                .collect(),
            Err(e) => return fail(EXIT_BAD_ARGS, e),
        },
        None => Vec::new(),
    };
    let end_ns = a.until.unwrap_or_else(|| {
        samples
            .iter()
            .map(|s| s.t_ns)
            .max()
            .unwrap_or(0)
            .max(series.end_ns())
    });
    let (faults, marks) = match &a.events {
        Some(p) => match read(p) {
            Ok(t) => events_of_text(&t, end_ns),
            Err(e) => return fail(EXIT_BAD_ARGS, e),
        },
        None => (fault_windows_of_samples(&samples), Vec::new()),
    };
    let picture = Picture {
        title: a.title.clone(),
        subtitle: a.subtitle.clone(),
        series,
        samples,
        faults,
        marks,
    };
    if let Err(e) = std::fs::write(&a.out, picture.svg()) {
        return fail(EXIT_ERROR, format!("{}: {e}", a.out.display()));
    }
    println!("{}", a.out.display());
    ExitCode::SUCCESS
}

/// `raft-ctl timeline --out FILE`: one JSON line per node per interval,
/// each written whole and flushed, until `seconds` have passed (or the
/// process is signalled: a script stops it by PID).
pub fn timeline(config: &Config, out: &Path, interval_ms: u64, seconds: f64) -> ExitCode {
    let file = match std::fs::File::create(out) {
        Ok(f) => f,
        Err(e) => return fail(EXIT_ERROR, format!("{}: {e}", out.display())),
    };
    let mut file = std::io::BufWriter::new(file);
    let sampler = match Sampler::start(config, Duration::from_millis(interval_ms.max(10))) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_ERROR, format!("cannot start the sampler: {e}")),
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    let write = |file: &mut std::io::BufWriter<std::fs::File>, s: &Sample| {
        writeln!(file, "{}", s.to_json()).and_then(|_| file.flush())
    };
    while Instant::now() < end {
        if let Some(s) = sampler.next(Duration::from_millis(100)) {
            if let Err(e) = write(&mut file, &s) {
                return fail(EXIT_ERROR, format!("{}: {e}", out.display()));
            }
        }
    }
    for s in sampler.stop() {
        if let Err(e) = write(&mut file, &s) {
            return fail(EXIT_ERROR, format!("{}: {e}", out.display()));
        }
    }
    ExitCode::SUCCESS
}
