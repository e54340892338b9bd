//! What the cluster looked like over a run: every node is asked for its
//! status every `interval`, each on its own thread (a node that hangs,
//! SIGSTOPped, delays only its own samples), and every answer, or its
//! absence, becomes a [`Sample`]. Pictures of runs read the leader over
//! time, elections, nodes that did not answer and injected network faults
//! from them. One sample is one JSON line (`raft-ctl timeline`):
//!
//! ```json
//! {"t_ns":1250670179857,"node":2,"up":true,"role":"leader","term":3,"leader":2,"fault":""}
//! {"t_ns":1250670379912,"node":3,"up":false}
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use crate::client::Client;
use crate::config::Config;
use crate::raft::{NodeId, Role};
use crate::wire::{DiskFault, FaultSpec, RequestBody, ResponseBody};

use super::monotonic_ns;

/// What one node said (or that it said nothing) at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the answer came (or the attempt failed), on the clock of
    /// `bench::monotonic_ns`, like histories.
    pub t_ns: u64,
    pub node: u64,
    /// None: the node did not answer.
    pub state: Option<NodeState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    /// The injected fault in force at the node, in words; empty if none.
    pub fault: String,
}

/// A fault spec in a few words: `partition 1,2|3`, `drop 20%`,
/// `delay 20±30 ms`.
pub fn fault_words(f: &FaultSpec) -> String {
    let mut parts = Vec::new();
    if !f.partition.is_empty() {
        let groups: Vec<String> = f
            .partition
            .iter()
            .map(|g| {
                g.iter()
                    .map(|n| n.0.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        parts.push(format!("partition {}", groups.join("|")));
    }
    if f.drop_rate_ppm > 0 {
        parts.push(format!(
            "drop {}%",
            (f.drop_rate_ppm as f64 / 10_000.0).round()
        ));
    }
    if f.duplicate_rate_ppm > 0 {
        parts.push(format!(
            "duplicate {}%",
            (f.duplicate_rate_ppm as f64 / 10_000.0).round()
        ));
    }
    if !f.block_to.is_empty() {
        let ids: Vec<String> = f.block_to.iter().map(|n| n.0.to_string()).collect();
        parts.push(format!("block ->{}", ids.join(",")));
    }
    if f.delay_ms > 0 || f.jitter_ms > 0 {
        parts.push(format!("delay {}±{} ms", f.delay_ms, f.jitter_ms));
    }
    if f.disk != DiskFault::None {
        parts.push(f.disk.to_string());
    }
    parts.join(", ")
}

impl Sample {
    pub fn to_json(&self) -> Value {
        match &self.state {
            Some(s) => json!({
                "t_ns": self.t_ns, "node": self.node, "up": true, "role": s.role.name(),
                "term": s.term, "leader": s.leader, "fault": s.fault,
            }),
            None => json!({"t_ns": self.t_ns, "node": self.node, "up": false}),
        }
    }

    /// One line of a timeline file; None for a line that is not a sample
    /// (a torn last line of a sampler that was killed).
    pub fn parse(line: &str) -> Option<Sample> {
        let v: Value = serde_json::from_str(line).ok()?;
        let t_ns = v.get("t_ns")?.as_u64()?;
        let node = v.get("node")?.as_u64()?;
        let state = if v.get("up")?.as_bool()? {
            Some(NodeState {
                role: Role::from_name(v.get("role")?.as_str()?)?,
                term: v.get("term")?.as_u64()?,
                leader: v.get("leader").and_then(Value::as_u64),
                fault: v
                    .get("fault")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            })
        } else {
            None
        };
        Some(Sample { t_ns, node, state })
    }
}

/// Samples every node of a cluster until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    rx: Receiver<Sample>,
}

/// Samples waiting to be taken at most; past it a sample is dropped (a
/// reader that does not keep up loses detail, not memory).
const SAMPLES_QUEUED_MAX: usize = 100_000;

impl Sampler {
    /// Starts one thread per node, each asking its node every `interval`.
    pub fn start(config: &Config, interval: Duration) -> std::io::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(SAMPLES_QUEUED_MAX);
        let mut threads = Vec::new();
        for n in &config.nodes {
            let (config, stop, tx, id) = (config.clone(), Arc::clone(&stop), tx.clone(), n.id);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sample-{id}"))
                    .spawn(move || sample_node(config, id, interval, &stop, &tx))?,
            );
        }
        Ok(Sampler { stop, threads, rx })
    }

    /// Samples taken so far, in arrival order (waits up to `wait` for one).
    pub fn next(&self, wait: Duration) -> Option<Sample> {
        self.rx.recv_timeout(wait).ok()
    }

    /// Stops every thread and returns the samples not yet taken.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.rx.try_iter().collect()
    }
}

fn sample_node(
    config: Config,
    id: NodeId,
    interval: Duration,
    stop: &AtomicBool,
    tx: &Sender<Sample>,
) {
    let mut client = Client::new(config, Some(id));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let state = match client.call(id, RequestBody::Status) {
            Ok(ResponseBody::Status(ns)) => Some(NodeState {
                role: ns.status.role,
                term: ns.status.current_term.0,
                leader: ns.status.leader.map(|l| l.0),
                fault: fault_words(&ns.fault),
            }),
            _ => None,
        };
        let _ = tx.try_send(Sample {
            t_ns: monotonic_ns(),
            node: id.0,
            state,
        });
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now; // a slow answer: no burst to catch up
        }
        // Sleep in short steps, so that stop is prompt.
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_json_round_trips() {
        let up = Sample {
            t_ns: 42,
            node: 2,
            state: Some(NodeState {
                role: Role::Leader,
                term: 3,
                leader: Some(2),
                fault: "drop 20%".into(),
            }),
        };
        let down = Sample {
            t_ns: 43,
            node: 3,
            state: None,
        };
        for s in [up, down] {
            assert_eq!(Sample::parse(&s.to_json().to_string()), Some(s));
        }
        assert_eq!(Sample::parse("{\"t_ns\":1,\"node\""), None);
    }

    #[test]
    fn fault_words_name_each_fault() {
        let f = FaultSpec {
            partition: vec![vec![NodeId(1), NodeId(2)], vec![NodeId(3)]],
            drop_rate_ppm: 200_000,
            delay_ms: 20,
            jitter_ms: 30,
            duplicate_rate_ppm: 100_000,
            block_to: vec![NodeId(2)],
            disk: DiskFault::Full,
        };
        assert_eq!(
            fault_words(&f),
            "partition 1,2|3, drop 20%, duplicate 10%, block ->2, delay 20±30 ms, disk full"
        );
        assert_eq!(fault_words(&FaultSpec::default()), "");
    }
}
