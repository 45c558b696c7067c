"""CPU throughput of the generators: images/s at batch 64 from z.

DCGAN-DigiFace uses its real weights when the model zoo has them cached (random weights
otherwise: speed does not depend on them). StyleGAN2 is a random 256-px network with
NVIDIA's config-F sizes (8 mapping layers, channel_base 32768, channel_max 512); the
StyleGAN3-T one (off by default, slow on CPU) has the paper's 256-px defaults. Both
are written as NVIDIA pickles and loaded through the registered parts, so this times
exactly what a recipe runs.

    python benchmarks/generators_speed.py
    python benchmarks/generators_speed.py --batch 16 --stylegan3 --threads 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from exface.generators import DCGANDigiFace, StyleGAN2, StyleGAN3
from exface.generators.base import Generator


def images_per_second(G: Generator, batch: int, repeats: int) -> float:
    """Best-of-``repeats`` throughput of ``G.synthesize`` on z, after a warm-up batch of 2."""
    z = G.sample_z(batch, seed=0)
    best = float("inf")
    with torch.inference_mode():
        G.synthesize(z[:2])
        for _ in range(repeats):
            start = time.perf_counter()
            G.synthesize(z)
            best = min(best, time.perf_counter() - start)
    return batch / best


def _dcgan() -> Generator:
    from exface import zoo

    if zoo.is_cached("dcgan-digiface"):
        return DCGANDigiFace()
    from exface.models.dcgan import DCGANGenerator

    path = Path(tempfile.mkdtemp()) / "weights.tar"
    torch.save({"netG_state_dict": DCGANGenerator().eval().state_dict()}, path)
    return DCGANDigiFace(weights=str(path))


def _stylegan2_256() -> Generator:
    from exface.testing.stylegan_pickles import build_stylegan2, write_network_pickle

    net = build_stylegan2(resolution=256, z_dim=512, w_dim=512, channels=128, channel_max=512,
                          num_mapping_layers=8, num_fp16_res=4, conv_clamp=256)
    path = write_network_pickle(Path(tempfile.mkdtemp()) / "sg2-256.pkl", net)
    return StyleGAN2(str(path), truncation_psi=0.7)


def _stylegan3_256() -> Generator:
    from exface.models.stylegan3 import StyleGAN3Generator
    from exface.testing.stylegan_pickles import write_network_pickle

    net = StyleGAN3Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256,
                             synthesis_kwargs=dict(channel_base=32768, channel_max=512)).eval()
    path = write_network_pickle(Path(tempfile.mkdtemp()) / "sg3t-256.pkl", net)
    return StyleGAN3(str(path), truncation_psi=0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per model (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--stylegan3", action="store_true", help="also time a 256-px StyleGAN3-T")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}")
    models = {"DCGANDigiFace (64 px)": _dcgan, "StyleGAN2 (256 px, config-F sizes)": _stylegan2_256}
    if args.stylegan3:
        models["StyleGAN3-T (256 px)"] = _stylegan3_256
    for name, build in models.items():
        G = build()
        rate = images_per_second(G, args.batch, args.repeats)
        print(f"{name:40s} {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
