"""Issue 9, points 10-11: expected failures fit on one screen, name the part/file and exit non-zero."""

from __future__ import annotations

import pytest
import yaml

from exface.cli import main
from exface.errors import ExfaceError, ExfaceFileError, format_error


def _run_error(args, capsys, max_lines: int = 24) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= max_lines, f"error longer than a screen:\n{err}"
    assert "Traceback" not in err
    return err


def _synth_cfg(tmp_path, **over) -> str:
    cfg = {
        "bank": str(tmp_path / "bank"), "boundaries": str(tmp_path / "b.pt"),
        "generator": {"class_path": "StyleGAN2", "init_args": {"pkl": str(tmp_path / "missing.pkl")}},
        "aligner": {"class_path": "ResizeAligner"}, "embedder": {"class_path": "FaceApiResNet34"},
        "output_dir": str(tmp_path / "ds"),
    }
    cfg.update(over)
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_part_constructor_failure_is_one_screen(tmp_path, capsys):
    err = _run_error(["synthesize", "--config", _synth_cfg(tmp_path)], capsys, max_lines=8)
    assert "missing.pkl" in err and "StyleGAN2" in err and "EXFACE_DEBUG=1" in err


def test_exface_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("EXFACE_DEBUG", "1")
    with pytest.raises(Exception, match="missing.pkl"):  # the exception itself propagates, with its traceback
        main(["synthesize", "--config", _synth_cfg(tmp_path)])


def test_unknown_short_class_name_suggests(tmp_path, capsys):
    cfg = _synth_cfg(tmp_path, embedder={"class_path": "FaceApiResnet34"})
    err = _run_error(["synthesize", "--config", cfg], capsys, max_lines=4)
    assert "did you mean FaceApiResNet34" in err


def test_exface_error_format():
    e = ExfaceFileError("chunk 3 is truncated", where="bank/chunk_00003.pt", fix="re-run")
    assert isinstance(e, ValueError) and isinstance(e, FileNotFoundError) and isinstance(e, ExfaceError)
    assert format_error(e).splitlines() == ["chunk 3 is truncated", "  in: bank/chunk_00003.pt", "  fix: re-run"]
    import pickle

    assert str(pickle.loads(pickle.dumps(e))) == str(e)


# ---- point 9: the restricted unpickler hands out nothing a file can modify


@pytest.mark.parametrize("target, state", [
    ("torch\nFloatStorage", b"}X\x05\x00\x00\x00dtypectorch\nint32\ns"),  # the FloatStorage -> int32 file
    ("torch._utils\n_rebuild_tensor_v2", b"(N}X\x0c\x00\x00\x00__defaults__(I1\ntst"),
    ("torch\nTensor", b"(N}X\x03\x00\x00\x00fooI1\nst"),
])
def test_build_on_allowed_globals_is_refused(target, state):
    import torch

    from exface.models.nvidia_pickle import _SAFE_GLOBALS, UnsafePickleError, safe_load

    data = b"c" + target.encode() + b"\n" + state + b"b."
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        safe_load(data)
    assert _SAFE_GLOBALS[("torch", "FloatStorage")].dtype == torch.float32


def test_legit_stylegan_load_after_hostile_attempt(tmp_path):
    import torch

    from exface.generators.stylegan import StyleGAN2
    from exface.models.nvidia_pickle import UnsafePickleError, safe_load
    from exface.testing import make_stylegan2_pickle

    pkl = make_stylegan2_pickle(tmp_path / "g.pkl", resolution=16, z_dim=8, w_dim=8)
    before = StyleGAN2(str(pkl)).w_avg.clone()
    with pytest.raises(UnsafePickleError):
        safe_load(b"ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypectorch\nint32\nsb.")
    assert torch.equal(StyleGAN2(str(pkl)).w_avg, before) and before.abs().max() < 100


def test_pth_referencing_exec_is_reported_as_malicious(tmp_path):
    import torch

    from exface.models.checkpoint_io import load_torch_file
    from exface.models.nvidia_pickle import UnsafePickleError

    class _Exec:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran')",))

    path = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Exec()}, path)
    with pytest.raises(UnsafePickleError, match="builtins.exec.*malicious"):
        load_torch_file(path)


# ---- points 12-13: damaged inputs are named; an unwritable benchmark folder is refused before any work


def test_truncated_bin_and_image_are_named(tmp_path):
    import pickle

    import numpy as np
    from PIL import Image

    from exface.evaluation.datasets import _read_rgb, load_insightface_bin

    buf = __import__("io").BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    data = pickle.dumps(([buf.getvalue()] * 2, [True]), protocol=2)
    path = tmp_path / "lfw.bin"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="lfw.bin"):
        load_insightface_bin(path)
    jpg = tmp_path / "face.jpg"
    jpg.write_bytes(buf.getvalue()[:40])
    with pytest.raises(ExfaceFileError, match="face.jpg"):
        _read_rgb(jpg)


def test_bit_flipped_jpeg_inside_a_bin_is_named(tmp_path):
    """Point 12: a flipped bit that libjpeg reports (corrupt entropy data) names the file and image;
    OpenCV alone decodes the same bytes to damaged pixels without a word."""
    import pickle

    import cv2
    import numpy as np

    from exface.evaluation.datasets import load_insightface_bin

    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur((rng.random((112, 112, 3)) * 255).astype(np.uint8), (7, 7), 3)
    good = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    path = tmp_path / "agedb_30.bin"
    import simplejpeg

    def reported(data: bytes) -> bool:
        try:
            simplejpeg.decode_jpeg(data, strict=True)
        except ValueError:
            return True
        return False

    for pos in range(len(good) // 2, len(good) - 2):  # the first flip in the scan data that libjpeg reports
        bad = bytearray(good)
        bad[pos] ^= 0x08
        if reported(bytes(bad)):
            break
    else:
        pytest.fail("no reported flip found")
    assert cv2.imdecode(np.frombuffer(bytes(bad), np.uint8), cv2.IMREAD_COLOR) is not None  # what ran silently
    path.write_bytes(pickle.dumps(([good, good, good, bytes(bad)], [True, False]), protocol=2))
    with pytest.raises(ExfaceFileError, match=r"image 3 \(pair 1\) is a damaged JPEG") as exc:
        load_insightface_bin(path)
    assert "agedb_30.bin" in str(exc.value)
    path.write_bytes(pickle.dumps(([good] * 4, [True, False]), protocol=2))
    assert load_insightface_bin(path).images.shape == (4, 112, 112, 3)


def test_benchmark_refuses_an_unwritable_folder_before_embedding(tmp_path, monkeypatch):
    from exface.evaluation import benchmark as bm

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    called = []
    monkeypatch.setattr(bm, "score_set", lambda *a, **k: called.append(1))
    monkeypatch.setattr(bm, "load_verification_set", lambda *a, **k: None)
    with pytest.raises(ExfaceFileError, match="cannot write into the output_dir"):
        bm.run_benchmark(["x.bin"], embedder=None, output_dir=blocker / "out")
    assert not called
