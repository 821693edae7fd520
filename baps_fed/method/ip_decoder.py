"""The IP decoder: (image, prompt) -> an additive visual prompt, trained through FM outputs only.

The prompt is the one the FM is given: a point, or a box (encoded as SAM encodes it, by its two
corners). The decoder conditions on whichever comes.

Frozen parts: the image encoder (``image_encoder.py``) and a random-Fourier point encoder whose
Gaussian matrix is seeded and stored with the weights (the published code did neither, so its
decoders could not be reloaded faithfully). Trainable part, two presets:

- ``paper``: BAPS's decoder. The point embedding goes through Linear + LayerNorm + GELU, is
  concatenated with the image embedding into 21 x 7 x 7, and five ConvTranspose stages
  (64, 32, 32, 16, 3 channels) upsample it to 224 px (then resized to the image). With the
  shipped 64-d encoder it has ~530k trainable parameters (305k with CLIP's 512-d embedding).
- ``basis`` (default): SPSA's variance grows with dimension, so the prompt is a combination of
  a few fixed maps, low-frequency cosines over the image and Gaussian bumps centred on the
  point, per colour channel, with coefficients linear in a fixed low-rank projection of the
  image embedding. 72 trainable parameters by default: image- and point-conditioned, but cheap.
- ``vp``: the visual-prompting baseline, one input-independent prompt (a 3 x g x g grid,
  upsampled; g = 1 is a global colour shift of 3 parameters).

All three zero-initialise their last layer, so step 0 reproduces the zero-shot FM exactly. Weights
travel as one flat float32 vector (``theta``), which is what SPSA perturbs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn
from torch.func import functional_call

import baps_fed
from baps_fed.data.prompts import Prompts
from baps_fed.method.box_refiner import SIDES, refine_boxes
from baps_fed.method.image_encoder import load_image_encoder, with_weights
from baps_fed.method.visual_prompt import PIXEL_MEAN, PIXEL_STD

CHECKPOINT_FORMAT = "baps-fed-decoder/1"
ADAPT_KINDS = ("prompt", "box", "both")


@dataclass(frozen=True)
class DecoderConfig:
    preset: Literal["basis", "paper", "vp"] = "basis"
    image_size: int = 128  # prompt resolution: the site's (square, letterboxed) image size
    fourier_dim: int = 256  # Gaussian matrix 2 x fourier_dim -> sin/cos -> 2 * fourier_dim
    fourier_seed: int = 0
    init_seed: int = 0  # the paper preset's random initial weights
    # basis preset
    cosine_grid: int = 2  # cosine maps with frequencies 0..grid-1 per axis (grid^2 maps)
    bump_sigmas: tuple[float, ...] = field(default=(0.06, 0.18))  # fractions of the image side
    # with box prompts the bumps are centred on the box, their sigmas these fractions of the
    # box's half-width and half-height (one per point bump: the same theta serves both)
    box_bump_scales: tuple[float, ...] = field(default=(0.5, 1.0))
    feature_rank: int = 3
    projection_seed: int = 1
    # "general": standardise the projected features by their mean/std on a fixed probe of the
    # FM-independent general-domain corpus, so a bias and the image terms are not collinear
    # (raw, every medical modality shares one large common component); "none": raw.
    feature_norm: Literal["general", "none"] = "general"
    # vp preset (the visual-prompting baseline): grid 1 is a global colour shift (3 parameters)
    vp_grid: int = 4
    # the frozen image encoder (image_encoder.load_image_encoder): "small" is the shipped one,
    # "clip:[MODEL:]PATH" CLIP's image tower from local weights, as in BAPS (baps-fed[clip])
    image_encoder: str = "small"
    # what SPSA adapts: the visual "prompt", the "box" the FM receives (box_refiner.py, box
    # prompts only), or "both"
    adapt: Literal["prompt", "box", "both"] = "prompt"
    # what the box refiner's moves depend on: a "bias" alone (4 parameters: one move per side,
    # the same for every image, a site's drawing habit) or the "image" features (4 x (rank + 1)).
    # Bias by default: on LiteMedSAM with loose boxes it closed 71 % of the loose-to-tight gap
    # where the image-conditioned one, noisier for SPSA, lost Dice (docs/real-fms.md)
    box_refiner: Literal["image", "bias"] = "bias"


@dataclass(frozen=True)
class DecoderInputs:
    """What the frozen encoders make of a batch, computed once and reused for every theta."""

    image_embedding: torch.Tensor  # [B, F]
    point_embedding: torch.Tensor  # [B, 2 * fourier_dim]: the point's, or the box corners'
    points01: torch.Tensor  # [B, 2] the point (x, y), or the box's centre, in [0, 1]
    half_size01: torch.Tensor | None = None  # [B, 2] a box's half width and height in [0, 1]


class _PaperHead(nn.Module):
    def __init__(self, image_dim: int, point_dim: int) -> None:
        super().__init__()
        width = 21 * 7 * 7
        self.point_mlp = nn.Sequential(
            nn.Linear(point_dim, width - image_dim), nn.LayerNorm(width - image_dim), nn.GELU()
        )
        chans = (21, 64, 32, 32, 16, 3)
        stages: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            stages += [nn.ConvTranspose2d(cin, cout, 2, 2), nn.ConvTranspose2d(cout, cout, 1)]
            if i < len(chans) - 2:  # the last stage ends linear: it must be able to output 0
                stages += [LayerNorm2d(cout), nn.GELU()]
        self.up = nn.Sequential(*stages)
        nn.init.zeros_(self.up[-1].weight)
        nn.init.zeros_(self.up[-1].bias)

    def forward(self, inputs: DecoderInputs) -> torch.Tensor:
        x = torch.cat([self.point_mlp(inputs.point_embedding), inputs.image_embedding], dim=1)
        return self.up(x.view(-1, 21, 7, 7))  # [B, 3, 224, 224]


class IPDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, encoder: nn.Module, encoder_id: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.encoder_id = encoder_id
        g = torch.Generator().manual_seed(cfg.fourier_seed)
        self.register_buffer("fourier", torch.randn(2, cfg.fourier_dim, generator=g))
        g = torch.Generator().manual_seed(cfg.projection_seed)
        self.register_buffer("projection", torch.randn(encoder.dim, cfg.feature_rank, generator=g))
        mean, std = torch.zeros(cfg.feature_rank), torch.ones(cfg.feature_rank)
        if cfg.preset == "basis" and cfg.feature_norm == "general":
            mean, std = _reference_stats(encoder, self.projection)
        elif cfg.feature_norm not in ("general", "none"):
            raise ValueError(f"feature_norm must be general or none, got {cfg.feature_norm!r}")
        self.register_buffer("feat_mean", mean)
        self.register_buffer("feat_std", std)
        if cfg.preset == "paper":
            with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG untouched
                torch.manual_seed(cfg.init_seed)
                self.head: nn.Module = _PaperHead(encoder.dim, 2 * cfg.fourier_dim)
        elif cfg.preset == "vp":  # input-independent: a 3 x g x g grid, bilinearly upsampled
            self.head = nn.ParameterDict(
                {"grid": nn.Parameter(torch.zeros(3, cfg.vp_grid, cfg.vp_grid))}
            )
        elif cfg.preset == "basis":
            if len(cfg.box_bump_scales) != len(cfg.bump_sigmas):
                raise ValueError("box_bump_scales needs one scale per bump sigma")
            n_maps = cfg.cosine_grid**2 + len(cfg.bump_sigmas)
            self.head = nn.ParameterDict(
                {"coef": nn.Parameter(torch.zeros(3 * n_maps, cfg.feature_rank + 1))}
            )
        else:
            raise ValueError(f"unknown decoder preset {cfg.preset!r}; use basis, paper or vp")
        if cfg.adapt not in ADAPT_KINDS:
            raise ValueError(f"adapt must be one of {', '.join(ADAPT_KINDS)}, got {cfg.adapt!r}")
        if cfg.adapt == "box":  # the box alone: no visual prompt
            self.head = nn.ParameterDict()
        if cfg.box_refiner not in ("image", "bias"):
            raise ValueError(f"box_refiner must be image or bias, got {cfg.box_refiner!r}")
        sides = torch.zeros(SIDES, cfg.feature_rank + 1 if cfg.box_refiner == "image" else 1)
        self.refiner = nn.ParameterDict(
            {"sides": nn.Parameter(sides)} if cfg.adapt in ("box", "both") else {}
        )
        self._names = [n for n, _ in self.head.named_parameters()]
        self._shapes = [p.shape for _, p in self.head.named_parameters()]
        self.n_visual = sum(p.numel() for p in self.head.parameters())

    # -- the flat trainable vector SPSA works on: [visual prompt, box refiner] --------------------
    def _trainable(self) -> list[nn.Parameter]:
        return [*self.head.parameters(), *self.refiner.parameters()]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self._trainable())

    @property
    def refines_boxes(self) -> bool:
        return len(self.refiner) > 0

    def get_theta(self) -> np.ndarray:
        return nn.utils.parameters_to_vector(self._trainable()).detach().numpy().copy()

    def set_theta(self, theta: np.ndarray) -> None:
        nn.utils.vector_to_parameters(
            torch.as_tensor(theta, dtype=torch.float32), self._trainable()
        )

    def _unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, shape in zip(self._names, self._shapes, strict=True):
            n = math.prod(shape)
            out[name] = theta[i : i + n].view(shape)
            i += n
        return out

    # -- frozen encoders ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: np.ndarray, prompts: Prompts) -> DecoderInputs:
        """uint8 images [B,H,W,3] and their prompts (points or boxes) -> frozen embeddings."""
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        h, w = images.shape[1:3]
        # Pixel coordinates are indices (SAM adds the half pixel itself): the centre is +0.5.
        if prompts.points is not None:
            p01 = (torch.from_numpy(prompts.points[:, 0]) + 0.5) / torch.tensor([w, h])
            return DecoderInputs(self.encoder(x), self._fourier(p01, self.fourier), p01)
        corners = (torch.from_numpy(prompts.boxes).view(-1, 2, 2) + 0.5) / torch.tensor([w, h])
        # each corner gets half the frequencies: the embedding keeps the point's width, so one
        # decoder shape serves both prompt kinds
        half = self.cfg.fourier_dim // 2
        emb = torch.cat(
            [
                self._fourier(corners[:, 0], self.fourier[:, :half]),
                self._fourier(corners[:, 1], self.fourier[:, half : 2 * half]),
            ],
            1,
        )
        centre = corners.mean(1)
        half_size = (corners[:, 1] - corners[:, 0]).abs() / 2
        return DecoderInputs(self.encoder(x), emb, centre, half_size)

    @staticmethod
    def _fourier(p01: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        proj = (2 * p01 - 1) @ matrix * (2 * math.pi)
        return torch.cat([proj.sin(), proj.cos()], 1)

    # -- prompts -----------------------------------------------------------------------------------
    def _basis_maps(self, inputs: DecoderInputs) -> torch.Tensor:
        """[B, n_maps, S, S]: cosines (same for every image) then bumps centred on the prompt
        (round around a point, box-shaped around a box)."""
        s, cfg = self.cfg.image_size, self.cfg
        t = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        freqs = torch.arange(cfg.cosine_grid, dtype=torch.float32)
        c = torch.cos(math.pi * freqs[:, None] * t[None])  # [grid, S]
        cos_maps = (c[:, None, :, None] * c[None, :, None, :]).reshape(-1, s, s)
        centre = inputs.points01
        b = centre.shape[0]
        dx = t[None, None, :] - centre[:, 0, None, None]  # [B, 1, S]
        dy = t[None, :, None] - centre[:, 1, None, None]  # [B, S, 1]
        if inputs.half_size01 is None:
            sigmas = [(sig, sig) for sig in cfg.bump_sigmas]
        else:
            half = inputs.half_size01.clamp_min(1.0 / s)[:, :, None, None]
            sigmas = [(k * half[:, 0], k * half[:, 1]) for k in cfg.box_bump_scales]
        bumps = [torch.exp(-(dx**2) / (2 * sx**2) - dy**2 / (2 * sy**2)) for sx, sy in sigmas]
        return torch.cat([cos_maps.expand(b, -1, -1, -1), torch.stack(bumps, 1)], 1)

    def prompts(self, thetas: np.ndarray, inputs: DecoderInputs) -> np.ndarray:
        """Prompts [T, B, 3, S, S] (normalised units) for T weight vectors [T, D] (or [D])."""
        with torch.no_grad():
            out = self.prompt_tensor(torch.as_tensor(np.atleast_2d(thetas)), inputs)
        return out.numpy()

    def prompt_tensor(self, thetas: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
        """Differentiable in ``thetas`` [T, D] (the white-box oracle back-propagates through it)."""
        thetas = thetas.float()[:, : self.n_visual]
        if self.n_visual == 0:  # adapt="box": the pixels are left alone
            s, b = self.cfg.image_size, inputs.points01.shape[0]
            return thetas.new_zeros(thetas.shape[0], b, 3, s, s)
        if self.cfg.preset == "basis":
            return self._basis_prompts(thetas, inputs)
        if self.cfg.preset == "vp":
            g, s = self.cfg.vp_grid, self.cfg.image_size
            grid = thetas.view(-1, 3, g, g)
            full = F.interpolate(grid, (s, s), mode="bilinear", align_corners=False)
            return full[:, None].expand(-1, inputs.points01.shape[0], -1, -1, -1)
        return torch.stack([self._paper_prompt(th, inputs) for th in thetas])

    def features(self, inputs: DecoderInputs) -> torch.Tensor:
        """[B, r + 1]: a bias and a fixed low-rank projection of the image embedding."""
        e = inputs.image_embedding
        z = (e / (e.norm(dim=1, keepdim=True) + 1e-8)) @ self.projection  # [B, r]
        z = (z - self.feat_mean) / self.feat_std
        return torch.cat([z.new_ones(z.shape[0], 1), z], 1)

    def refiner_features(self, inputs: DecoderInputs) -> torch.Tensor:
        """[B, r + 1] or, for a bias-only refiner, [B, 1]: what each side's move is linear in."""
        feats = self.features(inputs)
        return feats if self.cfg.box_refiner == "image" else feats[:, :1]

    def refine(self, thetas: np.ndarray, inputs: DecoderInputs, prompts: Prompts, hw) -> Prompts:
        """The prompts the FM receives under each of T weight vectors: boxes [T*B, 4] moved by
        the refiner (T-major, as the prompted images are), or the given prompts repeated."""
        t = np.atleast_2d(thetas)
        if not self.refines_boxes or prompts.boxes is None:
            return prompts.tile(len(t))
        coef = torch.as_tensor(t[:, self.n_visual :]).view(len(t), SIDES, -1)
        boxes = refine_boxes(coef, self.refiner_features(inputs), prompts.boxes, hw)
        return Prompts(boxes=boxes.reshape(-1, 4))

    def _basis_prompts(self, thetas: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
        feats = self.features(inputs)  # [B, r + 1]
        coef = thetas.view(thetas.shape[0], -1, feats.shape[1])  # [T, 3 * n_maps, r + 1]
        per_image = torch.einsum("tkr,br->tbk", coef, feats)  # [T, B, 3 * n_maps]
        maps = self._basis_maps(inputs)  # [B, n_maps, S, S]
        per_image = per_image.view(*per_image.shape[:2], 3, maps.shape[1])
        return torch.einsum("tbcm,bmhw->tbchw", per_image, maps)

    def _paper_prompt(self, theta: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
        out = functional_call(self.head, self._unflatten(theta), (inputs,))
        s = self.cfg.image_size
        return F.interpolate(out, (s, s), mode="bilinear", align_corners=False) if s != 224 else out


REFERENCE_PROBE = 128  # general-domain scenes behind the feature statistics
# Their seeds: apart from FM pretraining (< 1e6), its hold-out (1e7) and `general` (2e7+).
REFERENCE_SEED0 = 5_000_000


@functools.cache
def _reference_probe() -> np.ndarray:
    """The probe's images [N, H, W, 3] uint8, drawn once per process: drawing them costs far more
    than encoding them, and every decoder built (each site, each round's check) needs them."""
    from baps_fed.data.general import general_dataset

    images = np.stack([s.image for s in general_dataset(REFERENCE_PROBE, seed0=REFERENCE_SEED0)])
    images.flags.writeable = False  # shared by every caller
    return images


def _reference_embeddings(encoder: nn.Module) -> torch.Tensor:
    """Normalised embeddings of a fixed general-domain probe (no site data, same everywhere)."""
    x = torch.tensor(_reference_probe()).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        e = encoder(x)
    return e / (e.norm(dim=1, keepdim=True) + 1e-8)


def _reference_stats(
    encoder: nn.Module, projection: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    z = _reference_embeddings(encoder) @ projection
    return z.mean(0), z.std(0).clamp(min=1e-3)


def build_decoder(
    cfg: DecoderConfig = DecoderConfig(), encoder_path: Path | None = None
) -> IPDecoder:
    """The decoder ``cfg`` describes; ``encoder_path`` points at its encoder's weights when they
    lie elsewhere than the config says (same kind of encoder; the checkpoint's hash decides)."""
    spec = (
        cfg.image_encoder if encoder_path is None else with_weights(cfg.image_encoder, encoder_path)
    )
    encoder, encoder_id = load_image_encoder(spec)
    return IPDecoder(cfg, encoder, encoder_id)


def save_decoder(path: Path, decoder: IPDecoder, extra: dict | None = None) -> None:
    """Everything needed to reload the decoder exactly, plus the run's config and code version."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(decoder.cfg),
            "theta": torch.from_numpy(decoder.get_theta()),
            "fourier": decoder.fourier.clone(),
            "projection": decoder.projection.clone(),
            "feat_mean": decoder.feat_mean.clone(),
            "feat_std": decoder.feat_std.clone(),
            "encoder": decoder.encoder_id,
            "image_size": decoder.cfg.image_size,
            "normalisation": {"mean": PIXEL_MEAN.tolist(), "std": PIXEL_STD.tolist()},
            "code_version": baps_fed.__version__,
            "extra": extra or {},
        },
        path,
    )


def load_decoder(path: Path, encoder_path: Path | None = None) -> tuple[IPDecoder, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decoder checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for a bad file
        raise ValueError(f"{path}: cannot be read as a checkpoint ({err})") from err
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: not a baps-fed decoder checkpoint ({CHECKPOINT_FORMAT}); "
            "give checkpoints/best.pt or last.pt of a `baps-fed train` run"
        )
    cfg_dict = dict(blob["config"])
    cfg_dict["bump_sigmas"] = tuple(cfg_dict["bump_sigmas"])
    if "box_bump_scales" in cfg_dict:
        cfg_dict["box_bump_scales"] = tuple(cfg_dict["box_bump_scales"])
    cfg_dict.setdefault("feature_norm", "none")  # checkpoints from before the option had none
    cfg_dict.setdefault("box_refiner", "image")  # and before this one, image-conditioned moves
    decoder = build_decoder(DecoderConfig(**cfg_dict), encoder_path)
    if decoder.encoder_id != blob["encoder"]:
        raise ValueError(
            f"{path} was trained with image encoder {blob['encoder']}, but this installation "
            f"has {decoder.encoder_id}; install the baps-fed version that made it "
            f"({blob['code_version']}) or pass that encoder's weights"
        )
    decoder.fourier.copy_(blob["fourier"])
    decoder.projection.copy_(blob["projection"])
    if "feat_mean" in blob:
        decoder.feat_mean.copy_(blob["feat_mean"])
        decoder.feat_std.copy_(blob["feat_std"])
    decoder.set_theta(blob["theta"].numpy())
    return decoder, blob["extra"]
