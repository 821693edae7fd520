"""One FM service for every site of a run on this machine (``baps-fed simulate --shared-fm``).

The FM is loaded once and served over gRPC as a vendor serves it to hospitals: TLS with a
certificate authority made for the run, and one token per site, so the service meters each
site apart and a site can only spend its own quota. Each site's FM spec names its CA and token
*files* (``grpc://127.0.0.1:PORT?tls_ca=...&token_file=...``), never the token itself, so the
run config (which the coordinator keeps) holds no secret.

Files, in the run folder's ``fm_service/`` (0700; every file 0600): ``ca.crt``, ``ca.key``,
``server.crt``, ``server.key``, ``tokens.toml`` (the service's), ``tokens/SITE`` (each site's
token), ``metering.json`` (the service's per-site usage, written as it changes).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from baps_fed.fm.service.server import FMServer, ServeConfig
from baps_fed.launch.certs import make_server_certs
from baps_fed.launch.private_files import private_dir, write_private

HOST = "127.0.0.1"
# seconds a site waits for one request: the service answers every site from one FM on the same
# CPU the sites train on, so a request may queue behind the others' (a CPU LiteMedSAM answers
# ~1 image/s; measured on a loaded 2-core machine, 8-image requests ran past 120 s)
DEADLINE_S = 600


@dataclass
class SharedFMService:
    """A started FM service and what each site needs to reach it."""

    server: FMServer
    specs: dict[str, str]  # site name -> its grpc:// FM spec (CA and token files)
    metering: Path

    def images_by_site(self) -> dict[str, int]:
        """Images the service answered for each site (its metering, authoritative)."""
        return {name: u["images"] for name, u in self.server.ledger.snapshot().items()}

    def stop(self) -> None:
        self.server.stop()


def site_token_files(folder: Path, sites: list[str]) -> dict[str, Path]:
    """A fresh random token per site in ``tokens/NAME`` (mode 0600) and the service's
    ``tokens.toml`` naming them (``baps-fed fm tokens``; give each hospital its file)."""
    if len(set(sites)) != len(sites):
        raise ValueError(f"site names must differ to get a token each, got {sites}")
    for site in sites:
        if not site.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"site name {site!r}: use letters, digits, '-', '_' and '.' only")
    if (folder / "tokens.toml").exists():
        raise FileExistsError(f"{folder / 'tokens.toml'} exists; tokens are never overwritten")
    tokens = {site: secrets.token_urlsafe(32) for site in sites}
    table = "".join(
        f"[[client]]\nname = {json.dumps(site)}\ntoken = {json.dumps(token)}\n\n"
        for site, token in tokens.items()
    )
    write_private(private_dir(folder) / "tokens.toml", table)
    private_dir(folder / "tokens")
    return {
        site: write_private(folder / "tokens" / site, token + "\n")
        for site, token in tokens.items()
    }


def start_shared_fm(fm, sites: list[str], folder: Path) -> SharedFMService:
    """Serve ``fm`` (a loaded BlackboxFM) to ``sites`` on 127.0.0.1 with TLS and a token each."""
    private_dir(folder)
    make_server_certs(folder, [HOST])
    token_files = site_token_files(folder, sites)
    config = ServeConfig(
        host=HOST,
        port=0,
        tls_cert=folder / "server.crt",
        tls_key=folder / "server.key",
        tokens=folder / "tokens.toml",
        metering=folder / "metering.json",
    )
    server = FMServer(fm, config)
    port = server.start()
    specs = {
        site: f"grpc://{HOST}:{port}?"
        + urlencode(
            {
                "tls_ca": folder.resolve() / "ca.crt",
                "token_file": path.resolve(),
                "deadline": DEADLINE_S,
            }
        )
        for site, path in token_files.items()
    }
    return SharedFMService(server, specs, config.metering)  # type: ignore[arg-type]


def site_counts(rounds_json: Path) -> dict[str, int | None]:
    """The FM images each site reported over a run (train and evaluate, every round), from the
    coordinator's ``rounds.json``: what the service's metering must add up to. None for a site
    that did not report them (under DP its training count stays home)."""
    counts: dict[str, int | None] = {}
    for entry in json.loads(rounds_json.read_text())["history"]:
        for phase in ("train", "evaluate"):
            for site, metrics in (entry.get(phase) or {}).items():
                known = counts.get(site, 0)
                if known is None or "fm-queries" not in metrics:
                    counts[site] = None
                else:
                    counts[site] = known + int(metrics["fm-queries"])
    return counts
