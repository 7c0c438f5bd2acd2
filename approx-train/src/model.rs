//! What the trainer needs from a model.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::calibration::CalibrationScheme;
use crate::layer::HwLayer;
use crate::mode::ExecMode;
use crate::recompute::Recompute;

/// A classifier the trainer can train and evaluate.
pub trait Model: Send + Sync {
    /// Logits `[N, classes]` for images `[N, C, H, W]`; `train` selects training
    /// behaviour (batch statistics in batch norm).
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// Logits for evaluation: the values of `forward(x, false)`, without what only
    /// gradients need (an `accurate` hardware layer's surrogate), so the result
    /// carries no gradient path through such layers.
    fn predict(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x, false)
    }

    /// The layers that run on the hardware.
    fn hw_layers(&self) -> Vec<&HwLayer>;

    /// Every parameter and buffer by tensor name (what a checkpoint saves); batch-norm
    /// running statistics included, which get no gradient.
    fn named_vars(&self) -> Vec<(String, Var)>;

    /// Adds gradients that checkpointed blocks computed out of band (see
    /// [`crate::recompute`]); models without checkpointing have none.
    fn merge_recomputed_grads(&self, _grads: &mut GradStore) -> Result<()> {
        Ok(())
    }

    /// The channel of the model's checkpointed blocks, if its training forward has
    /// any: the trainer sets its sink to update each block's parameters as soon as
    /// the block's backward ends.
    fn checkpointed_blocks(&self) -> Option<&Recompute> {
        None
    }

    /// Tells the model the training step about to run (keys the noise of hardware
    /// layers and any other per-step randomness, so runs are reproducible).
    fn set_step(&self, step: u64) {
        for l in self.hw_layers() {
            l.set_step(step);
        }
    }

    /// Sets the execution mode of every hardware layer.
    fn set_mode(&self, mode: ExecMode) {
        for l in self.hw_layers() {
            l.set_mode(mode);
        }
    }

    /// Sets what every hardware layer's calibration fits.
    fn set_calibration_scheme(&self, scheme: CalibrationScheme) {
        for l in self.hw_layers() {
            l.set_calibration_scheme(scheme);
        }
    }
}
