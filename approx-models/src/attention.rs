//! The pieces of a Vision Transformer that are not conv or linear layers: layer
//! norm, the token sequence (class token and position embedding), and multi-head
//! self-attention, whose two activation-by-activation matmuls (`Q·Kᵀ` and `A·V`)
//! stay exact unless a hardware map names them.

use approx_hw::{HwSpec, Layer};
use approx_train::mode::ExecMode;
use approx_train::ste::straight_through;
use candle_core::{Result, Tensor, Var, D};

use crate::store::{Init, ParamStore};

/// Layer normalisation over the last dimension (ε = 1e-6, as timm's ViT).
pub struct LayerNorm {
    weight: Var,
    bias: Var,
}

impl LayerNorm {
    /// The layer norm `prefix` (`prefix.weight`, `prefix.bias`) over `dim` features.
    pub fn new(store: &mut ParamStore, prefix: &str, dim: usize) -> Self {
        Self {
            weight: store.param(&format!("{prefix}.weight"), &[dim], Init::Const(1.0)),
            bias: store.param(&format!("{prefix}.bias"), &[dim], Init::Const(0.0)),
        }
    }

    /// The trained parameters: scale and shift.
    pub fn params(&self) -> [&Var; 2] {
        [&self.weight, &self.bias]
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + 1e-6)?.sqrt()?)?
            .broadcast_mul(self.weight.as_tensor())?
            .broadcast_add(self.bias.as_tensor())
    }
}

/// Image features to tokens: `[N, D, h, w]` to `[N, 1 + h·w, D]`, a learned class
/// token first, plus a learned position embedding.
pub struct Tokens {
    cls: Var,
    pos: Var,
}

impl Tokens {
    /// `cls_token` `[1, 1, dim]` and `pos_embed` `[1, 1 + patches, dim]` (timm's
    /// names).
    pub fn new(store: &mut ParamStore, dim: usize, patches: usize) -> Self {
        Self {
            cls: store.param("cls_token", &[1, 1, dim], Init::Uniform(0.02)),
            pos: store.param("pos_embed", &[1, 1 + patches, dim], Init::Uniform(0.02)),
        }
    }

    /// The trained parameters.
    pub fn params(&self) -> [&Var; 2] {
        [&self.cls, &self.pos]
    }

    /// The token sequence of the patch features `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, d, _, _) = x.dims4()?;
        let patches = x.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls.as_tensor().broadcast_as((n, 1, d))?;
        Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(self.pos.as_tensor())
    }
}

/// An activation-by-activation matmul `a · bᵀ` (batched over the first dimension) on
/// hardware: exact in float mode or on exact hardware; otherwise the bit-accurate
/// value in every mode, with the exact product's gradient (straight-through), since
/// neither operand is a trained weight with a calibrated surrogate.
pub struct ActivationMatmul {
    name: String,
    hw: HwSpec,
}

impl ActivationMatmul {
    /// The matmul `name` (e.g. `blocks.0.attn.qk`) on `hw`.
    pub fn new(name: String, hw: HwSpec) -> Self {
        Self { name, hw }
    }

    /// Its hardware.
    pub fn hw(&self) -> &HwSpec {
        &self.hw
    }

    /// `a [B, M, K] · b [B, N, K]ᵀ = [B, M, N]`.
    pub fn forward(&self, a: &Tensor, b: &Tensor, mode: ExecMode) -> Result<Tensor> {
        let exact = a.matmul(&b.t()?)?;
        if self.hw == HwSpec::Exact || mode == ExecMode::Float {
            return Ok(exact);
        }
        let (a, b) = (a.detach().contiguous()?, b.detach().contiguous()?);
        let outs = (0..a.dim(0)?)
            .map(|i| {
                approx_hw::forward(&self.hw, Layer::Linear, &a.get(i)?, &b.get(i)?).map_err(|e| {
                    candle_core::Error::Msg(format!("`{}` on {}: {e}", self.name, self.hw))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        straight_through(&exact, &Tensor::stack(&outs, 0)?)
    }
}

/// Multi-head self-attention on the output of a `qkv` linear layer: `[N, T, 3·D]`
/// (queries, keys, values) to `[N, T, D]`, before the output projection.
pub struct SelfAttention {
    heads: usize,
    /// `Q·Kᵀ`.
    scores: ActivationMatmul,
    /// `A·V` (computed as `A·(Vᵀ)ᵀ`).
    mix: ActivationMatmul,
}

impl SelfAttention {
    /// Attention with `heads` heads and its two matmuls.
    pub fn new(heads: usize, scores: ActivationMatmul, mix: ActivationMatmul) -> Self {
        Self { heads, scores, mix }
    }

    /// The two activation matmuls.
    pub fn matmuls(&self) -> [&ActivationMatmul; 2] {
        [&self.scores, &self.mix]
    }

    /// `softmax(Q·Kᵀ/√d)·V` per head, heads concatenated.
    pub fn forward(&self, qkv: &Tensor, mode: ExecMode) -> Result<Tensor> {
        let (n, t, three_d) = qkv.dims3()?;
        let (d, h) = (three_d / 3, self.heads);
        let dh = d / h;
        // [N, T, 3, H, dh] → three [N·H, T, dh].
        let qkv = qkv.reshape((n, t, 3, h, dh))?.permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| -> Result<Tensor> { qkv.get(i)?.reshape((n * h, t, dh)) };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (self
            .scores
            .forward(&q.contiguous()?, &k.contiguous()?, mode)?
            / (dh as f64).sqrt())?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let vt = v.transpose(1, 2)?.contiguous()?;
        let out = self.mix.forward(&attn.contiguous()?, &vt, mode)?;
        out.reshape((n, h, t, dh))?
            .transpose(1, 2)?
            .reshape((n, t, d))
    }
}
