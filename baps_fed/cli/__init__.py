"""The ``baps-fed`` command: one module per group of commands (single_site, federation, fm,
privacy_audit)."""

from __future__ import annotations

import argparse
import os
import sys

# Our commands serve gRPC (the FM service, the site's process) and start Flower's processes,
# which exec at once: gRPC's fork handlers have nothing to protect and only log that they skip.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from baps_fed.cli import federation, fm, privacy_audit, single_site


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="baps-fed", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for group in (single_site, federation, fm, privacy_audit):
        group.add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # the flags the user typed (a resumed run compares only those with what it ran with)
    args.given_flags = {a.split("=")[0] for a in argv if a.startswith("--")}
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"baps-fed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"baps-fed {args.command}: interrupted; every process it started was stopped")
        return 130
