//! Criterion benchmarks of the approx kernels, each against candle's f32 op in the same group.
//! The benchmarks are in `benches/`; run them with `cargo bench -p approx-benches`.
