//! Sans-IO: latency samples for load mode, per verb, in fixed-size
//! log-linear histograms (32 buckets per power of two: within about 3 % of
//! the true value, exact below 64 µs), so a long run costs no memory per
//! sample and workers' tables merge by addition.

use serde::Serialize;
use std::time::Duration;

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64` of microseconds.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u32]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), total: 0, max: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let mantissa = v >> (exp - SUB_BITS); // in SUB..2*SUB
    ((exp - SUB_BITS + 1) as u64 * SUB + mantissa - SUB) as usize
}

/// The largest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = i / SUB - 1 + u64::from(SUB_BITS);
    let mantissa = i % SUB + SUB;
    let next = u128::from(mantissa + 1) << (exp - u64::from(SUB_BITS));
    u64::try_from(next - 1).unwrap_or(u64::MAX)
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0 < q ≤ 1), in microseconds: the upper
    /// bound of its bucket, never above the largest sample.
    pub fn percentile(&self, q: f64) -> u64 {
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }
}

/// Latencies by verb, in the order verbs were first seen.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    verbs: Vec<(String, Histogram)>,
}

/// One row of the latency table, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub verb: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn record(&mut self, verb: &str, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        match self.verbs.iter_mut().find(|(v, _)| v == verb) {
            Some((_, h)) => h.record(micros),
            None => {
                let mut h = Histogram::default();
                h.record(micros);
                self.verbs.push((verb.to_owned(), h));
            }
        }
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (verb, h) in &other.verbs {
            match self.verbs.iter_mut().find(|(v, _)| v == verb) {
                Some((_, mine)) => mine.merge(h),
                None => self.verbs.push((verb.clone(), h.clone())),
            }
        }
    }

    pub fn rows(&self) -> Vec<Row> {
        let ms = |micros: u64| micros as f64 / 1000.0;
        self.verbs
            .iter()
            .map(|(verb, h)| Row {
                verb: verb.clone(),
                count: h.count(),
                p50_ms: ms(h.percentile(0.50)),
                p90_ms: ms(h.percentile(0.90)),
                p99_ms: ms(h.percentile(0.99)),
                max_ms: ms(h.max),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000).chain([u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "{v}");
            assert!(upper(i) >= v && (i == 0 || upper(i - 1) < v), "{v} in bucket {i} ({})", upper(i));
            last = i;
        }
        // Relative precision: a bucket is at most 1/32 of its values wide.
        for v in [100u64, 1_000, 123_456, 9_876_543_210] {
            assert!((upper(index(v)) - v) as f64 <= v as f64 / 32.0, "{v}");
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!((h.percentile(0.5), h.percentile(0.9), h.percentile(0.99), h.percentile(1.0)), (50, 91, 99, 100));
        let mut big = Histogram::default();
        big.record(1_000_000);
        assert_eq!(big.percentile(0.5), 1_000_000, "never above the largest sample");
        assert_eq!(Histogram::default().percentile(0.5), 0);
    }

    #[test]
    fn tables_merge_by_verb() {
        let (mut a, mut b) = (Latencies::default(), Latencies::default());
        a.record("EHLO", Duration::from_micros(10));
        b.record("RCPT", Duration::from_micros(2000));
        b.record("EHLO", Duration::from_micros(30));
        a.merge(&b);
        let rows = a.rows();
        assert_eq!(rows.iter().map(|r| (r.verb.as_str(), r.count)).collect::<Vec<_>>(), [("EHLO", 2), ("RCPT", 1)]);
        assert_eq!((rows[0].p50_ms, rows[0].max_ms), (0.01, 0.03));
    }
}
