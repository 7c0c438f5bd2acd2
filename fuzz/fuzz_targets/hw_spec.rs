//! Fuzz target: `approx_models::untrusted::hw_spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    approx_models::untrusted::hw_spec(data);
});
