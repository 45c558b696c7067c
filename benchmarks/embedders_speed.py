"""CPU throughput of the identity embedders: images/s at batch 64, 112x112 crops.

One short timed batch per model (after a small warm-up batch), so the whole run takes
about a minute on 2 cores. Random weights: speed does not depend on them.

    python benchmarks/embedders_speed.py                 # IResNet-50, IResNet-100, timm resnet18
    python benchmarks/embedders_speed.py --timm-model mobilenetv3_small_100 --threads 4
"""

from __future__ import annotations

import argparse
import time

import torch

from exface.embedders.iresnet import IResNetEmbedder
from exface.embedders.timm_embedder import TimmEmbedder


def images_per_second(model: torch.nn.Module, batch: int, repeats: int) -> float:
    """Best-of-``repeats`` throughput of ``model`` on a [-1, 1] batch, after one warm-up batch of 8."""
    model.eval()
    x = torch.rand(batch, 3, *model.input_size) * 2 - 1
    best = float("inf")
    with torch.inference_mode():
        model(x[:8])
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per model (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--timm-model", default="resnet18")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, 112x112")
    models = {
        "IResNetEmbedder(r50)": lambda: IResNetEmbedder("r50"),
        "IResNetEmbedder(r100)": lambda: IResNetEmbedder("r100"),
        f"TimmEmbedder({args.timm_model})": lambda: TimmEmbedder(args.timm_model),
    }
    for name, build in models.items():
        rate = images_per_second(build(), args.batch, args.repeats)
        print(f"{name:32s} {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
