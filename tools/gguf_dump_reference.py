#!/usr/bin/env python3
"""Reference values for the GGUF reader tests, computed by the `gguf` Python
package (the format's own tooling) so the Rust dequantisers and quantisers are
checked against an independent implementation.

Usage: gguf_dump_reference.py FILE SPEC...

SPEC is one of
  NAME               the whole tensor, dequantised
  NAME@ROW           row ROW (a run of ne0 elements; rows count over ne1..ne3)
  all:NAME           the whole tensor, printing every value
  quantize:TYPE:NAME the F32 tensor NAME quantised to TYPE (e.g. Q8_0) by
                     gguf.quants.quantize, printed as hex bytes

Prints one JSON object: {"version": V, "tensor_count": N, "results": [...]},
each result with the spec, the tensor's type name and dims (ggml order, ne0
first), the element count, the first 64 values, the float64 sum and sum of
absolute values (and "values" or "bytes_hex" for the all:/quantize: forms).

Needs: pip install numpy gguf
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize, quantize


def tensor_by_name(reader, name):
    for tensor in reader.tensors:
        if tensor.name == name:
            return tensor
    raise SystemExit(f"tensor {name!r} not found")


def values_of(tensor, row=None):
    data = tensor.data
    if row is not None:
        data = data.reshape(-1, data.shape[-1])[row]
    values = dequantize(np.ascontiguousarray(data), tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape(-1)


def describe(spec, tensor, values):
    return {
        "spec": spec,
        "name": tensor.name,
        "type": tensor.tensor_type.name,
        "dims": [int(d) for d in tensor.shape],
        "n": int(values.size),
        "first": [float(v) for v in values[:64]],
        "sum": float(np.sum(values, dtype=np.float64)),
        "sum_abs": float(np.sum(np.abs(values), dtype=np.float64)),
    }


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    reader = GGUFReader(sys.argv[1])
    version = int(reader.fields["GGUF.version"].parts[-1][0])
    results = []
    for spec in sys.argv[2:]:
        if spec.startswith("quantize:"):
            _, type_name, name = spec.split(":", 2)
            tensor = tensor_by_name(reader, name)
            values = values_of(tensor)
            qtype = GGMLQuantizationType[type_name]
            ne0 = int(tensor.shape[0])
            packed = quantize(values.reshape(-1, ne0), qtype)
            result = describe(spec, tensor, values)
            result["bytes_hex"] = np.ascontiguousarray(packed).view(np.uint8).tobytes().hex()
        elif spec.startswith("all:"):
            tensor = tensor_by_name(reader, spec[4:])
            values = values_of(tensor)
            result = describe(spec, tensor, values)
            result["values"] = [float(v) for v in values]
        elif "@" in spec:
            name, row = spec.rsplit("@", 1)
            tensor = tensor_by_name(reader, name)
            result = describe(spec, tensor, values_of(tensor, int(row)))
        else:
            tensor = tensor_by_name(reader, spec)
            result = describe(spec, tensor, values_of(tensor))
        results.append(result)
    json.dump({"version": version, "tensor_count": len(reader.tensors), "results": results}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
