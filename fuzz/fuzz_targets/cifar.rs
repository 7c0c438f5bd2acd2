//! Fuzz target: `approx_models::untrusted::cifar`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    approx_models::untrusted::cifar(data);
});
