"""The audit's report in its run folder: ``privacy_audit.md`` (tables), ``privacy_audit.json``
(every number, ROC points included) and one ROC plot per DP setting (``roc_<setting>.png``,
matplotlib, log-log axes as in the LiRA paper: what matters is the TPR at low FPR)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

_NUMBER = re.compile(r"-?[\d.eE+-]+")
# an indented list of numbers: "[" and a newline (never inside a JSON string), numbers, "]"
_NUMBER_LIST = re.compile(r"\[\n(?:\s*-?[\d.eE+-]+,?)+\s*\]")
_ATTACKS = {"loss": "loss threshold", "reference": "reference models (LiRA)"}


def _ci(e: dict, digits: int = 3) -> str:
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def _eps(x: float | None) -> str:
    return "-" if x is None or math.isinf(x) else f"{x:.2f}"


def slug(setting: str) -> str:
    return setting.lower().replace(" ", "_").replace(".", "_")


def membership_lines(m: dict) -> list[str]:
    n_mem = sum(s["members"] for s in m["sites"])
    n_all = sum(s["candidates"] for s in m["sites"])
    lines = [
        "## Membership inference",
        "",
        f"{len(m['sites'])} sites ({', '.join(s['name'] for s in m['sites'])}), {n_all} "
        f"candidates, {n_mem} of them members; {m['rounds']} rounds x {m['local_steps']} local "
        f"steps ({m['releases']} releases per site), {m['shadows']} shadow sites per site; "
        f"DP: Poisson rate {m['dp_sample_rate']}, clip {m['dp_clip']}, delta {m['delta']:g}. "
        "Values with their 95 % bootstrap intervals; with n non-members an FPR under 1/n is "
        'read as "above every non-member".' + _pooled(m),
        "",
        "| setting | noise multiplier | accountant epsilon | upload | attack | AUC | "
        "TPR at 1 % FPR | TPR at 0.1 % FPR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for st in m["settings"]:
        for a in st["attacks"]:
            lines.append(
                f"| {st['setting']} | {st['noise_multiplier']:.3f} | "
                f"{_eps(st['accountant_epsilon'])} | {a['upload']} | "
                f"{_ATTACKS.get(a['attack'], a['attack'])} | {_ci(a['auc'])} | "
                f"{_ci(a['tpr_at_1pct_fpr'])} | {_ci(a['tpr_at_0.1pct_fpr'])} |"
            )
    lines.append("")
    for st in m["settings"]:
        cpu = f", {st['cpu_seconds']:.0f} s of CPU" if "cpu_seconds" in st else ""
        lines.append(
            f"- {st['setting']}: {st['fm_images']} FM images, {st['seconds']:.0f} s wall{cpu}"
        )
    return lines


def _pooled(m: dict) -> str:
    if "pooled" not in m:
        return ""
    return (
        f" Pooled from {m['pooled']} audits, each with its own seed (member halves, shadows, "
        f"noise): every candidate scored {m['pooled']} times, the counts above summed over "
        "them; the intervals resample candidates (a case, or a patient with group-by) with all "
        "their scores."
    )


def canary_lines(rows: list[dict]) -> list[str]:
    lines = [
        "## One-run canary audit of the DP mechanism on SPSA scalars",
        "",
        "Empirical epsilon lower bound at 95 % confidence (Steinke, Nasr and Jagielski 2023) "
        "against the epsilon the accountant books for the same run. *ceiling*: the most this "
        "many guesses could certify (all right); a claimed epsilon above it cannot be refuted "
        "by this audit, however broken the mechanism.",
        "",
        "| claimed epsilon | mechanism | noise multiplier | accountant epsilon | "
        "lower bound | correct / guesses | ceiling | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['claimed_epsilon']:g} | {r['mechanism']} | {r['noise_multiplier']:.3f} | "
            f"{r['accountant_epsilon']:.3f} | {r['lower_bound']:.3f} | "
            f"{r['correct']} / {r['guesses']} | {r['ceiling']:.2f} | "
            f"{'yes' if r['flagged'] else 'no'} |"
        )
    return lines


def plot_roc(setting: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    floor = 1e-3
    for a in setting["attacks"]:
        fpr = np.array(a["roc"]["fp"]) / a["non_members"]
        tpr = np.array(a["roc"]["tp"]) / a["members"]
        ax.plot(
            np.maximum(fpr, floor),
            np.maximum(tpr, floor),
            label=f"{a['upload']}, {a['attack']} (AUC {a['auc']['value']:.3f})",
        )
    ax.plot([floor, 1], [floor, 1], "k:", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=setting["setting"])
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dumps(payload: dict) -> str:
    """Indented JSON with each list of numbers (the ROC counts) on one line."""

    def one_line(m: re.Match) -> str:
        return "[" + ", ".join(_NUMBER.findall(m.group(0))) + "]"

    return _NUMBER_LIST.sub(one_line, json.dumps(payload, indent=1))


def write_report(
    out: Path, header: list[str], membership: dict | None, canaries: list[dict] | None
) -> Path:
    """Writes the report files into ``out``; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Privacy audit", "", *header, ""]
    if membership is not None:
        lines += membership_lines(membership) + [""]
        for st in membership["settings"]:
            name = f"roc_{slug(st['setting'])}.png"
            plot_roc(st, out / name)
            lines.append(f"ROC, {st['setting']}: `{name}`")
        lines.append("")
    if canaries is not None:
        lines += canary_lines(canaries) + [""]
    payload = {"header": header, "membership": membership, "canaries": canaries}
    (out / "privacy_audit.json").write_text(dumps(payload) + "\n")
    path = out / "privacy_audit.md"
    path.write_text("\n".join(lines))
    return path
