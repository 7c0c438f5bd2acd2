//! Analog in-memory compute (`analog`): a resistive crossbar in IBM aihwkit's
//! vocabulary and order of operations (`specs/hardware.md` §e).
//!
//! For every tile of `tile_rows` consecutive fan-in rows (the rows of the flattened
//! OIHW weight, `k = (c·KH + i)·KW + j`) and every input vector (the receptive field
//! of one output pixel):
//!
//! 1. **Noise management**: `α = max |x_k|` over the tile's rows (a tile with `α = 0`
//!    contributes 0); the input is normalised to `x / α ∈ [−1, 1]`.
//! 2. **DAC**: quantised to the grid of step `2 / (2^inp_bits − 2)` (aihwkit's
//!    `inp_res = 1 / (2^bits − 2)` of the range), rounding half to even.
//! 3. **Weights**: normalised by the tile's largest magnitude `ω = max |W|` (all
//!    output channels), plus Gaussian read noise `w_noise · ξ` (relative to `ω`),
//!    drawn once per forward for every weight.
//! 4. **Analog MVM** of the normalised weights and inputs, plus Gaussian output noise
//!    `out_noise · ζ`, drawn for every output of every tile.
//! 5. **ADC**: clip to `±out_bound`, quantise to the grid of step
//!    `2·out_bound / (2^out_bits − 2)`, rounding half to even.
//! 6. **Digital**: the tile's result times `α·ω`, summed over tiles.
//!
//! All noise comes from ChaCha8 streams keyed by `seed`, the forward's draw index
//! ([`AnalogOp::with_draw`]), the tile and the chunk of output pixels, so the same seed
//! and draw give the same bits on any number of threads. With zero noise, enough bits
//! and a bound that never clips, the layer equals the exact one within float rounding.

mod op;
pub(crate) mod spec;

pub use op::AnalogOp;
pub use spec::AnalogSpec;
