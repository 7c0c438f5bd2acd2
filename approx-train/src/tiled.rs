//! The surrogate of a tiled crossbar (analog): `y = Σ_t scale_t · model(s_t /
//! scale_t)`, where `s_t` is the layer's dot product over tile `t`'s fan-in rows only
//! and `scale_t` (a constant of the step, no gradient) is the tile's input abs-max per
//! output pixel times its weight abs-max.
//!
//! One candle op over `(input, weight)`: the input is unfolded once per image and each
//! tile's sums are a GEMM over that tile's rows alone, so the tiles together cost one
//! conv, where a masked conv per tile cost one conv each (with fan-in over the whole
//! layer). The op keeps only its inputs; backward recomputes each tile's sums (one
//! more forward GEMM) rather than storing them.

use std::ops::Range;

use approx_hw::im2col::{col2im_image, im2col, scatter_outputs};
use approx_hw::{ConvGeometry, ErrorModel, Layer};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::conv::{gemm_rm, WEIGHT_GRAD_GROUPS};
use crate::storage::{f32_values, read_f32};

/// Images per work unit when an image has a single output pixel (linear layers), so
/// that each tile's GEMM has enough columns.
const IMAGES_PER_PIXEL_CHUNK: usize = 256;

/// `Σ_t scale_t · model(s_t / scale_t)` over tiles of `rows` fan-in rows of `layer`
/// (conv2d: NCHW input, OIHW weight; linear: `[N, K]`, `[O, K]`), with gradients for
/// both operands through `model′(s_t / scale_t)`.
pub fn tiled_surrogate(
    input: &Tensor,
    weight: &Tensor,
    layer: Layer,
    rows: usize,
    model: ErrorModel,
) -> Result<Tensor> {
    input.apply_op2(weight, TiledSurrogate { layer, rows, model })
}

/// The candle op behind [`tiled_surrogate`].
#[derive(Debug, Clone, Copy)]
struct TiledSurrogate {
    layer: Layer,
    rows: usize,
    model: ErrorModel,
}

/// The tiles of one call: each tile's fan-in rows, its weights as a dense
/// `O x rows` block, and its weight abs-max `ω_t`.
struct Tiles {
    geo: ConvGeometry,
    model: ErrorModel,
    rows: Vec<Range<usize>>,
    weights: Vec<Vec<f32>>,
    omega: Vec<f32>,
}

impl Tiles {
    fn new(
        op: &TiledSurrogate,
        input: &[usize],
        weight_dims: &[usize],
        weight: &[f32],
    ) -> Result<Self> {
        let geo = op
            .layer
            .geometry(input, weight_dims)
            .map_err(|e| candle_core::Error::Msg(format!("the tiled surrogate: {e}")))?;
        if op.rows == 0 {
            return Err(candle_core::Error::Msg(
                "the tiled surrogate needs at least one row per tile".into(),
            ));
        }
        let fan_in = geo.fan_in();
        let rows: Vec<Range<usize>> = (0..fan_in)
            .step_by(op.rows)
            .map(|r0| r0..(r0 + op.rows).min(fan_in))
            .collect();
        let weights: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| {
                weight
                    .chunks(fan_in)
                    .flat_map(|w| &w[r.clone()])
                    .copied()
                    .collect()
            })
            .collect();
        let omega = weights
            .iter()
            .map(|w| w.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        Ok(Self {
            geo,
            model: op.model,
            rows,
            weights,
            omega,
        })
    }

    /// Images per work unit.
    fn chunk_images(&self) -> usize {
        if self.geo.out_pixels() == 1 {
            IMAGES_PER_PIXEL_CHUNK
        } else {
            1
        }
    }

    /// Unfolds `images` of `input` (fan-in-major, `fan_in x len`) and calls `f(t, s,
    /// scale, col_t)` for each tile `t` with its sums `s` (`O x len`), per-pixel
    /// `scale` (`α_t·ω_t`, 0 where the tile sees only zeros) and its rows of the
    /// unfolded input `col_t` (`rows x len`).
    fn each_tile(
        &self,
        input: &[f32],
        images: Range<usize>,
        buf: &mut Buffers,
        mut f: impl FnMut(usize, &[f32], &[f32], &[f32]),
    ) {
        let per_image = self.geo.out_pixels();
        let len = images.len() * per_image;
        let out_ch = self.geo.out_channels;
        let col = &mut buf.col[..self.geo.fan_in() * len];
        im2col(
            &self.geo,
            input,
            images.start * per_image..images.end * per_image,
            col,
        );
        for (t, rows) in self.rows.iter().enumerate() {
            let col_t = &col[rows.start * len..rows.end * len];
            let scale = &mut buf.scale[..len];
            scale.fill(0.0);
            for row in col_t.chunks(len) {
                for (a, x) in scale.iter_mut().zip(row) {
                    *a = a.max(x.abs());
                }
            }
            scale.iter_mut().for_each(|a| *a *= self.omega[t]);
            let s = &mut buf.sums[..out_ch * len];
            gemm_rm(
                out_ch,
                len,
                rows.len(),
                (&self.weights[t], false),
                (col_t, false),
                s,
                false,
            );
            f(t, s, scale, col_t);
        }
    }
}

/// Per-thread scratch: the unfolded input, one tile's sums and scales.
struct Buffers {
    col: Vec<f32>,
    sums: Vec<f32>,
    scale: Vec<f32>,
}

impl Buffers {
    fn new(tiles: &Tiles) -> Self {
        let len = tiles.chunk_images() * tiles.geo.out_pixels();
        Self {
            col: vec![0f32; tiles.geo.fan_in() * len],
            sums: vec![0f32; tiles.geo.out_channels * len],
            scale: vec![0f32; len],
        }
    }
}

/// `unit = s / scale` per output (`O x len`, scale per pixel), 0 where the scale is.
fn normalise(s: &[f32], scale: &[f32], unit: &mut [f32]) {
    for (u, s) in unit.chunks_mut(scale.len()).zip(s.chunks(scale.len())) {
        for ((u, &s), &a) in u.iter_mut().zip(s).zip(scale) {
            *u = if a > 0.0 { s / a } else { 0.0 };
        }
    }
}

/// The work units: ranges of whole images.
fn chunks(batch: usize, per_chunk: usize) -> Vec<Range<usize>> {
    (0..batch)
        .step_by(per_chunk)
        .map(|i| i..(i + per_chunk).min(batch))
        .collect()
}

impl CustomOp2 for TiledSurrogate {
    fn name(&self) -> &'static str {
        "tiled-surrogate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let input = f32_values(s1, l1, "the tiled surrogate")?;
        let weight = f32_values(s2, l2, "the tiled surrogate")?;
        let tiles = Tiles::new(self, l1.dims(), l2.dims(), &weight)?;
        let geo = &tiles.geo;
        let (out_ch, per_image) = (geo.out_channels, geo.out_pixels());
        let parts: Vec<(Range<usize>, Vec<f32>)> = chunks(geo.batch, tiles.chunk_images())
            .into_par_iter()
            .map_init(
                || Buffers::new(&tiles),
                |buf, images| {
                    let len = images.len() * per_image;
                    let mut y = vec![0f32; out_ch * len];
                    let (mut unit, mut value) =
                        (vec![0f32; out_ch * len], vec![0f32; out_ch * len]);
                    tiles.each_tile(&input, images.clone(), buf, |_, s, scale, _| {
                        normalise(s, scale, &mut unit);
                        tiles.model.evaluate(&unit, Some(&mut value), None);
                        for (y, v) in y.chunks_mut(len).zip(value.chunks(len)) {
                            for ((y, &v), &a) in y.iter_mut().zip(v).zip(scale) {
                                *y += a * v;
                            }
                        }
                    });
                    (images, y)
                },
            )
            .collect();
        let dims = self.layer.out_shape(geo);
        let mut out = vec![0f32; dims.iter().product()];
        for (images, y) in parts {
            let pixels = images.start * per_image..images.end * per_image;
            scatter_outputs(geo, &y, (pixels.len(), 1), pixels, &mut out);
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = "the tiled surrogate's backward";
        let (x, w, g) = (read_f32(input), read_f32(weight), read_f32(grad));
        let (x, w, g) = (x.values(op)?, w.values(op)?, g.values(op)?);
        let tiles = Tiles::new(self, input.dims(), weight.dims(), &w)?;
        let geo = &tiles.geo;
        let (fan_in, out_ch, per_image) = (geo.fan_in(), geo.out_channels, geo.out_pixels());
        let image_len = geo.in_image_len();
        let units = chunks(geo.batch, tiles.chunk_images());
        let per_group = units.len().div_ceil(WEIGHT_GRAD_GROUPS).max(1);
        let mut dx = vec![0f32; geo.batch * image_len];
        // Each group: its units' input gradients (disjoint images; every group but the
        // last is full) and its own weight-gradient sum, in unit order.
        let group_len = per_group * tiles.chunk_images() * image_len;
        let dw_groups: Vec<Vec<f32>> = units
            .par_chunks(per_group)
            .zip(dx.par_chunks_mut(group_len))
            .map(|(group, dx)| {
                let mut buf = Buffers::new(&tiles);
                let mut dw = vec![0f32; out_ch * fan_in];
                let first = group[0].start;
                for images in group {
                    let len = images.len() * per_image;
                    // The chunk's output gradient, channel-major (`O x len`).
                    let mut g_chunk = vec![0f32; out_ch * len];
                    for (j, pixel) in (images.start * per_image..images.end * per_image).enumerate()
                    {
                        let (n, p) = (pixel / per_image, pixel % per_image);
                        for o in 0..out_ch {
                            g_chunk[o * len + j] = g[(n * out_ch + o) * per_image + p];
                        }
                    }
                    let mut dcol = vec![0f32; fan_in * len];
                    let (mut unit, mut g_t) = (vec![0f32; out_ch * len], vec![0f32; out_ch * len]);
                    let mut dw_t = Vec::new();
                    tiles.each_tile(&x, images.clone(), &mut buf, |t, s, scale, col_t| {
                        let rows = &tiles.rows[t];
                        // g_t = g · model′(s / scale), 0 where the tile is silent.
                        normalise(s, scale, &mut unit);
                        tiles.model.evaluate(&unit, None, Some(&mut g_t));
                        for (d, g) in g_t.chunks_mut(len).zip(g_chunk.chunks(len)) {
                            for ((d, &g), &a) in d.iter_mut().zip(g).zip(scale) {
                                *d = if a > 0.0 { *d * g } else { 0.0 };
                            }
                        }
                        dw_t.resize(out_ch * rows.len(), 0.0);
                        gemm_rm(
                            out_ch,
                            rows.len(),
                            len,
                            (&g_t, false),
                            (col_t, true),
                            &mut dw_t,
                            false,
                        );
                        for (dw, d) in dw.chunks_mut(fan_in).zip(dw_t.chunks(rows.len())) {
                            dw[rows.clone()]
                                .iter_mut()
                                .zip(d)
                                .for_each(|(a, b)| *a += b);
                        }
                        gemm_rm(
                            rows.len(),
                            len,
                            out_ch,
                            (&tiles.weights[t], true),
                            (&g_t, false),
                            &mut dcol[rows.start * len..rows.end * len],
                            false,
                        );
                    });
                    for (j, n) in images.clone().enumerate() {
                        let dx_image = &mut dx[(n - first) * image_len..][..image_len];
                        if len == per_image {
                            col2im_image(geo, &dcol, dx_image);
                        } else {
                            let column: Vec<f32> = (0..fan_in).map(|k| dcol[k * len + j]).collect();
                            col2im_image(geo, &column, dx_image);
                        }
                    }
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; out_ch * fan_in];
        for part in dw_groups {
            dw.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
        }
        let dx = Tensor::from_vec(dx, input.shape(), input.device())?;
        let dw = Tensor::from_vec(dw, weight.shape(), weight.device())?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surrogate::Surrogate;
    use approx_hw::Conv2dParams;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64, zero_every: usize) -> Var {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| {
                let h = approx_hw::rng::mix(seed ^ i as u64);
                if zero_every > 0 && i % zero_every == 0 {
                    0.0
                } else {
                    (h >> 40) as f32 / (1u64 << 24) as f32 - 0.4
                }
            })
            .collect();
        Var::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// The surrogate from candle ops: per tile, the layer with the other rows' weights
    /// masked to zero, divided by the (detached) scale, the model, times the scale.
    fn reference(x: &Tensor, w: &Tensor, layer: Layer, rows: usize, model: ErrorModel) -> Tensor {
        let geo = layer.geometry(x.dims(), w.dims()).unwrap();
        let fan_in = geo.fan_in();
        let pixels = geo.batch * geo.out_pixels();
        let x_data = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w_data = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut col = vec![0f32; fan_in * pixels];
        im2col(&geo, &x_data, 0..pixels, &mut col);
        let mut scale_dims = layer.out_shape(&geo);
        scale_dims[1] = 1;
        let mut total: Option<Tensor> = None;
        for r0 in (0..fan_in).step_by(rows) {
            let r1 = (r0 + rows).min(fan_in);
            let omega = (0..w_data.len())
                .filter(|i| (r0..r1).contains(&(i % fan_in)))
                .fold(0f32, |m, i| m.max(w_data[i].abs()));
            let scale: Vec<f32> = (0..pixels)
                .map(|p| omega * (r0..r1).fold(0f32, |m, r| m.max(col[r * pixels + p].abs())))
                .collect();
            let safe: Vec<f32> = scale
                .iter()
                .map(|&s| if s > 0.0 { s } else { 1.0 })
                .collect();
            let scale = Tensor::from_vec(scale, scale_dims.as_slice(), &Device::Cpu).unwrap();
            let safe = Tensor::from_vec(safe, scale_dims.as_slice(), &Device::Cpu).unwrap();
            let mask: Vec<f32> = (0..w_data.len())
                .map(|i| f32::from(u8::from((r0..r1).contains(&(i % fan_in)))))
                .collect();
            let mask = Tensor::from_vec(mask, w.shape(), &Device::Cpu).unwrap();
            let wt = (w * mask).unwrap();
            let s = match layer {
                Layer::Conv2d(p) => crate::conv::conv2d(x, &wt, p).unwrap(),
                Layer::Linear => x.matmul(&wt.t().unwrap()).unwrap(),
            };
            let part = Surrogate {
                model,
                injection: None,
            }
            .apply(&s.broadcast_div(&safe).unwrap())
            .unwrap()
            .broadcast_mul(&scale)
            .unwrap();
            total = Some(match total {
                None => part,
                Some(t) => (t + part).unwrap(),
            });
        }
        total.unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn equals_masked_layers_per_tile_in_value_and_gradients() {
        let model = ErrorModel::TileClamp {
            rows: 0,
            bound: 0.6,
        };
        // (input, weight, layer, rows): tiles that do and do not divide the fan-in,
        // one tile, one row per tile, strides, padding, a one-pixel output, linear.
        let cases: Vec<(Vec<usize>, Vec<usize>, Layer, usize)> = vec![
            (
                vec![2, 3, 7, 6],
                vec![4, 3, 3, 3],
                Layer::Conv2d(Conv2dParams::new(1, 1)),
                10,
            ),
            (
                vec![3, 2, 9, 9],
                vec![5, 2, 3, 2],
                Layer::Conv2d(Conv2dParams::new(2, 0)),
                12,
            ),
            (
                vec![2, 4, 4, 4],
                vec![3, 4, 4, 4],
                Layer::Conv2d(Conv2dParams::new(1, 0)),
                64,
            ),
            (
                vec![1, 2, 5, 5],
                vec![2, 2, 3, 3],
                Layer::Conv2d(Conv2dParams::new(1, 2)),
                1,
            ),
            (vec![300, 20], vec![7, 20], Layer::Linear, 6),
            (vec![5, 20], vec![7, 20], Layer::Linear, 50),
        ];
        for (i, (xs, ws, layer, rows)) in cases.into_iter().enumerate() {
            let (x, w) = (rand(&xs, 2 * i as u64, 5), rand(&ws, 2 * i as u64 + 1, 7));
            let got = tiled_surrogate(&x, &w, layer, rows, model).unwrap();
            let want = reference(&x, &w, layer, rows, model);
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 1e-5, "case {i}: values");
            let r = rand(got.dims(), 99, 0);
            let grads = |y: &Tensor| {
                (y * r.as_tensor())
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            };
            let (g, e) = (grads(&got), grads(&want));
            for v in [&x, &w] {
                let d = max_diff(g.get(v).unwrap(), e.get(v).unwrap());
                assert!(d < 1e-4, "case {i}: gradient off by {d}");
            }
        }
    }
}
