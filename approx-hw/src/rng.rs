//! Seed mixing and Gaussian noise shared by the generators of every hardware kind and
//! by training's error injection.

use crate::simd::with_avx2;

/// splitmix64's finaliser: a bijective 64-bit mixer, used to derive independent keys
/// from (seed, index) pairs.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Standard normal samples drawn together by [`fill_standard_normal`], from as many
/// 32-bit words of the generator.
const NORMAL_BLOCK: usize = 64;

/// Fills `out` with standard normal samples from `rng`: the Box–Muller transform in
/// f32 of pairs of 24-bit uniforms, `r = √(−2 ln u₁)`, `(r cos 2πu₂, r sin 2πu₂)`,
/// with its own polynomial `ln`, `sin` and `cos` (within a few f32 ulp) so that a
/// block of samples vectorises. Several times faster than `rand_distr`'s ziggurat
/// drawn one sample at a time, which dominated the cost of error injection. |samples|
/// ≤ 5.8 (`u₁ ≥ 2^−24`). Each block of [`NORMAL_BLOCK`] samples (or the slice's
/// shorter tail) takes [`NORMAL_BLOCK`] words. Compiled for AVX2 where the CPU has it;
/// the arithmetic is the same IEEE operations either way, so the samples are
/// identical.
pub fn fill_standard_normal<R: rand::Rng>(rng: &mut R, out: &mut [f32]) {
    let mut bits = [0u32; NORMAL_BLOCK];
    for block in out.chunks_mut(NORMAL_BLOCK) {
        rng.fill(&mut bits[..]);
        normal_block(&bits, block);
    }
}

/// One block of [`fill_standard_normal`]: the cosines of the pairs `(bits[i],
/// bits[i + 32])` then their sines, as many as `out` holds.
fn normal_block(bits: &[u32; NORMAL_BLOCK], out: &mut [f32]) {
    #[inline(always)]
    fn run(bits: &[u32; NORMAL_BLOCK], out: &mut [f32]) {
        const HALF: usize = NORMAL_BLOCK / 2;
        let mut z = [0f32; NORMAL_BLOCK];
        for i in 0..HALF {
            let (c, s) = box_muller(bits[i], bits[HALF + i]);
            z[i] = c;
            z[HALF + i] = s;
        }
        out.copy_from_slice(&z[..out.len()]);
    }
    with_avx2(
        #[inline(always)]
        || run(bits, out),
    )
}

/// The Box–Muller pair of the uniforms in the top 24 bits of `a` (`u₁ ∈ (0, 1]`) and
/// `b` (`u₂ ∈ [0, 1)`).
#[inline(always)]
fn box_muller(a: u32, b: u32) -> (f32, f32) {
    const ULP: f32 = 1.0 / (1u32 << 24) as f32;
    let u1 = ((a >> 8) + 1) as f32 * ULP;
    let u2 = (b >> 8) as f32 * ULP;
    let r = (-2.0 * ln(u1)).sqrt();
    let (cos, sin) = cos_sin_turns(u2);
    (r * cos, r * sin)
}

/// `ln u` for normal positive `u`: `u = m·2^e` with `m ∈ [√½, √2)`, and `ln m =
/// 2 atanh t`, `t = (m − 1)/(m + 1)`, `|t| ≤ 0.172`, by its series to `t⁹` (truncation
/// below 4e-10 relative).
#[inline(always)]
fn ln(u: f32) -> f32 {
    const LN2: f32 = std::f32::consts::LN_2;
    // Shift the mantissa range from [1, 2) to [√½, √2): bits below √2's go up by one
    // exponent.
    let bits = u.to_bits().wrapping_sub(0x3F35_04F3);
    let e = (bits as i32 >> 23) as f32;
    let m = f32::from_bits((bits & 0x007F_FFFF).wrapping_add(0x3F35_04F3));
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    e * LN2 + 2.0 * t * series
}

/// `(cos 2πu, sin 2πu)` for `u ∈ [0, 1]`: the nearest quarter turn `q/4` taken out
/// exactly, Taylor polynomials on the remaining `|φ| ≤ π/4` (to `φ¹⁰` and `φ⁹`,
/// truncation below 3e-8), and the quarter turns applied as swaps and signs.
#[inline(always)]
fn cos_sin_turns(u: f32) -> (f32, f32) {
    let q = (u * 4.0 + 0.5).floor();
    let phi = (u - q * 0.25) * std::f32::consts::TAU;
    let p2 = phi * phi;
    let sin = phi
        * (1.0
            + p2 * (-1.0 / 6.0
                + p2 * (1.0 / 120.0 + p2 * (-1.0 / 5040.0 + p2 * (1.0 / 362_880.0)))));
    let cos = 1.0
        + p2 * (-0.5
            + p2 * (1.0 / 24.0
                + p2 * (-1.0 / 720.0 + p2 * (1.0 / 40_320.0 + p2 * (-1.0 / 3_628_800.0)))));
    // Branch-free, so that a block vectorises: an odd quarter turn maps (c, s) to
    // (−s, c), the half turn negates both.
    let q = q as u32;
    let (x, y) = if q & 1 == 1 { (-sin, cos) } else { (cos, sin) };
    let sign = if q & 2 == 2 { -1.0 } else { 1.0 };
    (sign * x, sign * y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ln_and_turns_match_libm() {
        for i in 1..=1u32 << 16 {
            let u = ((i.wrapping_mul(2_654_435_761) >> 8) + 1) as f32 / (1u32 << 24) as f32;
            let want = f64::from(u).ln();
            assert!(
                (f64::from(ln(u)) - want).abs() <= 2e-7 * want.abs().max(1.0),
                "ln {u}"
            );
            let (c, s) = cos_sin_turns(u);
            let a = f64::from(u) * std::f64::consts::TAU;
            assert!((f64::from(c) - a.cos()).abs() < 3e-7, "cos at {u}");
            assert!((f64::from(s) - a.sin()).abs() < 3e-7, "sin at {u}");
        }
        assert_eq!(ln(1.0), 0.0);
        // The extreme uniforms: u₁ = 1 gives 0, u₁ = 2^−24 the largest radius.
        for a in [0, 0xFF, 0x100, u32::MAX - 0x100, u32::MAX] {
            for b in [0, 0x4000_0000, u32::MAX] {
                let (c, s) = box_muller(a, b);
                assert!(
                    c.is_finite() && s.is_finite() && c.hypot(s) < 5.8,
                    "{a} {b}"
                );
            }
        }
    }

    /// Φ(z), the standard normal CDF, by Simpson's rule on the density from −9.
    fn normal_cdf(z: f64) -> f64 {
        let steps = 20_000;
        let lo = -9.0;
        let h = (z - lo) / steps as f64;
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        // Simpson's rule.
        let inner: f64 = (1..steps)
            .map(|k| (if k % 2 == 1 { 4.0 } else { 2.0 }) * pdf(lo + k as f64 * h))
            .sum();
        (pdf(lo) + inner + pdf(z)) * h / 3.0
    }

    #[test]
    fn samples_are_standard_normal_and_seeded() {
        let n = 1 << 20;
        let mut z = vec![0f32; n];
        fill_standard_normal(&mut ChaCha8Rng::seed_from_u64(5), &mut z);
        let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = z
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let kurt = z.iter().map(|&v| f64::from(v).powi(4)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.005, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        // The empirical CDF against Φ at ±0..4 σ (binomial sd ≤ 5e-4).
        for k in -8..=8 {
            let t = f64::from(k) * 0.5;
            let below = z.iter().filter(|&&v| f64::from(v) < t).count() as f64 / n as f64;
            assert!(
                (below - normal_cdf(t)).abs() < 2.5e-3,
                "P(z < {t}) = {below}"
            );
        }
        // Same seed, same samples, at any slice length (odd lengths included).
        let mut again = vec![0f32; 1001];
        fill_standard_normal(&mut ChaCha8Rng::seed_from_u64(5), &mut again);
        assert_eq!(again[..1000], z[..1000]);
        let mut other = vec![0f32; 1000];
        fill_standard_normal(&mut ChaCha8Rng::seed_from_u64(6), &mut other);
        assert_ne!(other, z[..1000]);
    }
}
