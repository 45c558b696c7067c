"""InterFaceGAN wing: bank scores, the boundary rule vs sklearn, conditional projection,
linear_interpolate, the BoundaryEditor, and the three commands on tiny parts (and their recipes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from exface.alignment.crops import ResizeAligner
from exface.boundaries.base import Boundaries
from exface.editing.base import EditState
from exface.exfacegan.latent_bank import LatentBank
from exface.interfacegan.directions import EditDirection, check_applicable, project_boundary, select_direction
from exface.interfacegan.learner import InterFaceGANBoundary, score_split
from exface.interfacegan.manipulation import BoundaryEditor, linear_interpolate, signed_distance
from exface.interfacegan.report import monotonic_fraction, score_slopes
from exface.interfacegan.scores import BankScores
from exface.testing.tiny import TinyEmbedder, TinyGenerator
from exface.testing.tiny_attributes import TinyAttributes

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


# ------------------------------------------------------------------ the rule
def test_score_split_follows_interfacegan():
    s = torch.arange(100, dtype=torch.float32)
    s[[3, 50]] = float("nan")
    s[7] = -1.0
    sp = score_split(s, chosen_num_or_ratio=0.1, split_ratio=0.7, invalid_value=-1.0, seed=0)
    assert sp.num_valid == 97 and sp.chosen_num == 9  # int(97 * 0.1)
    pos = torch.cat([sp.train_pos, sp.val_pos]).sort().values
    neg = torch.cat([sp.train_neg, sp.val_neg]).sort().values
    assert pos.tolist() == list(range(91, 100))
    assert neg.tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert len(sp.train_pos) == len(sp.train_neg) == 6  # int(9 * 0.7)
    assert len(sp.remaining) == 97 - 18 and sp.remaining_label.sum() == (s[sp.remaining] >= 49.5).sum()
    assert score_split(s, chosen_num_or_ratio=20).chosen_num == 20  # a count
    assert score_split(s, chosen_num_or_ratio=1000).chosen_num == 98 // 2  # at most N / 2
    with pytest.raises(ValueError, match="too few"):
        score_split(s[:10], chosen_num_or_ratio=0.02)


def test_normal_equals_sklearn_svc_on_the_same_split():
    from sklearn.svm import SVC

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, generator=g)
    v = torch.randn(12, generator=g)
    scores = {"a": x @ v + 0.5 * torch.randn(600, generator=g), "b": x[:, 0] - x[:, 3]}
    learner = InterFaceGANBoundary(chosen_num_or_ratio=0.2, seed=3)
    b = learner.fit_scores(x, scores, "z")
    assert b.meta["attribute_names"] == ["a", "b"] and b.normals.shape == (2, 12)
    for r, name in enumerate(["a", "b"]):
        sp = score_split(scores[name], 0.2, 0.7, None, seed=3 + r)
        data = torch.cat([x[sp.train_pos], x[sp.train_neg]]).double().numpy()
        label = np.r_[np.ones(len(sp.train_pos)), np.zeros(len(sp.train_neg))]
        ref = SVC(kernel="linear").fit(data, label).coef_.ravel()
        cos = float(b.normals[r].double() @ torch.from_numpy(ref / np.linalg.norm(ref)))
        assert cos >= 0.9999, (name, cos)
        assert b.meta["val_accuracy"][r] > 0.9 and 0.5 < b.meta["remaining_accuracy"][r] <= 1.0
    assert torch.allclose(b.normals.norm(dim=1), torch.ones(2), atol=1e-6)


# ---------------------------------------------------------------- projection
@pytest.mark.parametrize("k", [1, 2, 5])
def test_conditional_projection_is_exact(k):
    g = torch.Generator().manual_seed(k)
    d = 20
    primary = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    cond = torch.nn.functional.normalize(torch.randn(k, d, generator=g) + 0.5 * primary, dim=1)
    p = project_boundary(primary, cond).double()
    assert abs(float(p.norm()) - 1) < 1e-6
    assert (cond.double() @ p).abs().max() < 1e-6  # orthogonal to every condition
    # the closest unit vector: no other unit vector in the complement is nearer the primary
    q, _ = torch.linalg.qr(cond.double().T)
    comp = torch.randn(2000, d, generator=g, dtype=torch.float64)
    comp = torch.nn.functional.normalize(comp - comp @ q @ q.T, dim=1)
    assert (comp @ primary.double()).max() <= float(p @ primary.double()) + 1e-9
    n = primary.double()
    if k == 1:  # InterFaceGAN's closed form for one condition
        c = cond[0].double()
        ref = n - (n @ c) * c
        assert torch.allclose(p, ref / ref.norm(), atol=1e-6)
    elif k == 2:  # the authors' closed form for two (utils/manipulator.py project_boundary: alpha, beta from cosines)
        c1, c2 = cond.double()
        p1, p2, c12 = n @ c1, n @ c2, c1 @ c2
        alpha = (p1 - p2 * c12) / (1 - c12 ** 2 + 1e-8)
        beta = (p2 - p1 * c12) / (1 - c12 ** 2 + 1e-8)
        ref = n - alpha * c1 - beta * c2
        assert torch.allclose(p, ref / ref.norm(), atol=1e-6)
    else:  # the authors' normal equations for more (genforce/interfacegan f717ada)
        c = cond.double()
        x = torch.linalg.solve(c @ c.T, c @ n)
        ref = n - x @ c
        assert torch.allclose(p, ref / ref.norm(), atol=1e-6)


def test_projection_refuses_a_primary_inside_the_conditions():
    c = torch.eye(4)[:2]
    with pytest.raises(ValueError, match="span"):
        project_boundary(torch.tensor([1.0, 1.0, 0, 0]), c)


# ------------------------------------------------------------- manipulation
def _direction(d=6, offset=0.7, space="z"):
    n = torch.nn.functional.normalize(torch.arange(1.0, d + 1), dim=0)
    return EditDirection("a", n, offset, space)


def test_linear_interpolate_absolute_in_z_relative_in_w_plus():
    dirn = _direction()
    x = torch.randn(3, 6)
    out = linear_interpolate(x, dirn, -2.0, 2.0, 5)
    assert out.shape == (3, 5, 6)
    dist = signed_distance(out.reshape(15, 6), dirn).reshape(3, 5)
    assert torch.allclose(dist, torch.linspace(-2, 2, 5).expand(3, 5), atol=1e-5)
    wp = torch.randn(2, 4, 6)
    out = linear_interpolate(wp, dirn, -1.0, 1.0, 3)
    assert torch.allclose(out[:, 2] - wp, dirn.normal.expand(2, 4, 6), atol=1e-6)  # every layer +1 * n
    layer = EditDirection("a", dirn.normal, 0.0, "w+", layer=2)
    out = linear_interpolate(wp, layer, -1.0, 1.0, 3)
    assert torch.equal(out[:, 2, [0, 1, 3]], wp[:, [0, 1, 3]])
    for bad in (dict(steps=1), dict(steps=0), dict(start_distance=1.0, end_distance=1.0)):
        kw = {"start_distance": -3.0, "end_distance": 3.0, "steps": 7, **bad}
        with pytest.raises(ValueError, match="steps|distances"):
            linear_interpolate(x, dirn, **kw)


def _boundaries(names=("a", "b"), d=6, gen="TinyGenerator"):
    n = torch.nn.functional.normalize(torch.randn(len(names), d, generator=torch.Generator().manual_seed(1)), dim=1)
    meta = {"attribute_names": list(names), "layers": [None] * len(names), "generator": {"class": gen, "args": {}},
            "generator_dims": {"z_dim": d, "w_dim": d, "num_ws": 1}}
    nan = torch.full((len(names),), float("nan"))
    return Boundaries(n, torch.zeros(len(names)), "z", nan, nan, meta)


def test_boundary_editor_steps_toward_the_target():
    b = _boundaries()
    ed = BoundaryEditor(b, "a", step_size=0.5, max_distance=1.2, tolerance=0.1)
    assert ed.space == "z" and ed.attribute == "a"
    x = torch.zeros(3, 6)
    state = EditState(x, x, torch.tensor([0.0, 5.0, 2.95]), torch.tensor([3.0, 3.0, 3.0]), torch.ones(3),
                      torch.zeros(3, 4), 0, 10)
    moved = ed.propose(state)
    t = (moved - x) @ b.normals[0]
    assert torch.allclose(t, torch.tensor([0.5, -0.5, 0.0]), atol=1e-6)
    for _ in range(4):  # keeps going up, capped at max_distance from the start
        state.latent = ed.propose(state)
    assert torch.allclose((state.latent - x) @ b.normals[0], torch.tensor([1.2, -1.2, 0.0]), atol=1e-5)
    cond = BoundaryEditor(b, "a", conditions=["b"])
    assert abs(float(cond.direction.normal @ b.normals[1])) < 1e-6


def test_select_direction_and_applicability_errors():
    b = _boundaries()
    with pytest.raises(ValueError, match="(?s)no boundary for 'age'.*interfacegan-fit"):
        select_direction(b, "age")
    with pytest.raises(ValueError, match="DCGANDigiFace"):
        check_applicable(_boundaries(gen="DCGANDigiFace"), TinyGenerator(z_dim=6))
    with pytest.raises(ValueError, match="space 'z'.*'w'"):
        check_applicable(b, TinyGenerator(z_dim=6), "w")
    with pytest.raises(ValueError, match="another\ncheckpoint|another checkpoint"):
        check_applicable(b, TinyGenerator(z_dim=8))


def test_slopes_and_monotonic_fraction():
    d = torch.linspace(-3, 3, 7)
    s = torch.stack([2 * d + 1, -d, d ** 2])
    s[2, 0] = float("nan")
    assert torch.allclose(score_slopes(d, s)[:2], torch.tensor([2.0, -1.0]), atol=1e-6)
    assert monotonic_fraction(s) == pytest.approx(1 / 3)


# ---------------------------------------------------------------- bank scores
class _SecondTinyPredictor(TinyAttributes):
    attribute_names = ("brightness2",)

    def forward(self, images):
        return {"brightness2": images.float().mean((1, 2, 3)) * 2}


@pytest.fixture()
def tiny_bank(tmp_path):
    g = TinyGenerator(z_dim=6, resolution=16)
    e = TinyEmbedder()
    al = ResizeAligner((16, 16))
    bank = LatentBank.build(tmp_path / "bank", g, al, e, num_latents=30, chunk_size=8, seed=0, accelerator="cpu")
    return bank, g, al


def test_bank_scores_resume_and_add_a_predictor(tiny_bank):
    bank, g, al = tiny_bank
    scores = BankScores(bank)
    with pytest.raises(ValueError, match="(?s)no scores for \\['brightness'\\].*FaceApiAgeGender"):
        scores.load(["brightness"])
    assert scores.score(g, al, [TinyAttributes()], accelerator="cpu", max_chunks=2) == {"TinyAttributes": 2}
    with pytest.raises(ValueError, match="partly scored"):
        scores.load(["brightness"])
    assert scores.score(g, al, [TinyAttributes()], accelerator="cpu") == {"TinyAttributes": 2}
    first = scores.load()
    assert set(first) == {"brightness", "redness", "contrast"} and first["brightness"].shape == (30,)
    with torch.inference_mode():
        ref = g.synthesize(bank.load(("z",))["z"], space="z").mean((1, 2, 3))
    assert torch.allclose(first["brightness"], ref, atol=1e-5)
    files = sorted((bank.root / "attributes" / "TinyAttributes").glob("chunk_*.pt"))
    stamps = [f.stat().st_mtime_ns for f in files]
    done = scores.score(g, al, [TinyAttributes(), _SecondTinyPredictor()], accelerator="cpu")
    assert done == {"TinyAttributes": 0, "_SecondTinyPredictor": 4}  # only the new predictor is computed
    assert [f.stat().st_mtime_ns for f in files] == stamps  # never rewritten
    both = scores.load(["brightness", "brightness2"])
    assert torch.allclose(both["brightness2"], 2 * both["brightness"], atol=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        scores.score(g, ResizeAligner((8, 8)), [TinyAttributes()], accelerator="cpu")


# ---------------------------------------------------------------- commands
def _tiny_parts(tmp_path: Path, model: str) -> dict:
    if model == "stylegan2":
        from exface.testing import make_stylegan2_pickle

        pkl = tmp_path / "g.pkl"
        if not pkl.is_file():
            make_stylegan2_pickle(pkl, resolution=16, z_dim=8, w_dim=8)
        generator = {"class_path": "StyleGAN2", "init_args": {"pkl": str(pkl), "truncation_psi": 0.7}}
    else:
        generator = {"class_path": "exface.testing.tiny.TinyGenerator", "init_args": {"z_dim": 6, "resolution": 16}}
    return {
        "generator": generator,
        "aligner": {"class_path": "ResizeAligner", "init_args": {"output_size": [16, 16]}},
        "embedder": {"class_path": "exface.testing.tiny.TinyEmbedder"},
        "attribute_aligner": None,
        "attribute_predictors": [{"class_path": "exface.testing.tiny_attributes.TinyAttributes"}],
    }


def _run_recipe(recipe: str, tmp_path: Path, **overrides) -> None:
    from exface.cli import main

    cfg = yaml.safe_load((RECIPES / recipe).read_text())
    cfg.update(_tiny_parts(tmp_path, "stylegan2" if "stylegan2" in recipe else "dcgan"))
    cfg.update(overrides)
    path = tmp_path / recipe
    path.write_text(yaml.safe_dump(cfg))
    command = {"fit": "interfacegan-fit", "edit": "edit", "report": "edit-report"}[recipe.rsplit("_", 1)[1][:-5]]
    main([command, "--config", str(path)])


@pytest.mark.parametrize("model", ["dcgan_faceapi", "stylegan2"])
def test_recipes_run_on_tiny_parts(model, tmp_path):
    bnd = tmp_path / "boundaries.pt"
    _run_recipe(f"interfacegan_{model}_fit.yaml", tmp_path, bank_dir=str(tmp_path / "bank"), output=str(bnd),
                num_latents=40, chunk_size=20, chosen_num_or_ratio=0.25, batch_size=32, accelerator="cpu",
                space="w" if model == "stylegan2" else "z")
    b = Boundaries.load(bnd)
    assert b.meta["attribute_names"] == ["brightness", "redness", "contrast"]
    assert b.meta["generator"]["class"] == ("StyleGAN2" if model == "stylegan2" else "TinyGenerator")
    assert len(b.meta["val_accuracy"]) == 3 and b.space == ("w" if model == "stylegan2" else "z")
    summary = json.loads(bnd.with_suffix(".json").read_text())
    assert summary["scored_chunks"] == {"TinyAttributes": 2}
    _run_recipe(f"interfacegan_{model}_edit.yaml", tmp_path, boundaries=str(bnd), attribute="brightness",
                conditions=["redness"], bank_dir=str(tmp_path / "bank"), indices=[0, 1], seeds=None,
                output_dir=str(tmp_path / "edit"), steps=3, batch_size=32)
    doc = json.loads((tmp_path / "edit" / "edit.json").read_text())
    assert len(doc["latents"]) == 2 and len(doc["latents"][0]["steps"]) == 3
    assert set(doc["latents"][0]["steps"][0]["scores"]) == {"brightness", "redness", "contrast"}
    for f in ("grid.png", "grid_0.png", "grid_1.png", "curves.png", "edit.md"):
        assert (tmp_path / "edit" / f).is_file(), f
    _run_recipe(f"interfacegan_{model}_report.yaml", tmp_path, boundaries=str(bnd), attributes=["brightness", "redness"],
                conditional=[["brightness", "redness"]], output_dir=str(tmp_path / "report"), num_latents=6,
                steps=3, batch_size=32)
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["direction"] for r in rep["directions"]] == ["brightness", "redness", "brightness given redness"]
    assert rep["directions"][0]["slope"]["brightness"] > 0  # editing brightness raises it
    # the conditional edit still raises brightness but holds redness: its direction keeps the signed
    # distance to the redness boundary (exactly), and the re-scored redness moves far less than under
    # the plain brightness edit (measured on these parts: about a quarter of it)
    plain, cond = rep["directions"][0]["slope"], rep["directions"][2]["slope"]
    assert cond["brightness"] > 0 and abs(cond["redness"]) < 0.5 * abs(plain["redness"]), (plain, cond)
    given = select_direction(b, "brightness", ["redness"])
    assert abs(float(given.normal @ b.normals[b.meta["attribute_names"].index("redness")])) < 1e-6
    for f in ("change_matrix.png", "conditional_matrix.png", "cosine_matrix.png", "report.md", "steps/start.pt"):
        assert (tmp_path / "report" / f).is_file(), f


def _fit_tiny(bank, g, al):
    from exface.interfacegan.fit import fit_attribute_boundaries

    BankScores(bank).score(g, al, [TinyAttributes()], accelerator="cpu")
    return fit_attribute_boundaries(bank, g, InterFaceGANBoundary(chosen_num_or_ratio=0.25), None, "z")


def test_boundaries_refuse_another_checkpoint_or_truncation(tiny_bank, tmp_path):
    from exface.errors import ExfaceError
    from exface.generators.stylegan import StyleGAN2

    bank, g, al = tiny_bank
    b = _fit_tiny(bank, g, al)
    b.meta["path"] = "runs/b.pt"
    check_applicable(b, TinyGenerator(z_dim=6, resolution=16))  # the same checkpoint, re-created: fine
    with pytest.raises(ExfaceError, match="(?s)another TinyGenerator checkpoint.*generator.weights.*generator.seed"
                                          ".*in: runs/b.pt.*fix: pass the generator of the bank") as err:
        check_applicable(b, TinyGenerator(z_dim=6, resolution=16, seed=1))  # same class and dims, other weights
    assert len(str(err.value).splitlines()) <= 4  # one screen: problem, in, fix
    with pytest.raises(ExfaceError, match="truncation_psi: recorded 1.0, given 0.5"):
        check_applicable(b, TinyGenerator(z_dim=6, resolution=16, truncation_psi=0.5))
    del b.meta["generator"]["args"]["truncation_psi"]  # a record without it: the bank's truncation still decides
    with pytest.raises(ExfaceError, match="truncation_psi: the bank rendered with 1.0, this generator renders with 0.5"):
        check_applicable(b, TinyGenerator(z_dim=6, resolution=16, truncation_psi=0.5))
    # StyleGAN2: the same weights at another path are the same checkpoint; another pickle is not
    from exface.testing import make_stylegan2_pickle

    make_stylegan2_pickle(tmp_path / "a.pkl", resolution=16, z_dim=8, w_dim=8)
    make_stylegan2_pickle(tmp_path / "other.pkl", resolution=16, z_dim=8, w_dim=8, seed=1)
    (tmp_path / "copy.pkl").write_bytes((tmp_path / "a.pkl").read_bytes())
    sg = StyleGAN2(pkl=str(tmp_path / "a.pkl"), truncation_psi=0.7).eval()
    bank2 = LatentBank.build(tmp_path / "bank2", sg, al, TinyEmbedder(), num_latents=30, chunk_size=15, accelerator="cpu")
    b2 = _fit_tiny(bank2, sg, al)
    check_applicable(b2, StyleGAN2(pkl=str(tmp_path / "copy.pkl"), truncation_psi=0.7))
    with pytest.raises(ExfaceError, match="another StyleGAN2 checkpoint.*generator.weights"):
        check_applicable(b2, StyleGAN2(pkl=str(tmp_path / "other.pkl"), truncation_psi=0.7))
    with pytest.raises(ExfaceError, match="truncation_psi: recorded 0.7, given 1.0"):
        check_applicable(b2, StyleGAN2(pkl=str(tmp_path / "copy.pkl")))


def test_report_cache_is_keyed_by_every_part(tiny_bank, tmp_path):
    from exface.alignment.crops import FixedCropAligner
    from exface.interfacegan.edit import FaceEvaluator
    from exface.interfacegan.report import held_out_latents, rescoring_report

    bank, g, al = tiny_bank
    b = _fit_tiny(bank, g, al)
    calls = []

    class Counting(FaceEvaluator):
        def __call__(self, latents, keep_images=False):
            calls.append(len(latents))
            return super().__call__(latents, keep_images)

    def run(generator=g, aligner=al, attribute_aligner=None, predictor=None):
        calls.clear()
        ev = Counting(generator, "z", aligner, TinyEmbedder(), [predictor or TinyAttributes()], attribute_aligner)
        lat = held_out_latents(generator, "z", 4, seed=3)
        rep = rescoring_report(b, [select_direction(b, "brightness")], ev, lat, -1.0, 1.0, 3, cache_dir=tmp_path / "steps")
        return len(calls), rep

    assert run()[0] == 2  # the unedited faces, then the steps
    n, first = run()
    assert n == 0 and first["parts"]["generator"]["class"] == "TinyGenerator"  # all from the cache
    changed = {
        "another checkpoint": dict(generator=TinyGenerator(z_dim=6, resolution=16, seed=1)),
        "another truncation": dict(generator=TinyGenerator(z_dim=6, resolution=16, truncation_psi=0.5)),
        "another crop": dict(attribute_aligner=ResizeAligner((12, 12))),
        "a crop box": dict(aligner=FixedCropAligner((0.0, 0.0, 1.0, 1.0), (16, 16))),
        "another crop box": dict(aligner=FixedCropAligner((0.1, 0.1, 0.9, 0.9), (16, 16))),
        "other predictor args": dict(predictor=TinyAttributes(input_size=(8, 8))),
    }
    for what, kw in changed.items():
        n, rep = run(**kw)
        assert n == 2, what  # recomputed, not the stale scores
        assert run(**kw)[0] == 0, what  # and then cached under its own key
    assert run()[0] == 2  # the last run's files replaced the first parts' (one file per direction)


def test_w_plus_boundaries_flat_and_per_layer(tmp_path):
    from exface.generators.stylegan import StyleGAN2
    from exface.interfacegan.fit import fit_attribute_boundaries

    parts = _tiny_parts(tmp_path, "stylegan2")
    g = StyleGAN2(pkl=parts["generator"]["init_args"]["pkl"], truncation_psi=0.7).eval()
    bank = LatentBank.build(tmp_path / "bank", g, ResizeAligner((16, 16)), TinyEmbedder(), num_latents=40,
                            chunk_size=20, accelerator="cpu")
    BankScores(bank).score(g, ResizeAligner((16, 16)), [TinyAttributes()], accelerator="cpu")
    learner = InterFaceGANBoundary(chosen_num_or_ratio=0.25)
    w = fit_attribute_boundaries(bank, g, learner, ["brightness"], "w")
    flat = fit_attribute_boundaries(bank, g, learner, ["brightness"], "w+")
    per = fit_attribute_boundaries(bank, g, learner, ["brightness"], "w+", per_layer=True)
    assert flat.normals.shape == (1, g.num_ws * g.w_dim) and per.normals.shape == (g.num_ws, g.w_dim)
    assert per.meta["layers"] == list(range(g.num_ws)) and per.meta["attribute_names"] == ["brightness"] * g.num_ws
    # the bank holds unmixed w (w repeated per layer): every layer's boundary is the w boundary
    assert (per.normals @ w.normals[0]).min() > 0.9999
    d = select_direction(per, "brightness", layer=2)
    wp = bank.get([0, 1], ("w",))["w"][:, None].expand(-1, g.num_ws, -1)
    out = linear_interpolate(wp, d, -1.0, 1.0, 3)
    moved = (out[:, 2] - wp).abs().sum(-1)  # only layer 2 moves
    assert moved[:, 2].min() > 0 and moved[:, [0, 1, 3]].max() == 0
    with pytest.raises(ValueError, match="per_layer"):
        fit_attribute_boundaries(bank, g, learner, ["brightness"], "w", per_layer=True)


def test_a_second_predictor_of_the_same_names_is_kept_qualified():
    from exface.interfacegan.scores import score_images

    x = torch.rand(3, 3, 16, 16) * 2 - 1
    out = score_images(x, ResizeAligner((16, 16)), [TinyAttributes(), _SecondTinyPredictor(), TinyAttributes()])
    assert set(out) == {"brightness", "redness", "contrast", "brightness2", "TinyAttributes.brightness",
                        "TinyAttributes.redness", "TinyAttributes.contrast"}
    assert torch.equal(out["brightness"], out["TinyAttributes.brightness"])
