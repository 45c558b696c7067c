"""What ``exface synthesize`` stores for FR training: the aligner's crop, and a face check.

FR trains on aligned crops (every benchmark set is aligned: insightface ``.bin`` files hold
112x112 ArcFace-template crops), so a dataset stores the *crop aligner*'s output, not the
generator's frame. With a landmark aligner (:class:`~exface.alignment.LandmarkAligner`) the
same keypoints that cut the crop are checked first: ExFaceGAN drops the images in which MTCNN
finds no face. With a ``detector`` on the aligner (e.g. ``SSDMobileNetV1``) an image where it
finds no face fails (:attr:`LandmarkAligner.last_found`); with or without one, so do
(:func:`plausible_faces`) landmarks that no similarity transform maps onto the template (a mean
keypoint error above ``max_error`` template eye distances), that fall outside the frame, that
collapse (eyes closer than a tenth of the frame), or that put the face on its side (a roll
beyond :data:`MAX_ROLL_DEG`; generators draw upright faces).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from exface.alignment.base import Aligner
from exface.alignment.geometry import apply_affine, similarity_lstsq
from exface.alignment.landmark_aligner import LandmarkAligner
from exface.exfacegan.provenance import part_fingerprint
from exface.tensors import to_uint8

__all__ = ["MAX_ROLL_DEG", "ImageFormat", "IMAGE_SUFFIX", "encode_image", "encode_images", "split_parts",
           "plausible_faces", "aligned_crops", "describe_crop", "crop_part_fingerprints"]

ImageFormat = Literal["png", "jpeg"]
#: faces rolled further than this (degrees) from the template fail the face check
MAX_ROLL_DEG = 60.0
#: file suffix per stored format
IMAGE_SUFFIX = {"png": ".png", "jpeg": ".jpg"}


def encode_image(image_chw_u8: Tensor, image_format: ImageFormat = "png", jpeg_quality: int = 95) -> bytes:
    """uint8 ``[3, H, W]`` -> PNG or JPEG bytes (one image of :func:`encode_images`)."""
    return encode_images(image_chw_u8[None], image_format, jpeg_quality)[0]


def encode_images(images_u8: Tensor, image_format: ImageFormat = "png", jpeg_quality: int = 95,
                  map_fn: Callable = map, parts: int = 1) -> list[bytes]:
    """uint8 ``[N, 3, H, W]`` -> one PNG or JPEG file's bytes per image (JPEG: 4:4:4 chroma, ``jpeg_quality``).

    PNG: libpng through OpenCV, zlib's Huffman-only strategy and the Paeth filter on every
    row: 0.55 ms per 112-px DCGAN crop, against 0.71 ms with libpng's adaptive filter choice
    (which picks Paeth here anyway: the same 15.3 kB) and 1.19 ms for PIL at zlib level 1;
    on these smooth, upsampled faces LZ77 matching costs time and finds little. JPEG:
    libjpeg-turbo through simplejpeg (0.07 ms per crop). Lossless PNG either way.

    The batch is turned into contiguous HWC arrays once; the encoders (which release the
    GIL) then run over ``parts`` slices of it through ``map_fn`` (e.g. a thread pool's
    ``map``), so that several cores can encode one batch.
    """
    if image_format not in IMAGE_SUFFIX:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    hwc = images_u8.permute(0, 2, 3, 1)
    if image_format == "png":
        hwc = hwc.flip(-1)  # OpenCV wants BGR
    hwc = np.ascontiguousarray(hwc.cpu().numpy())
    encode = _encode_png if image_format == "png" else (lambda a: _encode_jpeg(a, int(jpeg_quality)))
    return [data for part in map_fn(lambda arr: [encode(a) for a in arr], split_parts(hwc, parts)) for data in part]


def split_parts(seq, parts: int) -> list:
    """``seq`` in at most ``parts`` consecutive slices of near-equal length (for a pool's ``map``)."""
    step = max(1, -(-len(seq) // max(1, parts)))
    return [seq[i : i + step] for i in range(0, len(seq), step)]


_PNG_PARAMS = None


def _encode_png(bgr: np.ndarray) -> bytes:
    import cv2

    global _PNG_PARAMS
    if _PNG_PARAMS is None:
        _PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                       cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
    ok, buf = cv2.imencode(".png", bgr, _PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"PNG encoding of a {bgr.shape} image failed")
    return buf.tobytes()


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB", colorsubsampling="444")


def plausible_faces(keypoints: Tensor, template_points: Tensor, height: int, width: int,
                    max_error: float = 0.35) -> Tensor:
    """``[N]`` bool: which ``[N, K, 2]`` keypoint sets look like a face (see the module docstring).

    ``template_points`` ``[K, 2]`` are the template's keypoints in the same scheme. The error
    is the mean distance between the template points and the keypoints mapped by their
    least-squares similarity, in units of the template's eye distance (points 0 and 1).
    """
    kp = keypoints.detach().double()
    tp = template_points.to(kp.device).double()
    a = similarity_lstsq(kp, tp)
    err = (apply_affine(a, kp) - tp).norm(dim=-1).mean(1) / (tp[0] - tp[1]).norm()
    inside = ((kp[..., 0] >= 0) & (kp[..., 0] <= width) & (kp[..., 1] >= 0) & (kp[..., 1] <= height)).all(1)
    eyes = (kp[:, 0] - kp[:, 1]).norm(dim=-1) >= 0.1 * min(height, width)
    roll = torch.atan2(a[:, 1, 0], a[:, 0, 0]).abs() <= math.radians(MAX_ROLL_DEG)
    finite = torch.isfinite(kp).all(2).all(1)
    return (err <= max_error) & inside & eyes & roll & finite


@torch.no_grad()
def aligned_crops(aligner: Aligner, frames_u8: Tensor, max_error: float | None = 0.35,
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """uint8 crops ``[N, 3, h, w]`` of uint8 frames and ``[N]`` bool face-check results.

    Landmark aligners cut the crop from the keypoints they check; other aligners (fixed
    boxes) have no landmarks, so every image passes. ``max_error=None`` turns the check off.
    """
    x = frames_u8.float().to(device) / 127.5 - 1.0
    ok = torch.ones(len(x), dtype=torch.bool)
    if isinstance(aligner, LandmarkAligner):
        kp = aligner.keypoints(x)
        crops = aligner.align(x, kp)[0]
        if max_error is not None:
            ok = plausible_faces(kp, aligner.template.points, x.shape[-2], x.shape[-1], max_error).cpu()
            if getattr(aligner, "detector", None) is not None and aligner.last_found is not None:
                ok &= aligner.last_found.bool().cpu()
    else:
        crops = aligner(x)
    return to_uint8(crops).cpu(), ok


def describe_crop(aligner: Aligner | None) -> dict | None:
    """A JSON record of the crop a dataset stores (None: the generator frame)."""
    if aligner is None:
        return None
    rec = {"class": type(aligner).__name__, "output_size": list(aligner.output_size)}
    if isinstance(aligner, LandmarkAligner):
        rec["template"] = repr(aligner.template)
        rec["source"] = type(aligner.source).__name__
    box = getattr(aligner, "box", None)
    if box is not None:
        rec["box"] = list(box)
    return rec


def crop_part_fingerprints(aligner: Aligner | None) -> dict[str, dict]:
    """The crop aligner as parts records (:func:`~exface.exfacegan.provenance.part_fingerprint`), by role.

    ``crop_aligner`` is the aligner itself (class, options such as ``antialias`` or ``choose``,
    and the sha256 of all its weights: landmark network and detector included). A landmark
    aligner's ``source`` and ``detector`` get records of their own (``crop_aligner.source``,
    ``crop_aligner.detector``), so that their class and options are compared too, path-valued
    options by content, exactly as the other parts are. Empty without a crop aligner.
    """
    if aligner is None:
        return {}
    out = {"crop_aligner": part_fingerprint(aligner)}
    for name in ("source", "detector"):
        sub = getattr(aligner, name, None)
        if isinstance(aligner, LandmarkAligner) and sub is not None:
            out[f"crop_aligner.{name}"] = part_fingerprint(sub)
    return out
