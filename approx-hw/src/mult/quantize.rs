//! Symmetric integer quantization of a `mult` layer's operands, with the scales that
//! turn the integer sums back into values.
//!
//! Activations get one scale per tensor, weights one per output channel:
//! `scale = max|x| / qmax` (1 when the tensor is all zeros), code `= clamp(round(x /
//! scale), lo, qmax)` with `round` half away from zero. Unsigned activations
//! (`signed=false`) use the largest positive value and clamp negatives to 0, as an
//! unsigned datapath after a ReLU would.

use crate::round::ties_away_small;

/// The scale that maps the largest magnitude `max` to code `qmax`.
pub fn scale(max: f32, qmax: i32) -> f32 {
    if max > 0.0 && max.is_finite() {
        max / qmax as f32
    } else {
        1.0
    }
}

/// The code of `x`: `clamp(round(x / scale), lo, hi)`. NaN becomes 0.
#[inline]
pub fn code(x: f32, scale: f32, lo: i32, hi: i32) -> i32 {
    // Clamping first keeps the value in the fast rounding's range; the bounds are
    // integers, so the result is the same. A NaN stays NaN and converts to 0.
    ties_away_small((x / scale).clamp(lo as f32, hi as f32)) as i32
}

/// Activation codes and their scale: signed `±qmax`, or unsigned `0..=qmax`.
pub fn activations(x: &[f32], qmax: i32, signed: bool) -> (Vec<i32>, f32) {
    let max = if signed {
        x.iter().fold(0f32, |m, v| m.max(v.abs()))
    } else {
        x.iter().fold(0f32, |m, &v| m.max(v))
    };
    let s = scale(max, qmax);
    let lo = if signed { -qmax } else { 0 };
    (x.iter().map(|&v| code(v, s, lo, qmax)).collect(), s)
}

/// Weight codes `±qmax` with one scale per output channel (`w` holds `out_channels`
/// runs of `fan_in` values).
pub fn weights(w: &[f32], fan_in: usize, qmax: i32) -> (Vec<i32>, Vec<f32>) {
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / fan_in.max(1));
    for channel in w.chunks(fan_in.max(1)) {
        let s = scale(channel.iter().fold(0f32, |m, v| m.max(v.abs())), qmax);
        codes.extend(channel.iter().map(|&v| code(v, s, -qmax, qmax)));
        scales.push(s);
    }
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_half_away_and_clamp() {
        let (codes, s) = activations(&[-127.0, 63.5, 2.5, -2.5, f32::NAN], 127, true);
        assert_eq!(s, 1.0);
        assert_eq!(codes, vec![-127, 64, 3, -3, 0]);
        assert_eq!(code(200.0, 1.0, -127, 127), 127);
        assert_eq!(code(-200.0, 1.0, -127, 127), -127);
        let (codes, s) = activations(&[-3.0, 255.0, 127.5], 255, false);
        assert_eq!(s, 1.0);
        assert_eq!(codes, vec![0, 255, 128]);
        let (codes, scales) = weights(&[0.0, 0.0, 14.0, -3.0], 2, 7);
        assert_eq!(scales, vec![1.0, 2.0]);
        assert_eq!(codes, vec![0, 0, 7, -2]);
    }
}
