"""A federated run's report: per-site and weighted Dice per round against zero-shot.

The coordinator appends one entry per round to ``history`` (what the sites reported, by site
name) and calls ``write_fed_report`` after each round, so an interrupted run still leaves a
readable report. Holds no patient data: only the aggregate metrics sites send.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from baps_fed.evaluation.run_files import write_json  # noqa: E402


def weighted(site_metrics: dict[str, dict[str, float]], key: str) -> float:
    """The example-weighted mean of one metric over sites (nan when none reported it)."""
    rows = [m for m in site_metrics.values() if key in m]
    total = sum(m["num-examples"] for m in rows)
    if total <= 0:
        return float("nan")
    return sum(m[key] * m["num-examples"] for m in rows) / total


def final_table(history: list[dict]) -> list[dict]:
    """Per site: zero-shot Dice, federated Dice at the last round it was evaluated, gain."""
    latest: dict[str, tuple[int, dict]] = {}
    for entry in history:
        for site, m in entry.get("evaluate", {}).items():
            latest[site] = (entry["round"], m)
    rows = []
    for site in sorted(latest):
        rnd, m = latest[site]
        rows.append(
            {
                "site": site,
                "round": rnd,
                "n_test": int(m["num-examples"]),
                "zero_shot_dice": m["zero-shot-dice"],
                "federated_dice": m["dice"],
                "global_dice": m.get("global-dice", m["dice"]),
                "gain": m["dice"] - m["zero-shot-dice"],
                "zero_shot_hd95": m["zero-shot-hd95"],
                "federated_hd95": m["hd95"],
            }
        )
    if rows:
        evals = {r["site"]: latest[r["site"]][1] for r in rows}
        rows.append(
            {
                "site": "weighted",
                "round": max(r["round"] for r in rows),
                "n_test": sum(r["n_test"] for r in rows),
                "zero_shot_dice": weighted(evals, "zero-shot-dice"),
                "federated_dice": weighted(evals, "dice"),
                "global_dice": weighted(evals, "global-dice"),
                "gain": weighted(evals, "dice") - weighted(evals, "zero-shot-dice"),
                "zero_shot_hd95": weighted(evals, "zero-shot-hd95"),
                "federated_hd95": weighted(evals, "hd95"),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        f"{'site':<24} {'n':>4} {'zero-shot':>9} {'global':>7} {'federated':>9} {'gain':>7} "
        f"{'HD95':>13}",
    ]
    for r in rows:
        lines.append(
            f"{r['site']:<24} {r['n_test']:>4} {r['zero_shot_dice']:9.3f} "
            f"{r['global_dice']:7.3f} {r['federated_dice']:9.3f} {r['gain']:+7.3f} "
            f"{r['zero_shot_hd95']:5.1f} -> {r['federated_hd95']:4.1f}"
        )
    return "\n".join(lines)


def write_fed_report(out: Path, history: list[dict], config: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rounds.json", {"config": config, "history": history})
    rows = final_table(history)
    write_json(out / "final_table.json", {"rows": rows})
    _write_csv(out / "per_site_rounds.csv", history)
    _plot(out / "dice_per_round.png", history)
    md = [
        "# Federated BAPS run",
        "",
        f"Rounds completed: {max((e['round'] for e in history), default=0)}. "
        "Test-split Dice with one positive point per image. *global*: the shared decoder alone; "
        "*federated*: the shared decoder plus the site's private head (what the site uses); "
        "gain is federated minus zero-shot.",
        "",
        "| site | test n | zero-shot Dice | global Dice | federated Dice | gain | HD95 px |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['site']} | {r['n_test']} | {r['zero_shot_dice']:.3f} | "
            f"{r['global_dice']:.3f} | {r['federated_dice']:.3f} | {r['gain']:+.3f} | "
            f"{r['zero_shot_hd95']:.1f} -> {r['federated_hd95']:.1f} |"
        )
    md += _privacy_lines(history) + _central_dp_lines(history, config)
    failures = [(e["round"], f) for e in history for f in e.get("failures", [])]
    if failures:  # one line each: the round, the phase, the site's name and why
        md += ["", "Sites that failed, declined or timed out:", ""]
        md += [f"- round {rnd}, {failure}" for rnd, failure in failures]
    md += ["", "![Dice per round](dice_per_round.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _privacy_lines(history: list[dict]) -> list[str]:
    """Each DP site's epsilon after the last round it trained (per round: per_site_rounds.csv)."""
    spent: dict[str, tuple[int, dict]] = {}
    for entry in history:
        for site, m in entry.get("train", {}).items():
            if "epsilon" in m:
                spent[site] = (entry["round"], m)
    if not spent:
        return []
    lines = [
        "",
        "Privacy spent (DP on the SPSA loss differences; per round in per_site_rounds.csv):",
        "",
        "| site | epsilon | delta | after round |",
        "|---|---|---|---|",
    ]
    for site, (rnd, m) in sorted(spent.items()):
        lines.append(f"| {site} | {m['epsilon']:.2f} | {m['delta']:g} | {rnd} |")
    return lines


def _central_dp_lines(history: list[dict], config: dict) -> list[str]:
    """The hospital-level epsilon of Flower's central DP wrappers (coordinator/central_dp.py)."""
    released = [e for e in history if "central-dp-epsilon" in e.get("aggregate", {})]
    if not released:
        return []
    coord = config.get("coordinator", {})
    return [
        "",
        f"Central DP ({coord.get('central_dp')}, noise multiplier "
        f"{coord.get('central_dp_noise')}, clip {coord.get('central_dp_clip')}): epsilon "
        f"{released[-1]['aggregate']['central-dp-epsilon']:.2f} at delta "
        f"{coord.get('central_dp_delta')} per hospital after {len(released)} noised rounds.",
    ]


def _write_csv(path: Path, history: list[dict]) -> None:
    rows = []
    for entry in history:
        for phase in ("train", "evaluate"):
            for site, m in entry.get(phase, {}).items():
                rows.append({"round": entry["round"], "phase": phase, "site": site, **m})
    keys = sorted(
        {k for r in rows for k in r}, key=lambda k: (k not in ("round", "phase", "site"), k)
    )
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _plot(path: Path, history: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sites = sorted({s for e in history for s in e.get("evaluate", {})})
    for i, site in enumerate(sites):
        pts = [(e["round"], e["evaluate"][site]) for e in history if site in e.get("evaluate", {})]
        color = f"C{i}"
        ax.plot(
            [r for r, _ in pts], [m["dice"] for _, m in pts], "o-", ms=3, color=color, label=site
        )
        ax.axhline(pts[0][1]["zero-shot-dice"], color=color, ls=":", lw=1)
    ax.set_xlabel("round")
    ax.set_ylabel("test Dice (dotted: zero-shot)")
    ax.grid(alpha=0.3)
    if sites:  # no round evaluated yet: no legend (matplotlib would warn in the terminal)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
