//! Shapes of the two layer types every hardware kind implements: conv2d and linear.

use crate::HwError;

/// Stride and zero padding of a 2-D convolution, in pixels, as (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between output pixels, in input pixels (≥ 1).
    pub stride: (usize, usize),
    /// Zero rows/columns added on each side of the input.
    pub padding: (usize, usize),
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
        }
    }
}

impl Conv2dParams {
    /// Square stride and padding.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride: (stride, stride),
            padding: (padding, padding),
        }
    }
}

/// Largest number of elements (input, weight or output) one layer call may have:
/// 2^32, well above any real layer, so that a malformed shape is refused before any
/// allocation instead of exhausting memory.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// The full geometry of one conv2d call: batch, channels, sizes, stride and padding.
/// A linear layer `[N, K] x [O, K]` is the conv of N images of 1x1 pixels with K
/// channels and a 1x1 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width in pixels (before padding).
    pub in_size: (usize, usize),
    /// Output channels (filters).
    pub out_channels: usize,
    /// Kernel height and width in pixels.
    pub kernel: (usize, usize),
    /// Stride and padding.
    pub params: Conv2dParams,
}

impl ConvGeometry {
    /// Checks an NCHW input shape against an OIHW weight shape and the parameters.
    pub fn conv2d(
        input: &[usize],
        weight: &[usize],
        params: Conv2dParams,
    ) -> Result<Self, HwError> {
        let [n, c, h, w] = *input else {
            return Err(HwError::Shape(format!(
                "conv2d input must have rank 4 (NCHW), got shape {input:?}"
            )));
        };
        let [o, wc, kh, kw] = *weight else {
            return Err(HwError::Shape(format!(
                "conv2d weight must have rank 4 (OIHW), got shape {weight:?}"
            )));
        };
        let geo = Self {
            batch: n,
            in_channels: c,
            in_size: (h, w),
            out_channels: o,
            kernel: (kh, kw),
            params,
        };
        if wc != c {
            return Err(HwError::Shape(format!(
                "conv2d weight has {wc} input channels (shape {weight:?}) but the input has {c} (shape {input:?})"
            )));
        }
        geo.validate()?;
        Ok(geo)
    }

    /// Checks an `[N, K]` input against an `[O, K]` weight.
    pub fn linear(input: &[usize], weight: &[usize]) -> Result<Self, HwError> {
        let [n, k] = *input else {
            return Err(HwError::Shape(format!(
                "linear input must have rank 2 ([N, K]), got shape {input:?}"
            )));
        };
        let [o, wk] = *weight else {
            return Err(HwError::Shape(format!(
                "linear weight must have rank 2 ([O, K]), got shape {weight:?}"
            )));
        };
        if wk != k {
            return Err(HwError::Shape(format!(
                "linear weight has {wk} input features (shape {weight:?}) but the input has {k} (shape {input:?})"
            )));
        }
        let geo = Self {
            batch: n,
            in_channels: k,
            in_size: (1, 1),
            out_channels: o,
            kernel: (1, 1),
            params: Conv2dParams::default(),
        };
        geo.validate()?;
        Ok(geo)
    }

    fn validate(&self) -> Result<(), HwError> {
        let (sy, sx) = self.params.stride;
        if sy == 0 || sx == 0 {
            return Err(HwError::Shape(format!(
                "stride must be at least 1, got {:?}",
                self.params.stride
            )));
        }
        let dims = [
            self.batch,
            self.in_channels,
            self.out_channels,
            self.kernel.0,
            self.kernel.1,
        ];
        if dims.contains(&0) || self.in_size.0 == 0 || self.in_size.1 == 0 {
            return Err(HwError::Shape(format!("empty dimension in {self}")));
        }
        let (hp, wp) = self.padded_size();
        if self.kernel.0 > hp || self.kernel.1 > wp {
            return Err(HwError::Shape(format!(
                "kernel {}x{} is larger than the padded input {hp}x{wp} in {self}",
                self.kernel.0, self.kernel.1
            )));
        }
        let counts = [
            self.batch
                .checked_mul(self.in_channels)
                .and_then(|x| x.checked_mul(hp))
                .and_then(|x| x.checked_mul(wp)),
            self.out_channels
                .checked_mul(self.in_channels)
                .and_then(|x| x.checked_mul(self.kernel.0 * self.kernel.1)),
            self.batch
                .checked_mul(self.out_channels)
                .and_then(|x| x.checked_mul(self.out_pixels())),
        ];
        if counts.iter().any(|c| c.is_none_or(|c| c > MAX_ELEMENTS)) {
            return Err(HwError::TooLarge(format!(
                "{self} has more than {MAX_ELEMENTS} elements in its input, weight or output"
            )));
        }
        Ok(())
    }

    /// Input size after padding, (Hp, Wp).
    pub fn padded_size(&self) -> (usize, usize) {
        (
            self.in_size.0 + 2 * self.params.padding.0,
            self.in_size.1 + 2 * self.params.padding.1,
        )
    }

    /// Output height and width.
    pub fn out_size(&self) -> (usize, usize) {
        let (hp, wp) = self.padded_size();
        (
            (hp - self.kernel.0) / self.params.stride.0 + 1,
            (wp - self.kernel.1) / self.params.stride.1 + 1,
        )
    }

    /// Output pixels per image.
    pub fn out_pixels(&self) -> usize {
        let (oh, ow) = self.out_size();
        oh * ow
    }

    /// Input values per image: `C·H·W`.
    pub fn in_image_len(&self) -> usize {
        self.in_channels * self.in_size.0 * self.in_size.1
    }

    /// Products per output value: `C·KH·KW`.
    pub fn fan_in(&self) -> usize {
        self.in_channels * self.kernel.0 * self.kernel.1
    }

    /// Multiply-accumulates of the whole call.
    pub fn macs(&self) -> usize {
        self.batch * self.out_channels * self.out_pixels() * self.fan_in()
    }

    /// Output shape NCHW.
    pub fn out_shape(&self) -> [usize; 4] {
        let (oh, ow) = self.out_size();
        [self.batch, self.out_channels, oh, ow]
    }
}

impl std::fmt::Display for ConvGeometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conv {}x{}x{}x{} * {}x{}x{}x{} (stride {:?}, padding {:?})",
            self.batch,
            self.in_channels,
            self.in_size.0,
            self.in_size.1,
            self.out_channels,
            self.in_channels,
            self.kernel.0,
            self.kernel.1,
            self.params.stride,
            self.params.padding
        )
    }
}
