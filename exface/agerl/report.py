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

``--merge`` joins earlier runs' results only when their settings (starts, seed, bound,
step, budget, tolerance, space, attribute), parts and evaluators (class, arguments, weights
digest: :func:`~exface.exfacegan.provenance.part_differences`) are this run's, and only when
an editor name means one editor: the same name (an editor's class name) with other arguments,
files or weights in this run and a merged one, or in two merged ones, is refused (its rows
would show one editor's results under another's description). A policy file is run only in an
environment with the bound, step, budget, tolerance and parts it was trained with.

Files in ``output_dir``: ``report.json`` (all figures, the settings, every editor's
description and ``made_by``), ``report.md`` (the table), ``curves.png`` (mean age change vs
mean identity similarity along the steps, per editor and target), ``grid_<editor>_<target>.png``
(rows: start latents; columns: steps 0..T) and ``made_by.json``. The folder is written through
:class:`~exface.report_dir.ReportDir`: ``made_by`` (:func:`report_identity`) records the
environment's settings and parts, the editors (arguments, their files by sha256, their tensors'
digest), the starts, targets, grid rows, evaluators and the merged reports; a folder holding
another report is refused before any editor runs, the same report again is regenerated in
place (grids of its earlier run that this one does not draw are removed).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from exface.agerl.env import AgeEditEnv, Trajectory, env_parts
from exface.alignment.base import Aligner
from exface.attributes.base import AttributePredictor
from exface.commands import command
from exface.editing.base import LatentEditor
from exface.embedders.base import IdentityEmbedder
from exface.errors import ExfaceError
from exface.exfacegan.provenance import is_path_value, part_differences, part_fingerprint, tensor_digest
from exface.tensors import to_uint8

__all__ = ["age_report", "editor_label", "report_identity", "summarize"]


def editor_label(editor: LatentEditor) -> str:
    return type(editor).__name__


def _describe(editor: LatentEditor) -> dict:
    """An editor as the report records it: ``class``, its plain-valued ``args``, ``files_sha256``
    (the sha256 of every argument that names a file: a policy file, a boundary file) and
    ``tensors_sha256`` (one digest of its tensors, networks and boundaries), the last two when it has any."""
    from exface.boundaries.base import Boundaries
    from exface.report_dir import canonical, file_sha256

    args = {k: v for k, v in vars(editor).items() if isinstance(v, (int, float, str, bool, list, tuple)) or v is None}
    out: dict[str, Any] = {"class": type(editor).__name__, "args": canonical(args)}
    files = {k: file_sha256(v) for k, v in sorted(args.items())
             if isinstance(v, str) and is_path_value(v) and Path(v).expanduser().is_file()}
    if files:
        out["files_sha256"] = files
    tensors: dict[str, Any] = {}
    for k, v in sorted(vars(editor).items()):
        if isinstance(v, torch.nn.Module):
            tensors[k] = dict(v.state_dict())
        elif isinstance(v, Tensor):
            tensors[k] = v
        elif isinstance(v, Boundaries):
            tensors[k] = {f: getattr(v, f) for f in v.__dataclass_fields__}
    if tensors:
        out["tensors_sha256"] = tensor_digest(tensors)
    return out


def _editor_identity(desc: dict) -> dict:
    """An editor's description without the file paths whose content is digested (the same file at
    another path is the same editor)."""
    files = desc.get("files_sha256") or {}
    return {**desc, "args": {k: v for k, v in desc.get("args", {}).items() if k not in files}}


def _description_differences(a: dict, b: dict) -> list[str]:
    """``argument: A vs B`` for every difference between two editor descriptions (``a`` first).

    File paths are compared by content where both descriptions digest them; files and tensors
    digests only where both record them (an older report records neither)."""
    from exface.report_dir import canonical

    a, b = canonical(a), canonical(b)
    if a.get("class") != b.get("class"):
        return [f"class: {a.get('class')} vs {b.get('class')}"]
    fa, fb = a.get("files_sha256") or {}, b.get("files_sha256") or {}
    out = []
    aa, ba = a.get("args") or {}, b.get("args") or {}
    for k in sorted(set(aa) | set(ba)):
        if k in fa and k in fb:
            if fa[k] != fb[k]:
                out.append(f"{k}: another file (sha256 {fa[k][:12]}... vs {fb[k][:12]}...)")
            continue
        if aa.get(k, "(absent)") != ba.get(k, "(absent)"):
            out.append(f"{k}: {aa.get(k, '(absent)')!r} vs {ba.get(k, '(absent)')!r}")
    ta, tb = a.get("tensors_sha256"), b.get("tensors_sha256")
    if ta is not None and tb is not None and ta != tb:
        out.append(f"its tensors or networks (sha256 {ta[:12]}... vs {tb[:12]}...)")
    return out


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


def _grid(env: AgeEditEnv, latents: Tensor) -> bytes:
    """The trajectory grid as PNG bytes (rows: start latents; columns: steps)."""
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
    buf = io.BytesIO()
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(buf, format="png")
    return buf.getvalue()


def _curves(results: dict, bound: float) -> bytes:
    """Mean age change vs mean identity similarity per step, per editor and target (PNG bytes)."""
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


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

    Compared with this run: the starts (``num_starts``, ``start_seed``), the environment's
    bound, step, budget, tolerance, space and attribute (a report that does not record its
    attribute was made before it was recorded, when it was ``age``), the reward embedder and,
    with ``records`` (``{"parts": env_parts(env), "evaluators": {...}}`` of this run), the parts
    and evaluators (class, weights digest, non-path arguments). Every merged run is compared with
    this run, so the merged runs agree with each other too.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--merge {path}: no such report.json")
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ExfaceError(f"--merge: the file is not a readable age-report report.json ({err})", where=path,
                          fix="pass the report.json that `exface age-report` wrote, or drop it from --merge") from err
    if not isinstance(old, dict) or not isinstance(old.get("results"), dict) or not isinstance(old.get("editors"), dict):
        raise ExfaceError("--merge: the file is not an age-report report.json (it lacks results or editors)",
                          where=path, fix="pass the report.json that `exface age-report` wrote, or drop it from --merge")
    s = old.get("settings", {})
    want = {"num_starts": int(num_starts), "start_seed": int(start_seed), "identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
            "tolerance": env.tolerance, "space": env.space, "reward_embedder": type(env.embedder).__name__}
    if evaluator_identity_bound is not None:
        want["evaluator_identity_bound"] = float(evaluator_identity_bound)
    diff = [f"{k}: {s.get(k)!r} there, {v!r} here" for k, v in want.items() if s.get(k) != v]
    if s.get("attribute", "age") != env.attribute:
        diff.append(f"attribute: {s.get('attribute', 'age')!r} there, {env.attribute!r} here")
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


def _part_identity(rec: dict | None) -> dict | None:
    """A part fingerprint as a report identity records it: file-path arguments left out when the
    weights digest is known (as :func:`~exface.report_dir.part_identity`, from a computed fingerprint)."""
    from exface.report_dir import canonical

    if rec is None:
        return None
    rec = dict(rec)
    if "weights_sha256" in rec:
        rec["args"] = {k: v for k, v in (rec.get("args") or {}).items() if not is_path_value(v)}
    return canonical(rec)


def _merged_record(path: Path, old: dict) -> dict:
    """What a merged report is, for the merging report's identity: its path, its own ``made_by``
    (None for a report written before age-report recorded one) and the digest of its results."""
    return {"path": str(path.resolve()), "made_by": old.get("made_by"),
            "results_sha256": hashlib.sha256(json.dumps(old["results"], sort_keys=True).encode()).hexdigest()}


def report_identity(env: AgeEditEnv, parts: dict, descriptions: dict[str, dict], targets: list[float],
                    num_starts: int, start_seed: int, grid_starts: int, evaluators: dict,
                    evaluator_identity_bound: float, merged: list[tuple[Path, dict]]) -> dict:
    """What makes an age report (its ``made_by``): the environment's settings and parts (class,
    weights sha256, non-path arguments), every editor of this run (class, arguments; the files it
    reads, a policy or boundary file, by sha256 instead of their paths; its tensors' digest), the
    targets, starts (``num_starts``, ``start_seed``), grid rows, the evaluators and their bound, and
    the merged reports (:func:`_merged_record`). Not timings, the evaluators' batch size, nor where
    the report is written."""
    return {
        "report": "exface age-report",
        "env": {"identity_bound": env.identity_bound, "max_step": env.max_step, "max_steps": env.max_steps,
                "tolerance": env.tolerance, "space": env.space, "attribute": env.attribute,
                "parts": {role: _part_identity(rec) for role, rec in parts.items()}},
        "editors": {n: _editor_identity(d) for n, d in descriptions.items()},
        "targets": [float(t) for t in targets],
        "starts": {"num_starts": int(num_starts), "start_seed": int(start_seed)},
        "grid_starts": int(grid_starts),
        "evaluators": {role: _part_identity(rec) for role, rec in evaluators.items()},
        "evaluator_identity_bound": float(evaluator_identity_bound),
        "merged": [_merged_record(path, old) for path, old in merged],
    }


def _merge_fix(name: str) -> str:
    return (f"run the editors of different settings in one age-report (two editors of one class get distinct names, "
            f"e.g. {name}0 and {name}1), or merge only runs whose {name} has the same settings")


def _check_merged_editors(descriptions: dict[str, dict], merged: list[tuple[Path, dict]]) -> None:
    """Refuse a merge in which one editor name stands for editors of other settings: this run's
    and a merged run's, or two merged runs' (the table would show one's results under the other's
    description). Raises :class:`~exface.errors.ExfaceError` naming both folders, the editor and
    the differing arguments."""
    seen: dict[str, tuple[str, dict]] = {n: ("this run", d) for n, d in descriptions.items()}
    for path, old in merged:
        here = str(path.parent)
        for n in old["results"]:
            desc = old["editors"].get(n)
            if not isinstance(desc, dict):
                raise ExfaceError(f"--merge: the report has results of editor {n!r} but no description of it",
                                  where=path, fix="rerun that report with this exface, or drop it from --merge")
            if n not in seen:
                seen[n] = (here, desc)
                continue
            first, known = seen[n]
            diffs = _description_differences(known, desc)
            if diffs:
                shown = diffs[:6] + ([f"... and {len(diffs) - 6} more"] if len(diffs) > 6 else [])
                raise ExfaceError(
                    f"--merge: editor {n!r} ran with other settings in {first} than in {here} "
                    f"({'; '.join(shown)}): the table would show both runs' results under one row name and one description",
                    where=path, fix=_merge_fix(n))


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
        output_dir: where report.md, report.json, curves.png, the grids and made_by.json go. A
            folder holding another report (other editors, environment, starts, targets,
            evaluators or merged reports; or files without a made_by.json) is refused before any
            editor runs; the same report again replaces its files there.
        targets: target offsets from each start's predicted age (years).
        num_starts: held-out start latents (the issue asks for >= 200).
        start_seed: seed of the start latents (keep it apart from the training rollouts' seeds).
        evaluator: an identity embedder that is not the reward's, for the reported similarity.
        evaluator_aligner: its crop (default: the environment's aligner; resized to the evaluator's input size).
        age_evaluator: an age predictor that is not the reward's (e.g. HSEAgeGender): its age
            change between start and final faces is reported beside the steered one.
        age_evaluator_aligner: its crop (default: the environment's aligner; resized likewise).
        grid_starts: start latents shown in each trajectory grid.
        merge: report.json files of earlier runs (same environment, starts, parts and
            evaluators; other editors, or other targets of an editor of the same settings) whose
            results join this report's table; their grids are copied. Lets editors run in separate
            processes, or an editor be added without rerunning the others. An editor name with
            other settings in two of the runs is refused; the merged reports are inputs, recorded in
            ``made_by``, and may not lie in ``output_dir``.
        evaluator_batch_size: faces per forward pass of the evaluators (TF.js graph models keep
            every intermediate tensor of a batch, so keep it small).
        evaluator_identity_bound: the identity cosine (by ``evaluator``) at or above which the
            evaluators' success counts the bound as held (default: the environment's
            ``identity_bound``, which was chosen for the reward's embedder; choose it from the
            evaluator's own random-pair cosines).
    """
    from exface.report_dir import ReportDir

    ev_bound = float(env.identity_bound if evaluator_identity_bound is None else evaluator_identity_bound)
    if not -1.0 <= ev_bound <= 1.0:
        raise ValueError(f"evaluator_identity_bound is a cosine in [-1, 1], got {ev_bound}")
    out = Path(output_dir)
    parts = env_parts(env)
    evaluators = {
        "evaluator": None if evaluator is None else part_fingerprint(evaluator),
        "evaluator_aligner": None if evaluator is None else part_fingerprint(evaluator_aligner or env.aligner),
        "age_evaluator": None if age_evaluator is None else part_fingerprint(age_evaluator),
        "age_evaluator_aligner": None if age_evaluator is None else part_fingerprint(age_evaluator_aligner or env.aligner),
    }
    records = {"parts": parts, "evaluators": evaluators}
    for p in merge:
        if Path(p).parent.resolve() == out.resolve():
            raise ExfaceError("--merge: a merged report lies in this report's output_dir (a merged run's folder is "
                              "an input: the merged report would replace it)", where=p,
                              fix=f"write the merged report into another output_dir (e.g. {out}_merged)")
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
    descriptions = {n: _describe(e) for n, e in zip(names, editors)}
    _check_merged_editors(descriptions, merged)  # before any editor runs
    made_by = report_identity(env, parts, descriptions, targets, num_starts, start_seed, grid_starts, evaluators,
                              ev_bound, merged)
    fix = (f"write this age report into another output_dir (e.g. {out}_2), or delete {out} to replace the report "
           f"there (the same editors, environment, starts, targets and merged reports again replace it)")
    # the whole identity is known now: another report's folder is refused before any editor runs
    with ReportDir(out, made_by, "age report", fix=fix) as rd:
        report = _run_report(rd, env, editors, names, descriptions, merged, targets, num_starts, start_seed,
                             evaluator, evaluator_aligner, age_evaluator, age_evaluator_aligner, grid_starts,
                             evaluator_batch_size, evaluator_identity_bound, ev_bound, parts, evaluators)
    print(report["verdict"])
    print(f"wrote {out / 'report.md'}")
    return report


def _run_report(rd, env: AgeEditEnv, editors: list[LatentEditor], names: list[str], descriptions: dict[str, dict],
                merged: list[tuple[Path, dict]], targets: list[float], num_starts: int, start_seed: int,
                evaluator, evaluator_aligner, age_evaluator, age_evaluator_aligner, grid_starts: int,
                evaluator_batch_size: int, evaluator_identity_bound: float | None, ev_bound: float, parts: dict,
                evaluators: dict) -> dict:
    """Run the editors and write the report's files through the :class:`~exface.report_dir.ReportDir` ``rd``."""
    t0 = time.time()
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
            rd.write_bytes(f"grid_{name}_{float(t):+g}.png", _grid(env, traj.latents[:, : int(grid_starts)]))
            print(f"{name} target {float(t):+g}: success {results[name][f'{float(t):+g}']['success_rate']:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    descriptions = dict(descriptions)
    for path, old in merged:
        for n, rs in old["results"].items():
            both = sorted(set(results.get(n, {})) & set(rs))
            if both:
                raise ValueError(f"editor {n!r} at targets {both} is in two of the merged runs ({path}); keep one")
            results.setdefault(n, {}).update(rs)
            descriptions.setdefault(n, old["editors"][n])  # the same settings: _check_merged_editors
            for t in rs:
                grid = path.parent / f"grid_{n}_{t}.png"
                if grid.is_file():
                    rd.write_bytes(grid.name, grid.read_bytes())
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
                     "tolerance": env.tolerance, "space": env.space, "attribute": env.attribute,
                     "grid_starts": int(grid_starts),
                     "reward_embedder": type(env.embedder).__name__,
                     "steered_predictor": type(env.age_predictor).__name__,
                     "evaluator_identity_bound": ev_bound, "evaluator_identity_bound_given": evaluator_identity_bound is not None,
                     "parts": parts, "evaluators": evaluators},
        "editors": descriptions,
        "merged": [str(path.resolve()) for path, _ in merged],
        "evaluator": type(evaluator).__name__ if evaluator is not None else "none",
        "age_evaluator": type(age_evaluator).__name__ if age_evaluator is not None else "none",
        "shared_backbone": _shared_backbone(evaluator, age_evaluator),
        "seconds": time.time() - t0,
        "made_by": rd.made_by,
    }
    report["verdict"] = _full_verdict(report, policy, int(num_starts))
    rd.write_bytes("curves.png", _curves(results, env.identity_bound))
    rd.write_text("report.json", json.dumps(report, indent=2) + "\n")
    rd.write_text("report.md", _markdown(report))
    return report
