"""FM service throughput: does a shared FM with micro-batching serve N sites faster?

    python simulations/bench_fm_service.py --clients 4 --requests 4 --batch 2 --repeats 3

C client threads (sites), each with its own ``GrpcFM``, send R requests of b images one after the
other, all sites at once. The same workload runs four ways, interleaved repeat by repeat (the
order rotates) so machine noise hits all alike:

  service_batched     one server, micro-batching on (max batch C*b images, --wait-ms)
  service_greedy      micro-batching with no wait: merges only what queued while the FM was busy
  service_unbatched   one server, micro-batching off (max batch 1: each request its own FM call)
  in_process          the same C threads calling one in-process FM directly (no service)
  single_*            one client alone, R requests: service (both servers) vs in-process, for
                      the service's own overhead per call (serialisation, loopback, the batch wait)

The FM is the shipped ``tiny`` FM if its weights exist, else a randomly initialised SAM of the
``tiny`` architecture (same compute; the results record which), or ``--fm SPEC``. Writes
simulations/results/fm_service.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from baps_fed.fm.contract import BlackboxFM
from baps_fed.fm.sam_batched import BatchedSam
from baps_fed.fm.sam_builder import SAM_ARCHITECTURES, build_sam
from baps_fed.fm.service.client import GrpcFM, GrpcFMOptions
from baps_fed.fm.service.server import FMServer, ServeConfig
from baps_fed.fm.spec import load_fm
from baps_fed.fm.tiny import default_weights_path
from baps_fed.fm.torch_fm import TorchSamFM


def _bench_fm(spec: str | None, device: str) -> tuple[BlackboxFM, str]:
    if spec:
        return load_fm(spec, device=device), spec
    if default_weights_path().is_file():
        return load_fm("tiny", device=device), "tiny (shipped weights)"
    torch.manual_seed(0)
    sam = build_sam(SAM_ARCHITECTURES["tiny"]).eval()
    fm = TorchSamFM(BatchedSam(sam), "tiny-random", device=device)
    return fm, "tiny architecture, random weights"


def _workload(clients: int, requests: int, batch: int, size: int, seed: int) -> list[list]:
    """Per client, per request: (images uint8 [b,S,S,3], points float32 [b,1,2])."""
    rng = np.random.default_rng(seed)
    return [
        [
            (
                rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
                rng.uniform(0, size, (batch, 1, 2)).astype(np.float32),
            )
            for _ in range(requests)
        ]
        for _ in range(clients)
    ]


def _run_clients(fms: list[BlackboxFM], work: list[list]) -> float:
    """Wall seconds for every client thread to send all its requests, all starting together."""
    barrier = threading.Barrier(len(fms) + 1)
    errors: list[BaseException] = []

    def site(fm: BlackboxFM, requests: list) -> None:
        try:
            barrier.wait()
            for images, points in requests:
                fm.segment(images, points)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=site, args=(fm, w)) for fm, w in zip(fms, work, strict=True)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fm", default=None, help="FM spec (default: tiny, or a random tiny)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=4, help="requests per client per round")
    ap.add_argument("--batch", type=int, default=2, help="images per request")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--wait-ms", type=float, default=5.0, help="micro-batching wait")
    ap.add_argument("--png", action="store_true", help="clients send PNG-compressed images")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--device", default="cpu", help="torch device of the FM (cpu, cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("simulations/results/fm_service"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other work on the machine skews every mode alike

    fm, fm_source = _bench_fm(args.fm, args.device)
    c, r, b = args.clients, args.requests, args.batch
    work = _workload(c, r, b, args.size, args.seed)
    n_all, n_one = c * r * b, r * b
    batched = FMServer(fm, ServeConfig(port=0, max_batch=c * b, batch_wait_ms=args.wait_ms))
    greedy = FMServer(fm, ServeConfig(port=0, max_batch=c * b, batch_wait_ms=0))
    unbatched = FMServer(fm, ServeConfig(port=0, max_batch=1, batch_wait_ms=0))
    servers = {"batched": batched, "greedy": greedy, "unbatched": unbatched}
    for s in servers.values():
        s.start()
    try:
        opts = GrpcFMOptions(png=args.png, dtype=args.dtype, deadline_s=600, retries=2)
        remotes = {
            k: [GrpcFM(f"127.0.0.1:{s.port}", opts) for _ in range(c)] for k, s in servers.items()
        }
        modes: dict[str, Callable[[], float]] = {
            "service_batched": lambda: _run_clients(remotes["batched"], work),
            "service_greedy": lambda: _run_clients(remotes["greedy"], work),
            "service_unbatched": lambda: _run_clients(remotes["unbatched"], work),
            "in_process": lambda: _run_clients([fm] * c, work),
            "single_service_batched": lambda: _run_clients(remotes["batched"][:1], work[:1]),
            "single_service_unbatched": lambda: _run_clients(remotes["unbatched"][:1], work[:1]),
            "single_in_process": lambda: _run_clients([fm], work[:1]),
        }
        # Same answers through the service as in process, else the timings compare nothing.
        images, points = work[0][0]
        ref = fm.segment(images, points)
        max_diff = float(np.abs(remotes["batched"][0].segment(images, points) - ref).max())
        for run in modes.values():  # warm-up: connections, allocator, first-call costs
            run()
        before = batched.stats()
        times: dict[str, list[float]] = {k: [] for k in modes}
        names = list(modes)
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                times[name].append(modes[name]())
            print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(
                f"{k} {times[k][-1]:.2f}s" for k in names
            ), flush=True)  # fmt: skip
        after = batched.stats()
        for rs in remotes.values():
            for remote in rs:
                remote.close()
    finally:
        for s in servers.values():
            s.stop(grace_s=5)

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: (n_one if k.startswith("single") else n_all) / v for k, v in med.items()}
    result = {
        "fm": fm_source,
        "clients": c,
        "requests_per_client": r,
        "images_per_request": b,
        "image_size": args.size,
        "wait_ms": args.wait_ms,
        "max_batch_batched": c * b,
        "png": args.png,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": args.device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "load_average_1min_before": load_before,
        "images_per_s": ips,
        "speedup_batched_vs_unbatched": med["service_unbatched"] / med["service_batched"],
        "speedup_greedy_vs_unbatched": med["service_unbatched"] / med["service_greedy"],
        "speedup_batched_vs_in_process": med["in_process"] / med["service_batched"],
        "single_client_overhead_batched": med["single_service_batched"] / med["single_in_process"],
        "single_client_overhead_unbatched": (
            med["single_service_unbatched"] / med["single_in_process"]
        ),
        "batched_server_calls_in_timed_runs": {
            "fm_calls": after.fm_calls - before.fm_calls,
            "requests": after.requests - before.requests,
            "merged_calls": after.merged_calls - before.merged_calls,
        },
        "max_abs_logit_diff_service_vs_in_process": max_diff,
        "seconds": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    calls = result["batched_server_calls_in_timed_runs"]
    md = (
        f"# FM service throughput ({fm_source}; {c} clients x {r} requests x {b} images of "
        f"{args.size}x{args.size}; {args.device}, {args.threads} torch threads; "
        f"median of {args.repeats}, interleaved; {os.cpu_count()} CPUs, "
        f"load {load_before:.1f} before)\n\n"
        "| mode | images/s |\n|---|---|\n"
        + "".join(f"| {k} | {v:.1f} |\n" for k, v in ips.items())
        + f"\nMicro-batching vs batching off ({c} concurrent clients): "
        f"**{result['speedup_batched_vs_unbatched']:.2f}x** ({args.wait_ms:g} ms wait), "
        f"{result['speedup_greedy_vs_unbatched']:.2f}x (no wait); batched vs {c} threads "
        f"calling the FM in process: {result['speedup_batched_vs_in_process']:.2f}x.\n"
        f"Single-client time through the service / in process: "
        f"{result['single_client_overhead_batched']:.2f}x with a {args.wait_ms:g} ms batch "
        f"wait, {result['single_client_overhead_unbatched']:.2f}x without.\n"
        f"Batched server in timed runs: {calls['requests']} requests in {calls['fm_calls']} FM "
        f"calls ({calls['merged_calls']} merged). Max |logit| difference service vs in process: "
        f"{max_diff:.2e}.\n"
    )
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
