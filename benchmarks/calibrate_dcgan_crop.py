"""Calibrate the fixed crop box that stands in for dlib-chip alignment on DCGAN-DigiFace output.

DCGANDigiFace renders 64x64 faces that are roughly aligned (DigiFace-1M crops), so one
fixed box gives nearly the chip DlibChipAligner would cut per image, at a fraction of the
cost (no landmark net) and with no landmark noise. This script runs DlibChipAligner with
face-api's 68-point landmarks on ``--n`` DCGAN samples, averages the chip->image transform
and prints the relative box ``(x0, y0, x1, y1)`` of the mean chip, plus the spread.

    .venv/bin/python benchmarks/calibrate_dcgan_crop.py --n 200

The box printed here is the one in ``recipes/dcgan_faceapi.yaml``.
"""

from __future__ import annotations

import argparse

import torch

from exface.alignment import DlibChipAligner
from exface.generators import DCGANDigiFace


def chip_boxes(a: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Relative axis-aligned boxes ``[N, 4]`` of chips given chip->image maps ``[N, 2, 3]``.

    Points use pixel centres at integers; the chip spans [-0.5, size - 0.5] in its own
    pixels, and an image edge coordinate is a centre coordinate + 0.5.
    """
    scale = a[:, :, :2].det().abs().sqrt()  # image pixels per chip pixel
    centre = a[:, :, 2] + a[:, :, :2] @ torch.full((2,), (size - 1) / 2, dtype=a.dtype)
    half = scale * size / 2
    edge = centre + 0.5
    x0, y0 = (edge[:, 0] - half) / width, (edge[:, 1] - half) / height
    x1, y1 = (edge[:, 0] + half) / width, (edge[:, 1] + half) / height
    return torch.stack([x0, y0, x1, y1], 1)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="DCGAN samples")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    gen = DCGANDigiFace().eval()
    aligner = DlibChipAligner().eval()
    images = gen.synthesize(gen.sample_z(args.n, seed=args.seed))
    _, a = aligner.align(images)
    a = a.double()
    boxes = chip_boxes(a, aligner.output_size[0], images.shape[-2], images.shape[-1])
    rot = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0]))
    mean_box = chip_boxes(a.mean(0, keepdim=True), aligner.output_size[0], images.shape[-2], images.shape[-1])[0]
    med = boxes.median(0).values
    print(f"{args.n} DCGAN samples, DlibChipAligner(FaceApiLandmarks) chips")
    print(f"rotation: mean {rot.mean():+.2f} deg, std {rot.std():.2f} deg")
    print(f"box std (fractions of the image): {[round(v, 3) for v in boxes.std(0).tolist()]}")
    print(f"median box: {[round(v, 3) for v in med.tolist()]}")
    print(f"box of the mean transform (use this): {[round(v, 3) for v in mean_box.tolist()]}")


if __name__ == "__main__":
    main()
