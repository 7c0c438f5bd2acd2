//! The fine-tuning options `approx finetune` and `approx bench train` share.

use std::str::FromStr;

use approx_train::calibration::CalibrationScheme;
use approx_train::model::Model;
use approx_train::schedule::Phases;
use approx_train::trainer::TrainConfig;

/// Epochs, schedule, batch, learning rates and seed of a fine-tune, and of the float
/// pretraining before it when no `--weights` are given.
#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {
    /// Fine-tuning epochs (of each run, in `bench train`).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Float pretraining epochs when no --weights are given (not timed in `bench train`).
    #[arg(long, default_value_t = 4)]
    pub pretrain_epochs: usize,
    /// Fine-tuning phases: MODE:FRACTION or MODE:EPOCHS, e.g. `inject:0.8,accurate:0.2`
    /// (the accelerated schedule) or `accurate:1` (the baseline). `bench train` runs it
    /// as its accelerated run, against `accurate:1` and `float:1`.
    #[arg(long, default_value = "inject:2,accurate:1")]
    pub schedule: Phases,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Learning rate of pretraining (Adam).
    #[arg(long, default_value_t = 3e-3)]
    pub pretrain_lr: f64,
    /// Learning rate of fine-tuning (Adam, cosine decay).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Restart the optimizer at each phase after the first (e.g. the `accurate` epochs
    /// after the `inject` ones) with this learning rate and its own cosine decay, as
    /// REX-SC's recipe does (a new Adam at 3e-3 for its final accurate epochs); by
    /// default one cosine decay spans the whole run.
    #[arg(long)]
    pub tune_lr: Option<f64>,
    /// Training steps between calibrations of the injected error in `inject` epochs
    /// (each `inject` epoch also calibrates at its first step); default REX-SC's
    /// `max(steps per epoch / 5, 100)`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub calibrate_every: Option<u64>,
    /// What calibration fits for `inject` epochs: `fixed-pattern` (bias and std
    /// polynomials of the approximate value, plus each output unit's fixed error on
    /// SC, multiplier and fixed-point hardware), `polynomials` (the polynomials alone)
    /// or `rex-sc` (REX-SC's binning, the polynomials alone: the paper's injection).
    #[arg(long, default_value = "fixed-pattern")]
    pub calibration: CalibrationScheme,
    /// Clip gradients to this global L2 norm, or `off`. Unclipped, a checkpointed run
    /// (`--checkpoint-segments`) updates each block's parameters as soon as that
    /// block's backward ends, which keeps fewer gradients in memory; clipping needs
    /// the norm of all of them first.
    #[arg(long, default_value = "5")]
    pub clip_grad: ClipNorm,
    /// Seed of initialisation, data order, augmentation and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// A gradient-clipping norm, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipNorm(pub Option<f64>);

impl FromStr for ClipNorm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(ClipNorm(None));
        }
        match s.parse::<f64>() {
            Ok(norm) if norm.is_finite() && norm > 0.0 => Ok(ClipNorm(Some(norm))),
            _ => Err(format!(
                "bad gradient clipping norm `{s}`: expected a positive number or `off`"
            )),
        }
    }
}

impl FinetuneArgs {
    /// Sets the fine-tuning options beyond the recipe's (calibration period and
    /// scheme, the per-phase learning-rate restart, clipping) on the run's `cfg` and
    /// `model`:
    /// one place for `finetune` and `bench train`.
    pub fn configure(&self, cfg: &mut TrainConfig, model: &dyn Model) {
        cfg.calibrate_every = self.calibrate_every;
        cfg.tune_lr = self.tune_lr;
        cfg.clip_grad = self.clip_grad.0;
        model.set_calibration_scheme(self.calibration);
    }
}
