"""Surrogate models behind one small interface: fit on the measured points, predict mean and
standard deviation at every candidate, draw joint samples (Thompson sampling).

:class:`GPModel` (scikit-learn, exact GP on the features) is the default and the baseline any
deep-kernel model must beat; :mod:`stemedge.steer.dkl` holds the optional DKL model.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any

import numpy as np

__all__ = ["GPModel", "Model"]


class Model(abc.ABC):
    """What a steering loop asks of a surrogate model."""

    @abc.abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        """Fit on measured features ``x`` (n, d) and values ``y`` (n,)."""

    @abc.abstractmethod
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (of the latent property) at ``x`` (m, d)."""

    @abc.abstractmethod
    def sample(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One joint posterior draw at ``x`` (m,)."""

    def state(self) -> dict[str, Any]:
        """JSON-able hyperparameters, for the steering record."""
        return {}


class GPModel(Model):
    """Exact GP regression (scikit-learn): constant × RBF + white noise, on standardised values.

    Each fit starts the hyperparameter optimisation from the previous fit's values (a warm
    start: one local L-BFGS run per step, no restarts), so a step's cost grows only with the
    number of measured points.

    Parameters
    ----------
    length_scale : float
        Initial RBF length scale in feature units.
    noise : float
        Initial white-noise variance (standardised units); bounded to [1e-6, 1].
    restarts : int
        Extra random restarts of the first fit (later fits warm-start).
    seed : int
        Seed of the optimiser's restarts.
    """

    def __init__(
        self, *, length_scale: float = 1.0, noise: float = 1e-2, restarts: int = 1, seed: int = 0
    ) -> None:
        from sklearn.gaussian_process import kernels

        self._kernel = kernels.ConstantKernel(1.0, (1e-3, 1e3)) * kernels.RBF(
            length_scale, (1e-2, 1e3)
        ) + kernels.WhiteKernel(noise, (1e-6, 1.0))
        self._restarts = int(restarts)
        self._seed = int(seed)
        self._gp: Any = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        x, y = _xy(x, y)
        gp = GaussianProcessRegressor(
            kernel=self._kernel,
            normalize_y=True,
            n_restarts_optimizer=self._restarts if self._gp is None else 0,
            random_state=self._seed,
        )
        with warnings.catch_warnings():  # a bound reached is an answer, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(x, y)
        self._gp = gp
        self._kernel = gp.kernel_

    def _latent_std(self, std: np.ndarray) -> np.ndarray:
        # sklearn's std includes the white-noise term; steering wants the property's own.
        noise = self._kernel.k2.noise_level * self._gp._y_train_std**2
        return np.sqrt(np.maximum(std**2 - noise, 0.0))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._gp is None:
            raise RuntimeError("fit the model before predicting")
        mean, std = self._gp.predict(np.asarray(x, np.float64), return_std=True)
        return mean, self._latent_std(std)

    def sample(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self._gp is None:
            raise RuntimeError("fit the model before sampling")
        mean, cov = self._gp.predict(np.asarray(x, np.float64), return_cov=True)
        cov[np.diag_indices_from(cov)] += 1e-9 * max(float(np.trace(cov)) / len(cov), 1e-12)
        return rng.multivariate_normal(mean, cov, method="cholesky")

    def state(self) -> dict[str, Any]:
        k = self._kernel
        return {
            "model": "GPModel",
            "amplitude": float(k.k1.k1.constant_value),
            "length_scale": float(np.atleast_1d(k.k1.k2.length_scale)[0]),
            "noise": float(k.k2.noise_level),
            "log_marginal_likelihood": (
                float(self._gp.log_marginal_likelihood_value_) if self._gp is not None else None
            ),
        }


def _xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"fit needs x (n, d) and y (n,), got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fit needs finite features and values")
    return x, y
