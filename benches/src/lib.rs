//! Criterion benchmarks of the approx kernels and training steps, each group holding
//! its f32 baseline measured in the same run:
//!
//! - `sc_conv`: the SC conv kernels on TinyConv's layers against candle's f32 conv2d;
//! - `hw_conv`: the `mult`, `analog` and `fxp` kernels against candle's f32 conv2d;
//! - `float_conv`: the training layers' float conv (its own FMA kernels) against candle's
//!   conv2d, forward and backward;
//! - `or_fn`: the SC surrogate's OR-n function, vectorised f32 blocks against the
//!   scalar f64 functions;
//! - `train_step`: a TinyConv training step in every execution mode on each hardware
//!   kind, against the `float` step of the same model;
//! - `step_ratio` (plain timing, not criterion): the same steps as ratios of `float`
//!   steps run in alternation with them, which this machine's drift cannot skew.
//!
//! The benchmarks are in `benches/`; run them with `cargo bench -p approx-benches`.
