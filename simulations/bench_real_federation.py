"""Real hospitals, one real FM: federated BAPS on CVC-ColonDB's polyp videos with LiteMedSAM,
each hospital drawing boxes its own way.

    python simulations/bench_real_federation.py --fm 'litemedsam?runtime=openvino' \
        --seeds 0 1 2 --jobs 3 --threads 1 --out simulations/results/real_federation
    python simulations/bench_real_federation.py --fm tiny --seeds 0 1 2 \
        --out simulations/results/real_federation_tiny        # the embedded FM, for contrast

The scenario (``simulations/scenarios/cvc_hospitals.toml``): three hospitals, each a few whole
video sequences of ``--data`` (one patient each, never split across train/test or hospitals),
each with its box habit (high, wide, tight). Arms (``baps_fed.federation.comparison.run_seed``,
the code a Flower site runs): zero-shot, local-only (each hospital alone, with its private box
head), federated (the shared decoder + each hospital's private box head; "federated-global" is
the shared decoder alone) and pooled (one model trained on every hospital's training split,
each case with its own hospital's boxes, at the federation's FM budget). Seeds vary the
perturbations and batches (the split is the data's). ``--jobs`` runs seeds as parallel
processes (``--threads`` torch/runtime threads each), keeping each seed's result in
``OUT_parts/`` (a seed found there is not run again: delete the folder after changing
settings). Writes ``OUT.{json,md}``; skips with a reason when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations/scenarios/cvc_hospitals.toml"
DATA = ROOT.parent / "shared/data/cvc-colondb"
ARM_NAMES = ("zero_shot", "local_only", "federated_global", "federated", "pooled")


def load_scenario(args: argparse.Namespace):
    from baps_fed.federation.scenario import Scenario

    scenario = Scenario.load(args.scenario)
    for site in scenario.sites:
        site["data"] = str(args.data)
    if args.rounds is not None:
        scenario.rounds = args.rounds
    if args.local_steps is not None:
        scenario.train["local-steps"] = args.local_steps
    return scenario


def run_one_seed(args: argparse.Namespace, seed: int) -> dict:
    import torch

    from baps_fed.federation.comparison import run_seed
    from baps_fed.federation.contract import FedTrainConfig
    from baps_fed.federation.server_optimizer import ServerOptConfig
    from baps_fed.fm.spec import load_fm

    torch.set_num_threads(args.threads)
    scenario = load_scenario(args)
    cfg = FedTrainConfig.from_flat(scenario.train)
    fm = load_fm(args.fm)
    t0 = time.perf_counter()
    server = ServerOptConfig(name=scenario.coordinator.get("server-opt", "fedavg"))
    out = run_seed(scenario, cfg, scenario.rounds, seed, fm, server)
    out["seconds"] = time.perf_counter() - t0
    out["fm_usage"] = fm.usage() if hasattr(fm, "usage") else {}
    out["seed"] = seed
    return out


def run_seeds_in_processes(args: argparse.Namespace) -> list[dict]:
    """One child process per seed, ``--jobs`` at a time; each writes its part file."""
    parts = args.out.parent / f"{args.out.name}_parts"
    parts.mkdir(parents=True, exist_ok=True)
    pending, running, runs = list(args.seeds), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            part = parts / f"seed{seed}.json"
            if part.is_file():  # a seed an earlier run of the same command finished
                runs.append(json.loads(part.read_text()))
                continue
            cmd = [sys.executable, __file__, "--part", str(part), "--seeds", str(seed)]
            cmd += forwarded(args)
            log = (parts / f"seed{seed}.log").open("w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), part))
        time.sleep(2)
        for proc, part in [r for r in running if r[0].poll() is not None]:
            running.remove((proc, part))
            if proc.returncode != 0:
                raise SystemExit(f"{part.stem} failed (exit {proc.returncode}): see {part}.log")
            runs.append(json.loads(part.read_text()))
    return sorted(runs, key=lambda r: r["seed"])


def forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--fm", args.fm, "--threads", str(args.threads), "--scenario", str(args.scenario)]
    out += ["--data", str(args.data)]
    for key in ("rounds", "local_steps"):
        if getattr(args, key) is not None:
            out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return out


def habits(args: argparse.Namespace, runs: list[dict]) -> dict[str, dict]:
    """Each hospital's habit against what its private head learnt (mean over seeds)."""
    from baps_fed.federation.box_habit import habit_report
    from baps_fed.federation.contract import FedTrainConfig, site_prompt_config

    scenario = load_scenario(args)
    cfg = FedTrainConfig.from_flat(scenario.train)
    out = {}
    for spec in scenario.site_specs():
        box = site_prompt_config(cfg, spec).box
        row = {"habit": {"margin": box.loose_margin, "jitter": box.loose_jitter,
                         "bias": list(box.loose_bias)}}  # fmt: skip
        for arm in ("local_only", "federated"):
            heads = [r[f"{arm}_private"][spec.name] for r in runs]
            row[arm] = habit_report(box, np.mean(heads, axis=0))
        out[spec.name] = row
    return out


def goals(summary: dict, names: list[str]) -> dict:
    t = summary["table"]
    mean = {a: {n: t[a][n][0] for n in names + ["weighted"]} for a in t}
    return {
        "every_hospital_above_zero_shot": all(
            mean["federated"][n] > mean["zero_shot"][n] for n in names
        ),
        "federated_at_least_local_only": {
            n: mean["federated"][n] >= mean["local_only"][n] for n in names
        },
        "federated_share_of_pooled_gain": summary["federated_share_of_pooled_gain"],
    }


def write_markdown(path: Path, payload: dict, args: argparse.Namespace) -> None:
    s, t = payload["summary"], payload["summary"]["table"]
    names = [n for n in t["zero_shot"] if n != "weighted"]
    arms = [a for a in ARM_NAMES if a in t]
    runs, g = payload["runs"], payload["goals"]
    cfg = payload["config"]
    walls = ", ".join(f"{r['seconds'] / 60:.0f} min" for r in runs)
    per_site_images = cfg["local_steps"] * payload["rounds"] * cfg["batch_size"] * 2 * cfg["sp_avg"]
    lines = [
        f"# Federated BAPS on real polyp videos: {len(names)} hospitals, FM `{args.fm}`",
        "",
        "`python " + " ".join(sys.argv) + "`",
        "",
        f"Data `{args.data}` (CVC-ColonDB), each hospital a few whole video sequences, split by "
        f"sequence; images letterboxed to {cfg['image_size']} px; box prompts drawn with each "
        f"hospital's habit. {payload['rounds']} rounds x {cfg['local_steps']} SPSA steps of "
        f"batch {cfg['batch_size']} x {2 * cfg['sp_avg']} perturbed copies: **{per_site_images} "
        "FM images of training per hospital and arm**; FM image-queries for training: "
        + ", ".join(f"{a} {q}" for a, q in s["queries"].items())
        + f". Test Dice, mean ± std over {len(runs)} seed(s) "
        f"({', '.join(str(r['seed']) for r in runs)}); weighted by training-set size. "
        f"Wall per seed: {walls} "
        f"({args.threads} thread(s) each, {args.jobs} seed(s) at a time, 2-core machine).",
        "",
        "| hospital | sequences | train n | test n | "
        + " | ".join(a.replace("_", "-") for a in arms)
        + " |",
        "|---|---|---|---|" + "---|" * len(arms),
    ]
    subsets = {spec["name"]: spec.get("subset", "") for spec in payload["sites"]}
    for n in names + ["weighted"]:
        cells = [f"{t[a][n][0]:.3f} ± {t[a][n][1]:.3f}" for a in arms]
        train = s["train_sizes"].get(n, sum(s["train_sizes"].values()))
        test = s["test_sizes"].get(n, sum(s["test_sizes"].values()))
        seqs = subsets.get(n, "").replace("sequence=", "")
        lines.append(f"| {n} | {seqs} | {train} | {test} | " + " | ".join(cells) + " |")
    share = g["federated_share_of_pooled_gain"]
    lines += [
        "",
        "## Goals",
        "",
        "- Every hospital above its zero-shot (federated): "
        f"**{g['every_hospital_above_zero_shot']}**",
        "- Federated >= local-only: "
        + ", ".join(f"{n} **{ok}**" for n, ok in g["federated_at_least_local_only"].items()),
        f"- Federated gain / pooled gain (weighted), goal >= 0.95: **{share:.2f}**"
        if share is not None
        else "- Federated gain / pooled gain: pooled equals zero-shot (no gain to share)",
        "",
        "## Each hospital's habit and what its private box head learnt (mean over seeds)",
        "",
        "Fractions of the drawn box's size per side (the habit's mean move out; the head's move "
        "in). The head never leaves its hospital.",
        "",
        "| hospital | habit (margin, jitter, bias l,t,r,b) | local-only head | federated head |",
        "|---|---|---|---|",
    ]
    for n, h in payload["habits"].items():
        hb = h["habit"]
        bias = ",".join(f"{b:g}" for b in hb["bias"])
        lines.append(
            f"| {n} | {hb['margin']:g}, {hb['jitter']:g}, {bias} | {h['local_only']} | "
            f"{h['federated']} |"
        )
    if args.note:
        lines += ["", f"Note: {args.note}"]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fm", default="litemedsam", help="FM spec (e.g. litemedsam?runtime=openvino)")
    ap.add_argument("--data", type=Path, default=DATA, help="the CVC-ColonDB folder")
    ap.add_argument("--scenario", type=Path, default=SCENARIO, help="hospitals and run settings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="master seeds")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    ap.add_argument("--threads", type=int, default=1, help="torch/runtime threads per process")
    ap.add_argument("--rounds", type=int, help="override the scenario's rounds")
    ap.add_argument("--local-steps", type=int, help="override the scenario's local steps")
    ap.add_argument("--note", default="", help="a line on the machine's state for the report")
    ap.add_argument("--part", type=Path, help=argparse.SUPPRESS)  # a child process's output
    ap.add_argument("--out", type=Path, default=ROOT / "simulations/results/real_federation")
    args = ap.parse_args()
    if not (args.data / "manifest.csv").is_file():
        raise SystemExit(
            f"skipped: no CVC-ColonDB folder at {args.data} (give --data; see its README)"
        )
    if args.part is not None:
        args.part.write_text(json.dumps(run_one_seed(args, args.seeds[0])) + "\n")
        return
    if args.jobs > 1:
        runs = run_seeds_in_processes(args)
    else:
        runs = [run_one_seed(args, seed) for seed in args.seeds]

    from bench_federated import summarise

    from baps_fed.federation.contract import FedTrainConfig

    scenario = load_scenario(args)
    summary = summarise(runs)
    names = list(runs[0]["zero_shot"])
    payload = {
        "fm": args.fm,
        "rounds": scenario.rounds,
        "config": asdict(FedTrainConfig.from_flat(scenario.train)),
        "sites": scenario.sites,
        "runs": runs,
        "summary": summary,
        "goals": goals(summary, names),
        "habits": habits(args, runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), payload, args)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
