"""What a site keeps between rounds and never sends: its optimiser state, private head, own
decoder and privacy ledger.

One stored form (``to_arrays``: a flat dict of numpy arrays) serves every carrier: the Flower
ClientApp's ``context.state``, the in-process federation, and a file on the site's disk
(``save_site_state``), one per run, written atomically after every round and readable by the
site's user only. A restarted site continues from it: its SPSA step count, private head and own
decoder, and its privacy ledger, so the epsilon it has spent is never forgotten.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baps_fed.federation.contract import RoundResult
from baps_fed.method.spsa import SpsaState

_SPSA = "spsa."


@dataclass
class SiteState:
    spsa: SpsaState | None = None  # None before the site's first round
    private: np.ndarray | None = None  # the private head's parameters
    personal: np.ndarray | None = None  # the site's own shared-shape decoder (personal-keep)
    privacy: list[tuple[float, float, int]] | None = None  # the accountant's history

    @classmethod
    def after(cls, result: RoundResult) -> SiteState:
        """The state a round leaves behind."""
        return cls(result.state, result.private, result.personal, result.privacy)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        if self.spsa is not None:
            arrays |= {_SPSA + k: v for k, v in self.spsa.to_arrays().items()}
        if self.private is not None:
            arrays["private"] = np.asarray(self.private, np.float32)
        if self.personal is not None:
            arrays["personal"] = np.asarray(self.personal, np.float32)
        if self.privacy is not None:
            arrays["privacy"] = np.array(self.privacy, np.float64).reshape(-1, 3)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SiteState:
        spsa = {k[len(_SPSA) :]: v for k, v in arrays.items() if k.startswith(_SPSA)}
        privacy = arrays.get("privacy")
        return cls(
            SpsaState.from_dict(spsa) if spsa else None,
            arrays.get("private"),
            arrays.get("personal"),
            None if privacy is None else [(s, q, int(n)) for s, q, n in privacy],
        )


RUN_KEY = "run-key"  # the coordinator's name for its run, sent with every message
_RUN_KEY_FORM = re.compile(r"^[0-9a-f]{16,64}$")


def state_path(state_dir: Path, run_key: str, server_round: int) -> Path:
    """The site's state after one round of one run; the key comes from the coordinator, so it
    is checked before it names a file."""
    if not _RUN_KEY_FORM.match(run_key):
        raise ValueError(f"run key {run_key!r} is not a hex name; refusing it as a file name")
    return Path(state_dir) / f"run-{run_key}-round-{server_round:05d}.npz"


class SiteStateStore:
    """A site's states of one run on disk, one file per completed round.

    A restarted coordinator may send a round again (it died before checkpointing it): the site
    then trains it from the state *before* that round, as the first time, while its privacy
    ledger keeps every round it has released (what left the site stays spent)."""

    def __init__(self, state_dir: Path, run_key: str) -> None:
        self.dir, self.key = Path(state_dir), run_key
        state_path(self.dir, run_key, 0)  # checks the key

    def _rounds(self) -> list[int]:
        prefix = f"run-{self.key}-round-"
        return sorted(
            int(p.name[len(prefix) : -len(".npz")])
            for p in self.dir.glob(f"{prefix}*.npz")
            if p.name[len(prefix) : -len(".npz")].isdigit()
        )

    def _load(self, server_round: int) -> SiteState | None:
        return load_site_state(state_path(self.dir, self.key, server_round))

    def before(self, server_round: int) -> SiteState:
        """The state to train ``server_round`` from."""
        rounds = self._rounds()
        earlier = [r for r in rounds if r < server_round]
        state = (self._load(earlier[-1]) if earlier else None) or SiteState()
        if rounds and rounds[-1] >= server_round:  # a round sent again: its epsilon stays spent
            latest = self._load(rounds[-1])
            state.privacy = latest.privacy if latest is not None else state.privacy
        return state

    def after(self, server_round: int) -> SiteState:
        """The state a round left (what the site evaluates with)."""
        done = [r for r in self._rounds() if r <= server_round]
        return (self._load(done[-1]) if done else None) or SiteState()

    def save(self, server_round: int, state: SiteState) -> None:
        """Keep this round's state and the newest one before it: the round may be sent again
        (``before``), and a site that missed rounds trained it from an older round than the
        one just before it. Older states are deleted."""
        save_site_state(state_path(self.dir, self.key, server_round), state)
        earlier = [r for r in self._rounds() if r < server_round]
        for r in earlier[:-1]:
            state_path(self.dir, self.key, r).unlink(missing_ok=True)


def save_site_state(path: Path, state: SiteState) -> None:
    """Atomically (a crash leaves the last round's file) and readable by the site only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **state.to_arrays())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_site_state(path: Path) -> SiteState | None:
    """The state a site saved for this run (None when it has none). A damaged file is refused:
    continuing without it would forget the epsilon already spent."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return SiteState.from_arrays({k: z[k] for k in z.files})
    except Exception as err:
        raise ValueError(
            f"{path}: the site's saved state is unreadable ({type(err).__name__}); the site "
            "will not continue without its privacy ledger: restore the file, or move it away "
            "to start this run over at this site"
        ) from err
