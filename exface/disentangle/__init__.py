"""exface disentangle: identity/attribute disentanglement in a frozen generator's latent space
(Nitzan et al. 2020). Every module of this package adds parts or commands."""

from exface._autoimport import import_submodules

__all__ = import_submodules(__name__, globals())
