"""Run this project's Flower app with Flower's own commands (no Flower import here).

``flower-superlink`` (simulation or deployment), ``flower-supernode`` and ``flwr run`` are
started as processes in a ``ProcessGroup``; a private FLWR_HOME per run holds the connection,
so runs never see each other's or the user's ``~/.flwr``.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from baps_fed.launch.private_files import (
    PRIVATE_UMASK,
    open_private_log,
    private_dir,
    write_private,
)
from baps_fed.launch.processes import (
    ProcessGroup,
    child_options,
    flower_env,
    require_free_port,
    wait_http_ok,
)

CONNECTION = "baps-fed"


def app_dir() -> Path:
    """The folder whose pyproject.toml declares the Flower app (the repository root)."""
    spec = importlib.util.find_spec("sites")
    if spec is None or spec.origin is None:
        raise RuntimeError("the 'sites' package is not importable: install baps-fed (make test)")
    root = Path(spec.origin).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise RuntimeError(
            f"{root}: no pyproject.toml with [tool.flwr.app]; run baps-fed from a clone "
            "installed with 'pip install -e .' (the Makefile does this)"
        )
    return root


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def write_connection(home: Path, address: str, ca_cert: Path | None) -> None:
    private_dir(home)
    conn: dict = {"address": address}
    if ca_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca_cert.resolve())
    config = {"superlink": {"default": CONNECTION, CONNECTION: conn}}
    write_private(home / "config.toml", tomli_w.dumps(config))


def start_superlink(
    group: ProcessGroup,
    home: Path,
    port: int,
    log: Path,
    simulation: bool,
    database: Path | None,
    tls: TlsFiles | None = None,
    node_auth: bool = False,
    host: str = "127.0.0.1",
    timeout_s: float = 60.0,
    private: Path | None = None,
) -> str:
    """Start a SuperLink and wait until its HTTP API answers; returns its address. With a
    ``private`` folder (the coordinator's): one that answers this account only, whose
    SuperExec hands each task its token in a file there (``start_superexec``)."""
    require_free_port(host, port)
    if private is None:
        cmd = [str(Path(sys.executable).parent / "flower-superlink")]
    else:  # flower-superlink's arguments, served behind coordinator/superlink.py's guard
        cmd = [sys.executable, "-m", "coordinator.superlink", "--isolation", "process"]
        cmd += ["--superexec-auth-secret-file", str(_superexec_secret(private))]
    cmd += ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if simulation:
        cmd.append("--simulation")
    if database is not None:
        cmd += ["--database", str(database)]
    if tls is None:
        if node_auth:
            raise ValueError("node authentication needs TLS: give certificates or drop it")
        cmd.append("--insecure")
    else:
        cmd += [
            "--ssl-ca-certfile", str(tls.ca_cert),
            "--ssl-certfile", str(tls.server_cert),
            "--ssl-keyfile", str(tls.server_key),
        ]  # fmt: skip
        if node_auth:
            cmd.append("--enable-supernode-auth")
    proc = group.start("superlink", cmd, flower_env(home), log)
    scheme = "http" if tls is None else "https"
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "127.0.0.1") else host
    wait_http_ok(f"{scheme}://{probe_host}:{port}/health", proc, timeout_s, log)
    address = f"{probe_host}:{port}"
    if private is not None:
        start_superexec(group, home, address, tls, private, log)
    return address


TOKEN_DIR_ENV = "BAPS_FED_TOKEN_DIR"  # where coordinator/superexec.py writes task tokens


def _superexec_secret(private: Path) -> Path:
    """A fresh shared secret (0600): Flower's SuperLink then hands tasks (and their tokens)
    only to a SuperExec that signs its requests with it."""
    return write_private(private_dir(private) / "superexec.secret", secrets.token_bytes(32))


def start_superexec(
    group: ProcessGroup, home: Path, address: str, tls: TlsFiles | None, private: Path, log: Path
) -> None:
    """The SuperExec that starts the ServerApp for each run (``coordinator/superexec.py``),
    signing with ``private``'s secret; the tokens go to files in ``private/tokens``."""
    cmd = [sys.executable, "-m", "coordinator.superexec", "--runtime-api-address", address]
    cmd += ["--insecure"] if tls is None else ["--root-certificates", str(tls.ca_cert)]
    cmd += ["--superexec-auth-secret-file", str(private / "superexec.secret")]
    env = {**flower_env(home), TOKEN_DIR_ENV: str(private_dir(private / "tokens"))}
    group.start("superexec", cmd, env, log)


def start_fleet_gateway(
    group: ProcessGroup,
    upstream: str,
    host: str,
    port: int,
    tls: TlsFiles | None,
    log: Path,
    timeout_s: float = 60.0,
) -> None:
    """The coordinator's public port (``fleet_gateway``): Fleet API only, forwarded to the
    loopback SuperLink at ``upstream``; waits until it answers."""
    require_free_port(host, port)
    cmd = [sys.executable, "-m", "baps_fed.launch.fleet_gateway", "--host", host]
    cmd += ["--port", str(port), "--upstream", upstream]
    if tls is not None:
        cmd += ["--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key)]
        cmd += ["--ca-certfile", str(tls.ca_cert)]
    proc = group.start("fleet gateway", cmd, dict(os.environ), log)
    scheme = "http" if tls is None else "https"
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "127.0.0.1") else host
    wait_http_ok(f"{scheme}://{probe_host}:{port}/health", proc, timeout_s, log)


def flwr(home: Path, args: Sequence[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """A short ``flwr`` CLI command (register a node, list runs) with our FLWR_HOME."""
    cmd = [str(Path(sys.executable).parent / "flwr"), *args]
    return subprocess.run(
        cmd, env=flower_env(home), capture_output=True, text=True, timeout=timeout_s,
        umask=PRIVATE_UMASK,
    )  # fmt: skip


def flwr_run(
    group: ProcessGroup,
    home: Path,
    run_config: dict,
    log: Path,
    federation_config: str | None = None,
    echo: bool = True,
    superlink_log: Path | None = None,
) -> int:
    """``flwr run APP --stream`` with the run config written to a TOML file; streams the
    run's output to the terminal (when ``echo``) and to ``log``; returns its exit status, or 1
    when the ServerApp refused the run (Flower's CLI exits 0 then). When the SuperLink refuses
    the run config (Flower says only "Invalid run configuration"), the key it names in
    ``superlink_log`` is said too, with the closest valid one."""
    overrides = write_private(log.with_name("run_config.toml"), tomli_w.dumps(run_config))
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(app_dir()), CONNECTION]
    cmd += ["--stream", "--run-config", str(overrides)]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    proc = subprocess.Popen(
        cmd,
        env=flower_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **child_options(),
    )
    group.adopt("flwr run", proc, log)
    from baps_fed.federation.coordinator_config import REFUSAL

    refused = app_refused = False
    with open_private_log(log, text=True) as f:
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            refused |= INVALID_RUN_CONFIG in line
            app_refused |= REFUSAL in line
            if echo and _worth_echoing(line):
                print(line.rstrip(), flush=True)
    status = proc.wait()
    if refused and superlink_log is not None:
        reason = refused_key(superlink_log)
        print(f"the SuperLink refused the run config: {reason}", flush=True)
        with open(log, "a") as f:
            f.write(f"the SuperLink refused the run config: {reason}\n")
    return status or int(refused or app_refused)  # a refused run is a failed one


INVALID_RUN_CONFIG = "Invalid run configuration"  # all Flower's CLI says (its error code 15)
_NOT_PRESENT = re.compile(r"Key '([^']*)' is not present")  # what its SuperLink logs


def refused_key(superlink_log: Path) -> str:
    """Why the SuperLink refused a run config, from its log: the key, and the closest valid."""
    from baps_fed.federation.run_config import run_config_keys

    text = superlink_log.read_text(errors="replace") if superlink_log.is_file() else ""
    keys = _NOT_PRESENT.findall(text)
    if not keys:
        return f"see {superlink_log} ('Could not start run')"
    key = keys[-1]
    close = difflib.get_close_matches(key.replace("_", "-"), sorted(run_config_keys()), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "see pyproject.toml's [tool.flwr.app.config]"
    return f"unknown key {key!r}; {hint}"


def _worth_echoing(line: str) -> bool:
    """Our own progress lines and errors; Flower's and Ray's INFO chatter stays in the log."""
    text = line.strip()
    if not text:
        return False
    if "ERROR" in text or "Error" in text or "Traceback" in text:
        return True
    return not any(tag in text for tag in ("INFO", "WARNING", "warnings.warn", "DEBUG"))
