"""InterFaceGAN (Shen et al.): attribute boundaries in a GAN's latent space, conditional editing, re-scoring.

Modules: ``scores`` (attribute scores of a latent bank, side files), ``learner`` (the
boundary rule, a boundary learner), ``directions`` (plain and conditional edit directions,
the generator/space check), ``manipulation`` (``linear_interpolate``, the
:class:`~exface.editing.base.LatentEditor` ``BoundaryEditor``), and the commands
``exface interfacegan-fit`` (``fit``), ``exface edit`` (``edit``) and ``exface edit-report``
(``report``).
"""

from exface._autoimport import import_submodules

__all__ = import_submodules(__name__, globals())
