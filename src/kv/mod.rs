//! The key-value state machine applied from committed log entries.

pub mod command;

pub use command::{ClientId, Command, Op, OpResult};
