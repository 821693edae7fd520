"""``baps-fed simulate | certs | coordinator | site | audit``: the federation.

Flag defaults come from the dataclasses (``CoordinatorConfig``, ``SiteSpec``); run-config keys
given with ``--config`` are checked before anything starts (``federation.run_config``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from baps_fed.data.boxes import BOX_PROTOCOLS
from baps_fed.data.prompts import PROMPT_KINDS
from baps_fed.federation.checkpoint import check_run_folder
from baps_fed.federation.contract import SiteSpec
from baps_fed.federation.coordinator_config import CoordinatorConfig
from baps_fed.federation.run_config import dashed, read_run_config
from baps_fed.federation.scenario import DEFAULT_SCENARIO


def sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so every process we started is stopped on the way out."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _report_run(command: str, status: int, out: Path) -> int:
    """The end of a federated run: the per-site table and the report's path, or the failure."""
    from baps_fed.evaluation.federation_report import format_table

    table = out / "final_table.json"
    if status != 0 or not table.is_file():
        print(f"baps-fed {command}: the run failed; its log: {out / 'run.log'}")
        return status or 1
    print(format_table(json.loads(table.read_text())["rows"]))
    print(f"report: {out / 'report.md'}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    import datetime as dt

    from baps_fed.data.sources import SYNTHETIC_SOURCES
    from baps_fed.federation.scenario import Scenario
    from baps_fed.launch.simulation import run_simulation

    sigterm_as_interrupt()
    scenario = Scenario.load(args.scenario)
    if args.sites is not None:
        scenario = scenario.with_site_count(args.sites)
    if args.rounds is not None:
        scenario.rounds = args.rounds
    if args.local_steps is not None:
        scenario.train["local-steps"] = args.local_steps
    if args.prompt is not None:
        scenario.train["prompt"] = args.prompt
    if args.box_protocol is not None:
        scenario.train["box-protocol"] = args.box_protocol
    if args.n is not None:
        for site in scenario.sites:
            site["n"] = args.n
    if args.group_by is not None:
        for site in scenario.sites:
            if site["data"] not in SYNTHETIC_SOURCES:  # only folders have a manifest
                site["group-by"] = args.group_by
    out = args.out or Path("runs") / f"simulate-{dt.datetime.now():%Y%m%d-%H%M%S}"
    check_run_folder(out, False, args.overwrite)
    if args.overwrite:
        scenario.coordinator["overwrite"] = True
    scenario.check(out, args.fm)  # every setting, before any process starts
    print(
        f"baps-fed simulate: {len(scenario.sites)} sites, {scenario.rounds} rounds of "
        f"{scenario.train.get('local-steps', 10)} local SPSA steps; run folder {out}",
        flush=True,
    )
    service = None
    fm = args.fm
    try:
        if args.shared_fm:
            service = _start_shared_fm(args.fm or "tiny", scenario, out)
            fm = service.specs
        status = run_simulation(scenario, out, fm=fm)
    finally:
        if service is not None:
            service.stop()
            _report_shared_fm(service, out)
    return _report_run("simulate", status, out)


def _start_shared_fm(spec: str, scenario, out: Path):
    from baps_fed.fm.spec import load_fm
    from baps_fed.launch.shared_fm import start_shared_fm

    sites = [s["name"] for s in scenario.sites]
    service = start_shared_fm(load_fm(spec), sites, out / "fm_service")
    port = service.server.port
    print(
        f"shared FM service ({spec}) for all {len(sites)} sites at 127.0.0.1:{port}: TLS, one "
        f"token per site; metering in {service.metering}",
        flush=True,
    )
    return service


def _report_shared_fm(service, out: Path) -> None:
    """The service's per-site metering beside what each site reported (they must agree)."""
    from baps_fed.launch.private_files import write_private
    from baps_fed.launch.shared_fm import site_counts

    stats, billed = service.server.stats(), service.images_by_site()
    rounds = out / "rounds.json"
    reported = site_counts(rounds) if rounds.is_file() else {}
    rows = {s: {"service": billed.get(s, 0), "site": reported.get(s)} for s in service.specs}
    write_private(out / "fm_service_usage.json", json.dumps(rows, indent=2) + "\n")
    print(
        f"FM service: {stats.fm_calls} FM calls for {stats.requests} requests "
        f"({stats.merged_calls} merged several sites' requests); stopped",
        flush=True,
    )
    for site, row in rows.items():
        said = "not reported (DP)" if row["site"] is None else row["site"]
        agree = "" if row["site"] in (None, row["service"]) else "  <- DIFFERS"
        print(f"  {site}: service billed {row['service']} images, site reported {said}"
              f"{agree}", flush=True)  # fmt: skip


def _cmd_certs(args: argparse.Namespace) -> int:
    from baps_fed.launch.certs import make_pilot_certs

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
    config["overwrite"] = args.overwrite
    if args.local_steps is not None:
        config["local-steps"] = args.local_steps
    if args.round_timeout is not None:
        config["round-timeout"] = args.round_timeout
    for item in args.config:
        key, _, value = item.partition("=")
        if not value:
            raise ValueError(f"--config {item!r}: expected KEY=VALUE (a run-config key)")
        config[key] = _toml_value(value)
    read_run_config(config, "--config")  # every key and value, before anything starts
    return dashed(config)  # Flower knows each key in its dashed form only


def _toml_value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from baps_fed.launch.deployment import CoordinatorSettings, run_coordinator

    if args.insecure == (args.certs is not None):
        raise ValueError("give --certs DIR (TLS, the default for pilots) or --insecure")
    run_config = _run_config_from_args(args)
    check_run_folder(args.out, args.resume, args.overwrite)  # before any process starts
    sigterm_as_interrupt()
    settings = CoordinatorSettings(
        folder=args.out,
        certs=args.certs,
        node_keys=args.register,
        node_auth=not args.no_node_auth and not args.insecure,
        host=args.host,
        port=args.port,
        run_config=run_config,
    )
    return _report_run("coordinator", run_coordinator(settings), args.out)


def _cmd_site(args: argparse.Namespace) -> int:
    from baps_fed.launch.processes import ProcessGroup
    from baps_fed.launch.site import SiteSettings, check_site_files, run_site

    if args.insecure == (args.ca is not None):
        raise ValueError("give --ca ca.crt (the coordinator's CA) or --insecure")
    if args.insecure and args.key is not None:
        raise ValueError(
            "--key (node authentication) needs TLS: give --ca ca.crt instead of --insecure"
        )
    check_site_files(args.ca, args.key)  # before the FM and the data load
    node_config = {"data": args.data, "site-name": args.name, "fm": args.fm}
    node_config.update({"n": args.n, "seed": args.seed, "scanner": args.scanner})
    node_config |= {"layout": args.layout, "subset": args.subset, "group-by": args.group_by}
    # this hospital's privacy policy, used when the run turns DP on
    node_config |= {"dp-epsilon-budget": args.dp_epsilon_budget, "dp-delta": args.dp_delta}
    # how its clinicians draw boxes (only what is set: unset keeps the run's)
    habit = {
        "box-margin": args.box_margin,
        "box-jitter": args.box_jitter,
        "box-bias": args.box_bias,
    }
    node_config |= {k: v for k, v in habit.items() if v not in (None, "")}
    # its state between rounds, one file per run: a restarted site continues from it
    node_config["state-dir"] = str((args.out / "state").resolve())
    settings = SiteSettings(
        superlink=args.superlink,
        node_config=node_config,
        folder=args.out,
        ca_cert=args.ca,
        private_key=args.key,
        port=args.port,
        threads=args.threads,
        stay=args.stay,
    )
    sigterm_as_interrupt()
    with ProcessGroup() as group:
        print(f"site {args.name}: starting for {args.superlink}; log {args.out / 'supernode.log'}")
        try:
            return run_site(settings, group)
        except KeyboardInterrupt:
            print(f"site {args.name}: stopping")
            return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from baps_fed.federation.audit import audit_run

    result = audit_run(args.run_dir)
    print(f"audit {args.run_dir}: {'verified' if result.ok else 'FAILED'}: {result.message}")
    return 0 if result.ok else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    coord, site = CoordinatorConfig, SiteSpec
    p = sub.add_parser("simulate", help="the multi-site federation on Flower's simulation runtime")
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="scenario TOML")
    p.add_argument("--sites", type=int, help="number of sites (default: the scenario's)")
    p.add_argument("--rounds", type=int, help="federated rounds (default: the scenario's)")
    p.add_argument("--local-steps", type=int, help="SPSA steps per site and round")
    p.add_argument("--n", type=int, help="synthetic cases per site (default: the scenario's)")
    p.add_argument(
        "--fm", default=None, help="FM spec for every site (default: each site's, else tiny)"
    )
    p.add_argument(
        "--prompt", choices=PROMPT_KINDS, help="point or box (default: the scenario's, else point)"
    )
    p.add_argument("--box-protocol", choices=BOX_PROTOCOLS, help="tight or loose boxes")
    p.add_argument(
        "--group-by",
        help="a manifest.csv column whose groups every folder site's splits keep whole "
        "(default: each [[site]]'s group-by)",
    )
    p.add_argument("--out", type=Path, help="run folder (default: runs/simulate-TIMESTAMP)")
    p.add_argument(
        "--shared-fm",
        action="store_true",
        help="serve --fm once over gRPC (TLS, a token per site) for every site; stop it at the "
        "end and compare its metering with the sites' counts",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run OUT holds")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("certs", help="CA, server certificate and node keys for a pilot")
    p.add_argument("--out", type=Path, required=True, help="new folder for the files")
    p.add_argument("--nodes", nargs="+", required=True, help="hospital names (one key each)")
    p.add_argument(
        "--hosts", nargs="*", default=[], help="coordinator host names/IPs for its certificate"
    )
    p.add_argument("--days", type=int, default=365, help="how long the certificates are valid")
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
    p.add_argument("--port", type=int, default=9093, help="the public port sites connect to")
    p.add_argument("--rounds", type=int, default=coord.rounds, help="federated rounds")
    p.add_argument("--min-sites", type=int, default=coord.min_sites, help="sites a round waits for")
    p.add_argument(
        "--local-steps",
        type=int,
        help="SPSA steps per site and round (default: the run config's local-steps)",
    )
    p.add_argument("--round-timeout", type=float, help="seconds a round waits for replies")
    p.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run the folder holds")
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
    p.add_argument(
        "--layout",
        default=site.layout,
        help="the data folder's layout: auto (detected) | generic | isic2018 | kvasir | busi | "
        "optic_disc (docs/data.md)",
    )
    p.add_argument(
        "--subset",
        default=site.subset,
        help="part of the data folder by its manifest.csv, e.g. 'sequence=1,2,3' or "
        "'quality=good' (docs/data.md)",
    )
    p.add_argument(
        "--group-by",
        default=site.group_by,
        help="a manifest.csv column (e.g. sequence, patient) whose groups the site's splits keep "
        "whole",
    )
    p.add_argument("--fm", default=site.fm, help="FM spec this site queries")
    p.add_argument("--n", type=int, default=site.n, help="synthetic cases")
    p.add_argument("--seed", type=int, default=site.seed, help="seed of the synthetic cases")
    p.add_argument(
        "--scanner", type=int, default=site.scanner, help="synthetic data: the scanner profile"
    )
    p.add_argument(
        "--dp-epsilon-budget",
        type=float,
        default=site.dp_epsilon_budget,
        help="the most epsilon this site spends over a DP run; it declines rounds past it",
    )
    p.add_argument("--dp-delta", type=float, default=site.dp_delta, help="this site's DP delta")
    p.add_argument(
        "--box-margin",
        type=float,
        default=site.box_margin,
        help="this hospital's loose boxes: each side out by this fraction (default: the run's)",
    )
    p.add_argument(
        "--box-jitter",
        type=float,
        default=site.box_jitter,
        help="this hospital's loose boxes: +- this jitter per side (default: the run's)",
    )
    p.add_argument(
        "--box-bias",
        default=site.box_bias,
        help='this hospital\'s habit per side, "left,top,right,bottom" fractions of the box, '
        '+ = outwards (e.g. "0,0.2,0,-0.1": draws high); needs prompt box, box-protocol loose',
    )
    p.add_argument("--port", type=int, default=0, help="local SuperNode API port (0: free)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of this site's computation (default: all cores; with several sites "
        "on one machine, give each its share)",
    )
    p.add_argument(
        "--stay", action="store_true", help="after a run ends, wait for the next (default: exit)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/site"), help="logs and the site's state (state/)"
    )
    p.set_defaults(func=_cmd_site)

    p = sub.add_parser("audit", help="rebuild a run's decoder from its audit log and check it")
    p.add_argument("run_dir", type=Path, help="the coordinator's run folder (--out)")
    p.set_defaults(func=_cmd_audit)
