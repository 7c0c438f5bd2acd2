//! Run-time selection of the instruction set for plain loops written to vectorise.

/// Runs `body` compiled for AVX2 where the CPU has it, otherwise for the build's
/// baseline (SSE2 on x86-64): `body` is inlined into an AVX2-enabled frame, so its
/// loops over `f32` use eight lanes instead of four. Pass a closure marked
/// `#[inline(always)]` (whatever it calls inlined too): a large closure without the
/// mark can be compiled out of line, for the baseline, and then nothing is gained.
/// Results are the same on both paths as long as `body` uses plain IEEE operations
/// (no `mul_add`, whose fusing depends on the target).
#[inline(always)]
pub fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(body) };
    }
    body()
}
