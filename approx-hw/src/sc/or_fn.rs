//! The OR-n activation function (spec §5.1): the expected per-cycle output of an OR-n
//! accumulator, as a smooth function of the exact dot product.
//!
//! With `s = Σ a_k·w_k` (values in stream-probability units), the per-cycle count of
//! ones is ≈ Poisson(s), and OR-n adds `min(count, n)`:
//!
//! `f_n(s) = E[min(X, n)] = Σ_{k=0}^{n−1} P(X > k)`, `f_n′(s) = P(X ≤ n − 1)`.
//!
//! Evaluated in f64 from the closed form `n − e^{−s} Σ_{i<n} (n − i) s^i / i!`, and
//! for tiny s (where that would cancel) from the tail series `s − E[(X − n)⁺]`, so
//! the result is accurate for tiny and huge s alike (`f_n(s) → n`, `f_n′(s) → 0`)
//! at the cost of one `exp` and n multiply-adds.
//! For s ≤ 0 (outside the split-unipolar domain) `f_n` continues linearly: `f_n(s) = s`,
//! `f_n′(s) = 1`, the function's value and slope at 0.

use crate::simd::with_avx2;

/// Below this `s`, [`or_n`] uses its tail series (the closed form would cancel).
const SMALL_S: f64 = 1e-3;

/// `f_n(s)`: expected per-cycle output of OR-n at dot product `s` (n ≥ 1).
pub fn or_n(n: u32, s: f64) -> f64 {
    if s.is_nan() || s == f64::INFINITY {
        return if s.is_nan() { s } else { n as f64 };
    }
    if s <= 0.0 {
        return s;
    }
    if s < SMALL_S {
        // f_n(s) = s − E[(X − n)⁺] = s − e^{−s} Σ_{k>n} (k − n) s^k / k!; the terms
        // shrink by s/k < 1e-3, so four of them reach f64 precision.
        let mut term = (-s).exp() * (1..=n).fold(1.0, |t, i| t * s / f64::from(i));
        let mut excess = 0.0;
        for k in n + 1..=n + 4 {
            term *= s / f64::from(k);
            excess += f64::from(k - n) * term;
        }
        return s - excess;
    }
    // Closed form (spec §5.1): n − Σ_{i<n} (n − i) e^{−s} s^i / i!, the Poisson
    // terms built up from e^{−s} so that huge s underflows to 0 instead of overflowing.
    let mut term = (-s).exp();
    let mut sum = 0.0;
    for i in 0..n {
        if i > 0 {
            term *= s / f64::from(i);
        }
        sum += f64::from(n - i) * term;
    }
    (f64::from(n) - sum).max(0.0)
}

/// `f_n′(s) = P(Poisson(s) ≤ n − 1) = e^{−s} Σ_{i<n} s^i / i!`, the derivative of
/// [`or_n`] (a sum of positive terms: no cancellation anywhere).
pub fn or_n_derivative(n: u32, s: f64) -> f64 {
    if s.is_nan() || s == f64::INFINITY {
        return if s.is_nan() { s } else { 0.0 };
    }
    if s <= 0.0 {
        return 1.0;
    }
    let mut term = (-s).exp();
    let mut sum = term;
    for i in 1..n {
        term *= s / f64::from(i);
        sum += term;
    }
    sum.min(1.0)
}

/// Elements evaluated together by [`or_n_slices`]: a block's lanes run in lockstep
/// through the exponential and the Poisson sums, which the compiler vectorises. 32 f32
/// lanes are four AVX2 registers per array, enough independent chains to hide the
/// latency of the exponential's polynomial; 64 (eight registers per array) spilled
/// more of the block to the stack and measured 1.2x as long per element here, 8 or
/// 16 longer still.
const LANES: usize = 32;

/// Beyond this `s`, `e^{−s}` (below 1.2e-37) is taken as 0: every Poisson term up to
/// `n = 16` is then below 1e-20, and f32 subnormals (slow on some CPUs) never arise.
const EXP_ZERO_S: f32 = 85.0;

/// `1/i` for the Poisson terms, `i = 0..=16`.
const INV: [f32; 17] = {
    let mut inv = [0.0; 17];
    let mut i = 1;
    while i < 17 {
        inv[i] = 1.0 / i as f32;
        i += 1;
    }
    inv
};

/// `(e^{−s}, e^{−s} − 1)` of every lane, for `0 ≤ s ≤` [`EXP_ZERO_S`] (beyond it `(0,
/// −1)`), in plain f32 arithmetic so that it vectorises: Cody–Waite reduction `s = k
/// ln 2 − r`, a degree-7 Taylor polynomial for `e^r − 1` on `|r| ≤ ln 2 / 2`
/// (truncation below 6e-9), and `2^k` built in the exponent bits. For `k = 0` the
/// polynomial is `e^{−s} − 1` itself, so the second value keeps full relative
/// precision for tiny s (as `expm1`) instead of cancelling.
#[inline(always)]
fn exp_neg(s: &[f32; LANES]) -> ([f32; LANES], [f32; LANES]) {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that k·LN2_HI is exact for |k| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let (mut e, mut em1) = ([0f32; LANES], [0f32; LANES]);
    for l in 0..LANES {
        let x = -s[l].min(EXP_ZERO_S);
        let t = x * LOG2_E + ROUND;
        let k = t - ROUND;
        let r = (x - k * LN2_HI) - k * LN2_LO;
        // e^r − 1 = r·(1 + r/2 + r²/6 + ... + r⁶/7!).
        let q = 1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0))))));
        let m = r * q;
        // bits(t) = bits(ROUND) + k and bits(ROUND) ≡ 0 mod 2^9: the biased exponent
        // k + 127 (in 1..=127 here) is the low 9 bits shifted into place.
        let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
        // Zeroed beyond the range by a mask, not a branch: LLVM turns a select
        // against the zero-initialised array into two masked stores, which AMD CPUs
        // run in microcode (the whole function took 1.6x as long). A zeroed lane has
        // k ≠ 0, so its second value is 0 − 1 = −1.
        let keep = if s[l] > EXP_ZERO_S { 0 } else { u32::MAX };
        let exp = f32::from_bits(((1.0 + m) * scale).to_bits() & keep);
        e[l] = exp;
        em1[l] = if k == 0.0 { m } else { exp - 1.0 };
    }
    (e, em1)
}

/// [`or_n`] and/or [`or_n_derivative`] of every element of `s`, into `value` and
/// `derivative` where given (each as long as `s`): the training surrogate's hot loop,
/// in f32 and several times faster than the scalar functions, within 4e-6 relative of
/// them (about n f32 ulp; 1e-19 absolute, the largest term dropped beyond
/// [`EXP_ZERO_S`]). Asking for both shares the exponential and the Poisson
/// terms. NaN stays NaN; +∞ gives `n` and slope 0.
///
/// `f_n(s) = Σ_{k<n} P(X > k)` from `P(X > 0) = −(e^{−s} − 1)` (an `expm1`, exact in
/// relative terms for tiny s, where `n − Σ (n − i)·P(X = i)` would cancel to nothing in
/// f32) by `P(X > k) = P(X > k − 1) − P(X = k)`, each step off by at most about an ulp
/// of `P(X > 0)`; `f_n′(s) = Σ_{i<n} P(X = i)`, a sum of positive terms.
///
/// Compiled for AVX2 where the CPU has it (eight f32 lanes per instruction instead of
/// SSE2's four); the arithmetic is the same IEEE operations either way (no fused
/// multiply-adds), so the results are identical.
///
/// # Panics
/// If an output's length differs from `s`'s.
pub fn or_n_slices(n: u32, s: &[f32], value: Option<&mut [f32]>, derivative: Option<&mut [f32]>) {
    for out in [&value, &derivative].into_iter().flatten() {
        assert_eq!(out.len(), s.len(), "OR-n output length");
    }
    with_avx2(
        #[inline(always)]
        || blocks(n, s, value, derivative),
    )
}

/// [`or_n_slices`]' body, inlined into each instruction-set variant, over blocks of
/// [`LANES`] elements (a short last block is padded with zeros).
#[inline(always)]
fn blocks(n: u32, s: &[f32], mut value: Option<&mut [f32]>, mut derivative: Option<&mut [f32]>) {
    debug_assert!((1..=16).contains(&n));
    let n = n.clamp(1, 16) as usize;
    for (b, s) in s.chunks(LANES).enumerate() {
        let at = b * LANES..b * LANES + s.len();
        let mut v = [0f32; LANES];
        v[..s.len()].copy_from_slice(s);
        // Negative and NaN lanes are evaluated at 0 and replaced at the end; lanes
        // beyond the exponential's range (+∞ included) at its edge, where every term
        // is 0 (∞ would turn 0·s into NaN).
        let mut x = [0f32; LANES];
        for l in 0..LANES {
            x[l] = if v[l] > 0.0 {
                v[l].min(2.0 * EXP_ZERO_S)
            } else {
                0.0
            };
        }
        let (mut term, em1) = exp_neg(&x);
        let mut plain = term;
        let mut above = [0f32; LANES];
        let mut f = [0f32; LANES];
        for l in 0..LANES {
            above[l] = -em1[l];
            f[l] = above[l];
        }
        for inv in &INV[1..n] {
            for l in 0..LANES {
                term[l] *= x[l] * inv;
                plain[l] += term[l];
                above[l] -= term[l];
                f[l] += above[l];
            }
        }
        if let Some(out) = value.as_deref_mut() {
            for ((o, &v), &f) in out[at.clone()].iter_mut().zip(&v).zip(&f) {
                *o = if v.is_nan() || v <= 0.0 { v } else { f };
            }
        }
        if let Some(out) = derivative.as_deref_mut() {
            for ((o, &v), &p) in out[at].iter_mut().zip(&v).zip(&plain) {
                *o = if v.is_nan() {
                    v
                } else if v <= 0.0 {
                    1.0
                } else {
                    p.min(1.0)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_values() {
        let s = [0.25, 1.0, 2.0, 4.0];
        let expect = [
            [0.221199, 0.632121, 0.864665, 0.981684],
            [0.247698, 0.896362, 1.458659, 1.890106],
            [0.249860, 0.976663, 1.781982, 2.652003],
            [0.249993, 0.995651, 1.924859, 3.218533],
        ];
        for (n, row) in (1..=4).zip(expect) {
            for (s, e) in s.iter().zip(row) {
                let got = or_n(n, *s);
                assert!((got - e).abs() < 1e-6, "f_{n}({s}) = {got}, spec {e}");
            }
        }
    }

    /// The closed forms of §5.1 for n ≤ 4, where they are accurate.
    fn closed_form(n: u32, s: f64) -> (f64, f64) {
        let mut f = n as f64;
        let mut d = 0.0;
        let mut term = 1.0;
        for i in 0..n {
            if i > 0 {
                term *= s / i as f64;
            }
            f -= (-s).exp() * (n - i) as f64 * term;
            d += (-s).exp() * term;
        }
        (f, d)
    }

    #[test]
    fn matches_closed_form_and_finite_differences() {
        for n in 1..=16 {
            for &s in &[0.01, 0.1, 0.5, 1.0, 3.0, 7.5, 15.0, 40.0] {
                let (f, d) = closed_form(n, s);
                assert!((or_n(n, s) - f).abs() < 1e-9, "f_{n}({s})");
                assert!((or_n_derivative(n, s) - d).abs() < 1e-9, "f_{n}'({s})");
                let h = 1e-5;
                let fd = (or_n(n, s + h) - or_n(n, s - h)) / (2.0 * h);
                assert!((fd - or_n_derivative(n, s)).abs() < 1e-6, "fd f_{n}'({s})");
            }
        }
    }

    #[test]
    fn stable_at_extremes() {
        for n in 1..=16 {
            // Tiny s: f_n(s) ≈ s with full relative precision.
            let s = 1e-12;
            assert!(((or_n(n, s) - s) / s).abs() < 1e-9, "n={n}");
            assert!((or_n_derivative(n, s) - 1.0).abs() < 1e-9);
            // Huge s: saturates at n, derivative 0, no NaN or overflow.
            for s in [1e3, 1e6, 1e30, f64::INFINITY] {
                assert_eq!(or_n(n, s), n as f64, "n={n} s={s}");
                assert_eq!(or_n_derivative(n, s), 0.0);
            }
            assert_eq!(or_n(n, 0.0), 0.0);
        }
    }

    #[test]
    fn slices_match_the_scalar_functions() {
        let mut s: Vec<f32> = vec![0.0, -0.5, -1e9, 1e-9, 3e-4, 9.99e-4, 1e-3, 1.5e-3];
        s.extend((1..400).map(|i| i as f32 * 0.137));
        s.extend((0..300).map(|i| 10f32.powf(-8.0 + i as f32 * 0.03)));
        s.extend([84.9, 85.0, 85.1, 88.0, 700.0, 1e5, 1e7, f32::INFINITY, 3.0]);
        for n in 1..=16 {
            let (mut f, mut d) = (vec![0f32; s.len()], vec![0f32; s.len()]);
            or_n_slices(n, &s, Some(&mut f), Some(&mut d));
            // One output alone gives the same bits as both together.
            let (mut f1, mut d1) = (vec![0f32; s.len()], vec![0f32; s.len()]);
            or_n_slices(n, &s, Some(&mut f1), None);
            or_n_slices(n, &s, None, Some(&mut d1));
            assert_eq!((&f1, &d1), (&f, &d));
            for ((&v, &f), &d) in s.iter().zip(&f).zip(&d) {
                let (fe, de) = (or_n(n, f64::from(v)), or_n_derivative(n, f64::from(v)));
                let close = |got: f32, want: f64| {
                    (f64::from(got) - want).abs() <= 1e-19 + 4e-6 * want.abs()
                };
                assert!(close(f, fe), "f_{n}({v}) = {f}, want {fe}");
                assert!(close(d, de), "f_{n}'({v}) = {d}, want {de}");
            }
        }
        let (mut f, mut d) = ([0f32; 1], [0f32; 1]);
        or_n_slices(2, &[f32::NAN], Some(&mut f), Some(&mut d));
        assert!(f[0].is_nan() && d[0].is_nan());
    }

    #[test]
    fn exp_neg_and_its_expm1_are_within_a_few_ulp_of_libm() {
        for i in 0..200_000 / LANES {
            let s: [f32; LANES] =
                std::array::from_fn(|l| (i * LANES + l) as f32 * 4.25e-4 + 1e-9 * l as f32);
            let (e, em1) = exp_neg(&s);
            for l in 0..LANES {
                let x = -f64::from(s[l]);
                let (want, want_m1) = (x.exp(), x.exp_m1());
                let ulp = f64::from(f32::EPSILON);
                assert!(
                    (f64::from(e[l]) - want).abs() <= 2.0 * ulp * want,
                    "e^-{}",
                    s[l]
                );
                assert!(
                    (f64::from(em1[l]) - want_m1).abs() <= 2.0 * ulp * want_m1.abs(),
                    "e^-{} - 1: {} vs {want_m1}",
                    s[l],
                    em1[l]
                );
            }
        }
        let (e, em1) = exp_neg(&[85.5; LANES]);
        assert_eq!((e, em1), ([0.0; LANES], [-1.0; LANES]));
    }
}
