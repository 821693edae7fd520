"""Zero-shot vs local-only vs federated vs pooled-centralised BAPS, at equal FM image-queries.

    python simulations/bench_federated.py --scenario simulations/scenarios/unequal.toml \
        --rounds 8 --local-steps 8 --out simulations/results/federated

All arms run the code a Flower site runs (``baps_fed.site_training.LocalSite``); the Flower
runtime itself adds transport, not arithmetic (the simulation reproduces these numbers).
- local-only: each site trains alone for rounds x local_steps steps;
- federated: rounds of local_steps steps per site, example-weighted FedAvg of the updates,
  each site with its private head (``federated_global``: the shared decoder alone);
- pooled: one site holding every site's training split, rounds x local_steps x sites steps,
  so its FM image-queries equal the federation's total.
Each site's test split is the same in every arm (splits hash sample names). Small sites have
small test splits (10 cases at n = 50), too noisy to compare arms on: ``--test-n N`` scores every
site instead on N unseen cases from its own generator (same modality and scanner, case indices
after the site's own), so each site's score has the same precision whatever its size. Seeds vary
the master seed (perturbations, batches) and the data seed. "weighted" weighs sites by their
training-set size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from baps_fed.aggregate import ServerOptConfig, ServerOptimizer, weighted_mean
from baps_fed.data.modalities import MODALITIES, make_case
from baps_fed.data.sample import SegmentationDataset
from baps_fed.data.sources import open_source
from baps_fed.fm.spec import load_fm
from baps_fed.simulate import Scenario
from baps_fed.site_training import FedTrainConfig, LocalSite, SiteSpec, initial_theta


def site_specs(scenario: Scenario, data_seed: int) -> list[SiteSpec]:
    return [
        SiteSpec(
            name=s["name"], data=s["data"], n=int(s.get("n", 200)),
            seed=int(s.get("seed", 0)) + 1000 * data_seed, scanner=int(s.get("scanner", 0)),
        )
        for s in scenario.sites
    ]  # fmt: skip


def held_out_test(spec: SiteSpec, n_test: int) -> SegmentationDataset:
    """``n_test`` cases the site never had: its generator's next indices (same scanner, seed)."""
    if spec.data not in MODALITIES:
        raise ValueError(
            f"site {spec.name!r}: --test-n needs a synthetic modality, not {spec.data!r}"
        )
    cases = [make_case(spec.data, spec.n + i, spec.seed, spec.scanner) for i in range(n_test)]
    return SegmentationDataset(f"{spec.name}-held-out", [c for c in cases if c.mask.sum() >= 16])


def evaluate_all(sites: list[LocalSite], theta: np.ndarray) -> dict[str, dict]:
    """Every site's test split under one decoder, with no private head."""
    return {s.spec.name: s.evaluate(theta) for s in sites}


def run_seed(
    scenario: Scenario,
    cfg: FedTrainConfig,
    rounds: int,
    seed: int,
    fm,
    server: ServerOptConfig,
    arms: tuple[str, ...] = ("local_only", "federated", "pooled"),
    test_n: int | None = None,
) -> dict:
    cfg = replace(cfg, master_seed=seed)
    specs = site_specs(scenario, seed)
    datasets = {
        sp.name: open_source(sp.data, n=sp.n, seed=sp.seed, scanner=sp.scanner) for sp in specs
    }
    sites = [LocalSite(sp, cfg, fm=fm, data=datasets[sp.name]) for sp in specs]
    if test_n:
        for site in sites:  # training never reads the test split: swapping it changes only scores
            site.splits["test"] = held_out_test(site.spec, test_n)
    theta0 = initial_theta(cfg)
    out: dict = {"zero_shot": evaluate_all(sites, theta0)}
    steps = rounds * cfg.local_steps

    if "local_only" in arms:
        t0, queries, local = time.perf_counter(), 0, {}
        for site in sites:  # local-only: the same steps, no averaging
            theta, state, private = theta0, None, None
            for rnd in range(1, rounds + 1):
                r = site.train_round(theta, rnd, state, private)
                theta, state, private = theta + r.update, r.state, r.private
                queries += r.metrics["fm-queries"]
            local[site.spec.name] = site.evaluate(theta, private)
        out["local_only"] = local
        out["local_only_queries"] = queries
        out["local_only_s"] = time.perf_counter() - t0

    if "federated" in arms:
        t0, queries = time.perf_counter(), 0
        theta = theta0
        states: dict = {s.spec.name: None for s in sites}
        privates: dict = {s.spec.name: None for s in sites}
        personals: dict = {s.spec.name: None for s in sites}
        opt = ServerOptimizer(server)
        for rnd in range(1, rounds + 1):
            results = [
                s.train_round(
                    theta, rnd, states[s.spec.name], privates[s.spec.name], personals[s.spec.name]
                )
                for s in sites
            ]
            for s, r in zip(sites, results, strict=True):
                states[s.spec.name], privates[s.spec.name] = r.state, r.private
                personals[s.spec.name] = r.personal
                queries += r.metrics["fm-queries"]
            mean = weighted_mean([r.update for r in results], [s.num_train for s in sites])
            theta = opt.step(theta, mean)
        out["federated"] = {
            s.spec.name: s.evaluate(theta, privates[s.spec.name], personal=personals[s.spec.name])
            for s in sites
        }
        out["federated_global"] = {  # the shared decoder alone, without the private heads
            n: {**m, "dice": m["global-dice"]} for n, m in out["federated"].items()
        }
        out["federated_queries"] = queries
        out["federated_s"] = time.perf_counter() - t0

    if "pooled" in arms:
        t0 = time.perf_counter()
        pooled_data = SegmentationDataset(
            "pooled", [s for ds in datasets.values() for s in ds], problems=[]
        )
        pooled = LocalSite(
            SiteSpec("pooled", "pooled"),
            replace(cfg, local_steps=steps * len(sites), private_head="none"),  # one model
            fm=fm,
            data=pooled_data,
        )  # fmt: skip
        r = pooled.train_round(theta0, 1, None)
        out["pooled"] = evaluate_all(sites, theta0 + r.update)
        out["pooled_queries"] = r.metrics["fm-queries"]
        out["pooled_s"] = time.perf_counter() - t0
    out["train_sizes"] = {s.spec.name: s.num_train for s in sites}
    return out


ARMS = ("zero_shot", "local_only", "federated_global", "federated", "pooled")


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
    ap.add_argument("--private-head", choices=["colour", "basis", "none"])
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
