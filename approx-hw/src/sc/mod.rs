//! Stochastic computing (SC), bit-exact with REX-SC (`specs/sc-rexsc.md` §1.2, §2, §3).
//!
//! A layer on SC hardware turns each input value `a ∈ [0, 1]` and each weight
//! magnitude into a bit stream of B cycles whose density of ones encodes the value
//! (split-unipolar: a signed weight is two unipolar streams, `w+` and `w−`). A product
//! is the AND of two streams; in each cycle the AND outputs of a whole receptive field
//! are counted and saturated at n (OR-n) or counted exactly; an exact counter adds
//! those per-cycle results over the B cycles, giving P (with `w+`) and N (with `w−`).
//! The layer's output value is `(P − N) / B`.
//!
//! Values are used as given: [`conv2d`] quantizes to stream integers with
//! `ceil(clamp(x·B, 0, B − 1))` but does not apply REX-SC's 1/128 pre-quantization,
//! which belongs to the training layer.

mod counter;
mod kernel;
mod lanes;
pub mod lfsr;
mod op;
pub mod or_fn;
pub mod quantize;
pub(crate) mod spec;
pub mod stream;

pub use kernel::Isa;
pub use op::{conv2d, conv2d_counts, linear, linear_counts, ScCounts, ScOp};
pub use spec::{Accumulation, Generator, ScSpec};
