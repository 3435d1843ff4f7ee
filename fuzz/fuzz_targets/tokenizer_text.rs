//! See `check_tokenizer_text` in crates/gllm/tests/support/fuzz_inputs.rs.
#![no_main]

#[path = "../../crates/gllm/tests/support/fuzz_inputs.rs"]
mod fuzz_inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_inputs::check_tokenizer_text(data));
