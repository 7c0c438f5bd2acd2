//! Options shared by the commands that build a model: which model, which weights,
//! which hardware.

use anyhow::{Context, Result};
use approx_hw::HwSpec;
use approx_models::{build, load, Architecture, HwMap, Sequential};
use approx_train::mode::ExecMode;

/// The layers `--hw` applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HwLayers {
    /// The paper's choice: every conv and linear layer, but a ResNet's stem and `fc`.
    Paper,
    /// Every conv and linear layer.
    All,
    /// Every conv and linear layer but the first and the last.
    Inner,
}

/// Model, weights and hardware options.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model: `tinyconv`, `lenet5`, `mlp`, `vgg11`, `vgg16`, `resnet18`, `resnet34`,
    /// `resnet18-cifar`, `resnet34-cifar`, `vit`, or a TOML model file (`my-net.toml`, see
    /// examples/lenet5.toml).
    #[arg(long, default_value = "tinyconv")]
    pub model: Architecture,
    /// REX-SC's quantized batch norm (a power-of-two scale and 8-bit affine map) for
    /// every batch norm of the model.
    #[arg(long)]
    pub quantized_bn: bool,
    /// Safetensors weights with PyTorch names: a path, or `hf://ORG/NAME[@REV]/FILE`
    /// from the local Hugging Face cache (default: train from scratch).
    #[arg(long)]
    pub weights: Option<String>,
    /// Accept a weights file that lacks some tensors (they are initialised).
    #[arg(long)]
    pub allow_missing: bool,
    /// Hardware of the model's conv/linear layers (those --hw-layers picks), e.g.
    /// `sc:len=32,acc=or2` (see `approx hw list`).
    #[arg(long, default_value = "sc:len=32,acc=or2")]
    pub hw: String,
    /// Which layers --hw applies to; the others are exact.
    #[arg(long, value_enum, default_value_t = HwLayers::Paper)]
    pub hw_layers: HwLayers,
    /// Per-layer hardware instead of --hw: `LAYER=SPEC,...` (`conv1=exact,conv*=sc:len=64`);
    /// unmatched layers are exact. A ViT's attention matmuls are `blocks.N.attn.qk` and
    /// `blocks.N.attn.av`.
    #[arg(long, conflicts_with = "hw")]
    pub hw_map: Option<String>,
    /// Gradient checkpointing in training: split the model into this many blocks that
    /// keep only their input and recompute activations in backward (less memory,
    /// one more forward; 0: off).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_segments: usize,
}

impl ModelArgs {
    /// The architecture with the batch-norm option applied.
    pub fn architecture(&self) -> Architecture {
        self.model.clone().with_quantized_bn(self.quantized_bn)
    }

    /// The hardware map these options describe.
    pub fn hw_map(&self) -> Result<HwMap> {
        Ok(match &self.hw_map {
            Some(map) => map
                .parse()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("bad --hw-map `{map}`"))?,
            None => {
                let spec = self
                    .hw
                    .parse::<HwSpec>()
                    .with_context(|| format!("bad --hw `{}`", self.hw))?;
                match self.hw_layers {
                    HwLayers::Paper => self.model.paper_map(spec),
                    HwLayers::All => HwMap::All(spec),
                    HwLayers::Inner => HwMap::Inner(spec),
                }
            }
        })
    }

    /// The model for inputs `input` and `classes`, from `--weights` or fresh from
    /// `seed`, in `mode`.
    pub fn build(
        &self,
        input: (usize, usize, usize),
        classes: usize,
        hw: &HwMap,
        mode: ExecMode,
        seed: u64,
    ) -> Result<Sequential> {
        let mut model = match &self.weights {
            Some(weights) => {
                let path = approx_models::hub::resolve(weights)
                    .with_context(|| format!("--weights `{weights}`"))?;
                load(
                    self.architecture(),
                    &path,
                    input,
                    classes,
                    hw,
                    mode,
                    self.allow_missing,
                )
                .with_context(|| format!("loading --weights for model `{}`", self.model))?
            }
            None => build(self.architecture(), input, classes, hw, mode, seed)?,
        };
        model.set_checkpoint_segments(self.checkpoint_segments);
        Ok(model)
    }
}
