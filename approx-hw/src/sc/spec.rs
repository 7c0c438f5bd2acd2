//! The `sc` hardware spec: stream length, accumulation and stream generator.

use std::fmt;

use crate::spec::{KeyDoc, KeyValues, KindDoc, SpecError};

/// The documentation of the `sc` kind and its keys.
pub const SC_KIND: KindDoc = KindDoc {
    kind: "sc",
    summary: "stochastic computing: split-unipolar bit streams, AND multiply, per-cycle OR-n accumulation",
    keys: &[
        KeyDoc {
            key: "len",
            default: "64",
            allowed: "a power of two from 8 to 256",
            summary: "stream length B in cycles (bits per stream)",
        },
        KeyDoc {
            key: "acc",
            default: "or2",
            allowed: "`or1` .. `or16` or `exact`",
            summary: "accumulation: per-cycle count of the AND outputs saturated at n (OR-n), or an exact popcount",
        },
        KeyDoc {
            key: "gen",
            default: "lfsr-xnor",
            allowed: "`lfsr-xnor`, `lfsr-xor` or `random`",
            summary: "stream generator: REX-SC's XNOR LFSR (CUDA training kernel), XOR LFSR (CPU kernel), or seeded true random",
        },
        KeyDoc {
            key: "seed",
            default: "0",
            allowed: "an unsigned 64-bit integer (only with gen=random)",
            summary: "seed of the random generator",
        },
    ],
};

/// How the AND outputs of one dot product are added up in each clock cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accumulation {
    /// OR-n: the per-cycle count of ones is saturated at `n` (1..=16); OR-1 is one wide
    /// OR gate.
    Or(u8),
    /// An exact popcount of every cycle (SC multiply, binary add; no saturation).
    Exact,
}

/// How a value becomes a bit stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generator {
    /// Comparator against an XNOR-feedback Fibonacci LFSR, seeds from 0 (REX-SC's CUDA
    /// training kernel).
    LfsrXnor,
    /// Comparator against an XOR-feedback Fibonacci LFSR, seeds from 1 (REX-SC's CPU
    /// kernel).
    LfsrXor,
    /// Comparator against a fresh uniform threshold per element and cycle, drawn from
    /// a counter-based generator keyed by `seed`.
    Random {
        /// Seed of the generator; the same seed gives the same bits.
        seed: u64,
    },
}

/// A validated `sc` hardware spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScSpec {
    /// log2 of the stream length: L in 3..=8, B = 2^L cycles.
    pub log2_len: u32,
    /// Per-cycle accumulation.
    pub acc: Accumulation,
    /// Stream generator.
    pub gen: Generator,
}

impl Default for ScSpec {
    fn default() -> Self {
        Self {
            log2_len: 6,
            acc: Accumulation::Or(2),
            gen: Generator::LfsrXnor,
        }
    }
}

impl ScSpec {
    /// Stream length B in cycles.
    pub fn stream_len(&self) -> usize {
        1 << self.log2_len
    }

    /// Parses the `sc` keys.
    pub fn from_keys(keys: &mut KeyValues) -> Result<Self, SpecError> {
        let mut spec = ScSpec::default();
        if let Some(l) = keys.take("len", |v| {
            let len: u32 = v.parse().ok()?;
            (len.is_power_of_two() && (8..=256).contains(&len)).then(|| len.trailing_zeros())
        })? {
            spec.log2_len = l;
        }
        if let Some(acc) = keys.take("acc", |v| match v {
            "exact" => Some(Accumulation::Exact),
            _ => {
                let n: u8 = v.strip_prefix("or")?.parse().ok()?;
                (1..=16).contains(&n).then_some(Accumulation::Or(n))
            }
        })? {
            spec.acc = acc;
        }
        let gen = keys.take("gen", |v| match v {
            "lfsr-xnor" => Some(Generator::LfsrXnor),
            "lfsr-xor" => Some(Generator::LfsrXor),
            "random" => Some(Generator::Random { seed: 0 }),
            _ => None,
        })?;
        if let Some(gen) = gen {
            spec.gen = gen;
        }
        if keys.contains("seed") && !matches!(spec.gen, Generator::Random { .. }) {
            return Err(keys.conflict("seed", "applies only to gen=random"));
        }
        if let Some(seed) = keys.take("seed", |v| v.parse::<u64>().ok())? {
            spec.gen = Generator::Random { seed };
        }
        Ok(spec)
    }
}

impl fmt::Display for Accumulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accumulation::Or(n) => write!(f, "or{n}"),
            Accumulation::Exact => f.write_str("exact"),
        }
    }
}

impl fmt::Display for ScSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sc:len={},acc={},gen=", self.stream_len(), self.acc)?;
        match self.gen {
            Generator::LfsrXnor => f.write_str("lfsr-xnor"),
            Generator::LfsrXor => f.write_str("lfsr-xor"),
            Generator::Random { seed } => write!(f, "random,seed={seed}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HwSpec;
    use proptest::prelude::*;

    fn sc(s: &str) -> ScSpec {
        match s.parse::<HwSpec>().unwrap() {
            HwSpec::Sc(sc) => sc,
            other => panic!("not sc: {other}"),
        }
    }

    #[test]
    fn defaults_and_canonical_form() {
        assert_eq!(sc("sc"), ScSpec::default());
        assert_eq!(sc("sc").to_string(), "sc:len=64,acc=or2,gen=lfsr-xnor");
        let s = sc("sc:acc=exact, len=256 ,gen=random,seed=7");
        assert_eq!(s.to_string(), "sc:len=256,acc=exact,gen=random,seed=7");
        assert_eq!(sc("sc:len=32,acc=or16").acc, Accumulation::Or(16));
    }

    #[test]
    fn errors_name_key_and_allowed_values() {
        let cases = [
            ("sc:len=48", "`len`", "power of two"),
            ("sc:len=512", "`512`", "8 to 256"),
            ("sc:acc=or17", "`acc`", "or16"),
            ("sc:acc=or0", "`or0`", "exact"),
            ("sc:gen=mux", "`gen`", "lfsr-xnor"),
            ("sc:seed=3", "`seed`", "gen=random"),
            ("sc:gen=random,seed=-1", "`seed`", "unsigned"),
            ("sc:width=3", "`width`", "`len`, `acc`, `gen`, `seed`"),
            ("sc:len=8,len=16", "`len`", "twice"),
            ("sc:len", "`len`", "key=value"),
        ];
        for (spec, what, allowed) in cases {
            let err = spec.parse::<HwSpec>().unwrap_err().to_string();
            assert!(err.contains(what) && err.contains(allowed), "{spec}: {err}");
        }
    }

    fn any_spec() -> impl Strategy<Value = ScSpec> {
        (
            3u32..=8,
            prop_oneof![
                (1u8..=16).prop_map(Accumulation::Or),
                Just(Accumulation::Exact)
            ],
            prop_oneof![
                Just(Generator::LfsrXnor),
                Just(Generator::LfsrXor),
                any::<u64>().prop_map(|seed| Generator::Random { seed })
            ],
        )
            .prop_map(|(log2_len, acc, gen)| ScSpec { log2_len, acc, gen })
    }

    proptest! {
        #[test]
        fn display_round_trips(spec in any_spec()) {
            let text = spec.to_string();
            prop_assert_eq!(text.parse::<HwSpec>().unwrap(), HwSpec::Sc(spec));
        }

        #[test]
        fn parser_never_panics(text in "[a-z0-9:=,\\- ]{0,40}") {
            let _ = text.parse::<HwSpec>();
        }
    }
}
