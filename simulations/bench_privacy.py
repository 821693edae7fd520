"""DP utility curve: federated Dice gain over zero-shot at several epsilons, and seed uploads.

    python simulations/bench_privacy.py --epsilons inf 8 4 1 --seeds 0 1 2

Each epsilon (at --delta) is turned into the noise multiplier that spends exactly it over the
whole run (rounds x local steps releases at the Poisson rate ``dp-sample-rate``; Opacus' RDP
search), then the federated arm of bench_federated runs with DP on. ``inf`` runs DP's
clipping and Poisson batches without noise; ``--no-dp`` adds the plain run as the reference
the goal is measured against (gain at epsilon 8 >= 70% of it). Seed-and-scalar uploads replay
to the dense update bit for bit (tests/test_federation.py), so their Dice is the dense Dice;
their bytes are reported from seed_upload.scalar_bytes. Writes
simulations/results/privacy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from baps_fed.federation.comparison import run_seed
from baps_fed.federation.contract import FedTrainConfig, initial_theta
from baps_fed.federation.scenario import Scenario
from baps_fed.federation.seed_upload import scalar_bytes
from baps_fed.federation.server_optimizer import ServerOptConfig
from baps_fed.fm.spec import load_fm
from baps_fed.method.dp import noise_for_epsilon


def weighted_dice(result: dict, arm: str) -> float:
    rows = result[arm].values()
    w = np.array([r["num-examples"] for r in rows], float)
    return float(np.dot(w, [r["dice"] for r in rows]) / w.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", type=Path, default=Path("simulations/scenarios/default.toml"))
    ap.add_argument("--epsilons", type=float, nargs="+", default=[math.inf, 8, 4, 1])
    ap.add_argument("--no-dp", action="store_true", help="also run without DP (the reference)")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--rounds", type=int, default=None, help="default: the scenario's")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--add", action="store_true", help="keep the results file's runs, run only missing seeds"
    )
    ap.add_argument("--out", type=Path, default=Path("simulations/results/privacy"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scenario = Scenario.load(args.scenario)
    rounds = args.rounds or int(scenario.rounds)
    base = FedTrainConfig.from_flat(scenario.train)
    releases = rounds * base.local_steps
    fm = load_fm("tiny")
    server = ServerOptConfig(name=scenario.coordinator.get("server-opt", "fedavg"))

    settings: list[tuple[str, FedTrainConfig, float]] = []
    if args.no_dp:
        settings.append(("no DP", base, math.nan))
    for eps in args.epsilons:
        sigma = noise_for_epsilon(eps, args.delta, base.dp_sample_rate, releases)
        settings.append((f"epsilon {eps:g}", replace(base, dp=True, dp_noise=sigma), sigma))

    rows, commands = [], []
    if args.add and args.out.with_suffix(".json").is_file():  # earlier seeds are kept
        earlier = json.loads(args.out.with_suffix(".json").read_text())
        rows, commands = earlier["rows"], earlier.get("commands", [])
    commands.append("python " + " ".join(sys.argv))
    for label, cfg, sigma in settings:
        row = next((r for r in rows if r["setting"] == label), None)
        if row is None:
            row = {"setting": label, "noise_multiplier": sigma, "seeds": [], "dice": [], "gain": []}
            rows.append(row)
        elif not math.isclose(row["noise_multiplier"], sigma) and not math.isnan(sigma):
            raise SystemExit(
                f"{args.out}.json ran {label} at noise {row['noise_multiplier']}, this run "
                f"would use {sigma}: other rounds or settings; drop --add or pick another --out"
            )
        for seed in [s for s in args.seeds if s not in row["seeds"]]:
            t0 = time.perf_counter()
            res = run_seed(scenario, cfg, rounds, seed, fm, server, ("federated",))
            zero, fed = weighted_dice(res, "zero_shot"), weighted_dice(res, "federated")
            row["seeds"].append(seed)
            row["gain"].append(fed - zero)
            row["dice"].append(fed)
            print(f"{label} seed {seed}: Dice {fed:.3f} (gain {fed - zero:+.3f}), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
            write(args, rows, commands, base, releases)


def write(
    args: argparse.Namespace,
    rows: list[dict],
    commands: list[str],
    base: FedTrainConfig,
    releases: int,
) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"commands": commands, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    ref = next((r for r in rows if r["setting"] == "no DP"), None)
    ref_by_seed = dict(zip(ref["seeds"], ref["gain"], strict=True)) if ref else {}

    def ref_gain(seeds: list[int]) -> float:
        """The no-DP gain on the same seeds (seeds differ in data, so only like compares)."""
        if not seeds or any(s not in ref_by_seed for s in seeds):
            return math.nan
        return float(np.mean([ref_by_seed[s] for s in seeds]))

    n_params = initial_theta(base).size
    dense = 4 * n_params
    lines = [
        "# DP on SPSA scalars: utility curve (federated, weighted test Dice)",
        "",
        *[f"`{c}`" for c in commands],
        "",
        f"{releases} releases per site (rounds x local steps), Poisson rate "
        f"{base.dp_sample_rate}, clip {base.dp_clip}, delta {args.delta:g}, RDP accountant.",
        "",
        "| setting | noise multiplier | seeds | Dice | gain over zero-shot "
        "| share of the no-DP gain on the same seeds |",
        "|---|---|---|---|---|---|",
    ]
    # no DP first, then from the least noise to the most
    for r in sorted(
        rows, key=lambda r: -1 if math.isnan(r["noise_multiplier"]) else r["noise_multiplier"]
    ):
        g = float(np.mean(r["gain"]))
        lines.append(
            f"| {r['setting']} | {r['noise_multiplier']:.3f} | {' '.join(map(str, r['seeds']))} | "
            f"{np.mean(r['dice']):.3f} ± "
            f"{np.std(r['dice']):.3f} | {g:+.3f} | {g / ref_gain(r['seeds']):.2f} |"
        )
    up = scalar_bytes(base.local_steps, base.sp_avg)
    lines += [
        "",
        f"Upload per site and round: dense {dense} bytes ({n_params} float32), seeds {up} bytes "
        f"({dense / up:.1f}x smaller).",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
