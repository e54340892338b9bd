//! `raft-ctl watch`: a live view of the cluster in the terminal. Every node's
//! role, term, commit and applied index; each follower's lag behind the
//! leader as a bar; faults in force; the last events (elections, leader
//! changes, snapshots, nodes going down and coming back), found by comparing
//! successive answers. Each node is asked on its own thread, so a node that
//! hangs (SIGSTOP) never freezes the view: it shows as not answering.
//! `q`, Esc or Ctrl-C quits and restores the terminal.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

use raftkit::client::Client;
use raftkit::config::Config;
use raftkit::raft::{NodeId, Role};
use raftkit::wire::NodeStatus;

use crate::fetch_status;

/// How often each node is asked.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// A node that has not answered for this long shows as not answering.
const SILENT_AFTER: Duration = Duration::from_millis(1500);
/// Events kept for the view.
const EVENTS_MAX: usize = 200;
/// Width of a lag bar, in cells.
const BAR_CELLS: usize = 30;

/// What the view knows of one node.
struct NodeView {
    id: NodeId,
    addr: String,
    last: Option<NodeStatus>,
    answered_at: Option<Instant>,
    /// Whether the last event said it is up.
    up: Option<bool>,
}

pub struct Watch {
    nodes: Vec<NodeView>,
    events: VecDeque<String>,
    started: Instant,
    cluster: String,
}

impl Watch {
    fn new(config: &Config) -> Watch {
        Watch {
            nodes: config
                .nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id,
                    addr: n.addr.to_string(),
                    last: None,
                    answered_at: None,
                    up: None,
                })
                .collect(),
            events: VecDeque::new(),
            started: Instant::now(),
            cluster: config.cluster.name.clone(),
        }
    }

    fn event(&mut self, now: Instant, what: String) {
        let t = now.duration_since(self.started).as_secs_f64();
        self.events.push_front(format!("{t:7.1}s  {what}"));
        self.events.truncate(EVENTS_MAX);
    }

    /// A node answered: note what changed since its last answer.
    fn answered(&mut self, id: NodeId, ns: NodeStatus, now: Instant) {
        let Some(k) = self.nodes.iter().position(|n| n.id == id) else {
            return;
        };
        let mut news = Vec::new();
        let prev = self.nodes[k].last.take();
        if self.nodes[k].up == Some(false) {
            news.push(format!("{id} answers again"));
        }
        let s = &ns.status;
        match &prev {
            Some(p) => {
                let p = &p.status;
                if s.role == Role::Leader && p.role != Role::Leader {
                    news.push(format!("{id} became leader of t{}", s.current_term));
                } else if p.role == Role::Leader && s.role != Role::Leader {
                    news.push(format!("{id} is no longer leader (t{})", s.current_term));
                } else if s.current_term > p.current_term && s.role != Role::Leader {
                    news.push(format!("{id} moved to t{} as {}", s.current_term, s.role));
                }
                if s.first_index > p.first_index {
                    news.push(format!(
                        "{id} compacted its log to {} (snapshot)",
                        s.first_index
                    ));
                }
                if s.last_applied < p.last_applied {
                    news.push(format!("{id} restarted (applied {})", s.last_applied));
                }
            }
            None if s.role == Role::Leader => {
                news.push(format!("{id} leads t{}", s.current_term));
            }
            None => {}
        }
        if prev.as_ref().map(|p| &p.fault) != Some(&ns.fault) && !ns.fault.is_none() {
            news.push(format!(
                "{id} fault now {}",
                crate::fault::describe(&ns.fault)
            ));
        } else if prev.as_ref().is_some_and(|p| !p.fault.is_none()) && ns.fault.is_none() {
            news.push(format!("{id} faults healed"));
        }
        let n = &mut self.nodes[k];
        n.last = Some(ns);
        n.answered_at = Some(now);
        n.up = Some(true);
        for e in news {
            self.event(now, e);
        }
    }

    /// Nodes silent for too long are reported once.
    fn check_silent(&mut self, now: Instant) {
        let mut news = Vec::new();
        for n in &mut self.nodes {
            let silent = n
                .answered_at
                .is_none_or(|t| now.duration_since(t) > SILENT_AFTER);
            if silent && n.up != Some(false) && now.duration_since(self.started) > SILENT_AFTER {
                n.up = Some(false);
                news.push(format!("{} is not answering", n.id));
            }
        }
        for e in news {
            self.event(now, e);
        }
    }

    fn live(&self, n: &NodeView, now: Instant) -> bool {
        n.answered_at
            .is_some_and(|t| now.duration_since(t) <= SILENT_AFTER)
    }

    /// The leader in the highest term among the nodes answering.
    fn leader(&self, now: Instant) -> Option<&NodeStatus> {
        self.nodes
            .iter()
            .filter(|n| self.live(n, now))
            .filter_map(|n| n.last.as_ref())
            .filter(|s| s.status.role == Role::Leader)
            .max_by_key(|s| s.status.current_term)
    }

    pub fn draw(&self, f: &mut Frame, now: Instant) {
        let leader = self.leader(now);
        let [title, table, lag, faults, events, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(self.nodes.len() as u16 + 3),
            Constraint::Length(self.nodes.len() as u16 + 2),
            Constraint::Length(3),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let headline = match leader {
            Some(l) => format!(
                "cluster {:?}: leader {} in t{}, commit {}",
                self.cluster, l.status.id, l.status.current_term, l.status.commit_index
            ),
            None => format!("cluster {:?}: no leader", self.cluster),
        };
        f.render_widget(
            Paragraph::new(headline).style(Style::default().add_modifier(Modifier::BOLD)),
            title,
        );

        let rows = self.nodes.iter().map(|n| {
            let live = self.live(n, now);
            match (&n.last, live) {
                (Some(s), true) => {
                    let st = &s.status;
                    let colour = match st.role {
                        Role::Leader => Color::Yellow,
                        Role::Candidate | Role::PreCandidate => Color::Magenta,
                        Role::Follower => Color::Reset,
                    };
                    Row::new(vec![
                        st.id.to_string(),
                        st.role.to_string(),
                        format!("t{}", st.current_term),
                        st.leader.map_or("-".into(), |l| l.to_string()),
                        st.commit_index.to_string(),
                        st.last_applied.to_string(),
                        format!("{}..{}", st.first_index, st.last_index),
                        n.addr.clone(),
                    ])
                    .style(Style::default().fg(colour))
                }
                _ => Row::new(vec![
                    n.id.to_string(),
                    "down".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    n.addr.clone(),
                ])
                .style(Style::default().fg(Color::Red)),
            }
        });
        let widths = [
            Constraint::Length(4),
            Constraint::Length(13),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(15),
            Constraint::Min(10),
        ];
        let table_widget = Table::new(rows, widths)
            .header(
                Row::new(vec![
                    "node", "role", "term", "leader", "commit", "applied", "log", "addr",
                ])
                .style(Style::default().add_modifier(Modifier::UNDERLINED)),
            )
            .block(Block::default().borders(Borders::ALL).title("nodes"));
        f.render_widget(table_widget, table);

        let mut lag_lines = Vec::new();
        match leader {
            Some(l) => {
                let last = l.status.last_index.0.max(1);
                for p in &l.status.peers {
                    let behind = l.status.last_index.0.saturating_sub(p.match_index.0);
                    let filled = ((p.match_index.0 as f64 / last as f64) * BAR_CELLS as f64).round()
                        as usize;
                    let filled = filled.min(BAR_CELLS);
                    let colour = if behind == 0 {
                        Color::Green
                    } else if behind < 100 {
                        Color::Yellow
                    } else {
                        Color::Red
                    };
                    lag_lines.push(Line::from(vec![
                        Span::raw(format!("{:>4} ", p.id)),
                        Span::styled("█".repeat(filled), Style::default().fg(colour)),
                        Span::raw("░".repeat(BAR_CELLS - filled)),
                        Span::raw(format!(
                            " match {} lag {behind} {:?} inflight {}",
                            p.match_index, p.state, p.inflight
                        )),
                    ]));
                }
            }
            None => lag_lines.push(Line::from("no leader: no replication to show")),
        }
        f.render_widget(
            Paragraph::new(lag_lines).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("followers behind the leader"),
            ),
            lag,
        );

        let fault_text: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| self.live(n, now))
            .filter_map(|n| n.last.as_ref())
            .filter(|s| !s.fault.is_none())
            .map(|s| format!("{}: {}", s.status.id, crate::fault::describe(&s.fault)))
            .collect();
        let fault_line = if fault_text.is_empty() {
            "none".to_string()
        } else {
            fault_text.join("; ")
        };
        f.render_widget(
            Paragraph::new(fault_line).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("faults in force"),
            ),
            faults,
        );

        let shown = events.height.saturating_sub(2) as usize;
        let lines: Vec<Line> = self
            .events
            .iter()
            .take(shown)
            .map(|e| Line::from(e.as_str()))
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("last events (newest first)"),
            ),
            events,
        );
        f.render_widget(
            Paragraph::new("q, Esc or Ctrl-C: quit").style(Style::default().fg(Color::DarkGray)),
            help,
        );
    }
}

/// One poller thread per node, sending each answer (or its absence) down
/// the channel until `stop`.
fn spawn_pollers(
    config: &Config,
    stop: &Arc<AtomicBool>,
) -> Receiver<(NodeId, Option<NodeStatus>)> {
    let (tx, rx): (Sender<_>, Receiver<_>) = crossbeam_channel::unbounded();
    for n in &config.nodes {
        let (id, tx, stop) = (n.id, tx.clone(), Arc::clone(stop));
        let mut client = Client::new(config.clone(), Some(id));
        client.timeout = Duration::from_secs(1);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let s = fetch_status(&mut client, id);
                if tx.send((id, s)).is_err() {
                    return;
                }
                std::thread::sleep(POLL_EVERY);
            }
        });
    }
    rx
}

fn drain(watch: &mut Watch, rx: &Receiver<(NodeId, Option<NodeStatus>)>) {
    while let Ok((id, s)) = rx.try_recv() {
        if let Some(s) = s {
            watch.answered(id, s, Instant::now());
        }
    }
    watch.check_silent(Instant::now());
}

/// Runs the live view until the user quits. With `dump_after`, it draws
/// one frame after that long into a plain-text buffer of `width` × `height`
/// and prints it instead (for scripts, tests and documentation).
pub fn run(config: &Config, dump_after: Option<Duration>, width: u16, height: u16) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let rx = spawn_pollers(config, &stop);
    let mut watch = Watch::new(config);
    if let Some(wait) = dump_after {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            drain(&mut watch, &rx);
            std::thread::sleep(Duration::from_millis(50));
        }
        drain(&mut watch, &rx);
        stop.store(true, Ordering::Relaxed);
        let backend = ratatui::backend::TestBackend::new(width, height);
        let Ok(mut terminal) = ratatui::Terminal::new(backend);
        let now = Instant::now();
        if let Err(e) = terminal.draw(|f| watch.draw(f, now)) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        let buf = terminal.backend().buffer();
        for y in 0..buf.area.height {
            let line: String = (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect();
            println!("{}", line.trim_end());
        }
        return ExitCode::SUCCESS;
    }
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        loop {
            drain(&mut watch, &rx);
            let now = Instant::now();
            terminal.draw(|f| watch.draw(f, now))?;
            if event::poll(POLL_EVERY)? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.kind == KeyEventKind::Press
                        && (k.code == KeyCode::Char('q') || k.code == KeyCode::Esc || ctrl_c)
                    {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    stop.store(true, Ordering::Relaxed);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the terminal: {e}");
            ExitCode::FAILURE
        }
    }
}
