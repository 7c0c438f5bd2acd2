//! The `analog` hardware spec, with aihwkit's names.

use std::fmt;

use crate::spec::{KeyDoc, KeyValues, KindDoc, SpecError};

/// The documentation of the `analog` kind and its keys.
pub const ANALOG_KIND: KindDoc = KindDoc {
    kind: "analog",
    summary: "analog crossbar (aihwkit conventions): abs-max noise management, DAC, noisy tiles, ADC, digital sum",
    keys: &[
        KeyDoc {
            key: "inp_bits",
            default: "7",
            allowed: "an integer from 2 to 22",
            summary: "DAC resolution: 2^bits − 1 input levels over [−1, 1] after noise management",
        },
        KeyDoc {
            key: "out_bits",
            default: "9",
            allowed: "an integer from 2 to 22",
            summary: "ADC resolution: 2^bits − 1 output levels over [−out_bound, out_bound]",
        },
        KeyDoc {
            key: "out_bound",
            default: "10",
            allowed: "a finite number > 0",
            summary: "ADC clipping level, in normalised output units (inputs and weights in [−1, 1])",
        },
        KeyDoc {
            key: "out_noise",
            default: "0.04",
            allowed: "a finite number >= 0",
            summary: "std of the additive Gaussian output noise per tile output, normalised units",
        },
        KeyDoc {
            key: "w_noise",
            default: "0.0175",
            allowed: "a finite number >= 0",
            summary: "std of the Gaussian weight read noise, relative to the tile's largest |w|",
        },
        KeyDoc {
            key: "tile_rows",
            default: "512",
            allowed: "an integer from 1 to 65536",
            summary: "crossbar rows per tile: fan-in rows mapped to one tile (partial sums added digitally)",
        },
        KeyDoc {
            key: "seed",
            default: "0",
            allowed: "an unsigned 64-bit integer",
            summary: "seed of the noise generator",
        },
    ],
};

/// A validated `analog` hardware spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnalogSpec {
    /// DAC bits.
    pub inp_bits: u8,
    /// ADC bits.
    pub out_bits: u8,
    /// ADC clipping level (normalised units).
    pub out_bound: f32,
    /// Output noise std (normalised units).
    pub out_noise: f32,
    /// Weight noise std, relative to the tile's max |w|.
    pub w_noise: f32,
    /// Fan-in rows per tile.
    pub tile_rows: usize,
    /// Noise seed.
    pub seed: u64,
}

impl Default for AnalogSpec {
    fn default() -> Self {
        Self {
            inp_bits: 7,
            out_bits: 9,
            out_bound: 10.0,
            out_noise: 0.04,
            w_noise: 0.0175,
            tile_rows: 512,
            seed: 0,
        }
    }
}

impl AnalogSpec {
    /// Parses the `analog` keys.
    pub fn from_keys(keys: &mut KeyValues) -> Result<Self, SpecError> {
        let mut spec = AnalogSpec::default();
        let bits = |v: &str| v.parse::<u8>().ok().filter(|b| (2..=22).contains(b));
        let number = |min_exclusive: bool| {
            move |v: &str| {
                v.parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite() && if min_exclusive { *x > 0.0 } else { *x >= 0.0 })
            }
        };
        if let Some(b) = keys.take("inp_bits", bits)? {
            spec.inp_bits = b;
        }
        if let Some(b) = keys.take("out_bits", bits)? {
            spec.out_bits = b;
        }
        if let Some(x) = keys.take("out_bound", number(true))? {
            spec.out_bound = x;
        }
        if let Some(x) = keys.take("out_noise", number(false))? {
            spec.out_noise = x;
        }
        if let Some(x) = keys.take("w_noise", number(false))? {
            spec.w_noise = x;
        }
        if let Some(r) = keys.take("tile_rows", |v| {
            v.parse::<usize>().ok().filter(|r| (1..=65536).contains(r))
        })? {
            spec.tile_rows = r;
        }
        if let Some(s) = keys.take("seed", |v| v.parse().ok())? {
            spec.seed = s;
        }
        Ok(spec)
    }

    /// DAC step in normalised input units.
    pub fn inp_step(&self) -> f32 {
        2.0 / ((1u32 << self.inp_bits) - 2) as f32
    }

    /// ADC step in normalised output units.
    pub fn out_step(&self) -> f32 {
        2.0 * self.out_bound / ((1u32 << self.out_bits) - 2) as f32
    }
}

impl fmt::Display for AnalogSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "analog:inp_bits={},out_bits={},out_bound={},out_noise={},w_noise={},tile_rows={},seed={}",
            self.inp_bits,
            self.out_bits,
            self.out_bound,
            self.out_noise,
            self.w_noise,
            self.tile_rows,
            self.seed
        )
    }
}
