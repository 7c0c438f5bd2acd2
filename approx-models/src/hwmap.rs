//! Which layers of a model run on which hardware: all of them, all but the first and
//! last, or a map from tensor-name patterns to hardware specs.

use std::fmt;
use std::str::FromStr;

use approx_hw::spec::KINDS;
use approx_hw::HwSpec;

/// The hardware of every layer of a model.
#[derive(Debug, Clone, PartialEq)]
pub enum HwMap {
    /// Every conv and linear layer on this hardware.
    All(HwSpec),
    /// Every layer but the first and the last on this hardware; those two exact.
    Inner(HwSpec),
    /// Per layer by name: the first matching pattern wins (`conv1` matches that layer
    /// exactly, `layer1.*` every layer whose name starts with `layer1.`, `*` every
    /// layer); unmatched layers are exact.
    Map(Vec<(String, HwSpec)>),
}

impl HwMap {
    /// The hardware of layer `name`, number `index` of `count`.
    pub fn resolve(&self, name: &str, index: usize, count: usize) -> HwSpec {
        match self {
            HwMap::All(hw) => hw.clone(),
            HwMap::Inner(hw) if index != 0 && index + 1 != count => hw.clone(),
            HwMap::Inner(_) => HwSpec::Exact,
            HwMap::Map(entries) => entries
                .iter()
                .find(|(pattern, _)| match pattern.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == pattern,
                })
                .map_or(HwSpec::Exact, |(_, hw)| hw.clone()),
        }
    }
}

impl HwMap {
    /// The hardware of the activation-by-activation matmul `name` (attention's
    /// `Q·Kᵀ` and `A·V`): exact unless a [`HwMap::Map`] pattern matches it.
    pub fn resolve_activation_matmul(&self, name: &str) -> HwSpec {
        match self {
            HwMap::Map(_) => self.resolve(name, 0, 0),
            HwMap::All(_) | HwMap::Inner(_) => HwSpec::Exact,
        }
    }
}

impl FromStr for HwMap {
    type Err = String;

    /// `PATTERN=SPEC,PATTERN=SPEC...`. A spec's own `key=value` items follow it after
    /// commas: an item whose right side does not start with a hardware kind belongs to
    /// the spec before it, so `conv1=exact,layer1.*=sc:len=64,acc=or2` is two entries.
    fn from_str(s: &str) -> Result<Self, String> {
        let starts_with_kind = |v: &str| {
            let kind = v.split(':').next().unwrap_or_default();
            KINDS.iter().any(|k| k.kind == kind)
        };
        let mut raw: Vec<(String, String)> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some((pattern, spec)) if starts_with_kind(spec) => {
                    raw.push((pattern.trim().to_string(), spec.to_string()))
                }
                _ => match raw.last_mut() {
                    Some((_, spec)) => {
                        spec.push(',');
                        spec.push_str(item);
                    }
                    None => {
                        return Err(format!(
                            "bad hardware map item `{item}`: expected LAYER=SPEC, e.g. conv1=exact"
                        ))
                    }
                },
            }
        }
        if raw.is_empty() {
            return Err("empty hardware map: expected LAYER=SPEC,...".into());
        }
        let entries = raw
            .into_iter()
            .map(|(pattern, spec)| {
                let hw: HwSpec = spec
                    .parse()
                    .map_err(|e| format!("layer pattern `{pattern}`: {e}"))?;
                Ok((pattern, hw))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(HwMap::Map(entries))
    }
}

impl fmt::Display for HwMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HwMap::All(hw) => write!(f, "{hw}"),
            HwMap::Inner(hw) => write!(f, "{hw} (all but first and last layer)"),
            HwMap::Map(entries) => {
                let items: Vec<String> =
                    entries.iter().map(|(p, hw)| format!("{p}={hw}")).collect();
                f.write_str(&items.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_with_commas_inside_specs() {
        let m: HwMap = "conv1=exact,layer1.*=sc:len=64,acc=or1,fc=mult:design=drum4"
            .parse()
            .unwrap();
        assert_eq!(m.resolve("conv1", 0, 5), HwSpec::Exact);
        assert_eq!(
            m.resolve("layer1.0.conv2", 1, 5).to_string(),
            "sc:len=64,acc=or1,gen=lfsr-xnor"
        );
        assert_eq!(
            m.resolve("fc", 4, 5).to_string(),
            "mult:design=drum4,bits=8,signed=true"
        );
        assert_eq!(m.resolve("layer2.0.conv1", 2, 5), HwSpec::Exact);
        assert!("conv1".parse::<HwMap>().is_err());
        assert!("conv1=sc:len=7"
            .parse::<HwMap>()
            .unwrap_err()
            .contains("`len`"));
        let inner = HwMap::Inner("fxp".parse().unwrap());
        assert_eq!(inner.resolve("a", 0, 3), HwSpec::Exact);
        assert_eq!(inner.resolve("b", 1, 3).kind(), "fxp");
        assert_eq!(inner.resolve("c", 2, 3), HwSpec::Exact);
    }
}
