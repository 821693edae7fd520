"""The real-polyp federation as a real deployment on 127.0.0.1, against its simulation: three
hospitals (``simulations/scenarios/cvc_hospitals.toml``: whole video sequences of CVC-ColonDB,
each hospital's box habit) and ONE shared FM service, through the public commands only.

    python simulations/bench_real_deployment.py --fm 'litemedsam?runtime=openvino' \
        --rounds 2 --local-steps 2 --threads 1 --out simulations/results/real_deployment

  simulation   ``baps-fed simulate --scenario WORK/scenario.toml --fm FM --shared-fm``: the FM
               served once over gRPC with TLS and a token per site, every site its client
  deployment   ``baps-fed certs``; ``baps-fed fm tokens`` (a token per hospital);
               ``baps-fed fm serve --fm FM`` (TLS with the coordinator's CA, the tokens file,
               metering); ``baps-fed coordinator`` (TLS, node authentication); one ``baps-fed
               site`` per hospital (its folder subset, grouped split and box habit as flags;
               ``--fm grpc://...?tls_ca=...&token_file=...``)

Checks: the two final decoders (coordinator checkpoints) bit for bit, and in each arm the FM
service's metering per hospital against the FM images each hospital reported (train and
evaluate, every round). Every process is stopped by PID (``ProcessGroup``); every wait is
bounded (``--timeout``). Skips with the reason when the data folder is absent. Writes
``OUT.{json,md}``; run folders under ``--work`` (default runs/bench_real_deployment).
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import tomli_w
from bench_deployment import _toml_literal, _wait, _wait_for, child_env, cli, decoder_equality
from bench_real_federation import DATA, SCENARIO

SITE_FLAGS = ("layout", "subset", "group-by", "box-margin", "box-jitter", "box-bias")


def make_scenario(args: argparse.Namespace) -> dict:
    from baps_fed.federation.scenario import Scenario

    base = Scenario.load(args.scenario)
    sites = [dict(s, data=str(args.data)) for s in base.sites]
    train = dict(base.train, **{"local-steps": args.local_steps})
    coordinator = dict(base.coordinator, **{"round-timeout": float(args.timeout)})
    return {"rounds": args.rounds, "train": train, "coordinator": coordinator, "site": sites}


def run_simulation_arm(args: argparse.Namespace, work: Path) -> dict:
    from baps_fed.launch.processes import ProcessGroup

    folder = work / "simulate"
    cmd = cli("simulate", "--scenario", str(work / "scenario.toml"), "--fm", args.fm)
    cmd += ["--shared-fm", "--out", str(folder), "--overwrite"]
    print(f"simulation: {shlex.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    with ProcessGroup() as group:
        proc = group.start("baps-fed simulate", cmd, child_env(args.threads), work / "simulate.log")
        status = _wait(proc, time.monotonic() + args.timeout, "baps-fed simulate")
    usage = json.loads((folder / "fm_service_usage.json").read_text())
    batching = json.loads((folder / "fm_service/metering.json").read_text()).get("batching")
    return {"status": status, "total_s": time.perf_counter() - t0, "folder": str(folder),
            "metering": usage, "batching": batching}  # fmt: skip


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_deployment_arm(scenario: dict, args: argparse.Namespace, work: Path) -> dict:
    from baps_fed.launch.processes import ProcessGroup, free_port
    from baps_fed.launch.shared_fm import DEADLINE_S, site_counts

    env, names = child_env(args.threads), [s["name"] for s in scenario["site"]]
    certs, tokens, folder = work / "certs", work / "fm_tokens", work / "coordinator"
    port, fm_port = free_port(), free_port()
    deadline = time.monotonic() + args.timeout
    t0 = time.perf_counter()
    for setup in (
        cli("certs", "--out", str(certs), "--hosts", "127.0.0.1", "--nodes", *names),
        cli("fm", "tokens", "--out", str(tokens), *names),
    ):
        subprocess.run(setup, env=env, check=True, capture_output=True, timeout=120)
    serve = cli("fm", "serve", "--fm", args.fm, "--port", str(fm_port))
    serve += ["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key")]
    serve += ["--tokens", str(tokens / "tokens.toml"), "--metering", str(work / "metering.json")]
    cmd = cli("coordinator", "--out", str(folder), "--certs", str(certs), "--port", str(port))
    cmd += ["--register", *(str(certs / "nodes" / f"{n}.pub") for n in names)]
    cmd += ["--rounds", str(scenario["rounds"]), "--overwrite"]
    cmd += ["--min-sites", str(scenario["coordinator"]["min-sites"])]
    cmd += ["--local-steps", str(scenario["train"]["local-steps"]), "--config"]
    skip = {"local-steps", "min-sites"}
    for table in ("train", "coordinator"):
        cmd += [f"{k}={_toml_literal(v)}" for k, v in scenario[table].items() if k not in skip]
    with ProcessGroup() as group:  # every process stopped by PID on the way out
        print(f"FM service: {shlex.join(serve[1:])}", flush=True)
        service = group.start("baps-fed fm serve", serve, env, work / "fm_serve.log")
        _wait_for(lambda: _listening(fm_port), deadline, "the FM service", [service])
        print(f"deployment: {shlex.join(cmd[1:])}", flush=True)
        coordinator = group.start("baps-fed coordinator", cmd, env, work / "coordinator.log")
        _wait_for(
            lambda: (folder / "run_config.toml").is_file(), deadline, "the coordinator",
            [coordinator, service],
        )  # fmt: skip
        fm = f"grpc://127.0.0.1:{fm_port}?deadline={DEADLINE_S:g}&tls_ca={certs / 'ca.crt'}"
        fm += f"&token_file={tokens / 'tokens'}"
        for s in scenario["site"]:
            site_cmd = cli(
                "site", "--superlink", f"127.0.0.1:{port}", "--ca", str(certs / "ca.crt"),
                "--key", str(certs / "nodes" / s["name"]), "--name", s["name"],
                "--data", s["data"], "--out", str(work / "sites" / s["name"]),
                "--fm", f"{fm}/{s['name']}",
            )  # fmt: skip
            site_cmd += [f for k in SITE_FLAGS if k in s for f in (f"--{k}", str(s[k]))]
            print(f"  {shlex.join(site_cmd[1:])}", flush=True)
            group.start(f"baps-fed site {s['name']}", site_cmd, env, work / f"site-{s['name']}.log")
        status = _wait(coordinator, deadline, "baps-fed coordinator")
    doc = json.loads((work / "metering.json").read_text())
    metering = doc["clients"]
    reported = site_counts(folder / "rounds.json") if (folder / "rounds.json").is_file() else {}
    usage = {n: {"service": metering.get(n, {}).get("images", 0), "site": reported.get(n)}
             for n in names}  # fmt: skip
    return {"status": status, "total_s": time.perf_counter() - t0, "folder": str(folder),
            "metering": usage, "batching": doc.get("batching")}  # fmt: skip


def write_markdown(path: Path, result: dict, args: argparse.Namespace) -> None:
    eq, sim, dep = result["equality"], result["simulation"], result["deployment"]
    lines = [
        f"# The real-polyp federation deployed on 127.0.0.1 vs simulated: FM `{args.fm}`",
        "",
        "`python " + " ".join(sys.argv) + "`",
        "",
        f"{len(result['sites'])} hospitals of `{args.data}` "
        f"({', '.join(result['sites'])}; scenario `{args.scenario.name}`), {args.rounds} rounds of "
        f"{args.local_steps} SPSA steps, one shared FM service in each arm (TLS, a token per "
        f"hospital). Whole commands: simulation {sim['total_s']:.0f} s, deployment "
        f"{dep['total_s']:.0f} s (exit {sim['status']} / {dep['status']}).",
        "",
        f"Final decoder ({eq['params']} parameters, rounds {eq['rounds']}): bit-equal "
        f"**{eq['decoder_bit_equal']}**, max abs difference {eq['max_abs_diff']:g}.",
        "",
        "| hospital | simulation: service billed | site reported | deployment: service billed "
        "| site reported |",
        "|---|---|---|---|---|",
    ]
    for n in result["sites"]:
        s, d = sim["metering"][n], dep["metering"][n]
        lines.append(f"| {n} | {s['service']} | {s['site']} | {d['service']} | {d['site']} |")
    agree = all(
        arm["metering"][n]["service"] == arm["metering"][n]["site"]
        for arm in (sim, dep)
        for n in result["sites"]
    )
    lines += ["", f"Metering equals the sum of the hospitals' counts in both arms: **{agree}**."]
    for name, arm in (("simulation", sim), ("deployment", dep)):
        b = arm.get("batching") or {}
        lines.append(
            f"- {name}: the service answered {b.get('requests')} requests in {b.get('fm_calls')} "
            f"FM calls, {b.get('merged_calls')} of them merging several hospitals' requests"
        )
    if eq["first_differing_round"]:
        lines += ["", f"First difference: `{json.dumps(eq['first_differing_round'])}`"]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    path.write_text("\n".join(lines) + "\n")


def render(args: argparse.Namespace) -> int:
    """OUT.md again from OUT.json, with the services' batching read from their metering."""
    result = json.loads(args.out.with_suffix(".json").read_text())
    files = {"simulation": Path(result["simulation"]["folder"]) / "fm_service/metering.json",
             "deployment": args.work / "metering.json"}  # fmt: skip
    for arm, path in files.items():
        result[arm]["batching"] = json.loads(path.read_text()).get("batching")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    sys.argv = [a for a in sys.argv if a != "--render"]  # the command that ran the arms
    write_markdown(args.out.with_suffix(".md"), result, args)
    print(args.out.with_suffix(".md").read_text())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fm", default="litemedsam", help="FM spec the shared service serves")
    ap.add_argument("--data", type=Path, default=DATA, help="the CVC-ColonDB folder")
    ap.add_argument("--scenario", type=Path, default=SCENARIO, help="hospitals and run settings")
    ap.add_argument("--rounds", type=int, default=2, help="federated rounds")
    ap.add_argument("--local-steps", type=int, default=2, help="SPSA steps per site and round")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per process")
    ap.add_argument("--timeout", type=float, default=5400, help="seconds each arm may take")
    ap.add_argument("--note", default="", help="a word on the machine (e.g. shared with ...)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_real_deployment"))
    ap.add_argument("--out", type=Path, default=Path("simulations/results/real_deployment"))
    ap.add_argument(
        "--render", action="store_true", help="rewrite OUT.md from OUT.json and --work's files"
    )
    args = ap.parse_args()
    if args.render:
        return render(args)
    if not (args.data / "manifest.csv").is_file():
        print(f"skipped: no CVC-ColonDB folder at {args.data} (give --data; see its README)")
        return 0
    scenario = make_scenario(args)
    if args.work.exists():
        raise SystemExit(f"{args.work} exists: remove it or give another --work")
    args.work.mkdir(parents=True)
    (args.work / "scenario.toml").write_text(tomli_w.dumps(scenario))
    result = {"sites": [s["name"] for s in scenario["site"]], "scenario": scenario}
    result["simulation"] = run_simulation_arm(args, args.work)
    result["deployment"] = run_deployment_arm(scenario, args, args.work)
    result["equality"] = decoder_equality(
        Path(result["simulation"]["folder"]), Path(result["deployment"]["folder"])
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), result, args)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
