//! Client requests and the waiters behind them: writes proposed through the
//! core and answered once applied (every copy of a retried request alike),
//! linearizable reads through ReadIndex, stale reads, Log pages, and the
//! answers a node owes when leadership is lost or it stops. Part of the
//! pure driver: no sockets, no clock.

use crate::kv::{CommandRef, OpRef, OpResult, Refused};
use crate::raft::log::ENTRY_OVERHEAD_BYTES;
use crate::raft::{Entry, EntryKind, LogIndex, NotLeader, Role};
use crate::wire::{ErrorCode, ResponseBody};

use super::driver::{ClientRef, Driver, DriverEvent, ReadWaiter};

/// Client requests waiting for commit or read confirmation, at most; past
/// it a request is answered TooBusy.
pub const PENDING_REQUESTS_MAX: usize = 100_000;
/// Entries returned by one Log request, at most.
pub const LOG_ENTRIES_MAX: u32 = 10_000;
/// Most bytes of entries one Log answer carries (it carries at least one
/// entry when any is in range, and every entry is far smaller): the client
/// pages on from the last index it got.
pub const LOG_RESPONSE_BYTES_MAX: usize = 16 << 20;
/// Copies of one (client id, seq) that may wait for its apply at once; a
/// further copy is answered TooBusy.
pub const COPIES_WAITING_MAX: usize = 16;

const _: () = assert!(COPIES_WAITING_MAX >= 2, "a retry must be able to wait");
const _: () = assert!(
    LOG_RESPONSE_BYTES_MAX >= crate::kv::COMMAND_BYTES_MAX + ENTRY_OVERHEAD_BYTES,
    "a Log answer holds the largest entry"
);

impl Driver {
    /// NotLeader, with the leader's id and address when known.
    pub fn not_leader(&self) -> ResponseBody {
        let leader = self.raft.leader().filter(|&l| l != self.id);
        let leader_addr = leader.and_then(|l| self.member_addr(l)).unwrap_or_default();
        ResponseBody::NotLeader {
            leader,
            leader_addr,
        }
    }

    /// Requests waiting for commit or a read round.
    pub fn pending_count(&self) -> usize {
        self.waiting_writes.len() + self.waiting_reads.len() + self.confirmed_reads.len()
    }

    fn refuse(&mut self, to: ClientRef, code: ErrorCode, message: String) {
        self.answer(to, ResponseBody::Error { code, message });
    }

    /// A key-value request. Limits first; then a read (stale: from this
    /// node's state; else a ReadIndex round at the leader); then a write:
    /// answered from the session if it is a retry of the session's last
    /// applied write (on any node), attached to a pending copy, or proposed
    /// at the leader.
    pub fn handle_kv(&mut self, to: ClientRef, command: CommandRef<'_>, stale_read: bool) {
        if let Err(over) = command.op.check_limits() {
            self.refuse(to, ErrorCode::BadRequest, over.to_string());
            return;
        }
        if let OpRef::Get { key } = command.op {
            self.handle_get(to, key, stale_read);
            return;
        }
        if let Some((index, result)) = self.kv.cached(command.client_id, command.seq) {
            let body = ResponseBody::Kv {
                index,
                result: result.clone(),
            };
            self.answer(to, body);
            return;
        }
        if self.raft.role() != Role::Leader {
            let body = self.not_leader();
            self.answer(to, body);
            return;
        }
        let key = (command.client_id, command.seq);
        if let Some(copies) = self.waiting_writes.get_mut(&key) {
            // Already in the log, not yet applied: this copy waits too.
            if copies.len() < COPIES_WAITING_MAX {
                copies.push(to);
            } else {
                let message =
                    format!("{COPIES_WAITING_MAX} copies of this request already wait for it");
                self.refuse(to, ErrorCode::TooBusy, message);
            }
            return;
        }
        if let Some(why) = &self.disk_full {
            // Not proposed: an entry this node cannot make durable would
            // wait in memory for the space to come back.
            let message = format!("disk full: {why}; the write was not proposed");
            self.refuse(to, ErrorCode::DiskFull, message);
            return;
        }
        if self.pending_count() >= PENDING_REQUESTS_MAX {
            self.busy(to);
            return;
        }
        self.entry_buf.clear();
        command.encode(&mut self.entry_buf);
        match self.raft.propose(self.entry_data()) {
            Ok(_) => {
                self.waiting_writes.insert(key, vec![to]);
            }
            Err(NotLeader::Redirect(_)) => {
                let body = self.not_leader();
                self.answer(to, body);
            }
        }
    }

    fn handle_get(&mut self, to: ClientRef, key: &[u8], stale_read: bool) {
        if stale_read {
            let value = self.kv.get(key).map(<[u8]>::to_vec);
            let index = self.kv.last_applied();
            let body = ResponseBody::Kv {
                index,
                result: OpResult::Value(value),
            };
            self.answer(to, body);
            return;
        }
        if self.pending_count() >= PENDING_REQUESTS_MAX {
            self.busy(to);
            return;
        }
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        match self.raft.read_index(read_id) {
            Ok(()) => {
                let key = key.to_vec();
                self.waiting_reads.insert(read_id, ReadWaiter { to, key });
            }
            Err(NotLeader::Redirect(_)) => {
                let body = self.not_leader();
                self.answer(to, body);
            }
        }
    }

    fn busy(&mut self, to: ClientRef) {
        let message = format!("{PENDING_REQUESTS_MAX} requests already waiting");
        self.refuse(to, ErrorCode::TooBusy, message);
    }

    /// Entries `from..=to` of this node's log (`to` 0: to the last), at
    /// most `entries_max` and about `LOG_RESPONSE_BYTES_MAX` bytes.
    pub fn handle_log(
        &mut self,
        to_client: ClientRef,
        from: LogIndex,
        to: LogIndex,
        entries_max: u32,
    ) {
        let log = self.raft.log();
        let to = if to.0 == 0 { log.last_index() } else { to };
        let max = entries_max.clamp(1, LOG_ENTRIES_MAX) as usize;
        // The first entry always goes, so the client can page on.
        let mut bytes = 0usize;
        let entries: Vec<Entry> = log
            .slice(from.max(LogIndex(1)), to)
            .iter()
            .take(max)
            .enumerate()
            .take_while(|(k, e)| {
                bytes += ENTRY_OVERHEAD_BYTES + e.data.len();
                *k == 0 || bytes <= LOG_RESPONSE_BYTES_MAX
            })
            .map(|(_, e)| e.clone())
            .collect();
        let body = ResponseBody::Log {
            commit_index: self.raft.commit_index(),
            first_index: log.first_index(),
            last_index: log.last_index(),
            entries,
        };
        self.answer(to_client, body);
    }

    /// Applies one committed entry and answers every copy of its request.
    pub(super) fn apply(&mut self, e: Entry) {
        self.event(|| DriverEvent::Applied(e.clone()));
        self.applied_bytes += e.data.len() as u64;
        if e.kind != EntryKind::Command {
            self.kv.note_applied(e.index);
            return;
        }
        let applied = match self.kv.apply(e.index, &e.data) {
            Ok(applied) => applied,
            Err(why) => {
                self.log_apply_error(&why);
                return;
            }
        };
        let Some(copies) = self
            .waiting_writes
            .remove(&(applied.client_id, applied.seq))
        else {
            return;
        };
        let body = match applied.result {
            Ok(result) => ResponseBody::Kv {
                index: applied.index,
                result,
            },
            Err(why) => {
                let code = match why {
                    Refused::Stale { .. } => ErrorCode::BadRequest,
                    Refused::SessionExpired { .. } => ErrorCode::SessionExpired,
                };
                ResponseBody::Error {
                    code,
                    message: why.to_string(),
                }
            }
        };
        for to in copies {
            self.answer(to, body.clone());
        }
    }

    /// Answers the confirmed reads whose index is applied.
    pub(super) fn answer_reads(&mut self) {
        let applied = self.kv.last_applied();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.confirmed_reads = waiting;
        for (_, w) in ready {
            let value = self.kv.get(&w.key).map(<[u8]>::to_vec);
            let body = ResponseBody::Kv {
                index: applied,
                result: OpResult::Value(value),
            };
            self.answer(w.to, body);
        }
    }

    /// Every waiting write and read, taken out of the driver, each list in
    /// a fixed order (so that a simulator run replays the same).
    fn take_waiting(&mut self) -> (Vec<ClientRef>, Vec<ClientRef>) {
        let mut writes: Vec<ClientRef> = self.waiting_writes.drain().flat_map(|(_, w)| w).collect();
        let mut reads: Vec<ClientRef> = self
            .waiting_reads
            .drain()
            .map(|(_, w)| w.to)
            .chain(self.confirmed_reads.drain(..).map(|(_, w)| w.to))
            .collect();
        writes.sort_by_key(|c| (c.conn, c.request_id));
        reads.sort_by_key(|c| (c.conn, c.request_id));
        (writes, reads)
    }

    /// Leadership lost: nobody here will answer the waiting requests. A
    /// write's outcome is unknown (Unavailable: retry with the same client
    /// id and seq); a read can go to the new leader (NotLeader).
    pub(super) fn fail_waiting(&mut self) {
        self.fail_conf_waiting();
        let (writes, reads) = self.take_waiting();
        for to in writes {
            let message =
                "leadership lost before the write was applied; outcome unknown, retry".into();
            self.refuse(to, ErrorCode::Unavailable, message);
        }
        for to in reads {
            let body = self.not_leader();
            self.answer(to, body);
        }
    }

    /// The node is stopping: every waiting request is answered Unavailable
    /// (a write's outcome is unknown: retry elsewhere with the same client
    /// id and seq). Returns how many were waiting.
    pub fn shut_down(&mut self) -> usize {
        let n_conf = self.conf_waiting.len();
        self.fail_conf_waiting();
        let (writes, reads) = self.take_waiting();
        let n = writes.len() + reads.len() + n_conf;
        for to in writes.into_iter().chain(reads) {
            let message = "node shutting down; a write's outcome is unknown, retry".into();
            self.refuse(to, ErrorCode::Unavailable, message);
        }
        n
    }
}
