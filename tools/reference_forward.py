#!/usr/bin/env python3
"""Reference forward pass of a LLaMA-architecture GGUF model, in plain numpy.

Purpose
-------
This is an *independent* check of the Rust inference engine (crates/gllm). It
shares no code with the engine: weights are read and dequantised by the `gguf`
Python package (the GGUF reference implementation maintained next to
llama.cpp), tokens come from the HF `tokenizers` library, and the arithmetic
below is a deliberately naive transcription of the LLaMA equations, computed in
float64 (the dequantised weights are float32 values, widened exactly to
float64). If the engine and this script agree, it is unlikely that they share
the same mistake. Nothing here is tuned for speed beyond vectorising over the
sequence, caching the dequantised weights in memory and keeping a KV cache
for greedy decoding.

Usage::

    python3 tools/reference_forward.py --model FILE \
        (--ids 1,2,3 | --ids-file ids.json [--name NAME] | --prompt TEXT) \
        [--out logits.npy] [--all-positions] [--greedy N] [--ignore-eos] \
        [--precision f64|f32] [--tokenize-only]

`--out` receives float32 logits of the prompt: shape [n_tokens, vocab] with
`--all-positions`, else [1, vocab] (the last position only, which skips the
LM head for the other positions). `--ids-file` takes a JSON list of ints, an
object with an "ids" list, or a prompt corpus plus `--name` (e.g.
`--ids-file crates/gllm/tests/data/prompts.json --name bridges`). `--prompt`
text is tokenised with special tokens (e.g. "<|im_start|>") parsed as such.
`--greedy N` then decodes up to N tokens (argmax, first index on ties), stopping
after the EOS token unless `--ignore-eos`. Timings per phase go to stderr.
The BLAS picks its thread count (set OPENBLAS_NUM_THREADS=1 to limit it).

The model, as computed here
---------------------------
    x = token_embd[ids]
    per layer:
        h  = rmsnorm(x) * attn_norm            rmsnorm(x) = x / sqrt(mean(x^2) + eps)
        q, k, v = h Wq^T, h Wk^T, h Wv^T       (per head slices of head_dim)
        q, k = rope(q), rope(k)
        attention: query head h reads KV head h // (n_head / n_head_kv),
                   scores q.k / sqrt(head_dim), causal mask, softmax over keys
        x  = x + attn Wo^T
        h  = rmsnorm(x) * ffn_norm
        x  = x + (silu(h Wgate^T) * (h Wup^T)) Wdown^T
    logits = (rmsnorm(x) * output_norm) Wout^T   (Wout = token_embd when the
                                                  GGUF has no output.weight)

RoPE layout
-----------
HF LLaMA checkpoints rotate the pair (i, i + head_dim/2) ("NEOX" layout). When
a LLaMA model is converted to GGUF, the rows of the Q and K projections are
permuted so that the same rotation becomes the *adjacent-pair* one. So, for a
GGUF llama model, the correct RoPE is: within each head, the pair of
components (2i, 2i+1) is rotated by the angle pos * theta_i with
theta_i = freq_base ** (-2i / n_rot), i = 0 .. n_rot/2 - 1, where n_rot is
`<arch>.rope.dimension_count` (defaults to head_dim; components past n_rot are
left alone). That is exactly what `rope_adjacent` implements, and nothing else;
an engine that rotates (i, i + half) on GGUF weights must un-permute them.

GGUF conventions used
---------------------
A tensor's GGUF shape is (ne0, ne1) = (in_features, out_features); the array
that `gguf.quants.dequantize` returns is row-major [out, in], so y = x @ W.T.
All hyperparameters are read from the `<arch>.*` metadata keys.
"""

from __future__ import annotations

import argparse
import os
import json
import math
import sys
import time

import numpy as np

import gguf
from gguf import GGMLQuantizationType, GGUFReader


class Timer:
    """Prints the wall time of named phases to stderr."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def lap(self, what: str) -> None:
        t = time.perf_counter()
        print(f"[time] {what}: {t - self.t0:.3f} s", file=sys.stderr)
        self.t0 = t


def field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def build_tokenizer(reader: GGUFReader):
    """HF byte-level BPE tokenizer built from the GGUF's tokenizer.ggml.* keys.

    Pre-tokenizer: every digit on its own, then the GPT-2 byte-level regex
    split (no prefix space). Tokens of token_type 3 (control) become special
    tokens, so they are matched verbatim in the text and skipped on decoding.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"unsupported tokenizer.ggml.model {model!r} (only byte-level BPE 'gpt2')")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise SystemExit("a tokenizer.ggml.merges entry is not 'left right'")
    types = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))

    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("duplicate strings in tokenizer.ggml.tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(special)
    for a in special:  # they must keep their GGUF ids
        assert tok.token_to_id(a.content) == vocab[a.content]
    return tok


def encode(tok, text: str) -> list[int]:
    # No BOS/EOS is added: the tokenizer has no post-processor (the GGUF's
    # tokenizer.ggml.add_bos_token is checked by the caller).
    return tok.encode(text, add_special_tokens=False).ids


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


class Model:
    """Hyperparameters and float64 weights of a LLaMA-architecture GGUF."""

    def __init__(self, reader: GGUFReader, dtype=np.float64) -> None:
        self.dtype = dtype
        arch = field(reader, "general.architecture")
        if arch != "llama":
            raise SystemExit(f"general.architecture is {arch!r}, this reference only does 'llama'")

        def hp(key, default=None):
            v = field(reader, f"{arch}.{key}", default)
            if v is None:
                raise SystemExit(f"missing metadata key {arch}.{key}")
            return v

        self.n_layer = int(hp("block_count"))
        self.n_embd = int(hp("embedding_length"))
        self.n_ff = int(hp("feed_forward_length"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv", self.n_head))
        self.head_dim = int(hp("attention.key_length", self.n_embd // self.n_head))
        if int(hp("attention.value_length", self.head_dim)) != self.head_dim:
            raise SystemExit("key_length != value_length is not supported")
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.rope_base = float(hp("rope.freq_base", 10000.0))
        self.eps = float(hp("attention.layer_norm_rms_epsilon"))
        scaling = field(reader, f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", None):
            raise SystemExit(f"rope scaling {scaling!r} is not supported")
        if self.n_head % self.n_head_kv:
            raise SystemExit("n_head is not a multiple of n_head_kv")
        self.group = self.n_head // self.n_head_kv

        # Dequantise every tensor once, keyed by GGUF name.
        self.w: dict[str, np.ndarray] = {}
        self.tensor_types: dict[str, str] = {}
        for t in reader.tensors:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
            # numpy shape is the GGUF shape reversed: [.., ne1, ne0].
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            arr = np.asarray(arr).reshape(shape)
            self.w[t.name] = arr.astype(dtype)
            self.tensor_types[t.name] = GGMLQuantizationType(t.tensor_type).name

        self.tok_embd = self.w["token_embd.weight"]  # [vocab, n_embd]
        self.n_vocab = self.tok_embd.shape[0]
        self.lm_head = self.w.get("output.weight", self.tok_embd)  # tied when absent
        self.tied = "output.weight" not in self.w
        self._check_shapes()

        # RoPE inverse frequencies theta_i = base^(-2i/n_rot), i < n_rot/2.
        i = np.arange(self.n_rot // 2, dtype=np.float64)
        self.inv_freq = self.rope_base ** (-2.0 * i / self.n_rot)

    def _check_shapes(self) -> None:
        e, hd, ff = self.n_embd, self.head_dim, self.n_ff
        want = {
            "attn_norm.weight": (e,),
            "attn_q.weight": (self.n_head * hd, e),
            "attn_k.weight": (self.n_head_kv * hd, e),
            "attn_v.weight": (self.n_head_kv * hd, e),
            "attn_output.weight": (e, self.n_head * hd),
            "ffn_norm.weight": (e,),
            "ffn_gate.weight": (ff, e),
            "ffn_up.weight": (ff, e),
            "ffn_down.weight": (e, ff),
        }
        for L in range(self.n_layer):
            for name, shape in want.items():
                got = self.w[f"blk.{L}.{name}"].shape
                if got != shape:
                    raise SystemExit(f"blk.{L}.{name}: shape {got}, expected {shape}")
        assert self.w["output_norm.weight"].shape == (e,)
        assert self.lm_head.shape == (self.n_vocab, e)

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for ty in self.tensor_types.values():
            kinds[ty] = kinds.get(ty, 0) + 1
        return (
            f"llama: {self.n_layer} layers, embd {self.n_embd}, ffn {self.n_ff}, heads {self.n_head}/"
            f"{self.n_head_kv} kv, head_dim {self.head_dim}, n_rot {self.n_rot}, rope base {self.rope_base:g}, "
            f"eps {self.eps:g}, vocab {self.n_vocab}, lm head {'tied to token_embd' if self.tied else 'output.weight'}, "
            f"tensor types {kinds}"
        )


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_adjacent(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i+1) of each head by pos * inv_freq[i].

    x: [n_tok, n_heads, head_dim]; pos: [n_tok]. Components past
    2 * len(inv_freq) are passed through unchanged.
    """
    n_rot = 2 * inv_freq.shape[0]
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]  # [n_tok, n_rot/2]
    cos = np.cos(ang)[:, None, :].astype(x.dtype)
    sin = np.sin(ang)[:, None, :].astype(x.dtype)
    out = x.copy()
    a = x[..., 0:n_rot:2]
    b = x[..., 1:n_rot:2]
    out[..., 0:n_rot:2] = a * cos - b * sin
    out[..., 1:n_rot:2] = a * sin + b * cos
    return out


class KVCache:
    """Per-layer keys (after RoPE) and values: [n_head_kv, n_past, head_dim]."""

    def __init__(self, m: Model) -> None:
        self.k = [np.zeros((m.n_head_kv, 0, m.head_dim), m.dtype) for _ in range(m.n_layer)]
        self.v = [np.zeros((m.n_head_kv, 0, m.head_dim), m.dtype) for _ in range(m.n_layer)]

    @property
    def n_past(self) -> int:
        return self.k[0].shape[1]


def forward(m: Model, ids: list[int], cache: KVCache, all_logits: bool) -> np.ndarray:
    """Runs `ids` at positions n_past.. and appends them to `cache`.

    Returns logits [n_tok, vocab] (all_logits) or [1, vocab] (last token).
    """
    n = len(ids)
    p0 = cache.n_past
    pos = np.arange(p0, p0 + n)
    hd, nh, nkv, g = m.head_dim, m.n_head, m.n_head_kv, m.group
    scale = 1.0 / math.sqrt(hd)  # a Python float: keeps the array dtype
    # mask[i, j] is True where query p0+i may not see key j (j > p0+i).
    mask = np.arange(p0 + n)[None, :] > pos[:, None]

    x = m.tok_embd[np.asarray(ids, dtype=np.int64)]  # [n, e]
    for L in range(m.n_layer):
        w = lambda name: m.w[f"blk.{L}.{name}.weight"]  # noqa: E731
        h = rmsnorm(x, w("attn_norm"), m.eps)
        q = (h @ w("attn_q").T).reshape(n, nh, hd)
        k = (h @ w("attn_k").T).reshape(n, nkv, hd)
        v = (h @ w("attn_v").T).reshape(n, nkv, hd)
        q = rope_adjacent(q, pos, m.inv_freq)
        k = rope_adjacent(k, pos, m.inv_freq)

        K = cache.k[L] = np.concatenate([cache.k[L], k.transpose(1, 0, 2)], axis=1)  # [nkv, T, hd]
        V = cache.v[L] = np.concatenate([cache.v[L], v.transpose(1, 0, 2)], axis=1)

        # Query head h = kv * g + j uses KV head kv = h // g.
        qg = q.transpose(1, 0, 2).reshape(nkv, g, n, hd)
        s = np.matmul(qg, K[:, None].transpose(0, 1, 3, 2)) * scale  # [nkv, g, n, T]
        s = np.where(mask, -np.inf, s)
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        o = np.matmul(p, V[:, None])  # [nkv, g, n, hd]
        o = o.reshape(nh, n, hd).transpose(1, 0, 2).reshape(n, nh * hd)
        x = x + o @ w("attn_output").T

        h = rmsnorm(x, w("ffn_norm"), m.eps)
        x = x + (silu(h @ w("ffn_gate").T) * (h @ w("ffn_up").T)) @ w("ffn_down").T

    if not all_logits:
        x = x[-1:]
    x = rmsnorm(x, m.w["output_norm.weight"], m.eps)
    logits = x @ m.lm_head.T
    assert logits.dtype == m.dtype
    return logits


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_ids_file(path: str, name: str | None) -> list[int]:
    """A JSON list of ids, an object with an "ids" list, or a prompt corpus
    ({"prompts": [{"name": .., "ids": [..]}, ..]}, e.g.
    crates/gllm/tests/data/prompts.json) from which `name` picks one."""
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and "prompts" in data:
        names = [p["name"] for p in data["prompts"]]
        if name not in names:
            raise SystemExit(f"{path} is a prompt corpus: pick one with --name ({', '.join(names)})")
        data = data["prompts"][names.index(name)]
    if isinstance(data, dict):
        data = data["ids"]
    return [int(i) for i in data]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file (llama architecture)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ids", help="comma-separated token ids")
    src.add_argument("--ids-file", help="JSON list of token ids, an object with an 'ids' list, or a prompt corpus")
    src.add_argument("--prompt", help="text, tokenised with the GGUF's tokenizer (special tokens parsed)")
    ap.add_argument("--name", help="with --ids-file of a prompt corpus: the prompt to run")
    ap.add_argument("--out", help="write float32 prompt logits here (.npy)")
    ap.add_argument("--all-positions", action="store_true", help="logits for every prompt position, not just the last")
    ap.add_argument("--greedy", type=int, default=0, metavar="N", help="then generate N tokens greedily")
    ap.add_argument("--ignore-eos", action="store_true", help="with --greedy: do not stop at the EOS token")
    ap.add_argument(
        "--precision",
        choices=["f64", "f32"],
        default="f64",
        help="arithmetic precision (default f64, the reference; f32 shows how much rounding alone moves the logits)",
    )
    ap.add_argument("--tokenize-only", action="store_true", help="print the prompt ids as JSON and exit")
    ap.add_argument(
        "--corpus-out",
        metavar="DIR",
        help="with --ids-file of a prompt corpus and no --name: run every prompt (weights dequantised once) "
        "and write DIR/NAME.npy, all positions",
    )
    args = ap.parse_args(argv)

    timer = Timer()
    reader = GGUFReader(args.model)
    timer.lap("read gguf")

    tok = None
    if args.prompt is not None or args.greedy:
        tok = build_tokenizer(reader)
        if field(reader, "tokenizer.ggml.add_bos_token", False):
            print("warning: the GGUF asks for a BOS token; this script does not add one", file=sys.stderr)
        timer.lap("build tokenizer")

    if args.corpus_out:
        if args.ids_file is None or args.name is not None:
            raise SystemExit("--corpus-out needs --ids-file of a prompt corpus and no --name")
        with open(args.ids_file) as f:
            corpus = json.load(f)
        m = Model(reader, dtype=np.float64 if args.precision == "f64" else np.float32)
        timer.lap(f"dequantize weights (to {args.precision})")
        os.makedirs(args.corpus_out, exist_ok=True)
        for p in corpus["prompts"]:
            logits = forward(m, p["ids"], KVCache(m), all_logits=True)
            out = os.path.join(args.corpus_out, f"{p['name']}.npy")
            np.save(out, logits.astype(np.float32))
            timer.lap(f"{p['name']}: {len(p['ids'])} tokens -> {out}")
        return 0

    if args.ids is not None:
        ids = [int(s) for s in args.ids.split(",") if s.strip()]
    elif args.ids_file is not None:
        ids = parse_ids_file(args.ids_file, args.name)
    else:
        ids = encode(tok, args.prompt)
        timer.lap("tokenize")
    if args.tokenize_only:
        print(json.dumps(ids))
        return 0
    if not ids:
        raise SystemExit("empty prompt")
    print(f"prompt ids ({len(ids)}): {','.join(map(str, ids))}")

    m = Model(reader, dtype=np.float64 if args.precision == "f64" else np.float32)
    print(m.describe(), file=sys.stderr)
    if max(ids) >= m.n_vocab or min(ids) < 0:
        raise SystemExit(f"token id out of range 0..{m.n_vocab}")
    timer.lap(f"dequantize weights (to {args.precision})")

    cache = KVCache(m)
    logits = forward(m, ids, cache, all_logits=args.all_positions)
    timer.lap(f"prompt forward ({len(ids)} tokens)")
    if args.out:
        np.save(args.out, logits.astype(np.float32))
        print(f"wrote {args.out}: float32 {tuple(logits.shape)}", file=sys.stderr)
    print(f"argmax at the last position: {int(np.argmax(logits[-1]))}")

    if args.greedy > 0:
        eos = field(reader, "tokenizer.ggml.eos_token_id")
        out: list[int] = []
        nxt = int(np.argmax(logits[-1]))
        for step in range(args.greedy):
            out.append(nxt)
            if (nxt == eos and not args.ignore_eos) or step == args.greedy - 1:
                break
            nxt = int(np.argmax(forward(m, [nxt], cache, all_logits=False)[-1]))
        timer.lap(f"greedy decode ({len(out)} tokens, KV cache)")
        print(f"greedy ids ({len(out)}): {','.join(map(str, out))}")
        print(f"greedy text: {json.dumps(tok.decode(out, skip_special_tokens=False))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
