"""The privacy audit on the default scenario with the embedded FM, within a CPU budget.

    python simulations/bench_privacy_audit.py --rounds 1 --shadows 2 --threads 1

Membership inference (loss threshold, reference models) per DP setting (off, epsilon 8, 4, 1)
and upload kind (dense, seeds), and the one-run canary audit of the DP mechanism (real and
noise / 10) at claimed epsilons 1, 4 and 8: ``baps_fed.privacy_audit``, the code of
``baps-fed privacy-audit``. Every site of the scenario is a target: half of its cases are its
training set (members), the other half never seen. Writes simulations/results/privacy_audit/
(privacy_audit.md, .json, one ROC plot per setting) after every DP setting, with the CPU
seconds spent. ``--rounds`` below the scenario's makes a cheaper, weaker audit (fewer releases,
each member seen fewer times): the report says which was run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from baps_fed.federation.scenario import DEFAULT_SCENARIO
from baps_fed.fm.spec import load_fm
from baps_fed.privacy_audit.canary_audit import CanaryConfig
from baps_fed.privacy_audit.report import write_report
from baps_fed.privacy_audit.runner import MembershipConfig, run_canaries, run_membership


def epsilon_arg(text: str) -> float | None:
    return None if text == "off" else float(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    ap.add_argument("--fm", default="tiny")
    ap.add_argument("--rounds", type=int, default=None, help="default: the scenario's")
    ap.add_argument("--shadows", type=int, default=2)
    ap.add_argument("--max-candidates", type=int, default=None, help="per site")
    ap.add_argument("--epsilons", type=epsilon_arg, nargs="+", default=[None, 8.0, 4.0, 1.0])
    ap.add_argument("--canary-epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("simulations/results/privacy_audit"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    command = "python " + " ".join(sys.argv)

    def header() -> list[str]:
        return [
            f"`{command}`",
            "",
            f"CPU: {time.process_time() - cpu0:.0f} s on {args.threads} thread(s); wall "
            f"{time.perf_counter() - wall0:.0f} s (a shared 2-core machine).",
        ]

    canaries = run_canaries(CanaryConfig(seed=args.seed), tuple(args.canary_epsilons))
    for r in canaries:
        print(
            f"canaries, claimed {r['claimed_epsilon']:g}, {r['mechanism']}: lower bound "
            f"{r['lower_bound']:.3f} vs accountant {r['accountant_epsilon']:.3f}",
            flush=True,
        )
    cfg = MembershipConfig(
        scenario=args.scenario,
        rounds=args.rounds,
        max_candidates=args.max_candidates,
        shadows=args.shadows,
        epsilons=tuple(args.epsilons),
        seed=args.seed,
    )
    fm = load_fm(args.fm)

    def save(membership: dict) -> None:
        write_report(args.out, header(), membership, canaries)

    def log(line: str) -> None:
        print(line, flush=True)

    run_membership(cfg, fm, args.fm, log=log, done=save)
    print(f"report: {args.out / 'privacy_audit.md'}")


if __name__ == "__main__":
    main()
