pub mod check;
pub mod client;
pub mod config;
pub mod kv;
pub mod node;
pub mod raft;
pub mod sim;
pub mod wire;
