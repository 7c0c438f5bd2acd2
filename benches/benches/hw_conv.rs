//! The `mult`, `analog` and `fxp` conv kernels on TinyConv's layers (batch 64), each
//! group with candle's f32 conv2d on the same tensors as the baseline.

use approx_hw::mult::{LookupIsa, MultOp, MultPath};
use approx_hw::workload::TINYCONV;
use approx_hw::{forward, HwSpec, Layer};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const SPECS: [&str; 5] = [
    "mult:design=exact",
    "mult:design=mitchell",
    "mult:design=drum4",
    "analog",
    "fxp",
];

fn hw_conv(c: &mut Criterion) {
    for (i, layer) in TINYCONV.iter().enumerate() {
        let (input, weight) = layer.tensors(64, i as u64).expect("workload tensors");
        let conv = Layer::Conv2d(layer.params());
        let mut group = c.benchmark_group(format!("{}-hw", layer.name));
        group.sample_size(10);
        group.bench_function("candle_f32", |b| {
            b.iter(|| {
                input
                    .conv2d(&weight, layer.padding, 1, 1, 1)
                    .expect("candle conv2d")
            })
        });
        for s in SPECS {
            let spec: HwSpec = s.parse().expect("bench spec parses");
            match &spec {
                HwSpec::Mult(m) => {
                    let op = MultOp::new(m, conv).expect("mult op");
                    group.bench_function(BenchmarkId::new("hw", s), |b| {
                        b.iter(|| op.apply(&input, &weight).expect("mult conv"))
                    });
                }
                _ => {
                    group.bench_function(BenchmarkId::new("hw", s), |b| {
                        b.iter(|| forward(&spec, conv, &input, &weight).expect("hw conv"))
                    });
                }
            }
        }
        // The table path of the exact multiplier and the portable lookups, to show
        // what the GEMM path and the gathers buy.
        let HwSpec::Mult(exact) = SPECS[0].parse().expect("spec") else {
            unreachable!("SPECS[0] is a mult spec")
        };
        let table = MultOp::new(&exact, conv)
            .and_then(|op| op.with_path(MultPath::Table(LookupIsa::best())))
            .expect("exact table op");
        group.bench_function(BenchmarkId::new("mult-table", SPECS[0]), |b| {
            b.iter(|| table.apply(&input, &weight).expect("table conv"))
        });
        let HwSpec::Mult(mitchell) = SPECS[1].parse().expect("spec") else {
            unreachable!("SPECS[1] is a mult spec")
        };
        let portable = MultOp::new(&mitchell, conv)
            .and_then(|op| op.with_path(MultPath::Table(LookupIsa::Portable)))
            .expect("portable op");
        group.bench_function(BenchmarkId::new("mult-portable", SPECS[1]), |b| {
            b.iter(|| portable.apply(&input, &weight).expect("portable conv"))
        });
        group.finish();
    }
}

criterion_group!(benches, hw_conv);
criterion_main!(benches);
