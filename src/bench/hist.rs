//! A log-linear latency histogram in microseconds: 32 sub-buckets per power
//! of two, so every percentile is within about 3 % of the true value, in a
//! few KiB whatever the number of samples.

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Histogram {{ count: {}, p50: {}, p99: {}, max: {} }}",
            self.total,
            self.quantile(0.5),
            self.quantile(0.99),
            self.max
        )
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

/// The bucket of `v` in a log-linear layout with `2^sub_bits` buckets per
/// power of two (values below `2^sub_bits` have a bucket each).
pub(super) fn log_linear_bucket(v: u64, sub_bits: u32) -> usize {
    let sub_n = 1u64 << sub_bits;
    if v < sub_n {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= sub_bits
    let shift = msb - sub_bits;
    let sub = (v >> shift) & (sub_n - 1);
    ((shift as u64 + 1) * sub_n + sub) as usize
}

/// The largest value that falls in bucket `b` of that layout.
pub(super) fn log_linear_high(b: usize, sub_bits: u32) -> u64 {
    let (b, sub_n) = (b as u64, 1u64 << sub_bits);
    if b < sub_n {
        return b;
    }
    let shift = b / sub_n - 1;
    let sub = b % sub_n;
    ((sub_n + sub) << shift) + ((1u64 << shift) - 1)
}

fn bucket_of(v: u64) -> usize {
    log_linear_bucket(v, SUB_BITS)
}

fn bucket_high(b: usize) -> u64 {
    log_linear_high(b, SUB_BITS)
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        self.counts[bucket_of(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
        self.sum += us as u128;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(b).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000f64), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(h.max(), 100_000);
        for v in [0u64, 1, 31, 32, 33, 1000, 1 << 40, u64::MAX / 2] {
            assert!(bucket_high(bucket_of(v)) >= v);
        }
    }
}
