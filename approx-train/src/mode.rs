//! Execution modes of an approximate layer (`specs/sc-rexsc.md` §3.5).

use std::fmt;
use std::str::FromStr;

/// How a hardware layer computes its forward value and its gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExecMode {
    /// Ordinary f32 layer: pretraining and the float reference accuracy.
    Float,
    /// Activation-function approximation: forward and backward through the kind's
    /// analytic error model of the exact dot products (REX-SC sync 0).
    ApproxFn,
    /// `ApproxFn` plus calibrated error injection, `y = x + bias(x) + std(x)·ε`
    /// (REX-SC sync 3; sync 2 when a calibration is due).
    Inject,
    /// The bit-accurate forward value, with the `ApproxFn` gradient (straight-through;
    /// REX-SC sync 1).
    Accurate,
}

impl ExecMode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [ExecMode; 4] = [
        ExecMode::Float,
        ExecMode::ApproxFn,
        ExecMode::Inject,
        ExecMode::Accurate,
    ];

    /// The name as written in schedules and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExecMode::Float => "float",
            ExecMode::ApproxFn => "approx-fn",
            ExecMode::Inject => "inject",
            ExecMode::Accurate => "accurate",
        }
    }
}

impl fmt::Display for ExecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExecMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ExecMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown execution mode `{s}`: expected `float`, `approx-fn`, `inject` or `accurate`"))
    }
}
