"""Encode once in a federation: a LiteMedSAM `baps-fed simulate` with box prompts and each
site's private box head, with the embedding cache off and on.

    python simulations/bench_encode_once_federated.py --sites 2 --n 24 --rounds 2 \
        --local-steps 2 --threads 1

The same scenario twice (the default scenario's training settings with box prompts, loose boxes
and ``private-head = "box"``; ``--sites`` synthetic fundus sites), first with
``--fm 'litemedsam?cache_mb=0'``, then with ``--fm litemedsam``. Per round: the wall time each
run's coordinator recorded, and the sites' FM queries; at the end whether the two final decoders
are equal bit for bit. The arms run one after the other (a Flower simulation takes both cores),
so the ratio carries the machine's drift between them: say the load in the note.
Writes simulations/results/encode_once_federated.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"uncached": "litemedsam?cache_mb=0", "cached": "litemedsam"}


def scenario(args: argparse.Namespace) -> dict:
    from baps_fed.federation.scenario import DEFAULT_SCENARIO, Scenario

    base = Scenario.load(DEFAULT_SCENARIO)
    train = dict(base.train) | {
        "local-steps": args.local_steps,
        "batch-size": args.batch,
        "sp-avg": args.sp_avg,
        "prompt": "box",
        "box-protocol": "loose",
        "private-head": "box",
    }
    coordinator = dict(base.coordinator) | {"min-sites": args.sites}
    sites = [
        {"name": f"hospital-{chr(ord('a') + i)}", "data": "fundus", "n": args.n, "seed": i + 1,
         "scanner": i}
        for i in range(args.sites)
    ]  # fmt: skip
    return {"rounds": args.rounds, "train": train, "coordinator": coordinator, "site": sites}


def run_arm(name: str, spec: str, work: Path, args: argparse.Namespace) -> dict:
    from baps_fed.launch.processes import ProcessGroup

    folder = work / name
    cmd = [sys.executable, "-m", "baps_fed.cli", "simulate", "--scenario"]
    cmd += [str(work / "scenario.toml"), "--fm", spec, "--out", str(folder), "--overwrite"]
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    print(f"{name}: {shlex.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    with ProcessGroup() as group:  # stopped by PID, with its children, on the way out
        proc = group.start(f"simulate {name}", cmd, env, work / f"{name}.log")
        try:
            status = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            status = -1
    history = json.loads((folder / "rounds.json").read_text())["history"] if status == 0 else []
    return {
        "spec": spec,
        "status": status,
        "total_s": time.perf_counter() - start,
        "folder": str(folder),
        "round_s": [h.get("seconds") for h in history],
        "train_queries": [
            sum(m["fm-queries"] for m in h.get("train", {}).values()) for h in history
        ],
        "evaluate_queries": [
            sum(m["fm-queries"] for m in h.get("evaluate", {}).values()) for h in history
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--n", type=int, default=24, help="synthetic fundus cases per site")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sp-avg", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--note", default="")
    ap.add_argument(
        "--fast-runtime",
        choices=("openvino", "onnxruntime"),
        help="a third arm: the cache and this encoder runtime (the fast-cpu extra)",
    )
    ap.add_argument("--out", type=Path, default=Path("simulations/results/encode_once_federated"))
    args = ap.parse_args(argv)
    from baps_fed.federation.checkpoint import load_checkpoint

    work = ROOT / "runs" / "bench_encode_once_federated"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "scenario.toml").write_text(tomli_w.dumps(scenario(args)))
    specs = dict(ARMS)
    if args.fast_runtime:
        specs[f"cached+{args.fast_runtime}"] = f"litemedsam?runtime={args.fast_runtime}"
    arms = {}
    for name, spec in specs.items():
        arms[name] = run_arm(name, spec, work, args)
        arms[name]["load_before"] = os.getloadavg()
        if arms[name]["status"] != 0:
            print(f"{name} failed; its log: {work / f'{name}.log'}")
            return 1
    thetas = {n: load_checkpoint(Path(arms[n]["folder"])).theta for n in specs}
    a, b = thetas["uncached"], thetas["cached"]
    result = {
        "command": "python simulations/bench_encode_once_federated.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "scenario": scenario(args),
        "note": args.note,
        "arms": arms,
        "round_speedup": [
            u / c
            for u, c in zip(arms["uncached"]["round_s"], arms["cached"]["round_s"], strict=True)
        ],
        "total_speedup": arms["uncached"]["total_s"] / arms["cached"]["total_s"],
        "decoder_bit_equal": bool(np.array_equal(a, b)),
        "decoder_max_abs_diff": float(np.abs(a - b).max()),
    }
    for name in specs:
        if name not in ARMS:  # another encoder: equal answers up to its float reassociation
            arm = arms[name]
            arm["round_speedup"] = [
                u / c for u, c in zip(arms["uncached"]["round_s"], arm["round_s"], strict=True)
            ]
            arm["decoder_max_abs_diff_vs_uncached"] = float(np.abs(thetas[name] - a).max())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Encode once in a federation: LiteMedSAM, box prompts, private box heads",
        "",
        f"`{result['command']}`",
        "",
        f"{args.sites} synthetic fundus sites of n = {args.n}, {args.rounds} rounds of "
        f"{args.local_steps} local SPSA steps (batch {args.batch}, {args.sp_avg} SPSA sample), "
        f"loose boxes, shared basis decoder + private box head; {args.threads} thread(s). "
        f"{args.note}",
        "",
        "| round | uncached wall s | cached wall s | speed-up | train FM images "
        "| evaluate FM images |",
        "|---|---|---|---|---|---|",
    ]
    u, c = arms["uncached"], arms["cached"]
    for i, s in enumerate(result["round_speedup"]):
        md.append(
            f"| {i + 1} | {u['round_s'][i]:.1f} | {c['round_s'][i]:.1f} | {s:.2f}x | "
            f"{c['train_queries'][i]} | {c['evaluate_queries'][i]} |"
        )
    md += [
        "",
        f"Whole command: {u['total_s']:.0f} s vs {c['total_s']:.0f} s "
        f"({result['total_speedup']:.2f}x). Final decoder bit-equal: "
        f"**{result['decoder_bit_equal']}** (max difference {result['decoder_max_abs_diff']:.1e}).",
        "",
    ]
    for name in specs:
        if name not in ARMS:
            arm = arms[name]
            md += [
                f"Arm `{name}` (`--fm '{arm['spec']}'`): rounds "
                + ", ".join(f"{s:.2f}x" for s in arm["round_speedup"])
                + f" faster than uncached torch ({', '.join(f'{x:.1f}' for x in arm['round_s'])}"
                f" s); final decoder differs from the uncached one by at most "
                f"{arm['decoder_max_abs_diff_vs_uncached']:.1e}.",
                "",
            ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
