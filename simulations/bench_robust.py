"""One adversarial site: what plain averaging loses and what robust aggregation keeps.

    python simulations/bench_robust.py --attacks scaled sign-flip nan --seeds 0

Seed-and-scalar uploads on a scenario (default: the four-modality one). Every round each site
trains honestly; one site (``--attacker``) then tampers with the scalars it uploads:
- ``scaled``: every scalar times ``--scale`` (1000);
- ``sign-flip``: every scalar negated (its update points the other way);
- ``nan``: every scalar NaN.
The federation is the in-process one (``baps_fed.federation.in_process``), whose coordinator is
the real ``RoundAggregator``: replay of each site's scalars, the guard, the aggregation rule,
the server step. Arms: the honest run with each rule, then every attack with each rule. The
scalar-* rules combine the sites' scalars one by one, so their arms run with shared
perturbations (every site perturbs along the same directions); the other rules with per-site
ones. Reported: weighted test Dice of the honest sites (the attacker's own test split is left
out: its result is its own business), and the change against the honest run with plain
averaging.
Writes simulations/results/robust.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from baps_fed.federation.aggregation import SCALAR_AGGREGATIONS
from baps_fed.federation.contract import FedTrainConfig, initial_theta
from baps_fed.federation.in_process import InProcessFederation
from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.round_aggregator import RoundAggregator
from baps_fed.federation.scenario import Scenario
from baps_fed.federation.seed_upload import pack_scalars, unpack_scalars
from baps_fed.federation.server_optimizer import ServerOptConfig, ServerOptimizer
from baps_fed.fm.spec import load_fm

ATTACKS = ("honest", "scaled", "sign-flip", "nan")


def tamper(scalars: np.ndarray, attack: str, scale: float) -> np.ndarray:
    """What the attacker uploads instead of its honest [steps, K] scalars."""
    if attack == "honest":
        return scalars
    if attack == "scaled":
        return scalars * np.float32(scale)
    if attack == "sign-flip":
        return -scalars
    if attack == "nan":
        return np.full_like(scalars, np.nan)
    raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")


def run_arm(
    sites: list[LocalSite],
    cfg: FedTrainConfig,
    rounds: int,
    attacker: str,
    attack: str,
    aggregation: str,
    trim: float,
    scale: float,
) -> dict:
    def tampered(name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if name != attacker:
            return arrays
        c, scalars = unpack_scalars(arrays["scalars"].tobytes())
        sent = tamper(scalars, attack, scale)
        return {"scalars": np.frombuffer(pack_scalars(c, sent), np.uint8)}

    aggregator = RoundAggregator(
        ServerOptimizer(ServerOptConfig()),
        initial_theta(cfg),
        train_cfg=cfg,
        aggregation=aggregation,  # type: ignore[arg-type]
        trim=trim,
    )
    federation = InProcessFederation(sites, aggregator, tampered)
    federation.run(rounds)
    honest = [s for s in sites if s.spec.name != attacker]
    per_site = federation.evaluate(honest)
    w = np.array([m["num-examples"] for m in per_site.values()], float)
    dice = float(np.dot(w, [m["dice"] for m in per_site.values()]) / w.sum())
    zero = float(np.dot(w, [m["zero-shot-dice"] for m in per_site.values()]) / w.sum())
    return {
        "dice": dice,
        "zero_shot": zero,
        "per_site": {n: m["dice"] for n, m in per_site.items()},
        "failures": federation.failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", type=Path, default=Path("simulations/scenarios/default.toml"))
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS[1:]), choices=ATTACKS[1:])
    # with four sites a trimmed mean cutting one at each end is the median: the default runs
    # the median only
    ap.add_argument("--aggregations", nargs="+", default=["mean", "median", "multi-krum"])
    ap.add_argument("--trim", type=float, default=0.25)
    ap.add_argument("--scale", type=float, default=1000.0)
    ap.add_argument("--attacker", help="the tampering site (default: the scenario's first)")
    ap.add_argument("--rounds", type=int, default=None, help="default: the scenario's")
    ap.add_argument("--local-steps", type=int, default=None, help="default: the scenario's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("simulations/results/robust"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scenario = Scenario.load(args.scenario)
    rounds = args.rounds or int(scenario.rounds)
    train = dict(scenario.train)
    if args.local_steps:
        train["local-steps"] = args.local_steps
    base = replace(FedTrainConfig.from_flat(train), upload="seeds")
    attacker = args.attacker or scenario.sites[0]["name"]
    fm = load_fm("tiny")

    rows: list[dict] = []
    for seed in args.seeds:
        specs = scenario.site_specs(seed)
        # a LocalSite keeps no run state (the arms pass it in), so the sites serve every arm
        # of the same perturbation scheme
        variants = {}
        for shared in {a in SCALAR_AGGREGATIONS for a in args.aggregations}:
            cfg = replace(base, master_seed=seed, shared_perturbations=shared)
            variants[shared] = cfg, [LocalSite(sp, cfg, fm=fm) for sp in specs]
        for attack in ["honest", *args.attacks]:
            for aggregation in args.aggregations:
                cfg, sites = variants[aggregation in SCALAR_AGGREGATIONS]
                t0 = time.perf_counter()
                res = run_arm(
                    sites, cfg, rounds, attacker, attack, aggregation, args.trim, args.scale
                )
                rows.append({"seed": seed, "attack": attack, "aggregation": aggregation, **res})
                print(
                    f"seed {seed} {attack} {aggregation}: honest sites' Dice {res['dice']:.3f} "
                    f"({len(res['failures'])} rejections, {time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
                write(args, rows, attacker, rounds)


def write(args: argparse.Namespace, rows: list[dict], attacker: str, rounds: int) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")

    def mean_dice(attack: str, aggregation: str) -> float:
        d = [r["dice"] for r in rows if r["attack"] == attack and r["aggregation"] == aggregation]
        return float(np.mean(d)) if d else float("nan")

    ref = mean_dice("honest", "mean")
    zero = float(np.mean([r["zero_shot"] for r in rows]))
    aggregations = list(dict.fromkeys(r["aggregation"] for r in rows))
    lines = [
        "# One adversarial site (seed-and-scalar uploads): weighted test Dice of the honest sites",
        "",
        "`python " + " ".join(sys.argv) + "`",
        "",
        f"Attacker: {attacker}; {rounds} rounds; seeds "
        f"{' '.join(str(s) for s in sorted({r['seed'] for r in rows}))}. Zero-shot {zero:.3f}. "
        "Cells: Dice (change against the honest run with plain averaging, in Dice points).",
        "",
        "| attack | "
        + " | ".join(aggregations)
        + " | uploads rejected by the guard (all arms of the row) |",
        "|---|" + "---|" * len(aggregations) + "---|",
    ]
    for attack in dict.fromkeys(r["attack"] for r in rows):
        cells = []
        for agg in aggregations:
            d = mean_dice(attack, agg)
            change = f" ({100 * (d - ref):+.1f})" if np.isfinite(ref) else ""  # no mean arm
            cells.append(f"{d:.3f}{change}")
        rejected = sum(len(r["failures"]) for r in rows if r["attack"] == attack)
        lines.append(f"| {attack} | " + " | ".join(cells) + f" | {rejected} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
