//! The built-in sequential models, with PyTorch tensor names.

use std::fmt;
use std::str::FromStr;

use approx_hw::HwSpec;

use crate::hwmap::HwMap;
use crate::sequential::{Builder, Step, HARDTANH01};

/// A built-in model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// REX-SC's TinyConv (`specs/sc-rexsc.md` §8.1): three 5x5 convs (32, 32, 64
    /// filters, no bias) each followed by batch norm, ReLU, 2x2 average pooling and
    /// Hardtanh(0, 1), then a conv over the remaining map as the classifier and a
    /// 1-d batch norm. For 3x32x32 and 1x28x28 inputs. PyTorch's default
    /// initialisation: REX-SC's ×4 (`uniform=True`) left the default fine-tune (32-bit
    /// streams, OR-2, 4 + 3 epochs on the embedded data) at chance (9.7 % after,
    /// against 77.9 % with ×1), as larger weights saturate the OR accumulation.
    TinyConv,
    /// LeNet-5: conv 6 5x5 (pad 2) → ReLU → max pool → conv 16 5x5 → ReLU → max pool →
    /// linear 120 → ReLU → linear 84 → ReLU → linear to the classes.
    LeNet5,
    /// A multilayer perceptron: 256 → ReLU → 128 → ReLU → classes.
    Mlp,
    /// REX-SC's VGG-11 for CIFAR (§8.2): eight 3x3 convs (64, 128, 256, 256, 512,
    /// 512, 512, 512; no bias) each with batch norm and Hardtanh(0, 1), ReLU and 2x2
    /// average pooling closing each of the five blocks, a conv classifier `fc1` over
    /// the remaining map and a 1-d batch norm. Initialised ×4. Inputs 32·k square.
    Vgg11,
    /// REX-SC's VGG-16 for CIFAR (§8.2): thirteen convs in blocks of 2, 2, 3, 3, 3,
    /// laid out as VGG-11. Initialised ×0.5.
    Vgg16,
    /// ResNet-18 in torchvision's layout and names (`layer1.0.conv1.weight`, ...,
    /// `fc.bias`) with REX-SC's activations (§8.3): 7x7/2 stem conv, batch norm,
    /// Hardtanh(0, 1), 3x3/2 average pooling; basic blocks [2, 2, 2, 2]; global
    /// average pooling; `fc`. The stem conv and `fc` stay exact by default (§1.4).
    ResNet18,
    /// ResNet-34: [`ModelKind::ResNet18`] with blocks [3, 4, 6, 3].
    ResNet34,
    /// ResNet-18 with the CIFAR stem: a 3x3/1 conv and no pooling.
    ResNet18Cifar,
    /// ResNet-34 with the CIFAR stem.
    ResNet34Cifar,
    /// A small Vision Transformer with timm's tensor names: 4x4 patches embedded to
    /// 64 features (`patch_embed.proj`), a class token and position embedding, four
    /// pre-norm encoder blocks (4-head self-attention, MLP 64 → 128 → 64 with GELU),
    /// a final layer norm and a linear `head` on the class token. Every conv and
    /// linear layer runs on the hardware; attention's `Q·Kᵀ` and `A·V`
    /// (`blocks.N.attn.qk`, `blocks.N.attn.av`) stay exact unless `--hw-map` names
    /// them.
    Vit,
}

impl ModelKind {
    /// Every built-in model.
    pub const ALL: [ModelKind; 10] = [
        ModelKind::TinyConv,
        ModelKind::LeNet5,
        ModelKind::Mlp,
        ModelKind::Vgg11,
        ModelKind::Vgg16,
        ModelKind::ResNet18,
        ModelKind::ResNet34,
        ModelKind::ResNet18Cifar,
        ModelKind::ResNet34Cifar,
        ModelKind::Vit,
    ];

    /// The name as written on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::TinyConv => "tinyconv",
            ModelKind::LeNet5 => "lenet5",
            ModelKind::Mlp => "mlp",
            ModelKind::Vgg11 => "vgg11",
            ModelKind::Vgg16 => "vgg16",
            ModelKind::ResNet18 => "resnet18",
            ModelKind::ResNet34 => "resnet34",
            ModelKind::ResNet18Cifar => "resnet18-cifar",
            ModelKind::ResNet34Cifar => "resnet34-cifar",
            ModelKind::Vit => "vit",
        }
    }

    /// The layers that run on `hw` when the user names one hardware for the model: the
    /// paper's choice (§1.4). Every conv and linear layer, except in ResNets, whose
    /// stem conv and `fc` stay exact.
    pub fn paper_map(self, hw: HwSpec) -> HwMap {
        match self {
            ModelKind::ResNet18
            | ModelKind::ResNet34
            | ModelKind::ResNet18Cifar
            | ModelKind::ResNet34Cifar => HwMap::Inner(hw),
            _ => HwMap::All(hw),
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
                let mut ch = c;
                for (i, out) in [32, 32, 64].into_iter().enumerate() {
                    let n = i + 1;
                    b.conv(&format!("conv{n}"), (ch, out), 5, 1, 2, false)
                        .batch_norm(&format!("bn{n}"), out, quantized_bn)
                        .step(Step::Relu)
                        .step(Step::AvgPool(2))
                        .step(HARDTANH01);
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
            ModelKind::Vgg11 => vgg(
                b,
                &[&[64], &[128], &[256, 256], &[512, 512], &[512, 512]],
                4.0,
                (c, h),
                classes,
                quantized_bn,
            ),
            ModelKind::Vgg16 => vgg(
                b,
                &[
                    &[64, 64],
                    &[128, 128],
                    &[256, 256, 256],
                    &[512, 512, 512],
                    &[512, 512, 512],
                ],
                0.5,
                (c, h),
                classes,
                quantized_bn,
            ),
            ModelKind::ResNet18 => resnet(b, &[2, 2, 2, 2], true, c, classes),
            ModelKind::ResNet34 => resnet(b, &[3, 4, 6, 3], true, c, classes),
            ModelKind::ResNet18Cifar => resnet(b, &[2, 2, 2, 2], false, c, classes),
            ModelKind::ResNet34Cifar => resnet(b, &[3, 4, 6, 3], false, c, classes),
            ModelKind::Vit => vit(b, (c, h, w), classes),
        }
    }

    /// Checks that the model takes inputs of this shape.
    pub fn check_input(self, (c, h, w): (usize, usize, usize)) -> Result<(), String> {
        let ok = match self {
            ModelKind::TinyConv => h == w && h >= 8 && (h / 8) * 8 == h - h % 8 && h / 8 >= 1,
            ModelKind::LeNet5 => h >= 12 && w >= 12,
            ModelKind::Mlp => true,
            ModelKind::Vgg11 | ModelKind::Vgg16 => h == w && h >= 32 && h % 32 == 0,
            ModelKind::ResNet18 | ModelKind::ResNet34 => h >= 32 && w >= 32,
            ModelKind::ResNet18Cifar | ModelKind::ResNet34Cifar => h >= 8 && w >= 8,
            ModelKind::Vit => {
                h >= VIT_PATCH && w >= VIT_PATCH && h % VIT_PATCH == 0 && w % VIT_PATCH == 0
            }
        };
        if ok && c >= 1 {
            Ok(())
        } else {
            let needs = match self {
                ModelKind::TinyConv => "square inputs of side 8 or more",
                ModelKind::LeNet5 => "inputs of 12x12 pixels or more",
                ModelKind::Mlp => "inputs with at least one channel",
                ModelKind::Vgg11 | ModelKind::Vgg16 => {
                    "square inputs whose side is a multiple of 32, e.g. CIFAR-10 (--data cifar10:DIR)"
                }
                ModelKind::ResNet18 | ModelKind::ResNet34 => "inputs of 32x32 pixels or more",
                ModelKind::ResNet18Cifar | ModelKind::ResNet34Cifar => {
                    "inputs of 8x8 pixels or more"
                }
                ModelKind::Vit => "sides that are multiples of the 4-pixel patch",
            };
            Err(format!(
                "does not take {c}x{h}x{w} inputs: it needs {needs}"
            ))
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
            .ok_or_else(|| {
                let names: Vec<&str> = ModelKind::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown model `{s}`: expected {} or a TOML model file",
                    names.join(", ")
                )
            })
    }
}

/// REX-SC's CIFAR VGG: `blocks` of 3x3 convs (output channels), each conv followed by
/// batch norm and Hardtanh(0, 1), the last of a block by batch norm, ReLU, 2x2 average
/// pooling and Hardtanh(0, 1); then a conv classifier over the remaining `h/32` map
/// and a 1-d batch norm.
fn vgg(
    b: &mut Builder,
    blocks: &[&[usize]],
    init: f32,
    (c, h): (usize, usize),
    classes: usize,
    quantized_bn: bool,
) {
    b.init_scale(init);
    let (mut ch, mut n) = (c, 0);
    for block in blocks {
        for (i, &out) in block.iter().enumerate() {
            n += 1;
            b.conv(&format!("conv{n}"), (ch, out), 3, 1, 1, false)
                .batch_norm(&format!("bn{n}"), out, quantized_bn);
            if i + 1 == block.len() {
                b.step(Step::Relu).step(Step::AvgPool(2));
            }
            b.step(HARDTANH01);
            ch = out;
        }
    }
    b.conv("fc1", (ch, classes), h / 32, 1, 0, false)
        .step(Step::Flatten)
        .batch_norm(&format!("bn{}", n + 1), classes, quantized_bn);
}

/// A torchvision-layout ResNet of basic blocks, `blocks` per stage, with REX-SC's
/// Hardtanh(0, 1) activations; the ImageNet stem (7x7/2 conv, 3x3/2 average pooling)
/// when `imagenet_stem`, else a 3x3/1 conv.
fn resnet(b: &mut Builder, blocks: &[usize; 4], imagenet_stem: bool, c: usize, classes: usize) {
    if imagenet_stem {
        b.conv("conv1", (c, 64), 7, 2, 3, false)
            .batch_norm("bn1", 64, false)
            .step(HARDTANH01)
            .step(Step::AvgPoolPadded {
                kernel: 3,
                stride: 2,
                padding: 1,
            });
    } else {
        b.conv("conv1", (c, 64), 3, 1, 1, false)
            .batch_norm("bn1", 64, false)
            .step(HARDTANH01);
    }
    let mut ch = 64;
    for (stage, (&count, out)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{i}", stage + 1);
            let (inp, down) = (ch, stride != 1 || ch != out);
            b.residual(
                |b| {
                    b.conv(&format!("{p}.conv1"), (inp, out), 3, stride, 1, false)
                        .batch_norm(&format!("{p}.bn1"), out, false)
                        .step(HARDTANH01)
                        .conv(&format!("{p}.conv2"), (out, out), 3, 1, 1, false)
                        .batch_norm(&format!("{p}.bn2"), out, false);
                },
                |b| {
                    if down {
                        b.conv(
                            &format!("{p}.downsample.0"),
                            (inp, out),
                            1,
                            stride,
                            0,
                            false,
                        )
                        .batch_norm(
                            &format!("{p}.downsample.1"),
                            out,
                            false,
                        );
                    }
                },
            )
            .step(HARDTANH01);
            ch = out;
        }
    }
    b.step(Step::GlobalAvgPool)
        .linear("fc", (ch, classes), true);
}

/// Patch side of [`ModelKind::Vit`], pixels.
const VIT_PATCH: usize = 4;

/// The small Vision Transformer of [`ModelKind::Vit`].
fn vit(b: &mut Builder, (c, h, w): (usize, usize, usize), classes: usize) {
    let (dim, depth, heads, hidden) = (64, 4, 4, 128);
    let patches = (h / VIT_PATCH) * (w / VIT_PATCH);
    b.conv("patch_embed.proj", (c, dim), VIT_PATCH, VIT_PATCH, 0, true)
        .tokens(dim, patches);
    for i in 0..depth {
        let p = format!("blocks.{i}");
        b.residual(
            |b| {
                b.layer_norm(&format!("{p}.norm1"), dim)
                    .linear(&format!("{p}.attn.qkv"), (dim, 3 * dim), true)
                    .self_attention(&format!("{p}.attn"), heads)
                    .linear(&format!("{p}.attn.proj"), (dim, dim), true);
            },
            |_| {},
        )
        .residual(
            |b| {
                b.layer_norm(&format!("{p}.norm2"), dim)
                    .linear(&format!("{p}.mlp.fc1"), (dim, hidden), true)
                    .step(Step::Gelu)
                    .linear(&format!("{p}.mlp.fc2"), (hidden, dim), true);
            },
            |_| {},
        );
    }
    b.layer_norm("norm", dim)
        .step(Step::ClassToken)
        .linear("head", (dim, classes), true);
}
