"""``baps-fed fm serve | tokens``: an FM as a shared black-box service (flag defaults:
``ServeConfig``), and a token per hospital for it."""

from __future__ import annotations

import argparse
from pathlib import Path

from baps_fed.federation.contract import SiteSpec
from baps_fed.fm.service.server import ServeConfig


def _cmd_fm_serve(args: argparse.Namespace) -> int:
    from baps_fed.fm.service.server import serve

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


def _cmd_fm_tokens(args: argparse.Namespace) -> int:
    from baps_fed.launch.shared_fm import site_token_files

    files = site_token_files(args.out, args.sites)
    print(f"  {args.out / 'tokens.toml'}  (the service's: fm serve --tokens)")
    for site, path in files.items():
        print(
            f"  {path}  (give it to {site}: --fm 'grpc://HOST:PORT?tls_ca=ca.crt&token_file=...')"
        )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    fm = sub.add_parser("fm", help="the foundation model as a shared service")
    fm_sub = fm.add_subparsers(dest="fm_command", required=True)
    p = fm_sub.add_parser(
        "serve",
        help="serve an FM as a black box over gRPC (sites use --fm grpc://HOST:PORT)",
        description="Serve an FM over gRPC until SIGTERM/SIGINT, then finish in-flight requests.",
    )
    p.add_argument(
        "--fm", default=SiteSpec.fm, help="FM spec to serve: tiny | sam:vit_b:PATH | ..."
    )
    p.add_argument("--device", default="cpu", help="torch device for the FM (cpu, cuda, ...)")
    p.add_argument("--host", default=ServeConfig.host, help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=ServeConfig.port, help="0 picks a free port")
    p.add_argument("--tls-cert", type=Path, help="PEM server certificate (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--tokens",
        type=Path,
        help="TOML/JSON tokens file: [[client]] name, token, quota_images, rate_images_per_s "
        "(see baps_fed/fm/service/tokens.py); without it the service is open",
    )
    p.add_argument("--metering", type=Path, help="per-client usage JSON (read back at start)")
    p.add_argument(
        "--metering-interval-s",
        type=float,
        default=ServeConfig.metering_interval_s,
        help="--metering is written on each answered request and at least every this many "
        "seconds (the service's statistics)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=ServeConfig.max_message_mb,
        help="largest request/reply",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=ServeConfig.max_batch,
        help="most images per FM call (1: off)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=ServeConfig.batch_wait_ms,
        help="longest wait to merge requests",
    )
    p.add_argument(
        "--workers", type=int, default=ServeConfig.workers, help="request-handler threads"
    )
    p.add_argument(
        "--grace-s", type=float, default=ServeConfig.grace_s, help="drain time at shutdown"
    )
    p.set_defaults(func=_cmd_fm_serve)

    p = fm_sub.add_parser(
        "tokens",
        help="a random token per hospital for fm serve --tokens (0600 files, one each)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for tokens.toml and tokens/")
    p.add_argument("sites", nargs="+", help="the hospitals' names (their names in metering)")
    p.set_defaults(func=_cmd_fm_tokens)
