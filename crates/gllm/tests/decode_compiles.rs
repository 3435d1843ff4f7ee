//! Decoding reuses the kernels compiled for the first decoded token. The
//! compile counter is process-wide, so this test has its own binary.

use gllm::engine::{Backend, Engine, EngineOptions};
use gllm::synthetic::model_weights;
use gllm::LlamaConfig;
use gllm_kernels::device::DeviceProfile;
use std::sync::Arc;

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
        .0
}

#[test]
fn decoding_compiles_nothing_after_the_first_token() {
    let cfg = LlamaConfig::tiny();
    let w = Arc::new(model_weights(&cfg, 7));
    let mut o = EngineOptions::new(DeviceProfile::detect().unwrap());
    o.backend = Backend::Jit;
    o.max_context = 64;
    let mut e = Engine::new(cfg.clone(), w, o).unwrap();
    let logits = e.forward(&[1, 2, 3, 4, 5], false).unwrap();
    let mut tok = argmax(&logits) as u32;
    tok = argmax(&e.forward(&[tok], false).unwrap()) as u32;
    let before = gllm_kernels::runtime::compiled_code_count();
    for _ in 0..40 {
        tok = argmax(&e.forward(&[tok], false).unwrap()) as u32;
    }
    assert_eq!(gllm_kernels::runtime::compiled_code_count(), before, "decoding compiled code");
    let err = e.forward(&vec![1; 64], false).unwrap_err();
    assert!(err.to_string().contains("the context is full"), "{err}");
    let err = e.forward(&[cfg.vocab_size as u32], false).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}
