//! The training layers' float conv (im2col + GEMM, `approx_train::conv::conv2d`)
//! against candle's `conv2d` on TinyConv's layers at batch 64: the forward, and the
//! forward plus the backward of both gradients (input and weight) under a fixed
//! output-gradient probe. The ratio of the two functions in a group is the speed-up.

use approx_hw::workload::TINYCONV;
use candle_core::{Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};

fn float_conv(c: &mut Criterion) {
    for (i, layer) in TINYCONV.iter().enumerate() {
        let (input, weight) = layer.tensors(64, i as u64).expect("workload tensors");
        let (x, w) = (
            Var::from_tensor(&input).expect("input var"),
            Var::from_tensor(&weight).expect("weight var"),
        );
        let params = layer.params();
        let ours = || approx_train::conv::conv2d(&x, &w, params).expect("fast conv");
        let candle = || x.conv2d(&w, layer.padding, 1, 1, 1).expect("candle conv2d");
        let probe = (ours().ones_like().expect("probe") * 0.5).expect("probe");
        let backward = |y: Tensor| {
            let grads = (y * &probe)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward");
            assert!(grads.get(&x).is_some() && grads.get(&w).is_some());
        };
        let mut group = c.benchmark_group(format!("{}-float-conv", layer.name));
        group.sample_size(10);
        group.bench_function("forward/candle", |b| b.iter(candle));
        group.bench_function("forward/ours", |b| b.iter(ours));
        group.bench_function("forward+backward/candle", |b| b.iter(|| backward(candle())));
        group.bench_function("forward+backward/ours", |b| b.iter(|| backward(ours())));
        group.finish();
    }
}

criterion_group!(benches, float_conv);
criterion_main!(benches);
