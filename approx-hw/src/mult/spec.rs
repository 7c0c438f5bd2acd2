//! The `mult` hardware spec: which multiplier, operand width and signedness.

use std::fmt;
use std::path::PathBuf;

use super::design::{Design, DESIGN_NAMES};
use crate::spec::{KeyDoc, KeyValues, KindDoc, SpecError};

/// The documentation of the `mult` kind and its keys.
pub const MULT_KIND: KindDoc = KindDoc {
    kind: "mult",
    summary: "approximate 8-bit multipliers: quantize to integers, every product through the design's table, exact i32 sums",
    keys: &[
        KeyDoc {
            key: "design",
            default: "exact",
            allowed: DESIGN_NAMES,
            summary: "built-in multiplier design (unsigned 8x8; signed operands through a sign-magnitude wrapper)",
        },
        KeyDoc {
            key: "lut",
            default: "none",
            allowed: "a path (without commas) to a 256x256 table: raw little-endian i32 or 16-bit, or text (.txt/.csv/.tsv)",
            summary: "user product table instead of `design`; row = activation byte, column = weight byte",
        },
        KeyDoc {
            key: "bits",
            default: "8",
            allowed: "an integer from 2 to 8",
            summary: "operand width in bits (signed: codes ±(2^(bits−1)−1); unsigned: 0..2^bits−1)",
        },
        KeyDoc {
            key: "signed",
            default: "true",
            allowed: "`true` or `false`",
            summary: "signed operands (two's-complement table index) or unsigned activations with sign-magnitude weights",
        },
    ],
};

/// Where a layer's products come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Multiplier {
    /// A built-in design.
    Design(Design),
    /// A 256x256 table file (formats in [`super::table`]).
    Lut(PathBuf),
}

/// A validated `mult` hardware spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultSpec {
    /// The multiplier.
    pub multiplier: Multiplier,
    /// Operand width in bits, 2..=8.
    pub bits: u8,
    /// Signed operands (true) or unsigned activations (false).
    pub signed: bool,
}

impl Default for MultSpec {
    fn default() -> Self {
        Self {
            multiplier: Multiplier::Design(Design::Exact),
            bits: 8,
            signed: true,
        }
    }
}

impl MultSpec {
    /// Parses the `mult` keys.
    pub fn from_keys(keys: &mut KeyValues) -> Result<Self, SpecError> {
        let mut spec = MultSpec::default();
        if keys.contains("design") && keys.contains("lut") {
            return Err(keys.conflict("lut", "cannot be given together with `design`"));
        }
        if let Some(design) = keys.take("design", Design::parse)? {
            spec.multiplier = Multiplier::Design(design);
        }
        if let Some(path) = keys.take("lut", |v| (!v.is_empty()).then(|| PathBuf::from(v)))? {
            spec.multiplier = Multiplier::Lut(path);
        }
        if let Some(bits) = keys.take("bits", |v| v.parse().ok().filter(|b| (2..=8).contains(b)))? {
            spec.bits = bits;
        }
        if let Some(signed) = keys.take("signed", |v| v.parse().ok())? {
            spec.signed = signed;
        }
        Ok(spec)
    }

    /// The largest activation code: `2^(bits−1) − 1` signed, `2^bits − 1` unsigned.
    pub fn act_max(&self) -> i32 {
        if self.signed {
            (1 << (self.bits - 1)) - 1
        } else {
            (1 << self.bits) - 1
        }
    }

    /// The largest weight code magnitude (the same as [`Self::act_max`]: weights are
    /// signed either way, in two's complement or sign-magnitude).
    pub fn weight_max(&self) -> i32 {
        self.act_max()
    }
}

impl fmt::Display for MultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.multiplier {
            Multiplier::Design(d) => write!(f, "mult:design={d}")?,
            Multiplier::Lut(path) => write!(f, "mult:lut={}", path.display())?,
        }
        write!(f, ",bits={},signed={}", self.bits, self.signed)
    }
}
