//! The `mult` layer as a candle op: quantize, look up, sum, dequantize.

use std::sync::Arc;

use candle_core::Tensor;

use super::design::Design;
use super::kernel::{exact_sums, table_sums, LookupIsa};
use super::quantize;
use super::spec::{MultSpec, Multiplier};
use super::table::MulTable;
use crate::im2col::scatter_outputs;
use crate::layer::{DenseKernel, Layer};
use crate::{ConvGeometry, HwError, Result};

/// How the integer sums are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultPath {
    /// Every product looked up in the table.
    Table(LookupIsa),
    /// Plain integer products through a GEMM (only for `design=exact`; the same bits
    /// as the table).
    ExactGemm,
}

/// A `mult` layer (conv2d or linear) as a forward-only candle op. Operands are
/// quantized as [`super::quantize`] describes; each output is `Σ T[a][w]` (exact i32)
/// times `scale_a · scale_w[o]`.
#[derive(Debug, Clone)]
pub struct MultOp {
    spec: MultSpec,
    layer: Layer,
    table: Arc<MulTable>,
    path: MultPath,
}

impl MultOp {
    /// The op for `spec` (reads the table file of `lut=PATH`), on the fastest path.
    pub fn new(spec: &MultSpec, layer: Layer) -> Result<Self> {
        let table = Arc::new(MulTable::for_spec(spec)?);
        let path = match spec.multiplier {
            Multiplier::Design(Design::Exact) => MultPath::ExactGemm,
            _ => MultPath::Table(LookupIsa::best()),
        };
        Ok(Self {
            spec: spec.clone(),
            layer,
            table,
            path,
        })
    }

    /// The same op on another path. [`MultPath::ExactGemm`] is refused for any design
    /// but `exact`.
    pub fn with_path(self, path: MultPath) -> Result<Self> {
        if path == MultPath::ExactGemm && self.spec.multiplier != Multiplier::Design(Design::Exact)
        {
            return Err(HwError::Spec(crate::SpecError::Conflict {
                kind: "mult".into(),
                key: "design".into(),
                reason: "must be `exact` for the integer-GEMM path".into(),
            }));
        }
        Ok(Self { path, ..self })
    }

    /// Runs the op.
    pub fn apply(&self, input: &Tensor, weight: &Tensor) -> Result<Tensor> {
        DenseKernel::apply(self, input, weight)
    }
}

impl DenseKernel for MultOp {
    const NAME: &'static str = "mult";

    fn layer(&self) -> Layer {
        self.layer
    }

    fn run(&self, geo: &ConvGeometry, input: &[f32], weight: &[f32]) -> Result<Vec<f32>> {
        let fan_in = geo.fan_in();
        let limit = i64::from(i32::MAX);
        if fan_in as i64 * i64::from(self.table.max_abs()) > limit {
            return Err(HwError::TooLarge(format!(
                "{geo}: fan-in {fan_in} times the table's largest entry {} can overflow the i32 accumulator",
                self.table.max_abs()
            )));
        }
        let qmax = self.spec.act_max();
        let (acts, act_scale) = quantize::activations(input, qmax, self.spec.signed);
        let (weights, weight_scales) = quantize::weights(weight, fan_in, self.spec.weight_max());
        // Chunks of sums and their (channel, pixel) strides.
        let (chunks, pixel_major) = match self.path {
            MultPath::Table(isa) => (table_sums(geo, &acts, &weights, &self.table, isa), false),
            MultPath::ExactGemm => (exact_sums(geo, &acts, &weights), true),
        };
        let out_ch = geo.out_channels;
        let mut out = vec![0f32; geo.batch * out_ch * geo.out_pixels()];
        for (start, sums) in chunks {
            let len = sums.len() / out_ch;
            let strides = if pixel_major { (1, out_ch) } else { (len, 1) };
            let values: Vec<f32> = sums
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let o = if pixel_major { i % out_ch } else { i / len };
                    s as f32 * (act_scale * weight_scales[o])
                })
                .collect();
            scatter_outputs(geo, &values, strides, start..start + len, &mut out);
        }
        Ok(out)
    }
}
