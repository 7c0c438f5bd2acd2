//! The differentiable stand-in for the hardware: a kind's error model applied to exact
//! partial sums, optionally with calibrated error injected, as candle ops that keep
//! only their input (the sums) for backward; everything else is recomputed from it.
//!
//! Two ops: [`Surrogate::apply`] elementwise, and [`Surrogate::apply_split`], which
//! takes both polarities' sums stacked along the channels and returns `model(s+) −
//! model(s−)` in one pass (no copies of either half, no separate subtraction, and a
//! backward that writes both halves' gradients in place). Each also runs for its
//! gradient alone ([`Output::GradientOnly`]), where nothing reads its value:
//! `accurate` mode takes the value from the hardware.
//!
//! Both run in parallel over fixed chunks of at most [`CHUNK`] elements; each chunk
//! draws its noise from its own stream of the injection's seed, so the bits do not
//! depend on the number of threads.

use approx_hw::rng::fill_standard_normal;
use approx_hw::simd::with_avx2;
use approx_hw::ErrorModel;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::alloc::zeros;
use crate::calibration::{Calibration, ErrorPolynomials};
use crate::storage::{f32_values, read_f32};

/// Elements per parallel work unit (and per noise stream) of the surrogate.
pub const CHUNK: usize = 1 << 14;

/// Calibrated error to inject, with the seed of this forward's noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injection {
    /// The bias and std polynomials.
    pub calibration: Calibration,
    /// Seed of the noise ε (the same seed gives the same noise).
    pub seed: u64,
}

/// What a surrogate op's forward computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The surrogate's value.
    Value,
    /// Zeros of the value's shape, for an op that only carries the gradient (the
    /// gradient is the same): `accurate` mode's value comes from the bit-accurate
    /// kernel, so the error model need not be evaluated for a value nothing reads.
    GradientOnly,
}

/// `y = x + bias(x) + std(x)·ε` with `x = model(s)`, elementwise over `s`, or just
/// `y = model(s)` without injection. Gradient `(1 + bias′(x)) · model′(s)` (the noise
/// is a constant, as in REX-SC's fused kernels).
#[derive(Debug, Clone, Copy)]
pub struct Surrogate {
    /// The kind's error model.
    pub model: ErrorModel,
    /// Error injection, if any.
    pub injection: Option<Injection>,
}

impl Surrogate {
    /// Applies the surrogate to `s` (f32), recording its backward.
    pub fn apply(self, s: &Tensor) -> Result<Tensor> {
        self.apply_for(s, Output::Value)
    }

    /// [`Surrogate::apply`], computing its value or only carrying its gradient.
    pub fn apply_for(self, s: &Tensor, output: Output) -> Result<Tensor> {
        s.apply_op1(Elementwise(self, output))
    }

    /// The split-unipolar form: `sums` (f32, `[N, 2C, ...]`) holds the positive
    /// weights' sums in channels `0..C` and the negative weights' in `C..2C`; the
    /// result (`[N, C, ...]`) is the surrogate of the first half minus that of the
    /// second, each with its own calibrated error when injecting (REX-SC injects per
    /// polarity): `x± + bias(x±)`, and noise of std `√(std(x+)² + std(x−)²)`, one
    /// draw per output. That is the distribution of REX-SC's two independent draws'
    /// difference, `std(x+)·ε₁ − std(x−)·ε₂`, at half the draws (the normal draws
    /// were a third of the surrogate's forward).
    pub fn apply_split(self, sums: &Tensor) -> Result<Tensor> {
        self.apply_split_for(sums, Output::Value)
    }

    /// [`Surrogate::apply_split`], computing its value or only carrying its gradient.
    pub fn apply_split_for(self, sums: &Tensor, output: Output) -> Result<Tensor> {
        sums.apply_op1(SplitPolarity(self, output))
    }

    /// The values of [`Surrogate::apply_split`] for stacked sums `s` (per image, the
    /// `half` positive sums, then the `half` negative ones).
    pub(crate) fn split_forward(&self, s: &[f32], half: usize) -> Vec<f32> {
        let mut out = zeros(s.len() / 2);
        if half == 0 {
            return out;
        }
        let per_image = half.div_ceil(CHUNK);
        out.par_chunks_mut(half)
            .zip(s.par_chunks(2 * half))
            .enumerate()
            .for_each(|(image, (out, s))| {
                let (pos, neg) = s.split_at(half);
                out.par_chunks_mut(CHUNK)
                    .zip(pos.par_chunks(CHUNK).zip(neg.par_chunks(CHUNK)))
                    .enumerate()
                    .for_each(|(j, (out, (pos, neg)))| {
                        self.split_chunk((image * per_image + j) as u64, pos, neg, out, None)
                    });
            });
        out
    }

    /// Image `image`'s part of [`Surrogate::split_forward`] (its stacked sums `s`, its
    /// values `out`, the same bits), with every sum then overwritten by its local
    /// derivative: the factor by which [`Surrogate::split_backward_from_local`] turns
    /// the output gradient into the sum's gradient. A forward that keeps these needs
    /// no OR-n evaluation in its backward, and computes the derivative with the value
    /// (they share the exponential) while the sums are in cache.
    pub(crate) fn split_image_keeping_local(&self, image: usize, s: &mut [f32], out: &mut [f32]) {
        let half = out.len();
        let per_image = half.div_ceil(CHUNK);
        let mut local = vec![0f32; 2 * half.min(CHUNK)];
        for (j, out) in out.chunks_mut(CHUNK).enumerate() {
            let at = j * CHUNK..j * CHUNK + out.len();
            let (pos_local, neg_local) = local.split_at_mut(out.len());
            let neg_local = &mut neg_local[..out.len()];
            let (pos, neg) = s.split_at(half);
            self.split_chunk(
                (image * per_image + j) as u64,
                &pos[at.clone()],
                &neg[at.clone()],
                out,
                Some((&mut *pos_local, &mut *neg_local)),
            );
            s[at.clone()].copy_from_slice(pos_local);
            s[half..][at].copy_from_slice(neg_local);
        }
    }

    /// One chunk of [`Surrogate::split_forward`]: `out = model(pos) − model(neg)`
    /// with the injected error of both (noise from stream `unit`), and where asked
    /// the local derivatives of both polarities.
    fn split_chunk(
        &self,
        unit: u64,
        pos: &[f32],
        neg: &[f32],
        out: &mut [f32],
        local: Option<(&mut [f32], &mut [f32])>,
    ) {
        let (mut pos_local, mut neg_local) = local.unzip();
        let mut minus = vec![0f32; out.len()];
        self.model
            .evaluate(pos, Some(&mut *out), pos_local.as_deref_mut());
        self.model
            .evaluate(neg, Some(&mut minus), neg_local.as_deref_mut());
        let polynomials = self.polynomials();
        if let Some(local) = pos_local {
            finish_local(polynomials.as_ref(), out, 1.0, local);
        }
        if let Some(local) = neg_local {
            finish_local(polynomials.as_ref(), &minus, -1.0, local);
        }
        let (Some(inj), Some(polynomials)) = (self.injection, polynomials) else {
            return out.iter_mut().zip(&minus).for_each(|(o, m)| *o -= m);
        };
        let eps = polynomials
            .has_std()
            .then(|| standard_normals(inj.seed, unit, out.len()));
        with_avx2(
            #[inline(always)]
            || polynomials.inject_split(out, &minus, eps.as_deref()),
        );
    }

    /// The injection's polynomials, prepared once per chunk, if injecting.
    fn polynomials(&self) -> Option<ErrorPolynomials> {
        self.injection
            .map(|inj| ErrorPolynomials::new(&inj.calibration))
    }

    /// The gradient of [`Surrogate::split_forward`] with respect to the stacked sums
    /// for the output gradient `g`, written over the sums `s`: chunk by chunk, so
    /// that a caller holding the sums needs no second buffer of their size.
    pub(crate) fn split_backward(&self, s: &mut [f32], g: &[f32], half: usize) {
        if half == 0 {
            return;
        }
        s.par_chunks_mut(2 * half)
            .zip(g.par_chunks(half))
            .for_each(|(s, g)| {
                let (s_pos, s_neg) = s.split_at_mut(half);
                for (s, sign) in [(s_pos, 1.0), (s_neg, -1.0)] {
                    s.par_chunks_mut(CHUNK)
                        .zip(g.par_chunks(CHUNK))
                        .for_each(|(s, g)| {
                            let mut local = vec![0f32; s.len()];
                            self.local_chunk(s, sign, &mut local);
                            scale_by(&mut local, g);
                            s.copy_from_slice(&local);
                        });
                }
            });
    }

    /// [`Surrogate::split_backward`] from the local derivatives that
    /// [`Surrogate::split_image_keeping_local`] left in place of the sums: the same
    /// bits, one multiplication per sum.
    pub(crate) fn split_backward_from_local(local: &mut [f32], g: &[f32], half: usize) {
        if half == 0 {
            return;
        }
        local
            .par_chunks_mut(2 * half)
            .zip(g.par_chunks(half))
            .for_each(|(local, g)| {
                for local in local.chunks_mut(half) {
                    scale_by(local, g);
                }
            });
    }

    /// The surrogate of one chunk of sums `s` into `out`, its noise from `stream` of
    /// the injection's seed.
    fn forward_chunk(&self, s: &[f32], out: &mut [f32], stream: u64) {
        self.model.evaluate(s, Some(&mut *out), None);
        let Some(inj) = self.injection else {
            return;
        };
        let polynomials = ErrorPolynomials::new(&inj.calibration);
        if !polynomials.has_std() {
            // Only the bias: no noise to draw.
            return with_avx2(
                #[inline(always)]
                || polynomials.add_bias(out),
            );
        }
        let eps = standard_normals(inj.seed, stream, out.len());
        with_avx2(
            #[inline(always)]
            || polynomials.inject(out, &eps),
        );
    }

    /// The local derivatives of one chunk of sums `s` times `sign` (±1), into
    /// `local`: `sign · model′(s) · (1 + bias′(x))` with `x = model(s)`, the factor
    /// that turns the output gradient into the sums' gradient (the noise is a
    /// constant, as in REX-SC's fused kernels).
    fn local_chunk(&self, s: &[f32], sign: f32, local: &mut [f32]) {
        let polynomials = self.polynomials();
        if polynomials.is_none() {
            self.model.evaluate(s, None, Some(&mut *local));
            return finish_local(None, &[], sign, local);
        }
        let mut x = vec![0f32; s.len()];
        self.model.evaluate(s, Some(&mut x), Some(&mut *local));
        finish_local(polynomials.as_ref(), &x, sign, local);
    }
}

/// Turns `model′(s)` in `local` into [`Surrogate::local_chunk`]'s factor, for the
/// model's values `x` (read only with the injection's `polynomials`).
fn finish_local(polynomials: Option<&ErrorPolynomials>, x: &[f32], sign: f32, local: &mut [f32]) {
    with_avx2(
        #[inline(always)]
        || match polynomials {
            None => local.iter_mut().for_each(|d| *d *= sign),
            Some(p) => local
                .iter_mut()
                .zip(x)
                .for_each(|(d, &x)| *d = sign * (*d * p.slope(x))),
        },
    );
}

/// `len` standard normal draws ε from stream `stream` of `seed`.
fn standard_normals(seed: u64, stream: u64, len: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut eps = vec![0f32; len];
    fill_standard_normal(&mut rng, &mut eps);
    eps
}

/// `local ← local · g`, elementwise: local derivatives into gradients.
fn scale_by(local: &mut [f32], g: &[f32]) {
    with_avx2(
        #[inline(always)]
        || {
            for (l, &g) in local.iter_mut().zip(g) {
                *l *= g;
            }
        },
    );
}

/// The elementwise surrogate op.
#[derive(Debug, Clone, Copy)]
struct Elementwise(Surrogate, Output);

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        "surrogate"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut out = zeros(layout.shape().elem_count());
        if self.1 == Output::GradientOnly {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        let s = f32_values(storage, layout, "the surrogate")?;
        out.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, s))| self.0.forward_chunk(s, out, chunk as u64));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = "the surrogate's backward";
        let (s, g) = (read_f32(arg), read_f32(grad));
        let (s, g) = (s.values(op)?, g.values(op)?);
        let mut d = zeros(s.len());
        d.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(d, (s, g))| {
                self.0.local_chunk(s, 1.0, d);
                scale_by(d, g);
            });
        Ok(Some(Tensor::from_vec(d, arg.shape(), arg.device())?))
    }
}

/// The split-polarity surrogate op (see [`Surrogate::apply_split`]).
#[derive(Debug, Clone, Copy)]
struct SplitPolarity(Surrogate, Output);

/// `[N, 2C, ...]`'s elements per image and polarity (`C·...`), and the output shape
/// `[N, C, ...]`.
pub(crate) fn split_shape(shape: &Shape) -> Result<(usize, Shape)> {
    let dims = shape.dims();
    if dims.len() < 2 || !dims[1].is_multiple_of(2) {
        return Err(candle_core::Error::Msg(format!(
            "the split surrogate takes [N, 2C, ...] stacked polarities, got {dims:?}"
        )));
    }
    let mut out = dims.to_vec();
    out[1] /= 2;
    let half = out[1..].iter().product();
    Ok((half, Shape::from(out)))
}

impl CustomOp1 for SplitPolarity {
    fn name(&self) -> &'static str {
        "split-surrogate"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (half, shape) = split_shape(layout.shape())?;
        if self.1 == Output::GradientOnly {
            return Ok((CpuStorage::F32(zeros(shape.elem_count())), shape));
        }
        let s = f32_values(storage, layout, "the split surrogate")?;
        Ok((CpuStorage::F32(self.0.split_forward(&s, half)), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = "the split surrogate's backward";
        let (half, _) = split_shape(arg.shape())?;
        let (s, g) = (read_f32(arg), read_f32(grad));
        let mut d = s.values(op)?.into_owned();
        self.0.split_backward(&mut d, &g.values(op)?, half);
        Ok(Some(Tensor::from_vec(d, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn finite_difference_check(surrogate: Surrogate) {
        let s0 = [0.05f32, 0.4, 1.3, 2.2, 3.7];
        let s = Var::from_slice(&s0, 5, &Device::Cpu).unwrap();
        let grads = surrogate
            .apply(&s)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let analytic = grads.get(&s).unwrap().to_vec1::<f32>().unwrap();
        // The noise is a constant of the forward (same seed), so differences of the
        // noisy forward are a valid check too, up to the std' term REX-SC drops.
        let no_noise = Surrogate {
            injection: surrogate.injection.map(|i| Injection {
                calibration: Calibration {
                    std: [0.0; 6],
                    ..i.calibration
                },
                ..i
            }),
            ..surrogate
        };
        for (i, &v) in s0.iter().enumerate() {
            let h = 1e-2f32;
            let at = |x: f32| {
                let t = Tensor::new(&[x], &Device::Cpu).unwrap();
                no_noise.apply(&t).unwrap().to_vec1::<f32>().unwrap()[0] as f64
            };
            let fd = (at(v + h) - at(v - h)) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(analytic[i])).abs() < 2e-3,
                "{surrogate:?} at {v}: fd {fd} vs {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let cal = Calibration {
            bias: [0.01, -0.03, 0.02, -0.004, 0.0, 0.0],
            std: [0.05, 0.01, 0.0, 0.0, 0.0, 0.0],
            ..Calibration::default()
        };
        for model in [
            ErrorModel::OrN { n: 2 },
            ErrorModel::OrN { n: 1 },
            ErrorModel::Gain { gain: 0.96 },
        ] {
            finite_difference_check(Surrogate {
                model,
                injection: None,
            });
            finite_difference_check(Surrogate {
                model,
                injection: Some(Injection {
                    calibration: cal,
                    seed: 3,
                }),
            });
        }
    }

    #[test]
    fn split_is_the_difference_of_the_halves_in_value_and_gradient() {
        // [N = 2, 2C = 6, 5]: halves of 3 channels, sums in (−0.5, 3.5).
        let data: Vec<f32> = (0..60)
            .map(|i| ((i * 37) % 41) as f32 / 10.0 - 0.5)
            .collect();
        let s = Var::from_vec(data, (2, 6, 5), &Device::Cpu).unwrap();
        let r = Tensor::from_vec(
            (0..30).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(),
            (2, 3, 5),
            &Device::Cpu,
        )
        .unwrap();
        let cal = Calibration {
            bias: [0.01, -0.03, 0.02, -0.004, 0.0, 0.0],
            std: [0.05, 0.01, 0.0, 0.0, 0.0, 0.0],
            range: [0.0, 3.0],
        };
        for injection in [
            None,
            Some(Injection {
                calibration: cal,
                seed: 9,
            }),
        ] {
            let surrogate = Surrogate {
                model: ErrorModel::OrN { n: 2 },
                injection,
            };
            let split = surrogate.apply_split(&s).unwrap();
            let halves = (surrogate.apply(&s.narrow(1, 0, 3).unwrap()).unwrap()
                - surrogate.apply(&s.narrow(1, 3, 3).unwrap()).unwrap())
            .unwrap();
            assert_eq!(split.dims(), &[2, 3, 5]);
            if injection.is_none() {
                assert_eq!(
                    split.to_vec3::<f32>().unwrap(),
                    halves.to_vec3::<f32>().unwrap()
                );
            }
            // The noise is a constant: the gradients agree with or without it.
            let grad = |y: Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(&s).unwrap().to_vec3::<f32>().unwrap()
            };
            assert_eq!(grad(split), grad(halves), "{injection:?}");
        }
        assert!(Surrogate {
            model: ErrorModel::OrN { n: 2 },
            injection: None,
        }
        .apply_split(&Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap())
        .is_err());
    }

    /// The split form's noise is the difference of two independent draws per output,
    /// `std(x+)·ε₁ − std(x−)·ε₂`, in distribution: zero mean, variance `std(x+)² +
    /// std(x−)²`, around the difference of the biased values.
    #[test]
    fn split_noise_has_the_std_of_both_polarities() {
        let (per_half, s_pos, s_neg) = (200_000, 1.5f32, 0.25f32);
        let mut data = vec![s_pos; per_half];
        data.extend(vec![s_neg; per_half]);
        let sums = Tensor::from_vec(data, (1, 2, per_half), &Device::Cpu).unwrap();
        let calibration = Calibration {
            bias: [0.01, -0.03, 0.02, 0.0, 0.0, 0.0],
            std: [0.02, 0.04, 0.0, 0.0, 0.0, 0.0],
            range: [0.0, 3.0],
        };
        let model = ErrorModel::OrN { n: 2 };
        let y = Surrogate {
            model,
            injection: Some(Injection {
                calibration,
                seed: 5,
            }),
        }
        .apply_split(&sums)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let (x_pos, x_neg) = (model.value(f64::from(s_pos)), model.value(f64::from(s_neg)));
        let centre = x_pos + calibration.bias(x_pos) - x_neg - calibration.bias(x_neg);
        let want_std = calibration.std(x_pos).hypot(calibration.std(x_neg));
        let n = y.len() as f64;
        let mean = y.iter().map(|&v| f64::from(v) - centre).sum::<f64>() / n;
        let var = y
            .iter()
            .map(|&v| (f64::from(v) - centre - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 3.0 * want_std / n.sqrt() + 1e-6, "mean {mean}");
        assert!(
            (var.sqrt() / want_std - 1.0).abs() < 0.01,
            "std {} vs {want_std}",
            var.sqrt()
        );
    }

    #[test]
    fn injected_noise_is_seeded() {
        let s = Tensor::new(&[0.5f32; 64], &Device::Cpu).unwrap();
        let cal = Calibration {
            std: [0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
            ..Default::default()
        };
        let run = |seed| {
            Surrogate {
                model: ErrorModel::OrN { n: 2 },
                injection: Some(Injection {
                    calibration: cal,
                    seed,
                }),
            }
            .apply(&s)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
