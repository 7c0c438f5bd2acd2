//! Stream generation (spec §2.3, §2.4): comparator SNGs against LFSR states or random
//! thresholds, packed along time into u64 words (bit t of a stream = cycle t).
//!
//! Bit t of the stream of integer value `v` is `v > r_t`, where `r_t` is the
//! generator's state at cycle t (the LFSR is stepped *before* the comparison). LFSR
//! streams are read from a per-seed table built once per (L, feedback) and cached, so
//! generating a stream is a copy.
//!
//! Seeds (REX-SC, shared by the XOR and XNOR variants; `P = 2^L − 1`, offset 1 for
//! XOR and 0 for XNOR):
//! - conv input element (c, y, x) of the **padded** input: `(c·Hp·Wp + y·Wp + x) mod P + off`,
//!   the same for every image of the batch;
//! - conv weight element (c, i, j): `(13 + c·KH·KW + i·KW + j) mod P + off`, the same
//!   for every filter and for both polarities;
//! - linear layers are 1x1 convs on 1x1 images, which gives REX-SC's linear seeds
//!   `c mod P + off` and `(13 + c) mod P + off`.

use std::sync::OnceLock;

use super::lfsr::{Feedback, Lfsr};
use super::spec::{Generator, ScSpec};
use crate::rng::mix;

/// The first LFSR seed index of weights (REX-SC's `POS_SEED = NEG_SEED = 13`).
pub const WEIGHT_SEED_BASE: usize = 13;

/// How streams of one stream length are packed into u64 words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLayout {
    /// Stream length B in cycles.
    pub len: usize,
}

impl StreamLayout {
    /// Words per stream (B/64 for B ≥ 64; 1 otherwise, only the low B bits used).
    pub fn words(&self) -> usize {
        self.len.div_ceil(64)
    }

    /// Streams sharing one word (64/B for B < 64, otherwise 1). Channel `c` of a pixel
    /// sits in word `c / per_word` at bit offset `(c % per_word)·B`.
    pub fn per_word(&self) -> usize {
        (64 / self.len).max(1)
    }

    /// Words holding the streams of `channels` channels of one pixel.
    pub fn pixel_words(&self, channels: usize) -> usize {
        if self.len >= 64 {
            channels * self.words()
        } else {
            channels.div_ceil(self.per_word())
        }
    }

    /// ORs the stream `stream` (B bits in `words()` words) of channel `c` into the
    /// pixel's words `pixel`.
    #[inline]
    pub fn place(&self, pixel: &mut [u64], c: usize, stream: &[u64]) {
        if self.len >= 64 {
            let w = self.words();
            pixel[c * w..(c + 1) * w].copy_from_slice(stream);
        } else {
            let pw = self.per_word();
            pixel[c / pw] |= stream[0] << ((c % pw) * self.len);
        }
    }
}

/// Streams of every value for every seed of one LFSR, `len = 2^L` cycles each.
#[derive(Debug)]
pub struct LfsrTable {
    layout: StreamLayout,
    /// Indexed `[seed][value][word]`, seeds 0..2^L (the lock-up seed's row is unused).
    words: Vec<u64>,
}

impl LfsrTable {
    fn build(lfsr: Lfsr) -> Self {
        let len = 1usize << lfsr.width();
        let layout = StreamLayout { len };
        let w = layout.words();
        let mut words = vec![0u64; len * len * w];
        for seed in 0..len {
            let states = lfsr.states(seed as u32, len);
            let rows = &mut words[seed * len * w..(seed + 1) * len * w];
            // stream(v) = stream(v − 1) ∪ {t : state_t = v − 1}, as bit t is `v > state_t`.
            for v in 1..len {
                let (prev, cur) = rows.split_at_mut(v * w);
                let cur = &mut cur[..w];
                cur.copy_from_slice(&prev[(v - 1) * w..]);
                for (t, &s) in states.iter().enumerate() {
                    if s as usize == v - 1 {
                        cur[t / 64] |= 1 << (t % 64);
                    }
                }
            }
        }
        Self { layout, words }
    }

    /// The cached table of the LFSR of width `log2_len` (3..=8) and `feedback`.
    pub fn get(log2_len: u32, feedback: Feedback) -> &'static LfsrTable {
        static TABLES: [OnceLock<LfsrTable>; 12] = [const { OnceLock::new() }; 12];
        let slot = (log2_len as usize - 3) * 2 + usize::from(feedback == Feedback::Xnor);
        TABLES[slot].get_or_init(|| {
            let lfsr = Lfsr::new(log2_len, feedback)
                .unwrap_or_else(|| unreachable!("ScSpec guarantees 3 ≤ L ≤ 8, got {log2_len}"));
            LfsrTable::build(lfsr)
        })
    }

    /// The stream of integer value `v` (< B) from `seed` (< B).
    #[inline]
    pub fn stream(&self, seed: usize, v: usize) -> &[u64] {
        let w = self.layout.words();
        let at = (seed * self.layout.len + v) * w;
        &self.words[at..at + w]
    }
}

/// Which operand a stream belongs to; keeps the random generator's streams for inputs
/// and weights independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// Layer input (activation).
    Input,
    /// Layer weight.
    Weight,
}

/// A stream number generator of one [`ScSpec`].
#[derive(Debug, Clone, Copy)]
pub enum StreamGenerator {
    /// Comparator against an LFSR.
    Lfsr {
        /// The cached stream table.
        table: &'static LfsrTable,
        /// Seed offset: 1 for XOR, 0 for XNOR.
        offset: usize,
        /// LFSR period 2^L − 1.
        period: usize,
    },
    /// Comparator against counter-based random thresholds.
    Random {
        /// Stream length B.
        len: usize,
        /// Generator seed.
        seed: u64,
    },
}

/// The per-element key of the random generator.
#[inline]
fn random_key(seed: u64, operand: Operand, element: u64) -> u64 {
    mix(mix(seed ^ operand as u64) ^ element)
}

/// Threshold `k` (0..8) of a block of eight random bytes, masked to `len` (a power of two).
#[inline]
fn byte_threshold(bytes: u64, k: usize, len: usize) -> u32 {
    (bytes >> (8 * k)) as u32 & 0xFF & (len as u32 - 1)
}

impl StreamGenerator {
    /// The generator of `spec`.
    pub fn new(spec: &ScSpec) -> Self {
        match spec.gen {
            Generator::LfsrXnor | Generator::LfsrXor => {
                let feedback = if spec.gen == Generator::LfsrXor {
                    Feedback::Xor
                } else {
                    Feedback::Xnor
                };
                StreamGenerator::Lfsr {
                    table: LfsrTable::get(spec.log2_len, feedback),
                    offset: usize::from(feedback == Feedback::Xor),
                    period: spec.stream_len() - 1,
                }
            }
            Generator::Random { seed } => StreamGenerator::Random {
                len: spec.stream_len(),
                seed,
            },
        }
    }

    /// The random threshold (uniform in 0..B) of `element` of `operand` at `cycle`, for
    /// `gen=random`: byte `cycle mod 8` of `mix(key ^ cycle/8)` with
    /// `key = mix(mix(seed ^ operand) ^ element)`, masked to L bits. Public so that
    /// reference models can rebuild the same streams bit by bit.
    pub fn random_threshold(
        seed: u64,
        operand: Operand,
        element: u64,
        cycle: usize,
        len: usize,
    ) -> u32 {
        let bytes = mix(random_key(seed, operand, element) ^ (cycle / 8) as u64);
        byte_threshold(bytes, cycle % 8, len)
    }

    /// Writes the stream of integer value `v` into `out` (`StreamLayout::words()` words)
    /// and returns it. `seed_index` is the element's LFSR seed index before `mod P`;
    /// `element` is its flat index in its tensor (for `gen=random`).
    #[inline]
    pub fn stream<'a>(
        &'a self,
        v: u32,
        seed_index: usize,
        operand: Operand,
        element: u64,
        out: &'a mut [u64; 4],
    ) -> &'a [u64] {
        match *self {
            StreamGenerator::Lfsr {
                table,
                offset,
                period,
            } => table.stream(seed_index % period + offset, v as usize),
            StreamGenerator::Random { len, seed } => {
                let key = random_key(seed, operand, element);
                let words = len.div_ceil(64);
                out[..words].fill(0);
                for block in 0..len.div_ceil(8) {
                    let bytes = mix(key ^ block as u64);
                    for k in 0..8 {
                        let t = block * 8 + k;
                        out[t / 64] |= u64::from(v > byte_threshold(bytes, k, len)) << (t % 64);
                    }
                }
                &out[..words]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ones(gen: &StreamGenerator, v: u32, seed_index: usize) -> u32 {
        let mut buf = [0; 4];
        gen.stream(v, seed_index, Operand::Input, 0, &mut buf)
            .iter()
            .map(|w| w.count_ones())
            .sum()
    }

    #[test]
    fn single_stream_counts_follow_the_spec() {
        // §2.4: XNOR gives v + [v > s1], XOR gives v − 1 + [v > s1] for v ≥ 1,
        // s1 = first state after the seed.
        for log2_len in 3..=8 {
            for gen in [Generator::LfsrXnor, Generator::LfsrXor] {
                let spec = ScSpec {
                    log2_len,
                    gen,
                    ..ScSpec::default()
                };
                let g = StreamGenerator::new(&spec);
                let feedback = if gen == Generator::LfsrXor {
                    Feedback::Xor
                } else {
                    Feedback::Xnor
                };
                let lfsr = Lfsr::new(log2_len, feedback).unwrap();
                let off = usize::from(gen == Generator::LfsrXor);
                for seed_index in [0usize, 13, 40, 1000] {
                    let seed = seed_index % lfsr.period() as usize + off;
                    let s1 = lfsr.next(seed as u32);
                    for v in 0..spec.stream_len() as u32 {
                        let expect = match gen {
                            _ if v == 0 => 0,
                            Generator::LfsrXnor => v + u32::from(v > s1),
                            _ => v - 1 + u32::from(v > s1),
                        };
                        assert_eq!(
                            ones(&g, v, seed_index),
                            expect,
                            "L={log2_len} {gen:?} seed {seed} v {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rexsc_golden_stream_l5() {
        // §10.1: L=5, weight seed 13 (XNOR) / 14 (XOR); bits are `v > state_t`.
        let xnor = StreamGenerator::new(&ScSpec {
            log2_len: 5,
            ..ScSpec::default()
        });
        let mut buf = [0; 4];
        let bits = xnor.stream(10, WEIGHT_SEED_BASE, Operand::Weight, 0, &mut buf)[0];
        let states = [26u64, 20, 9, 19, 6, 12, 24, 16, 0, 1];
        for (t, s) in states.iter().enumerate() {
            assert_eq!((bits >> t) & 1, u64::from(10 > *s), "cycle {t}");
        }
        let xor = StreamGenerator::new(&ScSpec {
            log2_len: 5,
            gen: Generator::LfsrXor,
            ..ScSpec::default()
        });
        let bits = xor.stream(22, WEIGHT_SEED_BASE, Operand::Weight, 0, &mut buf)[0];
        let states = [29u64, 26, 21, 10, 20, 8, 16, 1, 2, 4];
        for (t, s) in states.iter().enumerate() {
            assert_eq!((bits >> t) & 1, u64::from(22 > *s), "cycle {t}");
        }
    }

    #[test]
    fn random_streams_are_seeded_and_unbiased() {
        let spec = |seed| ScSpec {
            log2_len: 8,
            gen: Generator::Random { seed },
            ..ScSpec::default()
        };
        let (a, b) = (
            StreamGenerator::new(&spec(1)),
            StreamGenerator::new(&spec(2)),
        );
        let (mut x, mut y) = ([0; 4], [0; 4]);
        assert_eq!(
            a.stream(100, 0, Operand::Input, 5, &mut x).to_vec(),
            a.stream(100, 0, Operand::Input, 5, &mut y).to_vec()
        );
        assert_ne!(
            a.stream(100, 0, Operand::Input, 5, &mut x).to_vec(),
            b.stream(100, 0, Operand::Input, 5, &mut y).to_vec()
        );
        assert_ne!(
            a.stream(100, 0, Operand::Input, 5, &mut x).to_vec(),
            a.stream(100, 0, Operand::Weight, 5, &mut y).to_vec()
        );
        // Mean ones over many elements ≈ v.
        let total: u32 = (0..4000u64)
            .map(|e| {
                a.stream(64, 0, Operand::Input, e, &mut x)
                    .iter()
                    .map(|w| w.count_ones())
                    .sum::<u32>()
            })
            .sum();
        let mean = total as f64 / 4000.0;
        assert!((mean - 64.0).abs() < 0.5, "mean ones {mean}");
        let bits = a.stream(100, 0, Operand::Input, 5, &mut x).to_vec();
        for t in 0..256 {
            let th = StreamGenerator::random_threshold(1, Operand::Input, 5, t, 256);
            assert_eq!(
                (bits[t / 64] >> (t % 64)) & 1,
                u64::from(100 > th),
                "cycle {t}"
            );
        }
    }
}
