#!/usr/bin/env bash
# The peer benchmark: llama.cpp's llama-bench and our `gllm bench` on the same
# GGUF, with the same settings, one after the other in this one invocation, and
# a table of gllm / llama.cpp ratios. Run on demand on an idle machine; not in CI.
#
# llama.cpp is built from source, taken only from the PyPI sdist of
# llama-cpp-python (which vendors llama.cpp under vendor/llama.cpp): CPU only,
# Release, -march=native, targets llama-bench and llama-perplexity. The build is
# cached under .cache/llama.cpp/<version>/ (gitignored) and reused by later runs.
# See docs/peer-benchmark.md.
#
# usage: scripts/bench-vs-llama-cpp.sh [--model FILE] [-p 128,512] [-n 128]
#                                      [-t 1,2] [-r 5] [--f32-weights] [--int16]
#                                      [--build-only | --skip-build]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# ---- pinned versions ---------------------------------------------------------
# llama-cpp-python 0.3.36 vendors llama.cpp commit 0c1e57098bba.
LCP_VERSION=0.3.36
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_CPP_COMMIT=0c1e57098bba43ac29e6e3b677cdceebdd22334f
# Used only when this machine has no (recent enough) cmake / ninja of its own.
CMAKE_WHEEL=cmake==3.31.10
NINJA_WHEEL=ninja==1.13.0
CMAKE_MIN=3.14

cache=$repo/.cache/llama.cpp
dir=$cache/$LCP_VERSION
bin=$dir/bin
stamp=$dir/build-info.txt

# ---- options ------------------------------------------------------------------
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
default_model=1
prompts=128,512
gen=128
threads=1,2
reps=5
build_only=0
skip_build=0
f32_weights=0
int16=0

usage() { sed -n '12,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "bench-vs-llama-cpp: $*" >&2; exit 1; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --model|-m) need_arg "$@"; model=$2; default_model=0; shift 2 ;;
        --model=*) model=${1#*=}; default_model=0; shift ;;
        -p|--n-prompt) need_arg "$@"; prompts=$2; shift 2 ;;
        -n|--n-gen) need_arg "$@"; gen=$2; shift 2 ;;
        -t|--threads) need_arg "$@"; threads=$2; shift 2 ;;
        -r|--repetitions) need_arg "$@"; reps=$2; shift 2 ;;
        --f32-weights) f32_weights=1; shift ;;
        --int16) int16=1; shift ;;
        --build-only) build_only=1; shift ;;
        --skip-build) skip_build=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $build_only == 1 && $skip_build == 1 ]] && die "--build-only and --skip-build exclude each other"
[[ $prompts =~ ^[0-9]+(,[0-9]+)*$ ]] || die "-p wants a comma-separated list of prompt lengths, got '$prompts'"
[[ $gen =~ ^[0-9]+$ ]] || die "-n wants one number, got '$gen'"
[[ $threads =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "-t wants a comma-separated list of thread counts, got '$threads'"
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "-r wants a number >= 1, got '$reps'"

say() { printf '==> %s\n' "$*"; }

# The build is -march=native, so it belongs to one kind of CPU: the stamp
# records which, and a different CPU triggers a rebuild.
cpu_model() { grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//'; }
cpu_sig() { { cpu_model; grep -m1 '^flags' /proc/cpuinfo; } | sha256sum | cut -c1-16; }

# ---- tools: cmake and ninja ---------------------------------------------------
version_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1) == "$2" ]]; }

find_tools() {
    local tools=$cache/tools-venv
    local have_cmake=0 have_ninja=0
    if command -v cmake >/dev/null; then
        local v
        v=$(cmake --version | head -1 | awk '{print $3}')
        if version_ge "$v" "$CMAKE_MIN"; then have_cmake=1; else say "system cmake $v is older than $CMAKE_MIN"; fi
    fi
    command -v ninja >/dev/null && have_ninja=1
    if [[ $have_cmake == 0 || $have_ninja == 0 ]]; then
        if [[ ! -x $tools/bin/cmake || ! -x $tools/bin/ninja ]]; then
            say "installing $CMAKE_WHEEL and $NINJA_WHEEL from PyPI into $tools"
            python3 -m venv "$tools"
            "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "$CMAKE_WHEEL" "$NINJA_WHEEL"
        fi
        export PATH=$tools/bin:$PATH
    fi
    say "$(cmake --version | head -1), ninja $(ninja --version)"
}

# ---- build --------------------------------------------------------------------
have_build() { [[ -x $bin/llama-bench && -x $bin/llama-perplexity && -f $stamp ]]; }

build() {
    local t0=$SECONDS
    find_tools

    local sdist=$cache/dl/llama_cpp_python-$LCP_VERSION.tar.gz
    if [[ ! -f $sdist ]] || ! echo "$LCP_SHA256  $sdist" | sha256sum --check --status; then
        say "downloading the llama-cpp-python $LCP_VERSION sdist from PyPI"
        mkdir -p "$cache/dl"
        rm -f "$sdist"
        # --no-binary for this package only: with `:all:`, pip would also build
        # the sdist's build dependencies (cmake, ninja) from source just to read
        # its metadata, which takes a quarter of an hour.
        python3 -m pip download --quiet --disable-pip-version-check --no-deps \
            --no-binary llama-cpp-python "llama-cpp-python==$LCP_VERSION" -d "$cache/dl"
    fi
    echo "$LCP_SHA256  $sdist" | sha256sum --check --status || die "$sdist: sha256 mismatch (want $LCP_SHA256)"

    say "unpacking vendor/llama.cpp into $dir/src"
    rm -rf "$dir"
    mkdir -p "$dir/src"
    # The submodule's git dir comes along so that llama.cpp's build info (and so
    # llama-bench's build_commit) names the vendored commit.
    tar xzf "$sdist" -C "$dir/src" --strip-components=1 \
        "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" \
        "llama_cpp_python-$LCP_VERSION/.git/modules/vendor/llama.cpp"
    local src=$dir/src/vendor/llama.cpp
    [[ -f $src/CMakeLists.txt ]] || die "no vendor/llama.cpp/CMakeLists.txt in $sdist"

    # OpenMP is llama.cpp's default thread pool on Linux; use it when the
    # compiler has it, else ggml's own pthread pool.
    local openmp=OFF
    if echo 'int main(void){return 0;}' | ${CC:-cc} -fopenmp -x c - -o "$dir/omp-test" 2>/dev/null; then openmp=ON; fi
    rm -f "$dir/omp-test"

    local flags=(
        -DCMAKE_BUILD_TYPE=Release
        -DBUILD_SHARED_LIBS=OFF
        -DGGML_NATIVE=ON
        -DGGML_OPENMP=$openmp
        -DGGML_CPU=ON
        -DGGML_BACKEND_DL=OFF
        -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF
        -DGGML_SYCL=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF -DGGML_BLAS=OFF
        -DLLAMA_OPENSSL=OFF
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON
    )
    say "configuring: cmake ${flags[*]}"
    cmake -S "$src" -B "$dir/build" -G Ninja "${flags[@]}" >"$dir/configure.log" 2>&1 \
        || { tail -40 "$dir/configure.log" >&2; die "cmake configure failed; log: $dir/configure.log"; }
    say "building llama-bench and llama-perplexity with -j2 (several minutes on 2 cores)"
    local tb=$SECONDS
    set +o pipefail
    cmake --build "$dir/build" --target llama-bench llama-perplexity -j 2 2>&1 | tee "$dir/build.log" \
        | awk -F'[][/]' '/^\[[0-9]+\/[0-9]+\]/ { p = int(100 * $2 / $3 / 10) * 10;
                                                 if (p > last) { printf "    %3d %% (%s/%s steps)\n", p, $2, $3; fflush(); last = p } }'
    local status=${PIPESTATUS[0]}
    set -o pipefail
    [[ $status == 0 ]] || { tail -40 "$dir/build.log" >&2; die "build failed; log: $dir/build.log"; }
    local compile_s=$((SECONDS - tb))

    mkdir -p "$bin"
    cp "$dir/build/bin/llama-bench" "$dir/build/bin/llama-perplexity" "$bin/"
    {
        echo "llama_cpp_python=$LCP_VERSION"
        echo "llama_cpp_commit=$LLAMA_CPP_COMMIT"
        echo "cmake_flags=${flags[*]}"
        echo "compiler=$(${CXX:-c++} --version | head -1)"
        echo "cpu=$(cpu_model)"
        echo "cpu_sig=$(cpu_sig)"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "compile_seconds=$compile_s"
        echo "total_seconds=$((SECONDS - t0))"
    } >"$stamp"
    say "built in $((SECONDS - t0)) s (compiling: ${compile_s} s); binaries in $bin"
}

if [[ $skip_build == 1 ]]; then
    have_build || die "no cached llama.cpp build in $dir; run without --skip-build (or with --build-only) first"
    if [[ $(sed -n 's/^cpu_sig=//p' "$stamp") != "$(cpu_sig)" ]]; then
        echo "warning: the cached build was made (-march=native) on another CPU: $(sed -n 's/^cpu=//p' "$stamp")" >&2
    fi
elif have_build && [[ $(sed -n 's/^cpu_sig=//p' "$stamp") == "$(cpu_sig)" ]]; then
    :
else
    have_build && say "the cached build was made on another CPU; rebuilding"
    build
fi
say "llama.cpp: llama-cpp-python $LCP_VERSION (llama.cpp ${LLAMA_CPP_COMMIT:0:12}), built $(sed -n 's/^built=//p' "$stamp") in $(sed -n 's/^total_seconds=//p' "$stamp") s; $bin"
[[ $build_only == 1 ]] && exit 0

# ---- model ----------------------------------------------------------------------
if [[ $default_model == 1 ]]; then
    bash scripts/fetch-smollm2.sh
fi
[[ -f $model ]] || die "model not found: $model"

# ---- run ------------------------------------------------------------------------
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cpu=$(cpu_model)
avx512=$(grep -o -m1 avx512f /proc/cpuinfo | head -1 || true)
echo
echo "machine: nproc=$(nproc), CPU: ${cpu:-unknown}, AVX-512: ${avx512:+yes (avx512f)}${avx512:-no}"
echo "model:   $model"
echo "tests:   -p $prompts -n $gen, threads $threads, $reps repetitions"

say "building gllm (release)"
cargo build --release --quiet -p gllm-cli

echo
say "llama.cpp: llama-bench -m $model -p $prompts -n $gen -t $threads -r $reps"
set +o pipefail
"$bin/llama-bench" -m "$model" -p "$prompts" -n "$gen" -t "$threads" -r "$reps" -o json --progress 2>&1 >"$out/llama.json" \
    | tee "$out/llama.err" | grep --line-buffered ': starting$' | sed -u 's/^/    /'
status=${PIPESTATUS[0]}
set -o pipefail
[[ $status == 0 ]] || { cat "$out/llama.err" >&2; die "llama-bench failed (exit $status)"; }

say "gllm: cargo run --release -p gllm-cli -- bench --model $model -p $prompts -n $gen -T $threads -r $reps"
cargo run --release --quiet -p gllm-cli -- bench --model "$model" -p "$prompts" -n "$gen" -T "$threads" -r "$reps" >"$out/gllm.md" \
    || die "gllm bench failed"
variants=("gllm=$out/gllm.md")
if [[ $f32_weights == 1 ]]; then
    say "gllm --f32-weights: the same, with every weight dequantised to f32 at load"
    cargo run --release --quiet -p gllm-cli -- bench --model "$model" -p "$prompts" -n "$gen" -T "$threads" -r "$reps" \
        --f32-weights >"$out/gllm-f32.md" || die "gllm bench --f32-weights failed"
    variants+=("gllm --f32-weights=$out/gllm-f32.md")
fi
if [[ $int16 == 1 ]]; then
    say "gllm --activations int16: the same, with 16-bit activations (the f32 path's greedy text)"
    cargo run --release --quiet -p gllm-cli -- bench --model "$model" -p "$prompts" -n "$gen" -T "$threads" -r "$reps" \
        --activations int16 >"$out/gllm-int16.md" || die "gllm bench --activations int16 failed"
    variants+=("gllm --activations int16=$out/gllm-int16.md")
fi

echo
python3 - "$out/llama.json" "$(nproc)" "$cpu" "${avx512:-no}" "${variants[@]}" <<'PY'
import json, math, sys

llama_path, nproc, cpu, avx512 = sys.argv[1:5]
# (label, path) of each gllm run: the default, and `--f32-weights` if asked.
variants = [v.split("=", 1) for v in sys.argv[5:]]

def test_name(r):
    p, n = r["n_prompt"], r["n_gen"]
    if p and n:
        return f"pp{p}+tg{n}"
    return f"pp{p}" if p else f"tg{n}"

def size(b):
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"

def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |")
    for r in rows:
        print("| " + " | ".join(r) + " |")

# llama.cpp, printed as llama-bench's own markdown table (its default -o md).
llama = json.load(open(llama_path))
first = llama[0] if llama else {}
print(f"llama.cpp (build {first.get('build_commit', '?')}, backends {first.get('backends', '?')}, "
      f"cpu_info {first.get('cpu_info', '?')!r}):")
print()
lrows, lres = [], {}
for r in llama:
    key = (test_name(r), int(r["n_threads"]))
    lres[key] = (r["avg_ts"], r["stddev_ts"])
    lrows.append([r["model_type"], size(r["model_size"]), f"{r['model_n_params'] / 1e6:.2f} M",
                  r["backends"], str(r["n_threads"]), key[0], f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"])
table(["model", "size", "params", "backend", "threads", "test", "t/s"], lrows)
print()

# gllm, as printed by `gllm bench`, once per variant.
results = []
gorder = []
for label, path in variants:
    print(f"{label}:")
    print()
    gres = {}
    for line in open(path):
        print(line, end="")
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not line.startswith("|") or cells[0] == "model" or cells[0].startswith("-"):
            continue
        _, _, _, threads, test, ts = cells
        m, _, s = ts.partition("±")
        key = (test, int(threads))
        gres[key] = (float(m), float(s or 0))
        gorder.append(key)
    results.append((label, gres))
    print()

# Combined: one row per (test, threads) that either side ran.
keys = list(dict.fromkeys(list(lres) + gorder))
order = {t: i for i, t in enumerate(dict.fromkeys([k[0] for k in keys]))}
keys.sort(key=lambda k: (k[1], order[k[0]]))

def ratio(g, l):
    if not (l and g and l[0] > 0 and g[0] > 0):
        return "—"
    q = g[0] / l[0]
    # Relative spreads of the two means, added in quadrature.
    dq = q * math.hypot(l[1] / l[0], g[1] / g[0])
    return f"{q:.2f}× ± {dq:.2f}"

rows = []
fmt = lambda v: f"{v[0]:.2f} ± {v[1]:.2f}" if v else "—"
for k in keys:
    l = lres.get(k)
    row = [k[0], str(k[1]), fmt(l)]
    for _, gres in results:
        row += [fmt(gres.get(k)), ratio(gres.get(k), l)]
    rows.append(row)
print("combined (t/s as mean ± std over the repetitions; ratio > 1: gllm is faster):")
print()
header = ["test", "threads", "llama.cpp t/s"]
for label, _ in results:
    header += [f"{label} t/s", f"{label} / llama.cpp"]
table(header, rows)
print()
print(f"Both engines ran in this one invocation, one after the other, on the same machine "
      f"(nproc={nproc}, CPU: {cpu or 'unknown'}, AVX-512: {'yes' if avx512 != 'no' else 'no'}),")
print("on the same GGUF with the same prompt/generation lengths, thread counts and repetitions.")
print("Only these same-run ratios mean anything: absolute t/s depend on the machine's DRAM bandwidth and load.")
PY
