"""InterFaceGAN outputs follow the report-folder rule, and per-layer boundaries never edit a silently
chosen layer: ``exface edit`` and ``exface edit-report`` write through ReportDir (another run's folder
refused before the work, the same run regenerated in place without stale files), and a per-layer w+
boundary file without a layer is refused by ``edit``, ``edit-report`` and ``BoundaryEditor``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from exface.alignment.crops import ResizeAligner
from exface.boundaries.base import Boundaries
from exface.errors import ExfaceError, ExfaceStateError, format_error
from exface.interfacegan.directions import select_direction
from exface.interfacegan.edit import edit
from exface.interfacegan.manipulation import BoundaryEditor, linear_interpolate
from exface.interfacegan.report import edit_report
from exface.report_dir import RECORD
from exface.testing.tiny import TinyEmbedder, TinyGenerator
from exface.testing.tiny_attributes import TinyAttributes

D = 6


def _flat_boundaries(path: Path, names=("brightness", "redness")) -> Path:
    n = torch.nn.functional.normalize(torch.randn(len(names), D, generator=torch.Generator().manual_seed(3)), dim=1)
    meta = {"attribute_names": list(names), "layers": [None] * len(names),
            "generator": {"class": "TinyGenerator", "args": {}}, "per_layer": False}
    nan = torch.full((len(names),), float("nan"))
    Boundaries(n, torch.zeros(len(names)), "z", nan, nan, meta).save(path)
    return path


def _per_layer(num_ws=4, d=D) -> Boundaries:
    n = torch.nn.functional.normalize(torch.randn(num_ws * 2, d, generator=torch.Generator().manual_seed(4)), dim=1)
    meta = {"attribute_names": ["brightness"] * num_ws + ["redness"] * num_ws, "layers": list(range(num_ws)) * 2,
            "per_layer": True, "path": "b.pt"}
    nan = torch.full((2 * num_ws,), float("nan"))
    return Boundaries(n, torch.zeros(2 * num_ws), "w+", nan, nan, meta)


def _parts() -> dict:
    return {"generator": TinyGenerator(z_dim=D, resolution=16), "aligner": ResizeAligner((16, 16)),
            "embedder": TinyEmbedder(), "attribute_predictors": [TinyAttributes()]}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------ 1. exface edit
def test_edit_refuses_another_run_and_regenerates_in_place(tmp_path, monkeypatch):
    bnd = _flat_boundaries(tmp_path / "b.pt")
    out = tmp_path / "edit"
    kw = dict(boundaries=str(bnd), output_dir=str(out), steps=3, **_parts())
    edit(attribute="brightness", seeds=[1, 2, 3], **kw)
    first = _files(out)
    assert {"grid_0.png", "grid_1.png", "grid_2.png", "grid.png", "edit.json", "edit.md", "curves.png",
            RECORD} <= set(first)
    rec = json.loads((out / RECORD).read_text())
    assert rec["status"] == "complete" and rec["report"] == "edit"
    made = rec["made_by"]
    assert made["attribute"] == "brightness" and made["latents"]["seeds"] == [1, 2, 3]
    assert len(made["boundaries"]["sha256"]) == 64 and made["parts"]["generator"]["class"] == "TinyGenerator"
    assert json.loads((out / "edit.json").read_text())["made_by"] == made

    # another run (other latents / attribute / range): refused before any work, the folder untouched
    before = _snapshot(out)
    import importlib

    edit_mod = importlib.import_module("exface.interfacegan.edit")  # the package exports the command as `edit`

    def no_work(*a, **k):
        raise AssertionError("the refused edit must not read or render latents")

    for other in (dict(attribute="redness", seeds=[9]), dict(attribute="brightness", seeds=[9]),
                  dict(attribute="brightness", seeds=[1, 2, 3], conditions=["redness"])):
        with monkeypatch.context() as m:
            m.setattr(edit_mod, "load_edit_latents", no_work)
            with pytest.raises(ExfaceStateError, match="holds another edit") as err:
                edit(**other, **kw)
        assert err.value.where == str(out) and "--output_dir" in err.value.fix
        assert len(format_error(err.value).splitlines()) <= 20
        assert _snapshot(out) == before
    with pytest.raises(ExfaceStateError, match="end_distance: the folder's report has 3.0, this run 2.0"):
        edit(attribute="brightness", seeds=[1, 2, 3], end_distance=2.0, **kw)

    # the same edit again: regenerated in place; a stale file of it (listed in the record) is removed
    (out / "grid_7.png").write_bytes(b"stale")
    rec["files"].append("grid_7.png")
    (out / RECORD).write_text(json.dumps(rec))
    edit(attribute="brightness", seeds=[1, 2, 3], **kw)
    assert _files(out) == first
    assert json.loads((out / RECORD).read_text())["made_by"] == made


# ------------------------------------------------------------------ 2. exface edit-report
def test_edit_report_refuses_another_report_and_leaves_no_stale_map(tmp_path):
    bnd = _flat_boundaries(tmp_path / "b.pt")
    out = tmp_path / "report"
    kw = dict(boundaries=str(bnd), output_dir=str(out), num_latents=3, steps=3, **_parts())
    edit_report(attributes=["brightness"], conditional=[["brightness", "redness"]], **kw)
    files = _files(out)
    assert {"change_matrix.png", "conditional_matrix.png", "cosine_matrix.png", "report.json", "report.md",
            RECORD, "steps"} <= set(files)
    made = json.loads((out / RECORD).read_text())["made_by"]
    assert made["directions"] == ["brightness", "brightness given redness"]

    # another report (no conditional direction): refused before any face is rendered, nothing changed
    before = _snapshot(out)
    with pytest.raises(ExfaceStateError, match="holds another edit report") as err:
        edit_report(attributes=["redness"], conditional=None, **kw)
    assert "directions: the folder's report has [\"brightness\", \"brightness given redness\"], this run " \
           "[\"redness\"]" in str(err.value) and "--output_dir" in err.value.fix
    assert _snapshot(out) == before

    # the same report as an earlier run: the map it does not draw this time does not survive
    # (simulated: an earlier same-identity run that had left a conditional_matrix.png listed)
    other = tmp_path / "report2"
    kw2 = dict(kw, output_dir=str(other), cache_dir=str(out / "steps"))
    edit_report(attributes=["brightness"], conditional=None, **kw2)
    rec = json.loads((other / RECORD).read_text())
    assert "conditional_matrix.png" not in _files(other)
    (other / "conditional_matrix.png").write_bytes(b"stale map")
    rec["files"] = sorted(rec["files"] + ["conditional_matrix.png"])
    (other / RECORD).write_text(json.dumps(rec))
    edit_report(attributes=["brightness"], conditional=None, **kw2)
    assert "conditional_matrix.png" not in _files(other) and "change_matrix.png" in _files(other)
    assert "steps" not in _files(other)  # the shared cache was used instead
    rep = json.loads((other / "report.json").read_text())
    assert [r["direction"] for r in rep["directions"]] == ["brightness"] and rep["made_by"] == rec["made_by"]


# ------------------------------------------------------------------ 3. per-layer boundaries
def test_per_layer_boundaries_without_a_layer_are_refused():
    b = _per_layer()
    with pytest.raises(ExfaceError, match=r"per-layer.*\[0, 1, 2, 3\]") as err:
        select_direction(b, "brightness")
    assert "--layer" in err.value.fix and err.value.where == "b.pt"
    with pytest.raises(ExfaceError, match="per-layer"):
        select_direction(b, "brightness", ["redness"])
    with pytest.raises(ExfaceError, match="no boundary for 'brightness' at layer 7.*\\[0, 1, 2, 3\\]"):
        select_direction(b, "brightness", layer=7)
    with pytest.raises(ExfaceError, match="per-layer") as err:
        BoundaryEditor(b, "brightness")
    assert "layer" in err.value.fix
    # with a layer: that layer's boundary, only that layer moves, and the label says so
    d = select_direction(b, "brightness", ["redness"], layer=2)
    assert d.layer == 2 and d.label == "brightness@layer 2 given redness"
    assert abs(float(d.normal @ b.normals[4 + 2])) < 1e-6
    x = torch.zeros(1, 4, D)
    moved = (linear_interpolate(x, d, -1, 1, 3)[0, 2] - x[0]).abs().sum(1).gt(0).tolist()
    assert moved == [False, False, True, False]
    assert BoundaryEditor(b, "brightness", layer=1).direction.layer == 1
    # a layer for boundaries of the whole latent is refused too (no silent meaning)
    flat = Boundaries(b.normals[:1], torch.zeros(1), "w", b.normals[:1, 0] * 0, b.normals[:1, 0] * 0,
                      {"attribute_names": ["brightness"], "layers": [None]})
    with pytest.raises(ExfaceError, match="not per-layer"):
        select_direction(flat, "brightness", layer=0)


def test_edit_and_edit_report_refuse_per_layer_boundaries_without_layer(tmp_path):
    from exface.testing import make_stylegan2_pickle
    from exface.generators.stylegan import StyleGAN2

    pkl = tmp_path / "g.pkl"
    make_stylegan2_pickle(pkl, resolution=16, z_dim=8, w_dim=8)
    g = StyleGAN2(pkl=str(pkl), truncation_psi=0.7).eval()
    b = _per_layer(num_ws=g.num_ws, d=g.w_dim)
    b.meta.pop("path")
    b.meta["generator_dims"] = {"z_dim": int(g.z_dim), "w_dim": int(g.w_dim), "num_ws": int(g.num_ws)}
    b.save(tmp_path / "b.pt")
    parts = dict(generator=g, aligner=ResizeAligner((16, 16)), embedder=TinyEmbedder(),
                 attribute_predictors=[TinyAttributes()])
    with pytest.raises(ExfaceError, match="per-layer") as err:
        edit(boundaries=str(tmp_path / "b.pt"), attribute="brightness", seeds=[1], output_dir=str(tmp_path / "e"),
             steps=3, **parts)
    assert "--layer" in err.value.fix and not (tmp_path / "e").exists()
    with pytest.raises(ExfaceError, match="per-layer") as err:
        edit_report(boundaries=str(tmp_path / "b.pt"), attributes=["brightness"], output_dir=str(tmp_path / "r"),
                    num_latents=2, steps=3, **parts)
    assert "--layer" in err.value.fix and not (tmp_path / "r").exists()
    # with --layer: every direction is that layer's, labelled so
    edit_report(boundaries=str(tmp_path / "b.pt"), attributes=["brightness"], conditional=[["brightness", "redness"]],
                output_dir=str(tmp_path / "r"), num_latents=2, steps=3, layer=1, **parts)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["direction"] for r in rep["directions"]] == ["brightness@layer 1", "brightness@layer 1 given redness"]
    assert rep["made_by"]["directions"] == ["brightness@layer 1", "brightness@layer 1 given redness"]
    edit(boundaries=str(tmp_path / "b.pt"), attribute="brightness", seeds=[1], output_dir=str(tmp_path / "e"),
         steps=3, layer=1, **parts)
    doc = json.loads((tmp_path / "e" / "edit.json").read_text())
    assert doc["settings"]["layer"] == 1 and doc["made_by"]["layer"] == 1
