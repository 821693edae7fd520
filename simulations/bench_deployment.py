"""Deployment vs simulation: the same federation on Flower's two runtimes, in one run.

    python simulations/bench_deployment.py --sites 2 --n 60 --rounds 3 --local-steps 4 \
        --modality fundus --fm tiny --threads 1 --out simulations/results/deployment

The federation (issue 18's two-hospital pilot by default: two fundus sites of n cases, distinct
data seeds and scanner profiles, the default scenario's training settings) runs twice, through
the public commands only:

  simulation   ``baps-fed simulate --scenario WORK/scenario.toml`` (Flower's simulation runtime)
  deployment   ``baps-fed certs``, then ``baps-fed coordinator`` (TLS, node authentication, a free
               port on 127.0.0.1, the same run config) and one ``baps-fed site`` process per
               hospital (same data, seed, scanner, name, n and FM): a real SuperLink, Fleet
               gateway and SuperNodes

Both coordinators are the same ServerApp, which writes each round's wall time (``seconds`` in
``rounds.json``: from the round's train fan-out to the end of its evaluate) and every site's
SPSA compute (its train metrics' ``seconds``). The benchmark reports per round the two walls and
their ratio (goal: deployment / simulation <= 1.10 from round 2 on), the final decoders'
equality (both checkpoints), and the per-message overhead of the deployment:

  * measured: while the deployment runs, a watcher polls each site's process tree (psutil, by
    PID) and records every ClientApp process Flower starts (``flwr-clientapp``), its start and
    end (to the polling period); a train message's overhead is its process lifetime minus the
    SPSA seconds the site reported for it (process start, imports, FAB install, building the
    site, and the reply, i.e. everything but the steps);
  * proxy: one fresh Python process that imports ``sites.app``, builds the site (``LocalSite``:
    FM, data, decoder) and runs its first FM query, timed phase by phase (the cold start a
    ClientApp process pays when nothing is kept between messages).

Every process is started in a ``ProcessGroup`` and stopped by PID in a ``finally``; every wait
is bounded (``--timeout``). ``--fm litemedsam`` runs box prompts (LiteMedSAM answers boxes only)
and is skipped, with the reason, when the litemedsam extra is missing. Writes OUT.json and
OUT.md; the run folders go to ``--work`` (default runs/bench_deployment/OUT-NAME).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tomli_w

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose code is measured
GOAL = 1.10  # deployment round wall / simulation round wall, from round 2 on
CLIENTAPP = "flwr-clientapp"  # the process Flower's SuperNode starts per message


# -- the federation ------------------------------------------------------------------------------


def make_scenario(args: argparse.Namespace) -> dict:
    """The scenario both arms run: the default scenario's [train] and [coordinator] tables,
    with ``--sites`` sites of ``--modality`` (distinct seeds and scanners)."""
    from baps_fed.federation.scenario import DEFAULT_SCENARIO, Scenario

    base = Scenario.load(DEFAULT_SCENARIO)
    train = dict(base.train, **{"local-steps": args.local_steps})
    if args.fm.startswith("litemedsam"):
        train["prompt"] = "box"  # the MedSAM family answers boxes only
    coordinator = dict(base.coordinator)
    coordinator |= {"min-sites": args.sites, "round-timeout": float(args.round_timeout)}
    sites = [
        {"name": f"hospital-{chr(ord('a') + i)}", "data": args.modality, "n": args.n,
         "seed": i + 1, "scanner": i}
        for i in range(args.sites)
    ]  # fmt: skip
    return {"rounds": args.rounds, "train": train, "coordinator": coordinator, "site": sites}


def cli(*args: str) -> list[str]:
    """A ``baps-fed`` command, run by this interpreter."""
    return [sys.executable, "-m", "baps_fed.cli", *args]


def child_env(threads: int) -> dict[str, str]:
    """Every process runs this checkout's code with ``threads`` BLAS/torch threads (Ray would
    otherwise give its workers 1 and a SuperNode's ClientApps would take every core)."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def _toml_literal(value) -> str:
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _wait(proc: subprocess.Popen, deadline: float, what: str) -> int:
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{what} did not finish within the timeout") from None


def _wait_for(check, deadline: float, what: str, procs: list[subprocess.Popen]) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a process ended ({p.args[3:5]}) before {what}")
        time.sleep(0.5)


def run_simulation_arm(scenario: dict, args, work: Path) -> dict:
    from baps_fed.launch.processes import ProcessGroup

    folder = work / "simulate"
    cmd = cli("simulate", "--scenario", str(work / "scenario.toml"), "--fm", args.fm)
    cmd += ["--out", str(folder), "--overwrite"]
    if args.fm.startswith("litemedsam"):
        cmd += ["--prompt", "box"]
    print(f"simulation: {shlex.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    with ProcessGroup() as group:  # stopped (by PID, with its children) on the way out
        proc = group.start("baps-fed simulate", cmd, child_env(args.threads), work / "simulate.log")
        status = _wait(proc, time.monotonic() + args.timeout, "baps-fed simulate")
    return {"status": status, "total_s": time.perf_counter() - t0, "folder": str(folder)}


def run_deployment_arm(scenario: dict, args, work: Path) -> dict:
    from baps_fed.launch.processes import ProcessGroup, free_port

    env, names = child_env(args.threads), [s["name"] for s in scenario["site"]]
    certs, folder, port = work / "certs", work / "coordinator", free_port()
    deadline = time.monotonic() + args.timeout
    t0 = time.perf_counter()
    subprocess.run(
        cli("certs", "--out", str(certs), "--hosts", "127.0.0.1", "--nodes", *names),
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    cmd = cli("coordinator", "--out", str(folder), "--certs", str(certs), "--port", str(port))
    cmd += ["--register", *(str(certs / "nodes" / f"{n}.pub") for n in names)]
    cmd += ["--rounds", str(scenario["rounds"]), "--overwrite"]
    cmd += ["--min-sites", str(scenario["coordinator"]["min-sites"])]
    cmd += ["--local-steps", str(scenario["train"]["local-steps"]), "--config"]
    skip = {"local-steps", "min-sites"}
    for table in ("train", "coordinator"):
        cmd += [
            f"{k}={_toml_literal(v)}" for k, v in scenario[table].items() if k not in skip
        ]  # fmt: skip
    print(f"deployment: {shlex.join(cmd[1:])}", flush=True)
    group = ProcessGroup()
    watch = None
    try:
        coordinator = group.start("baps-fed coordinator", cmd, env, work / "coordinator.log")
        # sites connect once their keys are registered: the run is submitted right after
        _wait_for(
            lambda: (folder / "run_config.toml").is_file(), deadline, "the coordinator",
            [coordinator],
        )  # fmt: skip
        sites = {}
        for s in scenario["site"]:
            site_cmd = cli(
                "site", "--superlink", f"127.0.0.1:{port}", "--ca", str(certs / "ca.crt"),
                "--key", str(certs / "nodes" / s["name"]), "--name", s["name"],
                "--data", s["data"], "--n", str(s["n"]), "--seed", str(s["seed"]),
                "--scanner", str(s["scanner"]), "--fm", args.fm,
                "--out", str(work / "sites" / s["name"]),
            )  # fmt: skip
            print(f"  {shlex.join(site_cmd[1:])}", flush=True)
            log = work / f"site-{s['name']}.log"
            sites[s["name"]] = group.start(f"baps-fed site {s['name']}", site_cmd, env, log)
        logs = {n: work / "sites" / n / "supernode.log" for n in sites}
        logs["coordinator"] = work / "coordinator.log"
        watch = ProcessWatch({n: p.pid for n, p in sites.items()}, logs)
        watch.start()
        status = _wait(coordinator, deadline, "baps-fed coordinator")
    finally:
        if watch is not None:
            watch.stop()
        group.stop()  # every process, by PID, children included
    return {
        "status": status,
        "total_s": time.perf_counter() - t0,
        "folder": str(folder),
        "port": port,
        "processes": watch.processes() if watch else {},
        "events": watch.events if watch else {},
    }


class ProcessWatch(threading.Thread):
    """Every process below each site's ``baps-fed site`` process (by PID): command, start
    (the kernel's create time) and the last poll that saw it alive; and the time each line of
    interest first appears in the given logs (Flower's own log lines carry no time)."""

    LINES = ("Receiving:", "Sending:", "Start `flwr-clientapp`", "round ")

    def __init__(self, roots: dict[str, int], logs: dict[str, Path], period_s: float = 0.2):
        super().__init__(daemon=True)
        self.roots, self.logs, self.period_s = roots, logs, period_s
        self.seen: dict[str, dict[tuple[int, float], dict]] = {n: {} for n in roots}
        self.events: dict[str, list[tuple[float, str]]] = {n: [] for n in logs}
        self._offsets = dict.fromkeys(logs, 0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll()
            self._stop_event.wait(self.period_s)
        self.poll()

    def poll(self) -> None:
        now = time.time()
        for name, pid in self.roots.items():
            try:
                children = psutil.Process(pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    key = (child.pid, child.create_time())
                    entry = self.seen[name].get(key)
                    if entry is None:
                        cmd = " ".join(Path(a).name for a in child.cmdline()[:3])
                        entry = {"pid": child.pid, "cmd": cmd, "start": key[1]}
                        self.seen[name][key] = entry
                    entry["last_seen"] = now
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        for name, log in self.logs.items():
            try:
                with open(log, "rb") as f:
                    f.seek(self._offsets[name])
                    chunk = f.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offsets[name] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                text = _plain(line)
                if any(text.startswith(k) or f": {k}" in text for k in self.LINES):
                    self.events[name].append((now, text))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def processes(self) -> dict[str, list[dict]]:
        order = lambda e: e["start"]  # noqa: E731
        return {name: sorted(seen.values(), key=order) for name, seen in self.seen.items()}


def _plain(line: str) -> str:
    """A log line without its colour codes and level prefix."""
    import re

    line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    return re.sub(r"^(INFO|WARNING|ERROR|DEBUG)\s*:\s*", "", line)


# -- the numbers (pure: tests/launch/test_bench_deployment.py) ----------------------------------


def round_rows(sim: list[dict], dep: list[dict]) -> list[dict]:
    """Per round: both walls, their ratio, and each site's SPSA seconds in each arm."""
    by_round = {e["round"]: e for e in dep}
    rows = []
    for s in sim:
        d = by_round.get(s["round"])
        if d is None:
            continue
        sites = sorted(set(s["train"]) | set(d["train"]))
        rows.append(
            {
                "round": s["round"],
                "sim_wall_s": s["seconds"],
                "dep_wall_s": d["seconds"],
                "ratio": d["seconds"] / s["seconds"],
                "sim_compute_s": {n: s["train"].get(n, {}).get("seconds") for n in sites},
                "dep_compute_s": {n: d["train"].get(n, {}).get("seconds") for n in sites},
            }
        )
    return rows


def goal_summary(rows: list[dict], goal: float = GOAL) -> dict:
    """The ratio from round 2 on (round 1 also holds the sites' connecting and warm-up)."""
    later = [r["ratio"] for r in rows if r["round"] >= 2]
    sim = sum(r["sim_wall_s"] for r in rows if r["round"] >= 2)
    dep = sum(r["dep_wall_s"] for r in rows if r["round"] >= 2)
    return {
        "goal": goal,
        "max_ratio_from_round_2": max(later) if later else None,
        "total_ratio_from_round_2": dep / sim if later else None,
        "met": bool(later) and max(later) <= goal,
    }


def message_timeline(site: str, processes: list[dict], events: list, dep: list[dict]) -> list:
    """One site's messages in order: when its SuperNode logged receiving each and sending the
    reply (first seen by the watcher), the ClientApp process that served it (the k-th
    ``flwr-clientapp`` started for the k-th message, when the counts agree), and for train
    messages the SPSA seconds the site reported. ``overhead_s``: process start to the start of
    the SPSA steps (the reply's time minus the SPSA seconds), what a message pays before any
    FM query; ``lifetime_s``: the process's whole life (it outlives its reply a little)."""
    messages, rounds = [], {"train": 0, "evaluate": 0}
    for t, text in events:
        for kind in ("train", "evaluate"):
            if text.startswith(f"Receiving: {kind} message"):
                rounds[kind] = rounds["train"] if kind == "evaluate" else rounds["train"] + 1
                messages.append({"round": rounds[kind], "phase": kind, "received": t})
            elif text.startswith(f"Sending: {kind} message") and messages:
                messages[-1]["sent"] = t
    apps = [p for p in processes if CLIENTAPP in p["cmd"]]
    by_round = {e["round"]: e for e in dep}
    for i, m in enumerate(messages):
        if len(apps) == len(messages):
            app = apps[i]
            m["app_start"], m["lifetime_s"] = app["start"], app["last_seen"] - app["start"]
        spsa = by_round.get(m["round"], {}).get("train", {}).get(site, {}).get("seconds")
        if m["phase"] == "train" and spsa is not None:
            m["spsa_s"] = spsa
            if "app_start" in m and "sent" in m:
                m["overhead_s"] = m["sent"] - spsa - m["app_start"]
    return messages


def overhead_summary(timelines: dict[str, list[dict]]) -> dict:
    msgs = [m for rows in timelines.values() for m in rows]
    over = [m["overhead_s"] for m in msgs if "overhead_s" in m]
    launch = [m["app_start"] - m["received"] for m in msgs if "app_start" in m]
    evals = [m["sent"] - m["received"] for m in msgs if m["phase"] == "evaluate" and "sent" in m]
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {
        "messages": len(msgs),
        "clientapp_processes": sum("app_start" in m for m in msgs),
        "train_overhead_median_s": med(over),
        "train_overhead_max_s": max(over) if over else None,
        "received_to_process_start_median_s": med(launch),
        "evaluate_received_to_sent_median_s": med(evals),
    }


def round_breakdown(timelines: dict[str, list[dict]], dep: list[dict]) -> list[dict]:
    """Per deployment round, where its wall went, from the slowest site's point of view: its
    train message's time from receipt to reply, the SPSA steps inside it, the time between its
    train reply and its evaluate message (the coordinator waiting for the other sites,
    aggregating, and the message's trip), its evaluate's receipt to reply, and the rest (the
    trips of the train message out and the evaluate reply back, polling included)."""
    rows = []
    for e in dep:
        best = None
        for site, msgs in timelines.items():
            tr = next((m for m in msgs if m["round"] == e["round"] and m["phase"] == "train"), None)
            ev = next(
                (m for m in msgs if m["round"] == e["round"] and m["phase"] == "evaluate"), {}
            )
            if tr is None or "sent" not in tr:
                continue
            row = {"round": e["round"], "site": site, "wall_s": e["seconds"]}
            row["train_s"] = tr["sent"] - tr["received"]
            row["spsa_s"] = tr.get("spsa_s")
            if "sent" in ev:
                row["between_s"] = ev["received"] - tr["sent"]
                row["evaluate_s"] = ev["sent"] - ev["received"]
            busy = row["train_s"] + row.get("between_s", 0) + row.get("evaluate_s", 0)
            row["rest_s"] = e["seconds"] - busy
            if best is None or row["train_s"] > best["train_s"]:
                best = row
        if best:
            rows.append(best)
    return rows


def decoder_equality(sim_folder: Path, dep_folder: Path) -> dict:
    from baps_fed.federation.checkpoint import load_checkpoint

    a, b = load_checkpoint(sim_folder), load_checkpoint(dep_folder)
    diff = np.abs(a.theta.astype(np.float64) - b.theta.astype(np.float64))
    return {
        "rounds": [a.round, b.round],
        "decoder_bit_equal": bool(np.array_equal(a.theta, b.theta)),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "params": int(a.theta.size),
        # where they part, if they do: the first round whose site metrics differ
        "first_differing_round": _first_difference(a.history, b.history),
    }


def _first_difference(sim: list[dict], dep: list[dict]) -> dict | None:
    ignore = {"seconds"}  # wall times differ by nature
    for s, d in zip(sim, dep, strict=False):
        for phase in ("train", "evaluate"):
            for site in sorted(set(s[phase]) | set(d[phase])):
                ms, md = s[phase].get(site, {}), d[phase].get(site, {})
                keys = sorted((set(ms) | set(md)) - ignore)
                diff = [k for k in keys if ms.get(k) != md.get(k)]
                if diff:
                    return {"round": s["round"], "phase": phase, "site": site, "keys": diff,
                            "simulation": {k: ms.get(k) for k in diff},
                            "deployment": {k: md.get(k) for k in diff}}  # fmt: skip
    return None


PROXY = r"""
import json, sys, time
t0 = time.time()
import sites.app  # the ClientApp module, as Flower loads it
from baps_fed.federation.contract import FedTrainConfig, SiteSpec, initial_theta
from baps_fed.federation.local_site import LocalSite
t_import = time.time()
spec = SiteSpec(**json.loads(sys.argv[1]))
cfg = FedTrainConfig.from_flat(json.loads(sys.argv[2]))
site = LocalSite(spec, cfg)
t_built = time.time()
first = []
segment = site.fm.segment
def timed(*a, **k):
    if not first:
        first.append(time.time())
    return segment(*a, **k)
site.fm.segment = timed
site.train_round(initial_theta(cfg), 1, None)
t_done = time.time()
print("PROXY " + json.dumps({"t0": t0, "import": t_import, "built": t_built,
                             "first_query": first[0], "first_step_done": t_done}))
"""


def overhead_proxy(scenario: dict, args) -> dict:
    """A cold ClientApp-like process: interpreter start, imports, site build, first FM query
    (one local SPSA step), timed in a fresh process."""
    spec = dict(scenario["site"][0], fm=args.fm)
    train = dict(scenario["train"], **{"local-steps": 1})
    launched = time.time()
    done = subprocess.run(
        [sys.executable, "-c", PROXY, json.dumps(spec), json.dumps(train)],
        env=child_env(args.threads), capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PROXY ")), None)
    if done.returncode != 0 or line is None:
        return {"error": (done.stderr or done.stdout)[-1500:]}
    t = json.loads(line[6:])
    return {
        "interpreter_start_s": t["t0"] - launched,
        "imports_s": t["import"] - t["t0"],
        "site_build_s": t["built"] - t["import"],
        "process_start_to_first_fm_query_s": t["first_query"] - launched,
        "first_spsa_step_s": t["first_step_done"] - t["first_query"],
    }


# -- the files ---------------------------------------------------------------------------------


def _f(x, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def write_markdown(path: Path, result: dict) -> None:
    rows, goal = result["rounds"], result["goal"]
    sites = sorted({n for r in rows for n in r["sim_compute_s"]})
    md = [
        "# Deployment vs simulation: per-round wall time",
        "",
        f"`{result['command']}`",
        "",
        f"{result['setting']}. Machine: {result['machine']}.",
        "",
        "| round | simulation wall s | deployment wall s | ratio |"
        + "".join(f" {n} SPSA s (sim / dep) |" for n in sites),
        "|---|---|---|---|" + "---|" * len(sites),
    ]
    for r in rows:
        cells = "".join(
            f" {_f(r['sim_compute_s'][n])} / {_f(r['dep_compute_s'][n])} |" for n in sites
        )
        md.append(
            f"| {r['round']} | {r['sim_wall_s']:.1f} | {r['dep_wall_s']:.1f} | "
            f"{r['ratio']:.2f} |{cells}"
        )
    verdict = "met" if goal["met"] else "NOT met"
    md += [
        "",
        f"Goal deployment / simulation <= {goal['goal']:.2f} from round 2 on: **{verdict}** "
        f"(largest ratio {_f(goal['max_ratio_from_round_2'])}, rounds 2+ together "
        f"{_f(goal['total_ratio_from_round_2'])}). Whole commands (start-up and shut-down "
        f"included): simulation {result['simulation']['total_s']:.0f} s, deployment "
        f"{result['deployment']['total_s']:.0f} s.",
        "",
    ]
    dec = result["decoder"]
    md.append(
        f"Final decoder ({dec['params']} parameters, rounds {dec['rounds']}): bit-equal "
        f"**{dec['decoder_bit_equal']}**, max abs difference {dec['max_abs_diff']:.3g}."
    )
    d = dec.get("first_differing_round")
    if d:
        md.append(
            f"The sites' reported metrics first differ between the runs in round {d['round']}, "
            f"{d['phase']} at {d['site']}: "
            + ", ".join(f"{k} {d['simulation'][k]} / {d['deployment'][k]}" for k in d["keys"])
            + " (simulation / deployment)."
        )
    else:
        md.append("Every metric the sites reported is the same in both runs (times aside).")
    over, proxy = result["overhead"], result["overhead_proxy"]
    md += [
        "",
        "## Where a deployment round goes",
        "",
        "Per round, the site whose train message took longest (times from its SuperNode's log "
        "lines, seen by a watcher polling every 0.2 s): its train message from receipt to "
        "reply (SPSA steps inside it), the wait for the evaluate message (the coordinator "
        "waiting for every site, aggregating, the message's trip), the evaluate message from "
        "receipt to reply, and the rest of the round wall (the trips of the train message out "
        "and of the evaluate reply back).",
        "",
        "| round | site | wall s | train msg s | of which SPSA s | to evaluate msg s | "
        "evaluate msg s | rest s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["round_breakdown"]:
        md.append(
            f"| {r['round']} | {r['site']} | {r['wall_s']:.1f} | {r['train_s']:.1f} | "
            f"{_f(r['spsa_s'], '.1f')} | {_f(r.get('between_s'), '.1f')} | "
            f"{_f(r.get('evaluate_s'), '.1f')} | {r['rest_s']:.1f} |"
        )
    md += [
        "",
        "## Per-message overhead of the deployment",
        "",
        f"Measured: {over['messages']} messages, {over['clientapp_processes']} of them matched to "
        f"the ClientApp process (`{CLIENTAPP}`) that served it. From that process's start to the "
        "start of the SPSA steps (its reply's time minus the SPSA seconds the site reported), a "
        f"train message pays median **{_f(over['train_overhead_median_s'])} s** (max "
        f"{_f(over['train_overhead_max_s'])} s) before its first FM query; the SuperNode starts "
        f"the process {_f(over['received_to_process_start_median_s'])} s (median) after "
        f"receiving the message; an evaluate message takes "
        f"{_f(over['evaluate_received_to_sent_median_s'])} s (median) from receipt to reply.",
        "",
    ]
    if "error" in proxy:
        md.append(f"Proxy (a fresh process): failed: {proxy['error'][-300:]}")
    else:
        md.append(
            "Proxy, a fresh Python process (`import sites.app`, build the site, one SPSA step): "
            f"interpreter {proxy['interpreter_start_s']:.2f} s, imports {proxy['imports_s']:.2f} "
            f"s, site build (FM, data, decoder) {proxy['site_build_s']:.2f} s; process start to "
            f"first FM query **{proxy['process_start_to_first_fm_query_s']:.2f} s**; the first "
            f"SPSA step {proxy['first_spsa_step_s']:.2f} s."
        )
    md += [
        "",
        "Per message (deployment; s after the site's first message):",
        "",
        "| site | round | phase | received | process start | reply sent | process lifetime s "
        "| SPSA s | overhead s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for site, msgs in result["messages"].items():
        t0 = msgs[0]["received"] if msgs else 0.0
        rel = lambda m, k: _f(m[k] - t0, ".1f") if k in m else "n/a"  # noqa: B023, E731
        for m in msgs:
            md.append(
                f"| {site} | {m['round']} | {m['phase']} | {rel(m, 'received')} | "
                f"{rel(m, 'app_start')} | {rel(m, 'sent')} | {_f(m.get('lifetime_s'), '.1f')} | "
                f"{_f(m.get('spsa_s'))} | {_f(m.get('overhead_s'))} |"
            )
    md += ["", result["note"], ""]
    path.write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--n", type=int, default=60, help="synthetic cases per site")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--modality", default="fundus")
    ap.add_argument("--fm", default="tiny", help="FM spec of every site (tiny, litemedsam, ...)")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per site process")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds each arm may take")
    ap.add_argument("--round-timeout", type=float, default=1800, help="run config round-timeout")
    ap.add_argument("--out", type=Path, default=Path("simulations/results/deployment"))
    ap.add_argument("--note", default="", help="a word on the machine (e.g. shared with ...)")
    ap.add_argument("--work", type=Path, help="run folders (default runs/bench_deployment/NAME)")
    args = ap.parse_args(argv)
    command = "python simulations/bench_deployment.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    if args.fm.startswith("litemedsam"):
        from baps_fed.fm.litemedsam import shipped_weights_path
        from baps_fed.fm.sam_checkpoint import CheckpointError

        try:
            shipped_weights_path()
        except CheckpointError as err:
            print(f"bench_deployment: skipped --fm {args.fm}: {err}")
            return 0
    work = (args.work or Path("runs/bench_deployment") / args.out.name).resolve()
    if (work / "scenario.toml").is_file():  # this benchmark's own earlier run folders
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    scenario = make_scenario(args)
    (work / "scenario.toml").write_text(tomli_w.dumps(scenario))

    load = {"before_simulation": os.getloadavg()}
    sim = run_simulation_arm(scenario, args, work)
    if sim["status"] != 0:
        print(f"the simulation failed ({sim['status']}); its log: {work / 'simulate.log'}")
        return 1
    load["before_deployment"] = os.getloadavg()
    dep = run_deployment_arm(scenario, args, work)
    if dep["status"] != 0:
        print(f"the deployment failed ({dep['status']}); its log: {work / 'coordinator.log'}")
        return 1
    sim_hist = json.loads((Path(sim["folder"]) / "rounds.json").read_text())["history"]
    dep_hist = json.loads((Path(dep["folder"]) / "rounds.json").read_text())["history"]
    rows = round_rows(sim_hist, dep_hist)
    processes, events = dep.pop("processes"), dep.pop("events")
    timelines = {
        n: message_timeline(n, processes.get(n, []), events.get(n, []), dep_hist)
        for n in sorted(processes)
    }
    result = {
        "command": command,
        "setting": (
            f"{args.sites} {args.modality} sites of n = {args.n} (seeds 1..{args.sites}, "
            f"scanners 0..{args.sites - 1}), {args.rounds} rounds of {args.local_steps} local "
            f"SPSA steps, FM {args.fm}, {args.threads} torch thread(s) per site process; "
            "deployment with TLS and node authentication on 127.0.0.1"
        ),
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; load "
            f"average (1, 5, 15 min) before the simulation "
            f"{', '.join(f'{x:.2f}' for x in load['before_simulation'])}, before the "
            f"deployment {', '.join(f'{x:.2f}' for x in load['before_deployment'])}"
            + (f"; {args.note}" if args.note else "")
        ),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "scenario": scenario,
        "rounds": rows,
        "goal": goal_summary(rows),
        "simulation": sim,
        "deployment": dep,
        "decoder": decoder_equality(Path(sim["folder"]), Path(dep["folder"])),
        "overhead": overhead_summary(timelines),
        "round_breakdown": round_breakdown(timelines, dep_hist),
        "messages": timelines,
        "coordinator_lines": events.get("coordinator", []),
        "overhead_proxy": overhead_proxy(scenario, args),
        "note": (
            "Round wall: `seconds` in each run's rounds.json (the ServerApp's clock, from the "
            "round's train fan-out to the end of its evaluate). SPSA s: the site's own `seconds` "
            "train metric. Both arms ran one after the other on the same machine."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_markdown(args.out.with_suffix(".md"), result)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
