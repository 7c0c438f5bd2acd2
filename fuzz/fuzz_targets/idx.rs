//! Fuzz target: `approx_models::untrusted::idx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    approx_models::untrusted::idx(data);
});
