"""A small interpreter for TensorFlow.js graph models (``model.json`` + weight shards) in PyTorch.

A TF.js *graph model* is a frozen TensorFlow GraphDef written as JSON: ``modelTopology.node``
lists every node (``name``, ``op``, ``input`` names, ``attr``), and ``weightsManifest`` holds
the values of the ``Const`` nodes (read by :func:`exface.models.tfjs.load_tfjs_weights`,
float16-quantized in Human's models). :class:`TFJSGraph` turns such a file into an
``nn.Module``: constants become parameters (float) or Python values (int), and ``forward``
evaluates the nodes the requested outputs depend on, in topological order, with the same
semantics as TF.js's kernels.

Only the ops the graphs exface ports use are implemented (an unknown op is an error naming
it and the node): ``Conv2D``, ``DepthwiseConv2dNative`` (``SAME``/``VALID``, any stride,
dilation 1, NHWC), ``_FusedMatMul`` (``BiasAdd`` then optionally ``Relu``/``Relu6``),
``MatMul``, ``Add``/``AddV2``/``Sub``/``Mul``/``Maximum``/``Minimum`` (broadcasting),
``Relu``, ``Relu6``, ``Sigmoid``, ``Softmax``, ``Mean``, ``Pad``, ``Reshape``, ``Identity``.

Layout: values stay in TensorFlow's logical NHWC order (so ``Mean`` axes, ``Pad`` pairs and
``Reshape`` flattening mean what the graph says), in NHWC-contiguous memory: 1x1
convolutions are GEMMs over the pixels, the others run on channels_last views (no copies).
Filters are converted to OIHW once, at load time.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from exface.models.faceapi_ops import _same_pads
from exface.models.tfjs import load_tfjs_weights

__all__ = ["TFJSGraph", "read_graph_model"]

_ELEMENTWISE = {
    "Add": torch.add,
    "AddV2": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Maximum": torch.maximum,
    "Minimum": torch.minimum,
}
_UNARY = {
    "Relu": F.relu,
    "Relu6": lambda x: x.clamp(0.0, 6.0),
    "Sigmoid": torch.sigmoid,
    "Identity": lambda x: x,
}


def read_graph_model(model_json: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(model.json as a dict, {const name: array})`` of a TF.js graph model.

    Fails with the file's name when it is a layers model or a bare weights manifest.
    """
    path = Path(model_json)
    spec = json.loads(path.read_text())
    if not isinstance(spec, dict) or "node" not in spec.get("modelTopology", {}):
        raise ValueError(
            f"{path} is not a TF.js graph model (a model.json with modelTopology.node); "
            f"layers models and bare weight manifests need a dedicated port"
        )
    return spec, load_tfjs_weights(path)


def _attr(node: dict, key: str, default=None):
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        return []
    for k in ("b", "i", "f"):
        if k in a:
            return a[k]
    return default


def _key(name: str) -> str:
    return name.replace("/", "__").replace(".", "_")


class TFJSGraph(nn.Module):
    """A TF.js graph model as an ``nn.Module``.

    Args:
        model_json: the graph model's ``model.json`` (its shards beside it).
        outputs: node names to return (``"name"`` or ``"name:0"``); default the graph
            signature's outputs.

    ``forward(x)`` takes the graph's single input in NHWC (as TF.js does) and returns
    ``{output name: tensor}``. Float constants are parameters (``requires_grad`` as
    set by the caller), so the module moves with ``.to()`` and can be fine-tuned.
    """

    def __init__(self, model_json: str | Path, outputs: Sequence[str] | None = None) -> None:
        super().__init__()
        spec, weights = read_graph_model(model_json)
        self.source = str(model_json)
        nodes = {n["name"]: n for n in spec["modelTopology"]["node"]}
        if outputs is None:
            outputs = list(spec.get("signature", {}).get("outputs", {}))
        self.outputs = [o.split(":")[0] for o in outputs]
        for o in self.outputs:
            if o not in nodes:
                raise KeyError(f"{self.source} has no node {o!r}")
        placeholders = [n for n, d in nodes.items() if d["op"] == "Placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"{self.source}: expected one input placeholder, found {placeholders}")
        self.input_name = placeholders[0]
        self._program = self._schedule(nodes)
        self.params = nn.ParameterDict()
        self._ints: dict[str, list] = {}
        conv_filters = {
            nodes[n]["input"][1]: nodes[n]["op"] for n in self._program if nodes[n]["op"] in ("Conv2D", "DepthwiseConv2dNative")
        }
        for name in self._program:
            node = nodes[name]
            if node["op"] != "Const":
                continue
            if name not in weights:
                raise KeyError(f"{self.source}: constant {name!r} has no value in the weights manifest")
            arr = weights[name]
            if arr.dtype.kind in "iub":
                self._ints[name] = arr.tolist()
                continue
            if conv_filters.get(name) == "Conv2D":  # HWIO -> OIHW
                arr = arr.transpose(3, 2, 0, 1)
            elif conv_filters.get(name) == "DepthwiseConv2dNative":  # H W C M -> (C*M) 1 H W
                h, w, c, m = arr.shape
                arr = arr.reshape(h, w, c * m, 1).transpose(2, 3, 0, 1)
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            self.params[_key(name)] = nn.Parameter(t, requires_grad=False)
        self._nodes = {n: nodes[n] for n in self._program}
        self._fuse_conv_chains()
        self._program = list(self._nodes)
        nodes = {**nodes, **self._nodes}
        # Free each intermediate after its last reader: a graph's activations would otherwise
        # all stay alive until the end of forward (GBs for a 224-px MobileNet batch of 64).
        last_use: dict[str, int] = {}
        for i, name in enumerate(self._program):
            for inp in nodes[name].get("input", []):
                last_use[inp.split(":")[0].lstrip("^")] = i
        self._free_after: list[list[str]] = [[] for _ in self._program]
        for name, i in last_use.items():
            if name not in self.outputs and nodes[name]["op"] not in ("Const",):
                self._free_after[i].append(name)
        for name, node in self._nodes.items():
            op = node["op"]
            if op not in _ELEMENTWISE and op not in _UNARY and op not in self._OPS:
                raise NotImplementedError(f"{self.source}: node {name!r} uses op {op!r}, which TFJSGraph does not implement")

    def _schedule(self, nodes: dict[str, dict]) -> list[str]:
        """Names of the nodes the outputs need, each after its inputs (iterative DFS)."""
        order: list[str] = []
        state: dict[str, int] = {}
        for out in self.outputs:
            stack = [(out, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    if state.get(name) != 2:
                        state[name] = 2
                        order.append(name)
                    continue
                if state.get(name):
                    continue
                state[name] = 1
                stack.append((name, True))
                for inp in nodes[name].get("input", []):
                    src = inp.split(":")[0].lstrip("^")
                    if src not in nodes:
                        raise KeyError(f"{self.source}: node {name!r} reads unknown node {src!r}")
                    if not state.get(src):
                        stack.append((src, False))
        return order

    def _fuse_conv_chains(self) -> None:
        """Fold each convolution's elementwise tail into it: ``conv -> Mul(c) -> Add(c) ->
        Relu/Minimum/Maximum(scalar)`` (a batch norm and a clipped ReLU, as Keras exports
        MobileNets) becomes one ``_FusedConv`` node: weights scaled per output channel, a bias,
        one clamp. Exact up to float rounding (the same products, summed in another order) and
        about 1.6x faster on CPU: the tail's passes over the activations were 40% of a MobileNet
        forward. The weights stay stored as the graph gives them (scaled at call time), so the
        state dict is the graph's. A chain is fused only through nodes with one reader that are
        not outputs; anything else is left as it is."""
        readers: dict[str, int] = {}
        by_input: dict[str, str] = {}  # node -> its (first) reader; the only one where readers == 1
        for name, node in self._nodes.items():
            for inp in node.get("input", []):
                src = inp.split(":")[0].lstrip("^")
                readers[src] = readers.get(src, 0) + 1
                by_input.setdefault(src, name)

        def const(name: str) -> Tensor | None:
            name = name.split(":")[0]
            key = _key(name)
            return self.params[key] if self._nodes.get(name, {}).get("op") == "Const" and key in self.params else None

        def const_vec(name: str, channels: int) -> str | None:
            t = const(name)
            ok = t is not None and t.numel() in (1, channels) and (t.dim() <= 1 or all(d == 1 for d in t.shape[:-1]))
            return _key(name.split(":")[0]) if ok else None

        def const_scalar(name: str) -> float | None:
            t = const(name)
            return float(t.reshape(-1)[0]) if t is not None and t.numel() == 1 else None

        removed: set[str] = set()
        renamed: dict[str, dict] = {}
        for name, node in list(self._nodes.items()):
            if node["op"] not in ("Conv2D", "DepthwiseConv2dNative") or name in removed:
                continue
            w = self.params.get(_key(node["input"][1].split(":")[0]))
            if w is None:
                continue
            channels = w.shape[0]
            fused = {"op": "_FusedConv", "input": node["input"][:2], "attr": node.get("attr", {}),
                     "conv_op": node["op"], "scale": None, "bias": None, "clamp": None}
            lo, hi, cur, chain = -math.inf, math.inf, name, []
            stage = 0  # 0: scale allowed, 1: bias allowed, 2: clamps only
            while readers.get(cur) == 1 and cur not in self.outputs and cur in by_input:
                nxt = by_input[cur]
                nd = self._nodes[nxt]
                op, ins = nd["op"], [i for i in nd.get("input", []) if not i.startswith("^")]
                other = [i for i in ins if i.split(":")[0] != cur]
                if op == "Mul" and stage == 0 and len(ins) == 2 and len(other) == 1 and const_vec(other[0], channels):
                    fused["scale"], stage = const_vec(other[0], channels), 1
                elif op in ("Add", "AddV2", "BiasAdd") and stage <= 1 and len(ins) == 2 and len(other) == 1 \
                        and const_vec(other[0], channels):
                    fused["bias"], stage = const_vec(other[0], channels), 2
                elif op in ("Relu", "Relu6") and len(ins) == 1:
                    lo, hi, stage = max(lo, 0.0), max(hi, 0.0), 2
                    if op == "Relu6":
                        lo, hi = min(lo, 6.0), min(hi, 6.0)
                elif op in ("Minimum", "Maximum") and len(ins) == 2 and len(other) == 1 \
                        and const_scalar(other[0]) is not None:
                    c = const_scalar(other[0])
                    lo, hi = (min(lo, c), min(hi, c)) if op == "Minimum" else (max(lo, c), max(hi, c))
                    stage = 2
                else:
                    break
                chain.append(cur)
                cur = nxt
            if not chain:
                continue
            if lo > -math.inf or hi < math.inf:
                fused["clamp"] = (lo, hi)
            removed.update(chain)
            fused["name"] = cur
            renamed[cur] = fused
        if removed:
            self._nodes = {n: (renamed.get(n, d)) for n, d in self._nodes.items() if n not in removed}

    # --- ops --------------------------------------------------------------------------

    @staticmethod
    def _conv(x: Tensor, w: Tensor, node: dict, groups: int, bias: Tensor | None = None) -> Tensor:
        strides = _attr(node, "strides", [1, 1, 1, 1])
        dil = _attr(node, "dilations", [1, 1, 1, 1])
        if _attr(node, "data_format", "NHWC") != "NHWC" or any(d != 1 for d in dil):
            raise NotImplementedError(f"node {node['name']!r}: only NHWC, dilation-1 convolutions are supported")
        sh, sw = strides[1], strides[2]
        kh, kw = w.shape[-2:]
        # NHWC-contiguous memory throughout (a no-op after the first layer): a 1x1 convolution
        # is then one GEMM over the pixels, and the others read a channels_last view, on which
        # oneDNN's CPU convolutions (the depthwise ones and the 3-channel stem above all) run
        # 1.2-7x faster than on NCHW memory; their channels_last output permutes back to NHWC
        # without a copy. Padding is added in NHWC, so that it copies once.
        x = x.contiguous()
        pad = _attr(node, "padding", "VALID")
        if pad == "SAME":
            top, bottom = _same_pads(x.shape[1], kh, sh)
            left, right = _same_pads(x.shape[2], kw, sw)
            if top or bottom or left or right:
                x = F.pad(x, (0, 0, left, right, top, bottom))
        elif pad != "VALID":
            raise NotImplementedError(f"node {node['name']!r}: padding {pad!r}")
        if kh == kw == 1 and sh == sw == 1 and groups == 1:
            n, h, wd, c = x.shape
            flat, w2 = x.reshape(-1, c), w.reshape(w.shape[0], c).t()
            y = torch.addmm(bias, flat, w2) if bias is not None else flat @ w2
            return y.reshape(n, h, wd, -1)
        return F.conv2d(x.permute(0, 3, 1, 2), w, bias, stride=(sh, sw), groups=groups).permute(0, 2, 3, 1)

    def _op__FusedConv(self, node, a):
        w = a[1]
        groups = a[0].shape[-1] if node["conv_op"] == "DepthwiseConv2dNative" else 1
        if node["scale"] is not None:
            w = w * self.params[node["scale"]].reshape(-1, 1, 1, 1)
        y = self._conv(a[0], w, node, groups, None if node["bias"] is None else self.params[node["bias"]].reshape(-1))
        if node["clamp"] is not None:
            lo, hi = node["clamp"]
            lo, hi = (None if lo == -math.inf else lo), (None if hi == math.inf else hi)
            y = y.clamp_(lo, hi) if not torch.is_grad_enabled() else y.clamp(lo, hi)
        return y

    def _op_Conv2D(self, node, a):
        return self._conv(a[0], a[1], node, 1)

    def _op_DepthwiseConv2dNative(self, node, a):
        return self._conv(a[0], a[1], node, a[0].shape[-1])

    def _op_MatMul(self, node, a, fused=()):
        x, w = a[0], a[1]
        if _attr(node, "transpose_a", False):
            x = x.transpose(-1, -2)
        if _attr(node, "transpose_b", False):
            w = w.transpose(-1, -2)
        y = x @ w
        for i, op in enumerate(fused):
            if op == "BiasAdd":
                y = y + a[2 + i]
            elif op == "Relu":
                y = F.relu(y)
            elif op == "Relu6":
                y = y.clamp(0.0, 6.0)
            else:
                raise NotImplementedError(f"node {node['name']!r}: fused op {op!r}")
        return y

    def _op__FusedMatMul(self, node, a):
        fused = _attr(node, "fused_ops", [])
        if fused and fused[0] != "BiasAdd":
            raise NotImplementedError(f"node {node['name']!r}: fused ops {fused}")
        return self._op_MatMul(node, a, fused)  # the bias is the only extra argument

    def _op_Softmax(self, node, a):
        return a[0].softmax(-1)

    def _op_Mean(self, node, a):
        axes = a[1] if isinstance(a[1], list) else [a[1]]
        return a[0].mean(dim=[int(v) for v in axes], keepdim=bool(_attr(node, "keep_dims", False)))

    def _op_Pad(self, node, a):
        pairs = a[1]
        flat = [int(v) for pair in reversed(pairs) for v in pair]
        return F.pad(a[0], flat)

    def _op_Reshape(self, node, a):
        return a[0].reshape([int(v) for v in a[1]])

    _OPS = {
        "Conv2D": _op_Conv2D,
        "_FusedConv": _op__FusedConv,
        "DepthwiseConv2dNative": _op_DepthwiseConv2dNative,
        "MatMul": _op_MatMul,
        "_FusedMatMul": _op__FusedMatMul,
        "Softmax": _op_Softmax,
        "Mean": _op_Mean,
        "Pad": _op_Pad,
        "Reshape": _op_Reshape,
        "Const": None,
        "Placeholder": None,
    }

    #: On CPU, batches larger than this run in slices of it: a 224-px MobileNet's activations
    #: then stay in cache (HSEFaceRes, 2 threads, idle: 14.2 ms per image at 8, 14.5 at 16,
    #: 22.1 at 64).
    #: Outputs are per image, so the result is the same; None runs every batch whole.
    cpu_micro_batch: int | None = 8

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Evaluate the graph on its NHWC input ``x``; ``{output name: tensor}``."""
        mb = self.cpu_micro_batch
        if mb and x.device.type == "cpu" and x.shape[0] > mb:
            parts = [self._evaluate(chunk) for chunk in x.split(mb)]
            return {o: torch.cat([p[o] for p in parts]) for o in self.outputs}
        return self._evaluate(x)

    def _evaluate(self, x: Tensor) -> dict[str, Tensor]:
        values: dict[str, object] = {self.input_name: x}
        for step, (name, node) in enumerate(self._nodes.items()):
            op = node["op"]
            if op == "Placeholder":
                continue
            if op == "Const":
                key = _key(name)
                values[name] = self.params[key] if key in self.params else self._ints[name]
                continue
            args = [values[i.split(":")[0]] for i in node.get("input", []) if not i.startswith("^")]
            if op in _ELEMENTWISE:
                values[name] = _ELEMENTWISE[op](args[0], args[1])
            elif op in _UNARY:
                values[name] = _UNARY[op](args[0])
            else:
                values[name] = self._OPS[op](self, node, args)
            del args
            for done in self._free_after[step]:
                values.pop(done, None)
        return {o: values[o] for o in self.outputs}
