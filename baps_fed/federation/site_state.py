"""What a site keeps between rounds and never sends: its optimiser state, private head, own
decoder and privacy ledger.

One stored form (``to_arrays``: a flat dict of numpy arrays) serves every carrier: the Flower
ClientApp's ``context.state``, the in-process federation, a file on the site's disk.
"""

from __future__ import annotations

from dataclasses import dataclass

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
