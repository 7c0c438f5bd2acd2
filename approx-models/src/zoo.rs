//! The built-in sequential models, with PyTorch tensor names.

use std::fmt;
use std::str::FromStr;

use crate::sequential::{Builder, Step};

/// A built-in model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// REX-SC's TinyConv (`specs/sc-rexsc.md` §8.1): three 5x5 convs (32, 32, 64
    /// filters, no bias) each followed by batch norm, ReLU, 2x2 average pooling and
    /// Hardtanh(0, 1), then a conv over the remaining map as the classifier and a
    /// 1-d batch norm. For 3x32x32 and 1x28x28 inputs. Initialised ×4 as REX-SC does.
    TinyConv,
    /// LeNet-5: conv 6 5x5 (pad 2) → ReLU → max pool → conv 16 5x5 → ReLU → max pool →
    /// linear 120 → ReLU → linear 84 → ReLU → linear to the classes.
    LeNet5,
    /// A multilayer perceptron: 256 → ReLU → 128 → ReLU → classes.
    Mlp,
}

impl ModelKind {
    /// Every built-in model.
    pub const ALL: [ModelKind; 3] = [ModelKind::TinyConv, ModelKind::LeNet5, ModelKind::Mlp];

    /// The name as written on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::TinyConv => "tinyconv",
            ModelKind::LeNet5 => "lenet5",
            ModelKind::Mlp => "mlp",
        }
    }

    /// Adds the model's layers for `input` (C, H, W) and `classes` to `b`; with
    /// `quantized_bn`, TinyConv's batch norms are REX-SC's quantized ones.
    pub fn layers(
        self,
        b: &mut Builder,
        (c, h, w): (usize, usize, usize),
        classes: usize,
        quantized_bn: bool,
    ) {
        match self {
            ModelKind::TinyConv => {
                b.init_scale(4.0);
                let mut ch = c;
                for (i, out) in [32, 32, 64].into_iter().enumerate() {
                    let n = i + 1;
                    b.conv(&format!("conv{n}"), (ch, out), 5, 1, 2, false)
                        .batch_norm(&format!("bn{n}"), out, quantized_bn)
                        .step(Step::Relu)
                        .step(Step::AvgPool(2))
                        .step(Step::Hardtanh01);
                    ch = out;
                }
                // The classifier conv covers the whole remaining map (4x4 for 32x32
                // inputs, 3x3 for 28x28).
                let side = h / 8;
                debug_assert_eq!(side, w / 8);
                b.conv("fc1", (ch, classes), side, 1, 0, false)
                    .step(Step::Flatten)
                    .batch_norm("bn4", classes, quantized_bn);
            }
            ModelKind::LeNet5 => {
                let after = ((h / 2 - 4) / 2, (w / 2 - 4) / 2);
                b.conv("conv1", (c, 6), 5, 1, 2, true)
                    .step(Step::Relu)
                    .step(Step::MaxPool(2))
                    .conv("conv2", (6, 16), 5, 1, 0, true)
                    .step(Step::Relu)
                    .step(Step::MaxPool(2))
                    .step(Step::Flatten)
                    .linear("fc1", (16 * after.0 * after.1, 120), true)
                    .step(Step::Relu)
                    .linear("fc2", (120, 84), true)
                    .step(Step::Relu)
                    .linear("fc3", (84, classes), true);
            }
            ModelKind::Mlp => {
                b.step(Step::Flatten)
                    .linear("fc1", (c * h * w, 256), true)
                    .step(Step::Relu)
                    .linear("fc2", (256, 128), true)
                    .step(Step::Relu)
                    .linear("fc3", (128, classes), true);
            }
        }
    }

    /// Checks that the model takes inputs of this shape.
    pub fn check_input(self, (c, h, w): (usize, usize, usize)) -> Result<(), String> {
        let ok = match self {
            ModelKind::TinyConv => h == w && h >= 8 && (h / 8) * 8 == h - h % 8 && h / 8 >= 1,
            ModelKind::LeNet5 => h >= 12 && w >= 12,
            ModelKind::Mlp => true,
        };
        if ok && c >= 1 {
            Ok(())
        } else {
            Err(format!("model `{self}` does not take {c}x{h}x{w} inputs"))
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ModelKind::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown model `{s}`: expected tinyconv, lenet5 or mlp"))
    }
}
