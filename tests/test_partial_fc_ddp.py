"""PartialFC sharded over 2 gloo processes on the CPU: checkpoints hold the full centre matrix
(and its full optimizer state), gathered on rank 0 only (the other ranks keep just their block),
and resume on any number of ranks; validation scores all centres."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from exface.fr.module import FaceRecognitionModule
from exface.losses.partial_fc import PartialFC, gather_rows
from exface.testing.tiny import TinyEmbedder

CLASSES, DIM, WORLD = 5, 8, 2  # uneven shards: rank 0 holds classes [0, 3), rank 1 [3, 5)
OPTIMIZERS = ("sgd", "adamw")
STATE = {"sgd": ("momentum_buffer",), "adamw": ("exp_avg", "exp_avg_sq")}


def _module(seed: int) -> FaceRecognitionModule:
    """A tiny FR module with its PartialFC built (sharded when a process group exists)."""
    torch.manual_seed(seed)
    backbone = TinyEmbedder((16, 16), DIM, seed=seed).requires_grad_(True)
    module = FaceRecognitionModule(backbone, functools.partial(PartialFC, sample_rate=1.0, s=16.0, m2=0.3))
    module.loss = module._loss_factory(DIM, CLASSES)
    return module


def _optimizer(module: FaceRecognitionModule, kind: str) -> torch.optim.Optimizer:
    """The param groups of FaceRecognitionModule.configure_optimizers."""
    groups = [{"params": list(module.backbone.parameters()), "name": "backbone"},
              {"params": list(module.loss.parameters()), "name": "head"}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
    return torch.optim.AdamW(groups, lr=0.01)


def _batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=gen) * 2 - 1, torch.randint(0, CLASSES, (n,), generator=gen)


def _train_step(module: FaceRecognitionModule, opt: torch.optim.Optimizer, seed: int) -> None:
    import torch.distributed as dist

    images, labels = _batch(seed)
    opt.zero_grad()
    module.loss(module(images), labels).backward()
    if dist.is_initialized():  # what DDP does for the backbone (the centres are excluded from it)
        for p in module.backbone.parameters():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
    opt.step()


def _lightning_like_checkpoint(module: FaceRecognitionModule, opt: torch.optim.Optimizer) -> dict:
    checkpoint = {"state_dict": module.state_dict(), "optimizer_states": [opt.state_dict()]}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def _entry(checkpoint: dict, idx: int, name: str) -> torch.Tensor:
    """``loss.weight`` (name ``weight``) or its optimizer state ``name`` in a checkpoint."""
    if name == "weight":
        return checkpoint["state_dict"]["loss.weight"]
    return checkpoint["optimizer_states"][0]["state"][idx][name]


def _worker(rank: int, tmp: str) -> None:
    import types

    import torch.distributed as dist

    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=rank, world_size=WORLD)
    try:
        out: dict = {}
        for kind in OPTIMIZERS:
            module = _module(0)
            opt = _optimizer(module, kind)
            weight = module.loss.weight
            assert module.loss.world_size == WORLD
            _train_step(module, opt, seed=10 + rank)
            local = {"weight": weight.detach().clone(),
                     **{name: opt.state[weight][name].clone() for name in STATE[kind]}}
            walked = types.SimpleNamespace(optimizers=[opt])  # the trainer's optimizers: same slots
            module._trainer = walked
            slots_walked = module._pfc_state_slots({"optimizer_states": [opt.state_dict()]})
            module._trainer = None
            assert slots_walked == [(0, 4)]  # after the backbone's 4 parameters
            checkpoint = _lightning_like_checkpoint(module, opt)
            assert module._pfc_state_slots({"optimizer_states": [opt.state_dict()]}) == slots_walked
            # the live optimizer state is untouched: still this rank's block
            assert all(opt.state[weight][name].shape == weight.shape for name in STATE[kind])
            if rank != 0:  # not the writer: its checkpoint keeps the live block itself, nothing for all classes
                assert checkpoint["state_dict"]["loss.weight"].data_ptr() == weight.data_ptr()
                state = checkpoint["optimizer_states"][0]["state"][4]
                assert all(state[name] is opt.state[weight][name] for name in STATE[kind])
            # gather_centres: the full matrix on dst only (default rank 0); dst=None: on every rank
            gathered = module.loss.gather_centres()
            assert (gathered is None) == (rank != 0)
            assert module.loss.gather_centres(dst=None).shape == (CLASSES, DIM)
            if rank == 0:
                assert torch.equal(gathered, checkpoint["state_dict"]["loss.weight"])
            if rank == 0:  # Lightning: only rank 0 writes the file
                torch.save(checkpoint, tmp_path / f"{kind}.ckpt")
            dist.barrier()

            # resume on 2 ranks, a fresh module with other centres
            fresh = _module(100 + rank)
            fresh_opt = _optimizer(fresh, kind)
            loaded = torch.load(tmp_path / f"{kind}.ckpt", weights_only=True)
            fresh.on_load_checkpoint(loaded)
            fresh.load_state_dict(loaded["state_dict"])
            fresh_opt.load_state_dict(loaded["optimizer_states"][0])
            restored = {"weight": fresh.loss.weight.detach().clone(),
                        **{name: fresh_opt.state[fresh.loss.weight][name].clone() for name in STATE[kind]}}

            # a single-process checkpoint (written by the parent) resumes sharded
            single = torch.load(tmp_path / f"single_{kind}.ckpt", weights_only=True)
            from_single = _module(200 + rank)
            single_opt = _optimizer(from_single, kind)
            from_single.on_load_checkpoint(single)
            from_single.load_state_dict(single["state_dict"])
            single_opt.load_state_dict(single["optimizer_states"][0])
            from_single_state = {"weight": from_single.loss.weight.detach().clone(),
                                 **{n: single_opt.state[from_single.loss.weight][n].clone() for n in STATE[kind]}}

            # sharded validation: this rank's batch, scored against all centres
            module.eval()
            with torch.no_grad():
                emb = torch.cat([module(_batch(seed=50 + r, n=3 + r)[0]) for r in range(WORLD)])
                pred = module.loss.nearest_class(emb)
                images = _batch(seed=50 + rank, n=3 + rank)[0]  # uneven validation batches too
                labels = pred[3 * rank:3 * rank + 3 + rank].clone()
                labels[1::2] = (labels[1::2] + 1) % CLASSES  # about half right
                acc, n = module.validation_accuracy(images, labels)
            out[kind] = dict(start=module.loss.class_start, n=module.loss.num_local, local=local,
                             saved=checkpoint, restored=restored, from_single=from_single_state,
                             acc=float(acc), acc_n=n, pred=pred, labels=labels)

        # fewer classes than ranks (rank 1's block is empty), and an uneven gather to rank 1
        tiny = PartialFC(DIM, 1)
        assert tiny.num_local == 1 - rank
        got = tiny.gather_centres()
        out["tiny"] = None if got is None else (tuple(got.shape), torch.equal(got, tiny.weight.detach()))
        out["to_rank1"] = gather_rows(torch.full((rank + 1, 2), float(rank)), dst=1)

        # a checkpoint holding one rank's shard (as written before the fix) is refused when sharded
        legacy = {"state_dict": {"loss.weight": torch.zeros(3, DIM)}}
        try:
            _module(0).on_load_checkpoint(legacy)
            out["legacy_refused"] = False
        except RuntimeError as e:
            out["legacy_refused"] = "shard" in str(e)
        torch.save(out, tmp_path / f"out{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_partial_fc_checkpoints_the_full_matrix_and_validates_against_all_centres(tmp_path):
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    singles = {}
    for kind in OPTIMIZERS:  # single-process checkpoints, to be resumed on 2 ranks
        module = _module(7)
        opt = _optimizer(module, kind)
        _train_step(module, opt, seed=3)
        checkpoint = _lightning_like_checkpoint(module, opt)
        assert checkpoint["partial_fc"]["num_classes"] == CLASSES and checkpoint["partial_fc"]["full"]
        torch.save(checkpoint, tmp_path / f"single_{kind}.ckpt")
        singles[kind] = {"weight": module.loss.weight.detach().clone(),
                         **{n: opt.state[module.loss.weight][n].clone() for n in STATE[kind]}}

    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"out{r}.pt", weights_only=False) for r in range(WORLD)]
    assert res[0]["legacy_refused"] and res[1]["legacy_refused"]
    assert res[0]["tiny"] == ((1, DIM), True) and res[1]["tiny"] is None
    assert res[0]["to_rank1"] is None
    assert torch.equal(res[1]["to_rank1"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))

    for kind in OPTIMIZERS:
        r0, r1 = res[0][kind], res[1][kind]
        assert (r0["start"], r0["n"], r1["start"], r1["n"]) == (0, 3, 3, 2)
        saved = torch.load(tmp_path / f"{kind}.ckpt", weights_only=True)  # rank 0's file
        assert saved["partial_fc"] == {"num_classes": CLASSES, "full": True, "saved_world_size": WORLD,
                                       "optimizer_params": [[0, 4]]}
        idx = saved["partial_fc"]["optimizer_params"][0][1]
        # rank 1 does not write: its checkpoint dict holds only its own block, and says so
        assert r1["saved"]["partial_fc"] == {**saved["partial_fc"], "full": False, "class_start": 3, "num_local": 2}
        with pytest.raises(RuntimeError, match="shard"):
            _module(0).on_load_checkpoint(r1["saved"])
        names = ["weight", *STATE[kind]]
        for name in names:
            full = torch.cat([r0["local"][name], r1["local"][name]])
            assert full.shape == (CLASSES, DIM)
            assert torch.equal(_entry(saved, idx, name), full), (kind, name)
            assert torch.equal(_entry(r0["saved"], idx, name), full), (kind, name)
            # only rank 0 assembled the full matrix: rank 1 kept just its block
            assert torch.equal(_entry(r1["saved"], idx, name), r1["local"][name]), (kind, name)
            assert _entry(r1["saved"], idx, name).shape == (2, DIM)
            for r in (r0, r1):  # resumed on 2 ranks: each rank its own block
                assert torch.equal(r["restored"][name], r["local"][name]), (kind, name)
                block = singles[kind][name][r["start"]:r["start"] + r["n"]]
                assert torch.equal(r["from_single"][name], block), (kind, name)

        # resumed in one process: the full matrix and optimizer state
        one = _module(300)
        one_opt = _optimizer(one, kind)
        loaded = torch.load(tmp_path / f"{kind}.ckpt", weights_only=True)
        one.on_load_checkpoint(loaded)
        one.load_state_dict(loaded["state_dict"])
        one_opt.load_state_dict(loaded["optimizer_states"][0])
        for name in names:
            full = torch.cat([r0["local"][name], r1["local"][name]])
            got = one.loss.weight.detach() if name == "weight" else one_opt.state[one.loss.weight][name]
            assert torch.equal(got, full), (kind, name)

        # sharded validation = unsharded validation on the full matrix (same backbone: DDP-averaged)
        one.eval()
        images = torch.cat([_batch(seed=50 + r, n=3 + r)[0] for r in range(WORLD)])
        labels = torch.cat([r0["labels"], r1["labels"]])
        with torch.no_grad():
            acc, n = one.validation_accuracy(images, labels)
            emb = torch.nn.functional.normalize(one(images), dim=1)
            ref_pred = (emb @ torch.nn.functional.normalize(one.loss.weight, dim=1).T).argmax(1)
        assert n == r0["acc_n"] == r1["acc_n"] == 7
        assert torch.equal(r0["pred"], ref_pred) and torch.equal(r1["pred"], ref_pred)
        assert 0 < float(acc) < 1
        assert r0["acc"] == r1["acc"] == pytest.approx(float(acc), abs=1e-6)



# ---------------------------------------------------------------- a real Lightning DDP run (ddp_spawn, CPU)

class _Record(pl.Callback):
    """Save each rank's centres, their SGD momentum and the validation accuracy at ``when``."""

    def __init__(self, folder: str, tag: str, when: str) -> None:
        self.folder, self.tag, self.when = folder, tag, when

    def _save(self, trainer: pl.Trainer, pl_module: FaceRecognitionModule) -> None:
        w = pl_module.loss.weight
        state = trainer.optimizers[0].state.get(w, {})
        acc = trainer.callback_metrics.get("val/accuracy")
        torch.save({"weight": w.detach().clone(), "momentum_buffer": state.get("momentum_buffer"),
                    "start": pl_module.loss.class_start, "n": pl_module.loss.num_local,
                    "acc": None if acc is None else float(acc)},
                   Path(self.folder) / f"{self.tag}_rank{trainer.global_rank}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        if self.when == "start":
            self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.when == "end":
            self._save(trainer, pl_module)


class _RecordingModule(FaceRecognitionModule):
    """Also saves, on every rank, what its checkpoint dict holds for the centres after on_save_checkpoint."""

    record_to: str | None = None

    def on_save_checkpoint(self, checkpoint) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.record_to is None:
            return
        w, live = checkpoint["state_dict"]["loss.weight"], self.loss.weight
        idx = checkpoint["partial_fc"]["optimizer_params"][0][1]
        momentum = checkpoint["optimizer_states"][0]["state"][idx]["momentum_buffer"]
        torch.save({"shape": tuple(w.shape), "momentum_shape": tuple(momentum.shape),
                    "full": checkpoint["partial_fc"]["full"], "weight_is_live": w.data_ptr() == live.data_ptr(),
                    "momentum_is_live": momentum is self.trainer.optimizers[0].state[live]["momentum_buffer"]},
                   Path(self.record_to) / f"saved_rank{self.global_rank}.pt")


def _fit(tmp_path: Path, devices: int, max_steps: int, tag: str, when: str, ckpt_path: str | None = None,
         batch_size: int = 2) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from exface.fr.datamodule import IdentityFolderDataModule

    pl.seed_everything(0, verbose=False)
    dm = IdentityFolderDataModule(str(tmp_path / "ds"), (16, 16), batch_size=batch_size, num_workers=0, in_memory=True,
                                  val_fraction=0.25, flip=False)
    model = _RecordingModule(TinyEmbedder((16, 16), DIM).requires_grad_(True),
                             functools.partial(PartialFC, sample_rate=1.0, s=16.0, m2=0.3), lr=0.1)
    if tag == "first":
        model.record_to = str(tmp_path)
    save = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=2, save_top_k=0)
    strategy = {"strategy": "ddp_spawn"} if devices > 1 else {}
    trainer = pl.Trainer(accelerator="cpu", devices=devices, max_steps=max_steps, val_check_interval=2,
                         num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), callbacks=[save, _Record(str(tmp_path), tag, when)],
                         **strategy)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)


@pytest.mark.slow
def test_lightning_ddp_checkpoint_resumes_each_ranks_centres(tmp_path):
    from exface.testing.identity_folder import make_identity_folder

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    make_identity_folder(tmp_path / "ds", num_identities=CLASSES, images_per_identity=4, size=16)
    _fit(tmp_path, devices=2, max_steps=2, tag="first", when="end")  # saves last.ckpt at step 2
    first = [torch.load(tmp_path / f"first_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [(f["start"], f["n"]) for f in first] == [(0, 3), (3, 2)]
    assert first[0]["acc"] is not None and first[0]["acc"] == first[1]["acc"]  # the same global value on each
    last = tmp_path / "step2.ckpt"  # a copy: the resumed runs write last.ckpt again
    shutil.copy(tmp_path / "ckpt" / "last.ckpt", last)
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 2 and saved["partial_fc"]["full"]
    idx = saved["partial_fc"]["optimizer_params"][0][1]
    full = {"weight": saved["state_dict"]["loss.weight"],
            "momentum_buffer": saved["optimizer_states"][0]["state"][idx]["momentum_buffer"]}
    for name, value in full.items():
        assert torch.equal(value, torch.cat([f[name] for f in first])), name
    # what each rank's on_save_checkpoint left in its checkpoint: the full matrix on rank 0 (which
    # wrote the file above), only its own live block on rank 1
    built = [torch.load(tmp_path / f"saved_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert (built[0]["shape"], built[0]["momentum_shape"], built[0]["full"]) == ((CLASSES, DIM), (CLASSES, DIM), True)
    assert built[1] == {"shape": (2, DIM), "momentum_shape": (2, DIM), "full": False,
                        "weight_is_live": True, "momentum_is_live": True}

    _fit(tmp_path, devices=2, max_steps=3, tag="resumed", when="start", ckpt_path=str(last))
    for r in range(WORLD):
        resumed = torch.load(tmp_path / f"resumed_rank{r}.pt", weights_only=True)
        for name in full:
            assert torch.equal(resumed[name], first[r][name]), (r, name)

    # one process with the same global batch (2 ranks x 2 -> 1 x 4): each centre block is gathered back
    _fit(tmp_path, devices=1, max_steps=3, tag="single", when="start", ckpt_path=str(last), batch_size=4)
    single = torch.load(tmp_path / "single_rank0.pt", weights_only=True)
    for name, value in full.items():
        assert torch.equal(single[name], value), name
    # another global batch would resume with another scaled rate and schedule: refused
    from exface.errors import ExfaceStateError

    with pytest.raises(ExfaceStateError, match=r"global batch .*: checkpoint 4, this run 2"):
        _fit(tmp_path, devices=1, max_steps=3, tag="refused", when="start", ckpt_path=str(last))


# ---- clipping and empty blocks under 2 gloo ranks -------------------------------------------

CLIP = 0.05


def _clip_worker(rank: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{Path(tmp) / 'pg_clip'}", rank=rank, world_size=WORLD)
    try:
        module = _module(0)
        module.clip_grad_norm = CLIP
        full = torch.load(Path(tmp) / "full_weight.pt")
        with torch.no_grad():
            module.loss.weight.copy_(full[module.loss.class_start:module.loss.class_start + module.loss.num_local])
        images, labels = _batch(3, n=4 * WORLD)
        sl = slice(rank * 4, (rank + 1) * 4)
        module.loss(module(images[sl]), labels[sl]).backward()
        for p in module.backbone.parameters():  # DDP's average
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        module.configure_gradient_clipping(_optimizer(module, "sgd"))
        head = gather_rows(module.loss.weight.grad)
        backbone = torch.cat([p.grad.flatten() for p in module.backbone.parameters()])
        # empty blocks: fewer classes than ranks, and a rank that samples no centre
        one = PartialFC(DIM, 1, s=16.0, m2=0.3)
        emb = torch.randn(2, DIM, requires_grad=True)
        loss_one = one(emb, torch.zeros(2, dtype=torch.long))
        loss_one.backward()
        sparse = PartialFC(DIM, 40, sample_rate=0.04, s=16.0, m2=0.3)  # 20 per rank, int(0.8) = 0 sampled
        loss_sparse = sparse(torch.randn(2, DIM, requires_grad=True), torch.tensor([30, 31]))
        loss_sparse.backward()
        ok = bool(torch.isfinite(loss_one) and torch.isfinite(loss_sparse) and torch.isfinite(emb.grad).all())
        torch.save({"head": head, "backbone": backbone, "empty_ok": ok, "n_one": one.num_local},
                   Path(tmp) / f"clip{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_head_is_clipped_as_one_matrix_and_empty_blocks_train(tmp_path):
    import torch.multiprocessing as mp

    ref = _module(0)
    ref.clip_grad_norm = CLIP
    torch.save(ref.loss.weight.detach().clone(), tmp_path / "full_weight.pt")
    images, labels = _batch(3, n=4 * WORLD)
    ref.loss(ref(images), labels).backward()
    assert ref.loss.weight.grad.norm() > 2 * CLIP  # the clip binds
    ref.configure_gradient_clipping(_optimizer(ref, "sgd"))
    mp.spawn(_clip_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"clip{r}.pt") for r in range(WORLD))
    torch.testing.assert_close(r0["head"], ref.loss.weight.grad, atol=1e-6, rtol=1e-5)
    assert abs(float(r0["head"].norm()) - CLIP) < 1e-5  # the whole head, not each block, at the bound
    torch.testing.assert_close(r0["backbone"], r1["backbone"], atol=0, rtol=0)  # replicas stay identical
    ref_backbone = torch.cat([p.grad.flatten() for p in ref.backbone.parameters()])
    torch.testing.assert_close(r0["backbone"], ref_backbone, atol=1e-6, rtol=1e-5)
    assert r0["empty_ok"] and r1["empty_ok"] and (r0["n_one"], r1["n_one"]) == (1, 0)
