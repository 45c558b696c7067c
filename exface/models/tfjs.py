"""Reader for TensorFlow.js layers/graph weight files (``*-weights_manifest.json`` + shards).

The face-api models ship as a manifest (a JSON list of groups, each naming its shard
files and its weights with name, shape, dtype and optional quantization) and binary
shards holding the weights back to back; graph models (``model.json``) carry the same
list under ``weightsManifest``. Quantized weights are stored as uint8 (or uint16) ``q``
and read as ``q * scale + min``, or as IEEE half floats (``"dtype": "float16"``, no
scale) widened to float32, exactly as tfjs-core's ``decodeWeights`` does. Arrays keep
TensorFlow's layouts (conv filters HWIO); porting code transposes them.
:mod:`exface.models.tfjs_graph` runs a whole graph model from its topology.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_DTYPES = {
    "float32": np.float32,
    "int32": np.int32,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "float16": np.float16,
    "bool": np.bool_,
}


def load_tfjs_weights(manifest: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: float32/int32 array}`` for every weight of a TF.js weights manifest.

    Shards are looked up next to the manifest. A size mismatch (truncated or wrong shard)
    is an error naming the file, never a silently garbled tensor.
    """
    manifest = Path(manifest)
    groups = json.loads(manifest.read_text())
    if isinstance(groups, dict):  # model.json layout: {"weightsManifest": [...]}
        groups = groups["weightsManifest"]
    out: dict[str, np.ndarray] = {}
    for group in groups:
        blob = b"".join((manifest.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape = tuple(spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            quant = spec.get("quantization")
            stored = np.dtype(_DTYPES[quant["dtype"] if quant else spec["dtype"]])
            nbytes = count * stored.itemsize
            if offset + nbytes > len(blob):
                raise ValueError(
                    f"{manifest}: weight {spec['name']!r} needs bytes {offset}..{offset + nbytes} "
                    f"but the shards {group['paths']} hold {len(blob)}; the shard is truncated or "
                    f"belongs to another model (fetch it again with `exface zoo --fetch`)"
                )
            raw = np.frombuffer(blob, dtype=stored, count=count, offset=offset)
            offset += nbytes
            if quant and quant["dtype"] == "float16":
                arr = raw.astype(np.float32)  # exact: every half float is a float32
            elif quant:
                arr = raw.astype(np.float64) * quant["scale"] + quant["min"]
                arr = arr.astype(np.float32)
            else:
                arr = raw.astype(np.float32 if spec["dtype"] == "float32" else raw.dtype)
            out[spec["name"]] = arr.reshape(shape)
        if offset != len(blob):
            raise ValueError(
                f"{manifest}: the manifest describes {offset} bytes but the shards hold "
                f"{len(blob)}; manifest and shards do not belong together"
            )
    return out
