//! The core's in-memory view of the log: every entry after the last
//! compaction point up to the last, as the core believes it (some entries
//! may not be durable yet; the core tracks that separately in
//! `Raft::stable_index`).

use super::types::{Entry, LogIndex, Term};

/// The log, 1-based, possibly compacted: entries up to `offset` were
/// dropped (a snapshot holds their effect) and `entries[i]` holds index
/// `offset + 1 + i`. The term of the entry at `offset` is kept, so that an
/// AppendEntries right after it can still be checked.
///
/// Invariant: `entries[i].index == offset + 1 + i` and terms never decrease
/// along the log (nor below `offset_term`).
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    offset: LogIndex,
    offset_term: Term,
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log holding `entries`, which must start at index 1 and be contiguous
    /// (as recovered from storage).
    pub fn new(entries: Vec<Entry>) -> RaftLog {
        RaftLog::with_offset(LogIndex(0), Term(0), entries)
    }

    /// A log compacted up to (`offset`, `offset_term`) holding `entries`,
    /// which must start at `offset + 1` and be contiguous.
    pub fn with_offset(offset: LogIndex, offset_term: Term, entries: Vec<Entry>) -> RaftLog {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index.0,
                offset.0 + i as u64 + 1,
                "log must be contiguous from index {}",
                offset.next()
            );
            let before = if i > 0 {
                entries[i - 1].term
            } else {
                offset_term
            };
            assert!(
                e.term >= before,
                "term decreases at index {}: {} after {before}",
                e.index,
                e.term
            );
        }
        RaftLog {
            offset,
            offset_term,
            entries,
        }
    }

    /// Index of the last entry: `offset` when none is held.
    pub fn last_index(&self) -> LogIndex {
        self.offset.plus(self.entries.len() as u64)
    }

    /// Term of the last entry: the offset's term when none is held.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The first index held (`offset + 1`).
    pub fn first_index(&self) -> LogIndex {
        self.offset.next()
    }

    /// The index up to which entries were compacted away (0 if none).
    pub fn offset(&self) -> LogIndex {
        self.offset
    }

    /// Term of the entry at `index`: the offset's term at the offset (0 at
    /// index 0), `None` before the offset or past the end.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.get(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        self.entries.get((index.0 - self.offset.0 - 1) as usize)
    }

    /// Entries from `from` to `to` inclusive (clamped to what is held).
    pub fn slice(&self, from: LogIndex, to: LogIndex) -> &[Entry] {
        let lo = from.0.max(self.offset.0 + 1) - self.offset.0 - 1;
        let hi =
            to.0.saturating_sub(self.offset.0)
                .min(self.entries.len() as u64);
        if lo >= hi {
            return &[];
        }
        &self.entries[lo as usize..hi as usize]
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

    /// Removes the entries from `index` on; `index` must be past the offset
    /// (compacted entries are committed and never conflict).
    pub fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.offset,
            "truncate from {index}, at or before the compaction point {}",
            self.offset
        );
        self.entries
            .truncate((index.0 - self.offset.0 - 1) as usize);
    }

    /// Drops the entries up to `index`, which must be held (or be the
    /// offset already): the log then starts at `index + 1`. Returns them,
    /// so that the caller may free them where it costs least (a hundred
    /// thousand small entries take milliseconds to free).
    pub fn compact_to(&mut self, index: LogIndex) -> Vec<Entry> {
        if index <= self.offset {
            return Vec::new();
        }
        let term = self
            .term_at(index)
            .expect("compaction point must be within the log");
        // Moves only the entries kept (a few thousand), not the dropped.
        let kept = self.entries.split_off((index.0 - self.offset.0) as usize);
        let dropped = std::mem::replace(&mut self.entries, kept);
        self.offset = index;
        self.offset_term = term;
        dropped
    }

    /// Drops every entry: the log restarts after (`index`, `term`), as given
    /// by a snapshot this log does not agree with.
    pub fn reset(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.offset = index;
        self.offset_term = term;
    }

    /// The first index of the run of entries with the same term as the entry
    /// at `index` (which must be held or be the offset); never before the
    /// offset.
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let term = self.term_at(index);
        let mut i = index;
        while i > self.offset && i.0 > 1 && self.term_at(i.prev()) == term {
            i = i.prev();
        }
        i
    }

    /// The last index whose entry has `term`, if any (binary search: terms
    /// never decrease along the log). The offset counts when nothing after
    /// it has `term`.
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        let after = self.entries.partition_point(|e| e.term <= term);
        if after > 0 && self.entries[after - 1].term == term {
            return Some(self.offset.plus(after as u64));
        }
        if after == 0 && self.offset.0 > 0 && self.offset_term == term {
            return Some(self.offset);
        }
        None
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to
    /// date as this one (Raft paper, section 5.4.1).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The entries held (from `first_index`).
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

    fn entry(i: u64, t: u64) -> Entry {
        Entry {
            index: LogIndex(i),
            term: Term(t),
            kind: EntryKind::Command,
            data: Vec::new().into(),
        }
    }

    #[test]
    fn compacted_log_keeps_the_offset_term() {
        let mut l = log_of(&[1, 1, 2, 2, 3]);
        l.compact_to(LogIndex(3));
        assert_eq!(l.first_index(), LogIndex(4));
        assert_eq!(l.last_index(), LogIndex(5));
        assert_eq!(l.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(l.term_at(LogIndex(2)), None);
        assert_eq!(l.term_at(LogIndex(0)), None);
        assert!(l.get(LogIndex(3)).is_none());
        assert_eq!(l.get(LogIndex(4)).map(|e| e.term), Some(Term(2)));
        assert_eq!(l.slice(LogIndex(1), LogIndex(9)).len(), 2);
        assert_eq!(l.first_index_of_term_at(LogIndex(4)), LogIndex(3));
        assert_eq!(l.last_index_of_term(Term(2)), Some(LogIndex(4)));
        assert_eq!(l.last_index_of_term(Term(1)), None);
        l.compact_to(LogIndex(5));
        assert!(l.entries().is_empty());
        assert_eq!((l.last_index(), l.last_term()), (LogIndex(5), Term(3)));
        assert_eq!(l.last_index_of_term(Term(3)), Some(LogIndex(5)));
        l.append(entry(6, 4));
        assert_eq!(l.last_index(), LogIndex(6));
        l.truncate_from(LogIndex(6));
        assert_eq!(l.last_index(), LogIndex(5));
    }

    #[test]
    fn reset_log_restarts_after_the_snapshot() {
        let mut l = log_of(&[1, 1, 2]);
        l.reset(LogIndex(10), Term(4));
        assert_eq!((l.last_index(), l.last_term()), (LogIndex(10), Term(4)));
        assert_eq!(l.term_at(LogIndex(3)), None);
        l.append(entry(11, 4));
        assert_eq!(l.entries().len(), 1);
        let r = RaftLog::with_offset(LogIndex(10), Term(4), vec![entry(11, 5)]);
        assert_eq!(r.last_index(), LogIndex(11));
    }

    #[test]
    #[should_panic(expected = "compaction point")]
    fn truncating_a_compacted_entry_panics() {
        let mut l = log_of(&[1, 1, 2]);
        l.compact_to(LogIndex(2));
        l.truncate_from(LogIndex(2));
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
