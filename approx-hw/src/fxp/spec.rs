//! The `fxp` hardware spec.

use std::fmt;

use crate::spec::{KeyDoc, KeyValues, KindDoc, SpecError};

/// The documentation of the `fxp` kind and its keys.
pub const FXP_KIND: KindDoc = KindDoc {
    kind: "fxp",
    summary: "saturating fixed point (REX-SC's baseline): round-to-even operands, saturating rounding accumulator",
    keys: &[
        KeyDoc {
            key: "bits",
            default: "5",
            allowed: "an integer from 1 to 15",
            summary: "operand fraction bits p: values on the grid 1/2^p, magnitudes up to (2^p − 1)/2^p",
        },
        KeyDoc {
            key: "acc_bits",
            default: "24",
            allowed: "an integer from 1 to 30",
            summary: "accumulator width: sums saturate near 2^max(2p, acc_bits)",
        },
    ],
};

/// A validated `fxp` hardware spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FxpSpec {
    /// Operand fraction bits p (1..=15).
    pub bits: u8,
    /// Accumulator width in bits (1..=30).
    pub acc_bits: u8,
}

impl Default for FxpSpec {
    fn default() -> Self {
        Self {
            bits: 5,
            acc_bits: 24,
        }
    }
}

impl FxpSpec {
    /// Parses the `fxp` keys.
    pub fn from_keys(keys: &mut KeyValues) -> Result<Self, SpecError> {
        let mut spec = FxpSpec::default();
        if let Some(b) = keys.take("bits", |v| v.parse().ok().filter(|b| (1..=15).contains(b)))? {
            spec.bits = b;
        }
        if let Some(b) = keys.take("acc_bits", |v| {
            v.parse().ok().filter(|b| (1..=30).contains(b))
        })? {
            spec.acc_bits = b;
        }
        Ok(spec)
    }

    /// `Q = 2^bits`, the operand scale.
    pub fn scale(&self) -> f32 {
        f32::from(1u16 << self.bits)
    }
}

impl fmt::Display for FxpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fxp:bits={},acc_bits={}", self.bits, self.acc_bits)
    }
}
