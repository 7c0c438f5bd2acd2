//! Error statistics of a hardware kind on random dot products: what `approx hw
//! inspect` prints for every kind.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{forward, ErrorModel, HwSpec, Layer, Result};

/// How the random dot products are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DotProductSetup {
    /// Input vectors.
    pub samples: usize,
    /// Products per dot product.
    pub fan_in: usize,
    /// Weight vectors (outputs per input vector).
    pub outputs: usize,
    /// Output-value bins of the error profile.
    pub bins: usize,
    /// Seed of the data generator.
    pub seed: u64,
}

impl Default for DotProductSetup {
    fn default() -> Self {
        Self {
            samples: 256,
            fan_in: 128,
            outputs: 32,
            bins: 10,
            seed: 0,
        }
    }
}

/// The error (hardware − exact) of the outputs whose exact value falls in `lo..hi`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorBin {
    /// Lower edge of the exact-output bin.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Outputs in the bin.
    pub count: usize,
    /// Mean of hardware − exact.
    pub mean: f64,
    /// Standard deviation of hardware − exact.
    pub std: f64,
    /// Mean of hardware − error model (what calibration would inject as bias).
    pub model_mean: f64,
}

/// The per-bin error profile of `spec` on random post-activation-like dot products:
/// inputs in `[0, 1)` with about half zeros, weights uniform in `±2/√fan_in`. Each
/// setup and seed gives the same data on any machine.
pub fn dot_product_error(spec: &HwSpec, setup: &DotProductSetup) -> Result<Vec<ErrorBin>> {
    let mut rng = ChaCha8Rng::seed_from_u64(setup.seed);
    let k = setup.fan_in.max(1);
    let input: Vec<f32> = (0..setup.samples.max(1) * k)
        .map(|_| {
            if rng.random_bool(0.5) {
                0.0
            } else {
                rng.random::<f32>()
            }
        })
        .collect();
    let w_range = 2.0 / (k as f32).sqrt();
    let weight: Vec<f32> = (0..setup.outputs.max(1) * k)
        .map(|_| rng.random_range(-w_range..w_range))
        .collect();
    let x = Tensor::from_vec(input.clone(), (input.len() / k, k), &Device::Cpu)?;
    let w = Tensor::from_vec(weight.clone(), (weight.len() / k, k), &Device::Cpu)?;
    let exact = forward(&HwSpec::Exact, Layer::Linear, &x, &w)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let hw = forward(spec, Layer::Linear, &x, &w)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let model = ErrorModel::for_spec(spec)?.predict_linear(&input, &weight, k);
    let (lo, hi) = exact
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let bins = setup.bins.max(1);
    let width = (f64::from(hi) - f64::from(lo)).max(f64::MIN_POSITIVE) / bins as f64;
    let mut sums = vec![(0usize, 0f64, 0f64, 0f64); bins];
    for ((&e, &h), &m) in exact.iter().zip(&hw).zip(&model) {
        let bin = (((f64::from(e) - f64::from(lo)) / width) as usize).min(bins - 1);
        let err = f64::from(h) - f64::from(e);
        let s = &mut sums[bin];
        s.0 += 1;
        s.1 += err;
        s.2 += err * err;
        s.3 += f64::from(h) - f64::from(m);
    }
    Ok(sums
        .iter()
        .enumerate()
        .map(|(i, &(count, sum, sq, model_sum))| {
            let n = count.max(1) as f64;
            let mean = sum / n;
            ErrorBin {
                lo: f64::from(lo) + i as f64 * width,
                hi: f64::from(lo) + (i + 1) as f64 * width,
                count,
                mean,
                std: (sq / n - mean * mean).max(0.0).sqrt(),
                model_mean: model_sum / n,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_has_no_error_and_or1_saturates_downward() {
        let setup = DotProductSetup {
            samples: 32,
            outputs: 8,
            ..Default::default()
        };
        for bin in dot_product_error(&HwSpec::Exact, &setup).unwrap() {
            assert!(bin.mean.abs() < 1e-5 && bin.std < 1e-5, "{bin:?}");
        }
        let bins = dot_product_error(&"sc:len=64,acc=or1".parse().unwrap(), &setup).unwrap();
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 32 * 8);
        // OR-1 compresses large outputs: the top bin's error is negative, and the
        // f_1 model explains most of it.
        let top = bins.iter().rev().find(|b| b.count > 0).unwrap();
        assert!(
            top.mean < -0.1 && top.model_mean.abs() < top.mean.abs() / 2.0,
            "{top:?}"
        );
    }
}
