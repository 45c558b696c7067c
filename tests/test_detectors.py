"""Face detectors: face-api's SSD MobileNet v1 port (TF.js parity), face selection, NMS.

The parity test runs face-api 1.7.15's own ``detectAllFaces`` on TF.js 4.22
(``tests/tfjs_reference/run.cjs``); it needs node and ``npm ci`` in ``tests/tfjs_reference``
and is skipped with that instruction otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from exface.detectors.base import Detections, select_faces
from exface.models.faceapi_ssd import ssd_input, ssd_nms
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
ORIG = SHARED_DATA / "lfw-fold1" / "lfw-original-150"
TFJS_DIR = REPO / "tests" / "tfjs_reference"


def test_select_faces_by_each_rule():
    dets = [
        Detections(torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0], [70.0, 0.0, 100.0, 40.0]]),
                   torch.tensor([0.9, 0.6, 0.7])),
        Detections(torch.zeros(0, 4), torch.zeros(0)),
    ]
    size = (100, 100)
    boxes, found = select_faces(dets, size, "largest")
    assert found.tolist() == [True, False] and boxes[0].tolist() == [70.0, 0.0, 100.0, 40.0]
    assert select_faces(dets, size, "best")[0][0].tolist() == [0.0, 0.0, 10.0, 10.0]
    assert select_faces(dets, size, "centre")[0][0].tolist() == [40.0, 40.0, 60.0, 60.0]
    near = select_faces(dets, size, "nearest_box", expected_box=(0.0, 0.0, 0.2, 0.2))[0][0]
    assert near.tolist() == [0.0, 0.0, 10.0, 10.0]
    with pytest.raises(ValueError, match="expected_box"):
        select_faces(dets, size, "nearest_box")


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0.9], [0.5, 0.5, 1.5, 1.5], [2, 2, 3, 3]], dtype=torch.float32)
    scores = torch.tensor([0.8, 0.9, 0.7, 0.4])
    assert ssd_nms(boxes, scores, min_confidence=0.5).tolist() == [1, 2]  # 0 overlaps 1; 3 scores too low
    assert ssd_nms(boxes, scores, max_results=1, min_confidence=0.3).tolist() == [1]


def test_ssd_input_pads_bottom_right_like_face_api():
    x = torch.full((1, 3, 4, 2), 255.0)
    y = ssd_input(x, size=4)
    assert torch.all(y[..., :2] == 1) and torch.all(y[..., 2:] == -1)  # zeros appended on the right


def _images(n: int) -> list[np.ndarray]:
    if not ORIG.is_dir():
        pytest.skip(f"LFW original images not found at {ORIG} (see ../shared/data/README.md)")
    from PIL import Image

    files = sorted(ORIG.glob("*/*.jpg"))[::97][:n]
    imgs = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files]
    imgs.append(imgs[0][10:140, 5:120].copy())  # a non-square image: exercises the padding
    return imgs


@pytest.mark.slow  # TF.js's pure-JS backend takes ~1 min per SSD image on a loaded CPU
def test_ssd_matches_face_api_on_tfjs(tmp_path):
    """Boxes within 1 px and scores within 1e-4 of face-api's ``detectAllFaces`` on TF.js."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the TF.js reference needs Node.js >= 14")
    if not (TFJS_DIR / "node_modules" / "@vladmandic" / "face-api").is_dir():
        pytest.skip(f"TF.js reference not installed: run `npm ci` in {TFJS_DIR}")
    try:
        from exface.detectors import SSDMobileNetV1

        det = SSDMobileNetV1()
    except Exception as err:
        pytest.skip(f"face-api's SSD weights unavailable from the model zoo: {err}")
    imgs = _images(2)
    specs = []
    for i, a in enumerate(imgs):
        a.astype("<f4").tofile(tmp_path / f"x{i}.f32")
        specs.append({"file": f"x{i}.f32", "height": a.shape[0], "width": a.shape[1]})
    req = tmp_path / "request.json"
    req.write_text(json.dumps({"images": specs, "models": ["detect"]}))
    res = subprocess.run([node, str(TFJS_DIR / "run.cjs"), str(req)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = json.loads(res.stdout)["results"]["detect"]
    n_faces = 0
    for a, want in zip(imgs, ref):
        x = torch.from_numpy(a).permute(2, 0, 1)[None] / 127.5 - 1.0
        got = det(x)[0]
        assert len(got) == len(want)
        for box, score, w in zip(got.boxes.tolist(), got.scores.tolist(), want):
            x0, y0, bw, bh = w["box"]
            assert np.abs(np.array(box) - [x0, y0, x0 + bw, y0 + bh]).max() <= 1.0
            assert abs(score - w["score"]) <= 1e-4
            n_faces += 1
    assert n_faces >= 2


def test_detector_feeds_landmark_aligners_and_flags_images_without_a_face():
    from exface.alignment import DlibChipAligner
    from exface.alignment.landmarks import LandmarkSource
    from exface.testing.tiny import TinyDetector

    class Recorder(LandmarkSource):  # not registered under a public name: a local stand-in
        scheme = "dlib5"
        box = None

        def forward(self, images, boxes=None):
            self.seen = boxes.clone()
            c = (boxes[:, :2] + boxes[:, 2:]) / 2
            return c[:, None, :] + torch.tensor([[20.0, 0], [10, 0], [-20, 0], [-10, 0], [0, 15]])

    src = Recorder()
    al = DlibChipAligner(150, source=src, detector=TinyDetector(((0.1, 0.1, 0.3, 0.3), (0.4, 0.4, 0.9, 0.9))))
    x = torch.zeros(3, 3, 100, 100)
    x[2] = -1.0  # a black image: no face
    crops = al(x)
    assert crops.shape == (3, 3, 150, 150)
    assert al.last_found.tolist() == [True, True, False]
    assert src.seen[0].tolist() == pytest.approx([40.0, 40.0, 90.0, 90.0])  # the largest face
    assert src.seen[2].tolist() == [0.0, 0.0, 100.0, 100.0]  # fallback: the source's own box
    al_c = DlibChipAligner(150, source=src, detector=TinyDetector(((0.1, 0.1, 0.3, 0.3), (0.4, 0.4, 0.9, 0.9))),
                           choose="nearest_box", expected_box=(0.0, 0.0, 0.4, 0.4))
    al_c(x)
    assert src.seen[0].tolist() == pytest.approx([10.0, 10.0, 30.0, 30.0])


def test_detector_crop_aligner_cuts_the_widened_box():
    from exface.alignment.detector_crop import DetectorCropAligner
    from exface.testing.tiny import TinyDetector

    al = DetectorCropAligner(TinyDetector(((0.2, 0.2, 0.6, 0.6),)), output_size=(40, 40), margin=0.25)
    x = torch.linspace(-1, 1, 100).view(1, 1, 1, 100).expand(2, 3, 100, 100).clone()
    x[1] = -1.0
    boxes = al.face_boxes(x)
    assert boxes[0].tolist() == pytest.approx([10.0, 10.0, 70.0, 70.0])  # 40 px box + 10 px per side
    assert boxes[1].tolist() == pytest.approx([0.0, 0.0, 100.0, 100.0])  # no face: clipped fallback
    crops = al(x)
    assert al.last_found.tolist() == [True, False]
    # the crop's columns sample image columns 10..70: the ramp's values there
    assert float(crops[0, 0, 0, 0]) == pytest.approx(float(x[0, 0, 0, 10:12].mean()), abs=0.02)
    assert float(crops[0, 0, 0, -1]) == pytest.approx(float(x[0, 0, 0, 68:70].mean()), abs=0.02)
