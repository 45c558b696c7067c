"""The independent evaluator of identity reports: a face network that had no part in the labels.

A report that scores synthetic identities with the embedder that labeled the latents grades
its own homework: the boundaries were fit to that network's similarities, so it is the one
network guaranteed to agree. :func:`default_evaluator` picks a different offline network
for the labeler (face-api's dlib ResNet-34 labels are judged by HSE's MobileNet
:class:`~exface.embedders.human.HSEFaceRes`; an IResNet's, timm's or HSE's by face-api), and
:func:`evaluator_aligner` gives it the labeler's crop at its own input size.
"""

from __future__ import annotations

import logging

from exface.alignment.base import Aligner
from exface.alignment.crops import FixedCropAligner, ResizeAligner
from exface.alignment.landmark_aligner import ArcFaceAligner, DlibChipAligner, LandmarkAligner
from exface.alignment.templates import DlibChipTemplate
from exface.embedders.base import IdentityEmbedder

__all__ = ["EVALUATOR_FOR", "default_evaluator", "evaluator_aligner", "is_same_network"]

log = logging.getLogger(__name__)

#: labeler class name -> the evaluator class name used when none is given.
EVALUATOR_FOR = {
    "FaceApiResNet34": "HSEFaceRes",
    "HSEFaceRes": "FaceApiResNet34",
    "HumanMobileFace": "FaceApiResNet34",
    "IResNetEmbedder": "FaceApiResNet34",
    "TimmEmbedder": "FaceApiResNet34",
}


def default_evaluator(labeler: IdentityEmbedder) -> tuple[IdentityEmbedder | None, str]:
    """``(evaluator or None, why)`` for a labeler: another offline network when one is known.

    None when the labeler is of a kind without a known counterpart (a plugin's, a test's) or
    the evaluator's weights cannot be had (offline, no zoo copy); ``why`` says which.
    """
    from exface.registry import create_part

    name = EVALUATOR_FOR.get(type(labeler).__name__)
    if name is None:
        return None, f"no default evaluator is known for {type(labeler).__name__}; pass one (evaluator: ...)"
    try:
        ev = create_part("embedders", name)
    except Exception as err:  # weights unavailable: say so in the report instead of failing it
        log.warning("independent evaluator %s unavailable: %s", name, err)
        return None, f"the default evaluator {name} could not be loaded ({str(err).splitlines()[0]})"
    return ev.eval(), f"default evaluator for {type(labeler).__name__} labels"


def is_same_network(evaluator: IdentityEmbedder, labeler: IdentityEmbedder) -> bool:
    """Whether ``evaluator`` is the labeler itself: the same class with the same weights (sha256).

    Such an evaluator is no independent judge (it is the network the boundaries were fit to),
    whatever crop it is given; the report then says the labeler judged its own labels.
    """
    from exface.exfacegan.provenance import module_digest

    if evaluator is labeler:
        return True
    if type(evaluator).__name__ != type(labeler).__name__:
        return False
    return module_digest(evaluator) == module_digest(labeler)


def evaluator_aligner(aligner: Aligner, evaluator: IdentityEmbedder) -> Aligner:
    """The labeler's crop for the evaluator's input size.

    A fixed box stays the same box and a plain resize a resize, at the evaluator's size; a
    landmark aligner keeps its landmark source (and detector) and gets the template the
    evaluator expects: dlib chips for 150x150 networks, the ArcFace template for 112x112,
    otherwise a dlib-geometry chip at the evaluator's size with padding 0.4 (a face box
    plus a margin, as HSE's MobileNet was fed).
    """
    size = tuple(int(s) for s in evaluator.input_size)
    if tuple(aligner.output_size) == size:
        return aligner
    if isinstance(aligner, FixedCropAligner):
        return FixedCropAligner(aligner.box, size, aligner.antialias)
    if isinstance(aligner, ResizeAligner):
        return ResizeAligner(size, aligner.antialias)
    if isinstance(aligner, LandmarkAligner):
        common = dict(source=aligner.source, antialias=aligner.antialias, detector=aligner.detector,
                      choose=aligner.choose, expected_box=aligner.expected_box)
        if size == (150, 150):
            return DlibChipAligner(150, 0.25, **common)
        if size[0] == 112:
            return ArcFaceAligner(size, 8.0 if size[1] == 112 else 0.0, **common)
        if size[0] != size[1]:
            raise ValueError(f"no landmark template for a {size} evaluator; pass evaluator_aligner")
        return LandmarkAligner(DlibChipTemplate(size[0], 0.4), **common)
    raise ValueError(
        f"cannot derive the evaluator's crop from a {type(aligner).__name__}; pass evaluator_aligner "
        f"(an aligner producing {size} crops)"
    )
