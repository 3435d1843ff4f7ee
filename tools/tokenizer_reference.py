#!/usr/bin/env python3
"""Reference token ids for the gllm tokenizer check (crates/gllm/tests/tokenizer.rs).

Reads the tokenizer of a GGUF model (`tokenizer.ggml.*` keys) with the `gguf`
package, builds the same byte-level BPE with the Hugging Face `tokenizers`
package, and writes one JSON document with:

* `spec`: the GGUF tokenizer fields (model, pre, tokens, merges, token_types,
  special ids, add_bos/add_eos, chat_template), so the Rust side builds its
  `TokenizerSpec` without a GGUF reader of its own;
* `cases`: for every string of the fixture, the reference ids (special tokens
  parsed, no BOS/EOS added);
* `chat`: a two-turn conversation rendered with the model's chat template by
  `jinja2` the way `transformers` does (trim_blocks, lstrip_blocks), or null
  when `jinja2` is not installed (the Rust test then falls back to its own
  hand-written ChatML expectation).

The reference pipeline is the one of the model's original tokenizer.json for
the `smollm` pre-tokenizer: Digits(individual_digits=True) then
ByteLevel(add_prefix_space=False, use_regex=True); ByteLevel decoder; control
tokens (token type 3) added as special tokens.

Usage: tokenizer_reference.py --model M.gguf --strings strings.json --out ref.json
Exit codes: 2 = a needed package is missing, 3 = the model file is missing.
"""

import argparse
import json
import os
import sys

# The pre-tokenizer names this reference reproduces (llama.cpp's "smollm" family:
# individual digits, then the GPT-2 byte-level regex).
SUPPORTED_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"}

CHAT_MESSAGES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 = 4."},
    {"role": "user", "content": "And in French?  Answer briefly.\n"},
]


def need(module):
    try:
        return __import__(module)
    except ImportError:
        print(f"tokenizer_reference.py: python package '{module}' is missing: pip install gguf tokenizers numpy",
              file=sys.stderr)
        sys.exit(2)


def field_value(reader, key):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--strings", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    need("numpy")
    gguf = need("gguf")
    tokenizers = need("tokenizers")
    if not os.path.isfile(args.model):
        print(f"tokenizer_reference.py: model {args.model} is missing: run scripts/fetch-smollm2.sh",
              file=sys.stderr)
        sys.exit(3)

    reader = gguf.GGUFReader(args.model)
    spec = {
        "model": field_value(reader, "tokenizer.ggml.model"),
        "pre": field_value(reader, "tokenizer.ggml.pre"),
        "tokens": field_value(reader, "tokenizer.ggml.tokens") or [],
        "merges": field_value(reader, "tokenizer.ggml.merges") or [],
        "token_types": [int(t) for t in (field_value(reader, "tokenizer.ggml.token_type") or [])],
        "bos": field_value(reader, "tokenizer.ggml.bos_token_id"),
        "eos": field_value(reader, "tokenizer.ggml.eos_token_id"),
        "eot": field_value(reader, "tokenizer.ggml.eot_token_id"),
        "pad": field_value(reader, "tokenizer.ggml.padding_token_id"),
        "unk": field_value(reader, "tokenizer.ggml.unknown_token_id"),
        "add_bos": bool(field_value(reader, "tokenizer.ggml.add_bos_token") or False),
        "add_eos": bool(field_value(reader, "tokenizer.ggml.add_eos_token") or False),
        "chat_template": field_value(reader, "tokenizer.chat_template"),
    }
    for key in ("bos", "eos", "eot", "pad", "unk"):
        if spec[key] is not None:
            spec[key] = int(spec[key])
    if spec["model"] != "gpt2" or spec["pre"] not in SUPPORTED_PRE:
        print(f"tokenizer_reference.py: reference pipeline is for gpt2 + {sorted(SUPPORTED_PRE)}, "
              f"model has {spec['model']} + {spec['pre']}", file=sys.stderr)
        sys.exit(4)

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = spec["tokens"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    types = spec["token_types"]
    control = [tokens[i] for i, t in enumerate(types) if t == 3]
    tok.add_special_tokens([AddedToken(c, special=True, normalized=False) for c in control])

    with open(args.strings, encoding="utf-8") as f:
        strings = json.load(f)["strings"]
    cases = []
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids})

    chat = None
    try:
        import jinja2  # noqa: F401
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        print("tokenizer_reference.py: jinja2 not installed, no reference chat rendering", file=sys.stderr)
    else:
        if spec["chat_template"] is not None:
            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            template = env.from_string(spec["chat_template"])
            bos = tokens[spec["bos"]] if spec["bos"] is not None else ""
            eos = tokens[spec["eos"]] if spec["eos"] is not None else ""
            chat = {
                "messages": CHAT_MESSAGES,
                "bos_token": bos,
                "eos_token": eos,
                "with_generation_prompt": template.render(messages=CHAT_MESSAGES, add_generation_prompt=True,
                                                          bos_token=bos, eos_token=eos),
                "without_generation_prompt": template.render(messages=CHAT_MESSAGES,
                                                             add_generation_prompt=False,
                                                             bos_token=bos, eos_token=eos),
            }

    out = {"tokenizers_version": tokenizers.__version__, "spec": spec, "cases": cases, "chat": chat}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True)


if __name__ == "__main__":
    main()
