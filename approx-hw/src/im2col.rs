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
    let (_, ow) = geo.out_size();
    let per_image = geo.out_pixels();
    let len = pixels.len();
    debug_assert_eq!(out.len(), geo.fan_in() * len);
    for (col, g) in pixels.enumerate() {
        let (n, p) = (g / per_image, g % per_image);
        let (oy, ox) = (p / ow, p % ow);
        let image = &input[n * geo.in_channels * h * w..][..geo.in_channels * h * w];
        for c in 0..geo.in_channels {
            let plane = &image[c * h * w..][..h * w];
            for i in 0..kh {
                let y = (oy * sy + i).wrapping_sub(py);
                let row = (c * kh + i) * kw;
                for j in 0..kw {
                    let x = (ox * sx + j).wrapping_sub(px);
                    out[(row + j) * len + col] = if y < h && x < w {
                        plane[y * w + x]
                    } else {
                        T::default()
                    };
                }
            }
        }
    }
}

/// Writes the layer outputs of the pixels `pixels` from `values[o · len + g]` into the
/// dense NCHW (or `[N, O]`) output `out`.
pub fn scatter_outputs<T: Copy>(
    geo: &ConvGeometry,
    values: &[T],
    pixels: Range<usize>,
    out: &mut [T],
) {
    let per_image = geo.out_pixels();
    let len = pixels.len();
    for (col, g) in pixels.enumerate() {
        let (n, p) = (g / per_image, g % per_image);
        for o in 0..geo.out_channels {
            out[(n * geo.out_channels + o) * per_image + p] = values[o * len + col];
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
        let mut nchw = vec![0; 4];
        scatter_outputs(&geo, &[10, 11, 12, 13], 0..4, &mut nchw);
        assert_eq!(nchw, vec![10, 11, 12, 13]);
    }
}
