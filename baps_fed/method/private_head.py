"""A site's private prompt head: the shared IP decoder plus a few parameters that stay home.

Sites differ in acquisition (white balance, gamma, gain): one shared decoder pulled by every
site's colour correction serves none of them well (measured: the ultrasound-like site lost
Dice under plain FedAvg while the others gained). Each site therefore adds its own small
prompt (``colour``: a global colour shift, 3 parameters; ``basis``: 18 point-centred
and low-frequency map coefficients) or its own box habit (``box``: one inward move per box side,
4 parameters, with box prompts: its clinicians' way of drawing, box_refiner.py), trained by the
same SPSA steps as the shared weights but never sent: only the shared part's update leaves the
site (FedRep/FedPer-style personalisation at BAPS's scale).
"""

from __future__ import annotations

import numpy as np

from baps_fed.data.prompts import Prompts
from baps_fed.method.ip_decoder import DecoderConfig, DecoderInputs, IPDecoder, build_decoder

PRIVATE_HEADS = ("none", "colour", "basis", "box")


def private_head_config(kind: str, image_size: int) -> DecoderConfig:
    """``colour``: a global colour shift (3 parameters); ``basis``: the shared decoder's maps
    (cosines and point-centred bumps per channel) with fixed coefficients, not conditioned
    on the image (18 parameters): a site-specific copy of the shared decoder's bias column;
    ``box``: a bias-only box refiner (4 parameters), the pixels left to the shared decoder."""
    if kind == "box":
        return DecoderConfig(
            adapt="box",
            box_refiner="bias",
            feature_rank=0,
            feature_norm="none",
            image_size=image_size,
        )
    if kind == "colour":
        return DecoderConfig(preset="vp", vp_grid=1, image_size=image_size)
    if kind == "basis":
        return DecoderConfig(
            preset="basis", feature_rank=0, feature_norm="none", image_size=image_size
        )
    raise ValueError(f"private head must be one of {PRIVATE_HEADS}, got {kind!r}")


def private_head_size(kind: str, image_size: int) -> int:
    """Parameters of a private head of this kind (0 for none)."""
    if kind == "none":
        return 0
    return build_decoder(private_head_config(kind, image_size)).num_params


class WithPrivateHead:
    """Duck-types the IPDecoder API the training loop uses (encode, prompts, get_theta,
    num_params, cfg) over the vector [shared weights, private head weights]."""

    def __init__(self, shared: IPDecoder, kind: str = "colour") -> None:
        self.shared = shared
        self.head = build_decoder(private_head_config(kind, shared.cfg.image_size))
        self.cfg = shared.cfg
        self.n_shared = shared.num_params
        self.num_params = self.n_shared + self.head.num_params

    def encode(self, images: np.ndarray, prompts: Prompts) -> DecoderInputs:
        return self.shared.encode(images, prompts)

    def get_theta(self) -> np.ndarray:
        return np.concatenate([self.shared.get_theta(), self.head.get_theta()])

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return theta[: self.n_shared], theta[self.n_shared :]

    def prompts(self, thetas: np.ndarray, inputs: DecoderInputs) -> np.ndarray:
        t = np.atleast_2d(thetas)
        return self.shared.prompts(t[:, : self.n_shared], inputs) + self.head.prompts(
            t[:, self.n_shared :], inputs
        )

    def refine(
        self, thetas: np.ndarray, inputs: DecoderInputs, prompts: Prompts, hw: tuple[int, int]
    ) -> Prompts:
        """The boxes the FM receives: moved by whichever part refines them (a ``box`` head, or
        a shared decoder that adapts boxes), else the given prompts repeated."""
        t = np.atleast_2d(thetas)
        if self.head.refines_boxes:
            return self.head.refine(t[:, self.n_shared :], inputs, prompts, hw)
        return self.shared.refine(t[:, : self.n_shared], inputs, prompts, hw)
