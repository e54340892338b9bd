//! The key-value state machine applied from committed log entries.

pub mod command;
pub mod store;

pub use command::{ClientId, Command, CommandRef, Op, OpRef, OpResult};
pub use command::{OverLimit, COMMAND_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
pub use store::{Applied, FrozenKv, KvStore, Refused, SnapshotError, SESSIONS_MAX};
