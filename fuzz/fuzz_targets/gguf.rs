//! See `check_gguf_bytes` and `check_gguf_tokenizer` in crates/gllm/tests/support/fuzz_inputs.rs.
#![no_main]

#[path = "../../crates/gllm/tests/support/fuzz_inputs.rs"]
mod fuzz_inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_inputs::check_gguf_bytes(data);
    fuzz_inputs::check_gguf_tokenizer(data);
});
