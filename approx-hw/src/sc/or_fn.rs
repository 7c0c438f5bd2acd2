//! The OR-n activation function (spec §5.1): the expected per-cycle output of an OR-n
//! accumulator, as a smooth function of the exact dot product.
//!
//! With `s = Σ a_k·w_k` (values in stream-probability units), the per-cycle count of
//! ones is ≈ Poisson(s), and OR-n adds `min(count, n)`:
//!
//! `f_n(s) = E[min(X, n)] = Σ_{k=0}^{n−1} P(X > k)`, `f_n′(s) = P(X ≤ n − 1)`.
//!
//! Evaluated in f64 through the Poisson tail probabilities, summing the tail series
//! directly when it is small (no cancellation for small s) and `1 − CDF` otherwise, so
//! the result is accurate for tiny and huge s alike (`f_n(s) → n`, `f_n′(s) → 0`).
//! For s ≤ 0 (outside the split-unipolar domain) `f_n` continues linearly: `f_n(s) = s`,
//! `f_n′(s) = 1`, the function's value and slope at 0.

/// Terms `e^{−s} s^i / i!` for i in 0..=k, computed iteratively.
fn poisson_pmf_upto(s: f64, k: usize) -> impl Iterator<Item = f64> {
    let mut term = (-s).exp();
    (0..=k).map(move |i| {
        if i > 0 {
            term *= s / i as f64;
        }
        term
    })
}

/// `P(X > k)` for `X ~ Poisson(s)`, s > 0.
fn poisson_upper_tail(s: f64, k: usize) -> f64 {
    if s < (k + 1) as f64 {
        // Tail series: e^{−s} Σ_{i>k} s^i/i!; terms shrink by s/i < 1 from the start.
        let mut term = poisson_pmf_upto(s, k).last().unwrap_or(0.0);
        let mut sum = 0.0;
        let mut i = k + 1;
        loop {
            term *= s / i as f64;
            sum += term;
            if term <= sum * 1e-17 || i > k + 1000 {
                return sum;
            }
            i += 1;
        }
    } else {
        (1.0 - poisson_pmf_upto(s, k).sum::<f64>()).max(0.0)
    }
}

/// `f_n(s)`: expected per-cycle output of OR-n at dot product `s` (n ≥ 1).
pub fn or_n(n: u32, s: f64) -> f64 {
    if s.is_nan() || s == f64::INFINITY {
        return if s.is_nan() { s } else { n as f64 };
    }
    if s <= 0.0 {
        return s;
    }
    (0..n as usize).map(|k| poisson_upper_tail(s, k)).sum()
}

/// `f_n′(s) = P(Poisson(s) ≤ n − 1)`, the derivative of [`or_n`].
pub fn or_n_derivative(n: u32, s: f64) -> f64 {
    if s.is_nan() || s == f64::INFINITY {
        return if s.is_nan() { s } else { 0.0 };
    }
    if s <= 0.0 {
        return 1.0;
    }
    let k = n as usize - 1;
    if s < (k + 1) as f64 {
        1.0 - poisson_upper_tail(s, k)
    } else {
        poisson_pmf_upto(s, k).sum()
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
}
