//! Rounding that compiles to a few vector instructions on every x86-64 (the baseline
//! target has no `roundps`, so `f32::round_ties_even` becomes a libm call per value).

/// `1.5 · 2^23`: adding it pushes any `|x| < 2^22` into the binade where the spacing
/// of f32 is exactly 1, so the hardware's round-to-nearest-even does the rounding.
const MAGIC: f32 = 12_582_912.0;

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^22` (the caller
/// guarantees the range; equal to `f32::round_ties_even` there).
#[inline(always)]
pub(crate) fn ties_even_small(x: f32) -> f32 {
    (x + MAGIC) - MAGIC
}

/// `x` rounded to the nearest integer, ties away from zero (`f32::round`), for
/// `|x| < 2^22`.
#[inline(always)]
pub(crate) fn ties_away_small(x: f32) -> f32 {
    let r = ties_even_small(x);
    if (x - r).abs() == 0.5 {
        x + 0.5f32.copysign(x)
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_round_ties_even_in_range() {
        for x in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999997,
            3.7,
            -3.7,
            4_194_303.5,
            -4_194_303.5,
            0.0,
            -0.0,
        ] {
            assert_eq!(ties_even_small(x), x.round_ties_even(), "{x}");
        }
        let mut x = -4_194_303.0f32;
        while x < 4_194_303.0 {
            assert_eq!(ties_even_small(x), x.round_ties_even(), "{x}");
            assert_eq!(ties_away_small(x), x.round(), "{x}");
            x += 12_345.678;
        }
        for x in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999997,
            -0.49999997,
            126.5,
            -127.5,
        ] {
            assert_eq!(ties_away_small(x), x.round(), "{x}");
        }
    }
}
