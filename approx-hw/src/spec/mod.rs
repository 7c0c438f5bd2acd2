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
