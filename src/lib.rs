pub mod config;
pub mod kv;
pub mod raft;
pub mod sim;
pub mod wire;
