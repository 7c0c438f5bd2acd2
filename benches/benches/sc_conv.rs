//! SC conv kernels on TinyConv's layers (batch 64), each group with candle's f32 conv2d
//! on the same tensors as the baseline.

use approx_hw::sc::{self, Isa, ScOp, ScSpec};
use approx_hw::workload::TINYCONV;
use approx_hw::HwSpec;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const SPECS: [&str; 4] = [
    "sc:len=64,acc=or1",
    "sc:len=64,acc=or2",
    "sc:len=64,acc=exact",
    "sc:len=256,acc=or2",
];

fn spec(s: &str) -> ScSpec {
    match s.parse::<HwSpec>() {
        Ok(HwSpec::Sc(sc)) => sc,
        other => panic!("bench spec `{s}` is not an sc spec: {other:?}"),
    }
}

fn sc_conv(c: &mut Criterion) {
    for (i, layer) in TINYCONV.iter().enumerate() {
        let (input, weight) = layer.tensors(64, i as u64).expect("workload tensors");
        let mut group = c.benchmark_group(layer.name);
        group.sample_size(10);
        group.bench_function("candle_f32", |b| {
            b.iter(|| {
                input
                    .conv2d(&weight, layer.padding, 1, 1, 1)
                    .expect("candle conv2d")
            })
        });
        for s in SPECS {
            let spec = spec(s);
            group.bench_function(BenchmarkId::new("sc", s), |b| {
                b.iter(|| sc::conv2d(&input, &weight, &spec, layer.params()).expect("sc conv2d"))
            });
        }
        // The portable fallback, to show what the std::arch kernels buy.
        let portable = ScOp::conv2d(spec(SPECS[1]), layer.params()).with_isa(Isa::Portable);
        group.bench_function(BenchmarkId::new("sc-portable", SPECS[1]), |b| {
            b.iter(|| {
                input
                    .apply_op2_no_bwd(&weight, &portable)
                    .expect("portable sc conv2d")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, sc_conv);
criterion_main!(benches);
