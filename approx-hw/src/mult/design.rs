//! Unsigned 8x8 approximate multiplier designs, generated from their published
//! algorithm descriptions (`specs/hardware.md` §d.2).
//!
//! Every design is a pure function of two unsigned operands `a, b ∈ 0..=255`; the
//! table of all 65,536 products is what a layer looks up. Signed operands are served
//! by a sign-magnitude wrapper (see [`super::table`]).

use std::fmt;

/// A built-in approximate multiplier design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Design {
    /// The exact product.
    Exact,
    /// Mitchell's logarithmic multiplier without error correction (Mitchell 1962):
    /// piecewise-linear log, add, piecewise-linear antilog. Always under-estimates.
    Mitchell,
    /// DRUM(k) (Hashemi, Bahar, Reda 2015): keep `k` bits from each operand's leading
    /// one, set the lowest kept bit to 1, multiply exactly, shift back. `k` in 3..=7.
    Drum(u8),
    /// Static segment multiplier SSM(m) (Narayanamoorthy et al. 2015): each operand
    /// uses its low `m` bits if its top `8 − m` bits are zero, else its high `m` bits.
    /// `m` in 4..=7.
    Ssm(u8),
    /// Rounding-based approximate multiplier RoBA (Zendegani et al. 2017), basic form:
    /// `A·B ≈ Ar·B + A·Br − Ar·Br` with `Ar`, `Br` the nearest powers of two.
    Roba,
    /// Kulkarni's underdesigned multiplier (2011): 2x2 blocks with `3·3 = 7`, built up
    /// recursively with exact adders.
    Kulkarni,
    /// Truncated partial-product array: partial-product bits in columns `< t` are
    /// dropped (no correction). `t` in 1..=15.
    Trunc(u8),
    /// Broken-array multiplier BAM (Mahdiani et al. 2010): partial-product bit
    /// `a_i·b_j` is dropped when `j < hbl` or `i + j < vbl`. `hbl` in 0..=8, `vbl` in
    /// 0..=15.
    Bam {
        /// Horizontal break level: rows (bits of `b`) below it are removed.
        hbl: u8,
        /// Vertical break level: columns (bit weights) below it are removed.
        vbl: u8,
    },
}

/// The design names `approx hw list` shows and errors list.
pub const DESIGN_NAMES: &str =
    "`exact`, `mitchell`, `drum3`..`drum7`, `ssm4`..`ssm7`, `roba`, `kulkarni`, `trunc1`..`trunc15`, `bam<h>-<v>` (h 0..=8, v 0..=15)";

impl Design {
    /// Parses a design name as written in a spec (`drum4`, `bam2-6`, ...).
    pub fn parse(name: &str) -> Option<Design> {
        let number = |prefix: &str, range: std::ops::RangeInclusive<u8>| {
            let n: u8 = name.strip_prefix(prefix)?.parse().ok()?;
            range.contains(&n).then_some(n)
        };
        match name {
            "exact" => return Some(Design::Exact),
            "mitchell" => return Some(Design::Mitchell),
            "roba" => return Some(Design::Roba),
            "kulkarni" => return Some(Design::Kulkarni),
            _ => {}
        }
        if let Some(k) = number("drum", 3..=7) {
            return Some(Design::Drum(k));
        }
        if let Some(m) = number("ssm", 4..=7) {
            return Some(Design::Ssm(m));
        }
        if let Some(t) = number("trunc", 1..=15) {
            return Some(Design::Trunc(t));
        }
        let (h, v) = name.strip_prefix("bam")?.split_once('-')?;
        let (hbl, vbl): (u8, u8) = (h.parse().ok()?, v.parse().ok()?);
        (hbl <= 8 && vbl <= 15).then_some(Design::Bam { hbl, vbl })
    }

    /// The design's product of two unsigned 8-bit operands.
    pub fn product(self, a: u8, b: u8) -> u32 {
        let (a, b) = (u32::from(a), u32::from(b));
        match self {
            Design::Exact => a * b,
            Design::Mitchell => mitchell(a, b),
            Design::Drum(k) => drum_operand(a, k) * drum_operand(b, k),
            Design::Ssm(m) => ssm_operand(a, m) * ssm_operand(b, m),
            Design::Roba => roba(a, b),
            Design::Kulkarni => kulkarni(a, b, 8),
            Design::Trunc(t) => partial_products(a, b, |i, j| i + j >= u32::from(t)),
            Design::Bam { hbl, vbl } => {
                partial_products(a, b, |i, j| j >= u32::from(hbl) && i + j >= u32::from(vbl))
            }
        }
    }
}

impl fmt::Display for Design {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Design::Exact => f.write_str("exact"),
            Design::Mitchell => f.write_str("mitchell"),
            Design::Drum(k) => write!(f, "drum{k}"),
            Design::Ssm(m) => write!(f, "ssm{m}"),
            Design::Roba => f.write_str("roba"),
            Design::Kulkarni => f.write_str("kulkarni"),
            Design::Trunc(t) => write!(f, "trunc{t}"),
            Design::Bam { hbl, vbl } => write!(f, "bam{hbl}-{vbl}"),
        }
    }
}

/// Position of the leading one of a non-zero value.
fn leading_one(x: u32) -> u32 {
    31 - x.leading_zeros()
}

/// Mitchell: with `a = 2^k1 (1 + m1/2^k1)` and `b = 2^k2 (1 + m2/2^k2)`, the
/// approximate product `2^(k1+k2) (1 + x1 + x2)` (or `2^(k1+k2+1) (x1 + x2)` when
/// `x1 + x2 ≥ 1`) is the integer `2^(k1+k2) + m1·2^k2 + m2·2^k1` (or twice the
/// mantissa part), so no rounding is involved.
fn mitchell(a: u32, b: u32) -> u32 {
    if a == 0 || b == 0 {
        return 0;
    }
    let (k1, k2) = (leading_one(a), leading_one(b));
    let (m1, m2) = (a - (1 << k1), b - (1 << k2));
    let mantissas = (m1 << k2) + (m2 << k1);
    if mantissas < 1 << (k1 + k2) {
        (1 << (k1 + k2)) + mantissas
    } else {
        2 * mantissas
    }
}

/// DRUM's operand: values below `2^k` are kept; larger ones keep the `k` bits from
/// the leading one, with the lowest kept bit forced to 1.
fn drum_operand(x: u32, k: u8) -> u32 {
    let k = u32::from(k);
    if x < 1 << k {
        return x;
    }
    let shift = leading_one(x) + 1 - k;
    ((x >> shift) | 1) << shift
}

/// SSM's operand: the low `m` bits when the top `8 − m` bits are zero, otherwise the
/// high `m` bits (in place).
fn ssm_operand(x: u32, m: u8) -> u32 {
    let low = 8 - u32::from(m);
    if x < 1 << m {
        x
    } else {
        (x >> low) << low
    }
}

/// The nearest power of two of `x > 0`; `3·2^(p−2)` rounds up to `2^p`.
fn nearest_power_of_two(x: u32) -> u32 {
    let k = leading_one(x);
    if k > 0 && (x >> (k - 1)) & 1 == 1 {
        1 << (k + 1)
    } else {
        1 << k
    }
}

/// RoBA: `Ar·B + A·Br − Ar·Br = A·B − (A − Ar)(B − Br)`.
fn roba(a: u32, b: u32) -> u32 {
    if a == 0 || b == 0 {
        return 0;
    }
    let (ar, br) = (nearest_power_of_two(a), nearest_power_of_two(b));
    let value = i64::from(ar * b + a * br) - i64::from(ar * br);
    u32::try_from(value).unwrap_or(0)
}

/// Kulkarni's multiplier of two `bits`-bit operands: the 2x2 block returns 7 for
/// `3·3`; wider products split each operand into halves and add the four
/// sub-products exactly.
fn kulkarni(a: u32, b: u32, bits: u32) -> u32 {
    if bits == 2 {
        return if a == 3 && b == 3 { 7 } else { a * b };
    }
    let half = bits / 2;
    let mask = (1 << half) - 1;
    let (ah, al, bh, bl) = (a >> half, a & mask, b >> half, b & mask);
    (kulkarni(ah, bh, half) << bits)
        + ((kulkarni(ah, bl, half) + kulkarni(al, bh, half)) << half)
        + kulkarni(al, bl, half)
}

/// The sum of the partial-product bits `a_i·b_j·2^(i+j)` that `keep(i, j)` keeps.
fn partial_products(a: u32, b: u32, keep: impl Fn(u32, u32) -> bool) -> u32 {
    let mut sum = 0;
    for i in 0..8 {
        for j in 0..8 {
            if keep(i, j) {
                sum += ((a >> i) & (b >> j) & 1) << (i + j);
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let names = [
            "exact", "mitchell", "drum3", "drum7", "ssm4", "ssm7", "roba", "kulkarni", "trunc1",
            "trunc15", "bam0-0", "bam2-6", "bam8-15",
        ];
        for name in names {
            let design = Design::parse(name).unwrap();
            assert_eq!(design.to_string(), name);
        }
        for bad in [
            "drum2", "drum8", "ssm3", "trunc0", "trunc16", "bam9-1", "bam1", "bam1-16", "",
        ] {
            assert_eq!(Design::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hand_checked_products() {
        // Mitchell on 3·3: k = 1, m = 1 each; mantissas 2+2 = 4 ≥ 4 → 2·4 = 8.
        assert_eq!(Design::Mitchell.product(3, 3), 8);
        // 255·255: k = 7, m = 127; mantissas 2·127·128 ≥ 2^14 → 65024.
        assert_eq!(Design::Mitchell.product(255, 255), 65024);
        assert_eq!(Design::Mitchell.product(16, 5), 80);
        // DRUM4: 200 = 11001000 → 1100|1 → 11010000 = 208; 7 < 16 stays.
        assert_eq!(Design::Drum(4).product(200, 7), 208 * 7);
        // SSM4: 200 → 11000000 = 192; 9 stays.
        assert_eq!(Design::Ssm(4).product(200, 9), 192 * 9);
        // RoBA: 3 → 4, 5 → 4: 4·5 + 3·4 − 16 = 16.
        assert_eq!(Design::Roba.product(3, 5), 16);
        assert_eq!(Design::Kulkarni.product(3, 3), 7);
        assert_eq!(
            Design::Kulkarni.product(255, 255),
            7 * (1 + 4 + 16 + 64) * (1 + 4 + 16 + 64)
        );
        assert_eq!(Design::Trunc(4).product(1, 1), 0);
        assert_eq!(Design::Trunc(1).product(3, 1), 2);
        assert_eq!(Design::Bam { hbl: 1, vbl: 0 }.product(255, 1), 0);
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(Design::Exact.product(a, b), u32::from(a) * u32::from(b));
                assert_eq!(Design::Trunc(15).product(a, b) & 0x7fff, 0);
            }
        }
    }
}
