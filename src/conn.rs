//! A buffered, framed, nonblocking TCP connection: what the node and the
//! load generator share. Reads drain the socket into a reused buffer that
//! the owner decodes frames from; writes queue encoded frames and flush
//! them with as few `write` calls as the socket allows, keeping the offset
//! of a partial write; WRITABLE interest is registered only while output is
//! queued (mio's edge-triggered readiness).
//!
//! With TLS, a `rustls::Connection` sits between the socket and the two
//! buffers (rustls's mio pattern: `read_tls`, `process_new_packets`, then
//! the plaintext `reader`; the plaintext `writer`, then `write_tls` while
//! it `wants_write`). The buffers hold the same frames either way: TLS
//! sits under the framing. Without TLS the socket is read and written
//! directly, as before.

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
    /// TLS refused the other side (a certificate the CA did not sign, a
    /// record that fails its check, not TLS at all): the connection is
    /// done; the alert, if any, has been sent.
    Tls(String),
}

/// The socket as rustls reads it, noting whether the last read came back
/// shorter than the buffer offered (the socket is drained).
struct ShortReads<'a> {
    stream: &'a mut TcpStream,
    short: bool,
}

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// Bytes of TLS records rustls buffers for sending at most; past it the
/// plaintext waits in `write_buf` (bounded by the owner), so a slow reader
/// costs no more memory with TLS than without.
const TLS_SEND_BUFFER_BYTES: usize = 256 << 10;

pub struct FramedConn {
    pub stream: TcpStream,
    /// Bytes read and not yet decoded, from the start.
    pub read_buf: Vec<u8>,
    /// Encoded frames waiting to be written, from `write_pos`.
    pub write_buf: Vec<u8>,
    write_pos: usize,
    writable_registered: bool,
    /// TLS between the socket and the buffers, when on.
    tls: Option<Box<rustls::Connection>>,
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
            tls: None,
        }
    }

    /// Puts TLS between the socket and the buffers (before any byte went
    /// either way).
    pub fn set_tls(&mut self, mut tls: rustls::Connection) {
        tls.set_buffer_limit(Some(TLS_SEND_BUFFER_BYTES));
        self.tls = Some(Box::new(tls));
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// The other side's certificate (the first of its chain), once the
    /// TLS handshake has verified it.
    pub fn peer_cert(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        self.tls.as_ref()?.peer_certificates()?.first()
    }

    /// Something to write: queued frames, or TLS records (a handshake
    /// message, an alert).
    pub fn wants_flush(&self) -> bool {
        self.queued_bytes() > 0 || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Reads into `read_buf` through `chunk` until the socket is drained,
    /// it closes, or `budget_bytes` are read. `read_closed`: the other side
    /// has shut down its half, so a short read is not the end of the data.
    pub fn fill(&mut self, chunk: &mut [u8], read_closed: bool, budget_bytes: usize) -> ReadEnd {
        if self.tls.is_some() {
            return self.fill_tls(chunk, read_closed, budget_bytes);
        }
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

    /// `fill` through TLS: records in, plaintext out into `read_buf`,
    /// until the socket is drained, it closes, or `budget_bytes` of
    /// plaintext are in.
    fn fill_tls(&mut self, chunk: &mut [u8], read_closed: bool, budget_bytes: usize) -> ReadEnd {
        let Some(tls) = self.tls.as_deref_mut() else {
            return ReadEnd::Closed("no TLS".into());
        };
        let mut budget = budget_bytes;
        loop {
            if budget == 0 {
                return ReadEnd::Budget;
            }
            let mut socket = ShortReads {
                stream: &mut self.stream,
                short: false,
            };
            let drained = match tls.read_tls(&mut socket) {
                Ok(0) => return ReadEnd::Closed("closed by the other side".into()),
                // As in `fill`: a read shorter than rustls asked for drained
                // the socket, so skip the read that would say WouldBlock.
                Ok(_) => socket.short && !read_closed,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadEnd::Closed(format!("read error: {e}")),
            };
            if let Err(e) = tls.process_new_packets() {
                // Send the alert that says why, if the socket takes it.
                let _ = tls.write_tls(&mut self.stream);
                return ReadEnd::Tls(e.to_string());
            }
            loop {
                match tls.reader().read(chunk) {
                    Ok(0) => return ReadEnd::Closed("closed by the other side".into()),
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        self.read_buf.extend_from_slice(&chunk[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return ReadEnd::Closed(format!("TLS read error: {e}")),
                }
            }
            if drained {
                return ReadEnd::Drained;
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
        if self.tls.is_some() {
            if !self.flush_tls()? {
                return Ok(false);
            }
            return Ok(self.written(keep_bytes));
        }
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
        Ok(self.written(keep_bytes))
    }

    /// Everything queued went out: the buffer is emptied and its capacity
    /// cut back to `keep_bytes`.
    fn written(&mut self, keep_bytes: usize) -> bool {
        self.write_buf.clear();
        if self.write_buf.capacity() > keep_bytes {
            // A large answer or snapshot went out: do not hold its size.
            self.write_buf.shrink_to(keep_bytes);
        }
        self.write_pos = 0;
        true
    }

    /// `flush` through TLS: plaintext into rustls as far as its send
    /// buffer takes it, records out to the socket, until everything is out
    /// (`Ok(true)`) or the socket would block (`Ok(false)`).
    fn flush_tls(&mut self) -> Result<bool, String> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Err("no TLS".into());
        };
        loop {
            if self.write_pos < self.write_buf.len() {
                match tls.writer().write(&self.write_buf[self.write_pos..]) {
                    Ok(n) => self.write_pos += n,
                    Err(e) => return Err(format!("TLS write error: {e}")),
                }
            }
            if !tls.wants_write() {
                // Nothing to send: all out, or plaintext waits for the
                // handshake to finish (a read brings that on).
                return Ok(self.write_pos == self.write_buf.len());
            }
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(0) => return Err("write returned 0".into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                    Err(e) => return Err(format!("write error: {e}")),
                }
            }
        }
    }

    /// Registers WRITABLE interest exactly while output is queued.
    pub fn update_interest(&mut self, registry: &Registry, token: Token) {
        let want = self.wants_flush();
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
