"""Throughput of ``exface synthesize`` against the bare forward passes it is made of.

Default models (the offline ``recipes/dcgan_faceapi_synthesize.yaml`` parts): DCGAN-DigiFace
generator, face-api ResNet-34 embedder behind its fixed 150-px crop, and the fixed
112-px ArcFace-template crop that is written. Random unit boundaries in z stand in for
fitted ones (the work per image does not depend on them).

Sides, alternated in one process, ``--repeats`` times (medians of process and wall time):

- ``synthesize_dataset``: the public entry point with its writer (Lightning predict,
  sampler, crops, embeddings, PNG files, manifest, consolidation) into a fresh folder.
- ``bare forward``: the same number of images through generator -> uint8 -> embedder
  (its aligner) and the crop aligner, in the same batch size, nothing written: what any
  implementation must compute.
- ``bare forward + PNG encode``: the same plus encoding every batch of crops as PNG in
  memory with the writer's :func:`encode_images`, on ``--threads`` threads (the writer's
  unavoidable work).

Target: synthesize within 10% of the bare forward's images/s.

Run: ``python benchmarks/synthesis_speed.py`` (``--identities 8 --images 32``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate, machine_line, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--images", type=int, default=32, help="images per identity")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from exface.alignment.crops import FixedCropAligner
    from exface.boundaries.base import Boundaries
    from exface.embedders import FaceApiResNet34
    from exface.exfacegan.crops import aligned_crops, encode_images
    from exface.exfacegan.samplers import ExFaceGANSampler
    from exface.exfacegan.synthesis import embed_images, synthesize_dataset
    from exface.generators import DCGANDigiFace
    from exface.tensors import to_uint8

    gen = DCGANDigiFace().eval()
    aligner = FixedCropAligner(box=[0.084, 0.199, 0.921, 1.036], output_size=[150, 150])
    embedder = FaceApiResNet34().eval()
    crop = FixedCropAligner(box=[0.023, 0.020, 0.969, 0.965], output_size=[112, 112])
    r = args.identities
    g = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(r, 100, generator=g), dim=1)
    bounds = Boundaries(normals, torch.zeros(r), "z", torch.full((r,), float("nan")), torch.full((r,), float("nan")))
    z_refs = gen.sample_z(r, seed=1)
    with torch.no_grad():
        ref_emb = embed_images(aligner, embedder, to_uint8(gen.synthesize(z_refs)))
    references = {"z": z_refs, "embedding": ref_emb}
    sampler = ExFaceGANSampler(max_offset=20.0)
    total = r * args.images
    scratch = Path(tempfile.mkdtemp(prefix="exface_synth_bench_"))
    z_all = gen.sample_z(total, seed=2)

    def synth():
        out = scratch / "ds"
        shutil.rmtree(out, ignore_errors=True)
        synthesize_dataset(gen, aligner, embedder, bounds, references, out, images_per_identity=args.images,
                           sampler=sampler, batch_size=args.batch, accelerator="cpu", progress=False,
                           crop_aligner=crop)
        return len(list(out.glob("*/*.png")))

    pool = ThreadPoolExecutor(args.threads)

    def bare(encode: bool):
        n = 0
        with torch.no_grad():
            for s in range(0, total, args.batch):
                imgs = to_uint8(gen.synthesize(z_all[s : s + args.batch]))
                embed_images(aligner, embedder, imgs)
                crops, _ = aligned_crops(crop, imgs, None)
                if encode:
                    encode_images(crops, "png", map_fn=pool.map, parts=args.threads)
                n += len(imgs)
        return n

    print(f"{r} identities x {args.images} images = {total}, batch {args.batch}; {machine_line(args.threads)}")
    t = alternate({
        "synthesize_dataset (writer, PNG)": synth,
        "bare forward": lambda: bare(False),
        "bare forward + PNG encode": lambda: bare(True),
    }, repeats=args.repeats)
    assert t["synthesize_dataset (writer, PNG)"].result == total, t["synthesize_dataset (writer, PNG)"].result
    print(f"\nmedians over {args.repeats} alternated repetitions; {machine_line(args.threads)}")
    table(t, bound="bare forward")
    for name, tm in t.items():
        print(f"  {name:34s} {total / tm.wall_median:8.1f} images/s wall, {total / tm.process_median:8.1f} images/s "
              f"of process time")
    slow = t["synthesize_dataset (writer, PNG)"].process_median / t["bare forward"].process_median - 1
    print(f"  synthesize vs bare forward: {100 * slow:+.1f}% process time (target <= +10%)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
