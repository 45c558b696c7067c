"""``exface age-report``: editors side by side on held-out start latents, under one identity bound and step budget.

Every editor (the trained RL policy, the InterFaceGAN boundary walk, the gradient walk, or
any other :class:`~exface.editing.base.LatentEditor`) runs in the same
:class:`~exface.agerl.env.AgeEditEnv` (same parts, identity bound, per-step bound, step
budget and termination) on the same ``num_starts`` start latents, drawn from
``start_seed`` (choose it apart from the training rollouts' seeds, which are
``seed * 1000003 + rollout``), once per target offset (default -15, +15, +30 years from each
start's own predicted age). Per editor and target it reports:

- **success rate**: final ``|age - target| <= tolerance`` with the identity bound held
  (by the environment's embedder, the one the reward uses);
- mean final age error (years) and mean age change;
- mean identity similarity of the final face to the start face: by ``evaluator`` (an
  embedder that takes no part in the reward) when one is given, and by the reward's
  embedder always (labelled as such: judging identity only with the network that steered
  is not independent evidence);
- the share of episodes whose bound held, and the mean number of steps used.

Files in ``output_dir``: ``report.json`` (all figures, the settings and every editor's
description), ``report.md`` (the table), ``curves.png`` (mean age change vs mean identity
similarity along the steps, per editor and target) and ``grid_<editor>_<target>.png``
(rows: start latents; columns: steps 0..T).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from torch import Tensor

from exface.agerl.env import AgeEditEnv, Trajectory
from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.commands import command
from exface.editing.base import LatentEditor
from exface.embedders.base import IdentityEmbedder
from exface.exfacegan.latent_bank import part_record
from exface.tensors import to_uint8

__all__ = ["age_report", "editor_label", "summarize"]


def editor_label(editor: LatentEditor) -> str:
    return type(editor).__name__


def _describe(editor: LatentEditor) -> dict:
    args = {k: v for k, v in vars(editor).items() if isinstance(v, (int, float, str, bool, list, tuple)) or v is None}
    return {"class": type(editor).__name__, "args": args}


class _Evaluators:
    """The independent judges: an identity embedder and an age predictor, each behind its own crop."""

    def __init__(self, env: AgeEditEnv, embedder: IdentityEmbedder | None, embedder_aligner: Aligner | None,
                 age: AttributePredictor | None, age_aligner: Aligner | None, attribute: str, batch_size: int) -> None:
        self.env, self.embedder, self.age, self.attribute = env, embedder, age, attribute
        self.batch_size = int(batch_size)
        self.embedder_aligner = embedder_aligner or env.aligner
        self.age_aligner = age_aligner or env.aligner

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> dict[str, Tensor]:
        """``{"embedding": [N, D], "age": [N]}`` for what is configured."""
        env, out = self.env, {}
        embs, ages = [], []
        for i in range(0, latents.shape[0], self.batch_size):
            images = env.generator.synthesize(latents[i : i + self.batch_size].to(env.device), space=env.space)
            if self.embedder is not None:
                x = _fit_size(self.embedder_aligner(images), self.embedder.input_size)
                embs.append(self.embedder(x.to(self.embedder.device)).float().cpu())
            if self.age is not None:
                x = _fit_size(self.age_aligner(images), self.age.input_size)
                ages.append(self.age(x)[self.attribute].float().cpu())
        if embs:
            out["embedding"] = torch.cat(embs)
        if ages:
            out["age"] = torch.cat(ages)
        return out


def _fit_size(x: Tensor, size) -> Tensor:
    import torch.nn.functional as F

    size = tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=x.shape[-1] > size[-1])


def summarize(traj: Trajectory, tolerance: float, evaluator_similarity: Tensor | None = None,
              evaluator_age_change: Tensor | None = None) -> dict:
    """The report's figures for one editor and one target."""
    final_err = (traj.value[-1] - traj.target).abs()
    out = {
        "success_rate": float(traj.success.float().mean()),
        "mean_final_age_error": float(final_err.mean()),
        "median_final_age_error": float(final_err.median()),
        "mean_age_change": float((traj.value[-1] - traj.value[0]).mean()),
        "bound_held_rate": float(traj.bound_held.float().mean()),
        "mean_similarity_reward_embedder": float(traj.similarity[-1].mean()),
        "mean_steps_used": float(traj.steps_used.float().mean()),
        "within_tolerance_rate": float((final_err <= tolerance).float().mean()),
        "curve": {"age_change": (traj.value - traj.value[0]).mean(1).tolist(),
                  "similarity": traj.similarity.mean(1).tolist()},
    }
    if evaluator_similarity is not None:
        out["mean_similarity_evaluator"] = float(evaluator_similarity.mean())
    if evaluator_age_change is not None:
        out["mean_age_change_evaluator"] = float(evaluator_age_change.mean())
        requested = traj.target - traj.value[0]
        out["evaluator_age_change_per_requested_year"] = float(
            (evaluator_age_change * requested).sum() / requested.pow(2).sum().clamp_min(1e-12))
    return out


def _grid(env: AgeEditEnv, latents: Tensor, path: Path) -> None:
    from PIL import Image

    steps, n = latents.shape[:2]
    with torch.no_grad():
        imgs = env.generator.synthesize(latents.reshape(steps * n, *latents.shape[2:]).to(env.device), space=env.space)
    imgs = to_uint8(imgs).cpu()  # [S*N, 3, H, W], step-major
    h, w = imgs.shape[-2:]
    canvas = torch.zeros(3, n * h, steps * w, dtype=torch.uint8)
    for s in range(steps):
        for i in range(n):
            canvas[:, i * h : (i + 1) * h, s * w : (s + 1) * w] = imgs[s * n + i]
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(path)


def _curves(results: dict, bound: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({t for r in results.values() for t in r})
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 4), squeeze=False)
    for ax, t in zip(axes[0], targets):
        for name, per_target in results.items():
            c = per_target[t]["curve"]
            ax.plot(c["age_change"], c["similarity"], marker="o", ms=3, label=name)
        ax.axhline(bound, color="k", ls="--", lw=0.8, label="identity bound")
        ax.axvline(float(t), color="gray", ls=":", lw=0.8)
        ax.set_title(f"target {float(t):+g} years")
        ax.set_xlabel("mean age change (years)")
        ax.set_ylabel("mean identity similarity to start")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report: dict) -> str:
    s = report["settings"]
    ev = report["evaluator"]
    lines = [
        f"# Age editing under an identity bound ({s['num_starts']} held-out starts, seed {s['start_seed']})",
        "",
        report["verdict"],
        "",
        f"Identity bound: cosine >= {s['identity_bound']} to the start face ({s['reward_embedder']}); "
        f"step <= {s['max_step']} in {s['space']}; budget {s['max_steps']} steps; success = final age within "
        f"+-{s['tolerance']} years of the target with the bound held.",
        "",
        ("Identity similarity by the evaluator " + ev if ev != "none" else
         "No evaluator embedder was given: identity similarity is by the reward's own embedder "
         f"({s['reward_embedder']}), which steered the edits; it is not independent evidence."),
        "",
        ("Age change by the age evaluator " + report["age_evaluator"] + " (independent of the steered predictor)"
         if report["age_evaluator"] != "none" else "No age evaluator was given: ages are the steered predictor's."),
        "",
        "| editor | target | success | final age error | age change | age change (age evaluator) | bound held "
        "| similarity (reward emb.) | similarity (evaluator) | steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, per_target in report["results"].items():
        for t, r in per_target.items():
            evs = f"{r['mean_similarity_evaluator']:.3f}" if "mean_similarity_evaluator" in r else "—"
            eva = f"{r['mean_age_change_evaluator']:+.2f}" if "mean_age_change_evaluator" in r else "—"
            lines.append(
                f"| {name} | {float(t):+g} | {r['success_rate']:.3f} | {r['mean_final_age_error']:.2f} | "
                f"{r['mean_age_change']:+.2f} | {eva} | {r['bound_held_rate']:.3f} | {r['mean_similarity_reward_embedder']:.3f} | "
                f"{evs} | {r['mean_steps_used']:.2f} |"
            )
    agree = _age_agreement(report["results"], report["age_evaluator"]) if report["age_evaluator"] != "none" else ""
    lines += ["", f"Mean success over targets: " + ", ".join(
        f"{n} {v:.3f}" for n, v in report["mean_success"].items()), "", *([agree, ""] if agree else []),
        f"Files: curves.png (age change vs identity similarity per step), grid_<editor>_<target>.png "
        f"(rows: the first {s['grid_starts']} starts; columns: steps 0..{s['max_steps']}). "
        f"Time: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _success_se(per_target: dict[str, dict], n: int) -> float:
    """Binomial standard error of an editor's mean success rate over targets (``n`` starts each)."""
    rates = [float(r["success_rate"]) for r in per_target.values()]
    return math.sqrt(sum(p * (1.0 - p) / max(1, n) for p in rates)) / max(1, len(rates))


def _verdict(mean_success: dict[str, float], policy: str | None, results: dict[str, dict] | None = None,
             n: int = 0) -> str:
    """The report's first line: does the policy beat the best baseline by more than twice the
    standard error of the difference (binomial, unpaired: conservative for these paired starts)?"""
    if not mean_success:
        return "No editors were run."
    if policy is None or policy not in mean_success:
        best = max(mean_success, key=mean_success.get)
        return f"Highest mean success rate: {best} ({mean_success[best]:.3f})."
    others = {k: v for k, v in mean_success.items() if k != policy}
    if not others:
        return f"{policy}: mean success {mean_success[policy]:.3f} (no baseline run)."
    best = max(others, key=others.get)
    diff = mean_success[policy] - others[best]
    se = math.hypot(_success_se(results[policy], n), _success_se(results[best], n)) if results and n else 0.0
    if se and abs(diff) <= 2 * se:
        word = "does not win beyond noise"
    else:
        word = "wins" if diff > 0 else ("ties" if diff == 0 else "does NOT win")
    noise = f" (standard error of the difference {se:.3f})" if se else ""
    return (f"The RL policy ({policy}) {word} on mean success rate at equal identity bound: "
            f"{mean_success[policy]:.3f} vs {others[best]:.3f} for the best baseline ({best}), "
            f"a difference of {diff:+.3f}{noise}.")


def _age_agreement(results: dict[str, dict], age_evaluator: str) -> str:
    """How much of each editor's age change the independent age evaluator sees (slope of its
    change on the steered predictor's, over targets): near 1, real aging; near 0, an edit that
    moves the steered net's output more than the face."""
    parts = []
    for name, rs in results.items():
        rows = [(r["mean_age_change"], r["mean_age_change_evaluator"]) for r in rs.values()
                if "mean_age_change_evaluator" in r]
        den = sum(a * a for a, _ in rows)
        if rows and den > 0:
            parts.append(f"{name} {sum(a * b for a, b in rows) / den:.2f}")
    if not parts:
        return ""
    return (f"Age change seen by {age_evaluator} per year of the steered predictor's change (1 = the "
            f"same aging; near 0 = the edit mostly moves the steered net): " + ", ".join(parts) + ".")


def _load_mergeable(path: Path, env: AgeEditEnv, targets: list[float], num_starts: int, start_seed: int) -> tuple[Path, dict]:
    """An earlier report.json, refused (with the differing setting) when it was made otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"--merge {path}: no such report.json")
    old = json.loads(path.read_text())
    s = old.get("settings", {})
    want = {"num_starts": int(num_starts), "start_seed": int(start_seed), "identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
            "tolerance": env.tolerance, "space": env.space, "reward_embedder": type(env.embedder).__name__}
    diff = [f"{k}: {s.get(k)!r} there, {v!r} here" for k, v in want.items() if s.get(k) != v]
    if diff:
        raise ValueError(f"--merge {path} was made with other settings ({'; '.join(diff)}); rerun it with these")
    return path, old


def _check_policy_env(editor: LatentEditor, env: AgeEditEnv) -> None:
    """A trained policy runs only in an environment with its training bound, step and budget."""
    rec = getattr(editor, "record", None)
    if not isinstance(rec, dict) or "env" not in rec:
        return
    trained = rec["env"]
    diff = [f"{k}: trained {trained[k]!r}, here {getattr(env, k)!r}" for k in ("identity_bound", "max_step", "max_steps",
                                                                                "tolerance") if trained[k] != getattr(env, k)]
    if diff:
        raise ValueError(f"policy {getattr(editor, 'path', '')} was trained in another environment ({'; '.join(diff)}); "
                         f"give the report the training recipe's env settings")


@command("age-report")
def age_report(
    env: AgeEditEnv,
    editors: list[LatentEditor],
    output_dir: str = "runs/age_report",
    targets: list[float] = [-15.0, 15.0, 30.0],  # noqa: B006 (jsonargparse needs a literal default)
    num_starts: int = 200,
    start_seed: int = 2026,
    evaluator: IdentityEmbedder | None = None,
    evaluator_aligner: Aligner | None = None,
    age_evaluator: AttributePredictor | None = None,
    age_evaluator_aligner: Aligner | None = None,
    grid_starts: int = 6,
    merge: list[str] = [],  # noqa: B006
    evaluator_batch_size: int = 16,
) -> dict:
    """Compare age editors (RL policy, InterFaceGAN walk, gradient walk) under one identity bound and step budget.

    Args:
        env: the environment every editor runs in (parts, identity bound, step bound, budget).
        editors: the editors to compare (e.g. AgePolicyEditor, BoundaryEditor, GradientWalkEditor).
        output_dir: where report.md, report.json, curves.png and the grids go.
        targets: target offsets from each start's predicted age (years).
        num_starts: held-out start latents (the issue asks for >= 200).
        start_seed: seed of the start latents (keep it apart from the training rollouts' seeds).
        evaluator: an identity embedder that is not the reward's, for the reported similarity.
        evaluator_aligner: its crop (default: the environment's aligner; resized to the evaluator's input size).
        age_evaluator: an age predictor that is not the reward's (e.g. HSEAgeGender): its age
            change between start and final faces is reported beside the steered one.
        age_evaluator_aligner: its crop (default: the environment's aligner; resized likewise).
        grid_starts: start latents shown in each trajectory grid.
        merge: report.json files of earlier runs (same environment, starts and targets, other
            editors) whose results join this report's table; their grids are copied. Lets
            editors run in separate processes, or an editor be added without rerunning the others.
        evaluator_batch_size: faces per forward pass of the evaluators (TF.js graph models keep
            every intermediate tensor of a batch, so keep it small).
    """
    merged = [_load_mergeable(Path(p), env, targets, num_starts, start_seed) for p in merge]
    if not editors and not merged:
        raise ValueError("age-report needs at least one editor (e.g. --editors+ GradientWalkEditor) or --merge+ report.json")
    for ed in editors:
        env.check_editor(ed)
        _check_policy_env(ed, env)
    names = [editor_label(e) for e in editors]
    if len(set(names)) != len(names):
        names = [f"{n}{i}" for i, n in enumerate(names)]
    t0 = time.time()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env.eval()
    starts = env.sample_latents(int(num_starts), seed=int(start_seed))
    judges = _Evaluators(env, evaluator, evaluator_aligner, age_evaluator, age_evaluator_aligner, env.attribute,
                         evaluator_batch_size)
    start_judged = judges(starts) if (evaluator is not None or age_evaluator is not None) else {}
    results: dict[str, dict[str, dict]] = {}
    for name, ed in zip(names, editors):
        results[name] = {}
        for t in targets:
            traj = env.run(ed, starts, float(t), relative=True, keep_latents=True)
            final_judged = judges(traj.latents[-1]) if start_judged else {}
            ev_sim = ((final_judged["embedding"] * start_judged["embedding"]).sum(1)
                      if "embedding" in final_judged else None)
            ev_age = final_judged["age"] - start_judged["age"] if "age" in final_judged else None
            results[name][f"{float(t):+g}"] = summarize(traj, env.tolerance, ev_sim, ev_age)
            _grid(env, traj.latents[:, : int(grid_starts)], out / f"grid_{name}_{float(t):+g}.png")
            print(f"{name} target {float(t):+g}: success {results[name][f'{float(t):+g}']['success_rate']:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    descriptions = {n: _describe(e) for n, e in zip(names, editors)}
    for path, old in merged:
        for n, rs in old["results"].items():
            both = sorted(set(results.get(n, {})) & set(rs))
            if both:
                raise ValueError(f"editor {n!r} at targets {both} is in two of the merged runs ({path}); keep one")
            results.setdefault(n, {}).update(rs)
            descriptions.setdefault(n, old["editors"][n])
            for t in rs:
                grid = path.parent / f"grid_{n}_{t}.png"
                if grid.is_file() and grid.parent.resolve() != out.resolve():
                    shutil.copyfile(grid, out / grid.name)
    all_targets = sorted({t for rs in results.values() for t in rs}, key=float)
    for n in results:
        results[n] = {t: results[n][t] for t in all_targets if t in results[n]}
    incomplete = {n: [t for t in all_targets if t not in rs] for n, rs in results.items()}
    incomplete = {n: ts for n, ts in incomplete.items() if ts}
    if incomplete:
        raise ValueError(f"editors lack targets (run or merge them): {incomplete}")
    mean_success = {n: sum(r["success_rate"] for r in rs.values()) / len(rs) for n, rs in results.items()}
    policy = next((n for n, d in descriptions.items() if d["class"] == "AgePolicyEditor"), None)
    report = {
        "verdict": _verdict(mean_success, policy, results, int(num_starts)),
        "mean_success": mean_success,
        "results": results,
        "settings": {"num_starts": int(num_starts), "start_seed": int(start_seed), "targets": [float(t) for t in all_targets],
                     "identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
                     "tolerance": env.tolerance, "space": env.space, "grid_starts": int(grid_starts),
                     "reward_embedder": type(env.embedder).__name__,
                     "parts": {"generator": part_record(env.generator), "aligner": part_record(env.aligner),
                               "age_predictor": part_record(env.age_predictor), "embedder": part_record(env.embedder)}},
        "editors": descriptions,
        "evaluator": type(evaluator).__name__ if evaluator is not None else "none",
        "age_evaluator": type(age_evaluator).__name__ if age_evaluator is not None else "none",
        "seconds": time.time() - t0,
    }
    _curves(results, env.identity_bound, out / "curves.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    print(report["verdict"])
    print(f"wrote {out / 'report.md'}")
    return report
