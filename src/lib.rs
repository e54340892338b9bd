pub mod kv;
pub mod raft;
