//! The core's in-memory view of the log: every entry from index 1 up to the
//! last, as the core believes it (some entries may not be durable yet; the
//! core tracks that separately in `Raft::stable_index`).

use super::types::{Entry, LogIndex, Term};

/// The log, 1-based: `entries[i]` holds index `i + 1`.
///
/// Invariant: `entries[i].index == i + 1` and terms never decrease along the
/// log.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log holding `entries`, which must start at index 1 and be contiguous
    /// (as recovered from storage).
    pub fn new(entries: Vec<Entry>) -> RaftLog {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index.0,
                i as u64 + 1,
                "log must be contiguous from index 1"
            );
            if i > 0 {
                assert!(
                    e.term >= entries[i - 1].term,
                    "term decreases at index {}: {} after {}",
                    e.index,
                    e.term,
                    entries[i - 1].term
                );
            }
        }
        RaftLog { entries }
    }

    /// Index of the last entry, 0 when empty.
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.entries.len() as u64)
    }

    /// Term of the last entry, 0 when empty.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(Term(0), |e| e.term)
    }

    /// The first index held (always 1: there is no compaction yet).
    pub fn first_index(&self) -> LogIndex {
        LogIndex(1)
    }

    /// Term of the entry at `index`: `Some(Term(0))` for index 0, `None` past
    /// the end.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index.0 == 0 {
            return Some(Term(0));
        }
        self.entries.get(index.0 as usize - 1).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index.0 == 0 {
            return None;
        }
        self.entries.get(index.0 as usize - 1)
    }

    /// Entries from `from` to `to` inclusive (clamped to the log).
    pub fn slice(&self, from: LogIndex, to: LogIndex) -> &[Entry] {
        let lo = from.0.max(1) as usize - 1;
        let hi = (to.0 as usize).min(self.entries.len());
        if lo >= hi {
            return &[];
        }
        &self.entries[lo..hi]
    }

    /// Entries from `from` on, as many as fit in `bytes_max` bytes of data
    /// but at least one when there is one.
    pub fn slice_bytes(&self, from: LogIndex, bytes_max: usize) -> &[Entry] {
        let all = self.slice(from, self.last_index());
        let mut bytes = 0usize;
        let mut n = 0;
        for e in all {
            bytes += e.data.len() + ENTRY_OVERHEAD_BYTES;
            if n > 0 && bytes > bytes_max {
                break;
            }
            n += 1;
        }
        &all[..n]
    }

    /// Appends one entry; it must follow the last.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "append of {entry} after last {}",
            self.last_index()
        );
        assert!(
            entry.term >= self.last_term(),
            "append of {entry} after term {}",
            self.last_term()
        );
        self.entries.push(entry);
    }

    /// Removes the entries from `index` on.
    pub fn truncate_from(&mut self, index: LogIndex) {
        assert!(index.0 >= 1, "truncate from index 0");
        self.entries.truncate(index.0 as usize - 1);
    }

    /// The first index of the run of entries with the same term as the entry
    /// at `index` (which must be held).
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let term = self.term_at(index);
        let mut i = index;
        while i.0 > 1 && self.term_at(i.prev()) == term {
            i = i.prev();
        }
        i
    }

    /// The last index whose entry has `term`, if any (binary search: terms
    /// never decrease along the log).
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        let after = self.entries.partition_point(|e| e.term <= term);
        if after == 0 || self.entries[after - 1].term != term {
            return None;
        }
        Some(LogIndex(after as u64))
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to
    /// date as this one (Raft paper, section 5.4.1).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// All entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// What an entry costs in an AppendEntries beyond its data (index, term,
/// kind, length), used to bound message sizes.
pub const ENTRY_OVERHEAD_BYTES: usize = 21;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;

    fn log_of(terms: &[u64]) -> RaftLog {
        RaftLog::new(
            terms
                .iter()
                .enumerate()
                .map(|(i, t)| Entry {
                    index: LogIndex(i as u64 + 1),
                    term: Term(*t),
                    kind: EntryKind::Command,
                    data: Vec::new().into(),
                })
                .collect(),
        )
    }

    #[test]
    fn log_term_at_zero_is_zero() {
        let l = log_of(&[1, 1, 2]);
        assert_eq!(l.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(l.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(l.term_at(LogIndex(4)), None);
    }

    #[test]
    fn log_term_boundaries() {
        let l = log_of(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
        assert_eq!(l.first_index_of_term_at(LogIndex(5)), LogIndex(4));
        assert_eq!(l.first_index_of_term_at(LogIndex(2)), LogIndex(1));
        assert_eq!(l.last_index_of_term(Term(4)), Some(LogIndex(5)));
        assert_eq!(l.last_index_of_term(Term(3)), None);
        assert_eq!(l.last_index_of_term(Term(6)), Some(LogIndex(10)));
    }

    #[test]
    fn log_up_to_date_compares_term_then_index() {
        let l = log_of(&[1, 2, 2]);
        assert!(l.is_up_to_date(LogIndex(1), Term(3)));
        assert!(l.is_up_to_date(LogIndex(3), Term(2)));
        assert!(!l.is_up_to_date(LogIndex(2), Term(2)));
        assert!(!l.is_up_to_date(LogIndex(9), Term(1)));
    }

    #[test]
    fn log_slice_bytes_takes_at_least_one() {
        let mut l = RaftLog::default();
        for i in 1..=10 {
            l.append(Entry {
                index: LogIndex(i),
                term: Term(1),
                kind: EntryKind::Command,
                data: vec![0; 100].into(),
            });
        }
        assert_eq!(l.slice_bytes(LogIndex(1), 10).len(), 1);
        assert_eq!(l.slice_bytes(LogIndex(1), 3 * 121).len(), 3);
        assert_eq!(l.slice_bytes(LogIndex(11), 1000).len(), 0);
    }
}
