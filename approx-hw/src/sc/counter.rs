//! Per-cycle accumulators of AND outputs, bit-sliced over 512 stream bits at a time.
//!
//! Each bit position of a vector accumulator stands for one clock cycle of one slice of
//! the receptive field. Positions that stand for the same cycle (other lanes, other
//! sub-words) hold partial counts of disjoint parts of the field; [`Counter::count`]
//! merges them with a saturating add and returns `Σ_t min(c(t), n)` over the B cycles
//! (or the plain sum for exact accumulation). Saturating early is exact because counts
//! only grow: `min(a + b, n) = min(min(a, n) + min(b, n), n)`.

use super::lanes::Lanes;

/// How the 512 bit positions of an accumulator map to clock cycles, and the OR-n limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CycleFold {
    /// Stream length B in cycles.
    pub len: usize,
    /// Words per stream: B/64 for B ≥ 64 (lane l holds word l mod W), else 1.
    pub words: usize,
    /// n of OR-n (unused by exact accumulation).
    pub n: u32,
}

impl CycleFold {
    #[inline(always)]
    fn valid_mask(&self) -> u64 {
        if self.len >= 64 {
            u64::MAX
        } else {
            (1u64 << self.len) - 1
        }
    }

    /// Merges the first `width` lanes of `planes` (the vector's words) and, for
    /// B < 64, the sub-words of B bits, that stand for the same cycles, with `merge`;
    /// returns one plane set per stream word and the number of words.
    #[inline(always)]
    fn fold<const K: usize>(
        &self,
        lanes: [[u64; K]; 8],
        width: usize,
        merge: impl Fn([u64; K], [u64; K]) -> [u64; K],
    ) -> ([[u64; K]; 4], usize) {
        let w = self.words;
        let mut out = [[0u64; K]; 4];
        if w == 1 {
            // B ≤ 64, the common case: one chain over the lanes, all in registers.
            out[0] = lanes[1..width].iter().fold(lanes[0], |a, b| merge(a, *b));
        } else {
            // `words` is a power of two: a mask, not a division, in this hot path.
            let lane_word = w - 1;
            out[..w].copy_from_slice(&lanes[..w]);
            for (l, lane) in lanes.iter().enumerate().take(width).skip(w) {
                out[l & lane_word] = merge(out[l & lane_word], *lane);
            }
        }
        let mut width = 64;
        while width > self.len {
            width /= 2;
            let lo_mask = (1u64 << width) - 1;
            let lo = out[0].map(|p| p & lo_mask);
            let hi = out[0].map(|p| p >> width);
            out[0] = merge(lo, hi);
        }
        (out, w)
    }
}

/// Transposes `K` vectors of 8 lanes into 8 lanes of `K` planes.
#[inline(always)]
fn by_lane<V: Lanes, const K: usize>(planes: [V; K]) -> [[u64; K]; 8] {
    let arrays = planes.map(V::to_array);
    std::array::from_fn(|l| std::array::from_fn(|k| arrays[k][l]))
}

/// An accumulator for one output value and one polarity.
pub(crate) trait Counter<V: Lanes>: Copy {
    /// The empty accumulator.
    fn new() -> Self;
    /// Adds the bits of `a & w` (one product bit per position) to the per-cycle counts.
    fn add(&mut self, a: V, w: V);
    /// The output count over all cycles.
    fn count(&self, fold: &CycleFold) -> u32;
}

/// Thermometer-coded saturating count for OR-n with n = N ≤ 4: plane k holds
/// `count ≥ k + 1`. Adding one product bit costs N + 1 word operations (1 for OR-1).
#[derive(Clone, Copy)]
pub(crate) struct Thermometer<V, const N: usize>([V; N]);

impl<V: Lanes, const N: usize> Counter<V> for Thermometer<V, N> {
    #[inline(always)]
    fn new() -> Self {
        Thermometer([V::zero(); N])
    }

    #[inline(always)]
    fn add(&mut self, a: V, w: V) {
        let t = &mut self.0;
        if N == 1 {
            t[0] = t[0].or_and(a, w);
        } else {
            let x = a.and(w);
            for k in (1..N).rev() {
                t[k] = t[k].or_and(t[k - 1], x);
            }
            t[0] = t[0].or(x);
        }
    }

    #[inline(always)]
    fn count(&self, fold: &CycleFold) -> u32 {
        let (words, w) = fold.fold(by_lane(self.0), V::WORDS, |a, b| {
            std::array::from_fn(|k| {
                let mut r = a[k] | b[k];
                for j in 1..=k {
                    r |= a[j - 1] & b[k - j];
                }
                r
            })
        });
        let mask = fold.valid_mask();
        words[..w]
            .iter()
            .flat_map(|planes| planes.iter())
            .map(|p| (p & mask).count_ones())
            .sum()
    }
}

/// Binary bit-sliced count with a sticky overflow plane, for OR-n with 5 ≤ n ≤ 16:
/// planes `0..K-1` hold the count's bits (K − 1 bits hold n), plane K − 1 is set once a
/// count has overflowed them. `count` applies `min(·, n)` per cycle.
#[derive(Clone, Copy)]
pub(crate) struct Binary<V, const K: usize>([V; K]);

impl<V: Lanes, const K: usize> Counter<V> for Binary<V, K> {
    #[inline(always)]
    fn new() -> Self {
        Binary([V::zero(); K])
    }

    #[inline(always)]
    fn add(&mut self, a: V, w: V) {
        let p = &mut self.0;
        let mut carry = a.and(w);
        for plane in p.iter_mut().take(K - 1) {
            let sum = plane.xor(carry);
            carry = plane.and(carry);
            *plane = sum;
        }
        p[K - 1] = p[K - 1].or(carry);
    }

    #[inline(always)]
    fn count(&self, fold: &CycleFold) -> u32 {
        let (words, w) = fold.fold(by_lane(self.0), V::WORDS, |a, b| {
            let mut out = [0u64; K];
            let mut carry = 0u64;
            for k in 0..K - 1 {
                out[k] = a[k] ^ b[k] ^ carry;
                carry = (a[k] & b[k]) | (carry & (a[k] ^ b[k]));
            }
            out[K - 1] = a[K - 1] | b[K - 1] | carry;
            out
        });
        let mask = fold.valid_mask();
        let n = fold.n;
        let mut total = 0;
        for planes in &words[..w] {
            // Bit-sliced `value ≥ n`, most significant bit first.
            let (mut gt, mut eq) = (0u64, u64::MAX);
            for k in (0..K - 1).rev() {
                if (n >> k) & 1 == 1 {
                    eq &= planes[k];
                } else {
                    gt |= eq & planes[k];
                    eq &= !planes[k];
                }
            }
            let saturated = (planes[K - 1] | gt | eq) & mask;
            total += n * saturated.count_ones();
            for (k, plane) in planes[..K - 1].iter().enumerate() {
                total += (plane & !saturated & mask).count_ones() << k;
            }
        }
        total
    }
}

/// Exact accumulation: a running popcount per lane, no saturation.
#[derive(Clone, Copy)]
pub(crate) struct Popcount<V>(V);

impl<V: Lanes> Counter<V> for Popcount<V> {
    #[inline(always)]
    fn new() -> Self {
        Popcount(V::zero())
    }

    #[inline(always)]
    fn add(&mut self, a: V, w: V) {
        self.0 = self.0.add_popcount_and(a, w);
    }

    #[inline(always)]
    fn count(&self, _fold: &CycleFold) -> u32 {
        self.0.to_array().iter().sum::<u64>() as u32
    }
}
