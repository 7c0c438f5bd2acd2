//! Fuzz target: `approx_models::untrusted::lut_table`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    approx_models::untrusted::lut_table(data);
});
