"""``baps-fed coordinator`` and ``baps-fed site``: the federation across real hospitals,
on Flower's deployment engine (SuperLink at the coordinator, one SuperNode per hospital).

The coordinator starts a SuperLink (TLS and node authentication by default; a persistent state
database in its folder), registers the hospitals' public keys, submits this app with
``flwr run`` and streams its progress; the report lands in the same folder. Its SuperLink
answers the coordinator's own account only (``coordinator/superlink.py``), its public port is
the Fleet gateway (``fleet_gateway``), and its folder is private (0700/0600). A site
(``baps_fed.launch.site``) starts a SuperNode with its node config (data path, FM spec, name):
its data never leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from baps_fed.federation.checkpoint import load_checkpoint
from baps_fed.launch.flower_cli import (
    CONNECTION,
    TlsFiles,
    flwr,
    flwr_run,
    start_fleet_gateway,
    start_superlink,
    write_connection,
)
from baps_fed.launch.private_files import private_dir
from baps_fed.launch.processes import ProcessGroup, free_port


@dataclass
class CoordinatorSettings:
    folder: Path  # state database, logs, FLWR_HOME, checkpoints and report
    certs: Path | None  # ca.crt, server.crt, server.key; None = --insecure
    node_keys: list[Path] = field(default_factory=list)  # public keys to register
    node_auth: bool = True
    host: str = "127.0.0.1"
    port: int = 9093
    run_config: dict = field(default_factory=dict)


def tls_files(certs: Path) -> TlsFiles:
    files = TlsFiles(certs / "ca.crt", certs / "server.crt", certs / "server.key")
    for f in (files.ca_cert, files.server_cert, files.server_key):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: make the pilot's files with baps-fed certs")
    return files


ALREADY_REGISTERED = "already in use"  # Flower's answer for a key its database holds


def register_nodes(home: Path, keys: list[Path]) -> None:
    for key in keys:
        if not key.is_file():
            raise FileNotFoundError(f"{key}: no such public key (baps-fed certs writes NAME.pub)")
        result = flwr(home, ["supernode", "register", str(key.resolve()), CONNECTION])
        if result.returncode != 0 and ALREADY_REGISTERED in result.stdout + result.stderr:
            print(f"{key.name} is registered already (a resumed run)", flush=True)
            continue
        if result.returncode != 0:
            raise RuntimeError(
                f"registering {key} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        print(f"registered {key.name}", flush=True)


def run_coordinator(s: CoordinatorSettings, group: ProcessGroup | None = None) -> int:
    """Start the SuperLink, register nodes, run the app to its end; returns flwr run's status.
    The run folder and all in it are this account's only (0700/0600); so is the SuperLink."""
    tls = tls_files(s.certs) if s.certs is not None else None
    if tls is None and s.node_auth:
        raise ValueError(
            "node authentication needs TLS: give --certs, or --insecure --no-node-auth"
        )
    if s.run_config.get("resume"):  # a damaged checkpoint, said before anything starts
        load_checkpoint(s.folder)
    private_dir(s.folder)
    home = s.folder / "flwr_home"
    own = group is None
    group = group or ProcessGroup()
    try:
        # the SuperLink (every Flower API) on loopback; the public port is the Fleet gateway
        address = start_superlink(
            group, home, free_port(), s.folder / "superlink.log", simulation=False,
            database=s.folder / "superlink.db", tls=tls, node_auth=s.node_auth,
            private=s.folder / "private",
        )  # fmt: skip
        start_fleet_gateway(group, address, s.host, s.port, tls, s.folder / "gateway.log")
        write_connection(home, address, tls.ca_cert if tls else None)
        auth = ", node authentication" if s.node_auth else ""
        mode = "TLS" if tls else "insecure"
        print(
            f"Fleet API on {s.host}:{s.port} ({mode}{auth}); the SuperLink's other APIs on "
            f"{address} only; folder {s.folder}",
            flush=True,
        )
        register_nodes(home, s.node_keys)
        run_config = {"out-dir": str(s.folder.resolve()), **s.run_config}
        return flwr_run(
            group, home, run_config, s.folder / "run.log",
            superlink_log=s.folder / "superlink.log",
        )  # fmt: skip
    finally:
        if own:
            group.stop()
