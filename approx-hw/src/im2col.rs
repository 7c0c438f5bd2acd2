//! Implicit-GEMM input gathering: the receptive fields of a run of output pixels,
//! laid out as the columns of a matrix, so that a conv becomes a matrix product.
//!
//! Output pixels are numbered across the whole batch: pixel `g` is pixel `g mod P` of
//! image `g / P` (P output pixels per image). A linear layer is a conv of 1x1 images,
//! so there its pixels are the batch rows. Rows are the fan-in `k = (c·KH + i)·KW + j`,
//! the order of an OIHW weight flattened per output channel.

use std::ops::Range;

use crate::ConvGeometry;

/// Writes the receptive fields of the output pixels `pixels` into `out`, fan-in-major:
/// `out[k · len + g]` for `k` in `0..C·KH·KW` and `g` in `0..len` (`len` =
/// `pixels.len()`). Positions in the zero padding get `T::default()`.
///
/// `input` is the dense NCHW input. `out` must hold `fan_in · len` values.
pub fn im2col<T: Copy + Default>(
    geo: &ConvGeometry,
    input: &[T],
    pixels: Range<usize>,
    out: &mut [T],
) {
    let (h, w) = geo.in_size;
    let (kh, kw) = geo.kernel;
    let (sy, sx) = geo.params.stride;
    let (py, px) = geo.params.padding;
    let len = pixels.len();
    debug_assert_eq!(out.len(), geo.fan_in() * len);
    let per_image = geo.out_pixels();
    if (sy, sx) == (1, 1) && pixels.start.is_multiple_of(per_image) && len.is_multiple_of(per_image)
    {
        let images = pixels.start / per_image..pixels.end / per_image;
        return im2col_unit_stride(geo, input, images, out);
    }
    let runs = row_runs(geo, pixels);
    for c in 0..geo.in_channels {
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut out[((c * kh + i) * kw + j) * len..][..len];
                // Output columns ox whose input column ox·sx + j − px lies inside
                // 0..w: ceil((px − j) / sx) <= ox <= (w − 1 + px − j) / sx.
                let lo = px.saturating_sub(j).div_ceil(sx);
                let hi = (w + px).checked_sub(j + 1).map_or(0, |v| v / sx + 1);
                for run in &runs {
                    let dst = &mut row[run.col..run.col + run.width];
                    let y = (run.oy * sy + i).wrapping_sub(py);
                    if y >= h {
                        dst.fill(T::default());
                        continue;
                    }
                    let src = &input[run.image * geo.in_channels * h * w + (c * h + y) * w..][..w];
                    let end = run.ox + run.width;
                    let first = lo.clamp(run.ox, end);
                    let last = hi.clamp(first, end);
                    let (lead, rest) = dst.split_at_mut(first - run.ox);
                    let (body, tail) = rest.split_at_mut(last - first);
                    lead.fill(T::default());
                    tail.fill(T::default());
                    if body.is_empty() {
                        continue;
                    }
                    let x0 = first * sx + j - px;
                    if sx == 1 {
                        body.copy_from_slice(&src[x0..x0 + body.len()]);
                    } else {
                        for (d, s) in body.iter_mut().zip(src[x0..].iter().step_by(sx)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] of whole images at stride 1, its common case: each input plane is
/// copied once into a zero-padded plane, from which every fan-in row is a run of
/// fixed-width copies with no bounds arithmetic (TinyConv's maps are 8 to 32 pixels
/// wide, where the general path's per-run bookkeeping costs more than the copy).
fn im2col_unit_stride<T: Copy + Default>(
    geo: &ConvGeometry,
    input: &[T],
    images: Range<usize>,
    out: &mut [T],
) {
    let (h, w) = geo.in_size;
    let (kh, kw) = geo.kernel;
    let (py, px) = geo.params.padding;
    let (oh, ow) = geo.out_size();
    let (ph, pw) = (h + 2 * py, w + 2 * px);
    let per_image = oh * ow;
    let len = images.len() * per_image;
    let mut padded = vec![T::default(); ph * pw];
    for (col0, image) in images.enumerate() {
        let col0 = col0 * per_image;
        for c in 0..geo.in_channels {
            let plane = &input[(image * geo.in_channels + c) * h * w..][..h * w];
            for (y, src) in plane.chunks_exact(w).enumerate() {
                padded[(y + py) * pw + px..][..w].copy_from_slice(src);
            }
            for i in 0..kh {
                for j in 0..kw {
                    let row = &mut out[((c * kh + i) * kw + j) * len + col0..][..per_image];
                    for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                        copy_short(dst, &padded[(oy + i) * pw + j..][..ow]);
                    }
                }
            }
        }
    }
}

/// Writes image `image`'s input planes, zero-padded by the conv's padding, into
/// `out` (`C x (H + 2·PY) x (W + 2·PX)`): a stride-1 conv's receptive fields are
/// runs of these planes.
pub fn zero_padded_planes<T: Copy + Default>(
    geo: &ConvGeometry,
    input: &[T],
    image: usize,
    out: &mut [T],
) {
    let (h, w) = geo.in_size;
    let (py, px) = geo.params.padding;
    let (ph, pw) = geo.padded_size();
    let planes = &input[image * geo.in_image_len()..][..geo.in_image_len()];
    out.fill(T::default());
    for (plane, padded) in planes
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(ph * pw))
    {
        for (y, src) in plane.chunks_exact(w).enumerate() {
            padded[(y + py) * pw + px..][..w].copy_from_slice(src);
        }
    }
}

/// `dst.copy_from_slice(src)` in fixed blocks of eight, which compile to inline
/// vector moves rather than a `memcpy` call per map row.
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let (d, d_rest) = dst.as_chunks_mut::<8>();
    let (s, s_rest) = src.as_chunks::<8>();
    for (d, s) in d.iter_mut().zip(s) {
        *d = *s;
    }
    for (d, s) in d_rest.iter_mut().zip(s_rest) {
        *d = *s;
    }
}

/// A run of consecutive output pixels in one output row of one image.
struct RowRun {
    /// Column of the run's first pixel in the chunk.
    col: usize,
    /// Image index.
    image: usize,
    /// Output row.
    oy: usize,
    /// First output column.
    ox: usize,
    /// Pixels in the run.
    width: usize,
}

/// Splits a range of output pixels into runs along output rows.
fn row_runs(geo: &ConvGeometry, pixels: Range<usize>) -> Vec<RowRun> {
    let (_, ow) = geo.out_size();
    let per_image = geo.out_pixels();
    let start = pixels.start;
    let mut runs = Vec::new();
    let mut g = pixels.start;
    while g < pixels.end {
        let (image, p) = (g / per_image, g % per_image);
        let (oy, ox) = (p / ow, p % ow);
        let width = (ow - ox).min(pixels.end - g);
        runs.push(RowRun {
            col: g - start,
            image,
            oy,
            ox,
            width,
        });
        g += width;
    }
    runs
}

/// The adjoint of [`im2col`] for one image: adds `cols[k · len + p]` (fan-in-major
/// columns of the image's `len` output pixels) into the image's dense CHW gradient
/// `out` at the input position each entry was gathered from; padding positions are
/// dropped. Used for the input gradient of a conv computed as a GEMM.
pub fn col2im_image(geo: &ConvGeometry, cols: &[f32], out: &mut [f32]) {
    let (h, w) = geo.in_size;
    let (kh, kw) = geo.kernel;
    let (sy, sx) = geo.params.stride;
    let (py, px) = geo.params.padding;
    let (oh, ow) = geo.out_size();
    let len = oh * ow;
    debug_assert_eq!(cols.len(), geo.fan_in() * len);
    debug_assert_eq!(out.len(), geo.in_channels * h * w);
    for c in 0..geo.in_channels {
        let plane = &mut out[c * h * w..][..h * w];
        for i in 0..kh {
            for j in 0..kw {
                let row = &cols[((c * kh + i) * kw + j) * len..][..len];
                // Output columns whose input column lies inside 0..w (see `im2col`).
                let lo = px.saturating_sub(j).div_ceil(sx).min(ow);
                let hi = (w + px)
                    .checked_sub(j + 1)
                    .map_or(0, |v| v / sx + 1)
                    .clamp(lo, ow);
                for oy in 0..oh {
                    let y = (oy * sy + i).wrapping_sub(py);
                    if y >= h {
                        continue;
                    }
                    let dst = &mut plane[y * w..][..w];
                    let src = &row[oy * ow..][lo..hi];
                    if src.is_empty() {
                        continue;
                    }
                    let x0 = lo * sx + j - px;
                    if sx == 1 {
                        for (d, s) in dst[x0..x0 + src.len()].iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        for (d, s) in dst[x0..].iter_mut().step_by(sx).zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

/// Writes the layer outputs of the pixels `pixels` into the dense NCHW (or `[N, O]`)
/// output `out`, reading output channel `o` of chunk column `g` from
/// `values[o · o_stride + g · g_stride]` (`(1, O)` for pixel-major chunks, `(len, 1)`
/// for channel-major ones).
pub fn scatter_outputs<T: Copy>(
    geo: &ConvGeometry,
    values: &[T],
    (o_stride, g_stride): (usize, usize),
    pixels: Range<usize>,
    out: &mut [T],
) {
    let per_image = geo.out_pixels();
    for (col, g) in pixels.enumerate() {
        let (n, p) = (g / per_image, g % per_image);
        for o in 0..geo.out_channels {
            out[(n * geo.out_channels + o) * per_image + p] = values[o * o_stride + col * g_stride];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conv2dParams;

    #[test]
    fn gathers_padded_strided_fields() {
        // One 1x3x3 image with values 1..=9, 2x2 kernel, stride 2, padding 1: output
        // 2x2; pixel (0, 0) sees padding except the input's (0, 0).
        let geo =
            ConvGeometry::conv2d(&[1, 1, 3, 3], &[1, 1, 2, 2], Conv2dParams::new(2, 1)).unwrap();
        let input: Vec<i32> = (1..=9).collect();
        let mut out = vec![-1; 4 * 4];
        im2col(&geo, &input, 0..4, &mut out);
        // Rows k = (i, j) of the kernel; columns the four output pixels.
        assert_eq!(
            out,
            vec![
                0, 0, 0, 5, //
                0, 0, 4, 6, //
                0, 2, 0, 8, //
                1, 3, 7, 9,
            ]
        );
        // col2im adds every gathered entry back where it came from: with all-ones
        // columns each input pixel receives the number of fields that contain it.
        let mut grad = vec![0f32; 9];
        col2im_image(&geo, &[1.0; 16], &mut grad);
        assert_eq!(grad, vec![1.0; 9]);
        let mut nchw = vec![0; 4];
        scatter_outputs(&geo, &[10, 11, 12, 13], (4, 1), 0..4, &mut nchw);
        assert_eq!(nchw, vec![10, 11, 12, 13]);
    }

    #[test]
    fn unit_stride_fast_path_equals_the_general_path() {
        // Whole images at stride 1 take the fast path; the same columns gathered in
        // two pieces that split an image take the general one.
        for (c, h, w, k, pad) in [
            (2, 5, 7, 3, 1),
            (3, 8, 8, 5, 2),
            (1, 4, 3, 1, 0),
            (2, 6, 5, 4, 3),
        ] {
            let geo = ConvGeometry::conv2d(&[2, c, h, w], &[1, c, k, k], Conv2dParams::new(1, pad))
                .unwrap();
            let input: Vec<i32> = (1..=(2 * c * h * w) as i32).collect();
            let len = 2 * geo.out_pixels();
            let mut fast = vec![-1; geo.fan_in() * len];
            im2col(&geo, &input, 0..len, &mut fast);
            let cut = geo.out_pixels() / 2 + 1;
            let mut general = vec![0; geo.fan_in() * len];
            for piece in [0..cut, cut..len] {
                let mut part = vec![-1; geo.fan_in() * piece.len()];
                im2col(&geo, &input, piece.clone(), &mut part);
                for (row, src) in part.chunks(piece.len()).enumerate() {
                    general[row * len + piece.start..][..piece.len()].copy_from_slice(src);
                }
            }
            assert_eq!(fast, general, "{c}x{h}x{w} k{k} pad {pad}");
        }
    }
}
