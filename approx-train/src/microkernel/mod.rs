//! `C = W · Col`, the product at the heart of every conv forward here: a few rows of
//! weights (`m x k`, the output channels by the fan-in) against an image's receptive
//! fields (`k x n`, `n` output pixels), through register-blocked FMA micro-kernels;
//! and the weight gradient `dW += G · Colᵀ` ([`WeightGradient`]).
//!
//! Why not the `gemm` crate, used elsewhere: on TinyConv's 32 → 32 layer (`m` = 32,
//! `k` = 800, `n` = 256, image by image) it packs both operands on every call and
//! ran at 42-51 GFLOP/s on one core of this machine, whose FMA peak is about 93. Here
//! the weights are packed once per batch and the receptive fields are read where they
//! lie ([`Fields`]): in im2col's matrix, or for a stride-1 conv in the input's
//! zero-padded planes themselves, with no matrix at all.
//!
//! Every output is one fused multiply-add chain over `k` in ascending order, starting
//! from zero (the weight gradient: over the pixels of every image added, in order):
//! its bits depend on nothing else (not the blocking, the kernel, the thread count or
//! the instruction set, [`lanes`]).

mod gradient;
mod lanes;

pub(crate) use gradient::WeightGradient;
pub(crate) use lanes::LANES;

#[cfg(target_arch = "x86_64")]
use lanes::Avx2;
use lanes::{Portable, Row};

/// Most accumulator rows per kernel call: six of two registers are twelve
/// accumulators, which with the two loaded vectors and the broadcast value fill 15 of
/// AVX2's 16 registers.
const MAX_ROWS: usize = 6;

/// Fan-in per block of the pixel kernel: a tile's receptive fields for one block
/// (`LANES` x 256 values, 16 KiB) stay in L1 while every row block runs over them.
const MAX_DEPTH: usize = 256;

/// The weights of `C = W · Col` laid out for the kernels: `W` transposed, so that the
/// rows' weights for one fan-in position are adjacent, and padded with zero rows to
/// a multiple of [`LANES`], so that the row kernel reads whole vectors. Packed once
/// and used for every image of a batch.
pub(crate) struct PackedWeights {
    /// Rows of `W` (output channels).
    rows: usize,
    /// Columns of `W` (the fan-in, `k`).
    depth: usize,
    /// Values per fan-in position in `transposed`: `rows` rounded up to [`LANES`].
    stride: usize,
    /// `W[i][j]` at `j · stride + i`.
    transposed: Vec<f32>,
}

impl PackedWeights {
    /// Packs the row-major `rows x depth` matrix `w`.
    #[cfg(test)]
    pub(crate) fn new(w: &[f32], rows: usize, depth: usize) -> Self {
        assert_eq!(w.len(), rows * depth, "weights are rows x depth");
        Self::from_fn(rows, depth, |i, j| w[i * depth + j])
    }

    /// Packs the `rows x depth` matrix whose entry `(i, j)` is `entry(i, j)`: a
    /// rearranged weight (a flipped kernel) packed without a copy in between.
    pub(crate) fn from_fn(rows: usize, depth: usize, entry: impl Fn(usize, usize) -> f32) -> Self {
        let stride = rows.next_multiple_of(LANES);
        let mut transposed = vec![0f32; stride * depth];
        for (j, column) in transposed.chunks_exact_mut(stride).enumerate() {
            for (i, v) in column[..rows].iter_mut().enumerate() {
                *v = entry(i, j);
            }
        }
        Self {
            rows,
            depth,
            stride,
            transposed,
        }
    }
}

/// Where the kernels read the receptive fields of one image: fan-in position `j`'s
/// value for output pixel `(y, x)` at `values[starts[j] + y · pitch + x]`. Im2col's
/// matrix is one map row (`starts[j] = j · n`); a stride-1 conv can read its input's
/// zero-padded planes in place, with no matrix at all ([`Fields::padded_starts`]).
pub(crate) struct Fields<'a> {
    /// The values read.
    pub(crate) values: &'a [f32],
    /// Per fan-in position, the offset of output pixel `(0, 0)`'s value.
    pub(crate) starts: &'a [usize],
    /// Output map rows.
    pub(crate) height: usize,
    /// Output pixels per map row.
    pub(crate) width: usize,
    /// Offset between consecutive map rows' values.
    pub(crate) pitch: usize,
}

impl<'a> Fields<'a> {
    /// An im2col matrix: `depth x n` row-major, with `starts` = `0, n, 2n, ...`.
    pub(crate) fn matrix(values: &'a [f32], starts: &'a [usize], n: usize) -> Self {
        Self {
            values,
            starts,
            height: 1,
            width: n,
            pitch: n,
        }
    }

    /// The offsets of an im2col matrix's rows, `n` values apart, for
    /// [`Fields::matrix`].
    pub(crate) fn matrix_starts(depth: usize, n: usize) -> Vec<usize> {
        (0..depth).map(|j| j * n).collect()
    }

    /// The offsets of a stride-1 conv's receptive fields in its input's zero-padded
    /// planes (`channels` planes of `padded` = (rows, columns) values), for a
    /// `kernel` = (rows, columns): fan-in position `(c, i, j)` reads the plane of
    /// channel `c` from row `i`, column `j` on. The pitch is the padded width.
    pub(crate) fn padded_starts(
        channels: usize,
        kernel: (usize, usize),
        padded: (usize, usize),
    ) -> Vec<usize> {
        let (kh, kw) = kernel;
        let plane = padded.0 * padded.1;
        (0..channels * kh * kw)
            .map(|k| (k / (kh * kw)) * plane + (k / kw % kh) * padded.1 + k % kw)
            .collect()
    }

    /// The number of output pixels.
    fn pixels(&self) -> usize {
        self.height * self.width
    }
}

/// `out = w · fields`: `out` is `rows x pixels` row-major (overwritten), pixel
/// `(y, x)` at column `y · width + x`.
pub(crate) fn multiply(w: &PackedWeights, fields: &Fields, out: &mut [f32]) {
    check_fields(fields, w.depth);
    let (m, k, n) = (w.rows, w.depth, fields.pixels());
    assert!(out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if lanes::has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        fn avx2(w: &PackedWeights, fields: &Fields, out: &mut [f32]) {
            // SAFETY: this function runs only where the CPU has AVX2 and FMA.
            unsafe { multiply_with::<Avx2>(w, fields, out) }
        }
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { avx2(w, fields, out) };
    }
    // SAFETY: the portable rows need no CPU feature.
    unsafe { multiply_with::<Portable>(w, fields, out) }
}

/// [`multiply`]'s product in rows `V`, for checked operands with `m`, `k` and `n`
/// above zero.
///
/// # Safety
///
/// The CPU runs `V`'s instructions.
#[inline(always)]
unsafe fn multiply_with<V: Row>(w: &PackedWeights, fields: &Fields, out: &mut [f32]) {
    // SAFETY: as the caller promises.
    unsafe {
        pixel_blocks::<V>(w, fields, out);
        row_blocks::<V>(w, fields, out);
    }
}

/// Checks that `fields` has `depth` fan-in positions whose maps lie inside its
/// values, which the kernels read unchecked.
fn check_fields(fields: &Fields, depth: usize) {
    assert_eq!(fields.starts.len(), depth, "one start per fan-in position");
    if fields.pixels() > 0 {
        let last = (fields.height - 1) * fields.pitch + fields.width;
        assert!(
            fields.width <= fields.pitch
                && fields
                    .starts
                    .iter()
                    .all(|&s| s + last <= fields.values.len()),
            "receptive fields outside their values"
        );
    }
}

/// Calls `kernel::<V, N>(args)` for `N` = `$n`, 1 to [`MAX_ROWS`].
macro_rules! by_count {
    ($n:expr, $kernel:ident::<$v:ty>($($arg:expr),*)) => {
        match $n {
            1 => $kernel::<$v, 1>($($arg),*),
            2 => $kernel::<$v, 2>($($arg),*),
            3 => $kernel::<$v, 3>($($arg),*),
            4 => $kernel::<$v, 4>($($arg),*),
            5 => $kernel::<$v, 5>($($arg),*),
            6 => $kernel::<$v, 6>($($arg),*),
            _ => unreachable!("blocks hold 1 to {MAX_ROWS}"),
        }
    };
}
use by_count;

/// [`pixel_kernel`] over the whole tiles of [`LANES`] pixels of each map row: fan-in
/// blocks outermost, so that a block of the packed weights serves every tile, then
/// the tiles, whose receptive fields serve every row block.
///
/// # Safety
///
/// The CPU runs `V`'s instructions.
#[inline(always)]
unsafe fn pixel_blocks<V: Row>(w: &PackedWeights, fields: &Fields, out: &mut [f32]) {
    let (m, k, n) = (w.rows, w.depth, fields.pixels());
    let whole = fields.width / LANES * LANES;
    let row_groups = blocks_of(m, MAX_ROWS);
    let depth = k.div_ceil(k.div_ceil(MAX_DEPTH));
    for k0 in (0..k).step_by(depth) {
        let kk = depth.min(k - k0);
        for y in 0..fields.height {
            for x0 in (0..whole).step_by(LANES) {
                for &(r0, rows) in &row_groups {
                    let at = Operands {
                        weights: &w.transposed[k0 * w.stride + r0..],
                        weight_stride: w.stride,
                        values: fields.values,
                        first: y * fields.pitch + x0,
                        starts: &fields.starts[k0..k0 + kk],
                    };
                    let out = &mut out[r0 * n + y * fields.width + x0..];
                    // SAFETY: the CPU runs `V`, as the caller promises, and the
                    // tile's pixels lie in one map row of the checked fields.
                    unsafe { by_count!(rows, pixel_kernel::<V>(at, out, n, k0 > 0)) };
                }
            }
        }
    }
}

/// [`row_kernel`] over the pixels after each map row's last whole tile (all of
/// them in a map under 16 pixels wide, as VGG's last 2x2 layers or a classifier
/// conv's single pixel): it runs across rows instead and wastes no lanes on them.
///
/// # Safety
///
/// The CPU runs `V`'s instructions.
#[inline(always)]
unsafe fn row_blocks<V: Row>(w: &PackedWeights, fields: &Fields, out: &mut [f32]) {
    let (m, n) = (w.rows, fields.pixels());
    let whole = fields.width / LANES * LANES;
    let mut columns = [[0f32; LANES]; MAX_ROWS];
    for y in 0..fields.height {
        for (x0, pixels) in blocks_of(fields.width - whole, MAX_ROWS) {
            let x0 = whole + x0;
            for r0 in (0..m).step_by(LANES) {
                let at = Operands {
                    weights: &w.transposed[r0..],
                    weight_stride: w.stride,
                    values: fields.values,
                    first: y * fields.pitch + x0,
                    starts: fields.starts,
                };
                // SAFETY: the CPU runs `V`, as the caller promises, and the pixels
                // lie in one map row of the checked fields.
                unsafe { by_count!(pixels, row_kernel::<V>(at, &mut columns)) };
                let rows = LANES.min(m - r0);
                for (p, column) in columns[..pixels].iter().enumerate() {
                    for (r, &v) in column[..rows].iter().enumerate() {
                        out[(r0 + r) * n + y * fields.width + x0 + p] = v;
                    }
                }
            }
        }
    }
}

/// `count` items as blocks `(first, len)` of at most `max`, as even as possible (32
/// rows by 6: 6, 6, 5, 5, 5, 5), so that no block leaves most of its accumulators
/// idle.
fn blocks_of(count: usize, max: usize) -> Vec<(usize, usize)> {
    let blocks = count.div_ceil(max);
    if blocks == 0 {
        return Vec::new();
    }
    let (base, longer) = (count / blocks, count % blocks);
    let mut first = 0;
    (0..blocks)
        .map(|b| {
            let len = base + usize::from(b < longer);
            first += len;
            (first - len, len)
        })
        .collect()
}

/// One kernel call's inputs: the weights (`weights[j · weight_stride + r]` for the
/// call's row `r` at its fan-in position `j`) and the receptive fields
/// (`values[starts[j] + first + p]` for the call's pixel `p`), over the fan-in
/// positions of `starts`.
struct Operands<'a> {
    weights: &'a [f32],
    weight_stride: usize,
    values: &'a [f32],
    first: usize,
    starts: &'a [usize],
}

impl Operands<'_> {
    /// Checks that every fan-in position has `rows` weights from the call's first
    /// row, for [`Operands::weights`].
    #[inline(always)]
    fn check_weights(&self, rows: usize) {
        if let Some(last) = self.starts.len().checked_sub(1) {
            assert!(self.weights.len() >= last * self.weight_stride + rows);
        }
    }

    /// Position `j`'s weights, from the call's first row.
    ///
    /// # Safety
    ///
    /// `j` is below `starts.len()`; only as many rows are read as
    /// [`Operands::check_weights`] checked.
    #[inline(always)]
    unsafe fn weights(&self, j: usize) -> *const f32 {
        // SAFETY: as the caller promises, within the weights checked.
        unsafe { self.weights.as_ptr().add(j * self.weight_stride) }
    }

    /// Position `j`'s receptive field of the call's first pixel.
    ///
    /// # Safety
    ///
    /// `j` is below `starts.len()`; only pixels of the call that lie in one map row
    /// of the [`Fields`] that [`check_fields`] checked are read.
    #[inline(always)]
    unsafe fn fields(&self, j: usize) -> *const f32 {
        // SAFETY: as the caller promises, within the values checked.
        unsafe {
            let start = *self.starts.get_unchecked(j);
            self.values.as_ptr().add(start + self.first)
        }
    }
}

/// `R` rows by [`LANES`] pixels of `out` (row stride `out_stride`): each the FMA
/// chain over the operands' fan-in, continued from `out`'s value when `accumulate`,
/// from zero otherwise. Per fan-in position: a row of receptive fields and a
/// broadcast weight per output row.
///
/// # Safety
///
/// The CPU runs `V`'s instructions, and the call's [`LANES`] pixels lie in one map
/// row of checked fields.
#[inline(always)]
unsafe fn pixel_kernel<V: Row, const R: usize>(
    at: Operands,
    out: &mut [f32],
    out_stride: usize,
    accumulate: bool,
) {
    assert!(out.len() >= (R - 1) * out_stride + LANES);
    at.check_weights(R);
    // SAFETY: the caller's promise, the assertion on `out` and the weights checked
    // cover every access.
    unsafe {
        let mut acc = [V::zero(); R];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = V::load(out.as_ptr().add(r * out_stride));
            }
        }
        for j in 0..at.starts.len() {
            let (weights, fields) = (at.weights(j), V::load(at.fields(j)));
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = V::splat(*weights.add(r)).mul_add(fields, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            acc.store(out.as_mut_ptr().add(r * out_stride));
        }
    }
}

/// [`LANES`] rows by `P` pixels into `columns` (pixel by pixel: `columns[p][r]`),
/// each the FMA chain over the operands' fan-in from zero. Per fan-in position: a
/// row of weights (the packing's zero rows fill the rows past the last) and a
/// broadcast receptive field per pixel.
///
/// # Safety
///
/// The CPU runs `V`'s instructions, and the call's `P` pixels lie in one map row of
/// checked fields.
#[inline(always)]
unsafe fn row_kernel<V: Row, const P: usize>(at: Operands, columns: &mut [[f32; LANES]]) {
    assert!(columns.len() >= P);
    at.check_weights(LANES);
    // SAFETY: the caller's promise, the weights checked and the assertion on
    // `columns` cover every access.
    unsafe {
        let mut acc = [V::zero(); P];
        for j in 0..at.starts.len() {
            let (weights, fields) = (V::load(at.weights(j)), at.fields(j));
            for (p, acc) in acc.iter_mut().enumerate() {
                *acc = weights.mul_add(V::splat(*fields.add(p)), *acc);
            }
        }
        for (acc, column) in acc.iter().zip(columns) {
            acc.store(column.as_mut_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `len` values drawn uniformly from −1 to 1.
    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0..1.0f32)).collect()
    }

    /// Whether `a` and `b` hold the same bits.
    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// The definition: each output the FMA chain over the fan-in in order, from zero.
    fn reference(w: &[f32], m: usize, k: usize, cols: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for p in 0..n {
                out[i * n + p] =
                    (0..k).fold(0f32, |acc, j| w[i * k + j].mul_add(cols[j * n + p], acc));
            }
        }
        out
    }

    #[test]
    fn every_output_is_the_fma_chain_in_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // Rows across every block split, fan-ins across one and several depth blocks
        // (uneven ones included), widths with and without a partial tile.
        let shapes = [
            (1, 1, 1),
            (32, 800, 256),
            (7, 257, 17),
            (64, 513, 100),
            (10, 1024, 1),
            (13, 3, 31),
            (6, 256, 16),
            (512, 300, 4),
            (33, 40, 15),
        ];
        for (m, k, n) in shapes {
            let w = random(&mut rng, m * k);
            let cols = random(&mut rng, k * n);
            let mut out = vec![f32::NAN; m * n];
            let starts = Fields::matrix_starts(k, n);
            let fields = Fields::matrix(&cols, &starts, n);
            multiply(&PackedWeights::new(&w, m, k), &fields, &mut out);
            let expected = reference(&w, m, k, &cols, n);
            let same = same_bits(&out, &expected);
            assert!(same, "m {m}, k {k}, n {n}");
        }
    }

    #[test]
    fn padded_planes_read_the_fields_im2col_writes() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        // (channels, rows, kernel, padding, output rows and columns)
        for (c, m, (kh, kw), (py, px), (oh, ow)) in [
            (3, 7, (5, 5), (2, 2), (32, 32)),
            (32, 32, (5, 5), (2, 2), (16, 16)),
            (4, 20, (3, 2), (1, 0), (5, 37)),
            (2, 17, (1, 1), (0, 0), (3, 16)),
        ] {
            let (ph, pw) = (oh + kh - 1, ow + kw - 1);
            // Zero-padded planes with random values inside the padding.
            let mut planes = vec![0f32; c * ph * pw];
            for (i, v) in planes.iter_mut().enumerate() {
                let (y, x) = (i / pw % ph, i % pw);
                if (py..ph - py).contains(&y) && (px..pw - px).contains(&x) {
                    *v = rng.random_range(-1.0..1.0f32);
                }
            }
            let k = c * kh * kw;
            let n = oh * ow;
            let mut matrix = vec![0f32; k * n];
            for (row, values) in matrix.chunks_exact_mut(n).enumerate() {
                let (ch, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
                for (p, v) in values.iter_mut().enumerate() {
                    *v = planes[ch * ph * pw + (p / ow + i) * pw + p % ow + j];
                }
            }
            let w = random(&mut rng, m * k);
            let w = PackedWeights::new(&w, m, k);
            let starts = Fields::padded_starts(c, (kh, kw), (ph, pw));
            let padded = Fields {
                values: &planes,
                starts: &starts,
                height: oh,
                width: ow,
                pitch: pw,
            };
            let mut direct = vec![f32::NAN; m * n];
            multiply(&w, &padded, &mut direct);
            let matrix_starts = Fields::matrix_starts(k, n);
            let mut through_matrix = vec![f32::NAN; m * n];
            multiply(
                &w,
                &Fields::matrix(&matrix, &matrix_starts, n),
                &mut through_matrix,
            );
            let same = same_bits(&direct, &through_matrix);
            assert!(same, "c {c}, kernel {kh}x{kw}, output {oh}x{ow}");
        }
    }

    #[test]
    fn weight_gradient_chains_over_images_and_pixels_in_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (m, k, n, images) in [
            (32, 800, 256, 3),
            (10, 13, 1, 2),
            (17, 7, 20, 4),
            (1, 6, 5, 1),
        ] {
            let grads: Vec<Vec<f32>> = (0..images).map(|_| random(&mut rng, m * n)).collect();
            let cols: Vec<Vec<f32>> = (0..images).map(|_| random(&mut rng, k * n)).collect();
            let starts = Fields::matrix_starts(k, n);
            let mut dw = WeightGradient::new(m, k);
            for (g, col) in grads.iter().zip(&cols) {
                dw.add(g, &Fields::matrix(col, &starts, n));
            }
            let dw = dw.into_rows();
            for o in 0..m {
                for j in 0..k {
                    let expected = grads.iter().zip(&cols).fold(0f32, |acc, (g, col)| {
                        (0..n).fold(acc, |acc, p| g[o * n + p].mul_add(col[j * n + p], acc))
                    });
                    assert_eq!(
                        dw[o * k + j].to_bits(),
                        expected.to_bits(),
                        "m {m} k {k} n {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn portable_rows_give_the_same_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let (m, k, n) = (13, 70, 37);
        let w = random(&mut rng, m * k);
        let cols = random(&mut rng, k * n);
        let g = random(&mut rng, m * n);
        let (w, starts) = (PackedWeights::new(&w, m, k), Fields::matrix_starts(k, n));
        let fields = Fields::matrix(&cols, &starts, n);
        let (mut best, mut portable) = (vec![0f32; m * n], vec![0f32; m * n]);
        multiply(&w, &fields, &mut best);
        // SAFETY: the portable rows need no CPU feature.
        unsafe { multiply_with::<Portable>(&w, &fields, &mut portable) };
        assert!(same_bits(&best, &portable));
        let (mut best, mut portable) = (WeightGradient::new(m, k), WeightGradient::new(m, k));
        best.add(&g, &fields);
        // SAFETY: the portable rows need no CPU feature.
        unsafe { portable.add_with::<Portable>(&g, &fields) };
        let (best, portable) = (best.into_rows(), portable.into_rows());
        assert!(same_bits(&best, &portable));
    }

    #[test]
    fn an_empty_fan_in_gives_zeros() {
        let mut out = vec![f32::NAN; 6];
        multiply(
            &PackedWeights::new(&[], 2, 0),
            &Fields::matrix(&[], &[], 3),
            &mut out,
        );
        assert_eq!(out, vec![0.0; 6]);
    }

    #[test]
    fn blocks_cover_the_rows_evenly() {
        assert_eq!(
            blocks_of(32, MAX_ROWS),
            vec![(0, 6), (6, 6), (12, 5), (17, 5), (22, 5), (27, 5)]
        );
        assert!(blocks_of(0, MAX_ROWS).is_empty());
        for m in 1..200 {
            let blocks = blocks_of(m, MAX_ROWS);
            let mut next = 0;
            for &(first, rows) in &blocks {
                assert!(first == next && (1..=MAX_ROWS).contains(&rows), "m {m}");
                next += rows;
            }
            assert_eq!(next, m);
        }
    }
}
