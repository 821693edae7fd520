"""The ``baps-fed`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from baps_fed.data.modalities import MODALITIES

DEFAULT_SITES = MODALITIES  # one site per synthetic modality in the default scenario


def _cmd_make_data(args: argparse.Namespace) -> int:
    from baps_fed.data.sources import write_synthetic_site

    n = write_synthetic_site(args.modality, args.out, args.n, args.seed, args.scanner, args.size)
    print(f"wrote {n} image/mask pairs to {args.out} (generic layout: images/ + masks/)")
    return 0


def _zero_shot_rows(
    fm_spec: str, sources: list[str], n: int, seed: int, scanner: int, layout: str
) -> list[dict]:
    from baps_fed.data.sources import open_source
    from baps_fed.evaluation import evaluate_fm
    from baps_fed.fm.spec import load_fm

    datasets = [open_source(s, n=n, seed=seed, scanner=scanner, layout=layout) for s in sources]
    fm = load_fm(fm_spec)  # after the data: a wrong path should fail before any model loads
    rows = []
    for source, ds in zip(sources, datasets, strict=True):
        for p in ds.problems:
            print(f"  {p.path}: {p.reason} ({p.action})", file=sys.stderr)
        rows.append({"data": source, **evaluate_fm(fm, ds, point_seed=seed).summary()})
    return rows


def _print_table(rows: list[dict]) -> None:
    print(f"{'data':<14} {'n':>5} {'Dice':>7} {'±':>6} {'IoU':>7} {'HD95':>7}")
    for r in rows:
        print(
            f"{r['data']:<14} {r['n']:>5} {r['dice']:7.3f} {r['dice_std']:6.3f} "
            f"{r['iou']:7.3f} {r['hd95']:7.1f}"
        )


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    rows = _zero_shot_rows(args.fm, args.data, args.n, args.seed, args.scanner, args.layout)
    _print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    print(
        "baps-fed simulate: federated training is not built yet (it lands with the federation "
        "work).\nFor now this evaluates the default scenario's sites zero-shot with the FM."
    )
    _print_table(_zero_shot_rows(args.fm, list(DEFAULT_SITES), args.n, args.seed, 0, "auto"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="baps-fed", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-data", help="write a synthetic site to disk (images/ + masks/)")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scanner", type=int, default=0, help="per-site acquisition profile")
    p.add_argument("--size", type=int, default=128)
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("zero-shot", help="Dice/IoU/HD95 of an FM with one positive point")
    p.add_argument("--fm", default="tiny", help="FM spec: tiny | sam:vit_b:PATH | medsam:PATH")
    p.add_argument(
        "--data",
        nargs="+",
        default=list(DEFAULT_SITES),
        help="synthetic modality names, 'general', or data folders",
    )
    p.add_argument(
        "--layout", default="auto", help="auto | generic | isic2018 | kvasir | busi | optic_disc"
    )
    p.add_argument("--n", type=int, default=200, help="synthetic cases per source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scanner", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the table as JSON")
    p.set_defaults(func=_cmd_zero_shot)

    p = sub.add_parser("simulate", help="the default multi-site scenario")
    p.add_argument("--fm", default="tiny")
    p.add_argument("--n", type=int, default=100, help="synthetic cases per site")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_simulate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"baps-fed {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
