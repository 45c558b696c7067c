"""Partial FC (An et al. 2022): margin softmax over a sampled subset of class centres.

With millions of identities the full ``[num_classes, dim]`` centre matrix and its logits
dominate memory and time. Partial FC keeps all centres but, at each training step,
uses only the centres of the classes present in the batch (positives) plus a random
subset of the others (negatives), ``sample_rate * num_classes`` in all; only those
receive gradients. Under ``torch.distributed`` the centres are also sharded: rank ``r``
owns a contiguous block of classes, embeddings and labels are all-gathered, each rank
computes logits against its own centres, and the softmax is reduced across ranks.

This is arcface_torch's ``PartialFC_V2`` algorithm, written for exface's loss contract.
Single-process with ``sample_rate=1`` it computes exactly the full margin softmax.

Distributed notes (the training module must honour them):

- The centres differ per rank, so DDP must not average their gradients: call
  :func:`exclude_partial_fc_from_ddp` on the module DDP wraps, before it is wrapped.
- The gradient flowing back into each rank's embeddings is multiplied by the world
  size, so that DDP's averaging of backbone gradients yields the gradient of the
  global-batch loss (as arcface_torch does).
- Every rank must pass the same batch size (use ``drop_last=True``).
- Sharding happens when the loss first runs with ``torch.distributed`` initialized
  (or at construction if it already is), before any optimizer step.
- Checkpoints must hold the full centre matrix (and the full optimizer state of the
  centres), since only rank 0 writes the file: call :meth:`PartialFC.gather_centres` on every
  rank before saving (it is collective) -- it assembles the full tensor on rank 0 only, the
  other ranks just send their block, so no rank but the writer ever holds memory for all
  classes -- and cut this rank's block with :meth:`PartialFC.local_block` when loading
  (``FaceRecognitionModule`` does both in its checkpoint hooks).
- To score against all centres (validation), gather the embeddings with
  :func:`all_gather_rows` and call :meth:`PartialFC.nearest_class` on every rank.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from exface.losses.base import FRLoss
from exface.losses.margin import MarginFunction, _check_labels, normalized_cosine

__all__ = ["PartialFC", "all_gather_rows", "exclude_partial_fc_from_ddp", "gather_rows"]

log = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(class_start, num_local)`` of ``rank``: contiguous blocks, the first ones one larger."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _padded_rows(x: Tensor, world: int) -> tuple[Tensor, list[int]]:
    """Collective: every rank's row count, and ``x`` (detached, contiguous) padded with zero rows
    to the largest, the shape the gather collectives need."""
    x = x.detach().contiguous()
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    counts = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    sizes = [int(c) for c in counts]
    top = max(sizes)
    if x.shape[0] < top:
        x = torch.cat([x, x.new_zeros((top - x.shape[0], *x.shape[1:]))])
    return x, sizes


def all_gather_rows(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated along dim 0, in rank order (no autograd); collective.

    The ranks' first dimensions may differ (e.g. uneven centre blocks): the tensors are padded
    to the largest for the collective, then cut. Without a process group: ``x`` itself.
    """
    _, world = _world()
    if world == 1:
        return x
    x, sizes = _padded_rows(x, world)
    top = max(sizes)
    if top == 0:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat([p[:size] for p, size in zip(parts, sizes)])


def gather_rows(x: Tensor, dst: int = 0) -> Tensor | None:
    """Every rank's ``x`` concatenated along dim 0, in rank order, on rank ``dst`` only (no autograd).

    Collective: every rank must call it (with the same ``dst``, a global rank). Rank ``dst``
    returns the concatenation; the other ranks send their ``x`` and return None, so unlike
    :func:`all_gather_rows` only ``dst`` ever allocates memory for all the rows (this is what
    checkpointing millions of class centres needs: only the rank that writes the file holds
    them). Works with gloo and nccl (``torch.distributed.gather``; under nccl ``x`` must be on
    this rank's GPU). The ranks' first dimensions may differ (e.g. uneven centre blocks): the
    tensors are padded to the largest for the collective, then cut on ``dst`` (when all are the
    same size the gathered buffer is returned without a further copy). Without a process group:
    ``x`` itself.
    """
    rank, world = _world()
    if world == 1:
        return x
    x, sizes = _padded_rows(x, world)
    top = max(sizes)
    if top == 0:
        return x if rank == dst else None
    if rank != dst:
        dist.gather(x, None, dst=dst)
        return None
    buf = x.new_empty((world * top, *x.shape[1:]))
    dist.gather(x, list(buf.split(top)), dst=dst)  # views: the parts land in one buffer
    if all(size == top for size in sizes):
        return buf
    return torch.cat([buf[r * top : r * top + size] for r, size in enumerate(sizes)])


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor; backward returns this rank's slice of the summed gradient,
    times the world size (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), world, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n] * ctx.world


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy when each rank holds a column block of the logits.

    ``labels`` are local column indices, ``-1`` where the target lives on another rank.
    Max, partition function and target logit are all-reduced, so every rank returns the
    same loss; the backward is the usual ``(softmax - onehot) / N`` on local columns.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        logits = logits.float()
        if logits.shape[1]:
            mx = logits.max(dim=1, keepdim=True).values
        else:  # this rank holds no centre (fewer classes than ranks) or sampled none: the others decide
            mx = logits.new_full((logits.shape[0], 1), float("-inf"))
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        exp = (logits - mx).exp()
        z = exp.sum(dim=1, keepdim=True)
        dist.all_reduce(z, op=dist.ReduceOp.SUM)
        rows = torch.nonzero(labels >= 0).squeeze(1)
        target = torch.zeros_like(mx)
        target[rows, 0] = logits[rows, labels[rows]]
        dist.all_reduce(target, op=dist.ReduceOp.SUM)
        loss = (z.log() + mx - target).mean()
        ctx.save_for_backward(exp / z, rows, labels)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        prob, rows, labels = ctx.saved_tensors
        g = prob.clone()
        g[rows, labels[rows]] -= 1.0
        return g * (grad / prob.shape[0]), None


class PartialFC(FRLoss):
    """Partial FC: margin softmax over positives + sampled negative centres, shardable across ranks.

    Args:
        embedding_dim, num_classes: as for every FR loss.
        sample_rate: fraction of (this rank's) centres used per training step; all
            classes present in the batch are always among them. 1.0 uses every centre
            (arcface_torch's default: plain model parallelism). In eval mode every
            centre is used, so validation losses are comparable.
        s, m1, m2, m3: the combined margin ``cos(m1 * theta + m2) - m3`` and its scale
            (defaults: ArcFace, s=64, m=0.5).
        margin: a ready :class:`~exface.losses.margin.MarginFunction` (or any callable
            ``(cosine, labels) -> logits`` that leaves rows labelled ``-1`` without a
            margin); overrides ``s``/``m1``/``m2``/``m3``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        sample_rate: float = 1.0,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        margin: MarginFunction | None = None,
    ) -> None:
        super().__init__(embedding_dim, num_classes)
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)
        self.margin = margin if margin is not None else MarginFunction(s=s, m1=m1, m2=m2, m3=m3)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_dim)))
        self.class_start, self.num_local, self.world_size = 0, num_classes, 1
        #: Global class indices of the centres used in the last training step (for inspection).
        self.last_sampled: Tensor | None = None
        if _world()[1] > 1:
            self.shard_()

    def shard_(self) -> None:
        """Keep only this rank's block of centres (in place; the Parameter object is kept,
        so an optimizer built earlier still holds it, provided it has not stepped yet)."""
        rank, world = _world()
        if self.world_size == world:
            return
        if self.world_size != 1:
            raise RuntimeError(f"PartialFC is already sharded for {self.world_size} ranks, now {world}")
        self.class_start, self.num_local = _shard(self.num_classes, rank, world)
        self.world_size = world
        with torch.no_grad():
            self.weight.data = self.weight.data[self.class_start : self.class_start + self.num_local].clone()
        log.info("PartialFC rank %d/%d holds classes [%d, %d)", rank, world, self.class_start,
                 self.class_start + self.num_local)

    def gather_centres(self, local: Tensor | None = None, dst: int | None = 0) -> Tensor | None:
        """The full ``[num_classes, ...]`` tensor assembled from every rank's block ``local``
        (default: the centres; also e.g. their optimizer state).

        Collective when sharded: every rank must call it, with tensors of its own block's rows.
        The full tensor is built on global rank ``dst`` only (default 0, the rank that writes
        checkpoints); the other ranks send their block and get None, so they never allocate
        memory proportional to the number of classes (see :func:`gather_rows`). ``dst=None``:
        every rank gets the full tensor (an all-gather; memory for all classes on every rank).
        Unsharded: ``local`` as is.
        """
        local = self.weight.detach() if local is None else local
        if self.world_size == 1:
            return local
        if local.shape[0] != self.num_local:
            raise ValueError(f"expected this rank's {self.num_local} rows, got a tensor of shape {tuple(local.shape)}")
        full = all_gather_rows(local) if dst is None else gather_rows(local, dst)
        if full is not None:
            assert full.shape[0] == self.num_classes, (full.shape, self.num_classes)
        return full

    def local_block(self, full: Tensor) -> Tensor:
        """This rank's rows ``[class_start, class_start + num_local)`` of a full ``[num_classes, ...]``
        tensor (a copy; unsharded: ``full`` as is)."""
        if full.shape[0] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} rows (all classes), got shape {tuple(full.shape)}")
        if self.world_size == 1:
            return full
        return full[self.class_start : self.class_start + self.num_local].clone()

    @torch.no_grad()
    def nearest_class(self, embeddings: Tensor) -> Tensor:
        """Global index of the centre of highest cosine for each row of ``embeddings``, over all classes.

        Sharded, this is collective and ``embeddings`` must be the same on every rank (all-gather
        them first, see :func:`all_gather_rows`): each rank scores its block, the best over ranks
        wins (ties: the lowest class index, as ``argmax`` over the full matrix).
        """
        emb = F.normalize(embeddings.float(), dim=1)
        centres = F.normalize(self.weight.float(), dim=1)
        if self.world_size == 1:
            return (emb @ centres.T).argmax(1)
        if self.num_local > 0:
            scores = emb @ centres.T
            local = scores.argmax(1)
            best = scores.gather(1, local[:, None])[:, 0]
            index = local + self.class_start
        else:  # fewer classes than ranks
            best = emb.new_full((emb.shape[0],), float("-inf"))
            index = torch.full((emb.shape[0],), -1, dtype=torch.long, device=emb.device)
        world = dist.get_world_size()
        bests, indices = [torch.empty_like(best) for _ in range(world)], [torch.empty_like(index) for _ in range(world)]
        dist.all_gather(bests, best.contiguous())
        dist.all_gather(indices, index.contiguous())
        winner = torch.stack(bests).argmax(0)  # first max: the lowest rank, i.e. the lowest class
        return torch.stack(indices).gather(0, winner[None])[0]

    def _sample(self, local_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Pick centres: all positives + random negatives. Returns (index, relabelled labels)."""
        num_sample = int(self.sample_rate * self.num_local)
        present = local_labels >= 0
        positives = torch.unique(local_labels[present])  # sorted
        if num_sample > positives.numel():
            score = torch.rand(self.num_local, device=local_labels.device)
            score[positives] = 2.0  # above any rand(): positives always win
            index = score.topk(num_sample).indices.sort().values
        else:
            index = positives
        relabelled = local_labels.clone()
        relabelled[present] = torch.searchsorted(index, local_labels[present])
        return index, relabelled

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        _check_labels(labels, self.num_classes)
        _, world = _world()
        if world > 1:
            self.shard_()
            sizes = torch.tensor([embeddings.shape[0], -embeddings.shape[0]], device=embeddings.device)
            dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
            if int(sizes[0]) != -int(sizes[1]):
                raise ValueError(
                    f"PartialFC needs the same batch size on every rank, got between {-int(sizes[1])} "
                    f"and {int(sizes[0])}; use drop_last=True in the training DataLoader"
                )
            embeddings = _AllGather.apply(embeddings)
            gathered = [torch.empty_like(labels) for _ in range(world)]
            dist.all_gather(gathered, labels.contiguous())
            labels = torch.cat(gathered)
        elif self.world_size > 1:
            raise RuntimeError("PartialFC is sharded but torch.distributed is no longer initialized")

        local = labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))
        weight = self.weight
        if self.training and self.sample_rate < 1.0:
            index, local = self._sample(local)
            weight = self.weight[index]
            self.last_sampled = index + self.class_start
        logits = self.margin(normalized_cosine(embeddings, weight), local)
        if world > 1:
            return _ShardedCrossEntropy.apply(logits, local)
        return F.cross_entropy(logits, local)

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
                f"sample_rate={self.sample_rate}, margin={self.margin!r}, "
                f"local=[{self.class_start}, {self.class_start + self.num_local})")


def sharded_parameters(root: nn.Module) -> set[nn.Parameter]:
    """The centre matrices of the PartialFC heads under ``root`` that are sharded across ranks."""
    return {m.weight for m in root.modules() if isinstance(m, PartialFC) and m.world_size > 1}


@torch.no_grad()
def clip_grad_norm_(params, max_norm: float, sharded: set[nn.Parameter] | frozenset = frozenset()) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` when some of ``params`` are column blocks held one per rank.

    The norm is that of the whole, unsharded gradient: the squared norms of the ``sharded``
    parameters are summed over ranks (replicated ones, such as a DDP backbone's, are counted
    once), so every rank scales by the same factor, as one process holding all the centres
    would. With no sharded parameter it is torch's function.
    """
    params = [p for p in params if p.grad is not None]
    local = [p for p in params if p in sharded]
    if not local or not dist.is_available() or not dist.is_initialized():
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    device = params[0].grad.device
    sq = torch.zeros(2, dtype=torch.float64, device=device)  # [sharded, replicated]
    for p in params:
        sq[0 if p in sharded else 1] += p.grad.detach().double().pow(2).sum()
    shard_sq = sq[:1].clone()
    dist.all_reduce(shard_sq, op=dist.ReduceOp.SUM)
    total = (shard_sq[0] + sq[1]).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.to(p.grad.dtype))
    return total.float()


def exclude_partial_fc_from_ddp(root: nn.Module) -> list[str]:
    """Tell DistributedDataParallel not to synchronize the centres of every PartialFC under ``root``.

    Call on the module DDP will wrap (e.g. in a LightningModule's ``__init__``). Returns
    the parameter names excluded. Adds to any names already excluded.
    """
    names = [f"{prefix}.weight" if prefix else "weight"
             for prefix, m in root.named_modules() if isinstance(m, PartialFC)]
    existing = list(getattr(root, "_ddp_params_and_buffers_to_ignore", []))
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(root, sorted(set(existing + names)))
    return names
