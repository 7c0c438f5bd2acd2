//! Saturating fixed point (`fxp`): REX-SC's fixed-point baseline
//! (`fixed.cpp:conv2d_saturate`, `specs/sc-rexsc.md` §9), bit for bit.
//!
//! With `p = bits` and `Q = 2^p`: activations `a = rhe(clamp(x·Q, 0, Q−1))`, weights
//! split into `wp = rhe(clamp(w·Q, 0, Q−1))` and `wn = rhe(−clamp(w·Q, −(Q−1), 0))`
//! (`rhe` rounds half to even). The positive and negative products are accumulated
//! separately over `(c, kh, kw)` in that order with a saturating, rounding add
//! (see [`saturating_add`]); the output is `(acc_pos − acc_neg) / Q²`, in value units.
//! (REX-SC returns `(acc_pos − acc_neg) / Q`, `Q` times ours; the factor is absorbed
//! by the batch norm that follows there.)
//!
//! **Rounding quirk of the baseline, kept on purpose.** When `2p ≤ acc_bits` no bits
//! are dropped, yet the add still rounds: every odd partial sum is bumped up by one, so
//! each product contributes `2·ceil(a·w / 2)`, an upward bias, until the sum saturates
//! at `2^acc_bits`. When `2p > acc_bits` the add drops `2p − acc_bits` low bits with
//! round-half-up after every addition, which makes the result depend on the order.

mod op;
pub(crate) mod spec;

pub use op::{saturating_add, Accumulator, FxpOp};
pub use spec::FxpSpec;
