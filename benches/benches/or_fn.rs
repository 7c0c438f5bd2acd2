//! The OR-n activation function of the SC surrogate (`approx_hw::sc::or_fn`), the
//! elementwise hot loop of every SC training step, on a million sums spread over the
//! range TinyConv's layers produce (0 to 8): the vectorised f32 blocks (the value
//! alone, as a forward needs, and value with slope, as an `inject` backward needs)
//! against the scalar f64 functions they are tested against, in the same group.

use approx_hw::sc::or_fn::{or_n, or_n_derivative, or_n_slices};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const ELEMENTS: usize = 1 << 20;

fn or_fn(c: &mut Criterion) {
    let sums: Vec<f32> = (0..ELEMENTS)
        .map(|i| ((i * 7919) % 8192) as f32 / 1024.0)
        .collect();
    let (mut value, mut slope) = (vec![0f32; ELEMENTS], vec![0f32; ELEMENTS]);
    for n in [1u32, 2] {
        let mut group = c.benchmark_group(format!("or-{n}"));
        group.sample_size(20);
        group.bench_function(BenchmarkId::new("scalar-f64", "value+slope"), |b| {
            b.iter(|| {
                for ((v, d), &s) in value.iter_mut().zip(&mut slope).zip(&sums) {
                    *v = or_n(n, f64::from(s)) as f32;
                    *d = or_n_derivative(n, f64::from(s)) as f32;
                }
            })
        });
        group.bench_function(BenchmarkId::new("blocks-f32", "value"), |b| {
            b.iter(|| or_n_slices(n, &sums, Some(&mut value), None))
        });
        group.bench_function(BenchmarkId::new("blocks-f32", "value+slope"), |b| {
            b.iter(|| or_n_slices(n, &sums, Some(&mut value), Some(&mut slope)))
        });
        group.finish();
    }
}

criterion_group!(benches, or_fn);
criterion_main!(benches);
