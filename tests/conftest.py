"""Shared pytest fixtures: where the real face data lives, and a clean model-zoo cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the repo, or $EXFACE_SHARED_DATA (a git worktree elsewhere)
SHARED_DATA = Path(os.environ.get("EXFACE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo (or ``$EXFACE_SHARED_DATA``, e.g. from a git worktree);
    tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA} (see DEVELOPERS.md: ../shared/data)")
    return SHARED_DATA


@pytest.fixture
def empty_zoo(tmp_path, monkeypatch) -> Path:
    """An empty EXFACE_HOME so zoo tests never touch the user's cache."""
    home = tmp_path / "exface-home"
    monkeypatch.setenv("EXFACE_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _grad_mode_is_restored():
    """No test may leak a global autograd switch into the next one."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)
