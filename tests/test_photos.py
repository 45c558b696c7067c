"""Real photos and real benchmark folders (issue 14): LFW layouts, face choice and counts,
region-only prefiltering for large photos, saved embeddings, template maps for .bin sets.

Folder-layout tests build the layouts users unpack (``lfw-deepfunneled/``,
``images_deepfunneled/``, Kaggle's doubled folder, scikit-learn's ``lfw_home/``, the 150-px
originals) as symlinks to the shared fold-1 images in temporary folders; nothing is renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from exface.alignment.geometry import warp_affine
from exface.evaluation.datasets import load_insightface_bin, load_verification_set, write_insightface_bin


def _fold1(shared_data) -> Path:
    d = shared_data / "lfw-fold1"
    if not (d / "pairs.txt").is_file():
        pytest.skip(f"LFW fold 1 not found at {d}")
    return d


def _small_pairs(fold1: Path, path: Path, n: int = 4) -> Path:
    """The first ``n`` matched and ``n`` mismatched pairs of fold 1 as an official-format pairs.txt."""
    lines = (fold1 / "pairs.txt").read_text().splitlines()
    path.write_text("\n".join([f"1\t{n}", *lines[1 : 1 + n], *lines[301 : 301 + n]]) + "\n")
    return path


# --------------------------------------------------------------------------- folder layouts


@pytest.mark.parametrize(
    "layout",
    ["lfw-deepfunneled", "images_deepfunneled", "lfw_funneled", "lfw", "lfw-deepfunneled/lfw-deepfunneled",
     "lfw_home/lfw_funneled", "my_faces/any_name"],
)
def test_lfw_layouts_are_found_without_renaming(shared_data, tmp_path, layout):
    fold1 = _fold1(shared_data)
    (tmp_path / layout).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / layout).symlink_to(fold1 / "lfw-deepfunneled", target_is_directory=True)
    (tmp_path / "pairs.txt").symlink_to(fold1 / "pairs.txt")
    vs = load_verification_set(tmp_path)
    assert len(vs) == 600 and Path(vs.extra["image_root"]) == tmp_path / layout
    assert vs.image(0).shape == (250, 250, 3)


def test_image_dir_option_takes_the_150px_originals(shared_data, tmp_path):
    fold1 = _fold1(shared_data)
    (tmp_path / "lfw-original-150").symlink_to(fold1 / "lfw-original-150", target_is_directory=True)
    (tmp_path / "lfw-deepfunneled").symlink_to(fold1 / "lfw-deepfunneled", target_is_directory=True)
    (tmp_path / "pairs.txt").symlink_to(fold1 / "pairs.txt")
    # Beside pairs.txt the deep-funneled layout wins; --image_dir picks the originals.
    assert Path(load_verification_set(tmp_path).extra["image_root"]).name == "lfw-deepfunneled"
    vs = load_verification_set(tmp_path / "pairs.txt", image_dir=tmp_path / "lfw-original-150")
    assert vs.image(0).shape == (150, 150, 3) and vs.extra["lfw_variant"] == "original"
    # Two unknown folders holding the people: ambiguous, and the error names the option.
    other = tmp_path / "b"
    other.mkdir()
    (other / "copy").symlink_to(fold1 / "lfw-original-150", target_is_directory=True)
    (tmp_path / "lfw-deepfunneled").unlink()
    (tmp_path / "a").mkdir()
    (tmp_path / "lfw-original-150").rename(tmp_path / "a" / "x")
    with pytest.raises(FileNotFoundError, match="several image folders.*--image_dir"):
        load_verification_set(tmp_path)
    with pytest.raises(FileNotFoundError, match="--image_dir"):
        load_verification_set(tmp_path / "pairs.txt", image_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no pairs.txt; give the LFW pairs file itself in --datasets"):
        load_verification_set(other)
    with pytest.raises(ValueError, match="drop --image_dir"):
        load_verification_set(tmp_path / "x.bin", image_dir=tmp_path)


# --------------------------------------------------------------------------- warps of large photos


def test_uint8_and_float_photos_give_the_same_crops():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 97, 131), dtype=torch.uint8, generator=g)
    x = u8.float() / 127.5 - 1
    a = torch.tensor([[[0.8, 0.1, 10.0], [-0.1, 0.8, 5.0]], [[1.5, 0.0, -4.0], [0.0, 1.5, 3.0]]])
    torch.testing.assert_close(warp_affine(u8, a, (40, 50)), warp_affine(x, a, (40, 50)), atol=1e-5, rtol=0)
    # A crop wholly outside the image is black.
    far = torch.tensor([[[1.0, 0.0, 1000.0], [0.0, 1.0, 0.0]]]).expand(2, 2, 3)
    assert (warp_affine(u8, far, (8, 8)) == -1).all()


def test_large_photos_prefilter_only_the_crop_region():
    """A 4x shrink from a smooth 1500-px photo matches the crop of the photo shrunk 6x beforehand."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    small = F.interpolate(torch.rand(1, 3, 25, 25, generator=g) * 2 - 1, size=(250, 250), mode="bicubic", align_corners=False)
    big = F.interpolate(small, size=(1500, 1500), mode="bicubic", align_corners=False).clamp(-1, 1)
    a_small = torch.tensor([[[0.7, 0.05, 60.0], [-0.05, 0.7, 70.0]]])
    a_big = a_small.clone()
    a_big[:, :, :2] *= 6
    a_big[:, :, 2] = (a_big[:, :, 2] + 0.5) * 6 - 0.5
    ours = warp_affine(big, a_big, (150, 150))
    ref = warp_affine(F.interpolate(big, size=(250, 250), mode="bilinear", antialias=True), a_small, (150, 150))
    assert (ours - ref).abs().mean() < 0.01, (ours - ref).abs().mean()
    # Without the prefilter fine stripes alias; with it they average to grey.
    xx = torch.arange(1500).expand(1500, 1500)
    stripes = ((xx % 2) * 2 - 1).float().expand(1, 3, 1500, 1500)
    assert warp_affine(stripes, a_big, (150, 150))[..., 5:-5, 5:-5].abs().mean() < 0.1
    assert warp_affine(stripes, a_big, (150, 150), antialias=False)[..., 5:-5, 5:-5].abs().mean() > 0.5


# --------------------------------------------------------------------------- several faces, no face


def _boxes_detector(boxes: list[list[list[float]]]):
    """A stand-in face detector: fixed pixel boxes (given for 500-px-wide images) per image."""
    from exface.detectors.base import Detections, FaceDetector

    class BoxesDetector(FaceDetector):
        def detect(self, images: torch.Tensor) -> list[Detections]:
            s = images.shape[-1] / 500.0
            out = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) * s for b in boxes[: len(images)]]
            return [Detections(b, torch.ones(len(b))) for b in out]

    return BoxesDetector()


def test_nearest_face_is_chosen_and_counted():
    from exface.alignment.faces import FaceTally, pick_faces
    from exface.detectors.base import Detections

    expected = torch.tensor([[100.0, 100.0, 200.0, 200.0]]).expand(3, 4)
    cands = [torch.tensor([[0.0, 0.0, 400.0, 400.0], [110.0, 90.0, 210.0, 190.0]]), torch.zeros(0, 4),
             torch.tensor([[300.0, 300.0, 350.0, 350.0]])]
    tally = FaceTally()
    dets = [Detections(c, torch.ones(len(c))) for c in cands]
    boxes = pick_faces(dets, expected, (0.25, 0.25, 0.5, 0.5), (400, 400), tally)
    assert tally.counts == [2, 0, 1]
    torch.testing.assert_close(boxes[0], cands[0][1])  # the nearer, not the larger
    torch.testing.assert_close(boxes[1], expected[1])  # none found: the expected box
    torch.testing.assert_close(boxes[2], cands[2][0])
    s = tally.summary(["a.jpg", "b.jpg", "c.jpg"])
    assert s["no_face"] == 1 and s["several_faces"] == 1 and s["no_face_images"] == ["b.jpg"]


@pytest.mark.slow
def test_benchmark_reports_no_face_and_several_face_images(shared_data, tmp_path):
    """Two LFW faces side by side (500x250) and a blank image, through a configured detector."""
    from exface.embedders import FaceApiResNet34
    from exface.evaluation.benchmark import default_aligner, format_table, score_set
    from exface.evaluation.datasets import VerificationSet

    fold1 = _fold1(shared_data)
    from PIL import Image

    people = sorted((fold1 / "lfw-deepfunneled").iterdir())[:2]
    a, b = (np.asarray(Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB")) for p in people)
    pair = np.concatenate([a, b], axis=1)  # a on the left, b on the right
    blank = np.full_like(pair, 128)
    right = np.concatenate([np.full_like(a, 128), b], axis=1)
    images = np.stack([pair, right, blank, pair])
    vs = VerificationSet("multi", pairs=np.array([[0, 1], [2, 3]]), issame=np.array([True, False]), images=images)
    # Faces in pixels of 500-px-wide images: a's at x 70..180, b's at x 320..430.
    det = _boxes_detector([[[70, 70, 180, 190], [320, 70, 430, 190]], [[320, 70, 430, 190]], [], [[70, 70, 180, 190], [320, 70, 430, 190]]])
    emb = FaceApiResNet34()
    # The expected box is the right half's LFW box: image 0 must get b, like image 1.
    aligner = default_aligner(VerificationSet("p", np.zeros((0, 2), int), np.zeros(0, bool), paths=[Path("x")]),
                              emb, box=(0.65, 0.28, 0.84, 0.75), detector=det)
    r, e, scores = score_set(vs, emb, aligner, folds=2, flip=False)
    assert r["faces"]["no_face"] == 1 and r["faces"]["several_faces"] == 2 and r["faces"]["images"] == 4
    assert r["faces"]["no_face_images"] == ["#2"]
    assert float(e.plain[0] @ e.plain[1]) > 0.99  # the same (right-hand) face was chosen
    assert any("several faces" in n for n in r["notes"]) and any("no face" in n for n in r["notes"])
    assert "multi" in format_table([r])


# --------------------------------------------------------------------------- the benchmark command


@pytest.mark.slow
def test_originals_folder_saved_embeddings_are_reused(shared_data, tmp_path, monkeypatch, capsys):
    """`--image_dir` on the 150-px originals; a second run (other flip, folds, FARs) embeds nothing."""
    from exface.cli import main
    from exface.evaluation import benchmark

    fold1 = _fold1(shared_data)
    (tmp_path / "lfw").symlink_to(fold1 / "lfw-original-150", target_is_directory=True)
    pairs = _small_pairs(fold1, tmp_path / "pairs.txt", n=3)
    out = tmp_path / "bench"
    base = ["benchmark", "--datasets", str(pairs), "--image_dir", str(tmp_path / "lfw"), "--output_dir", str(out),
            "--save_embeddings", "true", "--threads", "2", "--batch_size", "8"]
    main(base + ["--folds", "2"])
    first = json.loads((out / "results.json").read_text())["results"][0]
    assert first["embedded"] and first["flip"] is False and first["flip_is_paper_default"]
    for name in ("lfw-pairs.embeddings.npy", "lfw-pairs.embeddings_flip.npy", "lfw-pairs.scores.npy", "roc_lfw-pairs.png"):
        assert (out / name).is_file(), name
    assert (out / "roc_lfw-pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vs = load_verification_set(pairs, image_dir=tmp_path / "lfw")
    assert np.load(out / "lfw-pairs.embeddings.npy").shape == (vs.num_images, 128)
    assert first["accuracy"] >= 0.66  # 6 pairs of real faces

    def no_embedding(*args, **kwargs):
        raise AssertionError("the saved embeddings should have been reused")

    monkeypatch.setattr(benchmark, "compute_embeddings", no_embedding)
    capsys.readouterr()
    main(base + ["--flip", "true", "--folds", "3", "--fars", "[0.1, 0.5]"])
    second = json.loads((out / "results.json").read_text())["results"][0]
    assert not second["embedded"] and second["flip"] is True and not second["flip_is_paper_default"]
    assert second["num_folds"] == 3 and set(second["tar_at_far"]) == {"1e-01", "5e-01"}
    assert "reused" in second["saved_embeddings"]
    printed = capsys.readouterr().out
    assert "yes*" in printed and "LFW" in printed  # flip off-protocol is marked; the papers' row
    report = (out / "report.md").read_text()
    assert "saved embeddings reused" in report and "TAR@FAR=1e-1" in report
    # Another aligner setting (a different start box) must not reuse them.
    from exface.embedders import FaceApiResNet34

    emb = FaceApiResNet34()
    key = benchmark._cache_key(vs, emb, benchmark.default_aligner(vs, emb, box=(0.2, 0.2, 0.8, 0.8)))
    saved, why = benchmark.load_saved_embeddings(out, "lfw-pairs", key)
    assert saved is None and "differ in aligner" in why
    key = benchmark._cache_key(vs, emb, benchmark.default_aligner(vs, emb))
    assert benchmark.load_saved_embeddings(out, "lfw-pairs", key)[0] is not None


def test_papers_table_and_options_errors(tmp_path):
    from exface.evaluation.benchmark import papers_table, run_benchmark

    rs = [{"dataset": "lfw", "path": "x/lfw.bin", "accuracy": 0.99, "flip": True},
          {"dataset": "cfp_fp", "path": "x/cfp_fp.bin", "accuracy": 0.90, "flip": True},
          {"dataset": "mine", "path": "x/mine.bin", "accuracy": 0.5, "flip": True}]
    table = papers_table(rs, "Net", markdown=True)
    assert "| Net | 99.00 | 90.00 | - | - | - | 94.50 | yes |" in table and "average (2 of 5)" in table
    assert papers_table(rs[2:], "Net") is None
    with pytest.raises(ValueError, match="--fars"):
        run_benchmark(["a.bin"], nn.Identity(), fars=[2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_dir"):
        run_benchmark(["a.bin"], nn.Identity(), save_embeddings=True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- .bin sets, other templates


def test_write_bin_roundtrip(tmp_path):
    imgs = [np.full((112, 112, 3), v, np.uint8) for v in (10, 200, 90, 30)]
    path = write_insightface_bin(tmp_path / "t.bin", imgs, [True, False])
    vs = load_insightface_bin(path)
    np.testing.assert_array_equal(vs.issame, [True, False])
    assert np.abs(vs.images.astype(int) - np.stack(imgs)).max() <= 2
    with pytest.raises(ValueError, match="two images per pair"):
        write_insightface_bin(tmp_path / "u.bin", imgs[:3], [True, False])


def test_template_map_recuts_arcface_crops_as_dlib_chips(shared_data):
    """An ArcFace crop mapped to the dlib template lands close to the chip cut from the photo."""
    from exface.alignment import TemplateMapAligner
    from exface.alignment.templates import ArcFaceTemplate

    fold1 = _fold1(shared_data)
    from PIL import Image

    img = np.asarray(Image.open(sorted((fold1 / "lfw-deepfunneled").glob("*/*.jpg"))[0]).convert("RGB"))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None]
    # A mean face placed by the ArcFace template itself: both crops come from the same points.
    kp5 = ArcFaceTemplate().points.float()[None] * 1.2 + 50  # insightface5, in photo pixels
    arc = warp_affine(x, ArcFaceTemplate().crop_to_image(kp5), (112, 112))
    mapped = TemplateMapAligner("arcface", "dlib")(arc)
    assert mapped.shape == (1, 3, 150, 150)
    assert (mapped[..., -8:, :] == -1).all()  # the lost bottom strip is black
    # Directly: the chip whose image->chip map is the template map composed with the ArcFace crop.
    from exface.alignment.templates import TEMPLATE_MAPS

    m = torch.tensor(TEMPLATE_MAPS[("arcface", "dlib")], dtype=torch.float32)
    a_arc = ArcFaceTemplate().crop_to_image(kp5)[0]
    direct = torch.cat([a_arc[:, :2] @ m[:, :2], a_arc[:, :2] @ m[:, 2:] + a_arc[:, 2:]], 1)[None]
    chip = warp_affine(x, direct, (150, 150))
    inner = (slice(None), slice(None), slice(5, 130), slice(5, 145))
    assert (mapped[inner] - chip[inner]).abs().mean() < 0.03  # two resamplings vs one
    with pytest.raises(ValueError, match="known maps: arcface->dlib"):
        TemplateMapAligner("dlib", "arcface")


def test_benchmark_loads_an_fr_training_checkpoint_by_path(shared_data, tmp_path):
    """`--embedder runs/fr/...ckpt`: a FaceRecognitionModule checkpoint is benchmarked as is."""
    from exface.cli import main
    from exface.embedders.mobilefacenet import MobileFaceNetEmbedder
    from exface.fr.module import FaceRecognitionModule
    from exface.losses import CosFace

    small = shared_data / "insightface-bin" / "small_lfw.bin"
    if not small.is_file():
        pytest.skip(f"{small} not found")
    torch.manual_seed(0)
    model = FaceRecognitionModule(MobileFaceNetEmbedder(16, 112, width=0.25), lambda d, c: CosFace(d, c, s=16, m=0.2))
    ckpt: dict = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    out = tmp_path / "bench"
    main(["benchmark", "--datasets", str(small), "--embedder", str(path), "--output_dir", str(out), "--folds", "2"])
    payload = json.loads((out / "results.json").read_text())
    assert payload["settings"]["embedder"] == "FRCheckpointEmbedder"
    assert payload["results"][0]["aligner"].startswith("ResizeAligner(output_size=(112, 112)")
    from exface.evaluation.benchmark import resolve_embedder

    with pytest.raises(FileNotFoundError, match="neither a registered embedder nor a checkpoint"):
        resolve_embedder(str(tmp_path / "nope.ckpt"))
