"""Deep kernel learning (optional, needs torch and gpytorch): an exact GP on features learned by
a small neural network, trained jointly on the exact marginal likelihood.

A GP on the raw survey features (:class:`~stemedge.steer.models.GPModel`) treats every feature
direction alike; a deep kernel can learn which combinations of local structure the property
follows. It pays for that with many more parameters, so it helps only once enough points are
measured: compare it against ``GPModel`` on the scene at hand before relying on it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from typing import Any

import numpy as np

from stemedge.steer.models import Model, _xy

__all__ = ["DKLModel"]

_MISSING = "DKLModel needs torch and gpytorch: pip install 'stemedge[dkl]'"


def _import_torch():
    try:
        import gpytorch
        import torch
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return torch, gpytorch


class DKLModel(Model):
    """Exact GP (constant mean, scale × RBF, Gaussian noise) on the output of an MLP.

    The network (``d → hidden… → out_dim``, ``activation`` between layers) and the GP
    hyperparameters are trained together by Adam (AdamW) on the exact marginal log likelihood,
    on standardised values. Shapes stay fixed between fits and each fit starts from the
    previous one (a warm start): the first fit trains ``iterations_first`` steps, later fits
    only ``iterations``, which is what keeps a steering step within its time budget (about
    0.13 s at 200 points and 12.8k candidates on one core). Features are used as they come
    (both candidate makers give features of order one).

    Warm-started over a whole run, the network keeps training on the same points and overfits
    the likelihood: on the benchmark scene (three seeds, fits at 10, 11, … 50 points) the mean
    R² at 50 points was 0.85 without weight decay, against the GP's 0.96. The decay (which
    bounds the weights near ``1 / weight_decay``) brings it to 0.95.

    Parameters
    ----------
    hidden : tuple of int
        Widths of the hidden layers.
    out_dim : int
        Dimension of the learned features the GP sees (small: the GP's inputs).
    activation : {"tanh", "relu", "elu", "silu"}
        Between layers; a smooth one gives a smooth kernel.
    iterations_first, iterations : int
        Adam steps of the first fit and of each later (warm-started) fit.
    lr : float
        Adam's learning rate.
    weight_decay : float
        Decoupled weight decay of the network's weights (AdamW; the GP's hyperparameters are
        not decayed).
    noise : float
        Initial noise variance (standardised units); at least ``min_noise``.
    min_noise : float
        Lower bound of the noise variance: keeps the flexible kernel from interpolating noise.
    threads : int
        Torch threads while fitting and predicting (restored after). One: the matrices are
        small, and a second thread on a shared two-core machine made steps several times
        slower whenever the other core was busy.
    seed : int
        Seed of the network's initial weights: the same seed and data give the same model.
    dtype : {"float64", "float32"}
        Torch precision (float64: the Cholesky of a near-noiseless kernel stays stable).
    batch : int
        Candidates predicted at once.
    """

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (32, 32),
        out_dim: int = 2,
        activation: str = "tanh",
        iterations_first: int = 200,
        iterations: int = 20,
        lr: float = 0.01,
        weight_decay: float = 3.0,
        noise: float = 1e-2,
        min_noise: float = 1e-4,
        threads: int = 1,
        seed: int = 0,
        dtype: str = "float64",
        batch: int = 4096,
    ) -> None:
        self._torch, self._gpytorch = _import_torch()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        for name, v in (("iterations_first", iterations_first), ("iterations", iterations)):
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if not (0 < min_noise <= noise):
            raise ValueError(f"need 0 < min_noise <= noise, got {min_noise!r} and {noise!r}")
        self.hidden = tuple(int(h) for h in hidden)
        self.out_dim = int(out_dim)
        self.activation = activation
        self.iterations_first = iterations_first
        self.iterations = iterations
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.noise = float(noise)
        self.min_noise = float(min_noise)
        self.threads = threads
        self.seed = int(seed)
        self.batch = int(batch)
        self._dtype = getattr(self._torch, dtype)
        self._gp: Any = None
        self._posterior: Any = None
        self._d: int | None = None
        self._y_mean = 0.0
        self._y_std = 1.0
        self._loss = math.nan
        self._iters = 0
        self._fits = 0

    # --- building and training ---------------------------------------------------------------

    @contextlib.contextmanager
    def _threads(self):
        torch = self._torch
        before = torch.get_num_threads()
        if before != self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            if before != self.threads:
                torch.set_num_threads(before)

    def _build(self, d: int, x, y) -> None:
        torch, gpytorch = self._torch, self._gpytorch
        layers: list[Any] = []
        widths = (d, *self.hidden)
        with torch.random.fork_rng(devices=[]):  # seeded weights, the global RNG untouched
            torch.manual_seed(self.seed)
            for a, b in itertools.pairwise(widths):
                layers += [torch.nn.Linear(a, b), _ACTIVATIONS[self.activation](torch)]
            layers.append(torch.nn.Linear(widths[-1], self.out_dim))
            net = torch.nn.Sequential(*layers).to(self._dtype)
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(self.min_noise)
        ).to(self._dtype)
        likelihood.noise = self.noise
        self._gp = _exact_gp(gpytorch)(x, y, likelihood, net).to(self._dtype)
        self._d = d
        self._fits = 0

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = _xy(x, y)
        torch, gpytorch = self._torch, self._gpytorch
        self._y_mean = float(y.mean())
        std = float(y.std())
        self._y_std = std if std > 1e-12 * max(1.0, abs(self._y_mean)) else 1.0
        self._posterior = None
        tx = torch.as_tensor(x, dtype=self._dtype)
        ty = torch.as_tensor((y - self._y_mean) / self._y_std, dtype=self._dtype)
        with self._threads():
            if self._gp is None or x.shape[1] != self._d:  # a new feature space: start afresh
                self._build(x.shape[1], tx, ty)
            else:
                self._gp.set_train_data(tx, ty, strict=False)
            gp = self._gp
            n_iter = self.iterations_first if self._fits == 0 else self.iterations
            gp.train()
            net = list(gp.net.parameters())
            ids = {id(p) for p in net}
            hyper = [p for p in gp.parameters() if id(p) not in ids]
            optimizer = torch.optim.AdamW(
                [{"params": net, "weight_decay": self.weight_decay}, {"params": hyper}],
                lr=self.lr,
                weight_decay=0.0,
            )
            mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
            loss = None
            for _ in range(n_iter):
                optimizer.zero_grad()
                loss = -mll(gp(tx), ty)
                loss.backward()
                optimizer.step()
            gp.eval()
        if loss is not None:
            self._loss = float(loss.detach())
        self._iters = n_iter
        self._fits += 1

    # --- the posterior -----------------------------------------------------------------------

    def _x(self, x: np.ndarray, what: str):
        if self._gp is None:
            raise RuntimeError(f"fit the model before {what}")
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self._d:
            raise ValueError(f"{what} needs x (m, {self._d}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{what} needs finite features")
        return self._torch.as_tensor(x, dtype=self._dtype)

    def _cache(self):
        """Learned training features, Cholesky factor of their noisy kernel and the weights of
        the mean, once per fit. gpytorch's own prediction evaluates the full test × test
        kernel of each batch (m² work for m diagonal entries): 0.6 s at 12.8k candidates."""
        if self._posterior is None:
            torch, gp = self._torch, self._gp
            (tx,) = gp.train_inputs
            z = gp.net(tx)
            k = gp.covar_module(z).to_dense()
            k = k + gp.likelihood.noise * torch.eye(len(z), dtype=k.dtype)
            chol = _torch_cholesky(torch, k)
            r = (gp.train_targets - gp.mean_module.constant).unsqueeze(-1)
            self._posterior = (z, chol, torch.cholesky_solve(r, chol).squeeze(-1))
        return self._posterior

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and latent standard deviation (no noise) in the units of ``y``."""
        tx = self._x(x, "predicting")
        torch, gp = self._torch, self._gp
        mean = np.empty(len(tx))
        var = np.empty(len(tx))
        with self._threads(), torch.no_grad():
            z_train, chol, alpha = self._cache()
            prior = float(gp.covar_module.outputscale)
            for i in range(0, len(tx), self.batch):
                k = gp.covar_module(gp.net(tx[i : i + self.batch]), z_train).to_dense()
                v = torch.linalg.solve_triangular(chol, k.T, upper=False)
                mean[i : i + self.batch] = (k @ alpha + gp.mean_module.constant).numpy()
                var[i : i + self.batch] = (prior - (v * v).sum(0)).numpy()
        std = np.sqrt(np.maximum(var, 0.0)) * self._y_std
        return mean * self._y_std + self._y_mean, std

    def joint(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float64)
        if x.ndim != 3:
            raise ValueError(f"joint needs x (b, n, d), got {x.shape}")
        b, n, d = x.shape
        tx = self._x(x.reshape(b * n, d), "asking for a joint posterior")
        torch, gp = self._torch, self._gp
        with self._threads(), torch.no_grad():
            z_train, chol, alpha = self._cache()
            z = gp.net(tx)
            k = gp.covar_module(z, z_train).to_dense()  # (b·n, N)
            v = torch.linalg.solve_triangular(chol, k.T, upper=False).T.reshape(b, n, -1)
            mean = (k @ alpha + gp.mean_module.constant).reshape(b, n)
            prior = gp.covar_module(z.reshape(b, n, -1)).to_dense()  # (b, n, n)
            cov = prior - v @ v.transpose(1, 2)
        return (
            mean.numpy().astype(np.float64) * self._y_std + self._y_mean,
            cov.numpy().astype(np.float64) * self._y_std**2,
        )

    def sample(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One joint draw of the latent posterior at ``x``, from ``rng`` (not torch's RNG)."""
        tx = self._x(x, "sampling")
        torch = self._torch
        with self._threads(), torch.no_grad(), warnings.catch_warnings():
            # asked at exactly the training points, gpytorch suspects a forgotten train()
            warnings.simplefilter("ignore", self._gpytorch.utils.warnings.GPInputWarning)
            f = self._gp(tx)  # the exact joint posterior of the latent function
            mean = f.mean.numpy().astype(np.float64)
            cov = f.covariance_matrix.numpy().astype(np.float64)
        chol = _cholesky(cov)
        draw = mean + chol @ rng.standard_normal(len(mean))
        return draw * self._y_std + self._y_mean

    def state(self) -> dict[str, Any]:
        """Kernel and noise (standardised units), the last loss (negative log marginal
        likelihood per point) and the Adam steps of the last fit."""
        out: dict[str, Any] = {"model": "DKLModel", "fits": self._fits}
        if self._gp is None:
            return out
        covar = self._gp.covar_module
        out.update(
            lengthscale=[float(v) for v in covar.base_kernel.lengthscale.detach().reshape(-1)],
            outputscale=float(covar.outputscale.detach()),
            noise=float(self._gp.likelihood.noise.detach().reshape(-1)[0]),
            loss=self._loss,
            iterations=self._iters,
        )
        return out


def _torch_cholesky(torch, k):
    """Cholesky factor of a kernel matrix, with jitter only if it needs it."""
    scale = float(k.diagonal().mean())
    for jitter in (0.0, 1e-8, 1e-6, 1e-4):
        chol, info = torch.linalg.cholesky_ex(k + jitter * scale * torch.eye(len(k), dtype=k.dtype))
        if int(info) == 0:
            return chol
    raise np.linalg.LinAlgError("the training kernel is not positive definite")


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """Cholesky factor with as little jitter as it takes (posterior covariances at many points
    are rank-deficient)."""
    scale = max(float(np.trace(cov)) / max(len(cov), 1), 1e-12)
    for jitter in (1e-9, 1e-7, 1e-5, 1e-3):
        try:
            return np.linalg.cholesky(cov + jitter * scale * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            continue
    w, v = np.linalg.eigh(cov)  # last resort: the PSD part
    return v * np.sqrt(np.maximum(w, 0.0))


_ACTIVATIONS = {
    "tanh": lambda torch: torch.nn.Tanh(),
    "relu": lambda torch: torch.nn.ReLU(),
    "elu": lambda torch: torch.nn.ELU(),
    "silu": lambda torch: torch.nn.SiLU(),
}

_GP_CLASS: Any = None


def _exact_gp(gpytorch):
    """The ExactGP subclass, defined once gpytorch is imported."""
    global _GP_CLASS
    if _GP_CLASS is None:

        class _DeepKernelGP(gpytorch.models.ExactGP):
            def __init__(self, x, y, likelihood, net):
                super().__init__(x, y, likelihood)
                self.net = net
                self.mean_module = gpytorch.means.ConstantMean()
                self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

            def forward(self, x):
                z = self.net(x)
                return gpytorch.distributions.MultivariateNormal(
                    self.mean_module(z), self.covar_module(z)
                )

        _GP_CLASS = _DeepKernelGP
    return _GP_CLASS
