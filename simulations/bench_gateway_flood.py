"""Flood the coordinator's public port during a real run: does its memory hold, does the run
complete, and is every refused request in the access log?

    python simulations/bench_gateway_flood.py --parallel 20 --size-mb 300 \
        --out simulations/results/gateway_flood

A real pilot through the public commands only: ``baps-fed certs``, ``baps-fed coordinator``
(TLS, node authentication, a free port on 127.0.0.1) and two ``baps-fed site`` processes
(fundus, n cases, the tiny FM, one torch thread each). Once the run's first round is done,
``--parallel`` unauthenticated clients (TLS without a client key, so no node signature) each
POST ``--size-mb`` MB to ``/v1/fleet/get-run`` at once, sending as fast as the gateway takes it:

  content-length  the body announced by its Content-Length (the attack of issue 26);
  chunked         the same body with no length (Transfer-Encoding: chunked), which the gateway
                  can refuse only while reading.

While each flood runs, a watcher sums the RSS of the coordinator's processes (the
``baps-fed coordinator`` process and every descendant: SuperLink, SuperExec, ServerApp, Fleet
gateway, ``flwr run``) every 50 ms, by PID; the gateway's own RSS too. Reported per flood:
the coordinator's RSS before it (idle: the mean of 3 s of samples), its peak and its value
5 s after, the peak above idle (goal: < 200 MB), what each client got back (status, bytes it
managed to send), and the access-log lines of the refusals in ``gateway.log``; then whether
the run completed (the coordinator exits 0 after its last round). Every process is started in
a ``ProcessGroup`` and stopped by PID in a ``finally``; every wait is bounded (``--timeout``).
Writes OUT.json and OUT.md; the run folders go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GOAL_MB = 200.0  # the coordinator's memory above idle during the flood
PATH = "/v1/fleet/get-run"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "baps_fed.cli", *args]


def tree_rss(pid: int) -> tuple[int, dict[str, int]]:
    """RSS summed over ``pid`` and its descendants, and per process name."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, {}
    total, named = 0, {}
    for p in procs:
        try:
            rss = p.memory_info().rss
            name = " ".join(p.cmdline()[1:3])[:60] or p.name()
        except psutil.NoSuchProcess:
            continue
        total += rss
        named[f"{p.pid} {name}"] = rss
    return total, named


class Watcher(threading.Thread):
    """Samples the coordinator tree's RSS (and the gateway's) every ``period_s``."""

    def __init__(self, pid: int, gateway_pid: int, period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.gateway_pid, self.period_s = pid, gateway_pid, period_s
        self.samples: list[tuple[float, int, int]] = []  # (time, tree RSS, gateway RSS)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total, _ = tree_rss(self.pid)
            try:
                gw = psutil.Process(self.gateway_pid).memory_info().rss
            except psutil.NoSuchProcess:
                gw = 0
            self.samples.append((time.monotonic(), total, gw))
            time.sleep(self.period_s)

    def between(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


def flood_client(port: int, size: int, chunked: bool, out: dict) -> None:
    """One unauthenticated POST of ``size`` bytes: send until the gateway stops taking it,
    then read its answer."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # no client key
    sent, status = 0, ""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
            sock.sendall(
                f"POST {PATH} HTTP/1.1\r\nHost: coordinator\r\n{length}\r\n"
                "Content-Type: application/protobuf\r\n\r\n".encode()
            )
            block = b"\0" * (1 << 20)
            payload = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
            try:
                while sent < size:
                    sock.sendall(payload)
                    sent += len(block)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the gateway answered and closed: the rest is never sent
            try:
                sock.settimeout(30)
                status = sock.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
            except OSError as err:
                status = status or f"no answer ({type(err).__name__})"
    except OSError as err:
        status = f"connection failed ({err})"
    out.update(sent=sent, status=status)


def flood(port: int, parallel: int, size: int, chunked: bool) -> list[dict]:
    results = [{} for _ in range(parallel)]
    threads = [
        threading.Thread(target=flood_client, args=(port, size, chunked, r), daemon=True)
        for r in results
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def _wait_for(check, deadline: float, what: str) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.5)


def refusals(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [line for line in text.splitlines() if f"POST {PATH}:" in line and "refused" in line]


def run(args: argparse.Namespace) -> dict:
    from baps_fed.launch.processes import ProcessGroup, free_port

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    certs, folder, port = work / "certs", work / "coordinator", free_port()
    names = [f"hospital-{c}" for c in "ab"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    deadline = time.monotonic() + args.timeout
    result: dict = {"floods": {}}
    with ProcessGroup() as group:
        group.start("certs", cli("certs", "--out", str(certs), "--nodes", *names), env).wait(120)
        cmd = cli("coordinator", "--out", str(folder), "--certs", str(certs), "--port", str(port),
                  "--rounds", str(args.rounds), "--min-sites", "2", "--local-steps",
                  str(args.local_steps), "--config", "batch-size=2", "sp-avg=2",
                  "--register", *(str(certs / "nodes" / f"{n}.pub") for n in names))  # fmt: skip
        coordinator = group.start("coordinator", cmd, env, work / "coordinator.log")
        _wait_for(lambda: b"Fleet API on" in (work / "coordinator.log").read_bytes(), deadline,
                  "the coordinator")  # fmt: skip
        (gateway,) = [
            p for p in psutil.Process(coordinator.pid).children()
            if "baps_fed.launch.fleet_gateway" in " ".join(p.cmdline())
        ]  # fmt: skip
        for n in names:
            site = cli("site", "--superlink", f"127.0.0.1:{port}", "--ca", str(certs / "ca.crt"),
                       "--key", str(certs / "nodes" / n), "--name", n, "--data", "fundus",
                       "--n", str(args.n), "--fm", "tiny", "--threads", "1",
                       "--out", str(work / n))  # fmt: skip
            group.start(f"site {n}", site, env, work / f"{n}.log")
        rounds = folder / "rounds.json"
        _wait_for(rounds.is_file, deadline, "the run's first round")
        watcher = Watcher(coordinator.pid, gateway.pid)
        watcher.start()
        for mode in args.modes:
            time.sleep(3.0)
            t0 = time.monotonic()
            idle = statistics.mean(s[1] for s in watcher.between(t0 - 3.0, t0))
            idle_gw = statistics.mean(s[2] for s in watcher.between(t0 - 3.0, t0))
            before = len(refusals(folder / "gateway.log"))
            clients = flood(port, args.parallel, args.size_mb * 10**6, mode == "chunked")
            t1 = time.monotonic()
            time.sleep(5.0)
            during = watcher.between(t0, t1)
            after = watcher.between(t1 + 4.0, t1 + 5.0)
            lines = refusals(folder / "gateway.log")[before:]
            result["floods"][mode] = {
                "idle_mb": idle / 1e6,
                "peak_mb": max(s[1] for s in during) / 1e6,
                "after_mb": statistics.mean(s[1] for s in after) / 1e6,
                "peak_above_idle_mb": (max(s[1] for s in during) - idle) / 1e6,
                "gateway_idle_mb": idle_gw / 1e6,
                "gateway_peak_mb": max(s[2] for s in during) / 1e6,
                "seconds": t1 - t0,
                "statuses": sorted({c["status"] for c in clients}),
                "status_counts": {
                    s: sum(c["status"] == s for c in clients)
                    for s in {c["status"] for c in clients}
                },
                "mb_sent_max": max(c["sent"] for c in clients) / 1e6,
                "access_log_lines": len(lines),
                "access_log_peers": len({re.search(r"refused (\S+)", x).group(1) for x in lines}),
                "example_line": lines[0] if lines else "",
            }
            print(mode, json.dumps(result["floods"][mode], indent=1), flush=True)
        watcher.stop.set()
        try:
            status = coordinator.wait(timeout=max(1.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - a run past the deadline did not complete
            status = None
        history = json.loads(rounds.read_text())["history"] if rounds.is_file() else []
        result["run"] = {
            "coordinator_exit": status,
            "rounds_done": len(history),
            "rounds": args.rounds,
            "completed": status == 0 and len(history) == args.rounds,
        }
    return result


def write_markdown(path: Path, args: argparse.Namespace, result: dict) -> None:
    run = result["run"]
    lines = [
        "# The coordinator's public port under a flood of oversized requests",
        "",
        f"`python simulations/bench_gateway_flood.py --parallel {args.parallel} --size-mb "
        f"{args.size_mb} --modes {' '.join(args.modes)}` on {platform.node()} "
        f"({os.cpu_count()} cores, shared with other jobs), {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        f"A real pilot (TLS, node authentication, 2 fundus sites of {args.n} cases, tiny FM, "
        f"{args.rounds} rounds of {args.local_steps} step); after round 1, {args.parallel} "
        f"unauthenticated clients each POST {args.size_mb} MB to `{PATH}` at once. Memory: "
        "RSS summed over the coordinator's processes (coordinator, SuperLink, SuperExec, "
        f"ServerApp, gateway, `flwr run`), sampled every 50 ms. Goal: < {GOAL_MB:.0f} MB above "
        "idle, the run completes, one access-log line per refused request.",
        "",
        "| flood | idle MB | peak MB | peak above idle MB | 5 s after MB | gateway idle / peak MB "
        "| answers | most MB a client sent | access-log lines (peers) | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, f in result["floods"].items():
        answers = ", ".join(f"{n} x {s}" for s, n in sorted(f["status_counts"].items()))
        lines.append(
            f"| {mode} | {f['idle_mb']:.0f} | {f['peak_mb']:.0f} | "
            f"**{f['peak_above_idle_mb']:.0f}** | {f['after_mb']:.0f} | "
            f"{f['gateway_idle_mb']:.0f} / {f['gateway_peak_mb']:.0f} | {answers} | "
            f"{f['mb_sent_max']:.1f} | {f['access_log_lines']} ({f['access_log_peers']}) | "
            f"{f['seconds']:.1f} |"
        )
    example = next((f["example_line"] for f in result["floods"].values() if f["example_line"]), "")
    lines += [
        "",
        f"Run completed: **{run['completed']}** (coordinator exit {run['coordinator_exit']}, "
        f"{run['rounds_done']} of {run['rounds']} rounds).",
        "",
        f"An access-log line (`gateway.log` in the run folder): `{example}`",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", type=int, default=20, help="clients at once")
    ap.add_argument("--size-mb", type=int, default=300, help="MB each client POSTs")
    ap.add_argument("--modes", nargs="+", default=["content-length", "chunked"],
                    choices=["content-length", "chunked"])  # fmt: skip
    ap.add_argument("--n", type=int, default=12, help="cases per site")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds for everything")
    ap.add_argument("--out", type=Path, default=ROOT / "simulations/results/gateway_flood")
    ap.add_argument("--work", type=Path, default=ROOT / "runs/bench_gateway_flood")
    args = ap.parse_args()
    result = run(args)
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), args, result)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
