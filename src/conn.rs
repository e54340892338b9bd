//! A buffered, framed, nonblocking TCP connection: what the node and the
//! load generator share. Reads drain the socket into a reused buffer that
//! the owner decodes frames from; writes queue encoded frames and flush
//! them with as few `write` calls as the socket allows, keeping the offset
//! of a partial write; WRITABLE interest is registered only while output is
//! queued (mio's edge-triggered readiness).

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::wire::{encode_frame, Frame};

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The socket is drained: new data brings a new readiness event.
    Drained,
    /// The byte budget ran out with more possibly waiting: read again
    /// without waiting for an event (none will come for those bytes).
    Budget,
    /// The other side closed the connection, or the read failed.
    Closed(String),
}

pub struct FramedConn {
    pub stream: TcpStream,
    /// Bytes read and not yet decoded, from the start.
    pub read_buf: Vec<u8>,
    /// Encoded frames waiting to be written, from `write_pos`.
    pub write_buf: Vec<u8>,
    write_pos: usize,
    writable_registered: bool,
}

impl FramedConn {
    /// Wraps `stream`, registered with WRITABLE interest or not.
    pub fn new(stream: TcpStream, writable_registered: bool) -> FramedConn {
        FramedConn {
            stream,
            read_buf: Vec::new(),
            write_buf: Vec::new(),
            write_pos: 0,
            writable_registered,
        }
    }

    /// Reads into `read_buf` through `chunk` until the socket is drained,
    /// it closes, or `budget_bytes` are read. `read_closed`: the other side
    /// has shut down its half, so a short read is not the end of the data.
    pub fn fill(&mut self, chunk: &mut [u8], read_closed: bool, budget_bytes: usize) -> ReadEnd {
        let mut budget = budget_bytes;
        loop {
            if budget == 0 {
                return ReadEnd::Budget;
            }
            match self.stream.read(chunk) {
                Ok(0) => return ReadEnd::Closed("closed by the other side".into()),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.read_buf.extend_from_slice(&chunk[..n]);
                    // A short read drained the socket: with edge-triggered
                    // readiness, more data brings a new event, so skip the
                    // read that would only say WouldBlock.
                    if n < chunk.len() && !read_closed {
                        return ReadEnd::Drained;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadEnd::Closed(format!("read error: {e}")),
            }
        }
    }

    /// Queues one frame.
    pub fn queue(&mut self, frame: &Frame) {
        encode_frame(frame, &mut self.write_buf);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.write_buf.len() - self.write_pos
    }

    /// Writes what is queued until the socket would block. `Ok(true)`
    /// when everything went out (the buffer is then empty, its capacity
    /// cut back to `keep_bytes`).
    pub fn flush(&mut self, keep_bytes: usize) -> Result<bool, String> {
        while self.write_pos < self.write_buf.len() {
            match self.stream.write(&self.write_buf[self.write_pos..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => self.write_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A nonblocking connect not yet confirmed: wait for it.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                Err(e) => return Err(format!("write error: {e}")),
            }
        }
        if self.write_pos < self.write_buf.len() {
            return Ok(false);
        }
        self.write_buf.clear();
        if self.write_buf.capacity() > keep_bytes {
            // A large answer or snapshot went out: do not hold its size.
            self.write_buf.shrink_to(keep_bytes);
        }
        self.write_pos = 0;
        Ok(true)
    }

    /// Registers WRITABLE interest exactly while output is queued.
    pub fn update_interest(&mut self, registry: &Registry, token: Token) {
        let want = self.queued_bytes() > 0;
        if want == self.writable_registered {
            return;
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if registry
            .reregister(&mut self.stream, token, interest)
            .is_ok()
        {
            self.writable_registered = want;
        }
    }
}
