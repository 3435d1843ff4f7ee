//! Prints the fusion plan of one decoder layer: `cargo run -p gllm --example plan_layer -- llama-7b zen5 128`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cfg = gllm::LlamaConfig::by_name(args.get(1).map_or("llama-7b", |s| s)).expect("model");
    let profile =
        gllm_kernels::device::DeviceProfile::preset(args.get(2).map_or("zen5", |s| s)).expect("preset");
    let seq: usize = args.get(3).map_or(128, |s| s.parse().expect("seq"));
    let g = gllm::layer_graph::decoder_layer(&cfg, seq);
    let plan = gllm_kernels::fusion::fuse(&g, &profile).unwrap_or_else(|e| panic!("{e}"));
    print!("{}", plan.explain(&g));
}
