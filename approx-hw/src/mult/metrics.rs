//! Exhaustive error metrics of an 8x8 unsigned multiplier, as `specs/hardware.md`
//! §d.1 defines them, over all 65,536 input pairs.

use super::MulTable;

/// Error statistics of a multiplier over all unsigned 8-bit operand pairs. With
/// `ED = |approx − exact|`; relative figures skip the pairs whose exact product is 0.
/// All percentages are in percent (3.79 means 3.79 %).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorMetrics {
    /// Mean relative error distance: mean of `ED / exact`, in %.
    pub mred: f64,
    /// Normalised mean error distance: `mean(ED) / 255²`, in %.
    pub nmed: f64,
    /// Mean absolute error as EvoApprox reports it: `mean(ED) / 2^16`, in %.
    pub mae: f64,
    /// Worst-case error: the largest `ED`, in product units.
    pub wce: u32,
    /// The largest relative error `ED / exact`, in %.
    pub max_rel: f64,
    /// Error rate: the share of pairs whose product is wrong, in %.
    pub error_rate: f64,
    /// Bias: mean of the signed relative error `(approx − exact) / exact`, in %.
    pub bias: f64,
}

impl ErrorMetrics {
    /// The metrics of `product` over all unsigned operand pairs `0..=255`.
    pub fn exhaustive(product: impl Fn(u8, u8) -> i64) -> Self {
        Self::from_pairs((0..=255u8).flat_map(|a| {
            let product = &product;
            (0..=255u8).map(move |b| (product(a, b), i64::from(a) * i64::from(b)))
        }))
    }

    /// The metrics of a product table over all 65,536 code pairs: two's-complement
    /// `−128..=127` for signed tables, `0..=255` for unsigned ones.
    pub fn of_table(table: &MulTable, signed: bool) -> Self {
        let codes = if signed { -128..=127 } else { 0..=255 };
        Self::from_pairs(codes.clone().flat_map(|a| {
            codes
                .clone()
                .map(move |w| (i64::from(table.product(a, w)), i64::from(a) * i64::from(w)))
        }))
    }

    /// The metrics of (approximate, exact) product pairs.
    fn from_pairs(pairs: impl Iterator<Item = (i64, i64)>) -> Self {
        let (mut sum_ed, mut sum_red, mut sum_rel, mut errors) = (0f64, 0f64, 0f64, 0u32);
        let (mut wce, mut max_rel, mut nonzero, mut count) = (0u32, 0f64, 0u32, 0u32);
        for (approx, exact) in pairs {
            let diff = approx - exact;
            let ed = diff.unsigned_abs();
            count += 1;
            sum_ed += ed as f64;
            wce = wce.max(u32::try_from(ed).unwrap_or(u32::MAX));
            errors += u32::from(ed != 0);
            if exact != 0 {
                nonzero += 1;
                let rel = diff as f64 / exact as f64;
                sum_red += rel.abs();
                sum_rel += rel;
                max_rel = max_rel.max(rel.abs());
            }
        }
        let pairs = f64::from(count.max(1));
        let mean_ed = sum_ed / pairs;
        let nonzero = f64::from(nonzero.max(1));
        Self {
            mred: 100.0 * sum_red / nonzero,
            nmed: 100.0 * mean_ed / (255.0 * 255.0),
            mae: 100.0 * mean_ed / 65536.0,
            wce,
            max_rel: 100.0 * max_rel,
            error_rate: 100.0 * f64::from(errors) / pairs,
            bias: 100.0 * sum_rel / nonzero,
        }
    }

    /// The worst-case error as a percentage of 2^16.
    pub fn wce_percent(&self) -> f64 {
        100.0 * f64::from(self.wce) / 65536.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::Design;
    use super::*;

    /// Every row of `specs/hardware.md` table d.1, to its printed precision (formatted as the
    /// table prints them, half to even):
    /// (design, MRED, NMED, MAE, WCE, WCE %, max rel, ER, bias).
    #[test]
    fn unsigned_table_metrics_equal_the_design_metrics() {
        let design = Design::Drum(5);
        let table = MulTable::from_design(design, false);
        let direct = ErrorMetrics::exhaustive(|a, b| i64::from(design.product(a, b)));
        assert_eq!(ErrorMetrics::of_table(&table, false), direct);
        let signed = ErrorMetrics::of_table(&MulTable::from_design(Design::Exact, true), true);
        assert_eq!(signed.error_rate, 0.0);
    }

    #[test]
    fn reproduces_table_d1() {
        #[rustfmt::skip]
        type Row = (&'static str, &'static str, &'static str, &'static str, u32);
        let rows: &[(Row, &str, &str, &str, &str)] = &[
            (
                ("exact", "0.00", "0.000", "0.000", 0),
                "0.00",
                "0.0",
                "0.0",
                "0.00",
            ),
            (
                ("mitchell", "3.79", "0.933", "0.925", 4096),
                "6.25",
                "11.1",
                "93.1",
                "-3.79",
            ),
            (
                ("drum3", "12.10", "2.841", "2.818", 14849),
                "22.66",
                "56.2",
                "98.8",
                "3.43",
            ),
            (
                ("drum4", "5.89", "1.424", "1.413", 7425),
                "11.33",
                "26.6",
                "97.7",
                "1.60",
            ),
            (
                ("drum5", "2.84", "0.715", "0.710", 3904),
                "5.96",
                "12.9",
                "94.6",
                "0.94",
            ),
            (
                ("drum6", "1.30", "0.358", "0.355", 2000),
                "3.05",
                "6.3",
                "85.4",
                "0.57",
            ),
            (
                ("ssm4", "14.90", "2.681", "2.660", 7425),
                "11.33",
                "73.4",
                "97.8",
                "-14.90",
            ),
            (
                ("ssm6", "1.62", "0.439", "0.436", 1521),
                "2.32",
                "8.8",
                "80.4",
                "-1.62",
            ),
            (
                ("roba", "2.86", "0.700", "0.694", 4096),
                "6.25",
                "11.1",
                "93.1",
                "-0.01",
            ),
            (
                ("kulkarni", "3.28", "1.389", "1.378", 14450),
                "22.05",
                "22.2",
                "46.7",
                "-3.28",
            ),
            (
                ("trunc4", "0.56", "0.019", "0.019", 49),
                "0.07",
                "100.0",
                "81.2",
                "-0.56",
            ),
            (
                ("trunc6", "2.64", "0.123", "0.122", 321),
                "0.49",
                "100.0",
                "93.8",
                "-2.64",
            ),
            (
                ("trunc8", "9.78", "0.689", "0.684", 1793),
                "2.74",
                "100.0",
                "98.0",
                "-9.78",
            ),
            (
                ("bam2-6", "5.13", "0.369", "0.367", 961),
                "1.47",
                "100.0",
                "95.0",
                "-5.13",
            ),
            (
                ("bam3-8", "12.80", "1.083", "1.075", 2817),
                "4.30",
                "100.0",
                "98.3",
                "-12.80",
            ),
        ];
        for &((name, mred, nmed, mae, wce), wce_pct, max_rel, er, bias) in rows {
            let design = Design::parse(name).unwrap();
            let m = ErrorMetrics::exhaustive(|a, b| i64::from(design.product(a, b)));
            let got = (
                format!("{:.2}", m.mred),
                format!("{:.3}", m.nmed),
                format!("{:.3}", m.mae),
                m.wce,
                format!("{:.2}", m.wce_percent()),
                format!("{:.1}", m.max_rel),
                format!("{:.1}", m.error_rate),
                format!("{:.2}", m.bias),
            );
            let want = (
                mred.to_string(),
                nmed.to_string(),
                mae.to_string(),
                wce,
                wce_pct.to_string(),
                max_rel.to_string(),
                er.to_string(),
                bias.to_string(),
            );
            assert_eq!(got, want, "{name}: {m:?}");
        }
    }
}
