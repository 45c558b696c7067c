"""FaceApiResNet (face-api's TF.js weights) against dlib's own face-recognition ResNet.

face-api's ``face_recognition_model`` is dlib's ``dlib_face_recognition_resnet_model_v1``
with uint8-quantized weights, so on the same 150x150 chips the two descriptors agree up to
quantization noise (cosine ~0.9997), never exactly. dlib runs from the ``dlib-bin`` and
``face-recognition-models`` packages; the chips are dlib's own ``get_face_chip`` crops of
LFW fold-1 faces, so alignment plays no part in the comparison.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from exface.models.faceapi_resnet import FaceApiResNet, load_faceapi_resnet

NUM_FACES = 24
#: A fixed face box (pixels, inclusive) on LFW's 250x250 deep-funneled images, used when
#: dlib's HOG detector finds no face: the 5-point predictor still needs a rectangle.
LFW_BOX = (73, 70, 171, 188)


def _dlib_models() -> Path:
    """The face-recognition-models data folder, found without importing the package (its
    ``__init__`` imports ``pkg_resources``, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face-recognition-models is not installed (pip install face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@pytest.fixture(scope="module")
def manifest() -> Path:
    from exface.zoo import fetch

    return fetch("faceapi-face-recognition")


@pytest.fixture(scope="module")
def dlib_chips(shared_data):
    """``(chips [N, 150, 150, 3] uint8, dlib descriptors [N, 128])`` for N LFW fold-1 faces."""
    dlib = pytest.importorskip("dlib", reason="dlib parity needs dlib (pip install dlib-bin)")
    from PIL import Image

    models = _dlib_models()
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    detector = dlib.get_frontal_face_detector()
    files = sorted((shared_data / "lfw-fold1" / "lfw-deepfunneled").glob("*/*.jpg"))
    if len(files) < NUM_FACES:
        pytest.skip(f"expected LFW fold-1 images under {shared_data / 'lfw-fold1'}")
    step = len(files) // NUM_FACES  # spread over many people
    chips, refs = [], []
    for path in files[::step][:NUM_FACES]:
        with Image.open(path) as im:
            img = np.ascontiguousarray(np.asarray(im.convert("RGB")))
        dets = detector(img, 0)
        rect = max(dets, key=lambda r: r.area()) if len(dets) else dlib.rectangle(*LFW_BOX)
        chip = dlib.get_face_chip(img, predictor(img, rect), size=150, padding=0.25)
        chips.append(chip)
        refs.append(np.asarray(rec.compute_face_descriptor(chip), dtype=np.float64))
    return np.stack(chips), np.stack(refs)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_descriptor_matches_dlib(dlib_chips, manifest):
    from exface.embedders import FaceApiResNet34

    chips, ref = dlib_chips
    emb = FaceApiResNet34(manifest)
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        raw = emb.embed_raw(emb.preprocess(x)).double().numpy()
        unit = emb(x).double().numpy()

    cos = _cosine(raw, ref)
    diff = np.abs(raw - ref)
    print(
        f"\nFaceApiResNet34 vs dlib on {len(chips)} LFW chips: cosine mean {cos.mean():.6f}, "
        f"min {cos.min():.6f}; raw max |diff| {diff.max():.4f} (descriptor norms ~{np.linalg.norm(ref, axis=1).mean():.2f})"
    )
    assert cos.mean() >= 0.999, f"mean cosine to dlib {cos.mean():.6f} < 0.999"
    assert cos.min() >= 0.998, f"worst face cosine to dlib {cos.min():.6f}"
    # The raw descriptor has dlib's scale (not normalized): dlib's 0.6 distance threshold applies.
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), np.linalg.norm(ref, axis=1), rtol=0.01)
    # forward() is the L2-normalized raw descriptor.
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    ref_unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(unit - ref_unit).max() < 0.02
    assert (unit * ref_unit).sum(1).mean() >= 0.999

    # Same-person decisions agree with dlib's on these faces: the pairwise distance matrices match.
    d_ours = np.linalg.norm(raw[:, None] - raw[None], axis=2)
    d_dlib = np.linalg.norm(ref[:, None] - ref[None], axis=2)
    assert np.abs(d_ours - d_dlib).max() < 0.03


def test_architecture_shapes_and_odd_sizes():
    net = FaceApiResNet().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 150, 150)).shape == (2, 128)
        # Odd intermediate sizes exercise the down blocks' zero-padded shortcut.
        assert net(torch.randn(1, 3, 151, 137)).shape == (1, 128)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        net(torch.randn(3, 150, 150))


def test_embedder_gradients_reach_the_input_only(manifest):
    from exface.embedders import FaceApiResNet34

    emb = FaceApiResNet34(manifest)
    assert not any(p.requires_grad for p in emb.parameters())
    x = torch.zeros(1, 3, 150, 150, requires_grad=True)
    emb(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="Aligner"):
        emb(torch.zeros(1, 3, 112, 112))


def _copy_model(manifest: Path, dst: Path) -> Path:
    dst.mkdir()
    for entry in json.loads(manifest.read_text()):
        for p in entry["paths"]:
            shutil.copy(manifest.parent / p, dst / p)
    shutil.copy(manifest, dst / manifest.name)
    return dst / manifest.name


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="face_recognition_model-weights_manifest.json"):
        load_faceapi_resnet(tmp_path / "nope.json")


def test_truncated_manifest_is_a_clear_error(manifest, tmp_path):
    bad = _copy_model(manifest, tmp_path / "m")
    text = bad.read_text()
    bad.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not a readable TF.js weights manifest.*truncated"):
        load_faceapi_resnet(bad)


def test_truncated_shard_is_a_clear_error(manifest, tmp_path):
    bad = _copy_model(manifest, tmp_path / "m")
    shard = bad.parent / json.loads(bad.read_text())[0]["paths"][0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="truncated"):
        load_faceapi_resnet(bad)


def test_manifest_missing_a_weight_names_it(manifest, tmp_path):
    bad = _copy_model(manifest, tmp_path / "m")
    groups = json.loads(bad.read_text())
    last = groups[-1]["weights"].pop()  # the fc layer: drop it and its bytes
    assert last["name"] == "fc"
    shard = bad.parent / groups[-1]["paths"][-1]
    nbytes = int(np.prod(last["shape"])) * (1 if last.get("quantization") else 4)
    shard.write_bytes(shard.read_bytes()[:-nbytes])
    bad.write_text(json.dumps(groups))
    with pytest.raises(ValueError, match=r"missing \['fc'\]"):
        load_faceapi_resnet(bad)


def test_another_models_manifest_is_refused(tmp_path):
    from exface.zoo import fetch

    other = fetch("faceapi-face-landmark-68")
    with pytest.raises(ValueError, match="face_recognition_model"):
        load_faceapi_resnet(other)
