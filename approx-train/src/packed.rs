//! Lossless compact storage of activations on a power-of-two grid.
//!
//! Approximate hardware often computes on a grid: an SC layer's output is `(P − N) / B`,
//! a multiple of `1/B` within ±1 (129 values for B = 64), a fixed-point layer's a
//! multiple of `2^-f`. Such a tensor is kept as its integer codes, 8 or 16 bits each
//! instead of 32, and unpacked to the same f32 values, bit for bit. A checkpointed
//! block keeps its output this way between its forward and the next block's backward
//! ([`crate::recompute`]), where it is most of what the step holds.
//!
//! Whether a tensor is on such a grid is found by trying it: packing checks every code
//! against the value it stands for, and a tensor that fails (any value of an
//! ordinary float layer, a `-0.0`, a NaN) stays f32.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Result, Shape, Tensor, Var};
use memmap2::MmapMut;

use crate::storage::read_f32;

/// An f32 tensor stored as integer codes `k` with `value = k · 2^exp`, or as itself.
#[derive(Debug)]
pub enum Packed {
    /// Codes of one or two bytes.
    Codes(Codes),
    /// Four bytes a value: not on a grid that 16-bit codes cover.
    F32(Var),
}

/// Integer codes `k` of a tensor's values `k · 2^exp`, in row-major order, in memory
/// mapped for them alone: a block's output outlives the block's transient buffers, and
/// among them on the heap it would leave holes that the step's peak cannot reuse.
#[derive(Debug)]
pub struct Codes {
    map: MmapMut,
    /// Bytes a code.
    width: usize,
    /// The grid step's power of two.
    exp: i32,
    shape: Shape,
}

/// Bytes of [`Codes`] mapped now, in the whole process.
static MAPPED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of packed codes mapped now (outside the heap, so a count of heap bytes in use
/// adds them to give the memory in use).
pub fn mapped_bytes() -> usize {
    MAPPED_BYTES.load(Ordering::Relaxed)
}

impl Drop for Codes {
    fn drop(&mut self) {
        MAPPED_BYTES.fetch_sub(self.map.len(), Ordering::Relaxed);
    }
}

impl Codes {
    fn new(map: MmapMut, width: usize, exp: i32, shape: Shape) -> Self {
        MAPPED_BYTES.fetch_add(map.len(), Ordering::Relaxed);
        Self {
            map,
            width,
            exp,
            shape,
        }
    }

    /// Bytes a code (1 or 2).
    pub fn width(&self) -> usize {
        self.width
    }

    /// The tensor's dims.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The values of `range` (indices in row-major order) into `out`, replacing what
    /// it held: part of the tensor in f32, for a reader that goes plane by plane.
    pub fn decode_into(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        let up = 2f32.powi(self.exp);
        out.clear();
        match self.width {
            1 => out.extend(self.map[range].iter().map(|&b| f32::from(b as i8) * up)),
            _ => out.extend(
                self.map[2 * range.start..2 * range.end]
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_ne_bytes([b[0], b[1]])) * up),
            ),
        }
    }

    /// A new variable of the values.
    fn unpack(&self) -> Result<Var> {
        let mut values = Vec::new();
        self.decode_into(0..self.shape.elem_count(), &mut values);
        Var::from_vec(values, &self.shape, &Device::Cpu)
    }
}

/// The grid steps that packing tries are `2^exp` for `exp` within these bounds, where
/// both `2^exp` and `2^-exp` are normal f32 numbers (so scaling by them is exact).
const EXP_RANGE: std::ops::RangeInclusive<i32> = -120..=120;

impl Packed {
    /// Packs `t` (f32, any layout) into the narrowest codes that reproduce every value
    /// exactly; a tensor off every such grid becomes [`Packed::F32`], a variable of its
    /// own (a copy).
    pub fn pack(t: &Tensor) -> Result<Self> {
        let shape = t.shape().clone();
        let read = read_f32(t);
        let values = read.values("packing an activation")?;
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        if max.is_finite() && !values.is_empty() {
            for width in [1, 2] {
                let packed = match width {
                    1 => codes::<i8>(&values, max)?,
                    _ => codes::<i16>(&values, max)?,
                };
                if let Some((map, exp)) = packed {
                    return Ok(Packed::Codes(Codes::new(map, width, exp, shape)));
                }
            }
        }
        let values = values.into_owned();
        Ok(Packed::F32(Var::from_vec(values, shape, &Device::Cpu)?))
    }

    /// The tensor as a variable of f32 values equal to the packed ones bit for bit (a
    /// new one for codes, the stored one for [`Packed::F32`]).
    pub fn unpack(&self) -> Result<Var> {
        match self {
            Packed::Codes(c) => c.unpack(),
            Packed::F32(v) => Ok(v.clone()),
        }
    }

    /// The bytes the values take.
    pub fn bytes(&self) -> usize {
        match self {
            Packed::Codes(c) => c.map.len(),
            Packed::F32(v) => 4 * v.elem_count(),
        }
    }
}

/// The codes of `values` on the finest power-of-two grid whose codes for `max` (the
/// largest magnitude) fit `T`, in an anonymous map, with the grid's exponent; `None`
/// when a value is off that grid.
fn codes<T: Code>(values: &[f32], max: f32) -> Result<Option<(MmapMut, i32)>>
where
    f32: From<T>,
{
    let Some(exp) = grid_exponent(max, T::MAX_CODE) else {
        return Ok(None);
    };
    let (down, up) = (2f32.powi(-exp), 2f32.powi(exp));
    let mut map = MmapMut::map_anon(values.len() * T::BYTES).map_err(|e| {
        candle_core::Error::Msg(format!(
            "mapping {} bytes of codes: {e}",
            values.len() * T::BYTES
        ))
    })?;
    for (&v, out) in values.iter().zip(map.chunks_exact_mut(T::BYTES)) {
        let Ok(code) = T::try_from((v * down) as i32) else {
            return Ok(None);
        };
        if (f32::from(code) * up).to_bits() != v.to_bits() {
            return Ok(None);
        }
        code.write(out);
    }
    Ok(Some((map, exp)))
}

/// The smallest `exp` in [`EXP_RANGE`] with `max / 2^exp ≤ max_code`.
fn grid_exponent(max: f32, max_code: i32) -> Option<i32> {
    if max == 0.0 {
        return Some(0);
    }
    let mut exp = (f64::from(max) / f64::from(max_code)).log2().ceil() as i32;
    // Correct the logarithm's rounding either way.
    while f64::from(max) / 2f64.powi(exp - 1) <= f64::from(max_code) {
        exp -= 1;
    }
    while f64::from(max) / 2f64.powi(exp) > f64::from(max_code) {
        exp += 1;
    }
    EXP_RANGE.contains(&exp).then_some(exp)
}

/// A code type: its largest magnitude (symmetric, so that negating a code stays in
/// range) and its bytes.
trait Code: TryFrom<i32> + Copy
where
    f32: From<Self>,
{
    const MAX_CODE: i32;
    const BYTES: usize;
    fn write(self, out: &mut [u8]);
}

impl Code for i8 {
    const MAX_CODE: i32 = i8::MAX as i32;
    const BYTES: usize = 1;
    fn write(self, out: &mut [u8]) {
        out[0] = self as u8;
    }
}

impl Code for i16 {
    const MAX_CODE: i32 = i16::MAX as i32;
    const BYTES: usize = 2;
    fn write(self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    fn round_trip(values: Vec<f32>, shape: &[usize]) -> Packed {
        let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        let packed = Packed::pack(&t).unwrap();
        let back = packed.unpack().unwrap();
        assert_eq!(back.dims(), shape);
        assert_eq!(bits(back.as_tensor()), bits(&t));
        packed
    }

    /// SC outputs `(P − N) / B` of random stream lengths take one byte a value, wider
    /// grids two, and everything else stays f32, each unpacking to the same bits.
    #[test]
    fn packs_hardware_grids_losslessly() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let (n, c) = (rng.random_range(1..4), rng.random_range(1..9));
            let len = rng.random_range(1..40);
            let count = n * c * len;
            let b = 1i32 << rng.random_range(1..=6);
            let sc: Vec<f32> = (0..count)
                .map(|_| (rng.random_range(0..=b) - rng.random_range(0..=b)) as f32 / b as f32)
                .collect();
            let packed = round_trip(sc, &[n, c, len]);
            assert!(
                matches!(packed, Packed::Codes(Codes { width: 1, .. })),
                "B = {b}"
            );
            assert_eq!(packed.bytes(), count);

            // Fixed point with 12 fraction bits and a range of ±4.
            let fxp: Vec<f32> = (0..count)
                .map(|_| rng.random_range(-4 * 4096..=4 * 4096) as f32 / 4096.0)
                .collect();
            let mut fxp_values = fxp.clone();
            fxp_values[0] = 4.0;
            let packed = round_trip(fxp_values, &[count]);
            assert!(matches!(packed, Packed::Codes(Codes { width: 2, .. })));
            assert_eq!(packed.bytes(), 2 * count);

            let float: Vec<f32> = (0..count).map(|_| rng.random_range(-2.0..2.0)).collect();
            assert!(matches!(round_trip(float, &[count]), Packed::F32(_)));
        }
    }

    /// Values a grid cannot hold exactly stay f32: a negative zero, NaN, infinities, a
    /// finer step than the codes reach, a tiny value next to a large one.
    #[test]
    fn keeps_off_grid_values_as_f32() {
        for values in [
            vec![0.5, -0.0],
            vec![0.25, f32::NAN],
            vec![f32::INFINITY, 1.0],
            vec![1.0, 1.0 / 65536.0],
            vec![40000.0, 0.5],
        ] {
            assert!(matches!(round_trip(values, &[2]), Packed::F32(_)));
        }
        // Zeros, exact integers and large powers of two are on grids.
        assert!(matches!(
            round_trip(vec![0.0; 3], &[3]),
            Packed::Codes(Codes { width: 1, .. })
        ));
        assert!(matches!(
            round_trip(vec![-127.0, 3.0], &[2]),
            Packed::Codes(Codes { width: 1, .. })
        ));
        assert!(matches!(
            round_trip(vec![1024.0, -3072.0], &[2]),
            Packed::Codes(Codes { width: 1, .. })
        ));
    }

    /// A strided view packs as its logical values.
    #[test]
    fn packs_strided_views() {
        let t = Tensor::from_vec(
            (0..12).map(|i| i as f32 / 8.0).collect(),
            (3, 4),
            &Device::Cpu,
        )
        .unwrap()
        .t()
        .unwrap();
        let packed = Packed::pack(&t).unwrap();
        assert!(matches!(packed, Packed::Codes(Codes { width: 1, .. })));
        assert_eq!(bits(packed.unpack().unwrap().as_tensor()), bits(&t));
    }
}
