//! A simulator run as a self-contained HTML page: the message sequence
//! diagram (one lane per node, time flowing down, each message an arrow
//! from its send to its delivery; lost and partitioned ones end in a cross),
//! crashes, partitions, elections and a violation marked, and each node's
//! log at the end drawn like Figure 7 of the Raft paper (one box per entry,
//! its term inside, the commit index marked). `raft-sim --seed S --html F`.

use std::fmt::Write as _;

use crate::raft::NodeId;

/// What became of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// Lost by the network.
    Lost,
    /// Dropped at a partition.
    Partitioned,
    /// Its receiver was down.
    Down,
}

/// One thing the diagram shows.
#[derive(Clone, Debug)]
pub enum DiagramEvent {
    Message {
        from: NodeId,
        to: NodeId,
        sent: u64,
        at: u64,
        /// The message type, for its colour: `AppendEntries`, `RequestVote`, ...
        kind: &'static str,
        /// Empty AppendEntries (a heartbeat), drawn lighter.
        empty: bool,
        label: String,
        fate: Fate,
    },
    Crash {
        node: NodeId,
        at: u64,
    },
    Restart {
        node: NodeId,
        at: u64,
    },
    Partition {
        at: u64,
        text: String,
    },
    Leader {
        node: NodeId,
        term: u64,
        at: u64,
    },
    Snapshot {
        node: NodeId,
        at: u64,
        text: String,
    },
    Violation {
        at: u64,
        text: String,
    },
}

/// A node's log at the end of the run: (index, term) from its first held
/// entry, its snapshot's last index (0: none) and its commit index.
pub struct FinalLog {
    pub node: NodeId,
    pub up: bool,
    pub snapshot_index: u64,
    pub entries: Vec<(u64, u64)>,
    pub commit_index: u64,
}

const LANE_PX: u64 = 170;
const LEFT_PX: u64 = 70;
const TOP_PX: u64 = 40;
const STEP_PX: u64 = 6;
/// Entries of each log drawn at the end, the newest.
const FINAL_ENTRIES_MAX: usize = 60;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn lane_x(n: NodeId) -> u64 {
    LEFT_PX + (n.0 - 1) * LANE_PX + LANE_PX / 2
}

fn y(step: u64) -> u64 {
    TOP_PX + step * STEP_PX
}

/// A colour per term, cycling.
fn term_colour(term: u64) -> &'static str {
    const C: [&str; 8] = [
        "#e8f1fb", "#fde9d9", "#e4f4e4", "#f3e5f5", "#fff6d5", "#e0f7fa", "#fbe4ec", "#eeeeee",
    ];
    C[(term % C.len() as u64) as usize]
}

/// The page for one run.
pub fn render(
    seed: u64,
    nodes: u64,
    fault_steps: u64,
    steps: u64,
    events: &[DiagramEvent],
    logs: &[FinalLog],
    violation: Option<&str>,
) -> String {
    let width = LEFT_PX + nodes * LANE_PX + 20;
    let height = y(steps) + 40;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    svg.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>
"##,
    );
    // Time axis and lanes.
    for s in (0..=steps).step_by(50) {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT_PX}" y1="{0}" x2="{1}" y2="{0}" stroke="#f0f0f0"/><text x="4" y="{2}" fill="#888">{s}</text>"##,
            y(s),
            width - 20,
            y(s) + 4
        );
    }
    for n in 1..=nodes {
        let x = lane_x(NodeId(n));
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{TOP_PX}" x2="{x}" y2="{}" stroke="#444" stroke-width="2"/><text x="{}" y="20" font-size="14" font-weight="bold">n{n}</text>"##,
            y(steps),
            x - 8
        );
    }
    let mut down_since: Vec<Option<u64>> = vec![None; nodes as usize + 1];
    for e in events {
        match e {
            DiagramEvent::Message {
                from,
                to,
                sent,
                at,
                kind,
                empty,
                label,
                fate,
            } => {
                let (x1, y1, x2) = (lane_x(*from), y(*sent), lane_x(*to));
                let mut y2 = y(*at).max(y1 + 2);
                let class = if *empty { "Heartbeat" } else { kind };
                let (colour, dash) = match fate {
                    Fate::Delivered => (colour_of(kind, *empty), ""),
                    _ => ("#d32f2f", r#" stroke-dasharray="3,3""#),
                };
                let mut x2e = x2;
                if *fate != Fate::Delivered {
                    // Ends half way, with a cross.
                    x2e = (x1 + x2) / 2;
                    y2 = (y1 + y2) / 2;
                }
                let _ = writeln!(
                    svg,
                    r#"<g class="m {class}"><title>{} (step {sent} to {at}, {fate:?})</title><line x1="{x1}" y1="{y1}" x2="{x2e}" y2="{y2}" stroke="{colour}" stroke-width="1.2"{dash} marker-end="url(#arrow)"/></g>"#,
                    esc(label)
                );
            }
            DiagramEvent::Crash { node, at } => {
                down_since[node.0 as usize] = Some(*at);
                let _ = writeln!(
                    svg,
                    r##"<text x="{}" y="{}" fill="#d32f2f" font-weight="bold">✖ crash</text>"##,
                    lane_x(*node) + 4,
                    y(*at)
                );
            }
            DiagramEvent::Restart { node, at } => {
                let from = down_since[node.0 as usize].take().unwrap_or(*at);
                down_band(&mut svg, *node, from, *at);
                let _ = writeln!(
                    svg,
                    r##"<text x="{}" y="{}" fill="#2e7d32">↻ restart</text>"##,
                    lane_x(*node) + 4,
                    y(*at) + 10
                );
            }
            DiagramEvent::Partition { at, text } => {
                let _ = writeln!(
                    svg,
                    r##"<line x1="{LEFT_PX}" y1="{0}" x2="{1}" y2="{0}" stroke="#9e9e9e" stroke-dasharray="6,4"/><text x="{LEFT_PX}" y="{2}" fill="#616161">{3}</text>"##,
                    y(*at),
                    width - 20,
                    y(*at) - 2,
                    esc(text)
                );
            }
            DiagramEvent::Leader { node, term, at } => {
                let _ = writeln!(
                    svg,
                    r##"<circle cx="{0}" cy="{1}" r="6" fill="#fbc02d" stroke="#333"/><text x="{2}" y="{3}" font-weight="bold">leader t{term}</text>"##,
                    lane_x(*node),
                    y(*at),
                    lane_x(*node) + 9,
                    y(*at) + 4
                );
            }
            DiagramEvent::Snapshot { node, at, text } => {
                let _ = writeln!(
                    svg,
                    r##"<text x="{}" y="{}" fill="#6a1b9a">▣ {}</text>"##,
                    lane_x(*node) - LANE_PX / 2 + 4,
                    y(*at),
                    esc(text)
                );
            }
            DiagramEvent::Violation { at, text } => {
                let _ = writeln!(
                    svg,
                    r##"<rect x="0" y="{}" width="{width}" height="18" fill="#ffcdd2"/><text x="4" y="{}" fill="#b71c1c" font-weight="bold">VIOLATION: {}</text>"##,
                    y(*at) - 12,
                    y(*at) + 2,
                    esc(text)
                );
            }
        }
    }
    for (n, since) in down_since.iter().enumerate() {
        if let Some(from) = since {
            down_band(&mut svg, NodeId(n as u64), *from, steps);
        }
    }
    svg.push_str("</svg>\n");

    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>raft-sim seed {seed}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
.hide {{ display: none; }}
table.log td {{ border: 1px solid #999; width: 22px; height: 22px; text-align: center; font-family: monospace; font-size: 11px; }}
table.log td.commit {{ border: 2px solid #000; }}
table.log th {{ text-align: right; padding-right: 8px; font-family: monospace; }}
.verdict {{ font-size: 16px; font-weight: bold; }}
</style></head><body>
<h1>raft-sim seed {seed}: {nodes} nodes, {steps} steps</h1>
<p class="verdict">{}</p>
<p>Replay: <code>raft-sim --seed {seed} --nodes {nodes} --steps {fault_steps} --trace</code>. Time flows down (one step a tick); each arrow is a message from its send to its delivery; hover for its content. Red dashed arrows ending in the middle were lost, cut by a partition, or sent to a node that was down.</p>
<div class="legend">Show:
"#,
        match violation {
            Some(v) => format!("VIOLATION: {}", esc(v)),
            None => "no violation: every safety check held, the history is linearizable".into(),
        },
    );
    for (class, colour) in [
        ("AppendEntries", colour_of("AppendEntries", false)),
        ("Heartbeat", colour_of("AppendEntries", true)),
        (
            "AppendEntriesResponse",
            colour_of("AppendEntriesResponse", false),
        ),
        ("RequestVote", colour_of("RequestVote", false)),
        (
            "RequestVoteResponse",
            colour_of("RequestVoteResponse", false),
        ),
        ("PreVote", colour_of("PreVote", false)),
        ("PreVoteResponse", colour_of("PreVoteResponse", false)),
        ("InstallSnapshot", colour_of("InstallSnapshot", false)),
    ] {
        let _ = writeln!(
            page,
            r#"<span><label><input type="checkbox" checked onchange="toggle('{class}', this.checked)"> <b style="color:{colour}">━</b> {class}</label></span>"#
        );
    }
    page.push_str("</div>\n<h2>Messages</h2>\n");
    page.push_str(&svg);
    page.push_str("<h2>Logs at the end (Figure 7 style)</h2>\n<table class=\"log\">\n");
    for l in logs {
        let skip = l.entries.len().saturating_sub(FINAL_ENTRIES_MAX);
        let _ = write!(
            page,
            "<tr><th>n{}{}</th>",
            l.node.0,
            if l.up { "" } else { " (down)" }
        );
        if l.snapshot_index > 0 || skip > 0 {
            let _ = write!(
                page,
                "<td title=\"snapshot up to {} and {skip} older entries not drawn\">…</td>",
                l.snapshot_index
            );
        }
        for (index, term) in &l.entries[skip..] {
            let class = if *index == l.commit_index {
                " class=\"commit\""
            } else {
                ""
            };
            let _ = write!(
                page,
                "<td{class} style=\"background:{}\" title=\"index {index}, term {term}\">{term}</td>",
                term_colour(*term)
            );
        }
        page.push_str("</tr>\n");
    }
    page.push_str(
        r#"</table>
<p>Each box is an entry with its term; the box with the heavy border is the node's commit index.</p>
<script>
function toggle(cls, on) {
  document.querySelectorAll('g.' + cls).forEach(function (g) { g.classList.toggle('hide', !on); });
}
</script>
</body></html>
"#,
    );
    page
}

fn down_band(svg: &mut String, node: NodeId, from: u64, to: u64) {
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="10" height="{}" fill="#ffcdd2" opacity="0.8"/>"##,
        lane_x(node) - 5,
        y(from),
        y(to).saturating_sub(y(from)).max(1)
    );
}

fn colour_of(kind: &str, empty: bool) -> &'static str {
    match kind {
        "AppendEntries" if empty => "#b0bec5",
        "AppendEntries" => "#1565c0",
        "AppendEntriesResponse" => "#00897b",
        "RequestVote" => "#ef6c00",
        "RequestVoteResponse" => "#8d6e63",
        "PreVote" => "#ffb74d",
        "PreVoteResponse" => "#bcaaa4",
        "InstallSnapshot" => "#6a1b9a",
        _ => "#555",
    }
}
