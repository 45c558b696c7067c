"""The exface CLI: help, plugins, short errors for bad recipes, print_config round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exface.cli import main

BORING = {
    "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel"},
    "data": {"class_path": "lightning.pytorch.demos.boring_classes.BoringDataModule"},
    "trainer": {"max_epochs": 1, "fast_dev_run": True, "logger": False, "enable_progress_bar": False},
}


def _write(tmp_path: Path, cfg: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 24, f"error longer than a screen:\n{err}"
    return err


def test_help_lists_lightning_and_exface_subcommands():
    out = subprocess.run([sys.executable, "-m", "exface.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for sub in ("fit", "validate", "test", "predict", "plugins", "zoo"):
        assert sub in out.stdout


def test_plugins_lists_parts_by_kind(capsys):
    main(["plugins"])
    out = capsys.readouterr().out
    assert "embedders:" in out and "FaceApiResNet34" in out


def test_plugins_wildcard(capsys):
    main(["plugins", "--pattern", "*faceapi*"])
    out = capsys.readouterr().out
    assert "FaceApiResNet34" in out and "generators:" not in out


def test_fit_runs_a_recipe(tmp_path):
    main(["fit", "--config", str(_write(tmp_path, BORING))])


def test_unknown_class_is_short_and_suggests(tmp_path, capsys):
    cfg = {**BORING, "model": {"class_path": "lightning.pytorch.demos.boring_classes.BoringModle"}}
    err = _run_error(["fit", "--config", str(_write(tmp_path, cfg))], capsys)
    assert "unknown class 'BoringModle'" in err and "did you mean BoringModel" in err


def test_unknown_short_class_name(tmp_path, capsys):
    cfg = {**BORING, "model": {"class_path": "NoSuchModule"}}
    err = _run_error(["fit", "--config", str(_write(tmp_path, cfg))], capsys)
    assert "NoSuchModule" in err


def test_misspelled_key_names_it_and_the_nearest(tmp_path, capsys):
    cfg = {**BORING, "trainer": {"max_epoch": 1}}
    err = _run_error(["fit", "--config", str(_write(tmp_path, cfg))], capsys)
    assert "unknown option 'trainer.max_epoch'" in err and "trainer.max_epochs" in err


def test_wrong_type_names_key_and_expected_type(tmp_path, capsys):
    cfg = {**BORING, "trainer": {"max_epochs": "lots"}}
    err = _run_error(["fit", "--config", str(_write(tmp_path, cfg))], capsys)
    assert "trainer.max_epochs" in err and "int" in err and "Subtypes" not in err


def test_print_config_output_is_accepted_back(tmp_path, capsys):
    recipe = _write(tmp_path, BORING)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    main(["fit", "--config", str(again)])


def test_exface_subcommand_accepts_config(tmp_path, capsys):
    cfg = tmp_path / "zoo.yaml"
    cfg.write_text("pattern: 'dcgan*'\n")
    main(["zoo", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert "dcgan-digiface" in out and "faceapi" not in out
