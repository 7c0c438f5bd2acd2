//! Standard layer workloads for benchmarks: the conv layers of TinyConv at CIFAR shapes
//! and deterministic post-activation-like data, so that `approx bench` and the criterion
//! benches time exactly the same work.

use candle_core::{Device, Tensor};

use crate::geometry::Conv2dParams;

/// One conv layer of a benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayer {
    /// Layer name, e.g. `conv2`.
    pub name: &'static str,
    /// Input channels, height, width.
    pub input: (usize, usize, usize),
    /// Output channels (filters).
    pub filters: usize,
    /// Square kernel size in pixels.
    pub kernel: usize,
    /// Zero padding on each side, in pixels.
    pub padding: usize,
}

/// TinyConv's four SC layers (spec §8.1) for 3x32x32 inputs: 5x5 convs with padding 2
/// (3→32 at 32x32, 32→32 at 16x16, 32→64 at 8x8) and the 4x4 "fc" conv 64→10.
pub const TINYCONV: [ConvLayer; 4] = [
    ConvLayer {
        name: "conv1",
        input: (3, 32, 32),
        filters: 32,
        kernel: 5,
        padding: 2,
    },
    ConvLayer {
        name: "conv2",
        input: (32, 16, 16),
        filters: 32,
        kernel: 5,
        padding: 2,
    },
    ConvLayer {
        name: "conv3",
        input: (32, 8, 8),
        filters: 64,
        kernel: 5,
        padding: 2,
    },
    ConvLayer {
        name: "conv4",
        input: (64, 4, 4),
        filters: 10,
        kernel: 4,
        padding: 0,
    },
];

impl ConvLayer {
    /// Stride 1 and the layer's padding.
    pub fn params(&self) -> Conv2dParams {
        Conv2dParams::new(1, self.padding)
    }

    /// A batch of `batch` post-activation-like inputs (about half zeros, the rest small
    /// multiples of 1/128, as after Hardtanh(0, 1) in a trained net) and small signed
    /// weights on the 1/128 grid, from a fixed generator seeded by `seed`. Such data
    /// keeps OR-n away from saturation, unlike uniform data.
    pub fn tensors(&self, batch: usize, seed: u64) -> candle_core::Result<(Tensor, Tensor)> {
        let (c, h, w) = self.input;
        let k = self.kernel;
        let mut rng = Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let input: Vec<f32> = (0..batch * c * h * w)
            .map(|_| {
                let r = rng.next();
                if r.is_multiple_of(2) {
                    0.0
                } else {
                    (r / 2 % 24) as f32 / 128.0
                }
            })
            .collect();
        let weight: Vec<f32> = (0..self.filters * c * k * k)
            .map(|_| (rng.next() % 41) as f32 / 128.0 - 20.0 / 128.0)
            .collect();
        Ok((
            Tensor::from_vec(input, (batch, c, h, w), &Device::Cpu)?,
            Tensor::from_vec(weight, (self.filters, c, k, k), &Device::Cpu)?,
        ))
    }
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants), high bits out.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
}
