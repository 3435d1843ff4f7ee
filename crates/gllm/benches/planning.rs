//! Phase 1–2 cost: validating, analysing and fusion-planning a 32-layer
//! LLaMA-7B-shaped graph (traces already cached, as in a running process).
//! Prints medians of several runs. `cargo bench -p gllm --bench planning`.

use gllm::layer_graph::decoder_stack;
use gllm::LlamaConfig;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::{fuse, plan};
use gllm_kernels::scalar::ScalarOpRegistry;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let cfg = LlamaConfig::llama_7b();
    let runs = 31;
    println!("| profile | graph | nodes | groups | validate + analyse | plan | total (median of {runs}) |");
    println!("|---|---|---|---|---|---|---|");
    for preset in ["zen5", "haswell"] {
        let profile = DeviceProfile::preset(preset).expect("preset");
        for seq in [1, 128] {
            let graph = decoder_stack(&cfg, seq, cfg.num_layers).unwrap();
            let warm = fuse(&graph, &profile).expect("the LLaMA graph is valid");
            let (mut analyse, mut planning, mut total) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                let t = Instant::now();
                let sem = graph.analyse(ScalarOpRegistry::global()).expect("valid");
                let a = t.elapsed().as_secs_f64();
                let p = Instant::now();
                std::hint::black_box(plan(&sem, &profile));
                planning.push(p.elapsed().as_secs_f64());
                analyse.push(a);
                total.push(t.elapsed().as_secs_f64());
            }
            println!(
                "| {preset} | LLaMA-7B × 32 layers, {seq} tokens | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
                graph.nodes.len(),
                warm.groups.len(),
                median(analyse) * 1e3,
                median(planning) * 1e3,
                median(total) * 1e3
            );
        }
    }
    println!("\ntarget: < 5 ms for the 32-layer graph");
}
