//! Pictures of runs: one SVG timeline of a load run or a failure drill.
//!
//! ```text
//!  title, what ran, how long
//!  ┌ throughput (answered ops/s) ───────────────────────┐   fault windows are
//!  │ ‾‾‾‾‾‾\____/‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾\__/‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾ │   shaded and named
//!  ├ latency (ms, log scale): p50, p99 ─────────────────┤   across every band;
//!  │ ____/\_____________________/\____________________ │   elections are
//!  ├ leader  [   n1   ][n2          ][ n3              ]┤   dashed lines with
//!  │ n1 n2 n3: leader / follower / candidate / no answer │   the new term
//!  └ seconds ───────────────────────────────────────────┘
//! ```
//!
//! The inputs are plain data: a [`Series`] of operations over time (from
//! the load generator, or read from a recorded history), status
//! [`Sample`]s of every node (from `bench::timeline`), and named fault
//! windows and instants (a drill's schedule). Everything is drawn by hand
//! as SVG 1.1 text, no dependency; every series is a `<g>` or `<path>`
//! with an `id` (`throughput`, `latency-p50`, `latency-p99`, `faults`,
//! `leader`, `elections`, `nodes`), so tests and scripts can find them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::bench::series::Series;
use crate::bench::timeline::Sample;
use crate::raft::Role;

/// A node whose last answer is older than this shows as not answering
/// (samples come every 200 ms or so).
pub const SAMPLE_FRESH_NS: u64 = 1_500_000_000;
/// Points per line at most: slots are merged to stay under it.
const POINTS_MAX: usize = 400;

/// A stretch of time with a name: a fault in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    pub label: String,
}

/// An instant with a name (a node killed, restarted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub t_ns: u64,
    pub label: String,
}

/// Everything one picture shows.
#[derive(Clone, Debug)]
pub struct Picture {
    pub title: String,
    /// A second line under the title (the verdict, the workload).
    pub subtitle: String,
    pub series: Series,
    pub samples: Vec<Sample>,
    pub faults: Vec<Window>,
    pub marks: Vec<Mark>,
}

/// The state of a node over a stretch of time, for its lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Leader,
    Follower,
    Candidate,
    NoAnswer,
}

/// A stretch of time with one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span<T> {
    pub start_ns: u64,
    pub end_ns: u64,
    pub value: T,
}

// ---- reading the inputs ----------------------------------------------------------

/// The operations of a recorded history (docs/HISTORY.md), one JSON line
/// each, as a series of `slot_ns` slots from the first invocation. Lines
/// that do not parse are skipped; operations with no answer are not
/// counted (they have no latency), nor are those invoked after `until_ns`
/// (a drill's final reads, added by `settle` after the load).
pub fn series_of_history(text: &str, slot_ns: u64, until_ns: Option<u64>) -> Series {
    let mut ops: Vec<(u64, u64, bool)> = Vec::new();
    let mut start = u64::MAX;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(invoke) = v.get("invoke_ns").and_then(|x| x.as_u64()) else {
            continue;
        };
        if until_ns.is_some_and(|u| invoke > u) {
            continue;
        }
        start = start.min(invoke);
        let complete = v.get("complete_ns").and_then(|x| x.as_u64());
        let ok = v.get("ok").and_then(|x| x.as_bool());
        if let (Some(c), Some(ok)) = (complete, ok) {
            ops.push((c, c.saturating_sub(invoke) / 1000, ok));
        }
    }
    let mut s = Series::new(if start == u64::MAX { 0 } else { start }, slot_ns);
    for (c, us, ok) in ops {
        s.record(c, us, ok);
    }
    s
}

/// A drill's schedule: one event a line, `NS + LABEL` opens a window,
/// `NS - LABEL` closes the last open window of that label, `NS ! LABEL`
/// is an instant. A window still open at the end lasts until `end_ns`.
pub fn events_of_text(text: &str, end_ns: u64) -> (Vec<Window>, Vec<Mark>) {
    let mut open: Vec<(String, u64)> = Vec::new();
    let mut windows = Vec::new();
    let mut marks = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(t), Some(kind), Some(label)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(t_ns) = t.parse::<u64>() else {
            continue;
        };
        let label = label.trim().to_string();
        match kind {
            "+" => open.push((label, t_ns)),
            "-" => {
                if let Some(i) = open.iter().rposition(|(l, _)| *l == label) {
                    let (label, start_ns) = open.remove(i);
                    windows.push(Window {
                        start_ns,
                        end_ns: t_ns.max(start_ns),
                        label,
                    });
                }
            }
            "!" => marks.push(Mark { t_ns, label }),
            _ => {}
        }
    }
    for (label, start_ns) in open {
        windows.push(Window {
            start_ns,
            end_ns: end_ns.max(start_ns),
            label,
        });
    }
    windows.sort_by_key(|w| w.start_ns);
    (windows, marks)
}

/// Injected network faults as the nodes reported them: one window per
/// stretch in which some node reported the same fault (a fault set on
/// every node is one window).
pub fn fault_windows_of_samples(samples: &[Sample]) -> Vec<Window> {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.t_ns);
    // Per label, the instants some node reported it.
    let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for s in &sorted {
        if let Some(st) = &s.state {
            if !st.fault.is_empty() {
                seen.entry(st.fault.as_str()).or_default().push(s.t_ns);
            }
        }
    }
    let mut out = Vec::new();
    for (label, times) in seen {
        let mut start = times[0];
        let mut last = times[0];
        for &t in &times[1..] {
            if t - last > SAMPLE_FRESH_NS {
                out.push(Window {
                    start_ns: start,
                    end_ns: last,
                    label: label.to_string(),
                });
                start = t;
            }
            last = t;
        }
        out.push(Window {
            start_ns: start,
            end_ns: last,
            label: label.to_string(),
        });
    }
    out.sort_by_key(|w| w.start_ns);
    out
}

// ---- what the samples say over time ------------------------------------------------

/// The node ids that appear in the samples.
pub fn nodes_of(samples: &[Sample]) -> Vec<u64> {
    samples
        .iter()
        .map(|s| s.node)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn push_span<T: PartialEq>(spans: &mut Vec<Span<T>>, start_ns: u64, end_ns: u64, value: T) {
    if end_ns <= start_ns {
        return;
    }
    if let Some(last) = spans.last_mut() {
        if last.value == value && last.end_ns == start_ns {
            last.end_ns = end_ns;
            return;
        }
    }
    spans.push(Span {
        start_ns,
        end_ns,
        value,
    });
}

/// The instants at which something may change: every sample, and every
/// sample's expiry.
fn change_points(samples: &[Sample], end_ns: u64) -> Vec<u64> {
    let mut t: Vec<u64> = samples
        .iter()
        .flat_map(|s| [s.t_ns, s.t_ns + SAMPLE_FRESH_NS])
        .filter(|&t| t <= end_ns)
        .collect();
    t.push(end_ns);
    t.sort_unstable();
    t.dedup();
    t
}

/// Sweeps the samples in time order: `f` sees, at each change point, the
/// last fresh sample of every node (by position in `nodes`).
fn sweep(
    samples: &[Sample],
    nodes: &[u64],
    end_ns: u64,
    mut f: impl FnMut(u64, u64, &[Option<&Sample>]),
) {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.t_ns);
    let points = change_points(samples, end_ns);
    let mut last: Vec<Option<&Sample>> = vec![None; nodes.len()];
    let mut next = 0;
    for w in points.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        while next < sorted.len() && sorted[next].t_ns <= t {
            if let Some(k) = nodes.iter().position(|&n| n == sorted[next].node) {
                last[k] = Some(sorted[next]);
            }
            next += 1;
        }
        let fresh: Vec<Option<&Sample>> = last
            .iter()
            .map(|s| s.filter(|s| t < s.t_ns + SAMPLE_FRESH_NS))
            .collect();
        f(t, t_next, &fresh);
    }
}

/// Which node led over time (the one that says it leads in the highest
/// term among those answering), None while none did.
pub fn leader_spans(samples: &[Sample], end_ns: u64) -> Vec<Span<Option<(u64, u64)>>> {
    let nodes = nodes_of(samples);
    let mut spans = Vec::new();
    sweep(samples, &nodes, end_ns, |t, t_next, fresh| {
        let leader = fresh
            .iter()
            .flatten()
            .filter_map(|s| s.state.as_ref().map(|st| (s.node, st)))
            .filter(|(_, st)| st.role == Role::Leader)
            .max_by_key(|(_, st)| st.term)
            .map(|(n, st)| (n, st.term));
        push_span(&mut spans, t, t_next, leader);
    });
    spans
}

/// Each node's lane over time.
pub fn node_lanes(samples: &[Sample], end_ns: u64) -> BTreeMap<u64, Vec<Span<Lane>>> {
    let nodes = nodes_of(samples);
    let mut lanes: BTreeMap<u64, Vec<Span<Lane>>> =
        nodes.iter().map(|&n| (n, Vec::new())).collect();
    sweep(samples, &nodes, end_ns, |t, t_next, fresh| {
        for (k, s) in fresh.iter().enumerate() {
            let lane = match s.and_then(|s| s.state.as_ref()).map(|st| st.role) {
                Some(Role::Leader) => Lane::Leader,
                Some(Role::Follower) => Lane::Follower,
                Some(Role::Candidate | Role::PreCandidate) => Lane::Candidate,
                None => Lane::NoAnswer,
            };
            if let Some(spans) = lanes.get_mut(&nodes[k]) {
                push_span(spans, t, t_next, lane);
            }
        }
    });
    lanes
}

/// Elections: the first sample in which some node says it leads a term
/// (`n2 t5`), in time order. The first leader of the run counts too.
pub fn elections(samples: &[Sample]) -> Vec<Mark> {
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.t_ns);
    let mut terms = BTreeSet::new();
    let mut out = Vec::new();
    for s in sorted {
        if let Some(st) = &s.state {
            if st.role == Role::Leader && terms.insert(st.term) {
                out.push(Mark {
                    t_ns: s.t_ns,
                    label: format!("n{} t{}", s.node, st.term),
                });
            }
        }
    }
    out
}

// ---- drawing ------------------------------------------------------------------------

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 70.0;
const PANEL_H: f64 = 190.0;
const GAP: f64 = 34.0;
const BAND_H: f64 = 22.0;
const LANE_H: f64 = 14.0;

const COLOUR_THROUGHPUT: &str = "#1f77b4";
const COLOUR_P50: &str = "#2ca02c";
const COLOUR_P99: &str = "#d62728";
const COLOUR_FAULT: &str = "#ff7f0e";
const COLOUR_ELECTION: &str = "#7b3294";
/// Colours of the leader band, by node (cycled).
const NODE_COLOURS: [&str; 6] = [
    "#4e79a7", "#59a14f", "#edc948", "#b07aa1", "#76b7b2", "#9c755f",
];

fn node_colour(nodes: &[u64], node: u64) -> &'static str {
    let k = nodes.iter().position(|&n| n == node).unwrap_or(0);
    NODE_COLOURS[k % NODE_COLOURS.len()]
}

/// Text for an SVG text node or attribute.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A round step for about `ticks` ticks over `range`: 1, 2 or 5 × 10^k.
fn nice_step(range: f64, ticks: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_num(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", trim(v / 1_000_000.0))
    } else if v >= 1_000.0 {
        format!("{}k", trim(v / 1_000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Maps time to x.
struct TimeAxis {
    start_ns: u64,
    end_ns: u64,
}

impl TimeAxis {
    fn x(&self, t_ns: u64) -> f64 {
        let span = (self.end_ns - self.start_ns).max(1) as f64;
        let t = t_ns.clamp(self.start_ns, self.end_ns) - self.start_ns;
        LEFT + (WIDTH - LEFT - RIGHT) * t as f64 / span
    }

    fn secs(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 / 1e9
    }
}

/// A path through `points` (x, y), broken where a point is None.
fn path_of(points: &[(f64, Option<f64>)]) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    for &(x, y) in points {
        match y {
            Some(y) => {
                let _ = write!(d, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    d.trim_end().to_string()
}

impl Picture {
    /// Where the picture starts and ends: the operations, and the samples
    /// and faults around them.
    fn bounds(&self) -> (u64, u64) {
        let mut start = self.series.start_ns;
        let mut end = self.series.end_ns();
        if self.series.slots.is_empty() {
            start = u64::MAX;
            end = 0;
        }
        for t in self
            .samples
            .iter()
            .map(|s| s.t_ns)
            .chain(self.faults.iter().flat_map(|w| [w.start_ns, w.end_ns]))
            .chain(self.marks.iter().map(|m| m.t_ns))
        {
            start = start.min(t);
            end = end.max(t);
        }
        if start == u64::MAX {
            (0, 1)
        } else {
            (start, end.max(start + 1))
        }
    }

    /// The picture as an SVG document.
    pub fn svg(&self) -> String {
        let (start_ns, end_ns) = self.bounds();
        let axis = TimeAxis { start_ns, end_ns };
        let nodes = nodes_of(&self.samples);
        let lanes_top = TOP + 2.0 * PANEL_H + 2.0 * GAP + BAND_H + 6.0;
        let lanes_bottom = lanes_top + LANE_H * nodes.len() as f64;
        let axis_y = lanes_bottom + 8.0;
        let height = axis_y + 64.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text id="title" x="{LEFT}" y="24" font-size="17" font-weight="bold">{}</text>
<text id="subtitle" x="{LEFT}" y="44" fill="#444">{}</text>"##,
            esc(&self.title),
            esc(&self.subtitle)
        );
        self.draw_faults(&mut s, &axis, TOP, lanes_bottom);
        let series = self.coarse_series();
        self.draw_throughput(&mut s, &axis, &series, TOP);
        self.draw_latency(&mut s, &axis, &series, TOP + PANEL_H + GAP);
        let band_y = TOP + 2.0 * PANEL_H + 2.0 * GAP;
        self.draw_leader(&mut s, &axis, &nodes, band_y);
        self.draw_lanes(&mut s, &axis, &nodes, lanes_top);
        self.draw_elections(&mut s, &axis, TOP, band_y + BAND_H);
        self.draw_marks(&mut s, &axis, lanes_bottom);
        self.draw_time_axis(&mut s, &axis, axis_y);
        self.draw_legend(&mut s, &nodes, height - 18.0);
        s.push_str("</svg>\n");
        s
    }

    fn coarse_series(&self) -> Series {
        let factor = self.series.slots.len().div_ceil(POINTS_MAX).max(1);
        let mut s = self.series.coarsen(factor);
        // The run ended somewhere in the last slot: its rate would read low.
        if s.slots.len() > 1 {
            s.slots.pop();
        }
        s
    }

    fn draw_faults(&self, s: &mut String, axis: &TimeAxis, top: f64, bottom: f64) {
        let _ = writeln!(s, r#"<g id="faults">"#);
        for (i, w) in self.faults.iter().enumerate() {
            let (x0, x1) = (axis.x(w.start_ns), axis.x(w.end_ns));
            let width = (x1 - x0).max(2.0);
            let _ = writeln!(
                s,
                r#"<rect class="fault" x="{x0:.1}" y="{top:.1}" width="{width:.1}" height="{:.1}" fill="{COLOUR_FAULT}" fill-opacity="0.16"><title>{}</title></rect>"#,
                bottom - top,
                esc(&w.label)
            );
            // Labels stagger down three rows, so neighbours do not overlap.
            let ty = top + 13.0 + 13.0 * (i % 3) as f64;
            let _ = writeln!(
                s,
                r##"<text class="fault-label" x="{:.1}" y="{ty:.1}" font-size="11" fill="#a04000">{}</text>"##,
                x0 + 3.0,
                esc(&w.label)
            );
        }
        let _ = writeln!(s, "</g>");
    }

    fn panel_frame(s: &mut String, top: f64, title: &str) {
        let w = WIDTH - LEFT - RIGHT;
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top}" width="{w}" height="{PANEL_H}" fill="none" stroke="#999"/>
<text x="{:.1}" y="{:.1}" font-weight="bold" fill="#333">{}</text>"##,
            LEFT + 4.0,
            top - 6.0,
            esc(title)
        );
    }

    fn draw_throughput(&self, s: &mut String, axis: &TimeAxis, series: &Series, top: f64) {
        Self::panel_frame(s, top, "throughput (answered operations per second)");
        let secs = series.slot_ns as f64 / 1e9;
        let values: Vec<(u64, f64)> = series
            .slots
            .iter()
            .enumerate()
            .map(|(i, sl)| {
                let mid = series.start_ns + series.slot_ns * i as u64 + series.slot_ns / 2;
                (mid, (sl.ok + sl.failed) as f64 / secs)
            })
            .collect();
        let max = values.iter().map(|v| v.1).fold(0.0, f64::max);
        let step = nice_step(max.max(1.0), 4.0);
        let top_value = (max / step).ceil().max(1.0) * step;
        let y = |v: f64| top + PANEL_H - PANEL_H * v / top_value;
        let mut tick = 0.0;
        while tick <= top_value + step / 2.0 {
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
                WIDTH - RIGHT,
                y(tick),
                y(tick),
                LEFT - 6.0,
                y(tick) + 4.0,
                fmt_num(tick)
            );
            tick += step;
        }
        let points: Vec<(f64, Option<f64>)> = values
            .iter()
            .map(|&(t, v)| (axis.x(t), Some(y(v))))
            .collect();
        let _ = writeln!(
            s,
            r#"<path id="throughput" d="{}" fill="none" stroke="{COLOUR_THROUGHPUT}" stroke-width="1.6"/>"#,
            path_of(&points)
        );
    }

    fn draw_latency(&self, s: &mut String, axis: &TimeAxis, series: &Series, top: f64) {
        Self::panel_frame(s, top, "latency (ms, log scale): p50 and p99 per interval");
        let mid = |i: usize| series.start_ns + series.slot_ns * i as u64 + series.slot_ns / 2;
        let ms = |q: f64| -> Vec<(u64, Option<f64>)> {
            series
                .slots
                .iter()
                .enumerate()
                .map(|(i, sl)| {
                    (
                        mid(i),
                        sl.quantile_us(q).map(|us| us.max(1) as f64 / 1000.0),
                    )
                })
                .collect()
        };
        let (p50, p99) = (ms(0.50), ms(0.99));
        let present = || p50.iter().chain(&p99).filter_map(|v| v.1);
        let lo = present().fold(f64::INFINITY, f64::min);
        let hi = present().fold(0.0, f64::max);
        let (lo_exp, hi_exp) = if lo.is_finite() {
            (lo.log10().floor() as i32, (hi.log10().ceil() as i32))
        } else {
            (-1, 1)
        };
        let hi_exp = hi_exp.max(lo_exp + 1);
        let y = |v: f64| {
            let f = (v.log10() - lo_exp as f64) / (hi_exp - lo_exp) as f64;
            top + PANEL_H - PANEL_H * f.clamp(0.0, 1.0)
        };
        for e in lo_exp..=hi_exp {
            let v = 10f64.powi(e);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
                WIDTH - RIGHT,
                y(v),
                y(v),
                LEFT - 6.0,
                y(v) + 4.0,
                trim(v)
            );
        }
        for (id, values, colour) in [
            ("latency-p50", &p50, COLOUR_P50),
            ("latency-p99", &p99, COLOUR_P99),
        ] {
            let points: Vec<(f64, Option<f64>)> =
                values.iter().map(|&(t, v)| (axis.x(t), v.map(y))).collect();
            let _ = writeln!(
                s,
                r#"<path id="{id}" d="{}" fill="none" stroke="{colour}" stroke-width="1.4"/>"#,
                path_of(&points)
            );
        }
    }

    fn draw_leader(&self, s: &mut String, axis: &TimeAxis, nodes: &[u64], top: f64) {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold" fill="#333">leader</text>
<g id="leader">"##,
            LEFT - 6.0,
            top + 15.0
        );
        let (_, end_ns) = (axis.start_ns, axis.end_ns);
        for sp in leader_spans(&self.samples, end_ns) {
            let (x0, x1) = (axis.x(sp.start_ns), axis.x(sp.end_ns));
            let w = x1 - x0;
            match sp.value {
                Some((node, term)) => {
                    let _ = writeln!(
                        s,
                        r#"<rect class="leader" data-leader="n{node}" data-term="{term}" x="{x0:.1}" y="{top:.1}" width="{w:.1}" height="{BAND_H}" fill="{}"><title>n{node} leads t{term}</title></rect>"#,
                        node_colour(nodes, node)
                    );
                    if w > 44.0 {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" fill="white" font-weight="bold">n{node} t{term}</text>"#,
                            x0 + 4.0,
                            top + 15.0
                        );
                    }
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<rect class="no-leader" x="{x0:.1}" y="{top:.1}" width="{w:.1}" height="{BAND_H}" fill="#ffffff" stroke="#d62728" stroke-dasharray="2,2"><title>no leader</title></rect>"##
                    );
                }
            }
        }
        let _ = writeln!(s, "</g>");
    }

    fn draw_lanes(&self, s: &mut String, axis: &TimeAxis, nodes: &[u64], top: f64) {
        let _ = writeln!(s, r#"<g id="nodes">"#);
        for (k, (node, spans)) in node_lanes(&self.samples, axis.end_ns).iter().enumerate() {
            let y = top + LANE_H * k as f64;
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#333">n{node}</text>"##,
                LEFT - 6.0,
                y + 11.0
            );
            for sp in spans {
                let (x0, x1) = (axis.x(sp.start_ns), axis.x(sp.end_ns));
                let (fill, what) = match sp.value {
                    Lane::Leader => (node_colour(nodes, *node), "leader"),
                    Lane::Follower => ("#d9d9d9", "follower"),
                    Lane::Candidate => (COLOUR_ELECTION, "candidate"),
                    Lane::NoAnswer => ("#303030", "no answer"),
                };
                let _ = writeln!(
                    s,
                    r#"<rect class="lane-{}" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>n{node} {what}</title></rect>"#,
                    what.replace(' ', "-"),
                    y + 1.0,
                    x1 - x0,
                    LANE_H - 2.0
                );
            }
        }
        let _ = writeln!(s, "</g>");
    }

    fn draw_elections(&self, s: &mut String, axis: &TimeAxis, top: f64, bottom: f64) {
        let _ = writeln!(s, r#"<g id="elections">"#);
        let mut last_label_x = f64::NEG_INFINITY;
        for m in elections(&self.samples) {
            let x = axis.x(m.t_ns);
            let _ = writeln!(
                s,
                r#"<line class="election" x1="{x:.1}" x2="{x:.1}" y1="{top:.1}" y2="{bottom:.1}" stroke="{COLOUR_ELECTION}" stroke-width="1" stroke-dasharray="4,3"><title>elected: {}</title></line>
<path d="M{:.1},{:.1} l5,-7 h-10 z" fill="{COLOUR_ELECTION}"/>"#,
                esc(&m.label),
                x,
                bottom - BAND_H,
            );
            if x - last_label_x > 46.0 {
                let _ = writeln!(
                    s,
                    r#"<text class="election-label" x="{:.1}" y="{:.1}" font-size="10" fill="{COLOUR_ELECTION}">{}</text>"#,
                    x + 2.0,
                    bottom - BAND_H - 10.0,
                    esc(&m.label)
                );
                last_label_x = x;
            }
        }
        let _ = writeln!(s, "</g>");
    }

    fn draw_marks(&self, s: &mut String, axis: &TimeAxis, y: f64) {
        let _ = writeln!(s, r#"<g id="marks">"#);
        for m in &self.marks {
            let x = axis.x(m.t_ns);
            let _ = writeln!(
                s,
                r##"<path class="mark" d="M{x:.1},{y:.1} l4,6 h-8 z" fill="#a04000"><title>{}</title></path>"##,
                esc(&m.label)
            );
        }
        let _ = writeln!(s, "</g>");
    }

    fn draw_time_axis(&self, s: &mut String, axis: &TimeAxis, y: f64) {
        let secs = axis.secs();
        let step = nice_step(secs, 12.0);
        let _ = writeln!(
            s,
            r##"<g id="time-axis"><line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#555"/>"##,
            WIDTH - RIGHT
        );
        let mut t = 0.0;
        while t <= secs + 1e-9 {
            let x = axis.x(axis.start_ns + (t * 1e9) as u64);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y:.1}" y2="{:.1}" stroke="#555"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                y + 5.0,
                y + 18.0,
                trim(t)
            );
            t += step;
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">seconds</text></g>"##,
            WIDTH - RIGHT,
            y + 32.0
        );
    }

    fn draw_legend(&self, s: &mut String, nodes: &[u64], y: f64) {
        let mut items: Vec<String> = vec![
            format!(
                r#"<line x1="0" x2="18" y1="-4" y2="-4" stroke="{COLOUR_THROUGHPUT}" stroke-width="2"/><text x="22" y="0">throughput</text>"#
            ),
            format!(
                r#"<line x1="0" x2="18" y1="-4" y2="-4" stroke="{COLOUR_P50}" stroke-width="2"/><text x="22" y="0">p50</text>"#
            ),
            format!(
                r#"<line x1="0" x2="18" y1="-4" y2="-4" stroke="{COLOUR_P99}" stroke-width="2"/><text x="22" y="0">p99</text>"#
            ),
            format!(
                r#"<rect x="0" y="-10" width="18" height="10" fill="{COLOUR_FAULT}" fill-opacity="0.3"/><text x="22" y="0">fault</text>"#
            ),
            format!(
                r#"<line x1="9" x2="9" y1="-12" y2="2" stroke="{COLOUR_ELECTION}" stroke-dasharray="4,3"/><text x="22" y="0">election</text>"#
            ),
        ];
        for &n in nodes {
            items.push(format!(
                r#"<rect x="0" y="-10" width="18" height="10" fill="{}"/><text x="22" y="0">n{n} leads</text>"#,
                node_colour(nodes, n)
            ));
        }
        items.push(r##"<rect x="0" y="-10" width="18" height="10" fill="#d9d9d9"/><text x="22" y="0">follower</text>"##.into());
        items.push(r##"<rect x="0" y="-10" width="18" height="10" fill="#303030"/><text x="22" y="0">no answer</text>"##.into());
        let _ = writeln!(s, r#"<g id="legend">"#);
        let mut x = LEFT;
        for it in items {
            let _ = writeln!(s, r#"<g transform="translate({x:.1},{y:.1})">{it}</g>"#);
            x += 100.0;
        }
        let _ = writeln!(s, "</g>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::timeline::NodeState;

    fn up(t_ns: u64, node: u64, role: Role, term: u64) -> Sample {
        Sample {
            t_ns,
            node,
            state: Some(NodeState {
                role,
                term,
                leader: (role == Role::Leader).then_some(node),
                fault: String::new(),
            }),
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn leader_spans_follow_the_highest_term_and_expire() {
        let samples = vec![
            up(0, 1, Role::Leader, 1),
            up(0, 2, Role::Follower, 1),
            up(S, 2, Role::Leader, 2),
            up(S, 1, Role::Leader, 1), // a deposed leader that has not heard yet
        ];
        let spans = leader_spans(&samples, 5 * S);
        assert_eq!(spans[0].value, Some((1, 1)));
        assert_eq!(spans[1].value, Some((2, 2)));
        assert_eq!(spans[1].start_ns, S);
        // n2's last answer expires SAMPLE_FRESH_NS after it.
        assert_eq!(spans.last().map(|s| s.value), Some(None));
        let e = elections(&samples);
        assert_eq!(
            e.iter().map(|m| m.label.as_str()).collect::<Vec<_>>(),
            ["n1 t1", "n2 t2"]
        );
    }

    #[test]
    fn events_pair_windows_by_label() {
        let (w, m) = events_of_text(
            "10 + n2 down\n12 ! restart\n15 - n2 down\n20 + heal me\nbad\n",
            30,
        );
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].start_ns, w[0].end_ns, w[0].label.as_str()),
            (10, 15, "n2 down")
        );
        assert_eq!((w[1].start_ns, w[1].end_ns), (20, 30));
        assert_eq!(
            m,
            vec![Mark {
                t_ns: 12,
                label: "restart".into()
            }]
        );
    }

    #[test]
    fn history_becomes_a_series() {
        let text = r#"{"client":0,"op":"put","invoke_ns":1000,"complete_ns":2000001000,"ok":true}
{"client":1,"op":"get","invoke_ns":5000,"complete_ns":null,"ok":null}
{"client":1,"op":"cas","invoke_ns":6000,"complete_ns":7000,"ok":false}
"#;
        let s = series_of_history(text, S, None);
        assert_eq!(series_of_history(text, S, Some(1000)).slots.len(), 3);
        assert!(series_of_history(text, S, Some(999)).slots.is_empty());
        assert_eq!(s.start_ns, 1000);
        assert_eq!(s.slots.len(), 3);
        assert_eq!((s.slots[0].ok, s.slots[0].failed), (0, 1));
        assert_eq!(s.slots[2].ok, 1);
    }

    #[test]
    fn svg_escapes_labels() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
