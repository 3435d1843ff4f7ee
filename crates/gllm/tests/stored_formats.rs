//! Every weight format the JIT reads as stored, end to end: a small model
//! written as a GGUF file with its projections in that format, loaded as
//! stored and dequantised to f32, run through the same engine. Prompt
//! processing reads dequantised panels (the f32 path's values, bit for bit);
//! decode runs the quantised GEMV with int8 activations.

use gllm::engine::{Engine, EngineOptions};
use gllm::gguf::GgmlType;
use gllm::model::{LoadOptions, Model, WeightStorage};
use gllm::LlamaConfig;
use gllm_kernels::device::DeviceProfile;
use std::path::PathBuf;

fn model_file(ty: GgmlType) -> PathBuf {
    // Rows of 256 and 512 columns: whole Q4_K super-blocks.
    let cfg = LlamaConfig {
        name: format!("stored-{ty:?}"),
        hidden_size: 256,
        intermediate_size: 512,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        ..LlamaConfig::tiny()
    };
    let dir = std::env::temp_dir().join(format!("gllm-test-stored-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{ty:?}.gguf"));
    std::fs::write(&path, gllm::builtin::gguf_bytes_for(&cfg, ty).unwrap()).unwrap();
    path
}

fn engine(m: &Model) -> Engine {
    let mut o = EngineOptions::new(DeviceProfile::detect().unwrap());
    o.max_context = 64;
    Engine::new(m.config.clone(), m.weights.clone(), o).unwrap()
}

#[test]
fn stored_formats_compute_what_their_f32_weights_do() {
    let formats = [
        (GgmlType::F16, "F16"),
        (GgmlType::BF16, "BF16"),
        (GgmlType::Q8_0, "Q8_0"),
        (GgmlType::Q4_1, "Q4_1"),
        (GgmlType::Q4_K, "Q4_K"),
        (GgmlType::Q6_K, "Q6_K"),
    ];
    for (ty, name) in formats {
        let path = model_file(ty);
        let load = |weights| Model::load_with(&path, &LoadOptions { weights }, &|_, _| {}).unwrap();
        let (stored, f32s) = (load(WeightStorage::AsStored), load(WeightStorage::F32));
        let kept: Vec<&str> = stored.weights.quant_formats().iter().map(|f| f.name()).collect();
        assert!(kept.contains(&name), "{name}: kept {kept:?}");
        assert!(f32s.weights.quant_formats().is_empty());
        // F16/BF16 projections take half the f32 bytes, the 4-bit ones an
        // eighth (the embedding and head are Q8_0 in every file).
        let float = matches!(ty, GgmlType::F16 | GgmlType::BF16);
        let most = if float { 0.6 } else { 0.4 };
        let ratio = stored.weights.size_bytes() as f64 / f32s.weights.size_bytes() as f64;
        assert!(ratio < most, "{name}: held as stored ({ratio:.2} of the f32 bytes)");

        let prompt: Vec<u32> = (0..13).map(|i| (i * 37 + 5) % 384).collect();
        let (mut q, mut f) = (engine(&stored), engine(&f32s));
        // 13 prompt rows: the f32 GEMM on panels dequantised from the records.
        let (lq, lf) = (q.forward(&prompt, true).unwrap(), f.forward(&prompt, true).unwrap());
        let prefill = lq.iter().zip(&lf).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert_eq!(prefill, 0.0, "{name}: prompt logits differ by {prefill}");
        // One decoded token through the GEMVs. The Q8_0 head quantises its
        // activations to int8 in every file, as do the block formats'
        // projections (≤ 1/254 of each block's largest value per element):
        // this moves the logits by well under 2 % of their magnitude.
        let (dq, df) = (q.forward(&[7], false).unwrap(), f.forward(&[7], false).unwrap());
        let scale = df.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let decode = dq.iter().zip(&df).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: decode logits max |Δ| {decode:.2e} of max |logit| {scale:.3}");
        assert!(
            scale > 0.0 && decode <= 0.02 * scale,
            "{name}: decode logits differ by {decode} (scale {scale})"
        );
    }
}
