//! Linearizability checking of key-value client histories.
//!
//! A history is a list of client operations (see `docs/HISTORY.md` for the
//! JSON-lines file format). The checker splits it by key and decides, per
//! key, whether the operations can be ordered consistently with real time
//! and with the semantics of a single register (Wing–Gong/Lowe search with
//! memoisation).
//!
//! Work in progress: types and entry points.
