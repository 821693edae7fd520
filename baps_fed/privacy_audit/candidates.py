"""The membership game's candidates: each site's cases, half of them its training set.

Members and non-members come from the same data: a site's cases (its whole source: synthetic
cases or its folder, every split) are shuffled with the audit's seed and cut in two; the first
half is what the site trains on in the audited run, the second half it never sees. The attacker
knows every candidate (image, mask) but not which half is which.

Each candidate is scored with one fixed prompt (``evaluation.sample_prompts``: a function of the
audit's seed and the case's name), by the loss the site trains with, through the FM prompted by
the model the attacker rebuilt (``views``): FM query access, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from baps_fed.data.manifest import group_values, restrict
from baps_fed.data.prompts import PromptConfig, Prompts
from baps_fed.data.sample import SegmentationDataset
from baps_fed.evaluation.evaluate import sample_prompts
from baps_fed.evaluation.metrics import LOSSES
from baps_fed.federation.contract import SiteSpec
from baps_fed.federation.local_site import open_site_source
from baps_fed.fm.contract import BlackboxFM
from baps_fed.method.ip_decoder import IPDecoder
from baps_fed.method.private_head import WithPrivateHead
from baps_fed.method.spsa_step import prompt_fn


@dataclass
class SitePool:
    """One site's candidates, which of them it trains on, and the prompt each is scored with."""

    spec: SiteSpec
    data: SegmentationDataset  # the candidates
    members: np.ndarray  # bool [n]: in the site's training set
    prompts: Prompts
    # [n]: the unit of membership each candidate belongs to, "site/case" or "site/patient"
    # (group-by): what a pooled audit resamples (pooled.py)
    units: list[str] = field(default_factory=list)

    @cached_property
    def images(self) -> np.ndarray:
        return np.stack([s.image for s in self.data])

    @cached_property
    def masks(self) -> np.ndarray:
        return np.stack([s.mask for s in self.data])

    def subset(self, keep: np.ndarray, name: str) -> SegmentationDataset:
        """The candidates flagged in ``keep``, as a dataset (a site's training split)."""
        return SegmentationDataset(name, [s for s, k in zip(self.data, keep, strict=True) if k])


def site_pool(
    spec: SiteSpec,
    prompting: PromptConfig,
    image_size: int,
    seed: int,
    max_candidates: int | None = None,
) -> SitePool:
    """The site's cases (at most ``max_candidates``, drawn at random), split half and half."""
    data = restrict(open_site_source(spec, image_size), spec.subset, spec.group_by)
    rng = np.random.default_rng([seed, len(data)])
    order = rng.permutation(len(data))[: max_candidates or len(data)]
    chosen = SegmentationDataset(spec.name, [data[int(i)] for i in order])
    # a patient's frames (group-by) fall on one side together: membership is the patient's
    groups = group_values(chosen, spec.group_by) if spec.group_by else [s.name for s in chosen]
    names = sorted(set(groups))
    inside = {names[int(i)] for i in rng.permutation(len(names))[: len(names) // 2]}
    members = np.array([g in inside for g in groups])
    if members.sum() < 2 or (~members).sum() < 2:
        raise ValueError(
            f"site {spec.name!r}: {len(chosen)} cases in {len(names)} groups in {spec.data!r}; "
            "the membership audit needs at least two members and two non-members: give it more "
            "cases (n, or more images in the folder)"
        )
    units = [f"{spec.name}/{g}" for g in groups]
    return SitePool(spec, chosen, members, sample_prompts(list(chosen), seed, prompting), units)


def candidate_losses(
    model: IPDecoder | WithPrivateHead,
    theta: np.ndarray,
    fm: BlackboxFM,
    pool: SitePool,
    loss: str,
    batch: int = 32,
) -> np.ndarray:
    """Each candidate's training loss through the FM, prompted by ``model`` at ``theta``."""
    apply = prompt_fn(model, np.asarray(theta, np.float32))  # type: ignore[arg-type]
    images, masks, out = pool.images, pool.masks, []
    for i in range(0, len(images), batch):
        sl = slice(i, i + batch)
        prompted, sent = apply(images[sl], pool.prompts[sl])
        out.append(LOSSES[loss](fm.segment(prompted, **sent.query()), masks[sl]))
    return np.concatenate(out)
