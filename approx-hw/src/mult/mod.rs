//! Approximate 8-bit multipliers (`mult`): every product of a layer through a
//! multiplier's 256x256 table, summed exactly.
//!
//! Layer semantics (bit-accurate means exactly this integer arithmetic): activations
//! are quantized symmetrically per tensor, weights per output channel
//! ([`quantize`]); each product is the table entry of the two codes ([`MulTable`]);
//! sums are exact i32; the output is the sum times both scales. Built-in designs are
//! generated from their published descriptions ([`Design`]) and reproduce the error
//! metrics of `specs/hardware.md` §d.1 ([`ErrorMetrics`]); users can bring their own
//! table file ([`table`] documents the formats).

mod design;
mod kernel;
mod metrics;
mod op;
pub mod quantize;
pub(crate) mod spec;
pub mod table;

pub use design::{Design, DESIGN_NAMES};
pub use kernel::LookupIsa;
pub use metrics::ErrorMetrics;
pub use op::{MultOp, MultPath};
pub use spec::{MultSpec, Multiplier};
pub use table::MulTable;
