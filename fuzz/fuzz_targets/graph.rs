//! Arbitrary graphs through the validator, planner, compiler and runtime.
#![no_main]

#[path = "../../crates/gllm-kernels/tests/support/fuzz_inputs.rs"]
mod fuzz_inputs;

use std::sync::OnceLock;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static PROFILE: OnceLock<gllm_kernels::device::DeviceProfile> = OnceLock::new();
    let profile = PROFILE.get_or_init(|| gllm_kernels::device::DeviceProfile::detect().unwrap());
    fuzz_inputs::check_graph_bytes(data, profile);
});
