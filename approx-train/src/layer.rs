//! A conv2d or linear layer that runs on approximate hardware, in one of the four
//! execution modes, generic over hardware kinds: it uses each kind's bit-accurate
//! forward (`approx_hw::forward`) and analytic error model (`approx_hw::ErrorModel`).

use std::sync::Mutex;

use approx_hw::analog::AnalogOp;
use approx_hw::rng::mix;
use approx_hw::{sc, Conv2dParams, ErrorModel, HwSpec, Layer, PartialSums};
use candle_core::{Result, Tensor, Var};

use crate::calibration::{
    fit_with_fixed_pattern, Calibration, CalibrationScheme, Residuals, DEGREE,
};
use crate::fixed_pattern::add_fixed_pattern;
use crate::mode::ExecMode;
use crate::polarity::split_polarities;
use crate::recompute::{inner_product, Gradients};
use crate::split_conv::{
    split_surrogate_conv2d, split_surrogate_conv2d_seeded, split_surrogate_conv2d_seeded_gradients,
    split_surrogate_conv2d_straight_through,
};
use crate::ste::{straight_through, OperandQuantizer, Quantize, Quantizer, StreamQuantizer};
use crate::surrogate::{Injection, Output, Surrogate};
use crate::tiled::tiled_surrogate;

/// Fraction bits of REX-SC's input and weight quantizer in front of SC layers.
const SC_QUANT_BITS: u32 = 7;

/// Mutable state of a layer: mode, calibration and the step that keys its noise.
#[derive(Debug, Clone)]
struct LayerState {
    mode: ExecMode,
    calibration: Option<Calibration>,
    /// The calibrated fixed-pattern error on the layer output, one sample's shape.
    fixed_pattern: Option<Tensor>,
    calibrate_next: bool,
    scheme: CalibrationScheme,
    step: u64,
}

/// A conv2d or linear layer on the hardware `hw`, with parameters as candle `Var`s.
#[derive(Debug)]
pub struct HwLayer {
    name: String,
    op: Layer,
    weight: Var,
    bias: Option<Var>,
    hw: HwSpec,
    model: ErrorModel,
    seed: u64,
    state: Mutex<LayerState>,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// What a layer's forward for its gradient alone injects, by mode: in `accurate` and
/// `approx-fn` modes nothing (`Some(None)`), in `inject` mode between calibrations the
/// calibrated bias without the noise (its slope is in the gradient); `None` in other
/// modes (`float`, and `inject` while calibrating), whose gradient-only forward is the
/// plain one.
fn gradient_only_injection(state: &LayerState) -> Option<Option<(Calibration, u64)>> {
    match state.mode {
        ExecMode::Accurate | ExecMode::ApproxFn => Some(None),
        ExecMode::Inject if !state.calibrate_next => Some(state.calibration.map(|c| {
            let bias_only = Calibration {
                std: [0.0; DEGREE + 1],
                ..c
            };
            (bias_only, state.step)
        })),
        _ => None,
    }
}

impl HwLayer {
    /// A layer named `name` (its tensor prefix, used in errors and as its noise key)
    /// with the given parameters, on `hw`, starting in `mode`.
    pub fn new(
        name: &str,
        op: Layer,
        weight: Var,
        bias: Option<Var>,
        hw: HwSpec,
        mode: ExecMode,
    ) -> approx_hw::Result<Self> {
        let model = ErrorModel::for_spec(&hw)?;
        let seed = name.bytes().fold(0u64, |h, b| mix(h ^ u64::from(b)));
        Ok(Self {
            name: name.to_string(),
            op,
            weight,
            bias,
            hw,
            model,
            seed,
            state: Mutex::new(LayerState {
                mode,
                calibration: None,
                fixed_pattern: None,
                calibrate_next: false,
                scheme: CalibrationScheme::default(),
                step: 0,
            }),
        })
    }

    fn state(&self) -> LayerState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut LayerState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The layer's name (tensor prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    /// The hardware this layer runs on.
    pub fn hw(&self) -> &HwSpec {
        &self.hw
    }

    /// The current execution mode.
    pub fn mode(&self) -> ExecMode {
        self.state().mode
    }

    /// Sets the execution mode.
    pub fn set_mode(&self, mode: ExecMode) {
        self.update(|s| s.mode = mode);
    }

    /// The training step, which keys this step's injected and analog noise.
    pub fn set_step(&self, step: u64) {
        self.update(|s| s.step = step);
    }

    /// Asks for a calibration on the next forward (in `inject` mode): that forward
    /// first fits the bias and std polynomials on its input, then uses them.
    pub fn request_calibration(&self) {
        self.update(|s| s.calibrate_next = true);
    }

    /// What calibration fits (default [`CalibrationScheme::FixedPattern`]).
    /// [`CalibrationScheme::RexSc`] is REX-SC's scheme, which fits no bias unless all
    /// 30 of its bins (up to the largest bit-accurate value) are populated, and so
    /// often injects noise without the systematic error.
    pub fn set_calibration_scheme(&self, scheme: CalibrationScheme) {
        self.update(|s| s.scheme = scheme);
    }

    /// The calibrated error, if any.
    pub fn calibration(&self) -> Option<Calibration> {
        self.state().calibration
    }

    /// Sets (or clears) the calibrated error, e.g. when loading a model.
    pub fn set_calibration(&self, calibration: Option<Calibration>) {
        self.update(|s| s.calibration = calibration);
    }

    /// The calibrated fixed-pattern error, if any: a constant added to every
    /// sample's output in `inject` mode, shaped like one sample's output (`[C, H, W]`
    /// or `[features]`). See [`crate::calibration::fit_with_fixed_pattern`].
    pub fn fixed_pattern(&self) -> Option<Tensor> {
        self.state().fixed_pattern
    }

    /// Sets (or clears) the fixed-pattern error, e.g. when loading a model. It is
    /// used only together with a calibration.
    pub fn set_fixed_pattern(&self, pattern: Option<Tensor>) {
        self.update(|s| s.fixed_pattern = pattern);
    }

    /// Clamps the weight into `lo..=hi` (REX-SC clamps SC weights to `[−1, 0.999]`
    /// after every epoch).
    pub fn clamp_weight(&self, lo: f32, hi: f32) -> Result<()> {
        self.weight.set(&self.weight.clamp(lo, hi)?)
    }

    /// The layer's forward in its current mode.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let state = self.state();
        let (x, w) = self.operands(x, state.mode)?;
        let y = match state.mode {
            ExecMode::Float => self.exact(&x, &w)?,
            ExecMode::ApproxFn => self.approx(&x, &w, None, None, Output::Value)?,
            ExecMode::Inject => {
                let (calibration, pattern) = if state.calibrate_next {
                    let (c, p) = self.fit_calibration(&x.detach(), &w.detach())?;
                    self.update(|s| {
                        s.calibration = Some(c);
                        s.fixed_pattern = p.clone();
                        s.calibrate_next = false;
                    });
                    (Some(c), p)
                } else {
                    (state.calibration, state.fixed_pattern)
                };
                // The fixed pattern is used only together with a calibration.
                let pattern = calibration.and(pattern);
                self.approx(
                    &x,
                    &w,
                    calibration.map(|c| (c, state.step)),
                    pattern.as_ref(),
                    Output::Value,
                )?
            }
            ExecMode::Accurate => {
                let hardware = self.hardware(&x.detach(), &w.detach(), state.step)?;
                self.straight_through(&x, &w, &hardware)?
            }
        };
        self.with_bias(y)
    }

    /// The layer's output value in its current mode, for a forward that nothing
    /// differentiates (evaluation, the first run of a checkpointed block): in
    /// `accurate` mode the bit-accurate kernel alone, without the surrogate that gives
    /// only its gradient; other modes are [`HwLayer::forward`]. The same values.
    pub fn forward_value_only(&self, x: &Tensor) -> Result<Tensor> {
        let state = self.state();
        if state.mode != ExecMode::Accurate {
            return self.forward(x);
        }
        let (x, w) = self.operands(&x.detach(), state.mode)?;
        self.with_bias(self.hardware(&x, &w.detach(), state.step)?)
    }

    /// The forward of a layer whose output value nothing reads, only gradients through
    /// it (the last layer of a recomputed checkpoint block): the surrogate without
    /// what gives only the value, the same gradient. In `accurate` mode that is the
    /// bit-accurate kernel, in `approx-fn` mode the surrogate's value, in `inject` mode
    /// the noise too (the calibrated bias stays: its slope is in the gradient); `float`
    /// mode is [`HwLayer::forward`].
    pub fn forward_gradient_only(&self, x: &Tensor) -> Result<Tensor> {
        let state = self.state();
        let Some(inject) = gradient_only_injection(&state) else {
            return self.forward(x);
        };
        let (x, w) = self.operands(x, state.mode)?;
        self.with_bias(self.approx(&x, &w, inject, None, Output::GradientOnly)?)
    }

    /// `⟨forward_gradient_only(x), seed⟩` as a scalar with that product's gradients,
    /// for the last layer of a recomputed checkpoint block (`seed` is the gradient of
    /// the layer's output). An SC conv without bias takes the seed in its op
    /// ([`split_surrogate_conv2d_seeded`]) and never materialises its output, nor
    /// candle's zeroed gradient for it: two output-sized tensors less at a
    /// checkpointed step's peak.
    pub fn seeded_gradient(&self, x: &Tensor, seed: &Tensor) -> Result<Tensor> {
        let state = self.state();
        let Some((params, surrogate)) = self.seeded_conv(&state) else {
            return inner_product(&self.forward_gradient_only(x)?, seed);
        };
        let (x, w) = self.operands(x, state.mode)?;
        split_surrogate_conv2d_seeded(&x, &w, params, surrogate, seed)
    }

    /// The gradients of [`HwLayer::seeded_gradient`]'s scalar, computed now, outside
    /// candle's graph: `x`'s (when `with_input_grad`) and the weight's. `x` is dropped
    /// once quantized, `seed` before this returns (a caller that hands over its last
    /// handles frees them there). For a recomputed block that runs its ops'
    /// backwards itself ([`crate::recompute::Recomputed::Gradients`]). Only an SC conv
    /// without bias has this form (its op's backward runs on the quantized operands,
    /// whose straight-through gradients are the identity): see
    /// [`HwLayer::has_seeded_gradients`]; other layers' gradients come from candle's
    /// backward of the scalar.
    pub fn seeded_gradients(
        &self,
        x: Tensor,
        seed: Tensor,
        with_input_grad: bool,
    ) -> Result<Gradients> {
        let state = self.state();
        let Some((params, surrogate)) = self.seeded_conv(&state) else {
            return Err(err(format!(
                "layer `{}` has no graph-free seeded backward in {} mode",
                self.name,
                state.mode.name()
            )));
        };
        let (quantized, w) = self.operands(&x.detach(), state.mode)?;
        drop(x);
        let (dx, dw) = split_surrogate_conv2d_seeded_gradients(
            &quantized,
            &w.detach(),
            params,
            surrogate,
            seed,
            with_input_grad,
        )?;
        Ok(Gradients {
            input: dx,
            params: vec![(self.weight.clone(), dw)],
        })
    }

    /// Whether [`HwLayer::seeded_gradients`] serves the layer in its current mode.
    pub fn has_seeded_gradients(&self) -> bool {
        self.seeded_conv(&self.state()).is_some()
    }

    /// The conv and surrogate of [`HwLayer::seeded_gradient`]'s one-op form: an SC
    /// conv of split weights without bias, in a mode whose gradient-only forward is
    /// the surrogate's.
    fn seeded_conv(&self, state: &LayerState) -> Option<(Conv2dParams, Surrogate)> {
        match (&self.hw, self.op, self.model.partial_sums(), &self.bias) {
            (HwSpec::Sc(_), Layer::Conv2d(params), PartialSums::SplitWeights, None) => {
                let inject = gradient_only_injection(state)?;
                let surrogate = Surrogate {
                    model: self.model,
                    injection: self.injection(inject, 0),
                };
                Some((params, surrogate))
            }
            _ => None,
        }
    }

    /// The injection of the calibrated error `inject` (with its step) into unit `unit`
    /// of the layer's output.
    fn injection(&self, inject: Option<(Calibration, u64)>, unit: u64) -> Option<Injection> {
        inject.map(|(calibration, step)| Injection {
            calibration,
            seed: self.noise_seed(step, unit),
        })
    }

    /// `y` plus the fixed-pattern error, the same for every sample.
    fn with_fixed_pattern(&self, y: Tensor, pattern: &Tensor) -> Result<Tensor> {
        add_fixed_pattern(&y, pattern).map_err(|e| {
            err(format!(
                "layer `{}`: {e} (calibrated for another input size?)",
                self.name
            ))
        })
    }

    /// `y` plus the bias, if any (per output channel).
    fn with_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            None => Ok(y),
            Some(b) => match self.op {
                Layer::Conv2d(_) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
                Layer::Linear => y.broadcast_add(b.as_tensor()),
            },
        }
    }

    /// The operands as the hardware sees them, with straight-through gradients. SC:
    /// REX-SC's 1/128 grid (§1.2 step A), then the stream quantization to 1/B levels
    /// (step C), so that the surrogate's partial sums are those of the values the
    /// streams encode (REX-SC's surrogate skips step C, which leaves weights below
    /// 1/B, e.g. a fresh TinyConv's, far off what the hardware computes).
    fn operands(&self, x: &Tensor, mode: ExecMode) -> Result<(Tensor, Tensor)> {
        let w = self.weight.as_tensor().clone();
        let HwSpec::Sc(spec) = &self.hw else {
            return Ok((x.clone(), w));
        };
        if mode == ExecMode::Float {
            return Ok((x.clone(), w));
        }
        let quantizer = |signed| OperandQuantizer {
            grid: Quantizer {
                bits: SC_QUANT_BITS,
            },
            stream: StreamQuantizer {
                len: spec.stream_len() as u32,
                signed,
            },
        };
        Ok((quantizer(false).apply(x)?, quantizer(true).apply(&w)?))
    }

    /// The exact layer (no bias): the fast conv (`crate::conv`), or a matmul.
    pub fn exact(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self.op {
            Layer::Conv2d(params) => crate::conv::conv2d(x, w, params),
            Layer::Linear => x.matmul(&w.t()?),
        }
    }

    /// The bit-accurate forward (no bias) on detached operands.
    fn hardware(&self, x: &Tensor, w: &Tensor, step: u64) -> Result<Tensor> {
        let out = match &self.hw {
            // Fresh analog noise every step, reproducible from the step.
            HwSpec::Analog(spec) => AnalogOp::new(*spec, self.op).with_draw(step).apply(x, w),
            hw => approx_hw::forward(hw, self.op, x, w),
        };
        out.map_err(|e| err(format!("layer `{}` on {}: {e}", self.name, self.hw)))
    }

    fn noise_seed(&self, step: u64, unit: u64) -> u64 {
        mix(mix(self.seed ^ mix(step)) ^ unit)
    }

    /// `accurate` mode's output (no bias): the value of `hardware`, the gradient of the
    /// surrogate; for SC convs in the split conv op itself.
    fn straight_through(&self, x: &Tensor, w: &Tensor, hardware: &Tensor) -> Result<Tensor> {
        match (&self.hw, self.op, self.model.partial_sums()) {
            (HwSpec::Sc(_), Layer::Conv2d(params), PartialSums::SplitWeights) => {
                let surrogate = Surrogate {
                    model: self.model,
                    injection: None,
                };
                split_surrogate_conv2d_straight_through(x, w, params, surrogate, hardware)
            }
            _ => straight_through(
                &self.approx(x, w, None, None, Output::GradientOnly)?,
                hardware,
            ),
        }
    }

    /// The surrogate forward (no bias): the error model on exact partial sums, with
    /// the calibrated error injected when given (with the step keying the noise).
    /// With [`Output::GradientOnly`] the result only carries the gradient (its value
    /// is not computed where the ops can skip it), and a split-unipolar conv keeps no
    /// partial sums: they are computed in its backward ([`split_surrogate_conv2d`]).
    /// The `fixed_pattern`, if any, is added to the output (inside the op for SC
    /// convs).
    fn approx(
        &self,
        x: &Tensor,
        w: &Tensor,
        inject: Option<(Calibration, u64)>,
        fixed_pattern: Option<&Tensor>,
        output: Output,
    ) -> Result<Tensor> {
        let injection = |unit| self.injection(inject, unit);
        let model = self.model;
        // SC injects per polarity (REX-SC); every other kind on the layer output.
        let per_polarity = matches!(self.hw, HwSpec::Sc(_));
        // The surrogate's output, and whether the injection is in it.
        let (y, injected) = match model.partial_sums() {
            PartialSums::Whole => (
                Surrogate {
                    model,
                    injection: injection(0),
                }
                .apply_for(&self.exact(x, w)?, output)?,
                true,
            ),
            PartialSums::SplitWeights => {
                // Both polarities in one conv (the positive and negative weight parts
                // stacked as output channels), so the input is unfolded once, and one
                // op for the surrogate of both and their difference.
                let surrogate = Surrogate {
                    model,
                    injection: if per_polarity { injection(0) } else { None },
                };
                // Injection on the layer output takes its slope at the output's value.
                let output = if per_polarity || inject.is_none() {
                    output
                } else {
                    Output::Value
                };
                match self.op {
                    // The fixed pattern too, inside the op.
                    Layer::Conv2d(params) if per_polarity => {
                        return split_surrogate_conv2d(
                            x,
                            w,
                            params,
                            surrogate,
                            output,
                            fixed_pattern,
                        );
                    }
                    Layer::Conv2d(params) => (
                        split_surrogate_conv2d(x, w, params, surrogate, output, None)?,
                        false,
                    ),
                    Layer::Linear => (
                        surrogate
                            .apply_split_for(&self.exact(x, &split_polarities(w)?)?, output)?,
                        per_polarity,
                    ),
                }
            }
            PartialSums::Tiles { rows } => (tiled_surrogate(x, w, self.op, rows, model)?, false),
        };
        let y = match injection(0) {
            Some(injection) if !injected => Surrogate {
                model: ErrorModel::Identity,
                injection: Some(injection),
            }
            .apply_for(&y, output)?,
            // The identity model without injection is the identity, gradient included.
            _ => y,
        };
        match fixed_pattern {
            Some(pattern) => self.with_fixed_pattern(y, pattern),
            None => Ok(y),
        }
    }

    /// Fits the bias and std polynomials from the input `x` (detached, quantized as
    /// the hardware sees it): bit-accurate against approximate values of the
    /// injection units (SC: `P/B`, `N/B` against `f_n(s±)`, as REX-SC; other kinds:
    /// the layer output). Under [`CalibrationScheme::FixedPattern`], hardware whose
    /// error is a fixed function of its operands also gets a fixed-pattern error on
    /// the layer output (SC: the positive polarity's offsets minus the negative's);
    /// analog hardware, whose noise is drawn afresh every step, does not.
    fn fit_calibration(&self, x: &Tensor, w: &Tensor) -> Result<(Calibration, Option<Tensor>)> {
        let flat = |t: Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let state = self.state();
        let plain = Surrogate {
            model: self.model,
            injection: None,
        };
        let (approx, bit, unit_shape) = if let HwSpec::Sc(spec) = &self.hw {
            let counts = match self.op {
                Layer::Conv2d(params) => sc::conv2d_counts(x, w, spec, params),
                Layer::Linear => sc::linear_counts(x, w, spec),
            }
            .map_err(|e| err(format!("layer `{}`: {e}", self.name)))?;
            let b = spec.stream_len() as f64;
            let to_value = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(flat(t.to_dtype(candle_core::DType::F32)?)?
                    .iter()
                    .map(|&c| (f64::from(c) / b) as f32)
                    .collect())
            };
            let approx = vec![
                flat(plain.apply(&self.exact(x, &w.relu()?)?)?)?,
                flat(plain.apply(&self.exact(x, &w.neg()?.relu()?)?)?)?,
            ];
            let bit = vec![to_value(&counts.pos)?, to_value(&counts.neg)?];
            (approx, bit, counts.pos.dims()[1..].to_vec())
        } else {
            let y = self.hardware(x, w, state.step)?;
            let approx = vec![flat(self.approx(x, w, None, None, Output::Value)?)?];
            (approx, vec![flat(y.clone())?], y.dims()[1..].to_vec())
        };
        let binning = state.scheme.binning();
        if matches!(self.hw, HwSpec::Analog(_)) || !state.scheme.fits_fixed_pattern() {
            let approx = approx.concat();
            return Ok((Calibration::fit(&approx, &bit.concat(), binning), None));
        }
        let groups: Vec<Residuals> = approx
            .iter()
            .zip(&bit)
            .map(|(approx, bit)| Residuals { approx, bit })
            .collect();
        let units = unit_shape.iter().product();
        let (cal, patterns) = fit_with_fixed_pattern(&groups, units, binning);
        // The output is the first group (SC: positive polarity) minus the second.
        let pattern: Vec<f32> = (0..units)
            .map(|u| {
                let first = patterns[0][u];
                let second = patterns.get(1).map_or(0.0, |p| p[u]);
                (first - second) as f32
            })
            .collect();
        Ok((
            cal,
            Some(Tensor::from_vec(pattern, unit_shape, x.device())?),
        ))
    }
}
