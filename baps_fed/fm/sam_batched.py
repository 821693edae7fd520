"""Batched forward of a segment-anything ``Sam``: B images, each with its own prompt, in one pass.

``Sam.forward`` loops over images and its mask decoder repeats ONE image embedding per prompt, so
B images with one prompt each would cost B decoder calls. Here the encoder runs once on the whole
batch and the mask decoder's modules are applied to B (embedding, prompt) pairs at once. The
arithmetic is the decoder's own (segment_anything.modeling.mask_decoder), only batched; tests
check it against ``Sam.forward`` image by image, with points and with boxes.

The same module runs the MedSAM family: their prompt encoder and mask decoder are
segment-anything's, only the preprocessing differs (``preprocess.py``).

The module is differentiable (it is also used to pretrain the embedded FM and for the white-box
oracle); the black-box wrapper in ``torch_fm.py`` runs it without gradients.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from torch import nn

from baps_fed.fm import preprocess as pre


class BatchedSam(nn.Module):
    def __init__(self, sam: Sam, multimask: bool = False, preprocess: str = "sam") -> None:
        super().__init__()
        if preprocess not in pre.PREPROCESSES:
            raise ValueError(f"unknown preprocessing {preprocess!r}; use one of {pre.PREPROCESSES}")
        self.sam = sam
        self.multimask = multimask
        self.preprocess = preprocess

    @property
    def img_size(self) -> int:
        return self.sam.image_encoder.img_size

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """The image's size inside the encoder input (SAM: ResizeLongestSide)."""
        return pre.resized_shape(h, w, self.preprocess, self.img_size)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B,3,H,W] in 0..255 -> the encoder's input [B,3,S,S] (this family's
        preprocessing: what an embedding cache keys on)."""
        return pre.prepare(
            images, self.preprocess, self.img_size, self.sam.pixel_mean, self.sam.pixel_std
        )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B,3,H,W] in 0..255 -> image embeddings [B,C,h,w]."""
        return self.sam.image_encoder(self.prepare(images))

    def encode_prompts(
        self,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        input_hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel prompts at the input resolution -> (sparse, dense) prompt embeddings."""
        h, w = input_hw
        rh, rw = self.resized_shape(h, w)
        point_arg = None
        if points is not None:
            coords = points.clone()
            coords[..., 0] *= rw / w
            coords[..., 1] *= rh / h
            point_arg = (coords, labels)
        box_arg = None
        if boxes is not None:
            box_arg = pre.scale_boxes(boxes, input_hw, self.preprocess, self.img_size)[:, None]
        return self.sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        input_hw: tuple[int, int],
        boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image prompts -> (low-res logits [B,M,h4,w4], predicted IoU [B,M])."""
        sparse, dense = self.encode_prompts(points, labels, boxes, input_hw)
        md = self.sam.mask_decoder
        b = embeddings.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = embeddings + dense
        pos = self.sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        _, c, eh, ew = src.shape
        hs, src = md.transformer(src, pos, tokens)
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1 : 1 + md.num_mask_tokens, :]
        up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, eh, ew))
        hyper = torch.stack(
            [mlp(mask_out[:, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
        )
        _, uc, uh, uw = up.shape
        masks = (hyper @ up.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
        return masks, md.iou_prediction_head(iou_out)

    def select(self, masks: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
        """One mask per image: token 0, or the best-scored of the three multimask outputs."""
        if not self.multimask:
            return masks[:, 0]
        best = iou[:, 1:].argmax(dim=1) + 1
        return masks[torch.arange(masks.shape[0]), best]

    def upscale(self, low_res: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits [B,h4,w4] -> logits at the input size [B,H,W]."""
        return pre.postprocess(low_res, input_hw, self.preprocess, self.img_size)

    def forward(
        self,
        images: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images float [B,3,H,W] in 0..255, points [B,N,2] pixel (x, y) with labels [B,N] and/or
        boxes [B,4] pixel (x0, y0, x1, y1) -> logits [B,H,W]."""
        hw = (images.shape[2], images.shape[3])
        masks, iou = self.decode(self.embed(images), points, labels, hw, boxes)
        return self.upscale(self.select(masks, iou), hw)
