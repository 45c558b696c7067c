"""Readers of verification pair sets: insightface ``.bin`` (safely) and LFW ``pairs.txt``."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from exface.evaluation.datasets import VerificationSet, load_insightface_bin, load_lfw_pairs, load_verification_set


def _jpeg(seed: int, size: int = 112) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# --------------------------------------------------------------------------- insightface .bin


def test_small_lfw_bin(shared_data):
    path = shared_data / "insightface-bin" / "small_lfw.bin"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    vs = load_insightface_bin(path)
    assert isinstance(vs, VerificationSet)
    assert vs.name == "small_lfw" and len(vs) == 10 and vs.num_images == 20
    assert vs.images.shape == (20, 112, 112, 3) and vs.images.dtype == np.uint8
    assert vs.issame.dtype == bool and vs.issame.all()  # this file holds matched pairs only
    np.testing.assert_array_equal(vs.pairs, np.arange(20).reshape(10, 2))
    assert vs.aligned and vs.folds is None and vs.paths is None
    assert 40 < vs.images.mean() < 200  # real faces, not blank decodes
    # RGB, not OpenCV's BGR: the file's first face decoded with PIL must match.
    from PIL import Image

    with path.open("rb") as f:
        bins, _ = pickle.load(f, encoding="bytes")
    first = np.asarray(Image.open(io.BytesIO(bytes(bins[0]))).convert("RGB")).astype(int)
    assert np.abs(first - vs.image(0).astype(int)).mean() < 2.0
    # load_verification_set dispatches on the suffix.
    assert len(load_verification_set(path)) == 10


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_bin_roundtrip_all_protocols(tmp_path, protocol, as_numpy):
    images = [_jpeg(i) for i in range(6)]
    if as_numpy:
        bins = [np.frombuffer(b, dtype=np.uint8) for b in images]
        issame = [np.bool_(True), np.bool_(False), np.bool_(True)]
    else:
        bins, issame = images, [True, False, True]
    path = tmp_path / "set.bin"
    path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    vs = load_insightface_bin(path)
    np.testing.assert_array_equal(vs.issame, [True, False, True])
    assert vs.images.shape == (6, 112, 112, 3)


def test_bin_resizes_to_image_size(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(pickle.dumps(([_jpeg(0, 128), _jpeg(1, 128)], [True]), protocol=2))
    assert load_insightface_bin(path).images.shape == (2, 112, 112, 3)
    assert load_insightface_bin(path, image_size=(128, 128)).images.shape == (2, 128, 128, 3)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalExploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("exploit", [_Exploit, _EvalExploit])
@pytest.mark.parametrize("where", ["top", "in_bins", "in_labels"])
def test_malicious_bin_is_refused_and_nothing_runs(tmp_path, exploit, where):
    marker = tmp_path / "pwned"
    payload = exploit(marker)
    good = [_jpeg(0), _jpeg(1)]
    obj = {
        "top": payload,
        "in_bins": ([good[0], payload], [True]),
        "in_labels": (good, [payload]),
    }[where]
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*(system|eval)"):
        load_insightface_bin(path)
    assert not marker.exists(), "the pickle's payload ran"


def test_numpy_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.bin"
    arr = np.array([b"x", 1], dtype=object)
    path.write_bytes(pickle.dumps(([arr, arr], [True]), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="uint8/bool|refusing"):
        load_insightface_bin(path)


def test_damaged_bins_are_clear_errors(tmp_path):
    path = tmp_path / "cut.bin"
    data = pickle.dumps(([_jpeg(0), _jpeg(1)], [True]), protocol=2)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable insightface .bin"):
        load_insightface_bin(path)
    path.write_bytes(pickle.dumps(([_jpeg(0), _jpeg(1), _jpeg(2)], [True]), protocol=2))
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        load_insightface_bin(path)
    path.write_bytes(pickle.dumps(([b"not a jpeg", _jpeg(1)], [True]), protocol=2))
    with pytest.raises(FileNotFoundError, match=r"image 0 \(pair 0\) is not a decodable image"):
        load_insightface_bin(path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ValueError, match=r"\(bins, issame_list\)"):
        load_insightface_bin(path)
    with pytest.raises(FileNotFoundError, match=".bin"):
        load_insightface_bin(tmp_path / "nope.bin")


@pytest.mark.parametrize("labels, index, bad", [
    (["False", 7], 0, "'False'"),  # bool() would read both as True
    ([True, 7], 1, "7"),
    ([True, 1.0], 1, "1.0"),
    ([True, None], 1, "None"),
    ([True, b"\x00"], 1, "b'\\x00'"),
])
def test_bin_issame_accepts_only_bools_and_0_1(tmp_path, labels, index, bad):
    from exface.errors import ExfaceError

    path = tmp_path / "labels.bin"
    path.write_bytes(pickle.dumps(([_jpeg(i) for i in range(4)], labels), protocol=2))
    with pytest.raises(ExfaceError) as err:
        load_insightface_bin(path)
    assert f"issame label {index} " in err.value.problem and bad in err.value.problem
    assert err.value.where == str(path) and err.value.fix


def test_bin_issame_integers_0_1_and_bool_arrays_are_labels(tmp_path):
    from exface.errors import ExfaceError

    images = [_jpeg(i) for i in range(6)]
    path = tmp_path / "ints.bin"
    for labels in ([1, 0, True], (np.True_, 0, 1), np.array([True, False, True]), np.array([1, 0, 1], np.uint8)):
        path.write_bytes(pickle.dumps((images, labels), protocol=2))
        np.testing.assert_array_equal(load_insightface_bin(path).issame, [True, False, True])
    path.write_bytes(pickle.dumps((images[:2], b"\x01"), protocol=2))  # bytes iterate as ints; not a list
    with pytest.raises(ExfaceError, match="issame list of the .bin is a bytes"):
        load_insightface_bin(path)


# --------------------------------------------------------------------------- LFW pairs.txt


def test_lfw_fold1_pairs(shared_data):
    pairs_txt = shared_data / "lfw-fold1" / "pairs.txt"
    if not pairs_txt.is_file():
        pytest.skip(f"{pairs_txt} not found")
    vs = load_lfw_pairs(pairs_txt)
    assert len(vs) == 600 and vs.issame[:300].all() and not vs.issame[300:].any()
    assert vs.num_images == 807 and vs.images is None and not vs.aligned
    np.testing.assert_array_equal(vs.folds, np.zeros(600))
    assert vs.extra["official_folds"] == 1
    assert Path(vs.extra["image_root"]).name == "lfw-deepfunneled"
    # The first matched line names one person twice; check it against the file itself.
    name, n1, n2 = pairs_txt.read_text().splitlines()[1].split()
    a, b = vs.pairs[0]
    assert vs.paths[a].name == f"{name}_{int(n1):04d}.jpg" and vs.paths[b].name == f"{name}_{int(n2):04d}.jpg"
    first_mismatch = pairs_txt.read_text().splitlines()[301].split()
    a, b = vs.pairs[300]
    assert vs.paths[a].parent.name == first_mismatch[0] and vs.paths[b].parent.name == first_mismatch[2]
    img = vs.image(int(a))
    assert img.shape == (250, 250, 3) and img.dtype == np.uint8
    # The folder form resolves pairs.txt inside it.
    assert len(load_verification_set(pairs_txt.parent)) == 600


def _fake_lfw(root: Path, people: dict[str, int]) -> Path:
    from PIL import Image

    for name, n in people.items():
        (root / "lfw" / name).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.new("RGB", (8, 8)).save(root / "lfw" / name / f"{name}_{i:04d}.jpg")
    return root


def test_lfw_pairs_two_folds_and_errors(tmp_path):
    root = _fake_lfw(tmp_path, {"Ann_A": 3, "Bob_B": 2})
    txt = root / "pairs.txt"
    txt.write_text("2\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\nBob_B\t1\t2\nAnn_A\t3\tBob_B\t2\n")
    vs = load_lfw_pairs(txt)
    np.testing.assert_array_equal(vs.folds, [0, 0, 1, 1])
    np.testing.assert_array_equal(vs.issame, [True, False, True, False])
    assert vs.num_images == 5  # Ann 1, 2, 3 and Bob 1, 2, each once
    assert vs.pairs[1, 0] == vs.pairs[0, 0]

    txt.write_text("2\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t1\n")
    with pytest.raises(ValueError, match="promises 2 folds x 2 x 1 pairs = 4 lines but the file has 2"):
        load_lfw_pairs(txt)
    txt.write_text("1\t1\nAnn_A\t1\tBob_B\t1\nAnn_A\t1\t2\n")
    with pytest.raises(ValueError, match="line 2: expected a matched 'Name n1 n2' line"):
        load_lfw_pairs(txt)
    txt.write_text("Ann_A 1 2\n")
    with pytest.raises(ValueError, match="first line"):
        load_lfw_pairs(txt)
    txt.write_text("1 1\nAnn_A 1 x\nAnn_A 1 Bob_B 1\n")
    with pytest.raises(ValueError, match="'x' is not a number"):
        load_lfw_pairs(txt)
    txt.write_text("1 1\nAnn_A 1 9\nAnn_A 1 Bob_B 1\n")
    with pytest.raises(FileNotFoundError, match="1 of the 3 images .* missing.*Ann_A_0009.jpg"):
        load_lfw_pairs(txt)
    txt.write_text("1 1\nCid_C 1 2\nAnn_A 1 Bob_B 1\n")
    with pytest.raises(FileNotFoundError, match="no folder 'Cid_C'"):
        load_lfw_pairs(txt)
    with pytest.raises(FileNotFoundError, match="pairs.txt"):
        load_lfw_pairs(tmp_path / "missing.txt")
