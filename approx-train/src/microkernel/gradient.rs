//! The weight gradient `dW += G · Colᵀ` of a conv, image by image, through an FMA
//! kernel over the receptive fields where the forward reads them.

#[cfg(target_arch = "x86_64")]
use super::lanes::{self, Avx2};
use super::lanes::{Portable, Row, LANES};
use super::{blocks_of, by_count, check_fields, Fields, MAX_ROWS};

/// A weight gradient `dW` (`rows x depth`: the output channels by the fan-in) summed
/// image by image: `dW[o][k] += Σ_p g[o][p] · field(k, p)` over an image's pixels
/// `p` in order, each entry one FMA chain over every image added, in the order added,
/// from zero. Kept transposed (`depth x stride`, rows padded to [`LANES`]) for its
/// kernel ([`gradient_kernel`]).
pub(crate) struct WeightGradient {
    rows: usize,
    depth: usize,
    /// `rows` rounded up to [`LANES`].
    stride: usize,
    /// `dW[o][k]` at `k · stride + o`.
    transposed: Vec<f32>,
    /// An image's output gradient, transposed and padded as `transposed`.
    grad: Vec<f32>,
}

impl WeightGradient {
    /// A zero gradient for `rows` output channels and fan-in `depth`.
    pub(crate) fn new(rows: usize, depth: usize) -> Self {
        let stride = rows.next_multiple_of(LANES);
        Self {
            rows,
            depth,
            stride,
            transposed: vec![0f32; depth * stride],
            grad: Vec::new(),
        }
    }

    /// Adds one image's part: `grad` is its output gradient (`rows x pixels`
    /// row-major, pixel `(y, x)` at column `y · width + x`) and `fields` its
    /// receptive fields.
    pub(crate) fn add(&mut self, grad: &[f32], fields: &Fields) {
        #[cfg(target_arch = "x86_64")]
        if lanes::has_avx2() {
            #[target_feature(enable = "avx2,fma")]
            fn avx2(dw: &mut WeightGradient, grad: &[f32], fields: &Fields) {
                // SAFETY: this function runs only where the CPU has AVX2 and FMA.
                unsafe { dw.add_with::<Avx2>(grad, fields) }
            }
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { avx2(self, grad, fields) };
        }
        // SAFETY: the portable rows need no CPU feature.
        unsafe { self.add_with::<Portable>(grad, fields) }
    }

    /// [`WeightGradient::add`] in rows `V`: [`gradient_kernel`] over blocks of fan-in
    /// positions and of [`LANES`] rows.
    ///
    /// # Safety
    ///
    /// The CPU runs `V`'s instructions.
    #[inline(always)]
    pub(super) unsafe fn add_with<V: Row>(&mut self, grad: &[f32], fields: &Fields) {
        check_fields(fields, self.depth);
        let pixels = fields.pixels();
        if pixels == 0 {
            return;
        }
        assert!(grad.len() >= self.rows * pixels);
        self.grad.clear();
        self.grad.resize(pixels * self.stride, 0.0);
        for (o, row) in grad.chunks_exact(pixels).take(self.rows).enumerate() {
            for (p, &g) in row.iter().enumerate() {
                self.grad[p * self.stride + o] = g;
            }
        }
        for (k0, positions) in blocks_of(self.depth, MAX_ROWS) {
            for o0 in (0..self.rows).step_by(LANES) {
                let at = GradientOperands {
                    grad: &self.grad[o0..],
                    grad_stride: self.stride,
                    fields,
                    starts: &fields.starts[k0..k0 + positions],
                };
                let out = &mut self.transposed[k0 * self.stride + o0..];
                // SAFETY: the CPU runs `V`, as the caller promises, and the fields
                // were checked.
                unsafe { by_count!(positions, gradient_kernel::<V>(at, out, self.stride)) };
            }
        }
    }

    /// The gradient, row-major (`rows x depth`).
    pub(crate) fn into_rows(self) -> Vec<f32> {
        let mut dw = vec![0f32; self.rows * self.depth];
        for (k, column) in self.transposed.chunks_exact(self.stride).enumerate() {
            for (o, &v) in column[..self.rows].iter().enumerate() {
                dw[o * self.depth + k] = v;
            }
        }
        dw
    }
}

/// One [`gradient_kernel`] call's inputs: the transposed output gradient from the
/// call's first row (`grad[p · grad_stride + l]` for pixel `p`, lane `l`) and the
/// receptive fields of the call's fan-in positions (`starts`).
struct GradientOperands<'a> {
    grad: &'a [f32],
    grad_stride: usize,
    fields: &'a Fields<'a>,
    starts: &'a [usize],
}

/// `K` fan-in positions by [`LANES`] rows of a transposed gradient `out` (stride
/// `out_stride` per position): each chain continued over the image's pixels, map
/// row by map row. Per pixel: a row of the output gradient and a broadcast receptive
/// field per fan-in position, read along its map row.
///
/// # Safety
///
/// The CPU runs `V`'s instructions, and the operands' fields passed
/// [`check_fields`].
#[inline(always)]
unsafe fn gradient_kernel<V: Row, const K: usize>(
    at: GradientOperands,
    out: &mut [f32],
    out_stride: usize,
) {
    let fields = at.fields;
    let starts: &[usize; K] = at.starts.try_into().expect("K fan-in positions");
    assert!(
        at.grad.len() >= (fields.pixels() - 1) * at.grad_stride + LANES
            && out.len() >= (K - 1) * out_stride + LANES
    );
    // SAFETY: the caller's promise (every start's map lies inside the values, so
    // each position's map row `y` is readable for `width` values) and the assertion
    // (the gradient rows of every pixel, and `out`) cover every access.
    unsafe {
        let mut acc = [V::zero(); K];
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = V::load(out.as_ptr().add(k * out_stride));
        }
        let (values, grad) = (fields.values.as_ptr(), at.grad.as_ptr());
        for y in 0..fields.height {
            let rows = starts.map(|s| values.add(s + y * fields.pitch));
            let grad = grad.add(y * fields.width * at.grad_stride);
            for x in 0..fields.width {
                let g = V::load(grad.add(x * at.grad_stride));
                for (acc, row) in acc.iter_mut().zip(&rows) {
                    *acc = g.mul_add(V::splat(*row.add(x)), *acc);
                }
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            acc.store(out.as_mut_ptr().add(k * out_stride));
        }
    }
}
