//! Operations over time, for pictures of a run: per time slot, the
//! operations that completed in it (ok and failed) and a coarse histogram
//! of their latencies, from which each slot's p50 and p99 are read.
//!
//! A slot's histogram has 4 buckets per power of two of microseconds (each
//! quantile within about 19 % of the true value: plenty for a line on a
//! picture), up to `LATENCY_US_MAX`; 112 counters, so a 10-minute run at
//! 100 ms slots holds about 2.7 MB whatever its throughput.

/// Bits of sub-bucket per power of two.
const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies above this (about 134 s) count in the last bucket.
pub const LATENCY_US_MAX: u64 = (1 << 27) - 1;
const BUCKETS: usize = ((27 - SUB_BITS as usize) + 1) * SUB as usize + SUB as usize;

/// The slot width the load generator records at.
pub const SLOT_NS_DEFAULT: u64 = 100_000_000;
/// Slots a series holds at most (a run longer than this many slots is cut
/// there: 100 ms slots cover 5.5 hours).
pub const SLOTS_MAX: usize = 200_000;

/// The bucket of a latency (µs): the histogram's layout, coarser.
fn bucket_of(us: u64) -> usize {
    super::hist::log_linear_bucket(us.min(LATENCY_US_MAX), SUB_BITS)
}

/// The largest latency (µs) that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    super::hist::log_linear_high(b, SUB_BITS)
}

/// One time slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Operations that succeeded, and that failed definitely, completing in
    /// this slot.
    pub ok: u64,
    pub failed: u64,
    /// Latencies of the operations counted in `ok` and `failed`.
    counts: Vec<u32>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            ok: 0,
            failed: 0,
            counts: vec![0; BUCKETS],
        }
    }
}

impl Slot {
    /// The latency (µs) at quantile `q` of this slot, None when empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.counts.iter().map(|&c| c as u64).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c as u64;
            if seen >= rank {
                return Some(bucket_high(b));
            }
        }
        None
    }

    fn merge(&mut self, o: &Slot) {
        self.ok += o.ok;
        self.failed += o.failed;
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a = a.saturating_add(*b);
        }
    }
}

/// Slots of `slot_ns` from `start_ns` on (the monotonic clock of
/// `bench::monotonic_ns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub start_ns: u64,
    pub slot_ns: u64,
    pub slots: Vec<Slot>,
}

impl Series {
    pub fn new(start_ns: u64, slot_ns: u64) -> Series {
        assert!(slot_ns > 0, "a slot of 0 ns");
        Series {
            start_ns,
            slot_ns,
            slots: Vec::new(),
        }
    }

    /// An operation that completed at `complete_ns` after `latency_us`;
    /// `ok` false for a definite failure. Ignored before the start and
    /// past `SLOTS_MAX`.
    pub fn record(&mut self, complete_ns: u64, latency_us: u64, ok: bool) {
        let Some(since) = complete_ns.checked_sub(self.start_ns) else {
            return;
        };
        let i = (since / self.slot_ns) as usize;
        if i >= SLOTS_MAX {
            return;
        }
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Slot::default);
        }
        let s = &mut self.slots[i];
        if ok {
            s.ok += 1;
        } else {
            s.failed += 1;
        }
        let c = &mut s.counts[bucket_of(latency_us)];
        *c = c.saturating_add(1);
    }

    /// Adds another series of the same start and slot width (the load
    /// generator's threads each keep one).
    pub fn merge(&mut self, o: &Series) {
        assert_eq!(
            (self.start_ns, self.slot_ns),
            (o.start_ns, o.slot_ns),
            "merging series of different slots"
        );
        if self.slots.len() < o.slots.len() {
            self.slots.resize_with(o.slots.len(), Slot::default);
        }
        for (a, b) in self.slots.iter_mut().zip(&o.slots) {
            a.merge(b);
        }
    }

    /// The same operations in slots `factor` times wider.
    pub fn coarsen(&self, factor: usize) -> Series {
        let factor = factor.max(1);
        let mut out = Series::new(self.start_ns, self.slot_ns * factor as u64);
        for chunk in self.slots.chunks(factor) {
            let mut s = Slot::default();
            for c in chunk {
                s.merge(c);
            }
            out.slots.push(s);
        }
        out
    }

    /// Where the series ends: the end of its last slot.
    pub fn end_ns(&self) -> u64 {
        self.start_ns + self.slot_ns * self.slots.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_quantiles_are_coarse_but_close() {
        let mut s = Series::new(1_000, 100);
        for us in 1..=1000u64 {
            s.record(1_050, us, true);
        }
        let slot = &s.slots[0];
        assert_eq!(slot.ok, 1000);
        for (q, want) in [(0.5, 500f64), (0.99, 990.0)] {
            let got = slot.quantile_us(q).expect("not empty") as f64;
            assert!((got - want).abs() / want < 0.25, "q{q}: {got} vs {want}");
        }
        for v in [0u64, 1, 3, 4, 5, 1000, LATENCY_US_MAX] {
            assert!(bucket_high(bucket_of(v)) >= v, "{v}");
            assert!(bucket_of(v) < BUCKETS, "{v}");
        }
        assert_eq!(bucket_of(u64::MAX), bucket_of(LATENCY_US_MAX));
    }

    #[test]
    fn series_merge_and_coarsen_keep_every_operation() {
        let mut a = Series::new(0, 10);
        let mut b = Series::new(0, 10);
        a.record(5, 100, true);
        b.record(25, 200, false);
        b.record(999, 1, true); // before-start and late ones too
        a.merge(&b);
        assert_eq!(a.slots.len(), 100);
        let c = a.coarsen(50);
        assert_eq!(c.slots.len(), 2);
        assert_eq!((c.slots[0].ok, c.slots[0].failed), (1, 1));
        assert_eq!(c.slots[1].ok, 1);
        assert_eq!(c.end_ns(), 1000);
    }
}
