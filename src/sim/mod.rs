//! Test support: whole clusters of cores in one process.
//!
//! `cluster::TestCluster` is a hand-driven cluster for scripted scenarios;
//! `Sim` is the randomized, seed-replayable simulator with a lossy network,
//! simulated disks and crash-restarts that checks Raft's safety properties
//! after every step.

pub mod cluster;
pub mod html;
pub mod random;

pub use self::random::{run_seed, Sim, SimOptions, SimReport};
