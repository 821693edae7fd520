"""Several membership audits of one scenario, pooled into one: the same sites, settings and
attacks, each run with its own ``--seed`` (other member halves, shadows and noise), so every
candidate is scored several times, a member in some runs and not in others.

One run's interval is as wide as its candidates allow (640 in the default scenario: about
+-0.045 in AUC); pooling R runs narrows it by about sqrt(R). The bootstrap draws units of
membership (a case, or a patient with group-by), each with all its scores across runs
(``roc.score_attack(units=...)``), so repeated scores of one candidate are not counted as
independent evidence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from baps_fed.privacy_audit.roc import roc_counts, score_attack

# what must agree between runs for their scores to be pooled
SAME = ("rounds", "local_steps", "releases", "dp_sample_rate", "dp_clip", "delta", "shadows")


def load_membership(run: Path) -> dict:
    """A finished audit's membership part, with the per-candidate scores a pool needs."""
    path = run / "privacy_audit.json" if run.is_dir() else run
    try:
        membership = json.loads(path.read_text())["membership"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a privacy audit's results ({err})") from None
    if not membership or any("units" not in st for st in membership["settings"]):
        raise ValueError(
            f"{path}: holds no per-candidate scores (a membership audit of this version "
            "writes them); run it again"
        )
    return membership


def pool_membership(runs: list[dict], resamples: int = 1000, seed: int = 0) -> dict:
    """One membership result from several runs of the same audit (see the module docstring)."""
    if len(runs) < 2:
        raise ValueError("pooling needs at least two audits")
    first = runs[0]
    for i, run in enumerate(runs[1:], start=2):
        differ = [k for k in SAME if run[k] != first[k]]
        names = [s["name"] for s in run["sites"]] != [s["name"] for s in first["sites"]]
        labels = [st["setting"] for st in run["settings"]]
        if differ or names or labels != [st["setting"] for st in first["settings"]]:
            what = ", ".join(differ + (["sites"] if names else []) or ["DP settings"])
            raise ValueError(f"audit {i} differs from audit 1 in {what}: they cannot be pooled")
    settings = []
    for at, st in enumerate(first["settings"]):
        these = [run["settings"][at] for run in runs]
        members = np.concatenate([np.asarray(t["members"], bool) for t in these])
        units = np.concatenate([np.asarray(t["units"]) for t in these])
        attacks = []
        for k, a in enumerate(st["attacks"]):
            scores = np.concatenate([np.asarray(t["attacks"][k]["scores"]) for t in these])
            result = score_attack(scores, members, resamples, seed=seed, units=units)
            attacks.append({"upload": a["upload"], "attack": a["attack"], **result.to_dict(),
                            "roc": roc_counts(scores, members),
                            "scores": scores.tolist()})  # fmt: skip
        settings.append(
            {
                **{k: st[k] for k in ("setting", "epsilon", "noise_multiplier")},
                "accountant_epsilon": st["accountant_epsilon"],
                "seconds": sum(t["seconds"] for t in these),
                "cpu_seconds": sum(t.get("cpu_seconds", 0.0) for t in these),
                "fm_images": sum(t["fm_images"] for t in these),
                "attacks": attacks,
                "members": members.astype(int).tolist(),
                "units": units.tolist(),
            }
        )
    sites = [
        {**s, "candidates": sum(r["sites"][i]["candidates"] for r in runs),
         "members": sum(r["sites"][i]["members"] for r in runs)}
        for i, s in enumerate(first["sites"])
    ]  # fmt: skip
    return {**{k: first[k] for k in SAME}, "sites": sites, "pooled": len(runs),
            "settings": settings}  # fmt: skip
