//! Batch normalisation with PyTorch's names and semantics, and REX-SC's quantized
//! variant (`specs/sc-rexsc.md` §1.5).

use candle_core::{Result, Tensor, Var};

use crate::store::{Init, ParamStore};
use approx_train::ste::straight_through;

/// PyTorch's default batch-norm momentum and epsilon.
const MOMENTUM: f64 = 0.1;
const EPS: f64 = 1e-5;

/// `BatchNorm2d` (over N, H, W of NCHW) or `BatchNorm1d` (over N of `[N, C]`):
/// `weight`, `bias`, `running_mean`, `running_var` (and torchvision's
/// `num_batches_tracked`, accepted and ignored).
pub struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    /// REX-SC's `BatchNorm2d_fixed`: the forward value is the affine map quantized to
    /// 8 bits with a shared power-of-two scale; the gradient is the float one's.
    quantized: bool,
}

impl BatchNorm {
    /// The batch norm `prefix` over `channels`.
    pub fn new(store: &mut ParamStore, prefix: &str, channels: usize, quantized: bool) -> Self {
        let weight = store.param(&format!("{prefix}.weight"), &[channels], Init::Const(1.0));
        let bias = store.param(&format!("{prefix}.bias"), &[channels], Init::Const(0.0));
        let running_mean = store.param(
            &format!("{prefix}.running_mean"),
            &[channels],
            Init::Const(0.0),
        );
        let running_var = store.param(
            &format!("{prefix}.running_var"),
            &[channels],
            Init::Const(1.0),
        );
        store.ignore(&format!("{prefix}.num_batches_tracked"));
        Self {
            weight,
            bias,
            running_mean,
            running_var,
            quantized,
        }
    }

    /// Normalises `x` (`[N, C, H, W]` or `[N, C]`): batch statistics when `train`
    /// (updating the running ones with momentum 0.1, unbiased variance), running ones
    /// otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let rank = x.rank();
        let c = x.dim(1)?;
        // Channels last, flattened: [rows, C].
        let rows = if rank == 4 {
            x.permute((0, 2, 3, 1))?.reshape(((), c))?
        } else {
            x.clone()
        };
        let (mean, var) = if train {
            let n = rows.dim(0)? as f64;
            let mean = rows.mean(0)?;
            let var = rows.broadcast_sub(&mean)?.sqr()?.mean(0)?;
            let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
            self.running_mean.set(
                &((self.running_mean.as_tensor() * (1.0 - MOMENTUM))?
                    + (mean.detach() * MOMENTUM)?)?,
            )?;
            self.running_var.set(
                &((self.running_var.as_tensor() * (1.0 - MOMENTUM))? + (unbiased * MOMENTUM)?)?,
            )?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
            )
        };
        let inv = (var + EPS)?.sqrt()?.recip()?;
        let k = (self.weight.as_tensor() * &inv)?;
        let b = (self.bias.as_tensor() - (&mean * &k)?)?;
        let shaped = |t: &Tensor| -> Result<Tensor> {
            if rank == 4 {
                t.reshape((1, c, 1, 1))
            } else {
                t.reshape((1, c))
            }
        };
        let y = x.broadcast_mul(&shaped(&k)?)?.broadcast_add(&shaped(&b)?)?;
        if !self.quantized {
            return Ok(y);
        }
        let (kq, bq) = quantize_affine(&k.detach(), &b.detach())?;
        let yq = x
            .detach()
            .broadcast_mul(&shaped(&kq)?)?
            .broadcast_add(&shaped(&bq)?)?;
        straight_through(&y, &yq)
    }
}

/// REX-SC's `quantize_shift`: `scale = 2^ceil(log2(3 · mean(k)))`, then `k` and `b`
/// rounded (half to even) to 1/128 of the scale and clamped to ±127/128 of it.
fn quantize_affine(k: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean_k = f64::from(k.mean_all()?.to_scalar::<f32>()?);
    let scale = if mean_k > 0.0 {
        2f64.powf((3.0 * mean_k).log2().ceil())
    } else {
        1.0
    };
    let q = |t: &Tensor| -> Result<Tensor> {
        let v: Vec<f32> = t
            .to_vec1::<f32>()?
            .iter()
            .map(|&x| {
                ((f64::from(x) / scale * 128.0)
                    .round_ties_even()
                    .clamp(-127.0, 127.0)
                    / 128.0
                    * scale) as f32
            })
            .collect();
        Tensor::from_vec(v, t.shape(), t.device())
    };
    Ok((q(k)?, q(b)?))
}
