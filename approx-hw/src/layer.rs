//! The two layer types every hardware kind implements, and one entry point that runs
//! a layer on any [`HwSpec`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use crate::geometry::{Conv2dParams, ConvGeometry};
use crate::{analog, fxp, mult, sc, HwError, HwSpec, Result};

/// A layer type with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// 2-D convolution: input NCHW, weight OIHW, output NCHW.
    Conv2d(Conv2dParams),
    /// Fully connected: input `[N, K]`, weight `[O, K]`, output `[N, O]`.
    Linear,
}

impl Layer {
    /// Checks the input and weight shapes and returns the layer's geometry.
    pub fn geometry(&self, input: &[usize], weight: &[usize]) -> Result<ConvGeometry> {
        match *self {
            Layer::Conv2d(params) => ConvGeometry::conv2d(input, weight, params),
            Layer::Linear => ConvGeometry::linear(input, weight),
        }
    }

    /// The output shape for `geo`.
    pub fn out_shape(&self, geo: &ConvGeometry) -> Vec<usize> {
        match self {
            Layer::Conv2d(_) => geo.out_shape().to_vec(),
            Layer::Linear => vec![geo.batch, geo.out_channels],
        }
    }
}

/// Runs `layer` on the hardware `spec`: the bit-accurate forward of that kind (for
/// `exact`, candle's own f32 conv2d / matmul). Input and weight are f32; the output is
/// f32 in value units, comparable with the exact layer's output.
pub fn forward(spec: &HwSpec, layer: Layer, input: &Tensor, weight: &Tensor) -> Result<Tensor> {
    check_f32("input", input)?;
    check_f32("weight", weight)?;
    layer.geometry(input.dims(), weight.dims())?;
    match (spec, layer) {
        (HwSpec::Exact, Layer::Conv2d(params)) => {
            if params.stride.0 != params.stride.1 || params.padding.0 != params.padding.1 {
                return Err(HwError::Shape(format!(
                    "the exact conv2d takes square stride and padding, got {params:?}"
                )));
            }
            Ok(input.conv2d(weight, params.padding.0, params.stride.0, 1, 1)?)
        }
        (HwSpec::Exact, Layer::Linear) => Ok(input.matmul(&weight.t()?)?),
        (HwSpec::Sc(sc), Layer::Conv2d(params)) => sc::conv2d(input, weight, sc, params),
        (HwSpec::Sc(sc), Layer::Linear) => sc::linear(input, weight, sc),
        (HwSpec::Mult(spec), layer) => mult::MultOp::new(spec, layer)?.apply(input, weight),
        (HwSpec::Analog(spec), layer) => analog::AnalogOp::new(*spec, layer).apply(input, weight),
        (HwSpec::Fxp(spec), layer) => fxp::FxpOp::new(*spec, layer).apply(input, weight),
    }
}

/// Fails unless `t` is f32, naming it as `what`.
pub(crate) fn check_f32(what: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(HwError::DType(format!(
            "{what} must be f32, got {:?}",
            t.dtype()
        )));
    }
    Ok(())
}

/// A hardware layer computed on dense f32 data: the part that differs between kinds.
/// [`DenseOp`] turns it into a candle op.
pub(crate) trait DenseKernel: Send + Sync {
    /// The op's name in candle's graph.
    const NAME: &'static str;

    /// The layer this kernel computes.
    fn layer(&self) -> Layer;

    /// Computes the layer: `input` dense NCHW (or `[N, K]`), `weight` dense OIHW (or
    /// `[O, K]`); returns the dense output.
    fn run(&self, geo: &ConvGeometry, input: &[f32], weight: &[f32]) -> Result<Vec<f32>>;

    /// Checks dtypes and shapes, then runs the kernel as a forward-only candle op.
    fn apply(&self, input: &Tensor, weight: &Tensor) -> Result<Tensor>
    where
        Self: Sized,
    {
        check_f32("input", input)?;
        check_f32("weight", weight)?;
        self.layer().geometry(input.dims(), weight.dims())?;
        let (input, weight) = (input.contiguous()?, weight.contiguous()?);
        Ok(input.apply_op2_no_bwd(&weight, &DenseOp(self))?)
    }
}

/// The candle op of a [`DenseKernel`].
struct DenseOp<'a, K>(&'a K);

/// The dense slice behind a contiguous f32 layout.
fn dense<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        return Err(HwError::DType(format!(
            "{what} must be f32, got {:?}",
            storage.dtype()
        )));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(HwError::Shape(format!("{what} must be contiguous")));
    };
    Ok(&data[start..end])
}

impl<K: DenseKernel> CustomOp2 for DenseOp<'_, K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let run = || -> Result<(CpuStorage, Shape)> {
            let layer = self.0.layer();
            let geo = layer.geometry(l1.dims(), l2.dims())?;
            let input = dense(s1, l1, "input")?;
            let weight = dense(s2, l2, "weight")?;
            let out = self.0.run(&geo, input, weight)?;
            Ok((CpuStorage::F32(out), Shape::from(layer.out_shape(&geo))))
        };
        run().map_err(candle_core::Error::from)
    }
}
