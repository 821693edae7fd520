"""Where a site's long-lived process serves its ClientApp: the node-config key that tells the
per-message relay (``sites/app.py``), and a fresh private address for it.

A Unix socket in a folder only this user may enter (mode 0700): only the site's own processes
can reach it, with no port and no token to leak. Kept free of torch and Flower: the launcher
and the relay both use it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

WORKER_KEY = "site-worker"  # node config: the site process's address (set by ``baps-fed site``)


def private_socket_address(folder: Path | None = None) -> str:
    """A fresh ``unix:`` address in a new folder of mode 0700 (a short path: a Unix socket's
    path is limited to about 100 characters)."""
    private = Path(tempfile.mkdtemp(prefix="baps-fed-site-", dir=folder))
    return f"unix:{private / 'worker.sock'}"


def socket_path(address: str) -> Path:
    return Path(address.removeprefix("unix:"))


def finished_marker(address: str) -> Path:
    """The file the site's process writes when it has seen its run's last round, before that
    round's reply leaves (so the launcher knows before the coordinator goes)."""
    return socket_path(address).parent / "run-finished"
