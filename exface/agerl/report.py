"""``exface age-report``: editors side by side on held-out start latents, under one identity bound and step budget.

Every editor (the trained RL policy, the InterFaceGAN boundary walk, the gradient walk, or
any other :class:`~exface.editing.base.LatentEditor`) runs in the same
:class:`~exface.agerl.env.AgeEditEnv` (same parts, identity bound, per-step bound, step
budget and termination) on the same ``num_starts`` start latents, drawn from
``start_seed`` (choose it apart from the training rollouts' seeds, which are
``seed * 1000003 + rollout``), once per target offset (default -15, +15, +30 years from each
start's own predicted age). Per editor and target it reports:

- **success rate**: final ``|age - target| <= tolerance`` with the identity bound held,
  judged by the environment's age predictor and embedder: the networks the reward uses, which
  the policy was optimized against (and the walks follow the gradient of);
- **success rate by the evaluators** (when ``evaluator`` and ``age_evaluator`` are both
  given): the same definition with their values: the evaluator's age change within
  ``tolerance`` of the requested offset and the evaluator's identity cosine to the start face
  ``>= evaluator_identity_bound`` (default: the environment's bound, which was calibrated on
  the reward's embedder; set the evaluator's own). The verdict, the report's first line, is
  then stated on this rate first and on the reward networks' second. Networks that share a
  backbone (``HSEFaceRes`` and ``HSEAgeGender`` are one graph, Human's ``faceres``) are said
  to be so: they are independent of the reward, not of each other;
- mean final age error (years) and mean age change;
- mean identity similarity of the final face to the start face: by ``evaluator`` (an
  embedder that takes no part in the reward) when one is given, and by the reward's
  embedder always (labelled as such: judging identity only with the network that steered
  is not independent evidence);
- the share of episodes whose bound held, and the mean number of steps used.

``--merge`` joins earlier runs' results only when their settings, parts and evaluators
(class, arguments, weights digest: :func:`~exface.exfacegan.provenance.part_differences`)
are this run's. A policy file is run only in an environment with the bound, step, budget,
tolerance and parts it was trained with.

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

from exface.agerl.env import AgeEditEnv, Trajectory, env_parts
from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.commands import command
from exface.editing.base import LatentEditor
from exface.embedders.base import IdentityEmbedder
from exface.errors import ExfaceError
from exface.exfacegan.provenance import part_differences, part_fingerprint
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
              evaluator_age_change: Tensor | None = None, evaluator_identity_bound: float | None = None) -> dict:
    """The report's figures for one editor and one target.

    With both evaluators' values (and ``evaluator_identity_bound``), ``success_rate_evaluators``
    is the success rate's definition judged by them: the evaluator's age change within
    ``tolerance`` of the requested offset (target minus start age) and the evaluator's final
    identity cosine to the start ``>= evaluator_identity_bound``.
    """
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
    if evaluator_similarity is not None and evaluator_identity_bound is not None:
        held = evaluator_similarity >= float(evaluator_identity_bound)
        out["bound_held_rate_evaluator"] = float(held.float().mean())
        if evaluator_age_change is not None:
            err = (evaluator_age_change - (traj.target - traj.value[0])).abs()
            out["mean_final_age_error_evaluator"] = float(err.mean())
            out["success_rate_evaluators"] = float(((err <= tolerance) & held).float().mean())
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
    ]
    by_ev = "mean_success_evaluators" in report
    if by_ev:
        lines += [f"Success by the evaluators: {report['age_evaluator']} age change within +-{s['tolerance']} years of "
                  f"the requested offset and {ev} cosine >= {s['evaluator_identity_bound']} to the start face"
                  + ("" if s.get("evaluator_identity_bound_given") else
                     " (the environment's bound, calibrated on the reward's embedder, not on the evaluator: "
                     "set evaluator_identity_bound from the evaluator's own random-pair cosines)") + ".", ""]
    if report.get("shared_backbone"):
        lines += [report["shared_backbone"], ""]
    lines += [
        "| editor | target | success (reward nets) | success (evaluators) | final age error | age change "
        "| age change (age evaluator) | bound held | bound held (evaluator) | similarity (reward emb.) "
        "| similarity (evaluator) | steps |",
        "| --- " * 12 + "|",
    ]
    dash = "—"
    for name, per_target in report["results"].items():
        for t, r in per_target.items():
            evs = f"{r['mean_similarity_evaluator']:.3f}" if "mean_similarity_evaluator" in r else dash
            eva = f"{r['mean_age_change_evaluator']:+.2f}" if "mean_age_change_evaluator" in r else dash
            evok = f"{r['success_rate_evaluators']:.3f}" if "success_rate_evaluators" in r else dash
            evh = f"{r['bound_held_rate_evaluator']:.3f}" if "bound_held_rate_evaluator" in r else dash
            lines.append(
                f"| {name} | {float(t):+g} | {r['success_rate']:.3f} | {evok} | {r['mean_final_age_error']:.2f} | "
                f"{r['mean_age_change']:+.2f} | {eva} | {r['bound_held_rate']:.3f} | {evh} | "
                f"{r['mean_similarity_reward_embedder']:.3f} | {evs} | {r['mean_steps_used']:.2f} |"
            )
    agree = _age_agreement(report["results"], report["age_evaluator"]) if report["age_evaluator"] != "none" else ""
    mean_lines = [f"Mean success over targets, by the reward's networks: " + ", ".join(
        f"{n} {v:.3f}" for n, v in report["mean_success"].items())]
    if by_ev:
        mean_lines.insert(0, "Mean success over targets, by the evaluators: " + ", ".join(
            f"{n} {v:.3f}" for n, v in report["mean_success_evaluators"].items()))
    lines += [""] + [x for m in mean_lines for x in (m, "")] + ([agree, ""] if agree else []) + [
        f"Files: curves.png (age change vs identity similarity per step), grid_<editor>_<target>.png "
        f"(rows: the first {s['grid_starts']} starts; columns: steps 0..{s['max_steps']}). "
        f"Time: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _success_se(per_target: dict[str, dict], n: int, key: str = "success_rate") -> float:
    """Binomial standard error of an editor's mean success rate over targets (``n`` starts each)."""
    rates = [float(r[key]) for r in per_target.values()]
    return math.sqrt(sum(p * (1.0 - p) / max(1, n) for p in rates)) / max(1, len(rates))


def _verdict(mean_success: dict[str, float], policy: str | None, results: dict[str, dict] | None = None,
             n: int = 0, key: str = "success_rate") -> str:
    """Does the policy beat the best baseline by more than twice the standard error of the
    difference (binomial, unpaired: conservative for these paired starts)? ``key``: the
    per-target success figure judged (the reward networks' or the evaluators')."""
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
    se = math.hypot(_success_se(results[policy], n, key), _success_se(results[best], n, key)) if results and n else 0.0
    if se and abs(diff) <= 2 * se:
        word = "does not win beyond noise"
    else:
        word = "wins" if diff > 0 else ("ties" if diff == 0 else "does NOT win")
    noise = f" (standard error of the difference {se:.3f})" if se else ""
    return (f"The RL policy ({policy}) {word} on mean success rate at equal identity bound: "
            f"{mean_success[policy]:.3f} vs {others[best]:.3f} for the best baseline ({best}), "
            f"a difference of {diff:+.3f}{noise}.")


def _full_verdict(report: dict, policy: str | None, n: int) -> str:
    """The report's first line(s): on the evaluators' success when they judged, then on the reward networks'."""
    s, results = report["settings"], report["results"]
    reward = (f"judged by the networks the policy was optimized against ({s['steered_predictor']} age, "
              f"{s['reward_embedder']} identity)")
    v_reward = _verdict(report["mean_success"], policy, results, n)
    if "mean_success_evaluators" not in report:
        return f"{v_reward} (Success is {reward}; no independent evaluators judged it.)"
    v_ev = _verdict(report["mean_success_evaluators"], policy, results, n, key="success_rate_evaluators")
    bound = f"{s['evaluator_identity_bound']}" + ("" if s.get("evaluator_identity_bound_given") else
                                                  ", the environment's bound, not calibrated for it")
    return (f"By the independent evaluators ({report['age_evaluator']} age, {report['evaluator']} identity >= "
            f"{bound}): {v_ev} {reward[0].upper() + reward[1:]}: {v_reward}")


_SHARED = {frozenset({"HSEFaceRes", "HSEAgeGender"}): "Human's faceres graph (the HSE MobileNet)"}


def _graph_sources(module: object) -> set[str]:
    from exface.models.tfjs_graph import TFJSGraph

    if not isinstance(module, torch.nn.Module):
        return set()
    return {str(m.source) for m in module.modules() if isinstance(m, TFJSGraph) and getattr(m, "source", None)}


def _shared_backbone(evaluator: object, age_evaluator: object) -> str:
    """A sentence when the two evaluators are one network (the same graph file, or a known pair); else ''."""
    if evaluator is None or age_evaluator is None:
        return ""
    names = frozenset({type(evaluator).__name__, type(age_evaluator).__name__})
    common = _graph_sources(evaluator) & _graph_sources(age_evaluator)
    what = _SHARED.get(names) or (f"the graph {sorted(common)[0]}" if common else "")
    if not what:
        return ""
    return (f"{type(evaluator).__name__} and {type(age_evaluator).__name__} share one backbone ({what}): they are "
            f"independent of the reward's networks, not of each other, so their identity and age judgements "
            f"are not two independent confirmations.")


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


def _records_differences(prefix: str, recorded: dict | None, given: dict, roles=None) -> list[str]:
    recorded = recorded or {}
    out = []
    for role in roles if roles is not None else sorted(set(recorded) | set(given)):
        out += part_differences(f"{prefix}.{role}", recorded.get(role), given.get(role))
    return out


def _load_mergeable(path: Path, env: AgeEditEnv, targets: list[float], num_starts: int, start_seed: int,
                    records: dict | None = None, evaluator_identity_bound: float | None = None) -> tuple[Path, dict]:
    """An earlier report.json, refused (with the differing setting) when it was made otherwise.

    ``records``: ``{"parts": env_parts(env), "evaluators": {...}}`` of this run; the merged
    run's must be the same parts (class, weights digest, non-path arguments).
    """
    if not path.is_file():
        raise FileNotFoundError(f"--merge {path}: no such report.json")
    old = json.loads(path.read_text())
    s = old.get("settings", {})
    want = {"num_starts": int(num_starts), "start_seed": int(start_seed), "identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
            "tolerance": env.tolerance, "space": env.space, "reward_embedder": type(env.embedder).__name__}
    if evaluator_identity_bound is not None:
        want["evaluator_identity_bound"] = float(evaluator_identity_bound)
    diff = [f"{k}: {s.get(k)!r} there, {v!r} here" for k, v in want.items() if s.get(k) != v]
    if records is not None:
        if "evaluators" not in s:
            diff.append("it records no evaluators (made before age-report recorded its parts)")
        else:
            diff += _records_differences("parts", s.get("parts"), records["parts"])
            diff += _records_differences("evaluators", s.get("evaluators"), records["evaluators"])
    if diff:
        shown = diff[:6] + ([f"... and {len(diff) - 6} more"] if len(diff) > 6 else [])
        raise ExfaceError(f"--merge: that report was made with other settings or parts: {'; '.join(shown)}",
                          where=path, fix="rerun it with this run's environment and evaluators, or drop it from --merge")
    return path, old


def _check_policy_env(editor: LatentEditor, env: AgeEditEnv, parts_here: dict | None = None) -> None:
    """A trained policy runs only in an environment with its training bound, step, budget and parts."""
    rec = getattr(editor, "record", None)
    if not isinstance(rec, dict) or "env" not in rec:
        return
    trained = rec["env"]
    diff = [f"{k}: trained {trained[k]!r}, here {getattr(env, k)!r}" for k in ("identity_bound", "max_step", "max_steps",
                                                                                "tolerance") if trained[k] != getattr(env, k)]
    parts = trained.get("parts") or {}
    if parts:  # the roles the file records (older files: no attribute_aligner, no weights digests)
        diff += _records_differences("parts", parts, parts_here or env_parts(env), roles=sorted(parts))
    if diff:
        shown = diff[:6] + ([f"... and {len(diff) - 6} more"] if len(diff) > 6 else [])
        raise ExfaceError(f"the policy was trained in another environment: {'; '.join(shown)}",
                          where=getattr(editor, "path", None),
                          fix="give the report the training recipe's env block (its parts, bound, step, budget, tolerance)")


def _check_boundaries(editor: LatentEditor, env: AgeEditEnv) -> None:
    """A boundary walk runs only on the generator (checkpoint, truncation) and space its boundaries were fit in."""
    from exface.boundaries.base import Boundaries
    from exface.interfacegan.directions import check_applicable

    b = getattr(editor, "boundaries", None)
    if isinstance(b, Boundaries):
        check_applicable(b, env.generator, env.space)


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
    evaluator_identity_bound: float | None = None,
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
        evaluator_identity_bound: the identity cosine (by ``evaluator``) at or above which the
            evaluators' success counts the bound as held (default: the environment's
            ``identity_bound``, which was chosen for the reward's embedder; choose it from the
            evaluator's own random-pair cosines).
    """
    ev_bound = float(env.identity_bound if evaluator_identity_bound is None else evaluator_identity_bound)
    if not -1.0 <= ev_bound <= 1.0:
        raise ValueError(f"evaluator_identity_bound is a cosine in [-1, 1], got {ev_bound}")
    parts = env_parts(env)
    evaluators = {
        "evaluator": None if evaluator is None else part_fingerprint(evaluator),
        "evaluator_aligner": None if evaluator is None else part_fingerprint(evaluator_aligner or env.aligner),
        "age_evaluator": None if age_evaluator is None else part_fingerprint(age_evaluator),
        "age_evaluator_aligner": None if age_evaluator is None else part_fingerprint(age_evaluator_aligner or env.aligner),
    }
    records = {"parts": parts, "evaluators": evaluators}
    merged = [_load_mergeable(Path(p), env, targets, num_starts, start_seed, records,
                              ev_bound if evaluator is not None else None) for p in merge]
    if not editors and not merged:
        raise ValueError("age-report needs at least one editor (e.g. --editors+ GradientWalkEditor) or --merge+ report.json")
    for ed in editors:
        env.check_editor(ed)
        _check_policy_env(ed, env, parts)
        _check_boundaries(ed, env)
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
            results[name][f"{float(t):+g}"] = summarize(traj, env.tolerance, ev_sim, ev_age, ev_bound)
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
    judged = all("success_rate_evaluators" in r for rs in results.values() for r in rs.values())
    policy = next((n for n, d in descriptions.items() if d["class"] == "AgePolicyEditor"), None)
    report = {
        "verdict": "",
        **({"mean_success_evaluators": {n: sum(r["success_rate_evaluators"] for r in rs.values()) / len(rs)
                                        for n, rs in results.items()}} if judged else {}),
        "mean_success": mean_success,
        "results": results,
        "settings": {"num_starts": int(num_starts), "start_seed": int(start_seed), "targets": [float(t) for t in all_targets],
                     "identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
                     "tolerance": env.tolerance, "space": env.space, "grid_starts": int(grid_starts),
                     "reward_embedder": type(env.embedder).__name__,
                     "steered_predictor": type(env.age_predictor).__name__,
                     "evaluator_identity_bound": ev_bound, "evaluator_identity_bound_given": evaluator_identity_bound is not None,
                     "parts": parts, "evaluators": evaluators},
        "editors": descriptions,
        "evaluator": type(evaluator).__name__ if evaluator is not None else "none",
        "age_evaluator": type(age_evaluator).__name__ if age_evaluator is not None else "none",
        "shared_backbone": _shared_backbone(evaluator, age_evaluator),
        "seconds": time.time() - t0,
    }
    report["verdict"] = _full_verdict(report, policy, int(num_starts))
    _curves(results, env.identity_bound, out / "curves.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    print(report["verdict"])
    print(f"wrote {out / 'report.md'}")
    return report
