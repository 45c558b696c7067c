"""Helpers for tests and recipe checks: small synthetic checkpoints and fixtures.

StyleGAN files built by exface's own code (see :mod:`exface.testing.stylegan_pickles`):
``make_stylegan2_pickle`` / ``make_stylegan3_pickle`` write NVIDIA-layout network
pickles, ``make_rosinality_checkpoint`` a rosinality stylegan2-pytorch ``.pt``.
"""

from exface.testing.stylegan_pickles import (
    make_rosinality_checkpoint,
    make_stylegan2_pickle,
    make_stylegan3_pickle,
)

__all__ = ["make_stylegan2_pickle", "make_stylegan3_pickle", "make_rosinality_checkpoint"]
