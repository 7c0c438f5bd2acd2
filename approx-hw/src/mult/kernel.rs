//! The integer layer kernels: every product looked up in a [`MulTable`], summed
//! exactly in i32; and the exact multiplier's fast path through a float GEMM.
//!
//! Work is split into chunks of [`CHUNK`] output pixels (across images, so linear
//! layers block too). A chunk gathers its receptive fields as activation bytes
//! ([`crate::im2col`], fan-in-major), then, weight-stationary, adds the table row of
//! each weight `w[o, k]` indexed by the chunk's bytes of row `k`. With AVX2 the row
//! lookups are 8-wide gathers; the portable path is the same loop in scalar code.
//! (On the Zen 3 machine this was measured on, the two run at the same speed: an
//! AVX2 gather costs about as much as eight scalar loads. The fast path of the
//! prototype, 64 lookups per `vpermi2b` on byte planes, needs AVX-512 VBMI.)

use rayon::prelude::*;

use super::table::MulTable;
use crate::im2col::im2col;
use crate::ConvGeometry;

/// Output pixels per chunk: the lookup kernel's accumulators (`O x CHUNK` i32) stay
/// in L1/L2, and the GEMM gets a wide enough operand.
pub const CHUNK: usize = 256;

/// Instruction sets of the lookup kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupIsa {
    /// AVX2 8-wide gathers.
    Avx2,
    /// Scalar code, any CPU.
    Portable,
}

impl LookupIsa {
    /// The fastest set this CPU runs.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return LookupIsa::Avx2;
        }
        LookupIsa::Portable
    }
}

/// Integer sums `Σ_k T[w[o, k]][a[g, k]]` for every output channel `o` and output pixel
/// `g`, as a list of (first pixel, channel-major `[O][len]` sums) per chunk.
///
/// Loop order is weight-stationary: for each fan-in position `k` and output channel
/// `o`, the table row of `w[o, k]` (1 KiB) serves all the chunk's pixels while it is
/// in L1; the chunk's accumulators (`O x CHUNK` i32) stay in L1 too.
pub fn table_sums(
    geo: &ConvGeometry,
    act_codes: &[i32],
    weight_codes: &[i32],
    table: &MulTable,
    isa: LookupIsa,
) -> Vec<(usize, Vec<i32>)> {
    let bytes: Vec<u8> = act_codes.iter().map(|&a| table.act_index(a)).collect();
    let fan_in = geo.fan_in();
    let out_ch = geo.out_channels;
    // Offsets transposed to [k][o], the order the loop walks them.
    let mut offsets = vec![0u32; fan_in * out_ch];
    for (i, &w) in weight_codes.iter().enumerate() {
        offsets[(i % fan_in) * out_ch + i / fan_in] = (table.weight_row(w) * 256) as u32;
    }
    let entries = table.entries();
    let pixels = geo.batch * geo.out_pixels();
    let isa = if isa == LookupIsa::Avx2 && LookupIsa::best() != LookupIsa::Avx2 {
        LookupIsa::Portable
    } else {
        isa
    };
    (0..pixels.div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let start = chunk * CHUNK;
            let len = CHUNK.min(pixels - start);
            // Rows padded to whole vectors of 8 pixels (the padding bytes are 0 and
            // their sums are dropped).
            let padded = len.next_multiple_of(8);
            let mut col = vec![0u8; fan_in * padded];
            im2col(geo, &bytes, start..start + len, &mut col[..fan_in * len]);
            if padded != len {
                for k in (0..fan_in).rev() {
                    col.copy_within(k * len..(k + 1) * len, k * padded);
                    col[k * padded + len..(k + 1) * padded].fill(0);
                }
            }
            let mut acc = vec![0i32; out_ch * padded];
            for (k, rows) in offsets.chunks_exact(out_ch).enumerate() {
                let a = &col[k * padded..(k + 1) * padded];
                for (&row, acc) in rows.iter().zip(acc.chunks_exact_mut(padded)) {
                    let row: &[i32; 256] = entries[row as usize..][..256]
                        .try_into()
                        .expect("a table row has 256 entries");
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: AVX2 support was checked above.
                        LookupIsa::Avx2 => unsafe { avx2::row_lookup(row, a, acc) },
                        _ => row_lookup(row, a, acc),
                    }
                }
            }
            let mut sums = Vec::with_capacity(out_ch * len);
            for acc in acc.chunks_exact(padded) {
                sums.extend_from_slice(&acc[..len]);
            }
            (start, sums)
        })
        .collect()
}

/// `acc[g] += row[a[g]]` for one table row and one run of activation bytes.
fn row_lookup(row: &[i32; 256], a: &[u8], acc: &mut [i32]) {
    for (s, &byte) in acc.iter_mut().zip(a) {
        *s += row[usize::from(byte)];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::row_lookup`] with 8-wide gathers; `a.len()` is a multiple of 8 and
    /// `acc` at least as long.
    #[target_feature(enable = "avx2")]
    pub unsafe fn row_lookup(row: &[i32; 256], a: &[u8], acc: &mut [i32]) {
        debug_assert!(a.len().is_multiple_of(8) && acc.len() >= a.len());
        for v in (0..a.len()).step_by(8) {
            let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(a.as_ptr().add(v).cast()));
            let dst = acc.as_mut_ptr().add(v).cast::<__m256i>();
            let sum = _mm256_add_epi32(
                _mm256_loadu_si256(dst),
                _mm256_i32gather_epi32::<4>(row.as_ptr(), idx),
            );
            _mm256_storeu_si256(dst, sum);
        }
    }
}

/// The exact multiplier's sums through a float GEMM, chunked like [`table_sums`] but
/// pixel-major (`[len][O]`, the GEMM's fastest output layout). Exact: every partial sum is an integer
/// below the float's exact-integer range — f32 when `fan_in · max|a| · max|w| < 2^24`,
/// f64 (exact below 2^53) otherwise.
pub fn exact_sums(
    geo: &ConvGeometry,
    act_codes: &[i32],
    weight_codes: &[i32],
) -> Vec<(usize, Vec<i32>)> {
    let max_abs = |v: &[i32]| {
        v.iter()
            .map(|x| i64::from(x.unsigned_abs()))
            .max()
            .unwrap_or(0)
    };
    let bound = geo.fan_in() as i64 * max_abs(act_codes) * max_abs(weight_codes);
    if bound < 1 << 24 {
        gemm_sums::<f32>(geo, act_codes, weight_codes)
    } else {
        gemm_sums::<f64>(geo, act_codes, weight_codes)
    }
}

/// A float type the GEMM takes and that holds small integers exactly.
trait ExactFloat: Copy + Default + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
    fn from_code(c: i32) -> Self;
    fn to_sum(self) -> i32;
}

impl ExactFloat for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_code(c: i32) -> Self {
        c as f32
    }
    fn to_sum(self) -> i32 {
        self as i32
    }
}

impl ExactFloat for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_code(c: i32) -> Self {
        f64::from(c)
    }
    fn to_sum(self) -> i32 {
        self as i32
    }
}

fn gemm_sums<F: ExactFloat>(
    geo: &ConvGeometry,
    act_codes: &[i32],
    weight_codes: &[i32],
) -> Vec<(usize, Vec<i32>)> {
    let fan_in = geo.fan_in();
    let out_ch = geo.out_channels;
    let acts: Vec<F> = act_codes.iter().map(|&a| F::from_code(a)).collect();
    let weights: Vec<F> = weight_codes.iter().map(|&w| F::from_code(w)).collect();
    let pixels = geo.batch * geo.out_pixels();
    (0..pixels.div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let start = chunk * CHUNK;
            let len = CHUNK.min(pixels - start);
            let mut col = vec![F::ZERO; fan_in * len];
            im2col(geo, &acts, start..start + len, &mut col);
            let mut sums = vec![F::ZERO; out_ch * len];
            // SAFETY: dst is O x len column-major (pixel-major sums); lhs the
            // row-major O x K weight codes; rhs the K x len pixel-major col (column
            // stride K).
            unsafe {
                gemm::gemm(
                    out_ch,
                    len,
                    fan_in,
                    sums.as_mut_ptr(),
                    out_ch as isize,
                    1,
                    false,
                    weights.as_ptr(),
                    1,
                    fan_in as isize,
                    col.as_ptr(),
                    1,
                    len as isize,
                    F::ZERO,
                    F::ONE,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            (start, sums.into_iter().map(F::to_sum).collect())
        })
        .collect()
}
