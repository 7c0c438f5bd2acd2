//! SC conv2d and linear as candle ops (forward only).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::kernel::{conv, Isa, Output, Strided4};
use super::spec::ScSpec;
use crate::geometry::{Conv2dParams, ConvGeometry};
use crate::layer::check_f32;
use crate::Result;

/// Which layer an [`ScOp`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Conv2d(Conv2dParams),
    Linear,
}

/// A bit-exact SC layer as a candle [`CustomOp2`] over (input, weight). Forward only:
/// gradients are the training layers' business.
#[derive(Debug, Clone, Copy)]
pub struct ScOp {
    spec: ScSpec,
    layer: Layer,
    output: Output,
    isa: Isa,
}

impl ScOp {
    /// The conv2d op: input NCHW, weight OIHW, both f32.
    pub fn conv2d(spec: ScSpec, params: Conv2dParams) -> Self {
        Self {
            spec,
            layer: Layer::Conv2d(params),
            output: Output::Value,
            isa: Isa::best(),
        }
    }

    /// The linear op: input `[N, K]`, weight `[O, K]`, both f32; output `[N, O]`.
    pub fn linear(spec: ScSpec) -> Self {
        Self {
            layer: Layer::Linear,
            ..Self::conv2d(spec, Conv2dParams::default())
        }
    }

    /// The same op run on `isa` (a CPU without it falls back to portable code).
    pub fn with_isa(self, isa: Isa) -> Self {
        Self { isa, ..self }
    }

    /// The same op returning the P and N counts (u32, stacked on a new leading axis)
    /// instead of the value.
    pub fn with_counts(self) -> Self {
        Self {
            output: Output::Counts,
            ..self
        }
    }

    fn geometry(&self, input: &[usize], weight: &[usize]) -> Result<ConvGeometry> {
        match self.layer {
            Layer::Conv2d(params) => ConvGeometry::conv2d(input, weight, params),
            Layer::Linear => ConvGeometry::linear(input, weight),
        }
    }

    /// Runs the op on f32 slices with candle layouts.
    fn run(&self, s1: &[f32], l1: &Layout, s2: &[f32], l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.geometry(l1.dims(), l2.dims())?;
        let strided = |data, l: &Layout| {
            let s = l.stride();
            Strided4 {
                data,
                offset: l.start_offset(),
                strides: match self.layer {
                    Layer::Conv2d(_) => [s[0], s[1], s[2], s[3]],
                    Layer::Linear => [s[0], s[1], 0, 0],
                },
            }
        };
        let mut shape: Vec<usize> = match self.layer {
            Layer::Conv2d(_) => geo.out_shape().to_vec(),
            Layer::Linear => vec![geo.batch, geo.out_channels],
        };
        if self.output == Output::Counts {
            shape.insert(0, 2);
        }
        let out = conv(
            &geo,
            strided(s1, l1),
            strided(s2, l2),
            &self.spec,
            self.isa,
            self.output,
        );
        Ok((out, Shape::from(shape)))
    }
}

impl CustomOp2 for ScOp {
    fn name(&self) -> &'static str {
        "sc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(w)) = (s1, s2) else {
            return Err(candle_core::Error::Msg(format!(
                "SC layers take f32 input and weight, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            )));
        };
        self.run(a, l1, w, l2).map_err(candle_core::Error::from)
    }
}

fn apply(op: ScOp, input: &Tensor, weight: &Tensor) -> Result<Tensor> {
    check_f32("input", input)?;
    check_f32("weight", weight)?;
    op.geometry(input.dims(), weight.dims())?;
    Ok(input.apply_op2_no_bwd(weight, &op)?)
}

/// P and N counts of an SC layer (u32 tensors of the layer's output shape): P counts
/// the ones of the `w+` dot products over B cycles, N those of `w−`.
#[derive(Debug, Clone)]
pub struct ScCounts {
    /// Counts with the positive weight parts.
    pub pos: Tensor,
    /// Counts with the negative weight parts.
    pub neg: Tensor,
}

fn split_counts(both: Tensor) -> Result<ScCounts> {
    Ok(ScCounts {
        pos: both.get(0)?,
        neg: both.get(1)?,
    })
}

/// The SC conv2d of `input` (NCHW, f32) with `weight` (OIHW, f32): `(P − N) / B`.
pub fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    spec: &ScSpec,
    params: Conv2dParams,
) -> Result<Tensor> {
    apply(ScOp::conv2d(*spec, params), input, weight)
}

/// The P and N counts of [`conv2d`].
pub fn conv2d_counts(
    input: &Tensor,
    weight: &Tensor,
    spec: &ScSpec,
    params: Conv2dParams,
) -> Result<ScCounts> {
    split_counts(apply(
        ScOp::conv2d(*spec, params).with_counts(),
        input,
        weight,
    )?)
}

/// The SC linear layer of `input` (`[N, K]`, f32) with `weight` (`[O, K]`, f32).
pub fn linear(input: &Tensor, weight: &Tensor, spec: &ScSpec) -> Result<Tensor> {
    apply(ScOp::linear(*spec), input, weight)
}

/// The P and N counts of [`linear`].
pub fn linear_counts(input: &Tensor, weight: &Tensor, spec: &ScSpec) -> Result<ScCounts> {
    split_counts(apply(ScOp::linear(*spec).with_counts(), input, weight)?)
}
