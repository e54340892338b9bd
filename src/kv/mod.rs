//! The key-value state machine applied from committed log entries.

pub mod command;
pub mod store;

pub use command::{ClientId, Command, CommandRef, Op, OpRef, OpResult};
pub use store::{Applied, KvStore, SnapshotError, SESSIONS_MAX};
