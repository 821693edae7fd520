"""Batched forward of a segment-anything ``Sam``: B images, each with its own prompt, in one pass.

``Sam.forward`` loops over images and its mask decoder repeats ONE image embedding per prompt, so
B images with one prompt each would cost B decoder calls. Here the encoder runs once on the whole
batch and the mask decoder's modules are applied to B (embedding, prompt) pairs at once. The
arithmetic is the decoder's own (segment_anything.modeling.mask_decoder), only batched; a test
checks it against ``Sam.forward`` image by image.

The module is differentiable (it is also used to pretrain the embedded FM and for the white-box
oracle); the black-box wrapper in ``torch_fm.py`` runs it without gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn


class BatchedSam(nn.Module):
    def __init__(self, sam: Sam, multimask: bool = False) -> None:
        super().__init__()
        self.sam = sam
        self.multimask = multimask

    @property
    def img_size(self) -> int:
        return self.sam.image_encoder.img_size

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """Longest side to the encoder's size, aspect kept (SAM's ResizeLongestSide)."""
        scale = self.img_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B,3,H,W] in 0..255 -> image embeddings [B,C,h,w]."""
        b, _, h, w = images.shape
        rh, rw = self.resized_shape(h, w)
        x = images
        if (rh, rw) != (h, w):
            x = F.interpolate(x, (rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.sam.pixel_mean) / self.sam.pixel_std
        x = F.pad(x, (0, self.img_size - rw, 0, self.img_size - rh))
        return self.sam.image_encoder(x)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        input_hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image prompts -> (low-res logits [B,M,h4,w4], predicted IoU [B,M])."""
        h, w = input_hw
        rh, rw = self.resized_shape(h, w)
        coords = points.clone()
        coords[..., 0] *= rw / w
        coords[..., 1] *= rh / h
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
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
        """Low-res logits [B,h4,w4] -> logits at the input size [B,H,W] (SAM's postprocess)."""
        rh, rw = self.resized_shape(*input_hw)
        x = F.interpolate(
            low_res[:, None], (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        x = x[..., :rh, :rw]
        x = F.interpolate(x, input_hw, mode="bilinear", align_corners=False)
        return x[:, 0]

    def forward(
        self, images: torch.Tensor, points: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """images float [B,3,H,W] in 0..255, points [B,N,2] pixel (x, y), labels [B,N] -> logits."""
        hw = (images.shape[2], images.shape[3])
        masks, iou = self.decode(self.embed(images), points, labels, hw)
        return self.upscale(self.select(masks, iou), hw)
