"""CPU (or GPU) throughput of every generator, embedder and attribute predictor: images/s at batch 64.

Each model is built through its registered part, so this times exactly what a recipe
runs. Default models (DCGAN-DigiFace, the face-api nets) use their real weights from
the zoo; StyleGAN2/3 and the IResNets use random weights of the published sizes
(speed does not depend on the values). On CPU each model runs at 1 thread and at all
threads, alternated batch by batch after one warm-up batch per setting; the figures are
medians over ``--repeats`` timed batches (images/s from wall time, and process time per
batch), with the load average printed beside them.

    python benchmarks/models_speed.py                       # everything but StyleGAN3 (slow on CPU)
    python benchmarks/models_speed.py --only '*faceapi*' --batch 64
    python benchmarks/models_speed.py --stylegan3 --device cuda
"""

from __future__ import annotations

import argparse
import fnmatch
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def _stylegan2_256() -> nn.Module:
    from exface.generators import StyleGAN2
    from exface.testing.stylegan_pickles import build_stylegan2, write_network_pickle

    net = build_stylegan2(resolution=256, z_dim=512, w_dim=512, channels=128, channel_max=512,
                          num_mapping_layers=8, num_fp16_res=4, conv_clamp=256)
    return StyleGAN2(str(write_network_pickle(Path(tempfile.mkdtemp()) / "sg2.pkl", net)), truncation_psi=0.7)


def _stylegan3_256() -> nn.Module:
    from exface.generators import StyleGAN3
    from exface.models.stylegan3 import StyleGAN3Generator
    from exface.testing.stylegan_pickles import write_network_pickle

    net = StyleGAN3Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256,
                             synthesis_kwargs=dict(channel_base=32768, channel_max=512)).eval()
    return StyleGAN3(str(write_network_pickle(Path(tempfile.mkdtemp()) / "sg3.pkl", net)), truncation_psi=0.7)


def _models(stylegan3: bool) -> dict[str, tuple[str, Callable[[], nn.Module]]]:
    from exface.attributes.faceapi import FaceApiAgeGender, FaceApiExpression, FaceApiLandmarks68
    from exface.embedders.faceapi import FaceApiResNet34
    from exface.embedders.iresnet import IResNetEmbedder
    from exface.embedders.timm_embedder import TimmEmbedder
    from exface.generators import DCGANDigiFace

    models = {
        "DCGANDigiFace (64 px, real weights)": ("generator", DCGANDigiFace),
        "StyleGAN2 (256 px, config-F sizes)": ("generator", _stylegan2_256),
        "FaceApiResNet34 (150 px, real weights)": ("embedder", FaceApiResNet34),
        "IResNetEmbedder r50 (112 px)": ("embedder", lambda: IResNetEmbedder("r50")),
        "IResNetEmbedder r100 (112 px)": ("embedder", lambda: IResNetEmbedder("r100")),
        "TimmEmbedder resnet18 (112 px)": ("embedder", lambda: TimmEmbedder("resnet18")),
        "FaceApiLandmarks68 (112 px, real weights)": ("attribute", FaceApiLandmarks68),
        "FaceApiAgeGender (112 px, real weights)": ("attribute", FaceApiAgeGender),
        "FaceApiExpression (112 px, real weights)": ("attribute", FaceApiExpression),
    }
    if stylegan3:
        models["StyleGAN3-T (256 px)"] = ("generator", _stylegan3_256)
    return models


def _runner(kind: str, model: nn.Module, batch: int, device: torch.device):
    model = model.to(device).eval()
    if kind == "generator":
        return model.synthesize, model.sample_z(batch, seed=0, device=device)
    size = tuple(getattr(model, "input_size", (112, 112)))
    return model, torch.rand(batch, 3, *size, device=device) * 2 - 1


def throughput(kind: str, model: nn.Module, batch: int, repeats: int, device: torch.device,
               thread_settings: list[int]) -> dict[int, tuple[float, float]]:
    """``{threads: (images/s from the median wall time, median process seconds per batch)}``."""
    import statistics

    run, x = _runner(kind, model, batch, device)
    wall = {t: [] for t in thread_settings}
    proc = {t: [] for t in thread_settings}
    with torch.inference_mode():
        for t in thread_settings:  # warm-up per setting (thread pool, allocator, first-call costs)
            torch.set_num_threads(t)
            run(x)
        for _ in range(repeats):
            for t in thread_settings:
                torch.set_num_threads(t)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                p0, w0 = time.process_time(), time.perf_counter()
                run(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall[t].append(time.perf_counter() - w0)
                proc[t].append(time.process_time() - p0)
    return {t: (batch / statistics.median(wall[t]), statistics.median(proc[t])) for t in thread_settings}


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per model and thread setting")
    parser.add_argument("--threads", type=int, default=None, help="'all threads' setting (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="*", help="wildcard on the model names")
    parser.add_argument("--stylegan3", action="store_true", help="also time a 256-px StyleGAN3-T")
    args = parser.parse_args()
    all_threads = args.threads or torch.get_num_threads()
    device = torch.device(args.device)
    settings = [1, all_threads] if device.type == "cpu" and all_threads > 1 else [all_threads]
    load = os.getloadavg()
    print(f"torch {torch.__version__}, device {device}, thread settings {settings}, batch {args.batch}, "
          f"{args.repeats} timed batches each (medians), load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    cols = "".join(f" {f'img/s @{t}':>11s} {f'CPU s @{t}':>10s}" for t in settings)
    print(f"{'model':44s} {'kind':10s}{cols}")
    for name, (kind, build) in _models(args.stylegan3).items():
        if not fnmatch.fnmatch(name.lower(), args.only.lower()):
            continue
        res = throughput(kind, build(), args.batch, args.repeats, device, settings)
        row = "".join(f" {res[t][0]:11.1f} {res[t][1]:10.2f}" for t in settings)
        print(f"{name:44s} {kind:10s}{row}  (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
