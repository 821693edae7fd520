"""The ``baps-fed`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from baps_fed.data.modalities import MODALITIES

DEFAULT_SITES = MODALITIES  # one site per synthetic modality in the default scenario


def _cmd_make_data(args: argparse.Namespace) -> int:
    from baps_fed.data.sources import write_synthetic_site

    n = write_synthetic_site(args.modality, args.out, args.n, args.seed, args.scanner, args.size)
    print(f"wrote {n} image/mask pairs to {args.out} (generic layout: images/ + masks/)")
    return 0


def _zero_shot_rows(
    fm_spec: str, sources: list[str], n: int, seed: int, scanner: int, layout: str
) -> list[dict]:
    from baps_fed.data.sources import open_source
    from baps_fed.evaluation import evaluate_fm
    from baps_fed.fm.spec import load_fm

    # Real images are letterboxed to 128 px, the size training and evaluation use too.
    datasets = [
        open_source(s, n=n, seed=seed, scanner=scanner, layout=layout, size=128) for s in sources
    ]
    fm = load_fm(fm_spec)  # after the data: a wrong path should fail before any model loads
    rows = []
    for source, ds in zip(sources, datasets, strict=True):
        for p in ds.problems:
            print(f"  {p.path}: {p.reason} ({p.action})", file=sys.stderr)
        rows.append({"data": source, **evaluate_fm(fm, ds, point_seed=seed).summary()})
    return rows


def _print_table(rows: list[dict]) -> None:
    print(f"{'data':<14} {'n':>5} {'Dice':>7} {'±':>6} {'IoU':>7} {'HD95':>7}")
    for r in rows:
        print(
            f"{r['data']:<14} {r['n']:>5} {r['dice']:7.3f} {r['dice_std']:6.3f} "
            f"{r['iou']:7.3f} {r['hd95']:7.1f}"
        )


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    rows = _zero_shot_rows(args.fm, args.data, args.n, args.seed, args.scanner, args.layout)
    _print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _report_run(command: str, status: int, out: Path) -> int:
    """The end of a federated run: the per-site table and the report's path, or the failure."""
    from baps_fed.fed_report import format_table

    table = out / "final_table.json"
    if status != 0 or not table.is_file():
        print(f"baps-fed {command}: the run failed (status {status}); see {out / 'run.log'}")
        return status or 1
    print(format_table(json.loads(table.read_text())["rows"]))
    print(f"report: {out / 'report.md'}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    import datetime as dt

    from baps_fed.simulate import Scenario, run_simulation

    _sigterm_as_interrupt()
    scenario = Scenario.load(args.scenario)
    if args.sites is not None:
        scenario = scenario.with_site_count(args.sites)
    if args.rounds is not None:
        scenario.rounds = args.rounds
    if args.local_steps is not None:
        scenario.train["local-steps"] = args.local_steps
    if args.n is not None:
        for site in scenario.sites:
            site["n"] = args.n
    out = args.out or Path("runs") / f"simulate-{dt.datetime.now():%Y%m%d-%H%M%S}"
    print(
        f"baps-fed simulate: {len(scenario.sites)} sites, {scenario.rounds} rounds of "
        f"{scenario.train.get('local-steps', 10)} local SPSA steps; run folder {out}",
        flush=True,
    )
    server = None
    fm = args.fm
    try:
        if args.shared_fm:
            from baps_fed.fm.service.server import FMServer, ServeConfig
            from baps_fed.fm.spec import load_fm

            server = FMServer(load_fm(args.fm or "tiny"), ServeConfig(host="127.0.0.1", port=0))
            fm = f"grpc://127.0.0.1:{server.start()}"
            print(f"shared FM service for all sites at {fm}", flush=True)
        status = run_simulation(scenario, out, fm=fm)
    finally:
        if server is not None:
            stats = server.stats()
            server.stop()
            print(
                f"FM service: {stats.fm_calls} FM calls for {stats.requests} requests "
                f"({stats.merged_calls} merged several sites' requests); stopped",
                flush=True,
            )
    return _report_run("simulate", status, out)


def _cmd_certs(args: argparse.Namespace) -> int:
    from baps_fed.certs import make_pilot_certs

    files = make_pilot_certs(args.out, args.hosts, args.nodes, args.days)
    for f in files:
        print(f"  {f}")
    print(
        f"give each hospital {args.out / 'ca.crt'} and its nodes/NAME key; keep ca.key and "
        "server.key at the coordinator"
    )
    return 0


def _run_config_from_args(args: argparse.Namespace) -> dict:
    config = {"rounds": args.rounds, "min-sites": args.min_sites, "resume": args.resume}
    if args.local_steps is not None:
        config["local-steps"] = args.local_steps
    if args.round_timeout is not None:
        config["round-timeout"] = args.round_timeout
    for item in args.config:
        key, _, value = item.partition("=")
        if not value:
            raise ValueError(f"--config {item!r}: expected KEY=VALUE (a run-config key)")
        config[key] = _toml_value(value)
    return config


def _toml_value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from baps_fed.deploy import CoordinatorSettings, run_coordinator

    if args.insecure == (args.certs is not None):
        raise ValueError("give --certs DIR (TLS, the default for pilots) or --insecure")
    _sigterm_as_interrupt()
    settings = CoordinatorSettings(
        folder=args.out,
        certs=args.certs,
        node_keys=args.register,
        node_auth=not args.no_node_auth and not args.insecure,
        host=args.host,
        port=args.port,
        run_config=_run_config_from_args(args),
    )
    return _report_run("coordinator", run_coordinator(settings), args.out)


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so every process we started is stopped on the way out."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _cmd_site(args: argparse.Namespace) -> int:
    from baps_fed.deploy import SiteSettings, supervise_site
    from baps_fed.processes import ProcessGroup

    if args.insecure == (args.ca is not None):
        raise ValueError("give --ca ca.crt (the coordinator's CA) or --insecure")
    node_config = {"data": args.data, "site-name": args.name, "fm": args.fm}
    node_config.update({"n": args.n, "seed": args.seed, "scanner": args.scanner})
    node_config["layout"] = args.layout
    # this hospital's privacy policy, used when the run turns DP on
    node_config |= {"dp-epsilon-budget": args.dp_epsilon_budget, "dp-delta": args.dp_delta}
    settings = SiteSettings(
        superlink=args.superlink,
        node_config=node_config,
        folder=args.out,
        ca_cert=args.ca,
        private_key=args.key,
        port=args.port,
    )
    _sigterm_as_interrupt()
    with ProcessGroup() as group:
        print(
            f"site {args.name}: SuperNode started for {args.superlink}; "
            f"log {args.out / 'supernode.log'}"
        )
        try:
            return supervise_site(settings, group)
        except KeyboardInterrupt:
            print(f"site {args.name}: stopping")
            return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from coordinator.audit import audit_run

    result = audit_run(args.run_dir)
    print(f"audit {args.run_dir}: {'verified' if result.ok else 'FAILED'}: {result.message}")
    return 0 if result.ok else 1


def _cmd_fm_serve(args: argparse.Namespace) -> int:
    from baps_fed.fm.service.server import ServeConfig, serve

    config = ServeConfig(
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tokens=args.tokens,
        metering=args.metering,
        metering_interval_s=args.metering_interval_s,
        max_message_mb=args.max_message_mb,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        workers=args.workers,
        grace_s=args.grace_s,
    )
    return serve(args.fm, config, device=args.device)


def _add_fm_commands(sub: argparse._SubParsersAction) -> None:
    fm = sub.add_parser("fm", help="the foundation model as a shared service")
    fm_sub = fm.add_subparsers(dest="fm_command", required=True)
    p = fm_sub.add_parser(
        "serve",
        help="serve an FM as a black box over gRPC (sites use --fm grpc://HOST:PORT)",
        description="Serve an FM over gRPC until SIGTERM/SIGINT, then finish in-flight requests.",
    )
    p.add_argument("--fm", default="tiny", help="FM spec to serve: tiny | sam:vit_b:PATH | ...")
    p.add_argument("--device", default="cpu", help="torch device for the FM (cpu, cuda, ...)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--tls-cert", type=Path, help="PEM server certificate (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--tokens",
        type=Path,
        help="TOML/JSON tokens file: [[client]] name, token, quota_images, rate_images_per_s "
        "(see baps_fed/fm/service/tokens.py); without it the service is open",
    )
    p.add_argument("--metering", type=Path, help="per-client usage JSON (read back at start)")
    p.add_argument("--metering-interval-s", type=float, default=10.0)
    p.add_argument("--max-message-mb", type=float, default=64.0, help="largest request/reply")
    p.add_argument("--max-batch", type=int, default=16, help="most images per FM call (1: off)")
    p.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="longest wait to merge requests"
    )
    p.add_argument("--workers", type=int, default=32, help="request-handler threads")
    p.add_argument("--grace-s", type=float, default=30.0, help="drain time at shutdown")
    p.set_defaults(func=_cmd_fm_serve)


def _train_config(args: argparse.Namespace):
    from baps_fed.train import StepConfig, TrainConfig
    from baps_fed.zoo import GeassConfig, SpsaConfig

    spsa = SpsaConfig(
        sp_avg=args.sp_avg,
        c=args.c,
        lr=args.lr,
        schedule=args.schedule,
        beta=args.beta,
        update=args.update,
    )
    step = StepConfig(
        batch_size=args.batch, loss=args.loss, spsa=spsa, geass=GeassConfig(enabled=args.geass)
    )
    return TrainConfig(
        steps=args.steps,
        val_every=args.val_every,
        seed=args.seed,
        target_grey=args.target_grey,
        step=step,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from baps_fed.data.sources import open_source
    from baps_fed.decoder import DecoderConfig, build_decoder, load_decoder
    from baps_fed.fm.spec import load_fm
    from baps_fed.single_site import print_comparison, run_training

    last = args.out / "checkpoints" / "last.pt"
    if args.resume and last.is_file():  # the decoder as it was trained, not as the flags say
        decoder, _ = load_decoder(last)
    else:
        decoder = build_decoder(
            DecoderConfig(
                preset=args.preset,
                vp_grid=args.vp_grid,
                init_seed=args.seed,
                image_encoder=args.image_encoder,
            )
        )
    dec_cfg = decoder.cfg
    data = open_source(
        args.data,
        n=args.n,
        seed=args.seed,
        scanner=args.scanner,
        layout=args.layout,
        size=dec_cfg.image_size,
    )
    fm = load_fm(args.fm, budget_images=args.budget)
    result, summary = run_training(
        decoder, fm, data, _train_config(args), args.out, resume=args.resume
    )
    print(
        f"stopped: {result.stopped}; FM image-queries: {result.fm_images_train} training, "
        f"{result.fm_images_val} validation"
    )
    print_comparison(summary["test"])
    print(f"run folder: {args.out} (report: {args.out / 'report.md'})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from baps_fed.data.sources import open_source
    from baps_fed.fm.spec import load_fm
    from baps_fed.single_site import print_comparison, run_evaluation

    data = open_source(
        args.data, n=args.n, seed=args.seed, scanner=args.scanner, layout=args.layout, size=128
    )
    result = run_evaluation(args.checkpoint, load_fm(args.fm), data, args.seed, args.split)
    print_comparison(result)
    return 0


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="synthetic modality name or a data folder")
    p.add_argument("--layout", default="auto")
    p.add_argument("--n", type=int, default=400, help="synthetic cases")
    p.add_argument("--scanner", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fm", default="tiny")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="baps-fed", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-data", help="write a synthetic site to disk (images/ + masks/)")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scanner", type=int, default=0, help="per-site acquisition profile")
    p.add_argument("--size", type=int, default=128)
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("zero-shot", help="Dice/IoU/HD95 of an FM with one positive point")
    p.add_argument(
        "--fm", default="tiny", help="FM spec: tiny | sam:vit_b:PATH | medsam:PATH | grpc://..."
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=list(DEFAULT_SITES),
        help="synthetic modality names, 'general', or data folders",
    )
    p.add_argument(
        "--layout", default="auto", help="auto | generic | isic2018 | kvasir | busi | optic_disc"
    )
    p.add_argument("--n", type=int, default=200, help="synthetic cases per source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scanner", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the table as JSON")
    p.set_defaults(func=_cmd_zero_shot)

    p = sub.add_parser("train", help="single-site BAPS: train the IP decoder with SPSA")
    _add_data_args(p)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--preset", default="basis", choices=["basis", "paper", "vp"])
    p.add_argument("--vp-grid", type=int, default=4, help="vp preset: 3 x g x g prompt")
    p.add_argument(
        "--image-encoder",
        default="small",
        help="the decoder's frozen image encoder: small (shipped) or clip:[MODEL:]PATH, CLIP's "
        "image tower from local open_clip weights (pip install 'baps-fed[clip]')",
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sp-avg", type=int, default=5, help="K perturbations per step")
    p.add_argument("--update", default="sign", choices=["raw", "sign", "normalized"])
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--schedule", default="constant", choices=["baps", "blackvip", "constant"])
    p.add_argument("--beta", type=float, default=0.4, help="momentum correction")
    p.add_argument("--c", type=float, default=0.01, help="used when --target-grey is 0")
    p.add_argument(
        "--target-grey",
        type=float,
        default=3.0,
        help="perturbation size in grey levels at the FM input (0: use --c)",
    )
    p.add_argument("--loss", default="dice", choices=["dice", "bce", "focal"])
    p.add_argument("--geass", action="store_true", help="SPSA-GEASS strikes")
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="FM image-queries for training and validation (test counted apart)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="zero-shot vs a trained decoder on a test split")
    _add_data_args(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("simulate", help="the multi-site federation on Flower's simulation runtime")
    from baps_fed.simulate import DEFAULT_SCENARIO

    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="scenario TOML")
    p.add_argument("--sites", type=int, help="number of sites (default: the scenario's)")
    p.add_argument("--rounds", type=int, help="federated rounds (default: the scenario's)")
    p.add_argument("--local-steps", type=int, help="SPSA steps per site and round")
    p.add_argument("--n", type=int, help="synthetic cases per site (default: the scenario's)")
    p.add_argument(
        "--fm", default=None, help="FM spec for every site (default: each site's, else tiny)"
    )
    p.add_argument("--out", type=Path, help="run folder (default: runs/simulate-TIMESTAMP)")
    p.add_argument(
        "--shared-fm",
        action="store_true",
        help="start one gRPC FM service that every site queries; stop it at the end",
    )
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("certs", help="CA, server certificate and node keys for a pilot")
    p.add_argument("--out", type=Path, required=True, help="new folder for the files")
    p.add_argument("--nodes", nargs="+", required=True, help="hospital names (one key each)")
    p.add_argument(
        "--hosts", nargs="*", default=[], help="coordinator host names/IPs for its certificate"
    )
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=_cmd_certs)

    p = sub.add_parser(
        "coordinator", help="start the SuperLink, submit the federation and write its report"
    )
    p.add_argument("--out", type=Path, required=True, help="coordinator folder (state, report)")
    p.add_argument("--certs", type=Path, help="folder of ca.crt, server.crt, server.key")
    p.add_argument("--insecure", action="store_true", help="no TLS (tests and demos only)")
    p.add_argument("--no-node-auth", action="store_true", help="accept unregistered nodes")
    p.add_argument(
        "--register", type=Path, nargs="*", default=[], help="hospitals' public keys (NAME.pub)"
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=9093)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-sites", type=int, default=2, help="sites a round waits for")
    p.add_argument("--local-steps", type=int)
    p.add_argument("--round-timeout", type=float, help="seconds a round waits for replies")
    p.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    p.add_argument(
        "--config", nargs="*", default=[], help="more run-config KEY=VALUE (see pyproject.toml)"
    )
    p.set_defaults(func=_cmd_coordinator)

    p = sub.add_parser("site", help="run one hospital's SuperNode (its data stays here)")
    p.add_argument("--superlink", required=True, help="the coordinator's HOST:PORT")
    p.add_argument("--ca", type=Path, help="the coordinator's ca.crt")
    p.add_argument("--insecure", action="store_true", help="no TLS (tests and demos only)")
    p.add_argument("--key", type=Path, help="this hospital's private node key (nodes/NAME)")
    p.add_argument("--name", required=True, help="this hospital's name in reports")
    p.add_argument("--data", required=True, help="data folder or synthetic modality")
    p.add_argument("--layout", default="auto")
    p.add_argument("--fm", default="tiny", help="FM spec this site queries")
    p.add_argument("--n", type=int, default=200, help="synthetic cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scanner", type=int, default=0)
    p.add_argument(
        "--dp-epsilon-budget",
        type=float,
        default=float("inf"),
        help="the most epsilon this site spends over a DP run; it declines rounds past it",
    )
    p.add_argument("--dp-delta", type=float, default=1e-5, help="this site's DP delta")
    p.add_argument("--port", type=int, default=0, help="local SuperNode API port (0: free)")
    p.add_argument("--out", type=Path, default=Path("runs/site"), help="logs folder")
    p.set_defaults(func=_cmd_site)

    p = sub.add_parser("audit", help="rebuild a run's decoder from its audit log and check it")
    p.add_argument("run_dir", type=Path, help="the coordinator's run folder (--out)")
    p.set_defaults(func=_cmd_audit)

    _add_fm_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"baps-fed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"baps-fed {args.command}: interrupted; every process it started was stopped")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
