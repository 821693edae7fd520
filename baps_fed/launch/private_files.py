"""Folders and files only this account may read: every one that names data, keys, tokens or
runs (a coordinator's run folder, a site's ``--out``, its node config, the logs, the certs).

The launchers create their own files with these helpers, and start every process with umask
0o077 (``PRIVATE_UMASK``, ``processes.ProcessGroup``), so what Flower's processes and our apps
write there (the state database, the checkpoint, the report) is private too.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077  # new folders 0700, new files 0600


def private_dir(path: Path) -> Path:
    """``path`` as a folder of mode 0700 (made private if it existed already)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` with mode 0600 (an existing file is made private first)."""
    payload = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(payload)
    return path


def open_private_log(path: Path, text: bool = False):
    """``path`` opened for appending, created with mode 0600 (a log that names the run)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a" if text else "ab")
