"""Membership-inference attacks: from per-candidate losses to "member" scores.

- ``loss_attack``: the loss-threshold attack (Yeom et al. 2018): a low loss under the model the
  attacker rebuilt means "member". Candidates of several sites are pooled, so each site's losses
  are first centred on their median over that site's candidates (label-free: the attacker knows
  the candidates, not which are members), lest one modality's easier images pass for members.
- ``reference_attack``: the likelihood-ratio attack with reference models (LiRA, Carlini et al.
  S&P 2022), online, with a global variance (their choice for few reference models): for each
  candidate, the mean of its statistic over shadow sites trained with it and over those trained
  without it; the score is the log-ratio of the two Gaussians at the target's value.

The statistic is the negated training loss: higher = fits better.
"""

from __future__ import annotations

import numpy as np


def loss_attack(losses: np.ndarray, site_of: np.ndarray) -> np.ndarray:
    """Scores: minus each candidate's loss, centred per site on the site's median loss."""
    losses, site_of = np.asarray(losses, np.float64), np.asarray(site_of)
    scores = -losses.copy()
    for site in np.unique(site_of):
        at = site_of == site
        scores[at] += np.median(losses[at])
    return scores


def reference_attack(
    target_losses: np.ndarray, shadow_losses: np.ndarray, shadow_in: np.ndarray
) -> np.ndarray:
    """LiRA scores from the target's losses [n] and the shadows' [shadows, n] with their
    membership [shadows, n]. A candidate with no "in" (or no "out") shadow gets the mean
    in-out shift of the others added to (taken from) its one side."""
    t = -np.asarray(target_losses, np.float64)
    s = -np.asarray(shadow_losses, np.float64)
    inside = np.asarray(shadow_in, bool)
    if s.shape != inside.shape or s.shape[1:] != t.shape or s.shape[0] < 1:
        raise ValueError(
            f"shadow statistics {s.shape} and flags {inside.shape} must be [shadows, {t.size}]"
        )
    n_in, n_out = inside.sum(0), (~inside).sum(0)
    mu_in = np.where(inside, s, 0).sum(0) / np.maximum(n_in, 1)
    mu_out = np.where(~inside, s, 0).sum(0) / np.maximum(n_out, 1)
    both = (n_in > 0) & (n_out > 0)
    shift = float(np.mean(mu_in[both] - mu_out[both])) if both.any() else 0.0
    mu_in = np.where(n_in > 0, mu_in, mu_out + shift)
    mu_out = np.where(n_out > 0, mu_out, mu_in - shift)
    resid = np.where(inside, s - mu_in, s - mu_out)
    var = float(np.mean(resid**2)) if s.shape[0] > 2 else 0.0
    if not var > 0:  # one shadow per side: the spread of the statistic across candidates
        var = float(np.var(s)) or 1.0
    return ((t - mu_out) ** 2 - (t - mu_in) ** 2) / (2 * var)
