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
}
