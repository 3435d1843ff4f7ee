//! See `check_code_bytes` in crates/gllm-kernels/tests/support/fuzz_inputs.rs.
#![no_main]

#[path = "../../crates/gllm-kernels/tests/support/fuzz_inputs.rs"]
mod fuzz_inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_inputs::check_code_bytes(data));
