"""Measure how face-api's SSD face box sits around face-api's 68 landmarks (TF.js, LFW).

Prints the constants of ``exface.alignment.landmarks.SSD_BOX_FROM_LANDMARKS`` and the median
SSD box on LFW deep-funneled images (``LFW_DEEPFUNNELED_BOX``). Slow: the SSD detector on
TF.js's pure-JS backend takes ~10 s per image on one core.

    python tests/tfjs_reference/calibrate_ssd_box.py [--n 100] [--step 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
LFW = HERE.parents[2] / "shared" / "data" / "lfw-fold1" / "lfw-deepfunneled"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--step", type=int, default=8)
    args = ap.parse_args()
    files = sorted(LFW.glob("*/*.jpg"))[:: args.step][: args.n]
    if not files:
        raise SystemExit(f"no LFW images under {LFW}")
    with tempfile.TemporaryDirectory() as tmp:
        specs = []
        for i, f in enumerate(files):
            a = np.asarray(Image.open(f).convert("RGB"), dtype="<f4")
            a.tofile(Path(tmp) / f"x{i}.f32")
            specs.append({"file": f"x{i}.f32", "height": a.shape[0], "width": a.shape[1]})
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps({"images": specs, "models": ["detect"]}))
        out = subprocess.run(["node", str(HERE / "run.cjs"), str(req)], capture_output=True, text=True, check=True)
    rows = []
    for spec, dets in zip(specs, json.loads(out.stdout)["results"]["detect"]):
        if not dets:
            continue
        cx0, cy0 = spec["width"] / 2, spec["height"] / 2
        det = min(dets, key=lambda d: abs(d["box"][0] + d["box"][2] / 2 - cx0) + abs(d["box"][1] + d["box"][3] / 2 - cy0))
        x, y, w, h = det["box"]
        pts = np.asarray(det["landmarks"])
        lo, hi = pts.min(0), pts.max(0)
        size, centre = hi - lo, (lo + hi) / 2
        rows.append([(x + w / 2 - centre[0]) / size[0], (y + h / 2 - centre[1]) / size[1], w / size[0], h / size[1],
                     x / spec["width"], y / spec["height"], (x + w) / spec["width"], (y + h) / spec["height"]])
    r = np.median(np.asarray(rows), 0)
    print(f"{len(rows)} of {len(files)} images with a face")
    print("SSD_BOX_FROM_LANDMARKS =", {k: round(float(v), 3) for k, v in zip(("dx", "dy", "sw", "sh"), r[:4])})
    print("median SSD box (relative x0, y0, x1, y1) =", tuple(round(float(v), 3) for v in r[4:]))


if __name__ == "__main__":
    main()
