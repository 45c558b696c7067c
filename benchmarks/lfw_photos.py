"""LFW fold 1 from the folders users have: deep-funneled and original (150-px) images.

Runs exface's benchmark (``run_benchmark``, the code path of ``exface benchmark``) on the
600 pairs of fold 1 from each image folder, no renaming (``image_dir``), with:

- ``default``: the default photo alignment (face-api 68 landmarks from the LFW box -> dlib
  chip), no detector;
- ``dlib-hog``: dlib's HOG detector + 5-point predictor -> dlib chip, the face nearest the
  LFW box when HOG finds several, the box when it finds none (counts reported);
- ``detector``: the default alignment started on a registered face detector's face nearest
  the box (``--detector SSDMobileNetV1`` once that detector is installed).

For each folder it also prints the median face box face-api's landmarks give
(:func:`~exface.alignment.landmarks.box_from_landmarks`), relative to the image: the reason
one starting box serves both folders.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/lfw_photos.py [--detector SSDMobileNetV1]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from exface.alignment import DlibChipAligner
from exface.alignment.landmarks import box_from_landmarks
from exface.embedders import FaceApiResNet34
from exface.evaluation.benchmark import DEFAULT_PHOTO_BOX, _image_batches, run_benchmark
from exface.evaluation.datasets import load_lfw_pairs

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EXFACE_SHARED_DATA", REPO.parent / "shared" / "data")) / "lfw-fold1"


@torch.no_grad()
def median_face_box(pairs: Path, image_dir: Path) -> np.ndarray:
    vs = load_lfw_pairs(pairs, image_dir)
    source = DlibChipAligner(150, source_args={"box": DEFAULT_PHOTO_BOX}).source.eval()
    boxes = []
    for _, x in _image_batches(vs, 32):
        b = box_from_landmarks(source(x))
        boxes.append((b / torch.tensor([x.shape[3], x.shape[2]] * 2)).numpy())
    return np.median(np.concatenate(boxes), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--folders", nargs="+", default=["lfw-deepfunneled", "lfw-original-150"])
    parser.add_argument("--detector", default=None, help="a registered face detector, e.g. SSDMobileNetV1")
    parser.add_argument("--skip_boxes", action="store_true", help="do not measure the median face boxes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = args.data / "pairs.txt"
    if not pairs.is_file():
        print(f"no LFW fold-1 data at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 1
    embedder = FaceApiResNet34().eval()
    for folder in args.folders:
        image_dir = args.data / folder
        if not args.skip_boxes:
            print(f"{folder}: median face-api face box {np.round(median_face_box(pairs, image_dir), 3).tolist()}", flush=True)
        configs = [("default", None, {}), ("dlib-hog", DlibChipAligner(150, source="DlibLandmarks",
                   source_args={"points": 5, "box": DEFAULT_PHOTO_BOX}), {})]
        if args.detector:
            configs.append(("detector", None, {"detector": args.detector}))
        for label, aligner, extra in configs:
            with tempfile.TemporaryDirectory() as tmp:
                (r,) = run_benchmark([pairs], embedder, aligner, folds=10, output_dir=tmp, image_dir=image_dir,
                                     roc=False, **extra)
            faces = r.get("faces")
            counts = (f"; no face {faces['no_face']}, several faces {faces['several_faces']} of {faces['images']} images"
                      + (f" (no face: {', '.join(faces['no_face_images'][:8])})" if faces["no_face"] else "")) if faces else ""
            print(f"  {folder:18s} {label:9s} accuracy {100 * r['accuracy']:6.2f} ± {100 * r['accuracy_std']:4.2f} %  "
                  f"AUC {100 * r['auc']:6.2f} %  ({r['seconds']:.0f} s){counts}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
