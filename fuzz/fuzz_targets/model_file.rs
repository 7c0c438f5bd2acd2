//! Fuzz target: `approx_models::untrusted::model_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    approx_models::untrusted::model_file(data);
});
