//! Per-cycle accumulators of AND outputs, bit-sliced over 512 stream bits at a time.
//!
//! Each bit position of a vector accumulator stands for one clock cycle of one slice of
//! the receptive field. Positions that stand for the same cycle (other lanes, other
//! sub-words) hold partial counts of disjoint parts of the field; [`Counter::count`]
//! merges them with a saturating add and returns `Σ_t min(c(t), n)` over the B cycles
//! (or the plain sum for exact accumulation). Saturating early is exact because counts
//! only grow: `min(a + b, n) = min(min(a, n) + min(b, n), n)`.

use super::lanes::{Bits, Lanes};

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

    /// The output count of one accumulator's `planes`: merges the partial counts
    /// that stand for the same cycles with `M`'s saturating add, first the vector's
    /// words in registers (word l holds stream word l mod W, so word l takes in word
    /// `l ^ d` for d from half the vector down to W), then, for B < 64, the sub-words of
    /// B bits; then sums `M::cycles` over the stream words.
    #[inline(always)]
    fn count<V: Lanes, M: PlaneMerge<K>, const K: usize>(&self, mut planes: [V; K]) -> u32 {
        let swap_merge =
            |planes: [V; K], distance| M::merge(planes, planes.map(|p| p.swap_words(distance)));
        if self.words == 1 {
            // B ≤ 64, the common case: a fold of known depth, all in registers.
            let mut distance = V::WORDS / 2;
            while distance > 0 {
                planes = swap_merge(planes, distance);
                distance /= 2;
            }
            let mut word = planes.map(|p| p.to_array()[0]);
            let mut width = 64;
            while width > self.len {
                width /= 2;
                let lo_mask = (1u64 << width) - 1;
                word = M::merge(word.map(|p| p & lo_mask), word.map(|p| p >> width));
            }
            M::cycles(word, self.valid_mask(), self.n)
        } else {
            let mut distance = V::WORDS / 2;
            while distance >= self.words {
                planes = swap_merge(planes, distance);
                distance /= 2;
            }
            let arrays = planes.map(V::to_array);
            (0..self.words)
                .map(|l| M::cycles(std::array::from_fn(|k| arrays[k][l]), u64::MAX, self.n))
                .sum()
        }
    }
}

/// How a counter's planes combine: partial counts of the same cycles, and a word's
/// total over its cycles.
trait PlaneMerge<const K: usize> {
    /// The saturating add of two partial counts, plane by plane; on words or on
    /// vectors of them.
    fn merge<B: Bits>(a: [B; K], b: [B; K]) -> [B; K];
    /// `Σ min(count, n)` over the cycles of one word's `planes` that `mask` keeps.
    fn cycles(planes: [u64; K], mask: u64, n: u32) -> u32;
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
        fold.count::<V, Self, N>(self.0)
    }
}

impl<V, const N: usize> PlaneMerge<N> for Thermometer<V, N> {
    /// `count ≥ k + 1` iff one side has `≥ k + 1`, or one `≥ j` and the other `≥ k + 1 − j`.
    #[inline(always)]
    fn merge<B: Bits>(a: [B; N], b: [B; N]) -> [B; N] {
        std::array::from_fn(|k| {
            let mut r = a[k].or(b[k]);
            for j in 1..=k {
                r = r.or(a[j - 1].and(b[k - j]));
            }
            r
        })
    }

    /// Each plane counts its cycles once: `min(count, N) = Σ_k [count ≥ k + 1]`.
    #[inline(always)]
    fn cycles(planes: [u64; N], mask: u64, _n: u32) -> u32 {
        planes.iter().map(|p| (p & mask).count_ones()).sum()
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
        fold.count::<V, Self, K>(self.0)
    }
}

impl<V, const K: usize> PlaneMerge<K> for Binary<V, K> {
    /// A ripple-carry add of the K − 1 count bits; the sticky plane takes the carry out.
    #[inline(always)]
    fn merge<B: Bits>(a: [B; K], b: [B; K]) -> [B; K] {
        let mut out = a;
        out[0] = a[0].xor(b[0]);
        let mut carry = a[0].and(b[0]);
        for k in 1..K - 1 {
            let x = a[k].xor(b[k]);
            out[k] = x.xor(carry);
            carry = a[k].and(b[k]).or(carry.and(x));
        }
        out[K - 1] = a[K - 1].or(b[K - 1]).or(carry);
        out
    }

    #[inline(always)]
    fn cycles(planes: [u64; K], mask: u64, n: u32) -> u32 {
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
        let mut total = n * saturated.count_ones();
        for (k, plane) in planes[..K - 1].iter().enumerate() {
            total += (plane & !saturated & mask).count_ones() << k;
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
