//! Fuzz target: `approx_models::untrusted::safetensors_model`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    approx_models::untrusted::safetensors_model(data);
});
