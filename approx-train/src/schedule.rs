//! Training schedules: which execution mode each epoch runs (phases), and the
//! learning rate of each step.

use std::fmt;
use std::str::FromStr;

use crate::mode::ExecMode;

/// The modes of a run as consecutive phases, e.g. `inject:0.8,accurate:0.2` (the
/// paper's CIFAR recipe: 80 % of the epochs with error injection, then bit-accurate)
/// or `accurate:1` (the baseline). Amounts are fractions of the run (all written with
/// a decimal point, summing to 1) or epoch counts (all integers).
#[derive(Debug, Clone, PartialEq)]
pub struct Phases {
    phases: Vec<(ExecMode, Amount)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Amount {
    Fraction(f64),
    Epochs(usize),
}

impl FromStr for Phases {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut phases = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (mode, amount) = item.split_once(':').ok_or_else(|| {
                format!("bad phase `{item}` in `{s}`: expected MODE:AMOUNT, e.g. inject:0.8")
            })?;
            let mode: ExecMode = mode.parse()?;
            let amount = if amount.contains('.') {
                let f: f64 = amount
                    .parse()
                    .map_err(|_| format!("bad fraction `{amount}` in `{s}`"))?;
                if !(f > 0.0 && f <= 1.0) {
                    return Err(format!("fraction `{amount}` in `{s}` must be in (0, 1]"));
                }
                Amount::Fraction(f)
            } else {
                let n: usize = amount
                    .parse()
                    .map_err(|_| format!("bad epoch count `{amount}` in `{s}`"))?;
                if n == 0 {
                    return Err(format!("epoch count in `{item}` must be at least 1"));
                }
                Amount::Epochs(n)
            };
            phases.push((mode, amount));
        }
        if phases.is_empty() {
            return Err("empty schedule: expected e.g. `inject:0.8,accurate:0.2`".into());
        }
        let fractions = phases
            .iter()
            .filter(|p| matches!(p.1, Amount::Fraction(_)))
            .count();
        if fractions != 0 && fractions != phases.len() {
            return Err(format!("schedule `{s}` mixes fractions and epoch counts"));
        }
        if fractions != 0 {
            let sum: f64 = phases
                .iter()
                .map(|p| {
                    if let Amount::Fraction(f) = p.1 {
                        f
                    } else {
                        0.0
                    }
                })
                .sum();
            if (sum - 1.0).abs() > 1e-6 {
                return Err(format!("fractions in `{s}` sum to {sum}, not 1"));
            }
        }
        Ok(Phases { phases })
    }
}

impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .phases
            .iter()
            .map(|(m, a)| match a {
                Amount::Fraction(x) => format!("{m}:{x:?}"),
                Amount::Epochs(n) => format!("{m}:{n}"),
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

impl Phases {
    /// One phase running `mode` for the whole run.
    pub fn single(mode: ExecMode) -> Self {
        Phases {
            phases: vec![(mode, Amount::Fraction(1.0))],
        }
    }

    /// Epochs of each phase in a run of `epochs` epochs: fractions are rounded so the
    /// phases add up to the run (each phase at least one epoch when the run is long
    /// enough); epoch counts must add up to `epochs`.
    pub fn epochs(&self, epochs: usize) -> Result<Vec<(ExecMode, usize)>, String> {
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut acc = 0f64;
        for (i, &(mode, amount)) in self.phases.iter().enumerate() {
            let n = match amount {
                Amount::Epochs(n) => n,
                Amount::Fraction(f) => {
                    acc += f;
                    let end = if i + 1 == self.phases.len() {
                        epochs
                    } else {
                        (acc * epochs as f64).round() as usize
                    };
                    end.saturating_sub(used).max(usize::from(epochs > used))
                }
            };
            used += n;
            out.push((mode, n));
        }
        if used != epochs {
            return Err(format!(
                "schedule `{self}` covers {used} epochs, the run has {epochs}"
            ));
        }
        Ok(out)
    }

    /// The mode of epoch `epoch` (0-based) of a run of `epochs` epochs.
    pub fn mode_at(&self, epoch: usize, epochs: usize) -> Result<ExecMode, String> {
        let mut start = 0;
        for (mode, n) in self.epochs(epochs)? {
            if epoch < start + n {
                return Ok(mode);
            }
            start += n;
        }
        Err(format!(
            "epoch {epoch} is past the end of a {epochs}-epoch run"
        ))
    }
}

/// The learning rate over a run of `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LrSchedule {
    /// The same rate every step.
    Constant,
    /// REX-SC's PolynomialWarmup: linear warm-up from 0 over `warmup` steps, then
    /// `(lr0 − end)(1 − t′/T′)^power + end` over the remaining steps.
    WarmupPoly {
        /// Warm-up steps.
        warmup: u64,
        /// Decay power (2 in REX-SC).
        power: f64,
        /// Final rate.
        end: f64,
    },
    /// Cosine decay from `lr0` to `end`.
    Cosine {
        /// Final rate.
        end: f64,
    },
    /// Exponential decay from `lr0` to `end` over the run.
    Exponential {
        /// Final rate.
        end: f64,
    },
}

impl LrSchedule {
    /// The rate at step `t` (0-based) of `total`, starting from `lr0`.
    pub fn rate(&self, lr0: f64, t: u64, total: u64) -> f64 {
        let total = total.max(1);
        let progress = |t: u64, span: u64| (t as f64 / span.max(1) as f64).min(1.0);
        match *self {
            LrSchedule::Constant => lr0,
            LrSchedule::WarmupPoly { warmup, power, end } => {
                if t < warmup {
                    lr0 * t as f64 / warmup as f64
                } else {
                    let p = progress(t - warmup, total.saturating_sub(warmup));
                    (lr0 - end) * (1.0 - p).powf(power) + end
                }
            }
            LrSchedule::Cosine { end } => {
                let p = progress(t, total);
                end + (lr0 - end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            LrSchedule::Exponential { end } => {
                let p = progress(t, total.saturating_sub(1));
                lr0 * (end.max(f64::MIN_POSITIVE) / lr0).powf(p)
            }
        }
    }
}

impl FromStr for LrSchedule {
    type Err = String;

    /// `constant`, `cosine[:END]`, `exp[:END]`, `poly[:WARMUP_STEPS[:END[:POWER]]]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize, default: f64| -> Result<f64, String> {
            parts.get(i).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("bad number `{v}` in lr schedule `{s}`"))
            })
        };
        match parts[0] {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine { end: num(1, 0.0)? }),
            "exp" => Ok(LrSchedule::Exponential { end: num(1, 1e-5)? }),
            "poly" => Ok(LrSchedule::WarmupPoly { warmup: num(1, 0.0)? as u64, end: num(2, 1e-5)?, power: num(3, 2.0)? }),
            other => Err(format!("unknown lr schedule `{other}`: expected constant, cosine[:END], exp[:END] or poly[:WARMUP[:END[:POWER]]]")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_runs() {
        let p: Phases = "inject:0.8,accurate:0.2".parse().unwrap();
        assert_eq!(
            p.epochs(100).unwrap(),
            vec![(ExecMode::Inject, 80), (ExecMode::Accurate, 20)]
        );
        assert_eq!(
            p.epochs(3).unwrap(),
            vec![(ExecMode::Inject, 2), (ExecMode::Accurate, 1)]
        );
        assert_eq!(p.mode_at(2, 3).unwrap(), ExecMode::Accurate);
        let c: Phases = "approx-fn:2,inject:3,accurate:1".parse().unwrap();
        assert_eq!(c.mode_at(4, 6).unwrap(), ExecMode::Inject);
        assert!(c.epochs(5).unwrap_err().contains("covers 6 epochs"));
        assert_eq!(p.to_string().parse::<Phases>().unwrap(), p);
        for bad in [
            "",
            "inject",
            "inject:0.5",
            "fast:1",
            "inject:0.5,accurate:2",
            "inject:0",
        ] {
            assert!(bad.parse::<Phases>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_follow_their_formulas() {
        let poly: LrSchedule = "poly:10:0:2".parse().unwrap();
        assert_eq!(poly.rate(1.0, 0, 110), 0.0);
        assert_eq!(poly.rate(1.0, 5, 110), 0.5);
        assert_eq!(poly.rate(1.0, 10, 110), 1.0);
        assert!((poly.rate(1.0, 60, 110) - 0.25).abs() < 1e-12);
        let cos: LrSchedule = "cosine".parse().unwrap();
        assert!((cos.rate(2.0, 50, 100) - 1.0).abs() < 1e-12);
        let exp: LrSchedule = "exp:1e-5".parse().unwrap();
        assert!((exp.rate(1e-3, 99, 100) - 1e-5).abs() < 1e-12);
        assert!((exp.rate(1e-3, 0, 100) - 1e-3).abs() < 1e-15);
        assert!("step".parse::<LrSchedule>().is_err());
    }
}
