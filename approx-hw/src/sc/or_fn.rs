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
/// through the exponential and the Poisson sum, which the compiler vectorises. 32 f64
/// lanes are eight AVX2 registers, enough independent chains to hide the latency of
/// the exponential's polynomial (with 8 lanes the loop ran 2.3x slower).
const LANES: usize = 32;

/// `1/i` for the Poisson terms, `i = 0..=16`.
const INV: [f64; 17] = {
    let mut inv = [0.0; 17];
    let mut i = 1;
    while i < 17 {
        inv[i] = 1.0 / i as f64;
        i += 1;
    }
    inv
};

/// `e^{−s}` of every lane, for `s ≥ 0`, in plain f64 arithmetic, so that it inlines
/// and vectorises (libm's `exp` is a call per element): Cody–Waite reduction by ln 2,
/// a degree-12 Taylor polynomial on |r| ≤ ln 2 / 2 (truncation below 2e-16), and the
/// power of two built in the exponent bits. Relative error a few ulp; 0 beyond
/// `s = 708`, where the true value (below 1e-307) only ever multiplies finite terms.
#[inline(always)]
fn exp_neg(s: &[f64; LANES]) -> [f64; LANES] {
    const LOG2_E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // Adding 1.5·2^52 rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let (mut t, mut r, mut p) = ([0f64; LANES], [0f64; LANES], [1f64; LANES]);
    for l in 0..LANES {
        let x = -s[l].min(708.0);
        t[l] = x * LOG2_E + ROUND;
        let k = t[l] - ROUND;
        r[l] = (x - k * LN2_HI) - k * LN2_LO;
    }
    for inv in INV[1..=12].iter().rev() {
        for l in 0..LANES {
            p[l] = 1.0 + r[l] * inv * p[l];
        }
    }
    let mut e = [0f64; LANES];
    for l in 0..LANES {
        // bits(t) = bits(ROUND) + k, and bits(ROUND) ≡ 0 mod 2^12: the biased
        // exponent k + 1023 (in 1..=1023 here) is the low 12 bits shifted into place.
        let scale = f64::from_bits(t[l].to_bits().wrapping_add(1023) << 52);
        e[l] = if s[l] > 708.0 { 0.0 } else { p[l] * scale };
    }
    e
}

/// [`or_n`] and/or [`or_n_derivative`] of every element of `s`, into `value` and
/// `derivative` where given (each as long as `s`): the training surrogate's hot loop.
/// Asking for both shares the exponential and the Poisson sum. Within 1e-13 of the
/// scalar functions (the exponential is [`exp_neg`], not libm's) and several times
/// faster. NaN stays NaN; +∞ gives `n` and slope 0. Compiled for AVX2 where the CPU
/// has it (four f64 lanes per instruction instead of SSE2's two); the arithmetic is
/// the same IEEE operations either way (no fused multiply-adds), so the results are
/// identical.
///
/// # Panics
/// If an output's length differs from `s`'s.
pub fn or_n_slices(n: u32, s: &[f32], value: Option<&mut [f32]>, derivative: Option<&mut [f32]>) {
    for out in [&value, &derivative].into_iter().flatten() {
        assert_eq!(out.len(), s.len(), "OR-n output length");
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2(n: u32, s: &[f32], value: Option<&mut [f32]>, derivative: Option<&mut [f32]>) {
            blocks(n, s, value, derivative)
        }
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2(n, s, value, derivative) };
    }
    blocks(n, s, value, derivative)
}

/// [`or_n_slices`]' body, inlined into each instruction-set variant. Each block of
/// [`LANES`] elements is widened to f64 (+∞ and anything above 1e6, where every
/// Poisson term is 0, become 1e6; a short last block is padded with zeros).
#[inline(always)]
fn blocks(n: u32, s: &[f32], mut value: Option<&mut [f32]>, mut derivative: Option<&mut [f32]>) {
    for (b, s) in s.chunks(LANES).enumerate() {
        let at = b * LANES..b * LANES + s.len();
        let mut v = [0f64; LANES];
        for (v, &x) in v.iter_mut().zip(s) {
            let x = f64::from(x);
            *v = if x > 1e6 { 1e6 } else { x };
        }
        let sums = poisson_sums(n, &v);
        if let Some(out) = value.as_deref_mut() {
            let y = values(n, &v, &sums);
            for (o, y) in out[at.clone()].iter_mut().zip(y) {
                *o = y as f32;
            }
        }
        if let Some(out) = derivative.as_deref_mut() {
            for ((o, &p), &v) in out[at].iter_mut().zip(&sums.plain).zip(&v) {
                *o = if v.is_nan() {
                    v as f32
                } else if v <= 0.0 {
                    1.0
                } else {
                    p.min(1.0) as f32
                };
            }
        }
    }
}

/// `f_n` of every lane of `v` from its Poisson sums: the closed form, or for tiny s
/// the tail form (see [`or_n`]); `v` itself where it is NaN or ≤ 0.
#[inline(always)]
fn values(n: u32, v: &[f64; LANES], sums: &PoissonSums) -> [f64; LANES] {
    let nf = f64::from(n);
    // Tail form: s − Σ_{k>n} (k − n)·P(X = k), four terms, from P(X = n) = P(X = n −
    // 1)·s/n.
    let mut term = [0f64; LANES];
    let mut excess = [0f64; LANES];
    for l in 0..LANES {
        term[l] = sums.last[l] * v[l].max(0.0) * INV[n as usize];
    }
    for k in 1..=4 {
        let inv = 1.0 / (nf + f64::from(k));
        for l in 0..LANES {
            term[l] *= v[l].max(0.0) * inv;
            excess[l] += f64::from(k) * term[l];
        }
    }
    let mut y = [0f64; LANES];
    for l in 0..LANES {
        // Closed form: n − Σ_{i<n} (n − i)·P(X = i).
        let closed = (nf - sums.weighted[l]).max(0.0);
        y[l] = if v[l].is_nan() || v[l] <= 0.0 {
            v[l]
        } else if v[l] < SMALL_S {
            v[l] - excess[l]
        } else {
            closed
        };
    }
    y
}

/// Sums of the Poisson(s) probabilities `P(X = i)`, `i < n`, per lane.
struct PoissonSums {
    /// `Σ P(X = i)`.
    plain: [f64; LANES],
    /// `Σ (n − i)·P(X = i)`.
    weighted: [f64; LANES],
    /// `P(X = n − 1)`.
    last: [f64; LANES],
}

/// The [`PoissonSums`] of every lane of `v` (negative and NaN lanes as `s = 0`), the
/// lanes in lockstep so that the loop vectorises.
#[inline(always)]
fn poisson_sums(n: u32, v: &[f64; LANES]) -> PoissonSums {
    debug_assert!((1..=16).contains(&n));
    let n = n.clamp(1, 16);
    let mut s = [0f64; LANES];
    for l in 0..LANES {
        s[l] = v[l].max(0.0);
    }
    let mut term = exp_neg(&s);
    let mut plain = term;
    let mut weighted = [0f64; LANES];
    for l in 0..LANES {
        weighted[l] = f64::from(n) * term[l];
    }
    for i in 1..n {
        let (inv, weight) = (INV[i as usize], f64::from(n - i));
        for l in 0..LANES {
            term[l] *= s[l] * inv;
            plain[l] += term[l];
            weighted[l] += weight * term[l];
        }
    }
    PoissonSums {
        plain,
        weighted,
        last: term,
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
        s.extend([700.0, 708.5, 745.0, 1e5, 1e7, f32::INFINITY, 3.0]);
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
                    (f64::from(got) - want).abs() <= 1e-13 + 1e-7 * want.abs()
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
    fn exp_neg_is_within_a_few_ulp_of_libm() {
        for i in 0..100_000 / LANES {
            let s: [f64; LANES] = std::array::from_fn(|l| (i * LANES + l) as f64 * 0.00708);
            for (s, got) in s.iter().zip(exp_neg(&s)) {
                let want = (-s).exp();
                assert!(
                    (got - want).abs() <= 4.0 * f64::EPSILON * want,
                    "e^-{s}: {got} vs {want}"
                );
            }
        }
        assert_eq!(exp_neg(&[709.0; LANES]), [0.0; LANES]);
    }
}
