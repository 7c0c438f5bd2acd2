//! Bit-accurate models of approximate hardware, as candle ops.
//!
//! Each hardware kind is one module with the same shape: a typed spec (parsed from the
//! `KIND[:key=value,...]` strings of [`HwSpec`]), a bit-accurate conv2d / linear forward
//! as a candle custom op, and the kind's analytic error model (for SC, the OR-n
//! function [`sc::or_fn::or_n`]) that training uses as a smooth approximation.
//!
//! ```
//! use approx_hw::{sc, Conv2dParams, HwSpec};
//! use candle_core::{Device, Tensor};
//!
//! let HwSpec::Sc(spec) = "sc:len=32,acc=or2".parse::<HwSpec>()? else { unreachable!() };
//! let input = Tensor::full(0.25f32, (1, 2, 4, 4), &Device::Cpu)?;
//! let weight = Tensor::full(-0.5f32, (3, 2, 3, 3), &Device::Cpu)?;
//! let out = sc::conv2d(&input, &weight, &spec, Conv2dParams::new(1, 1))?;
//! assert_eq!(out.dims(), &[1, 3, 4, 4]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod analog;
pub mod buffer;
mod error;
pub mod error_model;
pub mod fxp;
mod geometry;
pub mod im2col;
pub mod inspect;
mod layer;
pub mod mult;
pub mod rng;
mod round;
pub mod sc;
pub mod simd;
pub mod spec;
pub mod workload;

pub use error::{HwError, Result};
pub use error_model::{ErrorModel, PartialSums};
pub use geometry::{Conv2dParams, ConvGeometry, MAX_ELEMENTS};
pub use layer::{forward, Layer};
pub use spec::{HwSpec, SpecError};
