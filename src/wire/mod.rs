//! The wire protocol: versioned, length-prefixed, CRC-checked frames over
//! TCP, documented byte by byte in `docs/PROTOCOL.md`.
//!
//! `decode_frame` separates "need more bytes" (`Ok(None)`) from a bad frame
//! (`Err`): a bad frame ends that one connection, never the node.

pub mod frame;

pub use frame::{
    decode_frame, decode_frame_ref, decode_raft_fragments, encode_frame, encode_raft_fragments,
    encode_snapshot_chunk, DiskFault, ErrorCode, FaultSpec, Frame, FrameError, FrameRef,
    KvRequestRef, MemberRequest, MembersInfo, NodeStatus, RequestBody, ResponseBody, Sender,
    FRAGMENTED_BYTES_MAX, FRAGMENT_BYTES_MAX, FRAME_BYTES_MAX, HEADER_BYTES, MAGIC,
    SNAPSHOT_DATA_BYTES_MAX, VERSION,
};
