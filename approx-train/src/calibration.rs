//! Error-injection calibration (`specs/sc-rexsc.md` §6): the residual of the
//! bit-accurate forward against the approximation, binned by the approximation's
//! value and fitted with degree-5 polynomials for its mean (bias) and spread (std).

use std::ops::Range;

/// Polynomial degree of the bias and std models.
pub const DEGREE: usize = 5;

/// Bins of the calibration fit.
const BINS: usize = 30;

/// A layer's calibrated error: `bias(x) = Σ β_k x^k` and `std(x) = Σ σ_k x^k`, with
/// `x` the approximation's output. Injected as `y = x + bias(x) + std(x)·ε`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Bias coefficients β_0..β_5.
    pub bias: [f64; DEGREE + 1],
    /// Std coefficients σ_0..σ_5.
    pub std: [f64; DEGREE + 1],
    /// The range `[lo, hi]` of approximation values the fit saw (where the
    /// polynomials mean something; for plots and inspection).
    #[serde(default)]
    pub range: [f64; 2],
}

/// How residuals are binned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binning {
    /// REX-SC's scheme for SC units in `[0, n]`: 30 bin starts `linspace(0,
    /// max(bit-accurate), 30)`, each bin `[start, start + 0.1)` (bins may overlap), fit
    /// at the bin starts; the bias is fitted only when all 30 bins hold more than one
    /// residual.
    RexSc,
    /// Any value range: 30 adjacent equal-width bins over the approximation's range,
    /// fit at the bin centres; the bias is fitted when at least 15 bins are populated.
    Range,
}

/// What a calibration fits: the error model that `inject` epochs train against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CalibrationScheme {
    /// Bias and std polynomials binned over the approximation's range, plus the
    /// fixed pattern ([`fit_with_fixed_pattern`]) on hardware whose error is a fixed
    /// function of its operands. The default.
    #[default]
    FixedPattern,
    /// The polynomials alone, binned over the approximation's range: every error that
    /// is not a function of the approximate value is injected as fresh noise.
    Polynomials,
    /// REX-SC's calibration as published: its binning ([`Binning::RexSc`]), the
    /// polynomials alone. For reproducing the paper.
    RexSc,
}

impl CalibrationScheme {
    /// Every scheme, in the order the docs list them.
    pub const ALL: [CalibrationScheme; 3] = [
        CalibrationScheme::FixedPattern,
        CalibrationScheme::Polynomials,
        CalibrationScheme::RexSc,
    ];

    /// The name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CalibrationScheme::FixedPattern => "fixed-pattern",
            CalibrationScheme::Polynomials => "polynomials",
            CalibrationScheme::RexSc => "rex-sc",
        }
    }

    /// How this scheme bins residuals.
    pub fn binning(self) -> Binning {
        match self {
            CalibrationScheme::RexSc => Binning::RexSc,
            _ => Binning::Range,
        }
    }

    /// Whether this scheme fits a fixed pattern (where the hardware has one).
    pub fn fits_fixed_pattern(self) -> bool {
        self == CalibrationScheme::FixedPattern
    }
}

impl std::fmt::Display for CalibrationScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CalibrationScheme {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CalibrationScheme::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown calibration scheme `{s}`: expected `fixed-pattern`, `polynomials` or `rex-sc`")
            })
    }
}

fn eval(c: &[f64; DEGREE + 1], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
}

impl Calibration {
    /// `bias(x)`, with `x` held inside the fitted range (see [`Calibration::clamp`]).
    pub fn bias(&self, x: f64) -> f64 {
        eval(&self.bias, self.clamp(x))
    }

    /// `bias′(x)`: 0 outside the fitted range, where `bias` is held constant.
    pub fn bias_derivative(&self, x: f64) -> f64 {
        if self.clamp(x) != x {
            return 0.0;
        }
        (1..=DEGREE)
            .rev()
            .fold(0.0, |acc, k| acc * x + k as f64 * self.bias[k])
    }

    /// `std(x)`, with `x` held inside the fitted range and the result clamped at 0 (a
    /// fitted polynomial can dip below zero between bins).
    pub fn std(&self, x: f64) -> f64 {
        eval(&self.std, self.clamp(x)).max(0.0)
    }

    /// `x` clamped into [`Calibration::range`]. Outside the values the fit saw the
    /// polynomials are extrapolations that grow like `x^5`: a fit on `[0, 0.3]` can
    /// inject errors of thousands at `x = 2`, which wrecks the batch-norm statistics
    /// of the layers behind. So the error model keeps its edge values there. An
    /// empty range (calibrations saved before ranges were recorded) leaves `x` as is.
    pub fn clamp(&self, x: f64) -> f64 {
        let [lo, hi] = self.range;
        if lo < hi {
            x.clamp(lo, hi)
        } else {
            x
        }
    }

    /// Fits bias and std from the approximation's values `approx` and the bit-accurate
    /// values `bit` of the same units (same length). Returns the zero calibration when
    /// too few bins are populated to fit anything. Pairs with a non-finite value (a
    /// diverging run) are left out of the bins and of the bins' range.
    pub fn fit(approx: &[f32], bit: &[f32], binning: Binning) -> Calibration {
        let finite = |v: f32| v.is_finite();
        let (starts, width, offset, need_all) = match binning {
            Binning::RexSc => {
                let max = bit
                    .iter()
                    .filter(|&&v| finite(v))
                    .fold(0f32, |m, &v| m.max(v)) as f64;
                let starts: Vec<f64> = (0..BINS)
                    .map(|i| max * i as f64 / (BINS - 1) as f64)
                    .collect();
                (starts, 0.1, 0.0, true)
            }
            Binning::Range => {
                let (lo, hi) = approx
                    .iter()
                    .filter(|&&v| finite(v))
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                        (a.min(v), b.max(v))
                    });
                let (lo, hi) = (lo as f64, hi as f64);
                let width = ((hi - lo) / BINS as f64).max(f64::MIN_POSITIVE);
                let starts: Vec<f64> = (0..BINS).map(|i| lo + width * i as f64).collect();
                (starts, width, width / 2.0, false)
            }
        };
        let bins = Bins::new(&starts, width, binning == Binning::Range);
        let mut points = Vec::new();
        for (start, stats) in starts.iter().zip(bins.residual_stats(approx, bit)) {
            if let Some((mean, std)) = stats {
                points.push((start + offset, mean, std));
            }
        }
        let mut cal = Calibration {
            range: approx
                .iter()
                .fold([f64::INFINITY, f64::NEG_INFINITY], |[a, b], &v| {
                    [a.min(v as f64), b.max(v as f64)]
                }),
            ..Calibration::default()
        };
        if !cal.range[0].is_finite() {
            cal.range = [0.0, 0.0];
        }
        if points.len() <= DEGREE {
            return cal;
        }
        let xs: Vec<f64> = points.iter().map(|p| p.0).collect();
        let stds: Vec<f64> = points.iter().map(|p| p.2).collect();
        cal.std = least_squares(&xs, &stds);
        let bias_ok = if need_all {
            DEGREE < points.len() / 5
        } else {
            points.len() >= BINS / 2
        };
        if bias_ok {
            let means: Vec<f64> = points.iter().map(|p| p.1).collect();
            cal.bias = least_squares(&xs, &means);
        }
        cal
    }
}

/// The calibration's bins: bin `i` holds the values `a` with `starts[i] <= a <
/// starts[i] + width`, the last bin also every larger value when `last_open`. Bins
/// may overlap (a value then counts in each) or leave gaps.
struct Bins<'a> {
    /// The bins' lower edges, ascending.
    starts: &'a [f64],
    /// Every bin's width (value units).
    width: f64,
    /// Whether the last bin has no upper edge.
    last_open: bool,
    /// Bins per value unit, from the first start to the last (∞ when they are equal).
    steps_per_unit: f64,
}

impl<'a> Bins<'a> {
    /// The bins of `starts` (at least one), each `width` wide.
    fn new(starts: &'a [f64], width: f64, last_open: bool) -> Self {
        let n = starts.len();
        Bins {
            starts,
            width,
            last_open,
            steps_per_unit: (n - 1).max(1) as f64 / (starts[n - 1] - starts[0]),
        }
    }

    /// The bins holding `a`: a run of consecutive bins, since the edges ascend (the
    /// bins with `starts[i] <= a` are a prefix, those with `a < starts[i] + width` a
    /// suffix). Each end of the run is first estimated from the mean spacing of the
    /// starts (both binnings space them evenly) and then moved until the exact
    /// comparisons above hold: the result is theirs whatever the rounding.
    fn holding(&self, a: f64) -> Range<usize> {
        let starts = self.starts;
        let n = starts.len();
        let below = |i: usize| starts[i] <= a;
        let past = |i: usize| starts[i] + self.width <= a;
        let end = settle(self.estimate(a), n, below);
        let mut begin = settle(self.estimate(a - self.width).min(end), end, past);
        if self.last_open && end == n {
            begin = begin.min(n - 1);
        }
        begin..end
    }

    /// About how many starts are `<= a` (a float-to-integer cast saturates: NaN and
    /// negatives give 0).
    fn estimate(&self, a: f64) -> usize {
        (((a - self.starts[0]) * self.steps_per_unit) as usize)
            .saturating_add(1)
            .min(self.starts.len())
    }

    /// Per bin, the mean and the sample std of the residuals `bit − approx` of the
    /// finite pairs whose `approx` it holds, or `None` for a bin with fewer than two.
    /// Two passes over the data (the sums, then the squared deviations from the
    /// means), each adding a bin's residuals in the data's order from `−0.0` (as
    /// `Iterator::sum` does), instead of a pass per bin.
    fn residual_stats(&self, approx: &[f32], bit: &[f32]) -> Vec<Option<(f64, f64)>> {
        let residuals = || {
            approx
                .iter()
                .zip(bit)
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .map(|(&a, &b)| {
                    let a = f64::from(a);
                    (self.holding(a), f64::from(b) - a)
                })
        };
        let bins = self.starts.len();
        let (mut count, mut sum) = (vec![0usize; bins], vec![-0.0f64; bins]);
        for (held, e) in residuals() {
            for i in held {
                count[i] += 1;
                sum[i] += e;
            }
        }
        let mean: Vec<f64> = sum.iter().zip(&count).map(|(s, &n)| s / n as f64).collect();
        let mut squares = vec![-0.0f64; bins];
        for (held, e) in residuals() {
            for i in held {
                squares[i] += (e - mean[i]).powi(2);
            }
        }
        (0..bins)
            .map(|i| (count[i] > 1).then(|| (mean[i], (squares[i] / (count[i] - 1) as f64).sqrt())))
            .collect()
    }
}

/// The length of the prefix of `0..n` where `holds` is true (`holds` must be true on a
/// prefix), found by stepping from the guess `at`.
fn settle(mut at: usize, n: usize, holds: impl Fn(usize) -> bool) -> usize {
    while at < n && holds(at) {
        at += 1;
    }
    while at > 0 && !holds(at - 1) {
        at -= 1;
    }
    at
}

/// Residuals of one group of injection units (SC: one polarity), sample-major:
/// `approx` and `bit` each hold `samples × units` values of the same units.
#[derive(Debug, Clone, Copy)]
pub struct Residuals<'a> {
    /// The approximation's values.
    pub approx: &'a [f32],
    /// The bit-accurate values.
    pub bit: &'a [f32],
}

/// Fits the error model with a fixed pattern: the polynomials of
/// [`Calibration::fit`] plus, per group and per unit (the `units` elements of one
/// sample's output, e.g. a conv's channels × positions), the mean over the batch of
/// the residual the bias polynomial leaves. The std polynomial is then fitted to what
/// remains once each unit's offset is taken out, so that the offsets and the noise
/// together make up the residual's spread instead of counting it twice.
///
/// Why: with LFSR streams, an approximate multiplier or a fixed-point grid, the error
/// is a deterministic function of each unit's weights and position as much as of its
/// value. On TinyConv's SC layers 16–56 % of the residual's variance is such a fixed
/// per-unit offset, which noise drawn afresh every step cannot stand for and which
/// bit-accurate training learns to cancel; injecting it lets `inject` epochs learn
/// that too. Returns the calibration and the offsets, one `Vec` of `units` values per
/// group.
pub fn fit_with_fixed_pattern(
    groups: &[Residuals<'_>],
    units: usize,
    binning: Binning,
) -> (Calibration, Vec<Vec<f64>>) {
    let approx: Vec<f32> = groups.iter().flat_map(|g| g.approx).copied().collect();
    let bit: Vec<f32> = groups.iter().flat_map(|g| g.bit).copied().collect();
    let first = Calibration::fit(&approx, &bit, binning);
    let patterns: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| unit_means(g, &first, units))
        .collect();
    let adjusted: Vec<f32> = groups
        .iter()
        .zip(&patterns)
        .flat_map(|(g, p)| {
            g.bit
                .iter()
                .zip(p.iter().cycle())
                .map(|(&b, &o)| (f64::from(b) - o) as f32)
        })
        .collect();
    (Calibration::fit(&approx, &adjusted, binning), patterns)
}

/// Per unit, the mean over the samples of `bit − approx − bias(approx)`.
fn unit_means(g: &Residuals<'_>, cal: &Calibration, units: usize) -> Vec<f64> {
    let mut sum = vec![0f64; units];
    let mut samples = 0usize;
    for (a, b) in g.approx.chunks_exact(units).zip(g.bit.chunks_exact(units)) {
        for ((s, &a), &b) in sum.iter_mut().zip(a).zip(b) {
            let a = f64::from(a);
            *s += f64::from(b) - a - cal.bias(a);
        }
        samples += 1;
    }
    let n = samples.max(1) as f64;
    sum.iter().map(|s| s / n).collect()
}

/// A [`Calibration`] prepared for the surrogate's hot loops: both polynomials
/// re-expanded in `t = (x − centre) / half-width`, which spans `[−1, 1]` over the fitted
/// range, so that f32 Horner steps on 8-lane vectors stay accurate. (In `x` itself a
/// fit on a narrow range such as `[0.93, 0.99]` has coefficients in the thousands
/// that cancel to a few hundredths: f64 work, and scalar.) Same clamping as
/// [`Calibration::bias`], [`Calibration::std`] and [`Calibration::bias_derivative`];
/// agrees with them within a few f32 ulps of the polynomials' scale.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorPolynomials {
    lo: f32,
    hi: f32,
    centre: f32,
    inv_half_width: f32,
    bias: [f32; DEGREE + 1],
    std: [f32; DEGREE + 1],
    /// `d bias / dx` in the same `t`: `(k + 1)·b_(k+1) / half-width`.
    slope: [f32; DEGREE],
}

/// The coefficients of `p(centre + h·t)` in powers of `t` (a Taylor shift, in f64).
fn rebase(c: &[f64; DEGREE + 1], centre: f64, h: f64) -> [f64; DEGREE + 1] {
    let mut binomial = [[0.0; DEGREE + 1]; DEGREE + 1];
    for k in 0..=DEGREE {
        binomial[k][0] = 1.0;
        for j in 1..=k {
            binomial[k][j] = binomial[k - 1][j - 1] + if j < k { binomial[k - 1][j] } else { 0.0 };
        }
    }
    std::array::from_fn(|j| {
        let inner: f64 = (j..=DEGREE)
            .map(|k| c[k] * binomial[k][j] * centre.powi((k - j) as i32))
            .sum();
        inner * h.powi(j as i32)
    })
}

#[inline(always)]
fn horner(c: &[f32], t: f32) -> f32 {
    c.iter().rev().fold(0.0, |acc, &k| acc * t + k)
}

impl ErrorPolynomials {
    /// Prepares `cal`; an empty range (old calibrations) clamps nothing.
    pub(crate) fn new(cal: &Calibration) -> Self {
        let [lo, hi] = cal.range;
        let (lo, hi, centre, h) = if lo < hi {
            (lo as f32, hi as f32, (lo + hi) / 2.0, (hi - lo) / 2.0)
        } else {
            (f32::NEG_INFINITY, f32::INFINITY, 0.0, 1.0)
        };
        let to_f32 = |c: [f64; DEGREE + 1]| c.map(|v| v as f32);
        let bias = rebase(&cal.bias, centre, h);
        Self {
            lo,
            hi,
            centre: centre as f32,
            inv_half_width: (1.0 / h) as f32,
            bias: to_f32(bias),
            std: to_f32(rebase(&cal.std, centre, h)),
            slope: std::array::from_fn(|k| ((k + 1) as f64 * bias[k + 1] / h) as f32),
        }
    }

    /// Whether the std polynomial is not zero (there is noise to draw).
    pub(crate) fn has_std(&self) -> bool {
        self.std.iter().any(|&c| c != 0.0)
    }

    #[inline(always)]
    fn t(&self, x: f32) -> f32 {
        (x.max(self.lo).min(self.hi) - self.centre) * self.inv_half_width
    }

    /// `x ← x + bias(x)` for every element.
    #[inline(always)]
    pub(crate) fn add_bias(&self, x: &mut [f32]) {
        for x in x {
            *x += horner(&self.bias, self.t(*x));
        }
    }

    /// `x ← x + bias(x) + std(x)·ε` for every element, with `eps` the draws ε.
    #[inline(always)]
    pub(crate) fn inject(&self, x: &mut [f32], eps: &[f32]) {
        for (x, &e) in x.iter_mut().zip(eps) {
            let t = self.t(*x);
            let std = horner(&self.std, t).max(0.0);
            *x += horner(&self.bias, t) + std * e;
        }
    }

    /// `pos ← (pos + bias(pos)) − (neg + bias(neg)) + √(std(pos)² + std(neg)²)·ε`
    /// for every element, with `eps` the draws ε (none when the std is zero): the
    /// injected difference of a split-unipolar layer's two polarities, their
    /// independent noise drawn as one normal of the same std.
    #[inline(always)]
    pub(crate) fn inject_split(&self, pos: &mut [f32], neg: &[f32], eps: Option<&[f32]>) {
        let biased = |x: f32| x + horner(&self.bias, self.t(x));
        match eps {
            None => {
                for (p, &n) in pos.iter_mut().zip(neg) {
                    *p = biased(*p) - biased(n);
                }
            }
            Some(eps) => {
                let std = |x: f32| horner(&self.std, self.t(x)).max(0.0);
                for ((p, &n), &e) in pos.iter_mut().zip(neg).zip(eps) {
                    let (sp, sn) = (std(*p), std(n));
                    *p = biased(*p) - biased(n) + (sp * sp + sn * sn).sqrt() * e;
                }
            }
        }
    }

    /// `1 + bias′(x)`, the injected output's slope in the approximation's `x`
    /// (`1` outside the fitted range, where the bias is held constant).
    #[inline(always)]
    pub(crate) fn slope(&self, x: f32) -> f32 {
        let inside = (x >= self.lo) & (x <= self.hi);
        let d = horner(&self.slope, (x - self.centre) * self.inv_half_width);
        1.0 + if inside { d } else { 0.0 }
    }
}

/// The degree-5 polynomial closest to the points `(x, y)` in least squares, by
/// Householder QR of the Vandermonde matrix (stable where the normal equations are
/// not). Needs more than `DEGREE` points.
#[allow(clippy::needless_range_loop)] // Matrix algebra reads clearest with indices.
fn least_squares(x: &[f64], y: &[f64]) -> [f64; DEGREE + 1] {
    const N: usize = DEGREE + 1;
    let m = x.len();
    let mut a: Vec<[f64; N]> = x
        .iter()
        .map(|&v| std::array::from_fn(|k| v.powi(k as i32)))
        .collect();
    let mut b = y.to_vec();
    for col in 0..N {
        let norm = (col..m).map(|r| a[r][col] * a[r][col]).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if a[col][col] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = (col..m).map(|r| a[r][col]).collect();
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|e| e * e).sum();
        if vv == 0.0 {
            continue;
        }
        for c in col..N {
            let dot: f64 = (col..m).map(|r| v[r - col] * a[r][c]).sum();
            for r in col..m {
                a[r][c] -= 2.0 * dot / vv * v[r - col];
            }
        }
        let dot: f64 = (col..m).map(|r| v[r - col] * b[r]).sum();
        for r in col..m {
            b[r] -= 2.0 * dot / vv * v[r - col];
        }
    }
    let mut coef = [0.0; N];
    for row in (0..N).rev() {
        let s: f64 = (row + 1..N).map(|c| a[row][c] * coef[c]).sum();
        coef[row] = if a[row][row] == 0.0 {
            0.0
        } else {
            (b[row] - s) / a[row][row]
        };
    }
    coef
}

#[cfg(test)]
mod tests {
    /// The per-bin statistics against one filtering pass per bin, the obvious form:
    /// the same bits, on bins that overlap, leave gaps, coincide or end open, with
    /// values on and beside every edge and non-finite values among them.
    #[test]
    fn one_pass_binning_matches_a_pass_per_bin() {
        use super::{Bins, BINS};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        // (first start, spacing, width, last bin open); the dyadic ones put values
        // exactly on the edges.
        let layouts: [(f64, f64, f64, bool); 8] = [
            (0.0, 0.25, 0.25, true),
            (-1.0, 0.0625, 0.125, false),
            (0.0, 1.0 / 29.0, 0.1, false),
            (0.0, 0.5, 0.1, false),
            (-0.37, 0.061, 0.061, true),
            (0.0, 0.0, 0.1, false),
            (1e-3, 1e-9, 1e-9, true),
            (0.0, 0.0, f64::MIN_POSITIVE, true),
        ];
        for (first, step, width, last_open) in layouts {
            let starts: Vec<f64> = (0..BINS).map(|i| first + step * i as f64).collect();
            let top = starts[BINS - 1] + 2.0 * width + 0.1;
            let mut approx: Vec<f32> = (0..4000)
                .map(|_| rng.random_range(first - 0.1..top) as f32)
                .collect();
            for s in &starts {
                for v in [*s, *s + width] {
                    approx.extend([v as f32, f32::from_bits((v as f32).to_bits() + 1)]);
                    approx.push(f32::from_bits((v as f32).to_bits().saturating_sub(1)));
                }
            }
            approx.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            let mut bit: Vec<f32> = approx
                .iter()
                .map(|a| a + rng.random_range(-0.05f32..0.05))
                .collect();
            bit[7] = f32::NAN;
            let bins = Bins::new(&starts, width, last_open);
            let got = bins.residual_stats(&approx, &bit);
            for (i, &start) in starts.iter().enumerate() {
                let last = last_open && i == BINS - 1;
                let errs: Vec<f64> = approx
                    .iter()
                    .zip(&bit)
                    .filter(|(a, b)| a.is_finite() && b.is_finite())
                    .filter(|(&a, _)| {
                        let a = f64::from(a);
                        a >= start && (a < start + width || last)
                    })
                    .map(|(&a, &b)| f64::from(b) - f64::from(a))
                    .collect();
                let want = (errs.len() > 1).then(|| {
                    let n = errs.len() as f64;
                    let mean = errs.iter().sum::<f64>() / n;
                    let var = errs.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
                    (mean, var.sqrt())
                });
                let bits = |v: Option<(f64, f64)>| v.map(|(m, s)| (m.to_bits(), s.to_bits()));
                assert_eq!(
                    bits(got[i]),
                    bits(want),
                    "bin {i} of {starts:?} width {width}"
                );
            }
        }
    }

    /// Outside the fitted range the error model holds its edge values instead of
    /// extrapolating the polynomials.
    #[test]
    fn polynomials_are_held_at_the_edges_of_the_fitted_range() {
        let cal = Calibration {
            bias: [0.0, 1.0, -40.0, 300.0, -900.0, 1000.0],
            std: [0.01, 0.0, 0.0, 0.0, 0.0, 5000.0],
            range: [0.1, 0.3],
        };
        assert_eq!(cal.bias(2.0), cal.bias(0.3));
        assert_eq!(cal.bias(-1.0), cal.bias(0.1));
        assert_eq!(cal.std(2.0), cal.std(0.3));
        assert!(cal.bias(2.0).abs() < 10.0 && cal.std(2.0) < 20.0);
        assert_eq!(cal.bias_derivative(2.0), 0.0);
        assert_ne!(cal.bias_derivative(0.2), 0.0);
        let unknown = Calibration {
            range: [0.0, 0.0],
            ..cal
        };
        assert_eq!(unknown.bias(2.0), eval(&cal.bias, 2.0));
    }

    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// The f32 kernel agrees with the f64 polynomials, inside the fitted range and
    /// clamped outside it, also for a fit on a narrow range whose coefficients in `x`
    /// are large and cancel.
    #[test]
    fn f32_polynomials_match_the_f64_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Residuals with a smooth mean and spread on [0.93, 0.99], as the saturated
        // OR-1 outputs of a wide linear layer give.
        let approx: Vec<f32> = (0..50_000)
            .map(|_| rng.random_range(0.93..0.99f32))
            .collect();
        let bit: Vec<f32> = approx
            .iter()
            .map(|&x| {
                let e: f64 = rng.sample(StandardNormal);
                let x = f64::from(x);
                (x - 0.04 + 3.0 * (x - 0.95).powi(2) + (0.02 + 0.1 * (x - 0.93)) * e) as f32
            })
            .collect();
        let narrow = Calibration::fit(&approx, &bit, Binning::Range);
        assert!(narrow.bias.iter().any(|c| c.abs() > 100.0), "{narrow:?}");
        let wide = Calibration {
            bias: [0.01, -0.03, 0.02, -0.004, 0.0, 0.001],
            std: [0.05, 0.01, 0.0, 0.0, 0.0, 0.0],
            range: [0.0, 3.0],
        };
        let unclamped = Calibration {
            range: [0.0, 0.0],
            ..wide
        };
        for cal in [narrow, wide, unclamped] {
            let p = ErrorPolynomials::new(&cal);
            let [lo, hi] = cal.range;
            let span = if lo < hi { hi - lo } else { 3.0 };
            let xs: Vec<f32> = (0..=400)
                .map(|i| (lo - 0.5 * span + 2.0 * span * f64::from(i) / 400.0) as f32)
                .collect();
            let eps: Vec<f32> = xs.iter().map(|_| rng.sample(StandardNormal)).collect();
            let mut biased = xs.clone();
            p.add_bias(&mut biased);
            let mut injected = xs.clone();
            p.inject(&mut injected, &eps);
            let scale = cal.bias.iter().map(|c| c.abs()).fold(1.0f64, f64::max);
            for (i, &x) in xs.iter().enumerate() {
                let x64 = f64::from(x);
                let want = x64 + cal.bias(x64);
                let tol = 1e-6 * (scale.min(10.0) + x64.abs());
                assert!(
                    (f64::from(biased[i]) - want).abs() < tol,
                    "{cal:?} bias at {x}"
                );
                let want = want + cal.std(x64) * f64::from(eps[i]);
                assert!(
                    (f64::from(injected[i]) - want).abs() < tol,
                    "{cal:?} inject at {x}"
                );
                let want = 1.0 + cal.bias_derivative(x64);
                assert!(
                    (f64::from(p.slope(x)) - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{cal:?} slope at {x}: {} vs {want}",
                    p.slope(x)
                );
            }
        }
    }

    #[test]
    fn least_squares_recovers_an_exact_polynomial() {
        let want = [0.3, -1.2, 0.5, 0.25, -0.05, 0.002];
        let xs: Vec<f64> = (0..30).map(|i| i as f64 * 0.1).collect();
        let ys: Vec<f64> = xs.iter().map(|&x| eval(&want, x)).collect();
        let got = least_squares(&xs, &ys);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?}");
        }
    }

    #[test]
    fn fit_recovers_known_bias_and_std_from_synthetic_residuals() {
        // x uniform on [0, 3.3); residual = bias(x) + std(x)·ε with known polynomials.
        // For REX-SC's binning the bit-accurate values are capped at 3 (as a
        // saturating counter would), so that its bins, which end at the largest
        // bit-accurate value, are all populated and the bias is fitted.
        let truth = Calibration {
            bias: [0.02, -0.05, 0.01, 0.0, 0.0, 0.0],
            std: [0.05, 0.02, 0.0, 0.0, 0.0, 0.0],
            ..Calibration::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let approx: Vec<f32> = (0..200_000)
            .map(|_| rng.random_range(0.0..3.3f32))
            .collect();
        let eps: Vec<f64> = approx.iter().map(|_| rng.sample(StandardNormal)).collect();
        for binning in [Binning::RexSc, Binning::Range] {
            let cap = if binning == Binning::RexSc {
                3.0
            } else {
                f64::INFINITY
            };
            let bit: Vec<f32> = approx
                .iter()
                .zip(&eps)
                .map(|(&x, e)| {
                    let x = x as f64;
                    (x + truth.bias(x) + truth.std(x) * e).min(cap) as f32
                })
                .collect();
            let fit = Calibration::fit(&approx, &bit, binning);
            for x in [0.2, 1.0, 2.0, 2.6] {
                // REX-SC fits at bin starts, half a bin off the data's centre.
                let shift = if binning == Binning::RexSc { 0.05 } else { 0.0 };
                assert!(
                    (fit.bias(x) - truth.bias(x + shift)).abs() < 0.006,
                    "{binning:?} bias at {x}: {fit:?}"
                );
                assert!(
                    (fit.std(x) - truth.std(x + shift)).abs() < 0.006,
                    "{binning:?} std at {x}: {fit:?}"
                );
            }
        }
    }

    /// Residuals made of a known bias polynomial, a fixed offset per unit and fresh
    /// noise: the offsets come back, and the std polynomial measures the noise alone.
    #[test]
    fn fixed_pattern_recovers_per_unit_offsets_and_the_noise_beside_them() {
        let (units, samples) = (200, 400);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let bias = |x: f64| 0.03 - 0.04 * x;
        let groups: Vec<(Vec<f32>, Vec<f32>, Vec<f64>)> = (0..2)
            .map(|_| {
                let offsets: Vec<f64> = (0..units).map(|_| rng.random_range(-0.2..0.2)).collect();
                let approx: Vec<f32> = (0..units * samples)
                    .map(|_| rng.random_range(0.0..2.0f32))
                    .collect();
                let bit = approx
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let e: f64 = rng.sample(StandardNormal);
                        let a = f64::from(a);
                        (a + bias(a) + offsets[i % units] + 0.05 * e) as f32
                    })
                    .collect();
                (approx, bit, offsets)
            })
            .collect();
        let residuals: Vec<Residuals> = groups
            .iter()
            .map(|(approx, bit, _)| Residuals { approx, bit })
            .collect();
        let (cal, patterns) = fit_with_fixed_pattern(&residuals, units, Binning::Range);
        for ((_, _, want), got) in groups.iter().zip(&patterns) {
            assert_eq!(got.len(), units);
            for (w, g) in want.iter().zip(got) {
                // Each offset is a mean of 400 draws of std 0.05, after a bias fit.
                assert!((w - g).abs() < 0.02, "offset {g} vs {w}");
            }
        }
        for x in [0.2, 1.0, 1.8] {
            assert!((cal.bias(x) - bias(x)).abs() < 0.01, "bias at {x}: {cal:?}");
            assert!((cal.std(x) - 0.05).abs() < 0.005, "std at {x}: {cal:?}");
        }
        // Without the offsets the std takes in their spread too (0.2/√3 ≈ 0.115).
        let all_approx: Vec<f32> = groups.iter().flat_map(|g| g.0.clone()).collect();
        let all_bit: Vec<f32> = groups.iter().flat_map(|g| g.1.clone()).collect();
        let plain = Calibration::fit(&all_approx, &all_bit, Binning::Range);
        assert!(plain.std(1.0) > 0.1, "{plain:?}");
    }

    #[test]
    fn sparse_data_fits_std_only_or_nothing() {
        let approx = [0.0f32, 0.0, 1.0];
        let fit = Calibration::fit(&approx, &approx, Binning::RexSc);
        assert_eq!((fit.bias, fit.std), ([0.0; DEGREE + 1], [0.0; DEGREE + 1]));
        assert_eq!(fit.range, [0.0, 1.0]);
    }
}
