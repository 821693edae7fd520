"""``baps-fed privacy-audit``: membership inference and the one-run DP audit on a scenario
(``baps_fed.privacy_audit``; flag defaults: ``MembershipConfig`` and ``CanaryConfig``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from baps_fed.federation.scenario import DEFAULT_SCENARIO
from baps_fed.privacy_audit.canary_audit import CanaryConfig
from baps_fed.privacy_audit.runner import MembershipConfig

PARTS = ("both", "membership", "canaries")


def _epsilon(text: str) -> float | None:
    if text == "off":
        return None
    try:
        return float(text)  # MembershipConfig refuses one <= 0, in one line
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an epsilon is a number > 0 or 'off', not {text!r}"
        ) from None


def _cmd_privacy_audit(args: argparse.Namespace) -> int:
    import datetime as dt

    import torch

    from baps_fed.privacy_audit.report import write_report
    from baps_fed.privacy_audit.runner import run_canaries, run_membership

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out or Path("runs") / f"privacy-audit-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if (out / "privacy_audit.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds an audit: give another --out, or --overwrite")
    if args.pool:
        return _pool(args, out)
    header = [
        f"`baps-fed privacy-audit`: scenario {args.scenario}, FM {args.fm}, seed {args.seed}."
    ]
    # every setting is checked before anything runs
    canary = CanaryConfig(
        canaries=args.canaries, steps=args.canary_steps, sample_rate=args.canary_rate,
        delta=args.delta, seed=args.seed,
    )  # fmt: skip
    cfg = MembershipConfig(
        scenario=args.scenario, rounds=args.rounds, local_steps=args.local_steps,
        max_candidates=args.max_candidates, shadows=args.shadows,
        epsilons=tuple(args.epsilons), delta=args.delta, seed=args.seed,
        bootstrap=args.bootstrap,
    )  # fmt: skip
    canaries = membership = None
    if args.part in ("both", "canaries"):
        canaries = run_canaries(canary, tuple(args.canary_epsilons))
        write_report(out, header, membership, canaries)
    if args.part in ("both", "membership"):
        from baps_fed.fm.spec import load_fm

        fm = load_fm(args.fm)
        membership = run_membership(
            cfg, fm, args.fm, done=lambda m: write_report(out, header, m, canaries)
        )
    path = write_report(out, header, membership, canaries)
    print(path.read_text())
    print(f"report: {path}")
    return 0


def _pool(args: argparse.Namespace, out: Path) -> int:
    from baps_fed.privacy_audit.pooled import load_membership, pool_membership
    from baps_fed.privacy_audit.report import write_report

    membership = pool_membership([load_membership(run) for run in args.pool], args.bootstrap)
    runs = " ".join(str(run) for run in args.pool)
    path = write_report(out, [f"`baps-fed privacy-audit --pool {runs}`."], membership, None)
    print(path.read_text())
    print(f"report: {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    m, c = MembershipConfig(), CanaryConfig()
    p = sub.add_parser(
        "privacy-audit",
        help="membership inference on what leaves a site, and a one-run audit of the DP epsilon",
    )
    p.add_argument(
        "--scenario", type=Path, default=DEFAULT_SCENARIO,
        help="the sites and run settings audited (every site is a target)",
    )  # fmt: skip
    p.add_argument("--fm", default="tiny", help="FM spec every site queries (and the attacker)")
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/privacy-audit-TIME)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an audit already in --out")
    p.add_argument("--part", choices=PARTS, default="both", help="which audit(s) to run")
    p.add_argument("--rounds", type=int, default=None, help="default: the scenario's")
    p.add_argument("--local-steps", type=int, default=None, help="default: the scenario's")
    p.add_argument(
        "--max-candidates", type=int, default=None,
        help="at most this many of each site's cases (half of them its training set); "
        "default: all",
    )  # fmt: skip
    p.add_argument(
        "--shadows", type=int, default=m.shadows,
        help="shadow sites per site for the reference attack (an even number; 0: loss "
        "attack only)",
    )  # fmt: skip
    p.add_argument(
        "--epsilons", type=_epsilon, nargs="+", default=list(m.epsilons),
        help="DP settings of the membership audit: 'off' or a target epsilon over the run",
    )  # fmt: skip
    p.add_argument("--delta", type=float, default=m.delta, help="DP delta of every setting")
    p.add_argument("--bootstrap", type=int, default=m.bootstrap, help="resamples per interval")
    p.add_argument(
        "--canary-epsilons", type=float, nargs="+", default=[c.epsilon],
        help="claimed epsilons the canary audit checks, each on the real and a broken mechanism",
    )  # fmt: skip
    p.add_argument(
        "--canaries", type=int, default=c.canaries,
        help="canaries of the one-run audit, each in the site's data with probability 1/2",
    )  # fmt: skip
    p.add_argument("--canary-steps", type=int, default=c.steps, help="releases of the audited run")
    p.add_argument("--canary-rate", type=float, default=c.sample_rate, help="its Poisson rate")
    p.add_argument(
        "--seed", type=int, default=m.seed,
        help="the audit's own draws: member halves, prompts, shadow halves, canaries",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--pool", type=Path, nargs="+", default=None, metavar="RUN",
        help="instead of running: pool the membership results of these finished audits (the "
        "same scenario and settings, each with its own --seed) into one report in --out",
    )  # fmt: skip
    p.set_defaults(func=_cmd_privacy_audit)
