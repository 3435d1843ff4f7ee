//! The forward pass on synthetic weights: the JIT against the scalar
//! reference path, chunked prefill against one pass, decoding against
//! prefill, and no compilation while decoding.

use gllm::engine::{Backend, Engine, EngineOptions};
use gllm::perplexity::Scoring;
use gllm::synthetic::model_weights;
use gllm::LlamaConfig;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::FusionOptions;
use std::sync::Arc;

/// Every ISA this host runs (the oracle's list); says which it skipped.
fn profiles() -> Vec<DeviceProfile> {
    let (profiles, skipped) = gllm_kernels::oracle::host_profiles().unwrap();
    for isa in skipped {
        eprintln!("SKIPPED: {isa} is not tested on this host (the CPU lacks {isa})");
    }
    profiles
}

fn engine(
    cfg: &LlamaConfig,
    w: &Arc<gllm::weights::ModelWeights>,
    profile: DeviceProfile,
    backend: Backend,
    fuse: bool,
    chunk: usize,
) -> Engine {
    let mut o = EngineOptions::new(profile);
    o.backend = backend;
    o.fusion = FusionOptions { fuse, ..Default::default() };
    o.prefill_chunk = chunk;
    o.max_context = 64;
    Engine::new(cfg.clone(), w.clone(), o).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) })
        .0
}

#[test]
fn jit_matches_the_scalar_reference_prefill_and_decode() {
    let cfg = LlamaConfig::tiny();
    let w = Arc::new(model_weights(&cfg, 42));
    let prompt: Vec<u32> = (0..13).map(|i| (i * 37 + 5) % cfg.vocab_size as u32).collect();
    let host = DeviceProfile::detect().unwrap();
    let mut reference = engine(&cfg, &w, host, Backend::Reference, true, 64);
    let want = reference.forward(&prompt, true).unwrap();
    assert_eq!(want.len(), prompt.len() * cfg.vocab_size);
    let mut want_steps = Vec::new();
    let mut tok = argmax(&want[want.len() - cfg.vocab_size..]) as u32;
    for _ in 0..6 {
        let l = reference.forward(&[tok], false).unwrap();
        tok = argmax(&l) as u32;
        want_steps.push((tok, l));
    }
    for profile in profiles() {
        for fuse in [true, false] {
            for chunk in [64, 5, 1] {
                let what = format!("{} fuse={fuse} chunk={chunk}", profile.isa);
                let mut e = engine(&cfg, &w, profile.clone(), Backend::Jit, fuse, chunk);
                let got = e.forward(&prompt, true).unwrap();
                let d = max_diff(&got, &want);
                assert!(d <= 2e-4, "{what}: prompt logits differ by {d}");
                let mut tok = argmax(&got[got.len() - cfg.vocab_size..]) as u32;
                for (step, (want_tok, want_l)) in want_steps.iter().enumerate() {
                    let l = e.forward(&[tok], false).unwrap();
                    let d = max_diff(&l, want_l);
                    assert!(d <= 2e-4, "{what}: step {step} logits differ by {d}");
                    tok = argmax(&l) as u32;
                    assert_eq!(tok, *want_tok, "{what}: step {step}");
                }
                assert_eq!(e.position(), prompt.len() + want_steps.len());
            }
        }
    }
}

#[test]
fn forked_engines_share_the_model_and_keep_their_own_caches() {
    let cfg = LlamaConfig::tiny();
    let w = Arc::new(model_weights(&cfg, 3));
    let mut a = engine(&cfg, &w, DeviceProfile::detect().unwrap(), Backend::Jit, true, 64);
    let want = a.forward(&[5, 6, 7], true).unwrap();
    let mut b = a.fork();
    let mut c = a.fork();
    assert_eq!(b.position(), 0);
    // Two sequences on two threads at once, interleaved with a third.
    let (rb, rc) = std::thread::scope(|s| {
        let hb = s.spawn(|| b.forward(&[5, 6, 7], true).unwrap());
        let hc = s.spawn(|| c.forward(&[9], false).unwrap());
        (hb.join().unwrap(), hc.join().unwrap())
    });
    assert_eq!(rb, want, "a fork computes what the original did");
    assert_eq!(rc.len(), cfg.vocab_size);
    assert_eq!((a.position(), b.position(), c.position()), (3, 3, 1));
}

#[test]
fn perplexity_scores_the_second_half_of_each_chunk() {
    let cfg = LlamaConfig::tiny();
    let w = Arc::new(model_weights(&cfg, 11));
    let tokens: Vec<u32> = (0..50u32).map(|i| (i * 29 + 3) % cfg.vocab_size as u32).collect();
    let host = DeviceProfile::detect().unwrap();
    let mut jit = engine(&cfg, &w, host.clone(), Backend::Jit, true, 64);
    let got = gllm::perplexity::perplexity(&mut jit, &tokens, 16, None, None, Scoring::Prompt, &mut |_| {})
        .unwrap();
    assert_eq!((got.chunks, got.scored_tokens), (3, 3 * 7));
    // By hand: chunk c, positions 8..15 predict the next token.
    let mut nll = 0.0;
    for c in 0..3 {
        jit.reset();
        let l = jit.forward(&tokens[c * 16..(c + 1) * 16], true).unwrap();
        for i in 8..15 {
            nll += gllm::perplexity::nll(
                &l[i * cfg.vocab_size..(i + 1) * cfg.vocab_size],
                tokens[c * 16 + i + 1],
            );
        }
    }
    assert!((got.perplexity - (nll / 21.0).exp()).abs() < 1e-9 * got.perplexity);
    let mut reference = engine(&cfg, &w, host, Backend::Reference, true, 64);
    let want =
        gllm::perplexity::perplexity(&mut reference, &tokens, 16, None, None, Scoring::Prompt, &mut |_| {})
            .unwrap();
    assert!(
        (got.perplexity / want.perplexity - 1.0).abs() < 1e-4,
        "{} vs {}",
        got.perplexity,
        want.perplexity
    );
    // Token by token through the decode path: the same chunks and scored
    // positions, the same numbers up to f32 rounding; a BOS replaces each
    // chunk's first token in both.
    for bos in [None, Some(1)] {
        let prompt =
            gllm::perplexity::perplexity(&mut jit, &tokens, 16, bos, Some(2), Scoring::Prompt, &mut |_| {})
                .unwrap();
        let mut seen = Vec::new();
        let decode =
            gllm::perplexity::perplexity(&mut jit, &tokens, 16, bos, Some(2), Scoring::Decode, &mut |p| {
                seen.push(p.chunk)
            })
            .unwrap();
        assert_eq!(seen, [1, 2], "progress after every chunk");
        assert_eq!((decode.chunks, decode.scored_tokens), (2, 2 * 7));
        assert!(
            (decode.perplexity / prompt.perplexity - 1.0).abs() < 1e-4,
            "{bos:?}: {} vs {}",
            decode.perplexity,
            prompt.perplexity
        );
    }
}

#[test]
fn batched_decoding_matches_one_sequence_at_a_time() {
    let cfg = LlamaConfig::tiny();
    let w = Arc::new(model_weights(&cfg, 21));
    let base = engine(&cfg, &w, DeviceProfile::detect().unwrap(), Backend::Jit, true, 64);
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[40, 41], &[7, 8, 9, 10, 11]];
    let mut batched: Vec<Engine> = prompts.iter().map(|_| base.fork()).collect();
    let mut single: Vec<Engine> = prompts.iter().map(|_| base.fork()).collect();
    let mut next: Vec<u32> = Vec::new();
    for ((b, s), p) in batched.iter_mut().zip(single.iter_mut()).zip(prompts) {
        let lb = b.forward(p, false).unwrap();
        s.forward(p, false).unwrap();
        next.push(argmax(&lb) as u32);
    }
    for step in 0..5 {
        let mut refs: Vec<&mut Engine> = batched.iter_mut().collect();
        let got = Engine::decode_batch(&mut refs, &next).unwrap();
        for (i, s) in single.iter_mut().enumerate() {
            let want = s.forward(&[next[i]], false).unwrap();
            let d = max_diff(&got[i], &want);
            assert!(d <= 1e-4, "step {step}, sequence {i}: logits differ by {d}");
            assert_eq!(batched[i].position(), s.position());
        }
        next = got.iter().map(|l| argmax(l) as u32).collect();
    }
    let mut other = engine(&cfg, &w, DeviceProfile::detect().unwrap(), Backend::Jit, true, 64);
    let mut refs: Vec<&mut Engine> = vec![&mut batched[0], &mut other];
    let e = Engine::decode_batch(&mut refs, &[1, 2]).unwrap_err();
    assert!(e.to_string().contains("not forks of one engine"), "{e}");
}
