"""What the attacker rebuilds of a site from what the coordinator saw, per upload kind.

- ``dense``: the site's updates. With the global decoder each round started from, they give
  the site's shared decoder after every round (its start point is the global one, or with
  personal-keep the mix with its own decoder of the round before, which the updates give too).
- ``seeds``: the site's K scalars per step. Replayed with the public seeds (the coordinator's own
  ``SiteReplica``), they give the same shared decoder and also the site's private head, which
  never leaves the site in any other form.

The models come from the run config alone (the decoder architecture and its frozen encoder are
public): the attacker takes them from a shadow site object of its own, then queries the FM
through them (``candidates.candidate_losses``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baps_fed.federation.contract import FedTrainConfig, start_point
from baps_fed.federation.local_site import LocalSite
from baps_fed.federation.replica import SiteReplica
from baps_fed.method.ip_decoder import IPDecoder
from baps_fed.method.private_head import WithPrivateHead
from baps_fed.privacy_audit.site_runs import SiteRecord

UPLOAD_VIEWS = ("dense", "seeds")


@dataclass
class AttackerModels:
    """The public architecture: the shared decoder alone, and with a private head."""

    decoder: IPDecoder
    full: IPDecoder | WithPrivateHead
    n_private: int

    @classmethod
    def of(cls, site: LocalSite) -> AttackerModels:
        """The attacker's copies, taken from a site object of its own (a shadow site)."""
        return cls(site.decoder, site.model, site.model.num_params - site.decoder.num_params)


def dense_view(record: SiteRecord, cfg: FedTrainConfig) -> np.ndarray:
    """The site's shared decoder after its last round, from its dense uploads."""
    own = None
    for theta_global, update in zip(record.globals, record.dense, strict=True):
        own = start_point(theta_global, own, cfg.personal_keep) + update
    if own is None:
        raise ValueError(f"site {record.name!r} sent nothing to rebuild")
    return own.astype(np.float32)


def seeds_view(record: SiteRecord, cfg: FedTrainConfig, n_private: int) -> np.ndarray:
    """The site's shared decoder and private head after its last round, replayed from its
    seed-and-scalar uploads."""
    replica = SiteReplica(record.name, n_private)
    for server_round, theta_global, blob in zip(
        record.rounds, record.globals, record.seeds, strict=True
    ):
        replica.replay_round(theta_global, server_round, blob, cfg)
    if replica.personal is None:
        raise ValueError(f"site {record.name!r} sent nothing to rebuild")
    private = replica.private if replica.private is not None else np.zeros(n_private)
    return np.concatenate([replica.personal, private]).astype(np.float32)


def view_model(
    kind: str, record: SiteRecord, cfg: FedTrainConfig, models: AttackerModels
) -> tuple[IPDecoder | WithPrivateHead, np.ndarray]:
    """(model, weights) through which the attacker of this upload kind queries the FM."""
    if kind == "dense":
        return models.decoder, dense_view(record, cfg)
    if kind == "seeds":
        return models.full, seeds_view(record, cfg, models.n_private)
    raise ValueError(f"upload view must be one of {', '.join(UPLOAD_VIEWS)}, got {kind!r}")
