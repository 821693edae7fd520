"""Per-client use of the FM service: metering, quotas, rate limits, and the metering file.

The vendor bills and limits by client (the name in the tokens file). Usage is kept in memory,
written to a JSON file periodically and on shutdown (atomically: a reader never sees half a
file), and read back at start, so a quota holds across server restarts. ``seconds`` is the
client's share of FM compute time (a merged batch's time is split by images).

Metering file::

    {"format": "baps-fed-fm-metering/1", "fm": "tiny", "updated": "2025-...Z",
     "clients": {"hospital-a": {"calls": 12, "images": 96, "seconds": 1.2, "refused": 1}},
     "batching": {...}}
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from baps_fed.fm.service.tokens import ClientPolicy

FORMAT = "baps-fed-fm-metering/1"


class Refused(Exception):
    """A request over its client's quota ("quota") or rate limit ("rate")."""

    def __init__(self, kind: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s


@dataclass
class ClientUsage:
    calls: int = 0
    images: int = 0
    seconds: float = 0.0
    refused: int = 0


@dataclass
class _Bucket:
    """Token bucket in images: ``rate`` per second, holding at most one second's worth."""

    rate: float
    level: float
    stamp: float = field(default_factory=time.monotonic)

    def take(self, n: int) -> float:
        """0 if ``n`` images may go now (and takes them), else the seconds to wait."""
        now = time.monotonic()
        burst = max(self.rate, 1.0)
        self.level = min(burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(n, burst)  # a request bigger than a burst goes when the bucket is full
        if self.level >= need:
            self.level -= n  # may go negative: the debt is paid before the next request
            return 0.0
        return (need - self.level) / self.rate


class Ledger:
    """Thread-safe usage per client; ``admit`` before running, ``settle`` after."""

    def __init__(self, path: Path | None = None, fm_name: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.fm_name = fm_name
        self._lock = threading.Lock()
        self._usage: dict[str, ClientUsage] = {}
        self._reserved: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._dirty = False
        self.changed = threading.Event()  # set with every billable change: the writer wakes
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            clients = data["clients"]
            self._usage = {name: ClientUsage(**u) for name, u in clients.items()}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"metering file {path} is unreadable ({err}); move it away to start afresh "
                "(quotas then restart from zero)"
            ) from err

    def usage(self, name: str) -> ClientUsage:
        with self._lock:
            return ClientUsage(**asdict(self._usage.get(name, ClientUsage())))

    def admit(self, policy: ClientPolicy, n: int) -> None:
        """Reserve ``n`` images for ``policy``'s client, or raise ``Refused``."""
        name = policy.name
        with self._lock:
            used = self._usage.setdefault(name, ClientUsage())
            if policy.quota_images is not None:
                pending = self._reserved.get(name, 0)
                if used.images + pending + n > policy.quota_images:
                    used.refused += 1
                    self._dirty = True
                    self.changed.set()
                    raise Refused(
                        "quota",
                        f"quota of {policy.quota_images} images for client {name!r} reached "
                        f"({used.images} used, {pending} in flight, this call asks for {n}); "
                        "ask the FM provider to raise it",
                    )
            if policy.rate_images_per_s is not None:
                rate = policy.rate_images_per_s
                bucket = self._buckets.setdefault(name, _Bucket(rate, max(rate, 1.0)))
                wait = bucket.take(n)
                if wait > 0:
                    used.refused += 1
                    self._dirty = True
                    self.changed.set()
                    raise Refused(
                        "rate",
                        f"rate limit of {rate:g} images/s for client {name!r} exceeded; "
                        f"retry in {wait:.2f} s or send fewer images per second",
                        retry_after_s=wait,
                    )
            self._reserved[name] = self._reserved.get(name, 0) + n

    def settle(self, name: str, n: int, seconds: float, ok: bool) -> None:
        """Release a reservation; count it if the call succeeded."""
        with self._lock:
            self._reserved[name] = self._reserved.get(name, 0) - n
            if ok:
                used = self._usage.setdefault(name, ClientUsage())
                used.calls += 1
                used.images += n
                used.seconds += seconds
                self._dirty = True
                self.changed.set()

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {name: asdict(u) for name, u in sorted(self._usage.items())}

    def write(self, extra: dict | None = None, force: bool = False) -> None:
        """Write the metering file if anything changed (or ``force``), atomically."""
        if self.path is None:
            return
        with self._lock:
            if not (self._dirty or force):
                return
            self._dirty = False
        doc = {
            "format": FORMAT,
            "fm": self.fm_name,
            "updated": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "clients": self.snapshot(),
            **(extra or {}),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        # 0600: the file names the clients and what each asked for
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, self.path)


class MeteringWriter:
    """Writes the ledger from a daemon thread as soon as it changes (so an answer given just
    before a crash or a kill is billed too), at least every ``interval_s`` seconds for the
    service's statistics, and once at stop (SIGTERM/SIGINT end the service through it)."""

    def __init__(
        self, ledger: Ledger, interval_s: float, extra: Callable[[], dict] | None = None
    ) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.extra = extra or dict
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fm-metering", daemon=True)

    def start(self) -> None:
        if self.ledger.path is not None:
            self.ledger.write(self.extra(), force=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.ledger.changed.wait(self.interval_s)
            self.ledger.changed.clear()
            if self._stop.is_set():
                break
            try:
                self.ledger.write(self.extra())
            except OSError as err:  # a full disk must not take the service down
                print(f"fm serve: cannot write metering file {self.ledger.path}: {err}")

    def stop(self) -> None:
        self._stop.set()
        self.ledger.changed.set()  # wake the writer now
        if self._thread.is_alive():
            self._thread.join()
        self.ledger.write(self.extra(), force=True)
