//! The key-value state machine, applied from committed entries, with a
//! per-client session table so that a retried request applies once.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::command::{ClientId, CommandRef, OpRef, OpResult};
use crate::raft::LogIndex;

/// Sessions kept at most; past it, the client whose last request is oldest
/// (by log index) is forgotten. Eviction depends only on the log, so every
/// replica evicts the same session at the same entry.
pub const SESSIONS_MAX: usize = 100_000;

struct Session {
    last_seq: u64,
    last_result: OpResult,
    last_index: LogIndex,
}

/// What applying one entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub client_id: ClientId,
    pub seq: u64,
    /// The answer: the first answer again for a duplicate; `Err` for a
    /// request older than the client's last one (it cannot be answered).
    pub result: Result<OpResult, String>,
    /// A retry of a request applied before: nothing changed.
    pub duplicate: bool,
}

/// Keys and values, sessions, and the count of raw appends.
#[derive(Default)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    sessions: HashMap<ClientId, Session>,
    /// (index, client) of every applied request, in log order, for
    /// eviction oldest first. An entry whose client has applied a newer
    /// request since is stale: eviction skips it, and the queue drops stale
    /// entries whenever they outnumber the sessions (amortized O(1)).
    session_age: VecDeque<(LogIndex, ClientId)>,
    appends_applied: u64,
    last_applied: LogIndex,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn appends_applied(&self) -> u64 {
        self.appends_applied
    }

    /// Index of the last entry applied (commands and no-ops).
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Records a no-op entry as applied.
    pub fn note_applied(&mut self, index: LogIndex) {
        self.last_applied = index;
    }

    /// The answer already given to (`client`, `seq`), if that was the
    /// client's last applied request.
    pub fn cached(&self, client: ClientId, seq: u64) -> Option<&OpResult> {
        self.sessions
            .get(&client)
            .filter(|s| s.last_seq == seq)
            .map(|s| &s.last_result)
    }

    /// Applies one committed command entry. An entry that does not decode
    /// applies as nothing and is reported as `Err`.
    pub fn apply(&mut self, index: LogIndex, data: &[u8]) -> Result<Applied, String> {
        self.last_applied = index;
        let cmd = CommandRef::decode(data)
            .map_err(|e| format!("entry {index}: undecodable command: {e}"))?;
        Ok(self.apply_command(index, cmd))
    }

    fn apply_command(&mut self, index: LogIndex, cmd: CommandRef<'_>) -> Applied {
        let CommandRef { client_id, seq, op } = cmd;
        if let Some(s) = self.sessions.get(&client_id) {
            if seq == s.last_seq {
                return Applied {
                    client_id,
                    seq,
                    result: Ok(s.last_result.clone()),
                    duplicate: true,
                };
            }
            if seq < s.last_seq {
                return Applied {
                    client_id,
                    seq,
                    result: Err(format!(
                        "request {seq} is older than the last one applied ({})",
                        s.last_seq
                    )),
                    duplicate: true,
                };
            }
        }
        let result = self.execute(op);
        self.sessions.insert(
            client_id,
            Session {
                last_seq: seq,
                last_result: result.clone(),
                last_index: index,
            },
        );
        self.session_age.push_back((index, client_id));
        while self.sessions.len() > SESSIONS_MAX {
            let Some((i, c)) = self.session_age.pop_front() else {
                break;
            };
            if self.sessions.get(&c).is_some_and(|s| s.last_index == i) {
                self.sessions.remove(&c);
            }
        }
        if self.session_age.len() > 2 * self.sessions.len() + 1024 {
            let sessions = &self.sessions;
            self.session_age
                .retain(|(i, c)| sessions.get(c).is_some_and(|s| s.last_index == *i));
        }
        Applied {
            client_id,
            seq,
            result: Ok(result),
            duplicate: false,
        }
    }

    fn execute(&mut self, op: OpRef<'_>) -> OpResult {
        match op {
            OpRef::Put { key, value } => {
                self.set(key, value);
                OpResult::Done
            }
            OpRef::Get { key } => OpResult::Value(self.map.get(key).cloned()),
            OpRef::Delete { key } => OpResult::Deleted(self.map.remove(key).is_some()),
            OpRef::Cas { key, expected, new } => {
                let current = self.map.get(key);
                if current.map(Vec::as_slice) == expected {
                    self.set(key, new);
                    OpResult::CasOk
                } else {
                    OpResult::CasMismatch(current.cloned())
                }
            }
            OpRef::Append { .. } => {
                self.appends_applied += 1;
                OpResult::Done
            }
        }
    }

    /// Sets `key`, reusing the existing value's buffer when the key is there
    /// (the common overwrite allocates nothing).
    fn set(&mut self, key: &[u8], value: &[u8]) {
        match self.map.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.map.insert(key.to_vec(), value.to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, Op};

    fn entry(client: u64, seq: u64, op: Op) -> Vec<u8> {
        let mut out = Vec::new();
        Command {
            client_id: client,
            seq,
            op,
        }
        .encode(&mut out);
        out
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn kv_put_get_delete() {
        let mut kv = KvStore::new();
        kv.apply(LogIndex(1), &entry(1, 1, put("a", "1"))).unwrap();
        assert_eq!(kv.get(b"a"), Some(&b"1"[..]));
        let a = kv
            .apply(LogIndex(2), &entry(1, 2, Op::Delete { key: "a".into() }))
            .unwrap();
        assert_eq!(a.result, Ok(OpResult::Deleted(true)));
        assert_eq!(kv.get(b"a"), None);
    }

    #[test]
    fn kv_cas_applies_only_on_match() {
        let mut kv = KvStore::new();
        let cas = |exp: Option<&str>, new: &str| Op::Cas {
            key: "k".into(),
            expected: exp.map(Into::into),
            new: new.into(),
        };
        let a = kv.apply(LogIndex(1), &entry(1, 1, cas(None, "x"))).unwrap();
        assert_eq!(a.result, Ok(OpResult::CasOk));
        let a = kv
            .apply(LogIndex(2), &entry(1, 2, cas(Some("y"), "z")))
            .unwrap();
        assert_eq!(a.result, Ok(OpResult::CasMismatch(Some(b"x".to_vec()))));
        assert_eq!(kv.get(b"k"), Some(&b"x"[..]));
    }

    #[test]
    fn kv_retried_request_applies_once() {
        let mut kv = KvStore::new();
        let app = entry(
            7,
            1,
            Op::Append {
                data: b"d".to_vec(),
            },
        );
        kv.apply(LogIndex(1), &app).unwrap();
        let again = kv.apply(LogIndex(2), &app).unwrap();
        assert!(again.duplicate);
        assert_eq!(
            kv.appends_applied(),
            1,
            "a retried append never applies twice"
        );
        let cas = entry(
            7,
            2,
            Op::Cas {
                key: "k".into(),
                expected: None,
                new: "1".into(),
            },
        );
        assert_eq!(
            kv.apply(LogIndex(3), &cas).unwrap().result,
            Ok(OpResult::CasOk)
        );
        let retry = kv.apply(LogIndex(4), &cas).unwrap();
        assert_eq!(
            retry.result,
            Ok(OpResult::CasOk),
            "the first answer again, not a mismatch"
        );
        assert!(kv
            .apply(LogIndex(5), &entry(7, 1, put("a", "b")))
            .unwrap()
            .result
            .is_err());
    }

    #[test]
    fn kv_undecodable_entry_is_an_error_not_a_panic() {
        let mut kv = KvStore::new();
        assert!(kv.apply(LogIndex(1), &[1, 2, 3]).is_err());
        assert!(kv.apply(LogIndex(2), &[]).is_err());
        assert_eq!(kv.last_applied(), LogIndex(2));
    }

    #[test]
    fn command_roundtrip() {
        let c = Command {
            client_id: 9,
            seq: 3,
            op: Op::Cas {
                key: b"k".to_vec(),
                expected: None,
                new: b"v".to_vec(),
            },
        };
        let mut b = Vec::new();
        c.encode(&mut b);
        assert_eq!(Command::decode(&b).unwrap(), c);
    }

    #[test]
    fn kv_session_eviction_forgets_the_oldest_last_request() {
        let mut kv = KvStore::new();
        let mut index = 0u64;
        let mut next = || {
            index += 1;
            LogIndex(index)
        };
        for c in 1..=SESSIONS_MAX as u64 {
            kv.apply(next(), &entry(c, 1, put("k", "v"))).unwrap();
        }
        // Client 1 moves on: its first request is no longer its last, so
        // client 2 now holds the oldest session.
        kv.apply(next(), &entry(1, 2, put("k", "w"))).unwrap();
        let newcomer = SESSIONS_MAX as u64 + 1;
        kv.apply(next(), &entry(newcomer, 1, put("k", "x")))
            .unwrap();
        assert_eq!(kv.sessions.len(), SESSIONS_MAX);
        assert!(kv.cached(2, 1).is_none(), "client 2 is evicted");
        assert!(kv.cached(1, 2).is_some());
        assert!(kv.cached(3, 1).is_some());
        assert!(kv.cached(newcomer, 1).is_some());
        // One client applying many requests: the age queue stays bounded.
        for seq in 2..5000 {
            kv.apply(next(), &entry(3, seq, put("k", "y"))).unwrap();
        }
        assert!(kv.session_age.len() <= 2 * kv.sessions.len() + 1024);
        assert_eq!(kv.sessions.len(), SESSIONS_MAX);
    }
}
