//! The training layers' float conv (`approx_train::conv::conv2d`, its own FMA kernels)
//! against candle's `conv2d` on TinyConv's layers at batch 64: the forward, and the
//! backward alone (both gradients, input and weight, of a forward run outside the
//! timing). The ratio of the two functions in a group is the speed-up.
//!
//! The backward starts from `y.backward()`, whose output gradient is all ones, so
//! that the timing holds the conv's backward and candle's gradient bookkeeping, and
//! no probe product. The allocator is set up as training sets it
//! (`approx_train::alloc::keep_freed_memory`): without it, glibc gives the large
//! blocks back after every iteration and half of a backward's time here was the
//! kernel faulting them in again, for both convs.

use approx_hw::workload::TINYCONV;
use candle_core::{Tensor, Var};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn float_conv(c: &mut Criterion) {
    approx_train::alloc::keep_freed_memory();
    for (i, layer) in TINYCONV.iter().enumerate() {
        let (input, weight) = layer.tensors(64, i as u64).expect("workload tensors");
        let (x, w) = (
            Var::from_tensor(&input).expect("input var"),
            Var::from_tensor(&weight).expect("weight var"),
        );
        let params = layer.params();
        let ours = || approx_train::conv::conv2d(&x, &w, params).expect("fast conv");
        let candle = || x.conv2d(&w, layer.padding, 1, 1, 1).expect("candle conv2d");
        let backward = |y: Tensor| {
            let grads = y.backward().expect("backward");
            assert!(grads.get(&x).is_some() && grads.get(&w).is_some());
            grads
        };
        let mut group = c.benchmark_group(format!("{}-float-conv", layer.name));
        group.sample_size(10);
        group.bench_function("forward/candle", |b| b.iter(candle));
        group.bench_function("forward/ours", |b| b.iter(ours));
        group.bench_function("backward/candle", |b| {
            b.iter_batched(candle, backward, BatchSize::PerIteration)
        });
        group.bench_function("backward/ours", |b| {
            b.iter_batched(ours, backward, BatchSize::PerIteration)
        });
        group.finish();
    }
}

criterion_group!(benches, float_conv);
criterion_main!(benches);
