//! The sixteen-lane rows the kernels compute in, one type per instruction set, so
//! that each kernel is written once: [`Portable`] plain arrays for any CPU, and on
//! x86-64 [`Avx2`], two AVX2 registers. Both fuse each multiply-add with one
//! rounding, so both give the same bits.
//!
//! Explicit registers rather than arrays left to the auto-vectoriser: LLVM compiled
//! the same array code into vector FMAs in one kernel and into scalar code (20x
//! slower) in another, depending on how the results were stored and which kernels
//! shared a function.

/// Values per row: two eight-lane AVX2 registers.
pub(crate) const LANES: usize = 16;

/// A row of [`LANES`] `f32` accumulators or operands.
///
/// # Safety
///
/// Implementations may need CPU features: callers run them only where the CPU has
/// them (see [`Avx2`]), and pass pointers valid for [`LANES`] values.
pub(crate) unsafe trait Row: Copy {
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// Every lane `value`.
    unsafe fn splat(value: f32) -> Self;
    /// The [`LANES`] values at `from`.
    unsafe fn load(from: *const f32) -> Self;
    /// Writes the lanes to the [`LANES`] values at `to`.
    unsafe fn store(self, to: *mut f32);
    /// `self · by + add` lane by lane, rounded once.
    unsafe fn mul_add(self, by: Self, add: Self) -> Self;
}

/// Plain arrays with `f32::mul_add`: on x86-64 without FMA a library call per lane
/// (slow, and the same bits).
#[derive(Clone, Copy)]
pub(crate) struct Portable([f32; LANES]);

// SAFETY: needs no CPU feature; the pointers are the caller's to keep valid.
unsafe impl Row for Portable {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self([0.0; LANES])
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Self([value; LANES])
    }

    #[inline(always)]
    unsafe fn load(from: *const f32) -> Self {
        // SAFETY: the caller passes a pointer valid for `LANES` values.
        Self(unsafe { from.cast::<[f32; LANES]>().read_unaligned() })
    }

    #[inline(always)]
    unsafe fn store(self, to: *mut f32) {
        // SAFETY: the caller passes a pointer valid for `LANES` values.
        unsafe { to.cast::<[f32; LANES]>().write_unaligned(self.0) }
    }

    #[inline(always)]
    unsafe fn mul_add(self, by: Self, add: Self) -> Self {
        let mut out = add.0;
        for ((o, a), b) in out.iter_mut().zip(self.0).zip(by.0) {
            *o = a.mul_add(b, *o);
        }
        Self(out)
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    use super::Row;

    /// Two AVX2 registers with FMA. Only for CPUs with both features.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2([__m256; 2]);

    // SAFETY: every method needs AVX2 and FMA, which the trait's callers check.
    unsafe impl Row for Avx2 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn zero() -> Self {
            Self([_mm256_setzero_ps(); 2])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(value: f32) -> Self {
            Self([_mm256_set1_ps(value); 2])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(from: *const f32) -> Self {
            // SAFETY: the caller passes a pointer valid for sixteen values.
            unsafe { Self([_mm256_loadu_ps(from), _mm256_loadu_ps(from.add(8))]) }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(self, to: *mut f32) {
            // SAFETY: the caller passes a pointer valid for sixteen values.
            unsafe {
                _mm256_storeu_ps(to, self.0[0]);
                _mm256_storeu_ps(to.add(8), self.0[1]);
            }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn mul_add(self, by: Self, add: Self) -> Self {
            Self([
                _mm256_fmadd_ps(self.0[0], by.0[0], add.0[0]),
                _mm256_fmadd_ps(self.0[1], by.0[1], add.0[1]),
            ])
        }
    }
}

/// Whether this CPU runs [`Avx2`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}
