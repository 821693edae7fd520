"""Flower's SuperExec for ``baps-fed coordinator``, handing each task its token in a file.

Flower 1.42's SuperExec starts the ServerApp as ``flwr-serverapp ... --token TOKEN``: the
token, which lets its holder act as the run's ServerApp, is then in the process list that
every local account can read (``ps``). This one starts it with ``--token-file FILE``
instead (a flag ``flwr-serverapp`` has), the file 0600 in a 0700 folder given in
``BAPS_FED_TOKEN_DIR``, removed once the process has ended. Everything else is Flower's own
``flower-superexec``: run as ``python -m coordinator.superexec`` with its arguments. A
hospital's SuperNode (``sites/supernode.py``) starts it too, for its ClientApps
(``flwr-clientapp`` has the same flag), and ``baps-fed simulate`` for ``flwr-simulation``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
from pathlib import Path

import flwr.supercore.superexec.run_superexec as flower_run_superexec
from flwr.supercore.cli.flower_superexec import flower_superexec
from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from baps_fed.launch.flower_cli import TOKEN_DIR_ENV
from baps_fed.launch.processes import become_subreaper


class TokenFileExecutor(SubprocessExecutor):
    """Flower's subprocess executor, with the token in a private file instead of argv."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: set[int] = set()  # its tasks' PIDs, until each has ended

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        path = self.folder / f"task-{spec.task_id}-{secrets.token_hex(4)}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(spec.token)
        args = [
            TASK_TYPE_TO_COMMAND[spec.task_type],
            TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
            spec.runtime_api_address,
            "--token-file",
            str(path),
        ]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            args += ["--parent-pid", str(spec.parent_pid)]
        if spec.runtime_dependency_install:
            args.append("--allow-runtime-dependency-installation")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        proc = subprocess.Popen(args, **(quiet if spec.suppress_output else {}))
        self.running.add(proc.pid)
        threading.Thread(target=self._remove_when_ended, args=(proc, path), daemon=True).start()
        return LaunchResult.accepted()

    def _remove_when_ended(self, proc: subprocess.Popen, path: Path) -> None:
        proc.wait()
        self.running.discard(proc.pid)
        path.unlink(missing_ok=True)


def main() -> None:
    folder = Path(os.environ[TOKEN_DIR_ENV])
    if folder.stat().st_mode & 0o077:
        raise SystemExit(f"{folder}: the token folder must be private (mode 0700)")
    executor = TokenFileExecutor(folder)
    # its tasks' orphans stay its children, so stopping it (by PID, with its tree) ends them
    become_subreaper(own=lambda: set(executor.running))
    # Flower 1.42 picks its executor in run_superexec by this name; ours keeps argv clean
    flower_run_superexec.get_executor = lambda *args, **kwargs: executor
    flower_superexec()


if __name__ == "__main__":
    main()
