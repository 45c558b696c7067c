"""Alignment: similarity fits, warps, ArcFace and dlib-chip templates, fixed crops, landmark aligners.

The dlib-chip geometry is checked against ``dlib.get_face_chip`` itself on LFW images given
the same 5 points; the landmark sources against dlib's own 5-point predictor.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from exface.alignment.geometry import apply_affine, invert_affine, similarity_lstsq, warp_affine
from exface.alignment.keypoints import to_keypoints
from exface.alignment.templates import ArcFaceTemplate, DlibChipTemplate, make_template

DATA = Path(os.environ.get("EXFACE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LFW = DATA / "lfw-fold1" / "lfw-deepfunneled"


def _lfw(n: int, step: int) -> list[np.ndarray]:
    if not LFW.is_dir():
        pytest.skip(f"LFW fold-1 images not found at {LFW} (see ../shared/data/README.md)")
    from PIL import Image

    return [np.asarray(Image.open(f).convert("RGB")).copy() for f in sorted(LFW.glob("*/*.jpg"))[::step][:n]]


def _tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 127.5 - 1 for i in imgs])


def _dlib():
    dlib = pytest.importorskip("dlib", reason="dlib-bin is not installed (pip install dlib-bin)")
    from exface.alignment.landmarks import face_recognition_models_path

    try:
        path = face_recognition_models_path("shape_predictor_5_face_landmarks.dat")
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(str(err))
    return dlib, dlib.shape_predictor(str(path))


def _faceapi_manifest() -> Path:
    try:
        from exface.zoo import fetch

        return fetch("faceapi-face-landmark-68")
    except Exception as err:
        pytest.skip(f"face-api landmark weights unavailable from the model zoo: {err}")


# --------------------------------------------------------------------------------------
# Geometry


def _umeyama_numpy(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (1991) with SVD, written out as in the paper, to check the closed form against."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    c = np.trace(np.diag(sig) @ e) / s.var(0).sum()
    return np.hstack([c * r, (md - c * r @ ms)[:, None]])


def test_similarity_lstsq_equals_umeyama_and_recovers_exact_transforms():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (4, 5, 2))
    ang, sc, t = 0.3, 1.7, np.array([5.0, -3.0])
    m = sc * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    exact = src @ m.T + t
    a = similarity_lstsq(torch.tensor(src), torch.tensor(exact)).numpy()
    np.testing.assert_allclose(a[0], np.hstack([m, t[:, None]]), atol=1e-9)
    noisy = exact + rng.normal(0, 2.0, exact.shape)
    a = similarity_lstsq(torch.tensor(src), torch.tensor(noisy)).numpy()
    for i in range(4):
        np.testing.assert_allclose(a[i], _umeyama_numpy(src[i], noisy[i]), atol=1e-9)
    pts = torch.tensor(src)
    np.testing.assert_allclose(apply_affine(invert_affine(torch.tensor(a)), apply_affine(torch.tensor(a), pts)), pts)


def test_warp_affine_uses_pixel_centres_and_black_borders():
    x = torch.rand(2, 3, 20, 30) * 2 - 1
    ident = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3)
    torch.testing.assert_close(warp_affine(x, ident, (20, 30)), x, atol=1e-5, rtol=0)
    shifted = ident.clone()
    shifted[:, 0, 2] = 5.0  # crop column u samples image column u + 5
    out = warp_affine(x, shifted, (20, 30))
    torch.testing.assert_close(out[..., :25], x[..., 5:], atol=1e-5, rtol=0)
    assert (out[..., 26:] == -1).all()  # outside the image: black


def test_arcface_crop_matches_opencv_warp_affine():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (160, 140, 3)).astype(np.float32)
    tmpl = ArcFaceTemplate()
    # Keypoints: the template moved into the image by a known similarity plus noise.
    pts = tmpl.points.numpy() * 1.2 @ np.array([[0.98, -0.2], [0.2, 0.98]]).T + [10.0, 15.0]
    pts = pts + rng.normal(0, 1.0, pts.shape)
    a = tmpl.crop_to_image(torch.tensor(pts, dtype=torch.float32)[None])
    x = torch.from_numpy(img).permute(2, 0, 1)[None] / 127.5 - 1
    ours = ((warp_affine(x, a, (112, 112))[0].permute(1, 2, 0) + 1) * 127.5).numpy()
    m = invert_affine(a.double())[0].numpy()  # image -> crop, what insightface hands cv2
    ref = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0.0)
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(ours[inner] - ref[inner]).max() < 0.5  # cv2 uses fixed-point weights


def test_template_presets_and_keypoint_schemes():
    assert make_template("arcface").output_size == (112, 112)
    a96 = make_template("arcface96")
    assert a96.output_size == (112, 96) and a96.points[0, 0].item() == pytest.approx(30.2946)
    assert make_template("arcface").points[0, 0].item() == pytest.approx(38.2946)
    assert make_template("dlib").output_size == (150, 150)
    with pytest.raises(ValueError, match="presets are"):
        make_template("nope")
    p68 = torch.arange(68 * 2, dtype=torch.float32).view(1, 68, 2)
    assert to_keypoints(p68, "ibug68", "dlib5")[0, :, 0].tolist() == [90.0, 84.0, 72.0, 78.0, 66.0]
    five = to_keypoints(p68, "ibug68", "insightface5")
    torch.testing.assert_close(five[0, 0], p68[0, 36:42].mean(0))
    with pytest.raises(ValueError, match="no mouth corners"):
        to_keypoints(torch.zeros(1, 5, 2), "dlib5", "insightface5")
    with pytest.raises(ValueError, match=r"\[N, 68, 2\]"):
        to_keypoints(torch.zeros(1, 5, 2), "ibug68", "dlib5")


# --------------------------------------------------------------------------------------
# dlib chips


@pytest.mark.slow
def test_dlib_chip_geometry_matches_dlib_get_face_chip():
    dlib, predictor = _dlib()
    imgs = _lfw(12, step=60)
    tmpl = DlibChipTemplate(150, 0.25)
    errs = []
    for img in imgs:
        shape = predictor(img, dlib.rectangle(70, 70, 180, 180))
        ref = dlib.get_face_chip(img, shape, size=150, padding=0.25).astype(np.float32)
        pts = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)[None]
        out = warp_affine(_tensor([img]), tmpl.crop_to_image(pts), (150, 150))
        ours = ((out[0].permute(1, 2, 0) + 1) * 127.5).numpy()
        errs.append(np.abs(ours - ref))
        # dlib truncates its float samples to uint8: floor(ours) is dlib's chip.
        assert (np.abs(np.floor(ours + 1e-3) - ref) > 0.5).mean() < 0.01
    err = np.stack(errs)
    assert err.mean() < 0.6 and err.max() <= 1.01, (err.mean(), err.max())


@pytest.mark.slow
def test_dlib_chip_aligner_with_faceapi_landmarks_agrees_with_dlibs_pipeline():
    """face-api's 68 points -> dlib's 5 -> chip, vs dlib's 5-point predictor -> get_face_chip."""
    dlib, predictor = _dlib()
    from exface.alignment import DlibChipAligner, FaceApiLandmarks

    imgs = _lfw(16, step=50)
    aligner = DlibChipAligner(source=FaceApiLandmarks(_faceapi_manifest(), box="lfw_deepfunneled"))
    x = _tensor(imgs)
    with torch.no_grad():
        kp = aligner.keypoints(x)
        chips = aligner(x)
    assert chips.shape == (16, 3, 150, 150)
    kp_err, px_err = [], []
    detector = dlib.get_frontal_face_detector()
    for i, img in enumerate(imgs):
        dets = detector(img, 1)
        if not len(dets):
            continue
        shape = predictor(img, max(dets, key=lambda r: r.area()))
        ref_pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        iod = np.linalg.norm((ref_pts[0] + ref_pts[1]) / 2 - (ref_pts[2] + ref_pts[3]) / 2)
        kp_err.append(np.linalg.norm(kp[i].numpy() - ref_pts, axis=1).mean() / iod)
        ref = dlib.get_face_chip(img, shape, size=150, padding=0.25).astype(np.float32)
        ours = ((chips[i].permute(1, 2, 0) + 1) * 127.5).numpy()
        px_err.append(np.abs(ours - ref).mean())
    assert len(kp_err) >= 12
    print(f"face-api vs dlib 5 points: mean error {np.mean(kp_err):.3f} IOD; chip mean abs diff {np.mean(px_err):.1f}/255")
    assert np.median(kp_err) < 0.08
    assert np.median(px_err) < 20.0


def test_dlib_chip_pyramid_for_large_images():
    """Crops that shrink > 2x go down a Gaussian pyramid first (no aliasing on fine patterns)."""
    tmpl = DlibChipTemplate(150, 0.25)
    # A face-sized set of points in a 1200x1200 image: about 4x larger than the chip.
    pts = tmpl.points.float()[None] * 4.0 + 100.0
    a = tmpl.crop_to_image(pts)
    xx = torch.arange(1200).expand(1200, 1200)
    stripes = ((xx % 2) * 2 - 1).float().expand(1, 3, 1200, 1200)  # 1-px stripes: mean grey
    with_aa = warp_affine(stripes, a, (150, 150), antialias=True)
    without = warp_affine(stripes, a, (150, 150), antialias=False)
    assert with_aa[..., 10:-10, 10:-10].abs().mean() < 0.1 < without[..., 10:-10, 10:-10].abs().mean()


# --------------------------------------------------------------------------------------
# Aligners


def test_fixed_crop_and_resize_aligners():
    from exface.alignment import FixedCropAligner, ResizeAligner

    x = (torch.rand(5, 3, 256, 256) * 2 - 1).requires_grad_(True)
    crop = FixedCropAligner("ffhq_arcface", (112, 112))
    out = crop(x)
    assert out.shape == (5, 3, 112, 112)
    out.sum().backward()
    assert x.grad[..., :35, :].abs().sum() == 0 and x.grad[..., 35:223, 32:220].abs().sum() > 0
    exact = FixedCropAligner((0.25, 0.25, 0.75, 0.75), (128, 128))(x.detach())
    torch.testing.assert_close(exact, x.detach()[..., 64:192, 64:192])
    outside = FixedCropAligner((-0.5, 0.0, 0.5, 1.0), (256, 256))(x.detach())
    assert (outside[..., :128] == -1).all() and torch.equal(outside[..., 128:], x.detach()[..., :128])
    assert ResizeAligner((112, 96))(torch.zeros(2, 3, 1024, 1024)).shape == (2, 3, 112, 96)
    with pytest.raises(ValueError, match="named boxes"):
        FixedCropAligner("nope")


def test_landmark_aligner_runs_batched_on_any_size_and_is_differentiable():
    from exface.alignment import ArcFaceAligner, FaceApiLandmarks, LandmarkAligner

    source = FaceApiLandmarks(_faceapi_manifest())
    aligner = ArcFaceAligner(source=source)
    x = (torch.rand(3, 3, 97, 131) * 2 - 1).requires_grad_(True)
    crops, a = aligner.align(x)
    assert crops.shape == (3, 3, 112, 112) and a.shape == (3, 2, 3)
    crops.mean().backward()
    assert x.grad.abs().sum() > 0
    # Given keypoints equal to the template, the crop is the identity window.
    kp = ArcFaceTemplate().points.float()[None].expand(2, -1, -1)
    img = torch.rand(2, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(aligner.align(img, keypoints=kp)[0], img, atol=1e-4, rtol=0)
    assert LandmarkAligner("arcface96", source=source).output_size == (112, 96)
    with pytest.raises(ValueError, match="no mouth corners"):
        LandmarkAligner("arcface", source="DlibLandmarks", source_args={"points": 5, "detect": False})


def test_parts_are_registered_and_mtcnn_explains_its_dependency():
    from exface.registry import list_parts

    aligners = {p.name for p in list_parts(kind="aligners")}
    assert {"ArcFaceAligner", "DlibChipAligner", "LandmarkAligner", "FixedCropAligner", "ResizeAligner"} <= aligners
    sources = {p.name for p in list_parts(kind="landmark_sources")}
    assert {"FaceApiLandmarks", "DlibLandmarks", "MTCNNLandmarks"} <= sources
    try:
        import facenet_pytorch  # noqa: F401
    except ImportError:
        from exface.alignment import MTCNNLandmarks

        with pytest.raises(ImportError, match="pip install facenet-pytorch"):
            MTCNNLandmarks()


@pytest.mark.slow
def test_dlib_landmark_source_matches_dlib_and_feeds_the_chip_aligner():
    dlib, predictor = _dlib()
    from exface.alignment import DlibChipAligner, DlibLandmarks

    imgs = _lfw(3, step=200)
    source = DlibLandmarks(points=5, detect=False, box=(0.28, 0.28, 0.72, 0.72))
    assert source.scheme == "dlib5"
    pts = source(_tensor(imgs))
    for i, img in enumerate(imgs):
        shape = predictor(img, dlib.rectangle(70, 70, 179, 179))
        np.testing.assert_array_equal(pts[i].numpy(), [[p.x, p.y] for p in shape.parts()])
    chips = DlibChipAligner(source=source)(_tensor(imgs))
    ref = dlib.get_face_chip(imgs[0], predictor(imgs[0], dlib.rectangle(70, 70, 179, 179)), 150, 0.25)
    assert np.abs(((chips[0].permute(1, 2, 0) + 1) * 127.5).numpy() - ref).mean() < 0.6
