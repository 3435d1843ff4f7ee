#!/usr/bin/env bash
# Perplexity of our engine and of llama.cpp's llama-perplexity on the same GGUF
# and the same English text, in one invocation. On demand, not in CI.
#
# The text is the documentation of Python's `pydoc_data.topics` (every Python
# install has it), written out to .cache/perplexity/pydoc-topics.txt. llama.cpp
# comes from scripts/bench-vs-llama-cpp.sh's cached build (run that with
# --build-only first).
#
# --decode and --f32-weights are passed to `gllm perplexity` (score token by token
# through the decode path; dequantise every weight to f32).
#
# usage: scripts/perplexity-vs-llama-cpp.sh [--model FILE] [-c 512] [--chunks N] [-t THREADS] [--decode] [--f32-weights]
set -euo pipefail
cd "$(dirname "$0")/.."

model=models/SmolLM2-135M-Instruct.Q4_1.gguf
ctx=512
chunks=
threads=$(nproc)
gllm_flags=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --model|-m) model=$2; shift 2 ;;
        -c|--ctx-size) ctx=$2; shift 2 ;;
        --chunks) chunks=$2; shift 2 ;;
        -t|--threads) threads=$2; shift 2 ;;
        --decode|--f32-weights) gllm_flags+=("$1"); shift ;;
        *) echo "usage: $0 [--model FILE] [-c 512] [--chunks N] [-t THREADS] [--decode] [--f32-weights]" >&2; exit 2 ;;
    esac
done
[[ $model == models/SmolLM2-135M-Instruct.Q4_1.gguf ]] && bash scripts/fetch-smollm2.sh
perp=$(ls .cache/llama.cpp/*/bin/llama-perplexity 2>/dev/null | head -1 || true)
[[ -x $perp ]] || { echo "no llama-perplexity: run scripts/bench-vs-llama-cpp.sh --build-only first" >&2; exit 1; }

mkdir -p .cache/perplexity
text=.cache/perplexity/pydoc-topics.txt
python3 - "$text" <<'PY'
import sys, pydoc_data.topics as t
with open(sys.argv[1], "w", encoding="utf-8") as f:
    f.write("\n\n".join(t.topics[k] for k in sorted(t.topics)))
PY
echo "text: $text ($(wc -c <"$text") bytes), context $ctx, threads $threads"

chunk_args=()
[[ -n $chunks ]] && chunk_args=(--chunks "$chunks")
echo "==> llama.cpp: $perp"
"$perp" -m "$model" -f "$text" -c "$ctx" -t "$threads" ${chunks:+--chunks "$chunks"} 2>&1 | tee .cache/perplexity/llama.log \
    | grep -E "Final estimate|tokenizing|perplexity: calculating" || true
cargo build --release -q -p gllm-cli
echo "==> gllm ${gllm_flags[*]-}"
./target/release/gllm perplexity --model "$model" -f "$text" -c "$ctx" -t "$threads" "${chunk_args[@]}" ${gllm_flags[@]+"${gllm_flags[@]}"} 2>&1 \
    | tee .cache/perplexity/gllm.log | grep -E "^perplexity|tokenised"
llama=$(grep -oE "Final estimate: PPL = [0-9.]+" .cache/perplexity/llama.log | grep -oE "[0-9.]+$" || true)
ours=$(grep -oE "^perplexity [0-9.]+" .cache/perplexity/gllm.log | grep -oE "[0-9.]+$" || true)
if [[ -n $llama && -n $ours ]]; then
    python3 -c "l, o = $llama, $ours; print(f'llama.cpp {l:.4f}  gllm {o:.4f}  gllm/llama.cpp - 1 = {100 * (o / l - 1):+.3f} %')"
fi
