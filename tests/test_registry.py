"""Registries: registering by subclassing, wildcard listing, duplicates, plugin discovery."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

import exface
from exface.embedders.base import IdentityEmbedder
from exface.registry import REGISTRIES, RegistryError, list_parts, load_plugins


def test_builtin_kinds_exist():
    load_plugins()
    assert {"generators", "embedders", "attributes", "aligners", "boundaries", "losses"} <= set(REGISTRIES)


def test_subclassing_registers_and_create_builds():
    class ToyEmbedderForRegistryTest(IdentityEmbedder):
        """A toy embedder."""

        input_size = (8, 8)
        embedding_dim = 4

        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 64, 4)

        def embed_raw(self, x):
            return self.lin(x.flatten(1))

    reg = exface.get_registry("embedders")
    assert "ToyEmbedderForRegistryTest" in reg.list("*toyembedder*")
    emb = exface.create_part("embedders", "ToyEmbedderForRegistryTest", scale=2.0)
    out = emb(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    info = reg.info("ToyEmbedderForRegistryTest")
    assert info.summary == "A toy embedder." and info.package == "test_registry"


def test_duplicate_name_is_an_error_naming_both_modules():
    class DupEmbedder(IdentityEmbedder):
        def embed_raw(self, x):
            return x

    with pytest.raises(RegistryError, match="DupEmbedder.*test_registry.*other.module"):
        type("DupEmbedder", (IdentityEmbedder,), {"embed_raw": lambda s, x: x, "__module__": "other.module"})


def test_abstract_and_private_classes_are_not_registered():
    class _HiddenEmbedder(IdentityEmbedder):
        def embed_raw(self, x):
            return x

    class StillAbstract(IdentityEmbedder):
        pass

    names = exface.get_registry("embedders").list()
    assert "_HiddenEmbedder" not in names and "StillAbstract" not in names


def test_unknown_part_suggests_nearest():
    with pytest.raises(RegistryError, match="did you mean"):
        exface.get_part("embedders", "FaceApiResNet35")


def test_wildcard_listing_is_case_insensitive():
    parts = list_parts("*FACEAPI*")
    assert parts and all("faceapi" in p.name.lower() for p in parts)


def test_entry_point_group_is_loaded(monkeypatch):
    """A module named by an ``exface.plugins`` entry point is imported by load_plugins."""
    loaded = []

    class FakeEP:
        name, value = "fake", "fake_module"

        def load(self):
            loaded.append(True)

    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [FakeEP()] if kw.get("group") == "exface.plugins" else real(**kw))
    assert "fake" in load_plugins(force=True)
    assert loaded


def test_a_plugin_whose_part_name_clashes_is_left_out_with_a_warning(monkeypatch, caplog):
    """One plugin reusing a built-in part's name must not take every exface command down, nor stay
    half-registered: it is left out, and the warning names it, its distribution and the clash."""
    import logging

    from exface.losses.base import FRLoss
    from exface.registry import get_part

    class FakeDist:
        name = "fakeplug-dist"

    class ClashEP:
        name, value, dist = "clash", "fakeplug", FakeDist()

        def load(self):
            reg = REGISTRIES["losses"]
            reg.register(type("FreshPluginLoss", (FRLoss,), {"__module__": "fakeplug"}))
            reg.register(type("ArcFace", (FRLoss,), {"__module__": "fakeplug"}))

    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ClashEP()] if kw.get("group") == "exface.plugins" else real(**kw))
    with caplog.at_level(logging.WARNING, logger="exface.registry"):
        assert load_plugins(force=True) == []
    text = caplog.text
    assert "'clash'" in text and "fakeplug-dist" in text and "'ArcFace'" in text and "uninstall" in text, text
    assert get_part("losses", "ArcFace").__module__ == "exface.losses.margin"
    assert "FreshPluginLoss" not in REGISTRIES["losses"]  # rolled back, not half-registered


def test_a_plugin_that_fails_after_registering_leaves_nothing_behind(monkeypatch, caplog):
    """A plugin that registers a part (or a new kind of part) and then fails, by an ImportError or a
    name clash, leaves neither registered."""
    import logging

    from exface.losses.base import FRLoss
    from exface.registry import Registrable

    class HalfEP:
        name, value, dist = "half", "halfplug", None

        def load(self):
            REGISTRIES["losses"].register(type("HalfPluginLoss", (FRLoss,), {"__module__": "halfplug"}))
            raise ImportError("needs libxyz")

    class KindEP:
        name, value, dist = "kind", "kindplug", None

        def load(self):
            widget = type("WidgetBase", (Registrable,), {"__module__": "kindplug", "registry_kind": "widgets"})
            REGISTRIES["widgets"].register(type("MyWidget", (widget,), {"__module__": "kindplug"}))
            REGISTRIES["losses"].register(type("ArcFace", (FRLoss,), {"__module__": "kindplug"}))

    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [HalfEP(), KindEP()] if kw.get("group") == "exface.plugins" else real(**kw))
    with caplog.at_level(logging.WARNING, logger="exface.registry"):
        assert load_plugins(force=True) == []
    assert "needs libxyz" in caplog.text and "'kind'" in caplog.text
    assert "HalfPluginLoss" not in REGISTRIES["losses"] and "widgets" not in REGISTRIES


def test_plugins_command_lists_lightning_classes(capsys):
    from exface.cli import main

    main(["plugins", "--kind", "lightning"])
    out = capsys.readouterr().out
    assert "IdentityBankDataModule" in out and "FaceRecognitionModule" in out and "losses:" not in out, out
    main(["plugins", "--pattern", "*DataModule*"])
    out = capsys.readouterr().out
    assert "IdentityFolderDataModule" in out and "no part matches" not in out, out
    main(["plugins", "--pattern", "*nothing_is_named_so*"])
    assert "no part matches" in capsys.readouterr().out
