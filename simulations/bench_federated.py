"""Zero-shot vs local-only vs federated vs pooled-centralised BAPS, at equal FM image-queries.

    python simulations/bench_federated.py --scenario simulations/scenarios/unequal.toml \
        --rounds 8 --local-steps 8 --out simulations/results/federated

The arms are ``baps_fed.federation.comparison.run_seed``: every arm runs the code a Flower
site runs, and the federated arm the Flower app's round in one process (the simulation
reproduces these numbers). Small sites have small test splits (10 cases at n = 50), too noisy
to compare arms on: ``--test-n N`` scores every site on N unseen cases of its own generator.
Seeds vary the master seed (perturbations, batches) and the data seed. "weighted" weighs sites
by their training-set size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from baps_fed.federation.comparison import ARMS, run_seed
from baps_fed.federation.contract import FedTrainConfig
from baps_fed.federation.scenario import Scenario
from baps_fed.federation.server_optimizer import ServerOptConfig
from baps_fed.fm.spec import load_fm
from baps_fed.method.private_head import PRIVATE_HEADS


def summarise(runs: list[dict]) -> dict:
    names = list(runs[0]["zero_shot"])
    table = {}
    for arm in [a for a in ARMS if a in runs[0]]:
        per_site = {n: [r[arm][n]["dice"] for r in runs] for n in names}
        weighted = []
        for r in runs:
            w = np.array([r["train_sizes"][n] for n in names], float)
            weighted.append(float(np.dot(w, [r[arm][n]["dice"] for n in names]) / w.sum()))
        per_site["weighted"] = weighted
        table[arm] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in per_site.items()}
    share = None
    if "federated" in table and "pooled" in table:
        zs, fed, pool = (table[a]["weighted"][0] for a in ("zero_shot", "federated", "pooled"))
        share = (fed - zs) / (pool - zs) if pool != zs else None
    return {
        "table": table,
        "federated_share_of_pooled_gain": share,
        "queries": {a: runs[0][f"{a}_queries"] for a in ARMS[1:] if f"{a}_queries" in runs[0]},
        "train_sizes": runs[0]["train_sizes"],
        "test_sizes": {n: runs[0]["zero_shot"][n]["num-examples"] for n in names},
    }


def write_markdown(path: Path, summary: dict, args: argparse.Namespace, n_seeds: int) -> None:
    t = summary["table"]
    names = [k for k in t["zero_shot"] if k != "weighted"] + ["weighted"]
    arms = [a for a in ARMS if a in t]
    sizes = summary["train_sizes"]
    lines = [
        "# Federated vs local-only vs pooled BAPS (embedded FM, synthetic sites)",
        "",
        "`python " + " ".join(sys.argv) + "`",
        "",
        f"Test Dice, mean ± std over {n_seeds} seed(s). FM image-queries for training: "
        + ", ".join(f"{a} {q}" for a, q in summary["queries"].items())
        + " (local-only: all sites together; every arm spends the same total). Test set: "
        + (f"{args.test_n} unseen cases per site" if args.test_n else "each site's test split")
        + "; weighted: by training-set size.",
        "",
        "| site | train n | test n | " + " | ".join(a.replace("_", "-") for a in arms) + " |",
        "|---|---|---|" + "---|" * len(arms),
    ]
    tests = summary["test_sizes"]
    for n in names:
        cells = [f"{t[a][n][0]:.3f} ± {t[a][n][1]:.3f}" for a in arms]
        size, test = sizes.get(n, sum(sizes.values())), tests.get(n, sum(tests.values()))
        lines.append(f"| {n} | {size} | {test} | " + " | ".join(cells) + " |")
    share = summary["federated_share_of_pooled_gain"]
    lines += ["", f"Federated gain / pooled gain (weighted): {share:.2f}" if share else ""]
    if "federated" in t and "local_only" in t:
        smallest = min(sizes.values())
        for n in [n for n, k in sizes.items() if k == smallest]:
            fed, loc = t["federated"][n][0], t["local_only"][n][0]
            verdict = "beats" if fed > loc else "does not beat"
            lines.append(
                f"Smallest site {n} ({smallest} training cases): federated {fed:.3f} "
                f"{verdict} local-only {loc:.3f}."
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", type=Path, default=Path("simulations/scenarios/unequal.toml"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--fm", default="tiny")
    ap.add_argument("--server-opt", default="fedavg", choices=["fedavg", "fedavgm", "fedadam"])
    ap.add_argument("--server-lr", type=float, default=1.0)
    ap.add_argument("--arms", nargs="+", default=["local_only", "federated", "pooled"])
    ap.add_argument("--private-head", choices=PRIVATE_HEADS)
    ap.add_argument("--prompt", choices=["point", "box"], help="override the scenario's prompt")
    ap.add_argument("--box-protocol", choices=["tight", "loose"], help="with --prompt box")
    ap.add_argument("--personal-keep", type=float, help="override the scenario's personal-keep")
    ap.add_argument(
        "--test-n", type=int, help="score each site on this many unseen cases of its own"
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 when two benchmarks share 2 cores)"
    )
    ap.add_argument("--out", type=Path, default=Path("simulations/results/federated"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scenario = Scenario.load(args.scenario)
    overrides = {"local-steps": args.local_steps}
    if args.private_head:
        overrides["private-head"] = args.private_head
    for key in ("prompt", "box_protocol"):  # run-config keys, as `baps-fed simulate` takes them
        if getattr(args, key):
            overrides[key.replace("_", "-")] = getattr(args, key)
    if args.personal_keep is not None:
        overrides["personal-keep"] = args.personal_keep
    cfg = FedTrainConfig.from_flat({**scenario.train, **overrides})
    fm = load_fm(args.fm)
    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        server = ServerOptConfig(name=args.server_opt, lr=args.server_lr)
        runs.append(
            run_seed(scenario, cfg, args.rounds, seed, fm, server, tuple(args.arms), args.test_n)
        )
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        summary = summarise(runs)
        argv = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        payload = {"config": asdict(cfg), "args": argv, "runs": runs, **summary}
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        write_markdown(args.out.with_suffix(".md"), summary, args, len(runs))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
