"""The site's long-lived process: its ClientApp, built once, served to the per-message relay.

Started by ``baps-fed site`` (``baps_fed/launch/site.py``) as
``python -m sites.worker --node-config FILE --address unix:PATH [--threads N]``: it loads the
FM, decodes and checks the data and calibrates the decoder before the SuperNode starts (a bad
path ends it here, status 2, with the cause on the site's terminal), then serves
``sites/site_app.py`` at the address (``sites/relay.py``) and writes each round's result to the
terminal. It exits with status 0 once the run's last round has been evaluated here.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path

from flwr.app import Context, Message

from baps_fed.federation.site_errors import reason_parts
from baps_fed.federation.worker_address import finished_marker


class RoundLines:
    """What the site's terminal says of each reply; ``finished`` is set when the run's last
    round has been evaluated."""

    def __init__(self, name: str, marker: Path | None = None) -> None:
        self.name, self.marker = name, marker
        self.finished = threading.Event()
        self._runs: set[int] = set()

    def say(self, text: str) -> None:
        print(f"site {self.name}: {text}", flush=True)

    def __call__(self, msg: Message, context: Context, reply: Message) -> None:
        kind = msg.metadata.message_type.split(".")[0]
        config = msg.content.get("config", {}) if msg.has_content() else {}
        rnd = int(config.get("server-round", 0))
        rounds = int(context.run_config.get("rounds", 0))
        if context.run_id not in self._runs:
            self._runs.add(context.run_id)
            self.say(f"run {context.run_id} started ({rounds} rounds)")
        if reply.has_error():
            parts = reason_parts(reply.error.reason)
            what = f"{parts[0]} (site reference {parts[1]})" if parts else reply.error.reason
            self.say(f"round {rnd} {kind} failed: {what}; the cause is logged above")
        elif kind == "train":
            self.say(f"round {rnd} trained: {train_line(reply.content['metrics'])}")
        elif kind == "evaluate":
            self.say(f"round {rnd} evaluated: {evaluate_line(reply.content['metrics'])}")
        if kind == "evaluate" and rounds and rnd >= rounds:
            self.say(f"run {context.run_id} finished: round {rnd} of {rounds}")
            if self.marker is not None:
                self.marker.touch()
            self.finished.set()


def train_line(m) -> str:
    """The reply as sent: under DP, time, FM images and loss stayed in the site's log."""
    parts = []
    if "seconds" in m:
        parts += [f"{m['seconds']:.1f} s", f"{int(m.get('fm-queries', 0))} FM queries"]
    if "train-loss" in m:
        parts.append(f"loss {m['train-loss']:.4f}")
    if "epsilon" in m:
        parts.append(f"epsilon {m['epsilon']:.2f} (delta {m.get('delta', 0.0):g})")
        if "seconds" not in m:
            parts.append("its size, time, FM images and loss not sent (DP; in the log above)")
    return ", ".join(parts)


def evaluate_line(m) -> str:
    return (
        f"Dice {m.get('dice', float('nan')):.3f} (zero-shot {m.get('zero-shot-dice', 0.0):.3f}, "
        f"global decoder {m.get('global-dice', 0.0):.3f}) on {int(m.get('num-examples', 0))} "
        "test cases"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node-config", type=Path, required=True)
    ap.add_argument("--address", required=True, help="unix:PATH to serve the ClientApp at")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    node_config = tomllib.loads(args.node_config.read_text())
    lines = RoundLines(str(node_config.get("site-name", "site")), finished_marker(args.address))
    start = time.perf_counter()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from sites.relay import serve
    from sites.site_app import site_app, warm_up

    try:
        spec, cases = warm_up(node_config)
    except Exception as err:  # a bad data path or FM spec: said here, before any round
        lines.say(f"cannot start: {err}")
        return 2
    lines.say(
        f"ready in {time.perf_counter() - start:.1f} s: {cases} cases ({spec.data}), FM {spec.fm}"
    )
    server = serve(args.address, site_app, lines)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not (stop.is_set() or lines.finished.is_set()):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    server.stop(grace=10.0).wait()  # the last reply finishes leaving first
    return 0


if __name__ == "__main__":
    sys.exit(main())
