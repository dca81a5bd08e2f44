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

    def joint(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Joint posterior of the latent property over each of ``b`` small sets of points,
        ``x`` (b, n, d): means (b, n) and covariances (b, n, n). BoTorch's batch acquisitions
        (:mod:`stemedge.steer.botorch_acq`) need it."""
        raise NotImplementedError(f"{type(self).__name__} has no joint posterior")

    def state(self) -> dict[str, Any]:
        """JSON-able hyperparameters, for the steering record."""
        return {}


class GPModel(Model):
    """Exact GP regression (scikit-learn): constant × RBF + white noise, on standardised values.

    Each hyperparameter search starts from the previous fit's values (a warm start: one capped
    local L-BFGS run, no restarts), and past 30 points a search runs only when the data has
    grown by a sixth since the last one; in between, a fit is one Cholesky factorisation.

    Parameters
    ----------
    length_scale : float
        Initial RBF length scale in feature units.
    noise : float
        Initial white-noise variance (standardised units); bounded to [1e-6, 1].
    restarts : int
        Extra random restarts of the first fit (later fits warm-start).
    max_iter : int
        L-BFGS iterations of a warm-started fit: the previous optimum is close, and a step must
        fit its time budget.
    seed : int
        Seed of the optimiser's restarts.
    """

    def __init__(
        self,
        *,
        length_scale: float = 1.0,
        noise: float = 1e-2,
        restarts: int = 1,
        max_iter: int = 25,
        seed: int = 0,
    ) -> None:
        from sklearn.gaussian_process import kernels

        self._kernel = kernels.ConstantKernel(1.0, (1e-3, 1e3)) * kernels.RBF(
            length_scale, (1e-2, 1e3)
        ) + kernels.WhiteKernel(noise, (1e-6, 1.0))
        self._restarts = int(restarts)
        self._max_iter = int(max_iter)
        self._searched_at = 0
        self._theta0 = self._kernel.theta.copy()  # every search also starts from here
        self._seed = int(seed)
        self._gp: Any = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        x, y = _xy(x, y)
        first = self._gp is None
        # Hyperparameters move little once there are many points: re-optimise while the data
        # is small and whenever it has grown by a sixth since the last search; otherwise keep
        # them (a fit is then one Cholesky).
        search = first or len(y) < 30 or len(y) >= 1.15 * self._searched_at
        if search:
            self._searched_at = len(y)
        gp = GaussianProcessRegressor(
            kernel=self._kernel,
            normalize_y=True,
            optimizer=_lbfgs(None if first else self._max_iter, self._theta0) if search else None,
            n_restarts_optimizer=self._restarts if first else 0,
            random_state=self._seed,
        )
        with warnings.catch_warnings():  # a bound reached is an answer, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(x, y)
        self._gp = gp
        self._kernel = gp.kernel_
        # What predict needs, once per fit: sklearn's own predict spends 0.13 s on 12.8k
        # candidates at 200 points (kernel through cdist, a triangular solve per call); GEMMs
        # against L⁻¹ do it in a fraction of that. float64: K is often ill-conditioned.
        from scipy.linalg import solve_triangular

        k = gp.kernel_
        self._amp = float(k.k1.k1.constant_value)
        self._ell = float(np.atleast_1d(k.k1.k2.length_scale)[0])
        self._x = x
        self._alpha = gp.alpha_.reshape(-1)
        self._linv_t = solve_triangular(gp.L_, np.eye(len(x)), lower=True).T.copy()
        self._y_mean = float(np.ravel(gp._y_train_mean)[0])
        self._y_std = float(np.ravel(gp._y_train_std)[0])

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._gp is None:
            raise RuntimeError("fit the model before predicting")
        x = np.asarray(x, np.float64)
        mean = np.empty(len(x))
        var = np.empty(len(x))
        sq_train = (self._x**2).sum(axis=1)
        for i in range(0, len(x), 4096):  # blocks: the (block, n) kernel stays in cache
            xb = x[i : i + 4096]
            d2 = (xb**2).sum(axis=1)[:, None] + sq_train[None, :] - 2.0 * (xb @ self._x.T)
            kb = self._amp * np.exp(np.maximum(d2, 0.0) * (-0.5 / self._ell**2))
            mean[i : i + 4096] = kb @ self._alpha
            v = kb @ self._linv_t  # (L⁻¹ k)ᵀ
            var[i : i + 4096] = self._amp - np.einsum("ij,ij->i", v, v)
        # latent (noise-free) posterior, in the units of y
        return self._y_mean + self._y_std * mean, self._y_std * np.sqrt(np.maximum(var, 0.0))

    def _kernel_rows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k(x, X_train) and v = L⁻¹ k for the posterior covariance, in standardised units."""
        x = np.asarray(x, np.float64)
        d2 = (x**2).sum(1)[:, None] + (self._x**2).sum(1)[None, :] - 2.0 * (x @ self._x.T)
        k = self._amp * np.exp(np.maximum(d2, 0.0) * (-0.5 / self._ell**2))
        return k, k @ self._linv_t

    def covariance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Posterior covariance of the latent property between points ``a`` and ``b``."""
        _, va = self._kernel_rows(a)
        _, vb = self._kernel_rows(b)
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * (a @ b.T)
        prior = self._amp * np.exp(np.maximum(d2, 0.0) * (-0.5 / self._ell**2))
        return self._y_std**2 * (prior - va @ vb.T)

    def joint(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float64)
        if self._gp is None:
            raise RuntimeError("fit the model before asking for a joint posterior")
        b, n, d = x.shape
        k, v = self._kernel_rows(x.reshape(b * n, d))
        mean = self._y_mean + self._y_std * (k @ self._alpha).reshape(b, n)
        v = v.reshape(b, n, -1)
        sq = (x**2).sum(-1)
        d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * (x @ x.transpose(0, 2, 1))
        prior = self._amp * np.exp(np.maximum(d2, 0.0) * (-0.5 / self._ell**2))
        return mean, self._y_std**2 * (prior - v @ v.transpose(0, 2, 1))

    def noise_variance(self) -> float:
        """The fitted observation-noise variance, in the units of y²."""
        return float(self._kernel.k2.noise_level) * self._y_std**2

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


def _lbfgs(max_iter: int | None, theta0: np.ndarray):
    """sklearn's L-BFGS-B hyperparameter search with an iteration cap, run from the warm start
    and from the initial hyperparameters, keeping the better. (Warm starts alone can stay in
    the interpolating optimum a first fit on a few points finds: noise → 0, short length scale;
    on one benchmark scene R² stayed at 0.2–0.6 until 60 points.)"""
    from scipy.optimize import minimize

    def optimizer(obj_func, initial_theta, bounds):
        options = {} if max_iter is None else {"maxiter": max_iter}
        best = None
        starts = [initial_theta]
        if not np.allclose(initial_theta, theta0):
            starts.append(theta0)
        for start in starts:
            res = minimize(
                obj_func, start, method="L-BFGS-B", jac=True, bounds=bounds, options=options
            )
            if best is None or res.fun < best.fun:
                best = res
        return best.x, best.fun

    return optimizer


def _xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"fit needs x (n, d) and y (n,), got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fit needs finite features and values")
    return x, y
