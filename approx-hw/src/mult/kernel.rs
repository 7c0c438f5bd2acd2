//! The integer layer kernels: every product looked up in a [`MulTable`], summed
//! exactly in i32; and the exact-multiplier fast path through an f64 GEMM.
//!
//! Work is split into chunks of [`CHUNK`] output pixels (across images, so linear
//! layers block too). A chunk gathers its receptive fields as activation bytes
//! ([`crate::im2col`], fan-in-major), then for each output channel adds, for each
//! fan-in position `k`, the table row of weight `k` indexed by the chunk's bytes. A
//! table row is 1 KiB, so the rows in use stay in L1/L2. With AVX2 the row lookups
//! are 8-wide gathers; the portable path is the same loop in scalar code.

use rayon::prelude::*;

use super::table::MulTable;
use crate::im2col::im2col;
use crate::ConvGeometry;

/// Output pixels per chunk (a multiple of the AVX2 block of 32).
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
/// `g`, as a list of (first pixel, `[O][len]` sums) per chunk.
pub fn table_sums(
    geo: &ConvGeometry,
    act_codes: &[i32],
    weight_codes: &[i32],
    table: &MulTable,
    isa: LookupIsa,
) -> Vec<(usize, Vec<i32>)> {
    let bytes: Vec<u8> = act_codes.iter().map(|&a| table.act_index(a)).collect();
    let fan_in = geo.fan_in();
    let offsets: Vec<u32> = weight_codes
        .iter()
        .map(|&w| (table.weight_row(w) * 256) as u32)
        .collect();
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
            let padded = len.next_multiple_of(32);
            let mut col = vec![0u8; fan_in * padded];
            im2col(geo, &bytes, start..start + len, &mut col[..fan_in * len]);
            if padded != len {
                // Re-stride the rows to the padded length (the padding bytes are 0).
                for k in (0..fan_in).rev() {
                    col.copy_within(k * len..(k + 1) * len, k * padded);
                    col[k * padded + len..(k + 1) * padded].fill(0);
                }
            }
            let mut sums = vec![0i32; geo.out_channels * len];
            let mut acc = vec![0i32; padded];
            for (o, out) in sums.chunks_mut(len).enumerate() {
                let rows = &offsets[o * fan_in..(o + 1) * fan_in];
                acc.fill(0);
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 support was checked above.
                    LookupIsa::Avx2 => unsafe {
                        avx2::channel(table.entries(), rows, &col, padded, &mut acc)
                    },
                    _ => channel_portable(table.entries(), rows, &col, padded, &mut acc),
                }
                out.copy_from_slice(&acc[..len]);
            }
            (start, sums)
        })
        .collect()
}

/// One output channel over one chunk: `acc[g] += T[rows[k] + col[k][g]]`.
fn channel_portable(entries: &[i32], rows: &[u32], col: &[u8], len: usize, acc: &mut [i32]) {
    for (k, &row) in rows.iter().enumerate() {
        let row: &[i32; 256] = entries[row as usize..][..256]
            .try_into()
            .expect("a table row has 256 entries");
        for (a, &byte) in acc.iter_mut().zip(&col[k * len..(k + 1) * len]) {
            *a += row[usize::from(byte)];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::channel_portable`] with 8-wide gathers, 32 pixels per pass; `len` is a
    /// multiple of 32.
    #[target_feature(enable = "avx2")]
    pub unsafe fn channel(entries: &[i32], rows: &[u32], col: &[u8], len: usize, acc: &mut [i32]) {
        debug_assert_eq!(len % 32, 0);
        debug_assert!(col.len() >= rows.len() * len && acc.len() >= len);
        for block in (0..len).step_by(32) {
            let mut sum = [_mm256_setzero_si256(); 4];
            for (k, &row) in rows.iter().enumerate() {
                let base = entries.as_ptr().add(row as usize);
                let bytes = col.as_ptr().add(k * len + block);
                for (v, s) in sum.iter_mut().enumerate() {
                    let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.add(8 * v).cast()));
                    *s = _mm256_add_epi32(*s, _mm256_i32gather_epi32::<4>(base, idx));
                }
            }
            for (v, s) in sum.iter().enumerate() {
                let dst = acc.as_mut_ptr().add(block + 8 * v).cast::<__m256i>();
                _mm256_storeu_si256(dst, _mm256_add_epi32(_mm256_loadu_si256(dst), *s));
            }
        }
    }
}

/// The exact multiplier's sums through an f64 GEMM (exact for any realistic fan-in:
/// every partial sum is an integer below 2^53), in the same chunked form as
/// [`table_sums`].
pub fn exact_sums(
    geo: &ConvGeometry,
    act_codes: &[i32],
    weight_codes: &[i32],
) -> Vec<(usize, Vec<i32>)> {
    let fan_in = geo.fan_in();
    let acts: Vec<f64> = act_codes.iter().map(|&a| f64::from(a)).collect();
    let weights: Vec<f64> = weight_codes.iter().map(|&w| f64::from(w)).collect();
    let pixels = geo.batch * geo.out_pixels();
    (0..pixels.div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let start = chunk * CHUNK;
            let len = CHUNK.min(pixels - start);
            let mut col = vec![0f64; fan_in * len];
            im2col(geo, &acts, start..start + len, &mut col);
            let mut sums = vec![0f64; geo.out_channels * len];
            // SAFETY: dst is O x len, lhs O x K (row-major), rhs K x len (row-major);
            // the slices hold exactly those sizes.
            unsafe {
                gemm::gemm(
                    geo.out_channels,
                    len,
                    fan_in,
                    sums.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    weights.as_ptr(),
                    1,
                    fan_in as isize,
                    col.as_ptr(),
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
            (start, sums.iter().map(|&s| s as i32).collect())
        })
        .collect()
}
