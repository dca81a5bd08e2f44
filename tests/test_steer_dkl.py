"""The optional deep-kernel model: it learns a smooth function of a few features, knows where it
has not looked, agrees with gpytorch's own posterior, is reproducible, refuses bad input, and
steers the loop on the simulated microscope to the maximum."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

gpytorch = pytest.importorskip("gpytorch")
torch = pytest.importorskip("torch")

from stemedge.control import SimulatedMicroscope  # noqa: E402
from stemedge.sim import clustered_lattice  # noqa: E402
from stemedge.steer import PeakEnergy, SteeringLoop  # noqa: E402
from stemedge.steer.dkl import DKLModel  # noqa: E402


def _f(x: np.ndarray) -> np.ndarray:
    return np.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - 0.8 * x[:, 2]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, (260, 3))
    return x[:120], _f(x[:120]), x[120:], _f(x[120:])


@pytest.fixture(scope="module")
def fitted(data):
    x, y, _, _ = data
    model = DKLModel(seed=0)
    model.fit(x, y)
    return model


def test_dkl_learns_a_smooth_function_and_knows_where_it_has_not_looked(data, fitted):
    x, y, x_test, y_test = data
    mean, _ = fitted.predict(x_test)
    r2 = 1 - np.sum((mean - y_test) ** 2) / np.sum((y_test - y_test.mean()) ** 2)
    assert r2 > 0.85, r2  # chance (the mean of y) is 0
    _, std_train = fitted.predict(x)
    far = np.random.default_rng(1).uniform(-1, 1, (50, 3))
    far = 6.0 * far / np.linalg.norm(far, axis=1, keepdims=True)  # well outside the cube
    _, std_far = fitted.predict(far)
    assert np.median(std_train) < 0.1 * np.ptp(y)
    assert np.median(std_far) > 3 * np.median(std_train), (std_far, std_train)


def test_dkl_posterior_matches_gpytorch_and_sample_has_its_moments(data, fitted):
    _, _, x_test, _ = data
    mean, std = fitted.predict(x_test)
    assert mean.shape == std.shape == (len(x_test),)
    assert np.isfinite(mean).all() and np.isfinite(std).all() and (std >= 0).all()
    # the cached fast path against gpytorch's exact posterior (latent: no likelihood noise)
    gp = fitted._gp
    with torch.no_grad():
        f = gp(torch.as_tensor(x_test[:40]))
    s, m0 = fitted._y_std, fitted._y_mean
    np.testing.assert_allclose(mean[:40], f.mean.numpy() * s + m0, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(std[:40], np.sqrt(f.variance.numpy()) * s, rtol=1e-5, atol=1e-7)
    # the joint posterior over small sets (BoTorch's q-acquisitions): blocks of gpytorch's
    jm, jc = fitted.joint(x_test[:12].reshape(4, 3, -1))
    full = f.covariance_matrix.numpy() * s**2
    for k in range(4):
        np.testing.assert_allclose(jm[k], mean[3 * k : 3 * k + 3], rtol=1e-7, atol=1e-8)
        block = full[3 * k : 3 * k + 3, 3 * k : 3 * k + 3]
        np.testing.assert_allclose(jc[k], block, rtol=1e-5, atol=1e-7 * s**2)
    # joint draws: right shape, reproducible with the generator, centred on the mean
    x5 = x_test[:5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fitted.sample(fitted._gp.train_inputs[0].numpy(), np.random.default_rng(0)).shape
    draw = fitted.sample(x_test[:30], np.random.default_rng(3))
    assert draw.shape == (30,) and np.isfinite(draw).all()
    np.testing.assert_array_equal(draw, fitted.sample(x_test[:30], np.random.default_rng(3)))
    rng = np.random.default_rng(4)
    draws = np.stack([fitted.sample(x5, rng) for _ in range(400)])
    m5, s5 = fitted.predict(x5)
    assert np.all(np.abs(draws.mean(0) - m5) < 5 * s5 / np.sqrt(400) + 1e-9)
    np.testing.assert_allclose(draws.std(0), s5, rtol=0.25)


def test_dkl_is_reproducible_warm_starts_and_states_json(data):
    x, y, x_test, _ = data
    a, b = (
        DKLModel(seed=5, iterations_first=30, iterations=7),
        DKLModel(seed=5, iterations_first=30),
    )
    threads = torch.get_num_threads()
    a.fit(x[:40], y[:40])
    b.fit(x[:40], y[:40])
    assert torch.get_num_threads() == threads  # the model's thread count is put back
    np.testing.assert_array_equal(a.predict(x_test)[0], b.predict(x_test)[0])
    other = DKLModel(seed=6, iterations_first=30)
    other.fit(x[:40], y[:40])
    assert not np.allclose(other.predict(x_test)[0], a.predict(x_test)[0])
    state = json.loads(json.dumps(a.state()))
    assert state["iterations"] == 30 and state["fits"] == 1
    assert {"lengthscale", "outputscale", "noise", "loss"} <= set(state)
    assert state["noise"] > 0 and np.isfinite(state["loss"])
    a.fit(x[:60], y[:60])  # a later fit starts from the last one and trains less
    assert a.state()["iterations"] == 7 and a.state()["fits"] == 2
    a.fit(x[:60, :2], y[:60])  # new features: a new network
    assert a.state()["iterations"] == 30 and a.predict(x_test[:, :2])[0].shape == (140,)
    assert json.dumps(DKLModel().state())  # before any fit too


def test_dkl_refuses_bad_input(data):
    x, y, _, _ = data
    m = DKLModel(iterations_first=5)
    with pytest.raises(RuntimeError, match="fit"):
        m.predict(x)
    with pytest.raises(ValueError, match="finite"):
        m.fit(x[:3], [1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="x \\(n, d\\)"):
        m.fit(x[:5], y[:4])
    m.fit(x[:10], y[:10])
    with pytest.raises(ValueError, match="x \\(m, 3\\)"):
        m.predict(x[:, :2])
    with pytest.raises(ValueError, match="finite"):
        m.predict(np.full((2, 3), np.inf))
    with pytest.raises(ValueError, match="x \\(m, 3\\)"):
        m.sample(x[0], np.random.default_rng(0))
    for kw in (
        {"activation": "gelu"},
        {"iterations": -1},
        {"threads": 0},
        {"min_noise": 0},
        {"batch": 0},
    ):
        with pytest.raises(ValueError):
            DKLModel(**kw)


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpytorch", None)  # import gpytorch now fails
    with pytest.raises(ImportError, match=r"pip install 'stemedge\[dkl\]'"):
        DKLModel()


def test_dkl_steers_the_loop_to_the_maximum():
    scene = clustered_lattice((384, 384), 0.26, clusters=3, seed=4)
    scope = SimulatedMicroscope(scene, dose_per_ms=2e4, seed=0)
    model = DKLModel(seed=0)
    res = SteeringLoop(
        scope, PeakEnergy(), budget=20, n_init=4, survey_size=(64, 64), patch=12, model=model
    ).run()
    assert res.stop_reason == "budget" and len(res.measured.values) == 20
    truth = scope.plasmon_eV(res.candidates.positions_A)
    found = truth[res.measured.candidate]
    level = truth.min() + 0.95 * np.ptp(truth)
    assert found.max() >= level, (found.max(), truth.max())
    assert res.config["model"] == "DKLModel" and np.isfinite(res.prediction).all()
    assert res.measured.steps[-1]["model"]["model"] == "DKLModel"
