"""The batched forward must compute exactly what segment-anything computes image by image."""

from __future__ import annotations

import torch

from baps_fed.fm.sam_batched import BatchedSam


def _inputs(b: int, size: int, n_points: int = 1):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (b, 3, size, size), generator=g).float()
    points = torch.rand(b, n_points, 2, generator=g) * size
    labels = torch.ones(b, n_points, dtype=torch.long)
    labels[:, 1:] = 0
    return images, points, labels


def _reference(sam, images, points, labels, multimask):
    batched_input = [
        {
            "image": im,
            "original_size": im.shape[-2:],
            "point_coords": p[None],
            "point_labels": lab[None],
        }
        for im, p, lab in zip(images, points, labels, strict=True)
    ]
    return sam(batched_input, multimask_output=multimask)


def test_batched_decoder_matches_sam_forward(small_sam):
    images, points, labels = _inputs(3, 64, n_points=2)
    model = BatchedSam(small_sam)
    with torch.no_grad():
        masks, iou = model.decode(model.embed(images), points, labels, (64, 64))
        ref = _reference(small_sam, images, points, labels, multimask=True)
    for i, out in enumerate(ref):
        torch.testing.assert_close(masks[i, 1:], out["low_res_logits"][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(iou[i, 1:], out["iou_predictions"][0], rtol=1e-4, atol=1e-4)


def test_single_mask_output_and_postprocess_match_sam(small_sam):
    images, points, labels = _inputs(2, 64)
    model = BatchedSam(small_sam, multimask=False)
    with torch.no_grad():
        logits = model(images, points, labels)
        ref = _reference(small_sam, images, points, labels, multimask=False)
        for i, out in enumerate(ref):
            up = small_sam.postprocess_masks(out["low_res_logits"], (64, 64), (64, 64))
            torch.testing.assert_close(logits[i], up[0, 0], rtol=1e-4, atol=1e-4)
            assert torch.equal(logits[i] > 0, out["masks"][0, 0])


def test_non_square_input_is_resized_padded_and_unpadded(small_sam):
    """A 40x80 image: longest side to 64, padded, logits back at 40x80, equal to SAM's path."""
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (1, 3, 40, 80), generator=g).float()
    point = torch.tensor([[[60.0, 10.0]]])
    model = BatchedSam(small_sam)
    with torch.no_grad():
        logits = model(image, point, torch.ones(1, 1, dtype=torch.long))
        assert logits.shape == (1, 40, 80)
        resized = torch.nn.functional.interpolate(
            image, (32, 64), mode="bilinear", align_corners=False, antialias=True
        )
        ref = _reference(
            small_sam, resized, point * 64 / 80, torch.ones(1, 1, dtype=torch.long), multimask=False
        )[0]["low_res_logits"]
        expected = small_sam.postprocess_masks(ref, (32, 64), (40, 80))[0, 0]
    torch.testing.assert_close(logits[0], expected, rtol=1e-4, atol=1e-4)


def test_boxes_match_sam_forward_image_by_image(small_sam):
    """Box prompts (with and without points) go through segment-anything's own box encoding."""
    images, points, labels = _inputs(3, 64)
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 0.0, 64.0, 30.0], [0.0, 0.0, 64.0, 64.0]])
    model = BatchedSam(small_sam)
    for with_points in (False, True):
        p, lab = (points, labels) if with_points else (None, None)
        with torch.no_grad():
            masks, iou = model.decode(model.embed(images), p, lab, (64, 64), boxes)
            batched_input = [
                {"image": im, "original_size": (64, 64), "boxes": box[None]}
                | ({"point_coords": pt[None], "point_labels": la[None]} if with_points else {})
                for im, box, pt, la in zip(images, boxes, points, labels, strict=True)
            ]
            ref = small_sam(batched_input, multimask_output=True)
        for i, out in enumerate(ref):
            torch.testing.assert_close(masks[i, 1:], out["low_res_logits"][0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(iou[i, 1:], out["iou_predictions"][0], rtol=1e-4, atol=1e-4)


def test_boxes_scale_with_a_non_square_image(small_sam):
    """A box on a 40x80 image is the box SAM's path sees at 32x64."""
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (1, 3, 40, 80), generator=g).float()
    box = torch.tensor([[20.0, 5.0, 70.0, 35.0]])
    model = BatchedSam(small_sam)
    with torch.no_grad():
        logits = model(image, boxes=box)
        resized = torch.nn.functional.interpolate(
            image, (32, 64), mode="bilinear", align_corners=False, antialias=True
        )
        batched_input = [{"image": resized[0], "original_size": (32, 64), "boxes": box * 64 / 80}]
        ref = small_sam(batched_input, multimask_output=False)[0]["low_res_logits"]
        expected = small_sam.postprocess_masks(ref, (32, 64), (40, 80))[0, 0]
    torch.testing.assert_close(logits[0], expected, rtol=1e-4, atol=1e-4)
