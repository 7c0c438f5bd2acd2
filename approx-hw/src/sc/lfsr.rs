//! Fibonacci LFSRs of REX-SC (spec §2.1): shift left, feedback into bit 0.
//!
//! `next(s) = 2·(s mod 2^(L−1)) + fb(s)` with the XOR feedback taps below, or its
//! complement for the XNOR variant. All twelve registers (L = 3..=8, both variants) are
//! maximal length: period 2^L − 1.

/// Feedback polarity of an LFSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feedback {
    /// XOR of the taps; lock-up state 0, seeds 1..=2^L−1 (REX-SC CPU kernel).
    Xor,
    /// XNOR of the taps; lock-up state 2^L−1, seeds 0..=2^L−2 (REX-SC CUDA kernel).
    Xnor,
}

/// An L-bit Fibonacci LFSR with REX-SC's taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lfsr {
    width: u32,
    taps: u32,
    feedback: Feedback,
}

impl Lfsr {
    /// The LFSR of width `width` bits (3..=8). Returns `None` for other widths.
    pub fn new(width: u32, feedback: Feedback) -> Option<Self> {
        let taps = match width {
            3 => 0b110,
            4 => 0b1100,
            5 => 0b1_0100,
            6 => 0b11_0000,
            7 => 0b110_0000,
            8 => 0b1011_1000,
            _ => return None,
        };
        Some(Self {
            width,
            taps,
            feedback,
        })
    }

    /// Register width L in bits.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Period 2^L − 1 (number of distinct states visited).
    pub fn period(&self) -> u32 {
        (1 << self.width) - 1
    }

    /// The state after `state`.
    pub fn next(&self, state: u32) -> u32 {
        let xor = (state & self.taps).count_ones() & 1;
        let fb = match self.feedback {
            Feedback::Xor => xor,
            Feedback::Xnor => xor ^ 1,
        };
        ((state << 1) & self.period()) | fb
    }

    /// The `count` states that follow `seed` (the first element is `next(seed)`).
    pub fn states(&self, seed: u32, count: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(count);
        let mut s = seed;
        for _ in 0..count {
            s = self.next(s);
            out.push(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First states from spec §2.1 (XOR from seed 1, XNOR from seed 0).
    const GOLDEN: [(u32, &[u32], &[u32]); 6] = [
        (3, &[2, 5, 3, 7, 6, 4, 1], &[1, 3, 6, 5, 2, 4, 0]),
        (
            4,
            &[2, 4, 9, 3, 6, 13, 10, 5, 11, 7],
            &[1, 3, 7, 14, 13, 11, 6, 12, 9, 2],
        ),
        (
            5,
            &[2, 4, 9, 18, 5, 11, 22, 12, 25, 19],
            &[1, 3, 7, 14, 28, 25, 18, 4, 8, 17],
        ),
        (
            6,
            &[2, 4, 8, 16, 33, 3, 6, 12, 24, 49],
            &[1, 3, 7, 15, 31, 62, 61, 59, 55, 47],
        ),
        (
            7,
            &[2, 4, 8, 16, 32, 65, 3, 6, 12, 24],
            &[1, 3, 7, 15, 31, 63, 126, 125, 123, 119],
        ),
        (
            8,
            &[2, 4, 8, 17, 35, 71, 142, 28, 56, 113],
            &[1, 3, 7, 15, 30, 61, 122, 244, 232, 208],
        ),
    ];

    #[test]
    fn golden_sequences() {
        for (l, xor, xnor) in GOLDEN {
            let x = Lfsr::new(l, Feedback::Xor).unwrap();
            assert_eq!(x.states(1, xor.len()), xor, "XOR L={l}");
            let n = Lfsr::new(l, Feedback::Xnor).unwrap();
            assert_eq!(n.states(0, xnor.len()), xnor, "XNOR L={l}");
        }
    }

    #[test]
    fn maximal_length_and_complement_identity() {
        for l in 3..=8 {
            for fb in [Feedback::Xor, Feedback::Xnor] {
                let r = Lfsr::new(l, fb).unwrap();
                let start = if fb == Feedback::Xor { 1 } else { 0 };
                let seq = r.states(start, r.period() as usize);
                let mut sorted = seq.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), r.period() as usize, "L={l} {fb:?}");
                assert_eq!(
                    *seq.last().unwrap(),
                    start,
                    "L={l} {fb:?} returns to its seed"
                );
            }
            // XNOR from seed k is the complement of XOR from seed (2^L − 1) − k.
            let (x, n) = (
                Lfsr::new(l, Feedback::Xor).unwrap(),
                Lfsr::new(l, Feedback::Xnor).unwrap(),
            );
            let p = x.period();
            for k in 0..p {
                let a = n.states(k, 20);
                let b: Vec<u32> = x.states(p - k, 20).iter().map(|s| p - s).collect();
                assert_eq!(a, b, "L={l} seed {k}");
            }
        }
        assert!(Lfsr::new(2, Feedback::Xor).is_none());
        assert!(Lfsr::new(9, Feedback::Xnor).is_none());
    }

    #[test]
    fn rexsc_single_stream_states() {
        // Spec §10.1: L=5 XOR from seed (13 mod 31)+1 = 14, XNOR from seed 13.
        let x = Lfsr::new(5, Feedback::Xor).unwrap();
        assert_eq!(x.states(14, 10), [29, 26, 21, 10, 20, 8, 16, 1, 2, 4]);
        let n = Lfsr::new(5, Feedback::Xnor).unwrap();
        assert_eq!(n.states(13, 10), [26, 20, 9, 19, 6, 12, 24, 16, 0, 1]);
    }
}
