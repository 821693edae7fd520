"""``baps-fed make-data | zero-shot | train | evaluate``: one site, as in the BAPS paper.

Every flag's default is read from the dataclass that holds it (``TrainConfig``, ``StepConfig``,
``SpsaConfig``, ``DecoderConfig``, ``SiteSpec``), so a default is written once.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from baps_fed.cli.shared_args import (
    add_data_args,
    add_device_arg,
    add_image_size,
    add_layout_arg,
    add_manifest_args,
    add_prompt_args,
    add_scanner_arg,
    prompt_config,
)
from baps_fed.cli.train_args import add_train_args
from baps_fed.data.modalities import MODALITIES
from baps_fed.data.prompts import PromptConfig
from baps_fed.federation.contract import SiteSpec
from baps_fed.method.ip_decoder import DecoderConfig
from baps_fed.method.spsa import GeassConfig, SpsaConfig
from baps_fed.method.spsa_step import StepConfig
from baps_fed.single_site.training import TrainConfig


def _cmd_make_data(args: argparse.Namespace) -> int:
    from baps_fed.data.sources import write_synthetic_site

    n = write_synthetic_site(args.modality, args.out, args.n, args.seed, args.scanner, args.size)
    print(f"wrote {n} image/mask pairs to {args.out} (generic layout: images/ + masks/)")
    return 0


def _zero_shot_rows(
    fm_spec: str,
    sources: list[str],
    n: int,
    seed: int,
    scanner: int,
    layout: str,
    prompting: PromptConfig,
    size: int,
    budget: int | None = None,
    device: str = "cpu",
    subset: str = "",
) -> list[dict]:
    from baps_fed.data.problems import summarize_problems
    from baps_fed.data.sources import open_source
    from baps_fed.evaluation.evaluate import evaluate_fm
    from baps_fed.fm.spec import load_fm

    # Real images are letterboxed to the decoder's size, which training and evaluation use too.
    datasets = [
        open_source(s, n=n, seed=seed, scanner=scanner, layout=layout, size=size, subset=subset)
        for s in sources
    ]
    # after the data: a wrong path should fail before any model loads
    fm = load_fm(fm_spec, device=device, budget_images=budget)
    fm.require_prompt(prompting.kind)
    rows = []
    for source, ds in zip(sources, datasets, strict=True):
        for line in summarize_problems(ds.problems):
            print(f"  {line}", file=sys.stderr)
        scores = evaluate_fm(fm, ds, seed, prompting, keep_partial=True)
        rows.append({"data": source, **scores.summary()})
        if scores.stopped:  # a spent budget or quota: keep and report what was scored
            rows[-1]["stopped"] = f"{len(scores.names)} of {len(ds)} images: {scores.stopped}"
            break
    return rows


def _print_table(rows: list[dict]) -> None:
    print(f"{'data':<14} {'n':>5} {'Dice':>7} {'±':>6} {'IoU':>7} {'HD95':>7}")
    for r in rows:
        print(
            f"{r['data']:<14} {r['n']:>5} {r['dice']:7.3f} {r['dice_std']:6.3f} "
            f"{r['iou']:7.3f} {r['hd95']:7.1f}"
        )


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    prompting = prompt_config(args)
    rows = _zero_shot_rows(
        args.fm,
        args.data,
        args.n,
        args.seed,
        args.scanner,
        args.layout,
        prompting,
        args.image_size,
        args.budget,
        args.device,
        args.subset,
    )
    print(f"prompt: {prompting.describe()}")
    _print_table(rows)
    for row in rows:
        if "stopped" in row:
            print(f"stopped at {row['data']} after {row['stopped']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    spsa = SpsaConfig(
        sp_avg=args.sp_avg,
        c=args.c,
        lr=args.lr,
        schedule=args.schedule,
        beta=args.beta,
        update=args.update,
    )
    step = StepConfig(
        batch_size=args.batch,
        loss=args.loss,
        spsa=spsa,
        geass=GeassConfig(enabled=args.geass),
        prompt=prompt_config(args),
    )
    return TrainConfig(
        steps=args.steps,
        val_every=args.val_every,
        seed=args.seed,
        target_grey=args.target_grey,
        step=step,
    )


# flag -> where a resumed run's checkpoint holds its value (train config path, or decoder field)
_RUN_SETTINGS = {
    "--lr": ("step", "spsa", "lr"),
    "--sp-avg": ("step", "spsa", "sp_avg"),
    "--update": ("step", "spsa", "update"),
    "--schedule": ("step", "spsa", "schedule"),
    "--beta": ("step", "spsa", "beta"),
    "--batch": ("step", "batch_size"),
    "--loss": ("step", "loss"),
    "--geass": ("step", "geass", "enabled"),
    "--target-grey": ("target_grey",),
    "--val-every": ("val_every",),
    "--seed": ("seed",),
    "--preset": ("decoder", "preset"),
    "--vp-grid": ("decoder", "vp_grid"),
    "--image-encoder": ("decoder", "image_encoder"),
    "--adapt": ("decoder", "adapt"),
    "--box-refiner": ("decoder", "box_refiner"),
    "--image-size": ("decoder", "image_size"),
    "--prompt": ("step", "prompt", "kind"),
    "--point-mode": ("step", "prompt", "point_mode"),
    "--box-protocol": ("step", "prompt", "box", "protocol"),
}


def _refuse_changed_settings(args: argparse.Namespace, saved: dict, dec_cfg) -> None:
    """``--resume`` continues a run as it was trained: a flag given with another value than
    the run used is refused, naming each (``--steps`` may extend the run)."""
    changed = []
    for flag, path in _RUN_SETTINGS.items():
        if flag not in args.given_flags:
            continue
        if path[0] == "decoder":
            used = getattr(dec_cfg, path[1])
        else:
            used = saved
            for key in path:
                used = used[key]
        given = getattr(args, flag[2:].replace("-", "_"))
        if given != used:
            changed.append(f"{flag} {given} (the run used {used})")
    if changed:
        raise ValueError(
            "--resume continues the run with its own settings; these differ: "
            + "; ".join(changed)
            + ". Drop them, or start a new run (--overwrite or another --out)"
        )


def _open_data(args: argparse.Namespace, size: int):
    from baps_fed.data.sources import open_source

    return open_source(
        args.data,
        n=args.n,
        seed=args.seed,
        scanner=args.scanner,
        layout=args.layout,
        size=size,
        subset=args.subset,
        group_by=args.group_by,  # the dataset carries it: its train/val/test split honours it
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from baps_fed.evaluation.run_files import check_folder
    from baps_fed.fm.spec import load_fm
    from baps_fed.method.ip_decoder import build_decoder, load_decoder
    from baps_fed.single_site.run import RUN_MARKERS, print_comparison, run_training

    check_folder(args.out, RUN_MARKERS, args.resume, args.overwrite)  # before anything loads
    cfg = _train_config(args)  # its numbers checked before data or FM load
    if args.adapt != "prompt" and cfg.step.prompt.kind != "box":
        raise ValueError(f"--adapt {args.adapt} refines box prompts: add --prompt box")
    if args.n < 1:
        raise ValueError(f"n must be a positive whole number of synthetic cases, got {args.n}")
    last = args.out / "checkpoints" / "last.pt"
    if args.resume and last.is_file():  # the decoder as it was trained, not as the flags say
        decoder, extra = load_decoder(last)
        _refuse_changed_settings(args, extra["train_config"], decoder.cfg)
    else:
        decoder = build_decoder(
            DecoderConfig(
                preset=args.preset,
                vp_grid=args.vp_grid,
                init_seed=args.seed,
                image_encoder=args.image_encoder,
                adapt=args.adapt,
                box_refiner=args.box_refiner,
                image_size=args.image_size,
            )
        )
    fm = load_fm(args.fm, device=args.device, budget_images=args.budget)
    fm.require_prompt(cfg.step.prompt.kind)
    data = _open_data(args, decoder.cfg.image_size)
    result, summary = run_training(decoder, fm, data, cfg, args.out, resume=args.resume)
    print(
        f"stopped: {summary['stopped']}; FM image-queries: {result.fm_images_train} training, "
        f"{result.fm_images_val} validation"
    )
    if summary["test"] is not None:
        print_comparison(summary["test"])
    print(f"run folder: {args.out} (report: {args.out / 'report.md'})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from baps_fed.federation.global_decoder import decoder_to_score
    from baps_fed.fm.spec import load_fm
    from baps_fed.single_site.run import print_comparison, run_evaluation

    decoder, trained = decoder_to_score(args.checkpoint)  # train's, or the federated one
    prompting = prompt_config(args)
    if "--prompt" not in args.given_flags:  # as the decoder was trained
        prompting = replace(prompting, kind=trained)
    fm = load_fm(args.fm, device=args.device)
    fm.require_prompt(prompting.kind)
    data = _open_data(args, decoder.cfg.image_size)
    print(f"prompt: {prompting.describe()} (the decoder was trained with {trained} prompts)")
    result = run_evaluation(decoder, fm, data, args.seed, prompting, args.split)
    print_comparison(result)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    site = SiteSpec
    p = sub.add_parser("make-data", help="write a synthetic site to disk (images/ + masks/)")
    p.add_argument("--modality", required=True, choices=MODALITIES, help="what the cases show")
    p.add_argument("--out", type=Path, required=True, help="folder to write images/ and masks/ to")
    p.add_argument("--n", type=int, default=site.n, help="cases to draw (near-empty masks skipped)")
    p.add_argument("--seed", type=int, default=site.seed, help="seed of the synthetic cases")
    add_scanner_arg(p)
    p.add_argument("--size", type=int, default=DecoderConfig.image_size, help="image side in px")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("zero-shot", help="Dice/IoU/HD95 of an FM with one point or one box")
    p.add_argument(
        "--fm",
        default=site.fm,
        help="FM spec: tiny | sam:vit_b:PATH | medsam:PATH | litemedsam[:PATH] | grpc://...",
    )
    add_device_arg(p)
    add_prompt_args(p)
    add_image_size(p)
    p.add_argument(
        "--data",
        nargs="+",
        default=list(MODALITIES),
        help="synthetic modality names, 'general', or data folders",
    )
    add_layout_arg(p)
    add_manifest_args(p, group_by=False)
    p.add_argument("--n", type=int, default=site.n, help="synthetic cases per source")
    p.add_argument(
        "--seed", type=int, default=site.seed, help="seed of the synthetic cases and the prompts"
    )
    add_scanner_arg(p)
    p.add_argument("--json", type=Path, help="also write the table as JSON")
    p.add_argument("--budget", type=int, default=None, help="most FM image-queries to spend")
    p.set_defaults(func=_cmd_zero_shot)

    p = sub.add_parser("train", help="single-site BAPS: train the IP decoder with SPSA")
    add_data_args(p)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run that OUT holds")
    add_train_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="zero-shot vs a trained decoder on a test split")
    add_data_args(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a decoder train wrote (checkpoints/best.pt), or a federated run's shared decoder "
        "(the coordinator's coordinator_checkpoint.npz)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="which split of the data to score (all: every sample)",
    )
    p.set_defaults(func=_cmd_evaluate)
