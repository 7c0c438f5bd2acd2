//! The `analog` layer kernel and candle op: im2col + one GEMM per tile, with noise
//! management, DAC, noise, ADC and the digital sum fused around it.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::spec::AnalogSpec;
use crate::im2col::{im2col, scatter_outputs};
use crate::layer::{DenseKernel, Layer};
use crate::rng::{fill_standard_normal, mix};
use crate::round::ties_even_small;
use crate::{ConvGeometry, Result};

/// Output pixels per work item (and per output-noise stream).
const CHUNK: usize = 256;

/// An `analog` layer (conv2d or linear) as a forward-only candle op.
///
/// Exactly, per tile and input vector, with `L_in = 2^(inp_bits−1) − 1` and
/// `L_out = 2^(out_bits−1) − 1` levels per side and `b = out_bound`:
/// `x_lvl = rhe(x · L_in / α)`, `y = Σ W̃·x_lvl / L_in + out_noise·ζ`,
/// `ŷ = rhe(clamp(y, −b, b) · L_out / b) · b / L_out`, output `+= ŷ · α · ω`
/// (see the [module docs](super) for `α`, `ω` and `W̃`).
#[derive(Debug, Clone, Copy)]
pub struct AnalogOp {
    spec: AnalogSpec,
    layer: Layer,
    draw: u64,
}

impl AnalogOp {
    /// The op for `spec`, noise draw 0.
    pub fn new(spec: AnalogSpec, layer: Layer) -> Self {
        Self {
            spec,
            layer,
            draw: 0,
        }
    }

    /// The same op with the noise of forward number `draw` (training draws fresh
    /// noise every step; the same seed and draw give the same bits).
    pub fn with_draw(self, draw: u64) -> Self {
        Self { draw, ..self }
    }

    /// Runs the op.
    pub fn apply(
        &self,
        input: &candle_core::Tensor,
        weight: &candle_core::Tensor,
    ) -> Result<candle_core::Tensor> {
        DenseKernel::apply(self, input, weight)
    }

    /// The generator of noise stream `stream` of kind `what` (0 weights, 1 outputs).
    fn rng(&self, what: u64, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(self.spec.seed ^ mix(self.draw)) ^ what));
        rng.set_stream(stream);
        rng
    }

    /// The normalised, noisy weights `W̃` (`[O][K]`) and each tile's `ω`.
    fn tile_weights(&self, geo: &ConvGeometry, weight: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let fan_in = geo.fan_in();
        let rows = self.spec.tile_rows;
        let mut noisy = vec![0f32; weight.len()];
        let mut omegas = Vec::new();
        for (t, r0) in (0..fan_in).step_by(rows).enumerate() {
            let r1 = (r0 + rows).min(fan_in);
            let omega = weight
                .chunks(fan_in)
                .flat_map(|w| &w[r0..r1])
                .fold(0f32, |m, v| m.max(v.abs()));
            omegas.push(omega);
            if omega == 0.0 {
                continue;
            }
            let mut eps = vec![0f32; geo.out_channels * (r1 - r0)];
            if self.spec.w_noise > 0.0 {
                fill_standard_normal(&mut self.rng(0, t as u64), &mut eps);
            }
            let rows_eps = eps.chunks(r1 - r0);
            for ((w, noisy), eps) in weight
                .chunks(fan_in)
                .zip(noisy.chunks_mut(fan_in))
                .zip(rows_eps)
            {
                for ((n, &w), &e) in noisy[r0..r1].iter_mut().zip(&w[r0..r1]).zip(eps) {
                    *n = w / omega + self.spec.w_noise * e;
                }
            }
        }
        (noisy, omegas)
    }
}

impl DenseKernel for AnalogOp {
    const NAME: &'static str = "analog";

    fn layer(&self) -> Layer {
        self.layer
    }

    fn run(&self, geo: &ConvGeometry, input: &[f32], weight: &[f32]) -> Result<Vec<f32>> {
        let spec = &self.spec;
        let fan_in = geo.fan_in();
        let out_ch = geo.out_channels;
        let (noisy, omegas) = self.tile_weights(geo, weight);
        let l_in = ((1u32 << (spec.inp_bits - 1)) - 1) as f32;
        let l_out = ((1u32 << (spec.out_bits - 1)) - 1) as f32;
        let bound = spec.out_bound;
        let pixels = geo.batch * geo.out_pixels();
        let chunks: Vec<(usize, Vec<f32>)> = (0..pixels.div_ceil(CHUNK))
            .into_par_iter()
            .map_init(
                || {
                    let outputs = vec![0f32; out_ch * CHUNK];
                    (vec![0f32; fan_in * CHUNK], outputs.clone(), outputs)
                },
                |(col, y, eps), chunk| {
                    let start = chunk * CHUNK;
                    let len = CHUNK.min(pixels - start);
                    let col = &mut col[..fan_in * len];
                    // Each tile's output noise, one sample per output.
                    let eps = &mut eps[..out_ch * len];
                    im2col(geo, input, start..start + len, col);
                    let mut out = vec![0f32; out_ch * len];
                    let (mut alpha, mut gain) = (vec![0f32; len], vec![0f32; len]);
                    for (t, r0) in (0..fan_in).step_by(spec.tile_rows).enumerate() {
                        let r1 = (r0 + spec.tile_rows).min(fan_in);
                        let omega = omegas[t];
                        if omega == 0.0 {
                            continue;
                        }
                        // Noise management: the abs-max of each input vector in this tile.
                        let rows = &mut col[r0 * len..r1 * len];
                        alpha.fill(0.0);
                        for row in rows.chunks(len) {
                            for (m, x) in alpha.iter_mut().zip(row) {
                                *m = m.max(x.abs());
                            }
                        }
                        // DAC: integer levels, in place (each tile's rows are used once).
                        for (g, &a) in gain.iter_mut().zip(alpha.iter()) {
                            *g = if a > 0.0 { l_in / a } else { 0.0 };
                        }
                        for row in rows.chunks_mut(len) {
                            for (x, g) in row.iter_mut().zip(&gain) {
                                *x = ties_even_small(*x * g);
                            }
                        }
                        // SAFETY: y is O x len column-major (pixel g's outputs contiguous);
                        // lhs is the O x (r1−r0) block of the row-major O x K weights; rhs
                        // the (r1−r0) x len block of the pixel-major col (column stride K).
                        unsafe {
                            gemm::gemm(
                                out_ch,
                                len,
                                r1 - r0,
                                y.as_mut_ptr(),
                                out_ch as isize,
                                1,
                                false,
                                noisy.as_ptr().add(r0),
                                1,
                                fan_in as isize,
                                col.as_ptr().add(r0 * len),
                                1,
                                len as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                        // Output noise, ADC and the digital sum, fused.
                        if spec.out_noise > 0.0 {
                            let stream = (chunk * fan_in.div_ceil(spec.tile_rows) + t) as u64;
                            fill_standard_normal(&mut self.rng(1, stream), eps);
                        }
                        for (((o_px, y_px), e_px), &a) in out
                            .chunks_mut(out_ch)
                            .zip(y.chunks(out_ch))
                            .zip(eps.chunks(out_ch))
                            .zip(&alpha)
                        {
                            let scale = (bound / l_out) * (a * omega);
                            for ((o, &s), &e) in o_px.iter_mut().zip(y_px).zip(e_px) {
                                let v = s / l_in + spec.out_noise * e;
                                let level =
                                    ties_even_small(v.clamp(-bound, bound) * (l_out / bound));
                                *o += level * scale;
                            }
                        }
                    }
                    (start, out)
                },
            )
            .collect();
        let mut out = vec![0f32; geo.batch * out_ch * geo.out_pixels()];
        for (start, values) in chunks {
            let len = values.len() / out_ch;
            scatter_outputs(geo, &values, (1, out_ch), start..start + len, &mut out);
        }
        Ok(out)
    }
}
