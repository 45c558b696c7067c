"""face-api landmark / expression / age-gender ports: TF conventions, TF.js parity, predictors, pose.

The parity test runs face-api 1.7.15 on TF.js 4.22.0 itself (``tests/tfjs_reference/run.cjs``)
and needs ``npm ci`` in ``tests/tfjs_reference`` once; it is skipped with that instruction
otherwise.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from exface.models.faceapi_ops import pad_to_square, tf_resize_bilinear, tf_same_pad

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LFW = DATA / "lfw-fold1" / "lfw-deepfunneled"
TFJS_DIR = REPO / "tests" / "tfjs_reference"


def _manifest(name: str) -> Path:
    try:
        from exface.zoo import fetch

        return fetch(name)
    except Exception as err:  # offline, no npm: the zoo cannot provide the weights
        pytest.skip(f"face-api weights {name!r} unavailable from the model zoo: {err}")


@pytest.fixture(scope="module")
def nets():
    from exface.models.faceapi_age_gender import AgeGenderNet
    from exface.models.faceapi_expression import FaceExpressionNet
    from exface.models.faceapi_landmarks import FaceLandmark68Net

    return {
        "landmarks": FaceLandmark68Net.from_manifest(_manifest("faceapi-face-landmark-68")),
        "expression": FaceExpressionNet.from_manifest(_manifest("faceapi-face-expression")),
        "age_gender": AgeGenderNet.from_manifest(_manifest("faceapi-age-gender")),
    }


def _lfw_images(n: int, step: int = 8) -> list[np.ndarray]:
    if not LFW.is_dir():
        pytest.skip(f"LFW fold-1 images not found at {LFW} (see ../shared/data/README.md)")
    from PIL import Image

    files = sorted(LFW.glob("*/*.jpg"))[::step][:n]
    return [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files]


def _to_tensor(hwc_255: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc_255)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


# --------------------------------------------------------------------------------------
# TF conventions


def test_tf_same_padding_puts_the_extra_pixel_bottom_right():
    x = torch.ones(1, 1, 112, 112)
    y = tf_same_pad(x, 3, 2)
    assert y.shape[-2:] == (113, 113)
    assert y[0, 0, 0].sum() == 112 and y[0, 0, -1].sum() == 0  # top row kept, bottom row padded
    assert tf_same_pad(torch.ones(1, 1, 7, 7), 3, 1).shape[-2:] == (9, 9)
    assert tf_same_pad(torch.ones(1, 1, 56, 56), 1, 2).shape[-2:] == (56, 56)


def test_legacy_bilinear_resize_matches_tf_rule():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (1, 2, 13, 9)).astype(np.float64)
    out = tf_resize_bilinear(torch.from_numpy(img), (5, 7)).numpy()
    # resizeBilinear(alignCorners=false, halfPixelCenters=false): source = dst * in / out.
    ref = np.zeros((1, 2, 5, 7))
    for i in range(5):
        sy = i * 13 / 5
        y0, y1, fy = math.floor(sy), min(math.ceil(sy), 12), sy - math.floor(sy)
        for j in range(7):
            sx = j * 9 / 7
            x0, x1, fx = math.floor(sx), min(math.ceil(sx), 8), sx - math.floor(sx)
            top = img[..., y0, x0] + (img[..., y0, x1] - img[..., y0, x0]) * fx
            bot = img[..., y1, x0] + (img[..., y1, x1] - img[..., y1, x0]) * fx
            ref[..., i, j] = top + (bot - top) * fy
    np.testing.assert_allclose(out, ref, atol=1e-9)


def test_pad_to_square_splits_odd_difference_like_face_api():
    x = torch.ones(1, 1, 10, 7)  # 3 columns short: Math.round(1.5) = 2 appended, 1 prepended
    y = pad_to_square(x)
    assert y.shape[-2:] == (10, 10)
    assert y[0, 0, 0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0, 0]


def test_wrong_manifest_is_rejected_with_the_weight_name(nets):
    from exface.models.faceapi_landmarks import FaceLandmark68Net

    with pytest.raises(KeyError, match="dense0/conv0/filters"):
        FaceLandmark68Net.from_manifest(_manifest("faceapi-age-gender"))
    with pytest.raises(FileNotFoundError, match="weights_manifest"):
        FaceLandmark68Net.from_manifest("/nonexistent/model-weights_manifest.json")


# --------------------------------------------------------------------------------------
# Parity with TF.js


def _parity_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(1234)
    imgs = [rng.uniform(0, 255, (h, w, 3)).astype(np.float32) for h, w in ((112, 112), (120, 90), (97, 131))]
    if LFW.is_dir():
        for img in _lfw_images(2, step=101):
            imgs.append(img)  # 250x250, resized by the nets
            imgs.append(img[60:200, 70:180])  # a 140x110 face crop: the pad-to-square path
    return imgs


@pytest.mark.slow
def test_parity_with_tfjs(nets, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the TF.js reference needs Node.js >= 14")
    if not (TFJS_DIR / "node_modules" / "@vladmandic" / "face-api").is_dir():
        pytest.skip(f"TF.js reference not installed: run `npm ci` in {TFJS_DIR}")
    imgs = _parity_inputs()
    specs = []
    for i, img in enumerate(imgs):
        img.astype("<f4").tofile(tmp_path / f"x{i}.f32")
        specs.append({"file": f"x{i}.f32", "height": img.shape[0], "width": img.shape[1]})
    req = tmp_path / "request.json"
    req.write_text(json.dumps({"images": specs, "models": ["landmarks", "expression", "age_gender"]}))
    # TF.js loads the npm package's model/ folder; make sure those are the weights our port loads.
    pkg_models = TFJS_DIR / "node_modules" / "@vladmandic" / "face-api" / "model"
    for zoo_name in ("faceapi-face-landmark-68", "faceapi-face-expression", "faceapi-age-gender"):
        manifest = _manifest(zoo_name)
        for f in (manifest, *manifest.parent.glob("*.bin")):
            assert (pkg_models / f.name).read_bytes() == f.read_bytes(), f"{f.name} differs from the zoo's"
    res = subprocess.run([node, str(TFJS_DIR / "run.cjs"), str(req)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = json.loads(res.stdout)
    assert ref["tfjs"] == "4.22.0" and ref["backend"] == "cpu"

    from exface.models.faceapi_ops import faceapi_input

    worst: dict[str, float] = {}

    def check(key: str, ours, theirs, tol: float = 1e-4) -> None:
        d = float(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)).max())
        worst[key] = max(worst.get(key, 0.0), d)
        assert d < tol, f"{key}: max abs diff {d:.3g} vs TF.js"

    for i, img in enumerate(imgs):
        x = _to_tensor(img)
        with torch.no_grad():
            xin = faceapi_input(x)
            lm_raw = nets["landmarks"].forward_raw(xin)[0]
            lm_pos = nets["landmarks"](x)[0]
            ex_logits = nets["expression"].forward_raw(xin)[0]
            ex_prob = nets["expression"](x)[0]
            age, g_logits = nets["age_gender"].forward_raw(xin)
            _, g_prob = nets["age_gender"](x)
        r = ref["results"]["landmarks"][i]
        check("landmarks raw", lm_raw, r["raw"])
        h, w = img.shape[:2]
        check("landmarks relative", lm_pos / torch.tensor([w, h]), np.reshape(r["relative"], (68, 2)))
        check("landmarks pixels", lm_pos, r["positions"], tol=1e-3)  # pixels of a <=250 px image
        r = ref["results"]["expression"][i]
        check("expression logits", ex_logits, r["logits"])
        check("expression probabilities", ex_prob, r["probabilities"])
        r = ref["results"]["age_gender"][i]
        check("age (years)", age, r["age_raw"])
        check("gender logits", g_logits[0], r["gender_logits"])
        p_male = r["gender_probability"] if r["gender"] == "male" else 1 - r["gender_probability"]
        check("gender p(male)", g_prob[0, 0], p_male)
        check("age after post-processing", age, [r["age"]])
    print("max abs diff vs TF.js:", {k: f"{v:.2e}" for k, v in worst.items()})


# --------------------------------------------------------------------------------------
# Predictors


@pytest.fixture(scope="module")
def predictors(nets):
    from exface.attributes import FaceApiAgeGender, FaceApiExpression, FaceApiLandmarks68

    return (
        FaceApiAgeGender(_manifest("faceapi-age-gender")),
        FaceApiExpression(_manifest("faceapi-face-expression")),
        FaceApiLandmarks68(_manifest("faceapi-face-landmark-68")),
    )


def test_predictors_are_registered_and_follow_the_contract(predictors):
    from exface.registry import get_part

    x = torch.rand(3, 3, 112, 112) * 2 - 1
    for p in predictors:
        assert get_part("attributes", type(p).__name__) is type(p)
        with torch.no_grad():
            out = p(x)
        assert tuple(out) == p.attribute_names
        for name, v in out.items():
            assert v.shape == (3,), name
            assert torch.isfinite(v).all(), name
    age_gender, expression, _ = predictors
    with torch.no_grad():
        probs = torch.stack(list(expression(x).values()), 1)
        g = age_gender(x)["gender_male"]
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert ((g >= 0) & (g <= 1)).all()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        expression(torch.zeros(3, 112, 112))


def test_predictor_gradients_reach_the_images(predictors):
    _, expression, _ = predictors
    x = (torch.rand(2, 3, 112, 112) * 2 - 1).requires_grad_(True)
    expression(x)["happy"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in expression.parameters())


def test_landmarks_follow_the_image_geometry(predictors):
    *_, lm = predictors
    imgs = _lfw_images(4, step=50)
    x = torch.cat([_to_tensor(i) for i in imgs])[..., 40:210, 40:210]  # 170x170 face crops
    with torch.no_grad():
        p = lm.landmarks(x)
        p_flip = lm.landmarks(x.flip(-1))
        p_shift = lm.landmarks(torch.nn.functional.pad(x + 1, (20, 0, 10, 0)) - 1)
    assert p.shape == (4, 68, 2)
    left_eye, right_eye = p[:, 36:42].mean(1), p[:, 42:48].mean(1)
    assert (left_eye[:, 0] < right_eye[:, 0]).all()  # iBUG 36-41 is the eye on the image's left
    assert (p[:, 8, 1] > p[:, 30, 1]).all() and (p[:, 30, 1] > left_eye[:, 1]).all()  # chin, nose, eyes
    # A mirrored image: the nose tip mirrors (index 30 is on the symmetry axis).
    w = x.shape[-1]
    assert ((w - 1 - p_flip[:, 30, 0]) - p[:, 30, 0]).abs().max() < 3.0
    # Translating the face translates the landmarks (the net sees the whole, padded image, so
    # allow a few pixels of change in what it predicts).
    shift = (p_shift - p).mean(1)
    assert (shift - torch.tensor([20.0, 10.0])).abs().max() < 4.0


@pytest.mark.slow
def test_attribute_scores_agree_with_each_other_on_lfw(predictors):
    """Smile (from landmarks) tracks the expression net's "happy"; yaw flips with the image."""
    from scipy.stats import spearmanr

    from exface.alignment import ArcFaceAligner, LFW_DEEPFUNNELED_BOX

    age_gender, expression, lm = predictors
    aligner = ArcFaceAligner(source=lm.source.__class__(_manifest("faceapi-face-landmark-68"), box=LFW_DEEPFUNNELED_BOX))
    x = torch.cat([_to_tensor(i) for i in _lfw_images(48, step=16)])
    with torch.no_grad():
        crops = aligner(x)
        scores = lm(crops)
        flipped = lm(crops.flip(-1))
        happy = expression(crops)["happy"]
        ag = age_gender(crops)
    assert spearmanr(scores["smile"].numpy(), happy.numpy()).correlation > 0.35
    assert np.corrcoef(scores["yaw"].numpy(), flipped["yaw"].numpy())[0, 1] < -0.8
    assert scores["yaw"].abs().median() < 25 and scores["pitch"].abs().median() < 20
    assert ((scores["eyes_open"] > 0.15) & (scores["eyes_open"] < 0.5)).float().mean() > 0.9
    assert ((ag["age"] > 15) & (ag["age"] < 80)).float().mean() > 0.9  # LFW: adults in the news


# --------------------------------------------------------------------------------------
# Landmark scores


def _project(yaw: float, pitch: float, roll: float, size: int = 200) -> torch.Tensor:
    """68 landmarks whose rigid points are the generic face seen with the given pose."""
    import cv2

    from exface.attributes.pose import GENERIC_FACE_3D

    fwd_yaw, fwd_pitch = math.radians(yaw), math.radians(pitch)
    # Rotation taking the face's forward (0, 0, -1) to the direction of (yaw, pitch), then roll.
    ry = cv2.Rodrigues(np.array([0.0, -fwd_yaw, 0.0]))[0]
    rx = cv2.Rodrigues(np.array([-fwd_pitch, 0.0, 0.0]))[0]
    rz = cv2.Rodrigues(np.array([0.0, 0.0, math.radians(roll)]))[0]
    r = ry @ rx @ rz  # roll about the face's own axis, then pitch, then yaw
    f = float(size)
    cam = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]])
    model = np.array(list(GENERIC_FACE_3D.values()), dtype=np.float64)
    img, _ = cv2.projectPoints(model, cv2.Rodrigues(r)[0], np.array([0.0, 0.0, 400.0]), cam, None)
    pts = np.zeros((68, 2))
    pts[list(GENERIC_FACE_3D)] = img.reshape(-1, 2)
    return torch.tensor(pts, dtype=torch.float32)[None]


@pytest.mark.parametrize("yaw,pitch,roll", [(0, 0, 0), (25, 0, 0), (-20, 10, 0), (10, -15, 8), (0, 0, -12)])
def test_head_pose_recovers_a_projected_generic_face(yaw, pitch, roll):
    from exface.attributes.pose import head_pose

    pose = head_pose(_project(yaw, pitch, roll), (200, 200))
    got = (pose["yaw"].item(), pose["pitch"].item(), pose["roll"].item())
    assert np.allclose(got, (yaw, pitch, roll), atol=1.5), got


def test_mouth_eye_and_smile_scores_respond_to_the_right_points():
    from exface.attributes.pose import eyes_open, mouth_open, smile

    base = torch.zeros(1, 68, 2)
    # Eyes: corners 10 apart, lids +-1.5 -> EAR 0.3; closed lids -> 0.
    for start, x0 in ((36, 0.0), (42, 30.0)):
        base[0, start:start + 6] = torch.tensor(
            [[x0, 0], [x0 + 3, -1.5], [x0 + 7, -1.5], [x0 + 10, 0], [x0 + 7, 1.5], [x0 + 3, 1.5]]
        )
    # Mouth: corners at y=40, width 20; inner lips 61-63 / 65-67.
    base[0, 48], base[0, 54] = torch.tensor([5.0, 40]), torch.tensor([25.0, 40])
    base[0, [51, 57, 62, 66]] = torch.tensor([[15.0, 38], [15.0, 42], [15.0, 40], [15.0, 40]])
    base[0, [61, 63, 65, 67]] = torch.tensor([[10.0, 40], [20.0, 40], [20.0, 40], [10.0, 40]])
    assert eyes_open(base).item() == pytest.approx(0.3)
    assert mouth_open(base).item() == pytest.approx(0.0)
    assert smile(base).item() == pytest.approx(0.0)
    opened = base.clone()
    opened[0, [65, 66, 67], 1] += 6.0
    assert mouth_open(opened).item() == pytest.approx(6.0 / 20)
    smiling = base.clone()
    smiling[0, [48, 54], 1] -= 2.0  # corners up
    assert smile(smiling).item() == pytest.approx(2.0 / 20)
    closed = base.clone()
    closed[0, 36:48, 1] = 0.0
    assert eyes_open(closed).item() == pytest.approx(0.0)
    # Ratios do not change with rotation and scale of the face.
    rot = torch.tensor([[math.cos(0.4), -math.sin(0.4)], [math.sin(0.4), math.cos(0.4)]])
    moved = (smiling @ rot.T) * 3.0 + 7.0
    assert smile(moved).item() == pytest.approx(0.1, abs=1e-5)
    assert eyes_open(moved).item() == pytest.approx(0.3, abs=1e-5)
