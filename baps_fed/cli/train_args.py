"""The options of ``baps-fed train`` that shape the decoder and its SPSA training (defaults read
from ``DecoderConfig``, ``TrainConfig``, ``StepConfig`` and ``SpsaConfig``)."""

from __future__ import annotations

import argparse

from baps_fed.cli.shared_args import add_image_size
from baps_fed.method.ip_decoder import ADAPT_KINDS, DecoderConfig
from baps_fed.method.spsa_step import StepConfig
from baps_fed.single_site.training import TrainConfig


def add_train_args(p: argparse.ArgumentParser) -> None:
    run, step, spsa = TrainConfig(), StepConfig(), StepConfig().spsa
    p.add_argument(
        "--preset",
        default=DecoderConfig.preset,
        choices=["basis", "paper", "vp"],
        help="the IP decoder: basis (a few fixed maps mixed by image and prompt), paper (BAPS's "
        "conv decoder) or vp (one input-independent visual prompt, the baseline)",
    )
    p.add_argument(
        "--vp-grid", type=int, default=DecoderConfig.vp_grid, help="vp preset: 3 x g x g prompt"
    )
    p.add_argument(
        "--image-encoder",
        default=DecoderConfig.image_encoder,
        help="the decoder's frozen image encoder: small (shipped) or clip:[MODEL:]PATH, CLIP's "
        "image tower from local open_clip weights (pip install 'baps-fed[clip]')",
    )
    add_image_size(p)
    p.add_argument(
        "--adapt",
        default=DecoderConfig.adapt,
        choices=ADAPT_KINDS,
        help="what SPSA learns: the visual prompt, the box sent to the FM (a per-side move; "
        "--prompt box), or both",
    )
    p.add_argument(
        "--box-refiner",
        default=DecoderConfig.box_refiner,
        choices=("bias", "image"),
        help="the box refiner's moves: one per side for every image (bias), or linear in "
        "image features (image)",
    )
    p.add_argument(
        "--steps", type=int, default=run.steps, help="SPSA steps (a resumed run: in all)"
    )
    p.add_argument("--batch", type=int, default=step.batch_size, help="images per SPSA step")
    p.add_argument("--sp-avg", type=int, default=spsa.sp_avg, help="K perturbations per step")
    p.add_argument(
        "--update",
        default=spsa.update,
        choices=["raw", "sign", "normalized"],
        help="raw: SPSA-GC's step; sign: every weight moves by exactly lr; normalized: the step "
        "scaled to lr * sqrt(dim)",
    )
    p.add_argument("--lr", type=float, default=spsa.lr, help="learning rate (step size) of SPSA")
    p.add_argument(
        "--schedule",
        default=spsa.schedule,
        choices=["baps", "blackvip", "constant"],
        help=f"lr over the steps k: baps (x{spsa.lr_decay} every {spsa.lr_decay_every} steps), "
        f"blackvip (lr / (k+1+{spsa.o})^{spsa.alpha}) or constant",
    )
    p.add_argument("--beta", type=float, default=spsa.beta, help="momentum correction")
    p.add_argument("--c", type=float, default=spsa.c, help="used when --target-grey is 0")
    p.add_argument(
        "--target-grey",
        type=float,
        default=run.target_grey,
        help="perturbation size in grey levels at the FM input (0: use --c)",
    )
    p.add_argument(
        "--loss",
        default=step.loss,
        choices=["dice", "bce", "focal"],
        help="the loss of the FM's mask against the ground truth that SPSA lowers",
    )
    p.add_argument("--geass", action="store_true", help="SPSA-GEASS strikes")
    p.add_argument(
        "--val-every",
        type=int,
        default=run.val_every,
        help="score the validation split every N steps (the best weights are kept)",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="FM image-queries for training and validation (test counted apart)",
    )
