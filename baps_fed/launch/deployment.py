"""``baps-fed coordinator`` and ``baps-fed site``: the federation across real hospitals,
on Flower's deployment engine (SuperLink at the coordinator, one SuperNode per hospital).

The coordinator starts a SuperLink (TLS and node authentication by default; a persistent state
database in its folder), registers the hospitals' public keys, submits this app with
``flwr run`` and streams its progress; the report lands in the same folder. A site starts a
SuperNode with its node config (data path, FM spec, name): its data never leaves it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from baps_fed.launch.flower_cli import (
    CONNECTION,
    TlsFiles,
    flwr,
    flwr_run,
    start_fleet_gateway,
    start_superlink,
    write_connection,
)
from baps_fed.launch.processes import ProcessGroup, flower_env, free_port


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
    """Start the SuperLink, register nodes, run the app to its end; returns flwr run's status."""
    tls = tls_files(s.certs) if s.certs is not None else None
    if tls is None and s.node_auth:
        raise ValueError(
            "node authentication needs TLS: give --certs, or --insecure --no-node-auth"
        )
    s.folder.mkdir(parents=True, exist_ok=True)
    home = s.folder / "flwr_home"
    own = group is None
    group = group or ProcessGroup()
    try:
        # the SuperLink (every Flower API) on loopback; the public port is the Fleet gateway
        address = start_superlink(
            group, home, free_port(), s.folder / "superlink.log", simulation=False,
            database=s.folder / "superlink.db", tls=tls, node_auth=s.node_auth,
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


@dataclass
class SiteSettings:
    superlink: str  # host:port of the coordinator's SuperLink
    node_config: dict  # data, site-name, fm, n, seed, scanner, layout
    folder: Path  # logs and the node-config file
    ca_cert: Path | None = None  # None = --insecure
    private_key: Path | None = None  # the hospital's node key (node authentication)
    port: int = 0  # the SuperNode's local API port (0: a free one)


def start_site(s: SiteSettings, group: ProcessGroup) -> subprocess.Popen:
    """Start the hospital's SuperNode in ``group``; returns its process."""
    s.folder.mkdir(parents=True, exist_ok=True)
    node_config = s.folder / "node_config.toml"
    node_config.write_text(tomli_w.dumps(s.node_config))
    cmd = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", s.superlink]
    if s.ca_cert is None:
        cmd.append("--insecure")
    else:
        if not s.ca_cert.is_file():
            raise FileNotFoundError(f"{s.ca_cert}: the coordinator's CA certificate is missing")
        cmd += ["--root-certificates", str(s.ca_cert)]
    if s.private_key is not None:
        if not s.private_key.is_file():
            raise FileNotFoundError(f"{s.private_key}: this hospital's node key is missing")
        cmd += ["--auth-supernode-private-key", str(s.private_key)]
    cmd += ["--node-config", str(node_config), "--port", str(s.port or free_port())]
    return group.start(
        f"supernode {s.node_config.get('site-name', '')}",
        cmd,
        flower_env(s.folder / "flwr_home"),
        s.folder / "supernode.log",
    )


NOT_REGISTERED = "Failed to activate SuperNode"  # Flower's message when the key is unknown


def supervise_site(s: SiteSettings, group: ProcessGroup, retry_s: float = 15.0) -> int:
    """Run the SuperNode until it ends; while the coordinator has not registered this
    hospital's key (or is not up yet), restart it every ``retry_s`` seconds."""
    log = s.folder / "supernode.log"
    while True:
        start = log.stat().st_size if log.is_file() else 0
        proc = start_site(s, group)
        status = proc.wait()
        with open(log, "rb") as f:
            f.seek(start)
            tail = f.read().decode(errors="replace")
        if status == 0 or NOT_REGISTERED not in tail:
            return status
        print(
            f"site {s.node_config.get('site-name')}: the coordinator refused or did not answer "
            f"(not registered yet?); retrying in {retry_s:.0f} s",
            flush=True,
        )
        group.forget(proc)
        time.sleep(retry_s)
