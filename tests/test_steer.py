"""Active-learning steering: acquisition functions against their formulas, features, the GP
model, scalarizers against numpy references, and the loop on the simulated microscope (finds
the maximum, records every step, resumes, maps sparsely)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

pytest.importorskip("sklearn")

from stemedge.control import SimulatedMicroscope
from stemedge.control.microscope import SurveyImage
from stemedge.sim import clustered_lattice
from stemedge.steer import (
    ComDivergence,
    ComShift,
    FunctionScalarizer,
    GPModel,
    PeakEnergy,
    PeakRatio,
    SteeringLoop,
    candidates_from_survey,
    candidates_on_grid,
    read_record,
    scores,
    select_batch,
)
from stemedge.steer.loop import _phase
from stemedge.steer.record import Measurements

# --- acquisition -----------------------------------------------------------------------------


def test_acquisition_functions_follow_their_formulas():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=50), rng.uniform(0.01, 1, 50)
    np.testing.assert_allclose(scores("ucb", mean, std, best=0, beta=1.5), mean + 1.5 * std)
    np.testing.assert_array_equal(scores("maxvar", mean, std, best=0), std)
    best = 0.3
    target = best + 0.01 * np.ptp(mean)
    z = (mean - target) / std
    ref = (mean - target) * norm.cdf(z) + std * norm.pdf(z)
    np.testing.assert_allclose(scores("ei", mean, std, best=best), ref, rtol=1e-10)
    assert np.all(scores("ei", mean, std, best=best) >= 0)
    with pytest.raises(ValueError, match="acquisition"):
        scores("pi", mean, std, best=0)


def test_batches_keep_their_distance_and_skip_what_is_measured():
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 100, (400, 2))
    score = rng.normal(size=400)
    exclude = np.zeros(400, bool)
    exclude[np.argsort(-score)[:3]] = True  # the three best are measured already
    picks = select_batch(score, pos, 6, exclude=exclude, exclusion_A=15.0)
    assert len(picks) == 6 and not exclude[picks].any()
    d = np.sqrt(((pos[picks, None] - pos[None, picks]) ** 2).sum(-1))
    assert d[np.triu_indices(6, 1)].min() >= 15.0
    assert picks[0] == np.argsort(-score)[3]  # greedy: the best allowed first
    # asking for more than there is gives what there is
    assert len(select_batch(score[:4], pos[:4], 10, exclude=np.zeros(4, bool))) == 4


# --- features and model ----------------------------------------------------------------------


def test_survey_candidates_cover_the_interior_and_see_brightness():
    xx = np.mgrid[0:40, 0:50][1]
    image = (xx / 50.0 + 0.05 * np.random.default_rng(0).normal(size=(40, 50))).astype(np.float32)
    c = candidates_from_survey(SurveyImage(image, (0.5, 0.5), "HAADF", 1.0), patch=8)
    assert c.grid_shape == (33, 43) and len(c) == 33 * 43 and c.features.shape == (33 * 43, 8)
    np.testing.assert_allclose(c.positions_A[0], (2.0, 2.0))  # patch centre, px 4 × 0.5 Å
    np.testing.assert_allclose(c.positions_A[-1], ((32 + 4) * 0.5, (42 + 4) * 0.5))
    brightness = c.positions_A[:, 1]
    assert abs(np.corrcoef(c.features[:, 0], brightness)[0, 1]) > 0.99
    g = candidates_on_grid((30.0, 60.0), (3, 4))
    np.testing.assert_allclose(g.positions_A[5], (10.0, 15.0))
    with pytest.raises(ValueError, match="patch"):
        candidates_from_survey(SurveyImage(image, (0.5, 0.5), "HAADF", 1.0), patch=64)


def test_gp_model_interpolates_and_knows_where_it_has_not_looked():
    x = np.linspace(0, 10, 400)[:, None]
    f = np.sin(x[:, 0]) + 0.1 * x[:, 0]
    train = np.arange(0, 200, 12)  # only the left half
    m = GPModel(seed=0)
    m.fit(x[train], f[train])
    mean, std = m.predict(x)
    assert np.abs(mean[:190] - f[:190]).max() < 0.05
    assert std[train].max() < 0.05 and std[350:].min() > 5 * std[:190].mean()
    # the fast prediction is sklearn's (the latent part: its std minus the white noise)
    ref_mean, ref_std = m._gp.predict(x, return_std=True)
    noise = m._kernel.k2.noise_level * m._y_std**2
    np.testing.assert_allclose(mean, ref_mean, atol=1e-4 * np.ptp(f))
    np.testing.assert_allclose(std, np.sqrt(np.maximum(ref_std**2 - noise, 0)), atol=2e-3)
    _, ref_cov = m._gp.predict(x[::37], return_cov=True)
    ref_cov[np.diag_indices_from(ref_cov)] -= noise
    np.testing.assert_allclose(m.covariance(x[::37], x[::37]), ref_cov, atol=1e-6)
    draw = m.sample(x[::20], np.random.default_rng(0))
    assert draw.shape == (20,) and np.isfinite(draw).all()
    assert set(m.state()) >= {"amplitude", "length_scale", "noise"}
    # the joint posterior over small sets (BoTorch's q-acquisitions): each set's block of the
    # full posterior covariance, and the means
    sets = x[[[3, 150, 390], [0, 1, 2], [399, 200, 100]]]
    jm, jc = m.joint(sets)
    assert jm.shape == (3, 3) and jc.shape == (3, 3, 3)
    for k in range(3):
        np.testing.assert_allclose(jm[k], m.predict(sets[k])[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(jc[k], m.covariance(sets[k], sets[k]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        m.fit(x[:3], [1.0, np.nan, 2.0])


# --- scalarizers -----------------------------------------------------------------------------


def test_spectral_scalarizers_against_references():
    energy = np.arange(-20.0, 100.0)
    centres = np.array([15.0, 18.5, 22.0])
    spectra = 5 + 100 * np.exp(-((energy[None] - centres[:, None]) ** 2) / (2 * 2.0**2))
    np.testing.assert_allclose(PeakEnergy((5, 32))(spectra, energy), centres, atol=0.05)
    ratio = PeakRatio((10, 20), (20, 30))(spectra, energy)
    a = spectra[:, (energy >= 10) & (energy <= 20)].sum(1)
    b = spectra[:, (energy >= 20) & (energy <= 30)].sum(1)
    np.testing.assert_allclose(ratio, a / b)
    with pytest.raises(ValueError, match="fewer than 3"):
        PeakEnergy((200, 201))(spectra, energy)


def test_com_scalarizer_matches_numpy():
    rng = np.random.default_rng(3)
    frames = rng.poisson(5.0, (7, 21, 19)).astype(np.uint16)
    yy, xx = np.mgrid[0:21, 0:19]
    tot = frames.sum((1, 2))
    cy = (frames * yy).sum((1, 2)) / tot - 10
    cx = (frames * xx).sum((1, 2)) / tot - 9
    np.testing.assert_allclose(ComShift()(frames, 0.5), 0.5 * np.hypot(cy, cx), rtol=1e-9)
    bad = FunctionScalarizer(lambda d, a: [1.0], measurement="frames")
    with pytest.raises(ValueError, match="gave 1 values for 7"):
        bad(frames, 1.0)


# --- the loop --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene():
    return clustered_lattice((384, 384), 0.26, clusters=3, seed=4)


def _scope(scene):
    return SimulatedMicroscope(scene, dose_per_ms=2e4, seed=0)


def _loop(scope, **kw):
    opts = dict(budget=20, n_init=4, survey_size=(64, 64), patch=12, seed=0)
    return SteeringLoop(scope, PeakEnergy(), **{**opts, **kw})


def test_loop_finds_the_maximum_and_records_every_step(scene, tmp_path):
    scope = _scope(scene)
    res = _loop(scope, record=tmp_path / "steer.emd").run()
    assert res.stop_reason == "budget" and len(res.measured.values) == 20
    truth = scope.plasmon_eV(res.candidates.positions_A)
    found = truth[res.measured.candidate]
    level = truth.min() + 0.95 * np.ptp(truth)
    assert found.max() >= level, (found.max(), truth.max())
    # measured values are the noisy truth at those places
    np.testing.assert_allclose(res.measured.values, found, atol=0.3)
    nrmse = np.sqrt(np.mean((res.prediction.ravel() - truth) ** 2)) / np.ptp(truth)
    assert nrmse < 0.2
    # the EMD record: an EMD 1.0 file holding survey, maps, every measurement and step
    with h5py.File(tmp_path / "steer.emd") as f:
        assert f.attrs["emd_group_type"] == "file" and f.attrs["version_major"] == 1
        assert f["stemedge_root/survey/data"].shape == (64, 64)
        assert f["stemedge_root/prediction/data"].shape == res.candidates.grid_shape
        assert f["stemedge/steering/values"].shape == (20,)
    config, _, measured = read_record(tmp_path / "steer.emd")
    np.testing.assert_array_equal(measured.candidate, res.measured.candidate)
    assert config["acquisition"] == "ucb" and len(measured.steps) == 17
    assert {"fit_s", "predict_s", "acquire_s", "measure_s", "model"} <= set(measured.steps[-1])
    assert res.step_times().max() < 5.0  # sanity, not a benchmark
    res.plot(tmp_path / "steer.png")
    assert (tmp_path / "steer.png").stat().st_size > 10_000


def test_an_interrupted_loop_resumes_from_its_record(scene, tmp_path):
    record = tmp_path / "steer.emd"
    calls = {"n": 0}
    plasmon = PeakEnergy()

    def flaky(data, energy):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt  # the user stops the loop mid-measurement
        return plasmon(data, energy)

    scope = _scope(scene)
    loop = SteeringLoop(
        scope,
        FunctionScalarizer(flaky, name="peak energy", units="eV"),
        budget=16,
        n_init=4,
        survey_size=(64, 64),
        patch=12,
        record=record,
    )
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    _, _, before = read_record(record)
    assert len(before.values) == 4 + 7  # the init batch and 7 steps, each written when done
    res = loop.run(resume=True)
    assert len(res.measured.values) == 16
    np.testing.assert_array_equal(res.measured.candidate[:11], before.candidate)
    assert len(set(res.measured.candidate.tolist())) == 16  # nothing measured twice
    with pytest.raises(ValueError, match="acquisition"):
        _loop(scope, record=record, acquisition="ei").run(resume=True)


def test_batches_thompson_and_stopping_rules(scene):
    scope = _scope(scene)
    res = _loop(scope, q=3, exclusion_A=8.0, acquisition="thompson", budget=16).run()
    assert len(res.measured.values) == 16
    for s in np.unique(res.measured.step)[1:]:
        p = res.measured.positions_A[res.measured.step == s]
        d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
        assert d[np.triu_indices(len(p), 1)].min() >= 8.0
    res = _loop(scope, stagnation=3, budget=60).run()
    assert res.stop_reason == "stagnation" and len(res.measured.values) < 60
    res = _loop(scope, acquisition="ivr", budget=10).run()
    assert len(set(res.measured.candidate.tolist())) == 10
    res = _loop(scope, acquisition="maxvar", stop_std=1e3).run()
    assert res.stop_reason == "uncertainty" and len(res.measured.values) == 4  # after init


def test_phases_follow_each_other_after_patience_steps_without_a_better_value():
    """ "a>b": the phase from the measurements alone (a resumed run continues in it), for both
    goals, NaN values counting as no improvement."""
    m = Measurements.empty()
    for step, values in enumerate([[1.0, 2.0], [3.0], [2.5], [np.nan], [3.0], [9.0], [1.0]]):
        m.add(step, np.arange(len(values)), np.zeros((len(values), 2)), values)
        want = "ucb" if step < 4 else "ivr"  # steps 2, 3 and 4 do not beat 3.0
        assert _phase("ucb>ivr", m, 1.0, 3) == want, step
    assert _phase("ucb>ivr", m, 1.0, 4) == "ucb"  # step 5 raised the best before the 4th
    assert _phase("ucb+ei>ivr>maxvar", m, 1.0, 1) == "maxvar"
    assert _phase("ucb>ivr", m, -1.0, 5) == "ivr"  # goal "min": the best is 1.0 from step 0
    assert (
        _phase("ucb", m, 1.0, 1) == "ucb"
        and _phase("ucb>ivr", Measurements.empty(), 1.0, 1) == "ucb"
    )


def test_find_then_map_switches_once_the_search_stalls(scene):
    scope = _scope(scene)
    res = _loop(scope, acquisition="ucb>ivr", patience=2, budget=24).run()
    kinds = [s["acquisition"] for s in res.measured.steps[:-1]]  # the last step chose nothing
    assert kinds[0] == "ucb" and kinds[-1] == "ivr"
    switch = kinds.index("ivr")
    assert set(kinds[switch:]) == {"ivr"}
    # it switched at the first step that ended 2 steps in a row without a better value
    v = np.where(np.isfinite(res.measured.values), res.measured.values, -np.inf)
    best = np.maximum.accumulate([v[res.measured.step == s].max() for s in range(switch + 1)])
    runs = [k for k in range(2, switch + 1) if best[k] == best[k - 2]]
    assert runs and runs[0] == switch, (best, switch)


def test_a_phased_run_resumes_only_with_its_patience(scene, tmp_path):
    """Patience decides where the next phase starts, so a "a>b" record refuses another; a
    one-phase record does not care."""
    scope, record = _scope(scene), tmp_path / "steer.emd"
    _loop(scope, acquisition="ucb>ivr", patience=2, budget=8, record=record).run()
    with pytest.raises(ValueError, match="patience=2"):
        _loop(scope, acquisition="ucb>ivr", patience=3, budget=10, record=record).run(resume=True)
    res = _loop(scope, acquisition="ucb>ivr", patience=2, budget=10, record=record).run(resume=True)
    assert len(res.measured.values) == 10
    plain = tmp_path / "plain.emd"
    _loop(scope, budget=8, record=plain).run()
    res = _loop(scope, budget=10, patience=5, record=plain).run(resume=True)
    assert len(res.measured.values) == 10


def test_sparse_scan_maps_the_property_with_its_uncertainty(scene):
    scope = _scope(scene)
    res = _loop(scope, sparse_grid=(24, 24), acquisition="maxvar", budget=60, n_init=6).run()
    truth = scope.plasmon_eV(res.candidates.positions_A)
    nrmse = np.sqrt(np.mean((res.prediction.ravel() - truth) ** 2)) / np.ptp(truth)
    assert res.prediction.shape == (24, 24) and nrmse < 0.12, nrmse
    # the uncertainty is small where it measured and says how wrong the map is elsewhere
    err = np.abs(res.prediction.ravel() - truth)
    assert np.mean(err <= 3 * res.uncertainty.ravel() + 0.1) > 0.9


def test_com_divergence_against_numpy_on_a_linear_field():
    # frames whose CoM moves linearly with position: E = (a·y, b·x) px → ∇·E = a + b
    a, b, h = 0.4, -0.1, 0.5
    rng = np.random.default_rng(0)
    centres = rng.uniform(2, 8, (3, 2))
    yy, xx = np.mgrid[0:33, 0:33]
    frames = []
    for c in centres:
        for dy, dx in ComDivergence(h).offsets_A:
            sy, sx = a * (c[0] + dy), b * (c[1] + dx)
            g = np.exp(-((yy - 16 - sy) ** 2 + (xx - 16 - sx) ** 2) / (2 * 2.0**2))
            frames.append(g)
    data = np.array(frames, np.float32).reshape(3, 4, 33, 33)
    np.testing.assert_allclose(ComDivergence(h)(data, 2.0), 2.0 * (a + b), rtol=1e-3)


def test_com_scalarizer_drives_the_loop_on_frames(scene):
    scope = SimulatedMicroscope(scene, dose_per_ms=None, camera_shape=(32, 32))
    res = SteeringLoop(scope, ComShift(), budget=8, n_init=4, survey_size=(48, 48), patch=8).run()
    assert len(res.measured.values) == 8 and np.all(res.measured.values >= 0)
    res = SteeringLoop(
        scope, ComDivergence(0.26), budget=6, n_init=3, survey_size=(48, 48), patch=8
    ).run()
    assert len(res.measured.values) == 6 and np.isfinite(res.measured.values).all()


def test_bad_configurations_are_refused(scene):
    scope = _scope(scene)
    for kw, match in (
        ({"acquisition": "best"}, "acquisition"),
        ({"budget": 0}, "budget"),
        ({"n_init": 30}, "n_init"),
        ({"goal": "up"}, "goal"),
        ({"q": 0}, "q must"),
        ({"acquisition": "ucb>best"}, "acquisition"),
        ({"patience": 0}, "patience"),
    ):
        with pytest.raises(ValueError, match=match):
            _loop(scope, **kw)
    with pytest.raises(FileNotFoundError):
        _loop(scope).run(resume=True)
    nothing = FunctionScalarizer(lambda d, e: np.full(len(d), np.nan), name="nothing")
    with pytest.raises(ValueError, match="nothing: no finite value in 4 measurements"):
        SteeringLoop(scope, nothing, budget=8, n_init=4, survey_size=(32, 32), patch=8).run()


def test_botorch_acquisitions_name_their_install_when_botorch_is_missing(scene, monkeypatch):
    import sys

    from stemedge.steer.botorch_acq import select_botorch

    monkeypatch.setitem(sys.modules, "botorch", None)  # as if not installed
    loop = _loop(_scope(scene), acquisition="ucb+qlognei", budget=8)  # a known name: accepted
    with pytest.raises(ImportError, match="pip install"):
        loop.run()
    z = np.zeros((3, 2))
    with pytest.raises(ImportError, match="BoTorch"):
        select_botorch("qucb", None, z, z[:, 0], z[:, 0], 1, exclude=np.zeros(3, bool),
                       positions_A=z, measured=z, best=0.0)  # fmt: skip


def test_steer_cli_refuses_an_unknown_acquisition(capsys):
    from stemedge.cli import main

    assert main(["steer", "--acquisition", "ucb+best"]) == 2  # argparse's usage error
    assert "use one of ucb, ei, maxvar, ivr, thompson, qucb" in capsys.readouterr().err
