"""Acquisition functions over a discrete candidate set, and batch selection.

Scores are "higher is better". With all candidates enumerated, the analytic functions are a few
lines of numpy (BoTorch's versions optimise over continuous inputs, which a survey grid is not).
"""

from __future__ import annotations

import math

import numpy as np

from stemedge.steer.models import Model

__all__ = ["ACQUISITIONS", "scores", "select_batch"]

ACQUISITIONS = ("ucb", "ei", "maxvar", "ivr", "thompson")


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(z)


def scores(
    kind: str,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    best: float,
    beta: float = 2.0,
    xi: float = 0.01,
    model: Model | None = None,
    features: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    thompson_pool: int = 1024,
    ivr_pool: int = 2048,
    ivr_reference: int = 1024,
) -> np.ndarray:
    """The acquisition value of every candidate.

    - ``ucb``: mean + beta · std.
    - ``ei``: expected improvement over ``best`` (+ ``xi`` · the spread of the means).
    - ``maxvar``: std (pure exploration: maps, the sparse-scan variant).
    - ``ivr``: integrated variance reduction, how much measuring a candidate would lower the
      posterior variance summed over all candidates (estimated on ``ivr_reference`` random
      ones, for the ``ivr_pool`` most uncertain). It weighs where the candidates are dense, so
      it maps better than ``maxvar``, which chases outliers of feature space. Needs a model
      with ``covariance`` and ``noise_variance`` (GPModel).
    - ``thompson``: one joint posterior draw over a pool of the ``thompson_pool`` candidates
      with the highest UCB (a joint draw over all of them is O(m³)); −inf elsewhere.
    """
    if kind == "ucb":
        return mean + beta * std
    if kind == "maxvar":
        return std.copy()
    if kind == "ei":
        target = best + xi * max(float(np.ptp(mean)), 1e-12)
        s = np.maximum(std, 1e-12)
        z = (mean - target) / s
        return (mean - target) * _norm_cdf(z) + s * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    if kind == "ivr":
        if model is None or features is None or rng is None or not hasattr(model, "covariance"):
            raise ValueError("ivr needs a GP model with covariance(), the features and a rng")
        pool = np.argsort(-std)[:ivr_pool]
        ref = rng.choice(len(mean), size=min(ivr_reference, len(mean)), replace=False)
        cov = model.covariance(features[ref], features[pool])  # (reference, pool)
        out = np.full(len(mean), -np.inf)
        out[pool] = (cov**2).sum(axis=0) / (std[pool] ** 2 + model.noise_variance())
        return out
    if kind == "thompson":
        if model is None or features is None or rng is None:
            raise ValueError("thompson needs the model, the features and a random generator")
        pool = np.argsort(-(mean + beta * std))[:thompson_pool]
        out = np.full(len(mean), -np.inf)
        out[pool] = model.sample(features[pool], rng)
        return out
    raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {kind!r}")


def select_batch(
    score: np.ndarray,
    positions_A: np.ndarray,
    q: int,
    *,
    exclude: np.ndarray,
    exclusion_A: float = 0.0,
) -> np.ndarray:
    """The ``q`` best candidates, greedily: each pick removes the candidates within
    ``exclusion_A`` of it, so a batch spreads out. ``exclude`` (bool, m) marks candidates that
    may not be picked (already measured)."""
    s = np.where(exclude, -np.inf, np.asarray(score, np.float64))
    s[~np.isfinite(s)] = -np.inf
    picks: list[int] = []
    for _ in range(int(q)):
        i = int(np.argmax(s))
        if not np.isfinite(s[i]):
            break
        picks.append(i)
        if exclusion_A > 0:
            d2 = ((positions_A - positions_A[i]) ** 2).sum(axis=1)
            s[d2 < exclusion_A**2] = -np.inf
        s[i] = -np.inf
    return np.asarray(picks, dtype=np.int64)
