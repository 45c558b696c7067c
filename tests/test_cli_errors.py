"""The exface CLI's one-screen errors: a part that refuses its arguments, a class of the wrong
kind, a misspelled top-level key, a damaged recipe file or .bin, a bad synthesize output_dir,
and EXFACE_DEBUG=1 for parse errors (fast: tiny parts, no model weights)."""

from __future__ import annotations

import pickle

import pytest
import yaml
from lightning.pytorch import LightningModule

from exface.cli import _unknown_option, error_report, main
from exface.errors import ExfaceError, ExfaceFileError

BORING_DATA = {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"}
BORING = {
    "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
    "data": BORING_DATA,
    "trainer": {"max_epochs": 1, "fast_dev_run": True, "logger": False, "enable_progress_bar": False},
}
TINY_PARTS = {"generator": {"class_path": "TinyGenerator"}, "embedder": {"class_path": "TinyEmbedder"}}


class RefusingModule(LightningModule):
    """A model whose constructor refuses its file the way exface's parts do."""

    def __init__(self, weights: str = "w.pt") -> None:
        super().__init__()
        raise ExfaceFileError("the weights file is truncated", where=weights, fix="download the weights again")


def _write(tmp_path, cfg, name="recipe.yaml"):
    path = tmp_path / name
    if isinstance(cfg, bytes):
        path.write_bytes(cfg)
    else:
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return str(path)


def _error(args, capsys, code=None, max_lines=6) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code not in (0, None)
    if code is not None:
        assert exc.value.code == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= max_lines, f"error longer than {max_lines} lines:\n{err}"
    assert "Traceback" not in err
    return err


def _tiny_data(tmp_path, **over):
    import exface.testing.tiny  # noqa: F401 - registers TinyGenerator / TinyEmbedder

    init = {**TINY_PARTS, "aligner": {"class_path": "ResizeAligner"}, "bank_dir": str(tmp_path / "bank")}
    init.update(over)
    return {"class_path": "IdentityBankDataModule", "init_args": init}


# ---- 1: a part's constructor refusing a value names the part, its key and the real reason


def test_model_constructor_error_names_the_part_and_drops_union_noise(tmp_path, capsys):
    cfg = {**BORING, "model": {"class_path": "BoundaryFitModule", "init_args": {"optimizer": "lbfgsx"}}}
    err = _error(["fit", "--config", _write(tmp_path, cfg)], capsys, code=1)
    assert "optimizer must be \"lbfgs\" or \"adam\", got 'lbfgsx'" in err
    assert "in: model (class_path: BoundaryFitModule)" in err and "fix:" in err
    for noise in ("Union subtypes", "Subtypes:", "Given value", "Namespace(", "NoneType"):
        assert noise not in err


def test_nested_part_error_names_its_full_key(tmp_path, capsys):
    aligner = {"class_path": "FixedCropAligner", "init_args": {"box": [0.9, 0.2, 0.1, 1.0]}}
    cfg = {**BORING, "model": {"class_path": "BoundaryFitModule"}, "data": _tiny_data(tmp_path, aligner=aligner)}
    err = _error(["fit", "--config", _write(tmp_path, cfg)], capsys, code=1)
    assert "box must be relative" in err
    assert "data.init_args.aligner (class_path: FixedCropAligner)" in err
    assert "Given value" not in err and "Subtypes" not in err
    assert not (tmp_path / "bank").exists()


def test_exface_error_of_a_part_keeps_its_where_and_fix(tmp_path, capsys):
    cfg = {**BORING, "model": {"class_path": f"{__name__}.RefusingModule", "init_args": {"weights": "/x/w.pt"}}}
    err = _error(["fit", "--config", _write(tmp_path, cfg)], capsys, code=1)
    lines = err.splitlines()
    assert lines[0] == "exface: error: the weights file is truncated"
    assert "  in: /x/w.pt" in lines and "  fix: download the weights again" in lines
    assert "while building model (class_path: RefusingModule)" in err and "Given value" not in err


def test_error_report_of_a_plain_error_is_unchanged():
    try:
        raise RuntimeError("boom")
    except RuntimeError as err:
        report = error_report(err)
    assert report.splitlines()[0] == "exface: error: RuntimeError: boom" and "EXFACE_DEBUG=1" in report


# ---- 2: a real class of the wrong kind


def test_class_of_the_wrong_kind_says_what_it_is(tmp_path, capsys):
    cfg = {**BORING, "model": {"class_path": "BoundaryFitModule"},
           "data": _tiny_data(tmp_path, embedder={"class_path": "DCGANDigiFace"})}
    err = _error(["fit", "--config", _write(tmp_path, cfg)], capsys, code=2)
    assert "'DCGANDigiFace' is a generator; 'embedder' takes an embedder" in err
    assert "did you mean DCGANDigiFace" not in err and "unknown class" not in err
    assert "FaceApiResNet34" in err and "exface plugins --kind embedders" in err


def test_wrong_kind_under_a_command_and_for_the_model(tmp_path, capsys):
    cfg = {"bank": "b", "boundaries": "b.pt", "output_dir": "o",
           "embedder": {"class_path": "exface.generators.DCGANDigiFace"}}
    err = _error(["synthesize", "--config", _write(tmp_path, cfg)], capsys, code=2)
    assert "'DCGANDigiFace' is a generator; 'embedder' takes an embedder" in err
    cfg = {**BORING, "model": {"class_path": "FaceApiResNet34"}}
    err = _error(["fit", "--config", _write(tmp_path, cfg)], capsys, code=2)
    assert "'FaceApiResNet34' is an embedder; 'model' takes a LightningModule" in err


def test_misspelled_class_suggests_its_kind_only(tmp_path, capsys):
    cfg = {**BORING, "model": {"class_path": "BoundaryFitModule"},
           "data": _tiny_data(tmp_path, embedder={"class_path": "FaceApiResNet43"})}
    err = _error(["fit", "--config", _write(tmp_path, cfg)], capsys, code=2)
    assert "unknown class 'FaceApiResNet43'" in err and "FaceApiResNet34" in err
    assert "FaceApiExpression" not in err and "FaceApiAgeGender" not in err  # attribute predictors


# ---- 3: a misspelled top-level key


def test_misspelled_top_level_key_reports_the_first_unknown_segment(tmp_path, capsys):
    trainer = {**BORING["trainer"], "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": str(tmp_path)}}}
    cfg = {"model": BORING["model"], "data": BORING_DATA, "trainerr": trainer}
    err = _error(["fit", "--config", _write(tmp_path, cfg)], capsys, code=2)
    assert "unknown option 'trainerr'; did you mean trainer?" in err
    assert ".help" not in err and "save_dir" not in err


def test_unknown_option_never_suggests_help_dests():
    keys = ["trainer.logger", "trainer.logger.help", "trainer.max_epochs", "model", "model.help", "data"]
    got = _unknown_option("trainerr.logger.init_args.save_dir", keys)
    assert got == "unknown option 'trainerr'; did you mean trainer?"
    assert _unknown_option("trainer.loger", keys) == "unknown option 'trainer.loger'; did you mean trainer.logger?"
    assert "help" not in _unknown_option("modell.help", keys)
    assert _unknown_option("zzz", keys) == "unknown option 'zzz'"


# ---- 4: a recipe that is not YAML, or not text


def test_yaml_syntax_error_names_the_config_file(tmp_path, capsys):
    path = _write(tmp_path, "model:\n  class_path: BoringModel\n  init_args: {a: [1, 2}\n", "broken.yaml")
    err = _error(["fit", "--config", path], capsys, code=2)
    assert "<unicode string>" not in err
    assert f"in: {path}, line 3" in err and "not valid YAML" in err and "fix:" in err


def test_yaml_syntax_error_under_an_exface_command(tmp_path, capsys):
    path = _write(tmp_path, "bank: [1\n", "s.yaml")
    err = _error(["synthesize", "--config", path], capsys, code=2)
    assert f"in: {path}" in err and "<unicode string>" not in err


def test_binary_config_is_named_not_a_unicode_error(tmp_path, capsys):
    path = _write(tmp_path, b"\x80\x84\x00\x01garbage\xff" * 10, "weights.bin")
    err = _error(["fit", "--config", path], capsys, code=2)
    assert "not a YAML/JSON text file" in err and f"in: {path}" in err
    assert "UnicodeDecodeError" not in err


# ---- 5: a truncated or garbage verification .bin


def _jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_bin_is_a_file_error_with_a_fix(tmp_path, damage):
    from exface.evaluation.datasets import load_insightface_bin

    data = pickle.dumps(([_jpeg()] * 4, [True, False]), protocol=2)
    path = tmp_path / "lfw.bin"
    path.write_bytes({"truncated": data[:-3], "garbage": b"\x04\x93garbage" * 20, "empty": b""}[damage])
    with pytest.raises(ExfaceFileError) as err:
        load_insightface_bin(path)
    assert err.value.where == str(path) and "download or copy the .bin again" in err.value.fix
    report = error_report(err.value)
    assert f"in: {path}" in report and "fix: download or copy the .bin again" in report


def test_bin_with_an_odd_image_count_has_a_fix(tmp_path):
    from exface.evaluation.datasets import load_insightface_bin

    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(([_jpeg()] * 3, [True, False]), protocol=2))
    with pytest.raises(ExfaceFileError, match="3 images for 2 pairs") as err:
        load_insightface_bin(path)
    assert err.value.where == str(path) and err.value.fix


def test_refused_bin_is_still_an_unpickling_error_with_a_fix(tmp_path):
    from exface.evaluation.datasets import load_insightface_bin

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps((print, [True]), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*print") as err:
        load_insightface_bin(path)
    assert isinstance(err.value, ExfaceFileError) and err.value.where == str(path) and err.value.fix


# ---- 6-7: synthesize into a file, or into the bank folder


@pytest.fixture()
def tiny_bank(tmp_path):
    from tests.test_synthesis import make_tiny_bank

    make_tiny_bank(tmp_path)
    return tmp_path


def _synth(root, out):
    return ["synthesize", "--bank", str(root / "bank"), "--boundaries", str(root / "boundaries.pt"),
            "--output_dir", str(out), "--images_per_identity", "2", "--report", "false", "--accelerator", "cpu"]


def test_synthesize_into_an_existing_file_is_refused(tiny_bank, capsys):
    out = tiny_bank / "afile"
    out.write_text("keep me")
    err = _error(_synth(tiny_bank, out), capsys, code=1)
    assert "output_dir is an existing file" in err and f"in: {out}" in err and "fix:" in err
    assert "FileExistsError" not in err and out.read_text() == "keep me"


def test_synthesize_into_the_bank_is_refused_and_leaves_no_lock(tiny_bank, capsys):
    bank = tiny_bank / "bank"
    before = {p.name: p.read_bytes() for p in bank.iterdir()}
    err = _error(_synth(tiny_bank, bank), capsys, code=1)
    assert "not empty" in err and f"in: {bank}" in err
    assert {p.name: p.read_bytes() for p in bank.iterdir()} == before  # no .lock, nothing changed


# ---- 8: the real error is kept for EXFACE_DEBUG=1; parse errors show the traceback on request


def test_file_errors_keep_their_cause(tmp_path):
    from exface.exfacegan.synthesis import load_boundaries

    path = tmp_path / "b.pt"
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ExfaceFileError, match="cannot read the boundaries file") as err:
        load_boundaries(path)
    assert err.value.__cause__ is not None  # `from err`: EXFACE_DEBUG=1 shows what torch.load said


def test_exface_debug_shows_the_traceback_of_a_parse_error(tmp_path, capsys, monkeypatch):
    cfg = {**BORING, "trainer": {"max_epoch": 1}}
    recipe = _write(tmp_path, cfg)
    err = _error(["fit", "--config", recipe], capsys, code=2, max_lines=3)
    assert "EXFACE_DEBUG=1" in err
    monkeypatch.setenv("EXFACE_DEBUG", "1")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", recipe])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "unknown option 'trainer.max_epoch'" in err


def test_exface_debug_shows_the_traceback_of_a_binary_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXFACE_DEBUG", "1")
    with pytest.raises(SystemExit):
        main(["fit", "--config", _write(tmp_path, b"\xff\xfe\x00\x00", "x.bin")])
    err = capsys.readouterr().err
    assert "Traceback" in err and "not a YAML/JSON text file" in err
