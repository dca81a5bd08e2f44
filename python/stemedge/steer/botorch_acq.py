"""BoTorch's batch (q-) acquisition functions over the discrete candidates (optional: needs
torch and BoTorch, ``pip install 'stemedge[dkl]'``).

The numpy acquisitions (:mod:`stemedge.steer.acquisition`) score each candidate alone and spread
a batch with an exclusion radius. BoTorch's Monte-Carlo q-acquisitions value a batch *jointly*:
two candidates the model knows to be correlated are not worth twice one. Here they run over the
candidates as they are (BoTorch's optimisers search continuous inputs, a survey grid is not):
the batch is chosen greedily, each pick conditioning the next through ``X_pending``, among a
pool of the most promising candidates by UCB.

Any :class:`~stemedge.steer.models.Model` with a joint posterior (``Model.joint``: GPModel and
DKLModel) is wrapped as a BoTorch model; nothing is refitted in torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stemedge.steer.models import Model

__all__ = ["BOTORCH_ACQUISITIONS", "select_botorch"]

BOTORCH_ACQUISITIONS = ("qucb", "qlogei", "qlognei")

_MISSING = "the q-acquisitions need BoTorch (and torch): pip install 'stemedge[dkl]'"


def _import():
    try:
        import botorch
        import torch
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return torch, botorch


def as_botorch_model(model: Model, jitter: float = 1e-9) -> Any:
    """``model`` as a ``botorch.models.model.Model`` whose posterior comes from
    ``model.joint`` (float64, evaluated without gradients: the candidates are discrete)."""
    torch, _ = _import()
    from botorch.models.model import Model as BoModel
    from botorch.posteriors.gpytorch import GPyTorchPosterior
    from gpytorch.distributions import MultivariateNormal

    class _Joint(BoModel):
        _num_outputs = 1

        @property
        def num_outputs(self) -> int:
            return 1

        @property
        def batch_shape(self):
            return torch.Size([])

        def posterior(
            self, X, output_indices=None, observation_noise=False, posterior_transform=None, **kw
        ):
            if output_indices not in (None, [0]) or observation_noise:
                raise NotImplementedError("one output, latent posterior only")
            lead, n, d = X.shape[:-2], X.shape[-2], X.shape[-1]
            x = X.detach().reshape(-1, n, d).cpu().numpy().astype(np.float64)
            mean, cov = model.joint(x)
            scale = max(float(np.abs(np.diagonal(cov, axis1=1, axis2=2)).max()), 1e-12)
            cov = cov + jitter * scale * np.eye(n)
            mvn = MultivariateNormal(
                torch.as_tensor(mean, dtype=X.dtype).reshape(*lead, n),
                torch.as_tensor(cov, dtype=X.dtype).reshape(*lead, n, n),
            )
            post = GPyTorchPosterior(mvn)
            return post if posterior_transform is None else posterior_transform(post)

    return _Joint()


def select_botorch(
    kind: str,
    model: Model,
    features: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    q: int,
    *,
    exclude: np.ndarray,
    positions_A: np.ndarray,
    measured: np.ndarray,
    best: float,
    beta: float = 2.0,
    exclusion_A: float = 0.0,
    pool: int = 1024,
    mc_samples: int = 256,
    batch: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Choose ``q`` candidates with BoTorch's ``kind`` acquisition, greedily.

    kind : {"qucb", "qlogei", "qlognei"}
        qUpperConfidenceBound (``beta``), qLogExpectedImprovement over ``best``, or
        qLogNoisyExpectedImprovement against the measured points' features ``measured`` (noisy
        values: the incumbent is the model's, not the best raw measurement).
    pool : int
        Candidates scored: the best by mean + beta·std among those not excluded.
    exclude, positions_A, exclusion_A
        As :func:`~stemedge.steer.acquisition.select_batch`: measured candidates are never
        picked, and each pick removes the candidates within ``exclusion_A`` of it.

    Returns candidate indices (≤ q: fewer when the pool runs out).
    """
    if kind not in BOTORCH_ACQUISITIONS:
        raise ValueError(f"kind must be one of {BOTORCH_ACQUISITIONS}, got {kind!r}")
    torch, _ = _import()
    from botorch.acquisition import (
        qLogExpectedImprovement,
        qLogNoisyExpectedImprovement,
        qUpperConfidenceBound,
    )
    from botorch.sampling import SobolQMCNormalSampler

    ucb = np.where(exclude, -np.inf, mean + beta * std)
    ucb[~np.isfinite(ucb)] = -np.inf
    order = np.argsort(-ucb)[: int(pool)]
    order = order[np.isfinite(ucb[order])]
    if len(order) == 0:
        return np.zeros(0, np.int64)
    bo = as_botorch_model(model)
    sampler = SobolQMCNormalSampler(torch.Size([int(mc_samples)]), seed=seed)
    if kind == "qucb":
        acq = qUpperConfidenceBound(bo, beta=beta, sampler=sampler)
    elif kind == "qlogei":
        acq = qLogExpectedImprovement(bo, best_f=best, sampler=sampler)
    else:
        base = torch.as_tensor(np.asarray(measured, np.float64))
        acq = qLogNoisyExpectedImprovement(
            bo, X_baseline=base, sampler=sampler, prune_baseline=True, cache_root=False
        )
    features = np.asarray(features, np.float64)
    choices = torch.as_tensor(features[order]).unsqueeze(-2)  # (m, 1, d)
    alive = np.ones(len(order), bool)
    picks: list[int] = []
    with torch.no_grad():
        for _ in range(int(q)):
            if not alive.any():
                break
            idx = np.nonzero(alive)[0]
            values = np.concatenate(
                [acq(choices[idx[i : i + batch]]).numpy() for i in range(0, len(idx), batch)]
            )
            j = int(idx[int(np.argmax(values))])
            picks.append(int(order[j]))
            alive[j] = False
            if exclusion_A > 0:
                d2 = ((positions_A[order] - positions_A[order[j]]) ** 2).sum(axis=1)
                alive &= d2 >= exclusion_A**2
            acq.set_X_pending(torch.as_tensor(features[picks]))
    return np.asarray(picks, dtype=np.int64)
