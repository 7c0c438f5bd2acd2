//! The hardware spec string: `KIND[:key=value[,key=value...]]`.
//!
//! A spec names one hardware kind and its settings. Parsing validates every key and
//! value; `Display` prints the canonical form (every key, in a fixed order), and
//! parsing the canonical form gives back the same spec. A new hardware kind is one
//! new variant of [`HwSpec`], one [`KindDoc`] in [`KINDS`] and one match arm in
//! [`HwSpec::from_str`].

mod keys;

use std::fmt;
use std::str::FromStr;

pub use keys::{KeyDoc, KeyValues, KindDoc};

use crate::analog::AnalogSpec;
use crate::fxp::FxpSpec;
use crate::mult::MultSpec;
use crate::sc::ScSpec;

/// What went wrong while parsing a hardware spec string. Every variant names the
/// offending kind, key or value, and what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec string was empty.
    #[error("empty hardware spec: expected KIND[:key=value,...] with KIND one of {allowed}")]
    Empty {
        /// The kinds that exist.
        allowed: String,
    },
    /// The part before `:` is not a known kind.
    #[error("unknown hardware kind `{kind}`: expected one of {allowed}")]
    UnknownKind {
        /// What the user wrote.
        kind: String,
        /// The kinds that exist.
        allowed: String,
    },
    /// An item between commas is not of the form `key=value`.
    #[error("malformed item `{item}` in `{kind}` spec: expected key=value")]
    Malformed {
        /// The hardware kind being parsed.
        kind: String,
        /// The item as written.
        item: String,
    },
    /// The same key appears twice.
    #[error("key `{key}` given twice in `{kind}` spec")]
    DuplicateKey {
        /// The hardware kind being parsed.
        kind: String,
        /// The repeated key.
        key: String,
    },
    /// A key that this kind does not have.
    #[error("unknown key `{key}` for `{kind}`: allowed keys are {allowed}")]
    UnknownKey {
        /// The hardware kind being parsed.
        kind: String,
        /// The key as written.
        key: String,
        /// The keys this kind takes (or "none").
        allowed: String,
    },
    /// A value that does not parse or is out of range.
    #[error("bad value `{value}` for key `{key}` of `{kind}`: expected {allowed}")]
    BadValue {
        /// The hardware kind being parsed.
        kind: String,
        /// The key whose value is wrong.
        key: String,
        /// The value as written.
        value: String,
        /// What the key accepts.
        allowed: String,
    },
    /// A key that is valid only together with another setting.
    #[error("key `{key}` of `{kind}` {reason}")]
    Conflict {
        /// The hardware kind being parsed.
        kind: String,
        /// The key that does not apply.
        key: String,
        /// Why it does not apply.
        reason: String,
    },
}

/// A parsed, validated hardware model: which kind of hardware a layer runs on, with
/// all of that kind's settings.
#[derive(Debug, Clone, PartialEq)]
pub enum HwSpec {
    /// Exact float arithmetic: the reference every other kind is compared with.
    Exact,
    /// Stochastic computing with split-unipolar streams (see [`crate::sc`]).
    Sc(ScSpec),
    /// Approximate 8-bit multipliers with exact integer sums (see [`crate::mult`]).
    Mult(MultSpec),
    /// An analog crossbar with DAC, noise and ADC (see [`crate::analog`]).
    Analog(AnalogSpec),
    /// REX-SC's saturating fixed-point baseline (see [`crate::fxp`]).
    Fxp(FxpSpec),
}

/// The documentation of every hardware kind and its keys, in the order `approx hw list`
/// prints them. Error messages draw their "allowed" lists from here too.
pub const KINDS: &[KindDoc] = &[
    KindDoc {
        kind: "exact",
        summary: "exact float arithmetic (the reference); takes no keys",
        keys: &[],
    },
    crate::sc::spec::SC_KIND,
    crate::mult::spec::MULT_KIND,
    crate::analog::spec::ANALOG_KIND,
    crate::fxp::spec::FXP_KIND,
];

impl HwSpec {
    /// The kind name, as written before the `:`.
    pub fn kind(&self) -> &'static str {
        match self {
            HwSpec::Exact => "exact",
            HwSpec::Sc(_) => crate::sc::spec::SC_KIND.kind,
            HwSpec::Mult(_) => crate::mult::spec::MULT_KIND.kind,
            HwSpec::Analog(_) => crate::analog::spec::ANALOG_KIND.kind,
            HwSpec::Fxp(_) => crate::fxp::spec::FXP_KIND.kind,
        }
    }
}

fn kind_names() -> String {
    KINDS
        .iter()
        .map(|k| format!("`{}`", k.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for HwSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SpecError::Empty {
                allowed: kind_names(),
            });
        }
        let (kind, rest) = match s.split_once(':') {
            Some((kind, rest)) => (kind.trim(), rest),
            None => (s, ""),
        };
        let Some(doc) = KINDS.iter().find(|k| k.kind == kind) else {
            return Err(SpecError::UnknownKind {
                kind: kind.to_string(),
                allowed: kind_names(),
            });
        };
        let mut keys = KeyValues::parse(doc, rest)?;
        let spec = match doc.kind {
            "exact" => HwSpec::Exact,
            "sc" => HwSpec::Sc(ScSpec::from_keys(&mut keys)?),
            "mult" => HwSpec::Mult(MultSpec::from_keys(&mut keys)?),
            "analog" => HwSpec::Analog(AnalogSpec::from_keys(&mut keys)?),
            "fxp" => HwSpec::Fxp(FxpSpec::from_keys(&mut keys)?),
            other => unreachable!("kind `{other}` is listed in KINDS but has no parser"),
        };
        keys.finish()?;
        Ok(spec)
    }
}

impl fmt::Display for HwSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HwSpec::Exact => f.write_str("exact"),
            HwSpec::Sc(sc) => sc.fmt(f),
            HwSpec::Mult(m) => m.fmt(f),
            HwSpec::Analog(a) => a.fmt(f),
            HwSpec::Fxp(x) => x.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mult::{Design, Multiplier};
    use proptest::prelude::*;

    fn designs() -> impl Strategy<Value = Design> {
        prop_oneof![
            Just(Design::Exact),
            Just(Design::Mitchell),
            Just(Design::Roba),
            Just(Design::Kulkarni),
            (3u8..=7).prop_map(Design::Drum),
            (4u8..=7).prop_map(Design::Ssm),
            (1u8..=15).prop_map(Design::Trunc),
            (0u8..=8, 0u8..=15).prop_map(|(hbl, vbl)| Design::Bam { hbl, vbl }),
        ]
    }

    fn any_spec() -> impl Strategy<Value = HwSpec> {
        let mult = (
            prop_oneof![
                designs().prop_map(Multiplier::Design),
                "[a-z/._]{1,12}".prop_map(|p| Multiplier::Lut(p.into()))
            ],
            2u8..=8,
            any::<bool>(),
        )
            .prop_map(|(multiplier, bits, signed)| {
                HwSpec::Mult(MultSpec {
                    multiplier,
                    bits,
                    signed,
                })
            });
        let analog = (
            (2u8..=22, 2u8..=22),
            (1e-3f32..100.0, 0f32..1.0, 0f32..1.0),
            (1usize..=65536, any::<u64>()),
        )
            .prop_map(
                |((inp_bits, out_bits), (out_bound, out_noise, w_noise), (tile_rows, seed))| {
                    HwSpec::Analog(AnalogSpec {
                        inp_bits,
                        out_bits,
                        out_bound,
                        out_noise,
                        w_noise,
                        tile_rows,
                        seed,
                    })
                },
            );
        let fxp = (1u8..=15, 1u8..=30)
            .prop_map(|(bits, acc_bits)| HwSpec::Fxp(FxpSpec { bits, acc_bits }));
        prop_oneof![Just(HwSpec::Exact), mult, analog, fxp]
    }

    proptest! {
        #[test]
        fn every_kind_round_trips(spec in any_spec()) {
            let text = spec.to_string();
            prop_assert_eq!(text.parse::<HwSpec>().unwrap(), spec, "{}", text);
        }
    }

    #[test]
    fn new_kinds_name_key_and_allowed_values() {
        let err = |s: &str| s.parse::<HwSpec>().unwrap_err().to_string();
        let e = err("mult:design=drum2");
        assert!(
            e.contains("`drum2`") && e.contains("`drum3`..`drum7`"),
            "{e}"
        );
        let e = err("mult:design=exact,lut=t.bin");
        assert!(e.contains("`lut`") && e.contains("`design`"), "{e}");
        let e = err("mult:bits=9");
        assert!(e.contains("`bits`") && e.contains("2 to 8"), "{e}");
        let e = err("analog:out_noise=-1");
        assert!(e.contains("`out_noise`") && e.contains(">= 0"), "{e}");
        let e = err("analog:tile_rows=0");
        assert!(e.contains("`tile_rows`"), "{e}");
        let e = err("analog:out_bound=inf");
        assert!(e.contains("finite"), "{e}");
        let e = err("fxp:acc_bits=31");
        assert!(e.contains("`acc_bits`") && e.contains("1 to 30"), "{e}");
        assert_eq!(
            "mult".parse::<HwSpec>().unwrap().to_string(),
            "mult:design=exact,bits=8,signed=true"
        );
        assert_eq!(
            "analog".parse::<HwSpec>().unwrap().to_string(),
            "analog:inp_bits=7,out_bits=9,out_bound=10,out_noise=0.04,w_noise=0.0175,tile_rows=512,seed=0"
        );
        assert_eq!(
            "fxp".parse::<HwSpec>().unwrap().to_string(),
            "fxp:bits=5,acc_bits=24"
        );
    }

    #[test]
    fn exact_parses_and_refuses_keys() {
        assert_eq!("exact".parse::<HwSpec>().unwrap(), HwSpec::Exact);
        let err = "exact:len=3".parse::<HwSpec>().unwrap_err();
        assert!(
            err.to_string().contains("unknown key `len` for `exact`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_kind_lists_kinds() {
        let err = "quantum".parse::<HwSpec>().unwrap_err().to_string();
        assert!(err.contains("`quantum`") && err.contains("`sc`"), "{err}");
        let err = "".parse::<HwSpec>().unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }
}
