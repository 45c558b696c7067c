"""FR training throughput: FaceRecognitionModule under Lightning vs a bare PyTorch loop.

Both sides train the same backbone with the same loss (CosFace), optimizer (SGD, momentum
0.9, weight decay 5e-4), batch and precision, on the same in-memory random batches (so
data loading is not measured: what differs is the training loop). They are alternated in
one process, ``--repeats`` times; each repeat runs ``--warmup`` untimed steps then
``--steps`` timed ones. Printed: median images/s (wall and process time), the ratio, thread
count and load average. The bare loop is what a competent user writes: ``zero_grad(set_to_none)``,
forward, loss, backward, per-group ``clip_grad_norm_`` when ``--clip`` is given, step,
scheduler step; with ``--precision 16-mixed`` it uses ``torch.autocast`` + ``GradScaler`` (CUDA).

    PYTHONPATH=. python benchmarks/fr_throughput.py --backbone mobilefacenet --batch 64        # CPU
    PYTHONPATH=. python benchmarks/fr_throughput.py --backbone r50 --batch 128 --precision 16-mixed --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def make_parts(args, num_classes: int):
    from exface.embedders.iresnet import IResNetEmbedder
    from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
    from exface.losses.margin import CosFace

    torch.manual_seed(0)
    if args.backbone == "mobilefacenet":
        net = MobileFaceNetEmbedder(128, input_size=args.size, net_size=args.size)
    else:
        net = IResNetEmbedder(args.backbone, fp16=False)
    return net, (lambda d, c: CosFace(d, c, s=64.0, m=0.35))


def batches(args, num_classes: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(args.batch, 3, args.size, args.size, generator=g) * 2 - 1,
             torch.randint(0, num_classes, (args.batch,), generator=g)) for _ in range(n)]


class _Data(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def run_lightning(args, data, num_classes: int) -> tuple[float, float]:
    """Seconds (wall, process) of the timed steps of FaceRecognitionModule.fit."""
    import lightning.pytorch as pl

    from exface.fr.module import FaceRecognitionModule

    class DM(pl.LightningDataModule):
        batch_size = args.batch

        def __init__(self):
            super().__init__()
            self.num_classes = num_classes

        def train_dataloader(self):  # batches are pre-made: batch_size=None passes them through
            return torch.utils.data.DataLoader(_Data(data), batch_size=None, shuffle=False)

    class Timer(pl.Callback):
        t0 = p0 = None

        def on_train_batch_start(self, trainer, *a):
            if trainer.global_step == args.warmup:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                self.t0, self.p0 = time.perf_counter(), time.process_time()

        def on_train_end(self, trainer, *a):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t1, self.p1 = time.perf_counter(), time.process_time()

    net, loss = make_parts(args, num_classes)
    model = FaceRecognitionModule(net, loss, lr=0.1, clip_grad_norm=args.clip)
    timer = Timer()
    trainer = pl.Trainer(max_steps=args.warmup + args.steps, accelerator="gpu" if args.device == "cuda" else "cpu",
                         devices=1, precision=args.precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=DM())
    return timer.t1 - timer.t0, timer.p1 - timer.p0


def run_bare(args, data, num_classes: int) -> tuple[float, float]:
    """Seconds (wall, process) of the timed steps of a plain PyTorch loop (same parts and schedule)."""
    from exface.fr.module import lr_factor

    dev = torch.device(args.device)
    net, loss_factory = make_parts(args, num_classes)
    loss = loss_factory(net.embedding_dim, num_classes)
    net.to(dev).train()
    loss.to(dev).train()
    groups = [{"params": list(net.parameters())}, {"params": list(loss.parameters())}]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
    total = args.warmup + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, 0, "poly"))
    amp = args.precision == "16-mixed"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")
    t0 = p0 = 0.0
    for step, (x, y) in enumerate(data[:total]):
        if step == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0, p0 = time.perf_counter(), time.process_time()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp and dev.type == "cuda"):
            out = loss(net.embed_raw(net.preprocess(x)), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(out).backward()
        if args.clip is not None:
            scaler.unscale_(opt)
            for g in opt.param_groups:
                torch.nn.utils.clip_grad_norm_(g["params"], args.clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - p0


def _float_or_none(text: str) -> float | None:
    """``--clip`` values: a number, or ``none``/``None`` (clipping off)."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilefacenet", help="mobilefacenet or an IResNet arch (r18, r50, ...)")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--precision", default="32-true", help="32-true, or 16-mixed (CUDA AMP)")
    ap.add_argument("--clip", type=_float_or_none, default=5.0,
                    help="per-group gradient clipping max norm; none (or None): off")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    data = batches(args, args.classes, args.warmup + args.steps)
    res = {"lightning": [], "bare": []}
    for r in range(args.repeats):
        for name, fn in (("lightning", run_lightning), ("bare", run_bare)) if r % 2 == 0 else \
                (("bare", run_bare), ("lightning", run_lightning)):
            wall, proc = fn(args, data, args.classes)
            res[name].append((wall, proc))
            print(f"repeat {r} {name:<9}: {args.steps * args.batch / wall:8.1f} img/s wall, "
                  f"{proc:.1f} s process", flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(p for _, p in v)) for k, v in res.items()}
    ips = {k: args.steps * args.batch / w for k, (w, _) in med.items()}
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.backbone} {args.size}px, batch {args.batch}, {args.precision}, CosFace, SGD, clip {args.clip}; {dev}; "
          f"load avg {os.getloadavg()[0]:.1f}; median of {args.repeats}, {args.steps} timed steps each")
    for k in ("lightning", "bare"):
        print(f"  {k:<9}: {ips[k]:8.1f} img/s (wall {med[k][0]:.2f} s, process {med[k][1]:.2f} s)")
    print(f"  FaceRecognitionModule / bare loop: {ips['lightning'] / ips['bare']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
