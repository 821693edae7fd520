"""Dataset readers on small files written by the tests: layouts, detection and bad inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from baps_fed.data.image_io import ImageReadError, read_image, read_mask
from baps_fed.data.readers import (
    detect_layout,
    letterbox,
    open_dataset,
    read_busi,
    read_generic,
    read_isic2018,
    read_kvasir,
    read_optic_disc,
)
from baps_fed.data.sample import DatasetError, Sample
from baps_fed.data.sources import GENERAL_SEED_STRIDE, open_source

H, W = 24, 32


def disk(cx: float = 16, cy: float = 12, r: float = 6, h: int = H, w: int = W) -> np.ndarray:
    ys, xs = np.mgrid[:h, :w]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2


def rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def save_mask(path: Path, mask: np.ndarray, value: int = 255) -> Path:
    return save(path, mask.astype(np.uint8) * value)


def generic_dataset(root: Path, n: int = 3) -> list[np.ndarray]:
    """``n`` PNG pairs named s0.. with a disk each; returns the masks written."""
    masks = [disk(cx=8 + 6 * i) for i in range(n)]
    for i, m in enumerate(masks):
        save(root / "images" / f"s{i}.png", rgb(i))
        save_mask(root / "masks" / f"s{i}.png", m)
    return masks


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really an image")
    return path


def problem_for(ds, name: str):
    matches = [p for p in ds.problems if name in p.path]
    assert matches, f"no problem for {name}: {ds.problems}"
    return matches[0]


# --- image_io -------------------------------------------------------------------------------


def test_read_image_converts_grayscale_palette_rgba_and_16bit(tmp_path):
    grey = rgb(1)[..., 0]
    save(tmp_path / "grey.png", grey)
    out = read_image(tmp_path / "grey.png")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 2], grey)

    rgba = np.dstack([rgb(2), np.zeros((H, W), np.uint8)])  # fully transparent
    save(tmp_path / "rgba.png", rgba)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb(2))  # alpha dropped, not blended

    save(tmp_path / "pal.png", rgb(3), mode="P")
    assert read_image(tmp_path / "pal.png").shape == (H, W, 3)
    save(tmp_path / "la.png", rgb(4), mode="LA")
    assert read_image(tmp_path / "la.png").shape == (H, W, 3)

    deep = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 5  # 0..3835: beyond 8 bits
    save(tmp_path / "deep.png", deep)
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_read_image_float_tiff_in_unit_range_is_scaled_and_rounded(tmp_path):
    ramp = np.linspace(0.0, 1.0, H * W, dtype=np.float32).reshape(H, W)
    image = Image.fromarray(ramp)
    assert image.mode == "F"
    image.save(tmp_path / "float.tif")
    out = read_image(tmp_path / "float.tif")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255  # not black
    np.testing.assert_array_equal(out[..., 0], np.round(ramp * 255).astype(np.uint8))
    # Values already in 0..255 are rounded, not truncated: 2.6 -> 3.
    Image.fromarray(np.full((H, W), 2.6, np.float32)).save(tmp_path / "grey.tif")
    assert (read_image(tmp_path / "grey.tif") == 3).all()


def test_general_source_seeds_never_overlap():
    names = [
        {s.name for s in open_source("general", n=n, seed=seed)} for seed, n in [(0, 5), (1, 3)]
    ]
    assert names[0] and names[1] and not names[0] & names[1]
    with pytest.raises(ValueError, match="per seed"):
        open_source("general", n=GENERAL_SEED_STRIDE + 1)


def test_read_image_corrupt_file_names_it(tmp_path):
    bad = corrupt(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="re-export") as err:
        read_image(bad)
    assert str(bad) in str(err.value) and isinstance(err.value, DatasetError)
    with pytest.raises(ImageReadError, match="missing.png"):
        read_mask(tmp_path / "missing.png")


def test_read_mask_rules(tmp_path):
    m = disk()
    save_mask(tmp_path / "01.png", m, value=1)
    mask, note = read_mask(tmp_path / "01.png")
    assert mask.dtype == bool and np.array_equal(mask, m) and note is None

    save(tmp_path / "rgb.png", np.repeat((m * 200).astype(np.uint8)[..., None], 3, axis=2))
    mask, note = read_mask(tmp_path / "rgb.png")
    assert np.array_equal(mask, m) and note is None

    three = np.where(m, 255, 0).astype(np.uint8)
    three[0, :4] = 100  # a third level below the threshold
    save(tmp_path / "three.png", three)
    mask, note = read_mask(tmp_path / "three.png")
    assert np.array_equal(mask, m)
    assert note.startswith("non-binary mask") and note.endswith("thresholded at 128")

    deep = np.where(m, 60000, 0).astype(np.uint16)
    deep[0, 0] = 1000
    save(tmp_path / "deep.png", deep)
    mask, note = read_mask(tmp_path / "deep.png")
    assert np.array_equal(mask, m) and note.endswith("thresholded at 32768")


# --- layouts --------------------------------------------------------------------------------


def test_generic_reads_pairs_with_any_suffix_sorted(tmp_path):
    m = [disk(cx=10), disk(cx=16), disk(cx=22)]
    save(tmp_path / "images" / "b.JPG", rgb(0))
    save_mask(tmp_path / "masks" / "b.bmp", m[1])
    save(tmp_path / "images" / "a.png", rgb(1))
    save_mask(tmp_path / "masks" / "a.tif", m[0])
    save(tmp_path / "images" / "c.tiff", rgb(2))
    save_mask(tmp_path / "masks" / "c.PNG", m[2])
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    corrupt(tmp_path / "images" / "._a.png")  # macOS debris: hidden, ignored

    ds = read_generic(tmp_path)
    assert [s.name for s in ds] == ["a", "b", "c"] and ds.name == tmp_path.name
    assert ds.problems == []
    for s, expected in zip(ds, m, strict=True):
        assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
        assert s.mask.dtype == bool and np.array_equal(s.mask, expected)
    assert np.array_equal(ds[0].image, rgb(1))  # lossless PNG read back exactly


def test_isic2018_splits_and_segmentation_suffix(tmp_path):
    for split, ids in (("Training", [1, 0]), ("Validation", [7])):
        for i in ids:
            save(tmp_path / f"ISIC2018_Task1-2_{split}_Input" / f"ISIC_000000{i}.jpg", rgb(i))
            save_mask(
                tmp_path
                / f"ISIC2018_Task1_{split}_GroundTruth"
                / f"ISIC_000000{i}_segmentation.png",
                disk(cx=10 + i),
            )
    (tmp_path / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC")

    train = read_isic2018(tmp_path)
    assert [s.name for s in train] == ["ISIC_0000000", "ISIC_0000001"]
    assert train.name == "ISIC2018_Task1-2_Training_Input" and train.problems == []
    assert np.array_equal(train[1].mask, disk(cx=11))
    val = read_isic2018(tmp_path, split="Validation")
    assert [s.name for s in val] == ["ISIC_0000007"]


def test_isic2018_lone_pair_and_wrong_split(tmp_path):
    renamed = tmp_path / "renamed"
    save(renamed / "lesions_Input" / "ISIC_1.jpg", rgb())
    save_mask(renamed / "lesions_GroundTruth" / "ISIC_1_segmentation.png", disk())
    assert [s.name for s in read_isic2018(renamed, split="Test")] == ["ISIC_1"]

    val_only = tmp_path / "val_only"
    save(val_only / "ISIC2018_Task1-2_Validation_Input" / "ISIC_1.jpg", rgb())
    save_mask(
        val_only / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_1_segmentation.png", disk()
    )
    with pytest.raises(DatasetError, match="split='Validation'"):
        read_isic2018(val_only)  # default split is Training: never read another one silently


def test_kvasir_jpeg_masks_are_thresholded(tmp_path):
    m = [disk(cx=10, r=7), disk(cx=20, r=5)]
    for i, mask in enumerate(m):
        save(tmp_path / "images" / f"k{i}.jpg", rgb(i))
        save(
            tmp_path / "masks" / f"k{i}.jpg",
            np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=2),
        )
    ds = read_kvasir(tmp_path)
    assert [s.name for s in ds] == ["k0", "k1"]
    for s, expected in zip(ds, m, strict=True):
        iou = (s.mask & expected).sum() / (s.mask | expected).sum()
        assert iou > 0.9
    assert {p.action for p in ds.problems} == {"thresholded at 128"}
    assert {Path(p.path).name for p in ds.problems} == {"k0.jpg", "k1.jpg"}
    assert all("non-binary mask" in p.reason for p in ds.problems)


def test_busi_merges_masks_and_skips_normal(tmp_path):
    save(tmp_path / "benign" / "benign (1).png", rgb(0))
    save_mask(tmp_path / "benign" / "benign (1)_mask.png", disk(cx=8, r=4))
    save_mask(tmp_path / "benign" / "benign (1)_mask_1.png", disk(cx=24, r=4))
    save(tmp_path / "malignant" / "malignant (1).png", rgb(1), mode="L")
    save_mask(tmp_path / "malignant" / "malignant (1)_mask.png", disk())
    save(tmp_path / "normal" / "normal (1).png", rgb(2))
    save_mask(tmp_path / "normal" / "normal (1)_mask.png", np.zeros((H, W), bool))

    ds = read_busi(tmp_path)
    assert [s.name for s in ds] == ["benign/benign (1)", "malignant/malignant (1)"]
    assert np.array_equal(ds[0].mask, disk(cx=8, r=4) | disk(cx=24, r=4))
    assert np.array_equal(ds[1].mask, disk()) and ds[1].image.shape == (H, W, 3)
    (normal,) = ds.problems
    assert "normal (1)_mask.png" in normal.path and normal.action == "skipped"
    assert normal.reason.startswith("empty mask")


def refuge_mask(disc_r: float = 8, cup_r: float = 4) -> np.ndarray:
    values = np.full((H, W), 255, np.uint8)
    values[disk(r=disc_r)] = 128
    values[disk(r=cup_r)] = 0
    return values


def test_optic_disc_refuge_disc_and_cup(tmp_path):
    save(tmp_path / "Images" / "g0001.jpg", rgb(0))
    save(tmp_path / "Images" / "n0001.jpg", rgb(1))
    save(tmp_path / "Disc_Cup_Masks" / "Glaucoma" / "g0001.bmp", refuge_mask(8, 5))
    save(tmp_path / "Disc_Cup_Masks" / "Non-Glaucoma" / "n0001.bmp", refuge_mask(7, 3))

    disc = read_optic_disc(tmp_path)
    assert [s.name for s in disc] == ["g0001", "n0001"] and disc.problems == []
    assert np.array_equal(disc[0].mask, disk(r=8)) and np.array_equal(disc[1].mask, disk(r=7))
    cup = read_optic_disc(tmp_path, target="cup")
    assert np.array_equal(cup[0].mask, disk(r=5)) and np.array_equal(cup[1].mask, disk(r=3))


def test_optic_disc_binary_bright_disc_masks(tmp_path):
    save(tmp_path / "images" / "a.png", rgb(0))
    save(tmp_path / "images" / "b.png", rgb(1))
    save_mask(tmp_path / "masks" / "a.png", disk(r=6))  # 0 background, 255 disc
    save(tmp_path / "masks" / "b.png", refuge_mask(8, 4))

    disc = read_optic_disc(tmp_path)
    assert np.array_equal(disc[0].mask, disk(r=6)) and np.array_equal(disc[1].mask, disk(r=8))
    cup = read_optic_disc(tmp_path, target="cup")
    assert [s.name for s in cup] == ["b"]
    assert "target='disc'" in problem_for(cup, "a.png").reason


# --- auto-detection -------------------------------------------------------------------------


def build_layouts(root: Path) -> dict[str, Path]:
    """One tiny dataset per layout, under root/<layout>."""
    generic_dataset(root / "generic")
    isic = root / "isic"
    save(isic / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000001.jpg", rgb())
    save_mask(
        isic / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png", disk()
    )
    kvasir = root / "Kvasir-SEG"
    save(kvasir / "images" / "k.jpg", rgb())
    save_mask(kvasir / "masks" / "k.jpg", disk())
    busi = root / "busi" / "Dataset_BUSI_with_GT"  # as the archive unpacks: one wrapper folder
    save(busi / "benign" / "benign (1).png", rgb())
    save_mask(busi / "benign" / "benign (1)_mask.png", disk())
    refuge = root / "refuge"
    save(refuge / "images" / "V0001.jpg", rgb())
    save(refuge / "gts" / "V0001.bmp", refuge_mask())
    return {
        "generic": root / "generic",
        "isic2018": isic,
        "kvasir": kvasir,
        "busi": busi,
        "optic_disc": refuge,
    }


def test_auto_detects_each_layout(tmp_path):
    layouts = build_layouts(tmp_path)
    wrapper = tmp_path / "busi"
    assert detect_layout(wrapper) == ("busi", layouts["busi"])
    expected_names = {
        "generic": ["s0", "s1", "s2"],
        "isic2018": ["ISIC_0000001"],
        "kvasir": ["k"],
        "busi": ["benign/benign (1)"],
        "optic_disc": ["V0001"],
    }
    for layout, folder in layouts.items():
        assert detect_layout(folder) == (layout, folder)
        ds = open_dataset(folder)
        assert [s.name for s in ds] == expected_names[layout], layout
    assert np.array_equal(open_dataset(layouts["optic_disc"])[0].mask, disk(r=8))
    assert np.array_equal(open_dataset(layouts["optic_disc"], target="cup")[0].mask, disk(r=4))


def test_kvasir_detected_by_bbox_file(tmp_path):
    generic_dataset(tmp_path / "polyps", n=1)
    (tmp_path / "polyps" / "kavsir_bboxes.json").write_text("{}")
    assert detect_layout(tmp_path / "polyps")[0] == "kvasir"


def test_auto_detection_failure_lists_layouts_and_contents(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "readme.txt").write_text("?")
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "pictures/" in message and "readme.txt" in message
    for layout in ("isic2018", "busi", "optic_disc", "kvasir", "generic"):
        assert layout in message
    with pytest.raises(DatasetError, match="unknown dataset layout 'nifti'"):
        open_dataset(tmp_path, layout="nifti")


# --- bad inputs -----------------------------------------------------------------------------


def test_corrupt_files_skipped_and_named(tmp_path, caplog):
    generic_dataset(tmp_path, n=3)
    bad_image = corrupt(tmp_path / "images" / "s1.png")
    bad_mask = corrupt(tmp_path / "masks" / "s2.png")
    with caplog.at_level(logging.WARNING):
        ds = read_generic(tmp_path)
    assert [s.name for s in ds] == ["s0"]
    for bad in (bad_image, bad_mask):
        problem = problem_for(ds, bad.name)
        assert problem.path == str(bad) and problem.action == "skipped"
        assert str(bad) in problem.reason and "re-export" in problem.reason
        assert str(bad) in caplog.text


def test_wrong_size_mask_names_both_files_and_sizes(tmp_path):
    generic_dataset(tmp_path, n=2)
    save_mask(tmp_path / "masks" / "s1.png", disk(h=12, w=16, cx=8, cy=6, r=3))
    ds = read_generic(tmp_path)
    assert [s.name for s in ds] == ["s0"]
    problem = problem_for(ds, "s1.png")
    assert problem.action == "skipped"
    for text in (
        "16x12",
        "32x24",
        str(tmp_path / "images" / "s1.png"),
        str(tmp_path / "masks" / "s1.png"),
        "re-export the mask at the image's size",
    ):
        assert text in problem.reason


def test_empty_mask_skipped(tmp_path):
    generic_dataset(tmp_path, n=2)
    save_mask(tmp_path / "masks" / "s0.png", np.zeros((H, W), bool))
    ds = read_generic(tmp_path)
    assert [s.name for s in ds] == ["s1"]
    problem = problem_for(ds, "s0.png")
    assert problem.reason == "empty mask: no foreground to place a positive point on"
    assert problem.action == "skipped"


def test_non_binary_mask_repaired_and_reported(tmp_path):
    masks = generic_dataset(tmp_path, n=2)
    values = masks[0].astype(np.uint8) * 250
    values[~masks[0] & disk(r=9)] = 40  # a faint halo: a third level, below 128
    save(tmp_path / "masks" / "s0.png", values)
    ds = read_generic(tmp_path)
    assert [s.name for s in ds] == ["s0", "s1"]  # kept, not skipped
    assert np.array_equal(ds[0].mask, masks[0])
    (problem,) = ds.problems
    assert problem.path == str(tmp_path / "masks" / "s0.png")
    assert problem.action == "thresholded at 128" and "non-binary mask" in problem.reason


def test_grayscale_and_rgba_images_become_rgb_without_problems(tmp_path):
    masks = generic_dataset(tmp_path, n=2)
    save(tmp_path / "images" / "s0.png", rgb(0)[..., 0])
    save(tmp_path / "images" / "s1.png", np.dstack([rgb(1), np.full((H, W), 9, np.uint8)]))
    ds = read_generic(tmp_path)
    assert ds.problems == [] and len(ds) == 2
    assert ds[0].image.shape == ds[1].image.shape == (H, W, 3)
    assert np.array_equal(ds[1].image, rgb(1)) and np.array_equal(ds[0].mask, masks[0])


def test_unmatched_stems_reported_both_ways(tmp_path):
    generic_dataset(tmp_path, n=2)
    save(tmp_path / "images" / "lonely_image.png", rgb())
    save_mask(tmp_path / "masks" / "lonely_mask.png", disk())
    ds = read_generic(tmp_path)
    assert [s.name for s in ds] == ["s0", "s1"]
    image_problem = problem_for(ds, "lonely_image.png")
    mask_problem = problem_for(ds, "lonely_mask.png")
    assert "no mask found" in image_problem.reason and image_problem.action == "skipped"
    assert "no image found" in mask_problem.reason and mask_problem.action == "skipped"


def test_busi_mask_without_image_reported(tmp_path):
    save(tmp_path / "benign" / "benign (1).png", rgb())
    save_mask(tmp_path / "benign" / "benign (1)_mask.png", disk())
    save_mask(tmp_path / "benign" / "benign (9)_mask_1.png", disk())
    ds = read_busi(tmp_path)
    assert len(ds) == 1 and "no image found" in problem_for(ds, "benign (9)_mask_1").reason


def test_duplicate_stems_reported(tmp_path):
    generic_dataset(tmp_path, n=2)
    save(tmp_path / "images" / "s1.jpg", rgb())
    ds = read_generic(tmp_path)
    assert [s.name for s in ds] == ["s0"]
    paths = {p.path for p in ds.problems}
    images, masks = tmp_path / "images", tmp_path / "masks"
    # both images are ambiguous, so their mask is then left without an image
    assert paths == {str(images / "s1.png"), str(images / "s1.jpg"), str(masks / "s1.png")}
    assert sum("share the name 's1'" in p.reason for p in ds.problems) == 2


def test_strict_raises_on_first_problem(tmp_path):
    generic_dataset(tmp_path, n=2)
    bad = corrupt(tmp_path / "images" / "s1.png")
    with pytest.raises(DatasetError, match="strict=True") as err:
        read_generic(tmp_path, strict=True)
    assert str(bad) in str(err.value)

    unmatched = tmp_path / "unmatched"
    generic_dataset(unmatched, n=1)
    save(unmatched / "images" / "extra.png", rgb())
    with pytest.raises(DatasetError, match="extra.png"):
        open_dataset(unmatched, strict=True)


def test_strict_keeps_repairs(tmp_path):
    save(tmp_path / "images" / "k.jpg", rgb())
    save(tmp_path / "masks" / "k.jpg", disk().astype(np.uint8) * 255)
    ds = read_kvasir(tmp_path, strict=True)  # JPEG masks always need thresholding
    assert len(ds) == 1 and ds.problems[0].action == "thresholded at 128"


def test_empty_or_missing_folder_raises_naming_it(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as err:
        read_generic(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError) as err:
        read_generic(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "0 image/mask files" in message
    assert "images/ and masks/" in message  # the expected layout

    with pytest.raises(DatasetError, match="has no 'images/' folder"):
        read_generic(tmp_path / "images")


def test_no_usable_pairs_lists_first_problems(tmp_path):
    save(tmp_path / "images" / "a.png", rgb())
    save_mask(tmp_path / "masks" / "a.png", np.zeros((H, W), bool))
    corrupt(tmp_path / "images" / "b.png")
    save_mask(tmp_path / "masks" / "b.png", disk())
    with pytest.raises(DatasetError) as err:
        read_generic(tmp_path)
    message = str(err.value)
    assert "4 image/mask files" in message and "empty mask" in message
    assert str(tmp_path / "images" / "b.png") in message


# --- letterbox ------------------------------------------------------------------------------


def test_letterbox_pads_bottom_right():
    sample = Sample(np.full((H, W, 3), 200, np.uint8), disk(), "x")
    out = letterbox(sample, 64)
    assert out.image.shape == (64, 64, 3) and out.mask.shape == (64, 64) and out.name == "x"
    assert (out.image[:48] == 200).all() and (out.image[48:] == 0).all()  # 24*2 rows of content
    assert np.array_equal(out.mask[:48], np.kron(disk(), np.ones((2, 2), bool)))
    assert not out.mask[48:].any()


def test_letterbox_keeps_tiny_objects():
    mask = np.zeros((100, 200), bool)
    mask[51, 101] = True  # nearest-neighbour at 1/10 scale would miss this pixel
    out = letterbox(Sample(np.zeros((100, 200, 3), np.uint8), mask, "tiny"), 20)
    assert out.mask.any() and not out.mask[10:].any()


def test_readers_can_letterbox_at_load_time(tmp_path):
    generic_dataset(tmp_path, n=2)
    ds = read_generic(tmp_path, size=16)
    assert all(s.image.shape == (16, 16, 3) and s.mask.shape == (16, 16) for s in ds)
    assert not ds[0].mask[12:].any() and ds[0].mask.any()
