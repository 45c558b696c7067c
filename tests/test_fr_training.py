"""The third-party plugin path: ElasticFace losses from plugins/ in an FR training recipe.

(The FR recipe itself runs in tests/test_recipes.py.)
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
import yaml

from exface.cli import main
from exface.registry import get_registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def identity_folder(tmp_path) -> Path:
    from exface.testing.identity_folder import make_identity_folder

    return make_identity_folder(tmp_path / "dataset")


def _recipe(tmp_path: Path, root: Path, loss: dict) -> Path:
    cfg = yaml.safe_load((REPO / "recipes" / "fr_arcface_synthetic.yaml").read_text())
    cfg["model"]["init_args"]["backbone"] = {"class_path": "IResNetEmbedder", "init_args": {"arch": "r18"}}
    cfg["model"]["init_args"]["loss"] = loss
    cfg["data"]["init_args"].update(root=str(root), image_size=[112, 112], batch_size=6, num_workers=0,
                                    val_fraction=0.3)
    cfg["trainer"] = {"fast_dev_run": True, "logger": False, "enable_progress_bar": False,
                      "default_root_dir": str(tmp_path)}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _plugin_installed() -> bool:
    eps = importlib.metadata.entry_points(group="exface.plugins")
    return any(ep.value.startswith("exface_elasticface") for ep in eps)


@pytest.mark.skipif(not _plugin_installed(), reason="plugins/exface-elasticface is not installed (setup.sh installs it)")
def test_plugin_registers_through_entry_point_only(tmp_path, identity_folder):
    """The plugin's losses come from the entry-point group and a recipe names them by short name."""
    reg = get_registry("losses")
    assert "ElasticArcFace" in reg and reg.info("ElasticArcFace").package == "exface-elasticface"
    loss = {"class_path": "ElasticArcFace", "init_args": {"plus": True}}
    main(["fit", "--config", str(_recipe(tmp_path, identity_folder, loss))])


@pytest.mark.skipif(not _plugin_installed(), reason="plugins/exface-elasticface is not installed (setup.sh installs it)")
def test_elastic_plus_gives_smallest_margin_to_easiest_sample():
    from exface_elasticface.losses import ElasticArcFace

    loss = ElasticArcFace(8, 5, std=0.1, plus=True)
    target = torch.tensor([0.9, 0.1, 0.5, -0.2])
    torch.manual_seed(0)
    m = loss.margins(target)
    assert torch.equal(torch.argsort(m), torch.argsort(target, descending=True))
    emb, labels = torch.randn(4, 8, requires_grad=True), torch.tensor([0, 1, 2, 3])
    out = loss(emb, labels)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(emb.grad).all()
