//! Values to stream integers (spec §1.2 step C).
//!
//! A value `x` becomes the integer `ceil(clamp(x·B, 0, B−1))`, computed in f32 as the
//! REX-SC kernels do: **ceil**, not round, so every nonzero value gets at least one
//! 1/B, and 1.0 is not representable (it becomes B−1). Weights are split-unipolar:
//! `w+ = q(w)`, `w− = q(−w)`. NaN becomes 0.

/// The stream integer (number of ones over a full period, roughly) of `x` for streams
/// of `len` cycles: `ceil(clamp(x·len, 0, len−1))`.
#[inline]
pub fn stream_int(x: f32, len: usize) -> u32 {
    let b = len as f32;
    // `max`/`min` return the non-NaN operand, so NaN maps to 0 here.
    let v = (x * b).max(0.0).min(b - 1.0);
    // ceil for 0 ≤ v < 2^24 without a libm call (x86-64 before SSE4.1 has no roundss).
    let t = v as u32;
    t + u32::from((t as f32) < v)
}

/// The split-unipolar stream integers `(w+, w−)` of a signed weight.
#[inline]
pub fn split_unipolar(w: f32, len: usize) -> (u32, u32) {
    (stream_int(w, len), stream_int(-w, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_and_clamp() {
        assert_eq!(stream_int(0.0, 32), 0);
        assert_eq!(stream_int(1.0 / 128.0, 32), 1); // ceil(0.25)
        assert_eq!(stream_int(4.0 / 128.0, 32), 1);
        assert_eq!(stream_int(5.0 / 128.0, 32), 2);
        assert_eq!(stream_int(127.0 / 128.0, 32), 31); // 31.75 clamps to 31
        assert_eq!(stream_int(1.0, 256), 255);
        assert_eq!(stream_int(7.5, 8), 7);
        assert_eq!(stream_int(-0.5, 64), 0);
        assert_eq!(stream_int(f32::NAN, 64), 0);
        assert_eq!(split_unipolar(-0.5, 64), (0, 32));
        assert_eq!(split_unipolar(0.25, 64), (16, 0));
    }
}
