//! raftkit: Raft as real processes over raw TCP.
//!
//! Dependencies point one way, from the node down to the ground modules:
//!
//! ```text
//! node -> { conn, storage, wire, kv, raft, config }    bench -> conn
//! plot -> bench (pictures of runs: series and status samples)
//! conn -> wire                    tls  -> raft types (certificate identities)
//! wire -> { kv, raft, codec }      storage -> raft
//! kv   -> { codec, raft types }    raft    -> rng
//! codec, rng: ground modules, using nothing else of this crate
//! ```
//!
//! `tests/layering.rs` reads the sources to keep it so.

pub mod bench;
pub mod check;
pub mod client;
pub mod codec;
pub mod config;
pub mod conn;
pub mod kv;
pub mod node;
pub mod plot;
pub mod raft;
pub mod rng;
pub mod sim;
pub mod storage;
pub mod tls;
pub mod wire;
