//! Streamed InstallSnapshot. When the core sends a follower its snapshot,
//! the node does not put the snapshot in one message: it sends a
//! SnapshotBegin (the InstallSnapshot without its data, and the data's
//! length), then the data in SnapshotChunk frames read from the snapshot
//! file as they go, at most `TRANSFER_WINDOW_CHUNKS` ahead of what the
//! follower has acknowledged writing (SnapshotAck, sent back on the same
//! link). The follower writes the chunks into a temporary file in its data
//! dir and, once the last one is written, hands the core the
//! InstallSnapshot reading from that file; the storage side makes it
//! durable and renames it into place. Neither side holds the snapshot in
//! memory, and heartbeats go on between chunks.
//!
//! A transfer is bound to its link: a link that closes, a new transfer on
//! it, or no acknowledgement for `TRANSFER_STALL` ends it, and the
//! follower's partial file goes; so does a leader that is no longer the
//! leader of the transfer's term stop sending. The core, whose follower did
//! not acknowledge the snapshot, sends it again later, from the start.

use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::Token;

use crate::kv::KvStore;
use crate::raft::{LogIndex, Message, MessageBody, NodeId, Role, Snapshot, SnapshotData, Term};
use crate::storage::files::{SnapshotFileWriter, Writeback};
use crate::wire::{encode_snapshot_chunk, Frame};

use super::driver::kv_of_snapshot;
use super::Node;

/// Bytes of data per SnapshotChunk.
pub const TRANSFER_CHUNK_BYTES: usize = 1 << 20;
/// Chunks sent and not yet acknowledged, at most: the memory a transfer
/// takes on either side is about this many chunks, whatever the
/// snapshot's size.
pub const TRANSFER_WINDOW_CHUNKS: u64 = 8;
/// A transfer that gets no acknowledgement for this long is abandoned.
pub const TRANSFER_STALL: Duration = Duration::from_secs(10);

/// After a snapshot is streamed whole on a link, the same InstallSnapshot
/// asked for again within this time is not sent again: the follower has
/// every byte and is installing it (a large state takes a while to
/// decode, and the leader repeats an unanswered snapshot). A link that
/// closes forgets it; past this time it is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(30);

/// Which InstallSnapshot a transfer carries: the snapshot's index and
/// term, and the message's term.
pub(super) type TransferKey = (LogIndex, Term, Term);

/// A snapshot being sent on one of our links.
pub(super) struct OutgoingSnapshot {
    id: u64,
    /// The InstallSnapshot it carries; its data is what is streamed.
    key: TransferKey,
    data: SnapshotData,
    len: u64,
    /// Bytes queued so far, and acknowledged as written.
    sent: u64,
    acked: u64,
    started: Instant,
    last_progress: Instant,
}

/// A snapshot being received on a link a peer dialled.
pub(super) struct IncomingSnapshot {
    id: u64,
    /// The InstallSnapshot, without its data.
    message: Message,
    writer: SnapshotFileWriter,
    len: u64,
    started: Instant,
}

impl Node {
    /// Sends `m`, an InstallSnapshot, as a stream on the link to `m.to`
    /// (whose connection is `token`), unless that very snapshot is being
    /// streamed on it already: the core repeats an unacknowledged
    /// snapshot, and a transfer under way is carried on rather than
    /// restarted.
    pub(super) fn stream_snapshot(&mut self, token: Token, m: Message) {
        let MessageBody::InstallSnapshot { snapshot, .. } = &m.body else {
            return;
        };
        let Some(link) = self.peers.get(&m.to) else {
            return;
        };
        let key = (snapshot.index, snapshot.term, m.term);
        if let Some(t) = &link.transfer {
            if t.key == key {
                return;
            }
            info!(
                "{}: snapshot transfer {} to {} replaced by the snapshot at {}/{}",
                self.id, t.id, m.to, snapshot.index, snapshot.term
            );
        }
        if link
            .streamed
            .is_some_and(|(k, at)| k == key && at.elapsed() < RESEND_AFTER)
        {
            return;
        }
        self.next_transfer += 1;
        let now = Instant::now();
        let t = OutgoingSnapshot {
            id: self.next_transfer,
            key,
            data: snapshot.data.clone(),
            len: snapshot.data.len() as u64,
            sent: 0,
            acked: 0,
            started: now,
            last_progress: now,
        };
        let mut header = m.clone();
        if let MessageBody::InstallSnapshot { snapshot, .. } = &mut header.body {
            snapshot.data = SnapshotData::Bytes(Vec::new().into());
        }
        info!(
            "{}: streaming the snapshot at {}/{} ({} bytes) to {} (transfer {})",
            self.id, key.0, key.1, t.len, m.to, t.id
        );
        self.send_frame(
            token,
            &Frame::SnapshotBegin {
                transfer: t.id,
                len: t.len,
                message: header,
            },
        );
        if let Some(link) = self.peers.get_mut(&m.to) {
            link.transfer = Some(t);
        }
        self.pump_snapshot(m.to);
    }

    /// Queues chunks of the transfer to `peer` while the window allows.
    fn pump_snapshot(&mut self, peer: NodeId) {
        let Some(link) = self.peers.get_mut(&peer) else {
            return;
        };
        let (Some(token), Some(t)) = (link.token, link.transfer.as_mut()) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let window = TRANSFER_WINDOW_CHUNKS * TRANSFER_CHUNK_BYTES as u64;
        let mut queued = false;
        let mut abandon = None;
        while t.sent < t.len && t.sent - t.acked < window {
            let n = ((t.len - t.sent) as usize).min(TRANSFER_CHUNK_BYTES);
            let (data, at) = (&t.data, t.sent);
            let read = encode_snapshot_chunk(&mut c.io.write_buf, t.id, at, n, |buf| {
                match data.read_at(at, buf)? {
                    got if got == buf.len() => Ok(()),
                    got => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the snapshot ended at {} bytes", at + got as u64),
                    )),
                }
            });
            if let Err(e) = read {
                abandon = Some(format!("reading the snapshot: {e}"));
                break;
            }
            t.sent += n as u64;
            queued = true;
        }
        if let Some(why) = abandon {
            warn!(
                "{}: snapshot transfer {} to {peer}: {why}; abandoned",
                self.id, t.id
            );
            link.transfer = None;
        }
        if queued {
            self.mark_dirty(token);
        }
    }

    /// A SnapshotAck from `peer` on our link to it.
    pub(super) fn snapshot_acked(&mut self, peer: NodeId, transfer: u64, received: u64) {
        let now = Instant::now();
        let (role, term) = (self.driver.raft().role(), self.driver.raft().current_term());
        let Some(link) = self.peers.get_mut(&peer) else {
            return;
        };
        if link
            .transfer
            .as_ref()
            .is_some_and(|t| role != Role::Leader || term != t.key.2)
        {
            // Its InstallSnapshot is of a term this node no longer leads:
            // the follower would refuse it once whole.
            info!(
                "{}: snapshot transfer to {peer} stopped: no longer the leader of its term",
                self.id
            );
            link.transfer = None;
            return;
        }
        let Some(t) = link.transfer.as_mut().filter(|t| t.id == transfer) else {
            return; // an old transfer's
        };
        if received > t.acked {
            t.acked = received.min(t.sent);
            t.last_progress = now;
        }
        if t.acked >= t.len {
            let secs = t.started.elapsed().as_secs_f64().max(1e-6);
            info!(
                "{}: snapshot transfer {} to {peer} done: {} bytes in {:.2} s ({:.0} MB/s)",
                self.id,
                t.id,
                t.len,
                secs,
                t.len as f64 / secs / 1e6
            );
            link.streamed = Some((t.key, now));
            link.transfer = None;
            return;
        }
        self.pump_snapshot(peer);
    }

    /// Abandons transfers that have not been acknowledged for
    /// `TRANSFER_STALL` (the core sends the snapshot again).
    pub(super) fn expire_transfers(&mut self, now: Instant) {
        for (peer, link) in self.peers.iter_mut() {
            if let Some(t) = &link.transfer {
                if now.duration_since(t.last_progress) >= TRANSFER_STALL {
                    warn!(
                        "{}: snapshot transfer {} to {peer}: nothing acknowledged for {} s at {} of {} bytes; abandoned",
                        self.id,
                        t.id,
                        TRANSFER_STALL.as_secs(),
                        t.acked,
                        t.len
                    );
                    link.transfer = None;
                }
            }
        }
    }

    /// A SnapshotBegin from `peer` on the link it dialled (`token`): a
    /// temporary file for it, replacing any partial transfer on the link.
    pub(super) fn snapshot_begins(
        &mut self,
        token: Token,
        peer: NodeId,
        transfer: u64,
        len: u64,
        message: Message,
    ) -> Result<(), String> {
        let snapshot = match &message.body {
            MessageBody::InstallSnapshot { snapshot, .. }
                if snapshot.data.is_empty() && message.from == peer && message.to == self.id =>
            {
                snapshot
            }
            _ => return Err(format!("{peer} began a snapshot transfer with {message}")),
        };
        if self.partitioned_from(peer) {
            return Ok(()); // its chunks go unanswered
        }
        let writer = match SnapshotFileWriter::create(
            &self.data_dir,
            "recv",
            snapshot.index,
            snapshot.term,
            &snapshot.membership,
            len,
        ) {
            Ok(w) => w.with_writeback(if self.config.cluster.fsync {
                Writeback::Start
            } else {
                Writeback::None
            }),
            Err(e) => {
                // Not the link's fault: the leader abandons the transfer
                // and tries again later.
                warn!(
                    "{}: cannot receive the snapshot at {}/{} from {peer}: {e}",
                    self.id, snapshot.index, snapshot.term
                );
                return Ok(());
            }
        };
        info!(
            "{}: receiving the snapshot at {}/{} ({len} bytes) from {peer} (transfer {transfer})",
            self.id, snapshot.index, snapshot.term
        );
        let incoming = IncomingSnapshot {
            id: transfer,
            message,
            writer,
            len,
            started: Instant::now(),
        };
        if let Some(c) = self.conns.get_mut(&token) {
            c.incoming = Some(Box::new(incoming));
        }
        if len == 0 {
            return self.snapshot_chunk(token, peer, transfer, 0, Vec::new());
        }
        Ok(())
    }

    /// A SnapshotChunk from `peer`: written, acknowledged, and after the
    /// last one, the InstallSnapshot goes to the core.
    pub(super) fn snapshot_chunk(
        &mut self,
        token: Token,
        peer: NodeId,
        transfer: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), String> {
        let Some(c) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        let Some(inc) = c.incoming.as_mut().filter(|i| i.id == transfer) else {
            return Ok(()); // a transfer we declined or dropped
        };
        let at = inc.writer.written();
        if offset != at || at + data.len() as u64 > inc.len {
            return Err(format!(
                "{peer} sent {} bytes of snapshot transfer {transfer} at {offset}; expected them at {at}, of {}",
                data.len(),
                inc.len
            ));
        }
        if let Err(e) = std::io::Write::write_all(&mut inc.writer, &data) {
            warn!(
                "{}: writing the snapshot from {peer}: {e}; transfer {transfer} dropped",
                self.id
            );
            c.incoming = None;
            return Ok(());
        }
        let received = inc.writer.written();
        let done = received == inc.len;
        self.send_frame(token, &Frame::SnapshotAck { transfer, received });
        if !done {
            return Ok(());
        }
        let Some(inc) = self.conns.get_mut(&token).and_then(|c| c.incoming.take()) else {
            return Ok(());
        };
        let IncomingSnapshot {
            mut message,
            writer,
            len,
            started,
            ..
        } = *inc;
        let file: Snapshot = match writer.finish() {
            Ok(s) => s,
            Err(e) => {
                warn!("{}: finishing the snapshot from {peer}: {e}", self.id);
                return Ok(());
            }
        };
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        info!(
            "{}: received the snapshot at {}/{} from {peer}: {len} bytes in {secs:.2} s ({:.0} MB/s)",
            self.id,
            file.index,
            file.term,
            len as f64 / secs / 1e6
        );
        let needs_decode = match &mut message.body {
            MessageBody::InstallSnapshot { snapshot, .. } => {
                snapshot.data = file.data;
                self.driver.needs_decode(snapshot)
            }
            _ => false,
        };
        if self.partitioned_from(peer) {
            return Ok(());
        }
        if !needs_decode {
            return self.driver.step(message);
        }
        if self.decoding {
            info!(
                "{}: the snapshot from {peer} arrived while another is being decoded; dropped (the leader sends it again)",
                self.id
            );
            return Ok(());
        }
        // Decoding a large state takes seconds: a thread does it while
        // the loop goes on (heartbeats, clients), and the core gets the
        // InstallSnapshot with its state once decoded.
        let tx = self.decoded_tx.clone();
        let waker = std::sync::Arc::clone(&self.decode_waker);
        let spawned = std::thread::Builder::new()
            .name("snapshot-decode".into())
            .spawn(move || {
                super::snapshots::background_priority();
                let started = Instant::now();
                let kv = match &message.body {
                    MessageBody::InstallSnapshot { snapshot, .. } => kv_of_snapshot(snapshot),
                    _ => Err("not an InstallSnapshot".into()),
                };
                let _ = tx.send(Decoded {
                    peer,
                    message,
                    kv,
                    took: started.elapsed(),
                });
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => self.decoding = true,
            Err(e) => warn!(
                "{}: cannot start a thread to decode the snapshot from {peer}: {e}; dropped",
                self.id
            ),
        }
        Ok(())
    }

    /// A received snapshot is decoded: the core takes the InstallSnapshot.
    pub(super) fn snapshot_decoded(&mut self, d: Decoded) {
        self.decoding = false;
        let Decoded {
            peer,
            message,
            kv,
            took,
        } = d;
        match kv {
            Ok(kv) => {
                info!(
                    "{}: decoded the snapshot from {peer} ({} keys) off the event loop in {} ms",
                    self.id,
                    kv.len(),
                    took.as_millis()
                );
                if !self.partitioned_from(peer) {
                    self.driver.step_decoded(message, kv);
                }
            }
            Err(e) => {
                // As a bad message on the link: refused, logged; the core
                // never switches to a state the node cannot load.
                error!("{}: refusing the snapshot from {peer}: {e}", self.id);
            }
        }
    }
}

/// A received snapshot's state, decoded by its thread.
pub(super) struct Decoded {
    peer: NodeId,
    message: Message,
    kv: Result<KvStore, String>,
    took: Duration,
}
