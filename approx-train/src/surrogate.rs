//! The differentiable stand-in for the hardware: a kind's error model applied to exact
//! partial sums, optionally with calibrated error injected, as one candle op that
//! keeps only its input `s` for backward (everything else is recomputed from it).
//!
//! Both passes run in parallel over fixed chunks of [`CHUNK`] elements; chunk `i` draws
//! its noise from stream `i` of the injection's seed, so the bits do not depend on the
//! number of threads.

use approx_hw::ErrorModel;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::calibration::Calibration;
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
        s.apply_op1(self)
    }
}

impl CustomOp1 for Surrogate {
    fn name(&self) -> &'static str {
        "surrogate"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = f32_values(storage, layout, "the surrogate")?;
        let model = self.model;
        let mut out = vec![0f32; s.len()];
        out.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, s))| {
                model.values(s, out);
                if let Some(inj) = self.injection {
                    let mut rng = ChaCha8Rng::seed_from_u64(inj.seed);
                    rng.set_stream(chunk as u64);
                    for o in out.iter_mut() {
                        let x = f64::from(*o);
                        let eps: f64 = rng.sample(StandardNormal);
                        *o = (x + inj.calibration.bias(x) + inj.calibration.std(x) * eps) as f32;
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let model = self.model;
        let op = "the surrogate's backward";
        let (s, g) = (read_f32(arg), read_f32(grad));
        let (s, g) = (s.values(op)?, g.values(op)?);
        let mut d = vec![0f32; s.len()];
        d.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(d, (s, g))| {
                model.derivatives(s, d);
                match self.injection {
                    Some(inj) => {
                        let mut x = vec![0f32; s.len()];
                        model.values(s, &mut x);
                        for ((d, &g), &x) in d.iter_mut().zip(g).zip(&x) {
                            let slope = 1.0 + inj.calibration.bias_derivative(f64::from(x));
                            *d = (f64::from(g) * slope * f64::from(*d)) as f32;
                        }
                    }
                    None => {
                        for (d, &g) in d.iter_mut().zip(g) {
                            *d = (f64::from(g) * f64::from(*d)) as f32;
                        }
                    }
                }
            });
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
