"""Active-learning steering against random and raster sampling on scenes with a hidden property.

    python benchmarks/bench_steer.py [--seeds 5] [--budget 40] [--dkl] [--botorch]

The scene (``stemedge.sim.clustered_lattice``, 200 Å square): dopants gather in clusters and
in a domain; the hidden property is the plasmon energy, 16 eV + 8 eV × the local dopant
fraction (σ 5 Å), measured as the centroid of noisy EELS spectra (2·10⁴ e⁻ per spectrum).
The survey is a 128² HAADF image; the candidates are its 12,769 interior pixels (16 px
patches, 2 Å blur, 8 PCA components).

Strategies at the same budget, each seed the same scene and noise model:

- **steer**: ``SteeringLoop`` with the default GP model and UCB (5 random points first);
- **steer-dkl** (``--dkl``): the same with the deep-kernel model;
- **qlognei** (``--botorch``): the same with BoTorch's qLogNoisyExpectedImprovement;
- **both**: the same alternating UCB and integrated variance reduction, step by step;
- **find>map**: UCB until 3 steps in a row find no better value, then IVR (``"ucb>ivr"``);
- **map**: the same with integrated-variance-reduction acquisition (mapping, not maximising);
- **maxvar**: the same with max-variance acquisition (the textbook mapping rule);
- **sparse-ivr**, **sparse-maxvar**: the sparse-scan variant, a GP over (y, x) on a 32×32 grid
  of positions, with IVR or max-variance acquisition: mapping without the survey;
- **random**: uniformly random candidates;
- **raster**: a regular grid over the candidates, measured in raster order;
- two designs that no loop can use, for the ceiling of placement (is a map error at n points
  set by where the points are, or by what the survey says?):
  - **ivr-oracle**: greedy integrated variance reduction with the GP hyperparameters fitted to
    400 random measurements (known before measuring anything), over every candidate;
  - **kmeans**: the candidates nearest the centres of n k-means clusters of the features (a
    representative sample of the survey's local structures, one per cluster).

Metrics (the "found" level is 95 % of the truth's range above its minimum):

- measurements until one is within 95 % of the true maximum (median over seeds; budget + 1
  counts as not found);
- hit rate: the fraction of measurements in the top 5 % of the candidates by truth;
- map NRMSE: the GP on survey features fitted to each strategy's measurements, predicted over
  all candidates, RMS error / the truth's range; after the whole budget N and after N/2 (the
  first half of the same run; for raster, a grid of N/2), and its floor: the same model fitted
  to 400 random measurements. Medians over seeds, and per seed against raster ("wins": seeds
  where the strategy's NRMSE is lower than raster's at the same count); and the same at N/4,
  N/2, 3N/4 and N (for raster and the designs: a design of that many points), the curve of
  the map's error with the number of measurements;
- NRMSE (y,x): the same points interpolated by a GP on position alone.

Then the decision time of one step (fit + predict over 12.8k candidates + acquisition) around
10, 50 and 200 measured points: median and max of 21 consecutive steps (hyperparameter
searches included where they fall). Target: ≤ 0.2 s at 200 points.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy as np

from stemedge.control import SimulatedMicroscope
from stemedge.sim import clustered_lattice
from stemedge.steer import (
    GPModel,
    PeakEnergy,
    SteeringLoop,
    candidates_from_survey,
    scores,
    select_batch,
)

SURVEY = (128, 128)


def scene(seed: int):
    scope = SimulatedMicroscope(
        clustered_lattice((768, 768), 0.26, seed=seed), dose_per_ms=2e4, seed=seed
    )
    survey = scope.survey(SURVEY)
    cands = candidates_from_survey(survey)
    return scope, survey, cands, scope.plasmon_eV(cands.positions_A)


def feature_nrmse(order: np.ndarray, values: np.ndarray, cands, truth: np.ndarray) -> float:
    """The map from survey features: a GP fitted to these measurements, over all candidates."""
    model = GPModel(seed=0)
    ok = np.isfinite(values)
    model.fit(cands.features[order[ok]], values[ok])
    mean, _ = model.predict(cands.features)
    return float(np.sqrt(np.mean((mean - truth) ** 2)) / np.ptp(truth))


def finding(at: np.ndarray, truth: np.ndarray, budget: int) -> dict:
    """Measurements until one is within 95 % of the truth's range (budget + 1: never), and the
    share of measurements in the top 5 %, from the truth ``at`` the measured points in order."""
    hits = np.nonzero(at >= truth.min() + 0.95 * np.ptp(truth))[0]
    return {
        "to95": int(hits[0]) + 1 if len(hits) else budget + 1,
        "hit_rate": float((at >= np.quantile(truth, 0.95)).mean()),
    }


def space_nrmse(positions_A: np.ndarray, values: np.ndarray, cands, truth: np.ndarray) -> float:
    """The map from position alone: a GP over (y, x) fitted to these measurements, as a sparse
    scan would interpolate them, over all candidates."""
    space = GPModel(seed=0)
    ok = np.isfinite(values)
    space.fit(positions_A[ok] / 10.0, values[ok])
    smean, _ = space.predict(cands.positions_A / 10.0)
    return float(np.sqrt(np.mean((smean - truth) ** 2)) / np.ptp(truth))


def checkpoints(budget: int) -> tuple[int, ...]:
    """The counts the map error is measured at: N/4, N/2, 3N/4 and N."""
    return tuple(sorted({max(budget * k // 4, 1) for k in (1, 2, 3, 4)}))


def metrics(order: np.ndarray, values: np.ndarray, cands, truth: np.ndarray, budget: int):
    curve = {n: feature_nrmse(order[:n], values[:n], cands, truth) for n in checkpoints(budget)}
    return {
        **finding(truth[order], truth, budget),
        "curve": curve,
        "nrmse": curve[budget],
        "nrmse_half": curve[budget // 2],
        "nrmse_space": space_nrmse(cands.positions_A[order], values, cands, truth),
    }


def design_metrics(scope, cands, truth: np.ndarray, budget: int, design) -> dict:
    """Metrics of a design that is not nested, ``design(cands, n)`` for n points: the map
    error at each checkpoint from a design of that many points, the rest from the design of
    N."""
    order = design(cands, budget)
    m = metrics(order, measure(scope, cands, order), cands, truth, budget)
    for n in checkpoints(budget)[:-1]:
        part = design(cands, n)
        m["curve"][n] = feature_nrmse(part, measure(scope, cands, part), cands, truth)
    m["nrmse_half"] = m["curve"][budget // 2]
    return m


def ivr_oracle_order(cands, state: dict, n: int) -> np.ndarray:
    """Greedy integrated variance reduction over every candidate (1,024 random ones as the
    reference), with fixed GP hyperparameters ``state`` (``GPModel.state()``, fitted to many
    measurements): what IVR would pick if it knew the kernel before measuring. Nested: its
    first k points are its design of k."""
    f = cands.features
    amp, ell, noise = state["amplitude"], state["length_scale"], state["noise"]

    def k(a, b):
        d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * (a @ b.T)
        return amp * np.exp(np.maximum(d2, 0.0) * (-0.5 / ell**2))

    ref = f[np.random.default_rng(0).choice(len(f), min(1024, len(f)), replace=False)]
    k_ref = k(ref, f)
    chosen: list[int] = []
    for _ in range(n):
        if chosen:
            xs = f[chosen]
            a_inv = np.linalg.inv(k(xs, xs) + noise * np.eye(len(chosen)))
            k_xc = k(xs, f)
            w = a_inv @ k_xc
            cov = k_ref - k(ref, xs) @ w  # posterior covariance, reference × candidates
            var = amp - np.einsum("ij,ij->j", k_xc, w)
        else:
            cov, var = k_ref, np.full(len(f), amp)
        gain = (cov**2).sum(0) / (var + noise)
        gain[chosen] = -np.inf
        chosen.append(int(np.argmax(gain)))
    return np.asarray(chosen)


def kmeans_order(cands, n: int, seed: int) -> np.ndarray:
    """The candidate nearest each centre of n k-means clusters of the features."""
    from scipy.cluster.vq import kmeans2

    f = cands.features
    centres, label = kmeans2(f, n, seed=seed, minit="++", iter=30)
    out = []
    for j in range(n):
        members = np.nonzero(label == j)[0]
        if len(members):
            out.append(members[np.argmin(((f[members] - centres[j]) ** 2).sum(1))])
    return np.asarray(out)


def sparse_metrics(res, scope, cands, truth: np.ndarray, budget: int) -> dict:
    """Metrics of a sparse-scan loop (its own grid of positions, a GP over (y, x))."""
    pos, values = res.measured.positions_A, res.measured.values
    return {
        **finding(scope.plasmon_eV(pos), truth, budget),
        "curve": {},  # no survey features: the (y, x) map is its map
        "nrmse": float("nan"),
        "nrmse_half": float("nan"),
        "nrmse_space": space_nrmse(pos, values, cands, truth),
    }


def measure(scope, cands, order: np.ndarray) -> np.ndarray:
    spectra, energy = scope.spectra_at(cands.positions_A[order])
    return PeakEnergy()(spectra, energy)


def raster_order(cands, budget: int) -> np.ndarray:
    gy, gx = cands.grid_shape
    n = int(np.ceil(np.sqrt(budget)))
    iy = np.linspace(0, gy - 1, n).round().astype(int)
    ix = np.linspace(0, gx - 1, n).round().astype(int)
    grid = (iy[:, None] * gx + ix[None, :]).ravel()
    return grid[np.linspace(0, len(grid) - 1, budget).round().astype(int)]


def step_times(cands, truth, model_factory, acq: str = "ucb") -> dict[int, tuple[float, float]]:
    """Decision time of the steps around n measured points, as a loop meets them: the model
    is warm (fitted at n − 11 first), then 21 steps add one point each. (median, max).
    ``acq``: "ucb" (numpy) or a BoTorch q-acquisition (one point per step)."""
    rng = np.random.default_rng(0)
    order = rng.choice(len(cands), 230, replace=False)
    y_all = truth[order] + rng.normal(0, 0.05, len(order))
    out = {}
    for n in (10, 50, 200):
        lo = max(n - 10, 3)
        model = model_factory()
        model.fit(cands.features[order[: lo - 1]], y_all[: lo - 1])  # not timed: warm-up
        times = []
        for k in range(lo, n + 11):
            taken = np.zeros(len(cands), bool)
            taken[order[:k]] = True
            t0 = time.perf_counter()
            model.fit(cands.features[order[:k]], y_all[:k])
            mean, std = model.predict(cands.features)
            if acq == "ucb":
                select_batch(
                    scores("ucb", mean, std, best=float(y_all[:k].max())),
                    cands.positions_A,
                    1,
                    exclude=taken,
                )
            else:
                from stemedge.steer.botorch_acq import select_botorch

                select_botorch(
                    acq,
                    model,
                    cands.features,
                    mean,
                    std,
                    1,
                    exclude=taken,
                    positions_A=cands.positions_A,
                    measured=cands.features[order[:k]],
                    best=float(y_all[:k].max()),
                )
            times.append(time.perf_counter() - t0)
        out[n] = (statistics.median(times), max(times))
    return out


def _median(values) -> float:
    v = [x for x in values if np.isfinite(x)]
    return statistics.median(v) if v else float("nan")


def _wins(r: list[dict], ref: list[dict], key: str) -> str:
    pairs = [(a[key], b[key]) for a, b in zip(r, ref, strict=True)]
    pairs = [(a, b) for a, b in pairs if np.isfinite(a) and np.isfinite(b)]
    return f"{sum(a < b for a, b in pairs)}/{len(pairs)}" if pairs else "-"


def table(rows: dict[str, list[dict]], budget: int, floor: list[float]) -> None:
    h = budget // 2
    print(
        f"\n{'strategy':<13} {'to 95 %':>7} {'found':>6} {'hit rate':>8} "
        f"{'NRMSE@' + str(h):>9} {'wins':>5} {'NRMSE@' + str(budget):>9} {'wins':>5} "
        f"{'NRMSE (y,x)':>11}"
    )
    ref = rows["raster"]
    for name, r in rows.items():
        to95 = [x["to95"] for x in r]
        found = sum(t <= budget for t in to95)
        print(
            f"{name:<13} {statistics.median(to95):>7.1f} {found:>3}/{len(r):<2} "
            f"{statistics.median(x['hit_rate'] for x in r):>8.3f} "
            f"{_median(x['nrmse_half'] for x in r):>9.3f} {_wins(r, ref, 'nrmse_half'):>5} "
            f"{_median(x['nrmse'] for x in r):>9.3f} {_wins(r, ref, 'nrmse'):>5} "
            f"{statistics.median(x['nrmse_space'] for x in r):>11.3f}"
        )
    print(
        f"floor of the feature map (400 random measurements): NRMSE {statistics.median(floor):.3f}"
    )
    print(
        "(to 95 %: median measurements, budget + 1 = not found; hit rate: share of measurements\n"
        " in the top 5 %; NRMSE@n: GP on survey features fitted to the strategy's first n points;\n"
        " wins: seeds with a lower NRMSE than raster's; NRMSE (y,x): GP on position alone, as a\n"
        " sparse scan would interpolate the points)"
    )
    counts = checkpoints(budget)
    print("\nmap error with the number of measurements: median NRMSE (wins against raster)")
    print(f"{'strategy':<13}" + "".join(f"{'n = ' + str(n):>15}" for n in counts))
    for name, r in rows.items():
        if not r[0]["curve"]:
            continue
        cells = []
        for n in counts:
            mine = [x["curve"][n] for x in r]
            theirs = [x["curve"][n] for x in ref]
            wins = sum(a < b for a, b in zip(mine, theirs, strict=True))
            cells.append(f"{statistics.median(mine):.3f} ({wins}/{len(r)})")
        print(f"{name:<13}" + "".join(f"{c:>15}" for c in cells))


LOOPS = (  # (row, acquisition, model): the steering loops on survey features
    ("steer", "ucb", None),
    ("steer-dkl", "ucb", "dkl"),
    ("qlognei", "qlognei", None),
    ("both", "ucb+ivr", None),
    ("find>map", "ucb>ivr", None),
    ("map", "ivr", None),
    ("maxvar", "maxvar", None),
)
SPARSE = (("sparse-ivr", "ivr"), ("sparse-maxvar", "maxvar"))
DESIGNS = ("random", "raster", "ivr-oracle", "kmeans")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--dkl", action="store_true", help="also time the DKL model (needs torch)")
    ap.add_argument(
        "--botorch", action="store_true", help="also BoTorch's qLogNEI (needs torch, botorch)"
    )
    ap.add_argument("--timing-only", action="store_true", help="only the decision times")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; budget {args.budget}; seeds {args.seeds}")
    skip = {"steer-dkl"} - ({"steer-dkl"} if args.dkl else set())
    skip |= set() if args.botorch else {"qlognei"}
    loops = [loop for loop in LOOPS if loop[0] not in skip]
    names = [name for name, *_ in loops] + [name for name, _ in SPARSE] + list(DESIGNS)
    rows: dict[str, list[dict]] = {k: [] for k in names}
    floor: list[float] = []
    for seed in range(0 if args.timing_only else args.seeds):
        scope, _, cands, truth = scene(seed)
        for name, acq, kind in loops:
            scope = SimulatedMicroscope(scope.sample, dose_per_ms=2e4, seed=seed)
            model = None
            if kind == "dkl":
                from stemedge.steer.dkl import DKLModel

                model = DKLModel(seed=seed)
            res = SteeringLoop(
                scope, PeakEnergy(), model=model, acquisition=acq, budget=args.budget, seed=seed
            ).run()
            m = metrics(res.measured.candidate, res.measured.values, cands, truth, args.budget)
            m["decide_s"] = float(np.median(res.step_times()))
            rows[name].append(m)
        for name, acq in SPARSE:
            scope = SimulatedMicroscope(scope.sample, dose_per_ms=2e4, seed=seed)
            res = SteeringLoop(
                scope,
                PeakEnergy(),
                acquisition=acq,
                budget=args.budget,
                seed=seed,
                sparse_grid=(32, 32),
            ).run()
            rows[name].append(sparse_metrics(res, scope, cands, truth, args.budget))
        rng = np.random.default_rng(seed)
        order = rng.choice(len(cands), args.budget, replace=False)
        rows["random"].append(
            metrics(order, measure(scope, cands, order), cands, truth, args.budget)
        )
        # raster: a grid of n at each count n, not the first rows of the grid of N
        rows["raster"].append(design_metrics(scope, cands, truth, args.budget, raster_order))
        many = rng.choice(len(cands), 400, replace=False)
        values = measure(scope, cands, many)
        floor.append(feature_nrmse(many, values, cands, truth))
        known = GPModel(seed=0)
        known.fit(cands.features[many[np.isfinite(values)]], values[np.isfinite(values)])
        order = ivr_oracle_order(cands, known.state(), args.budget)
        rows["ivr-oracle"].append(
            metrics(order, measure(scope, cands, order), cands, truth, args.budget)
        )
        rows["kmeans"].append(
            design_metrics(
                scope, cands, truth, args.budget, functools.partial(kmeans_order, seed=seed)
            )
        )
        print(
            f"seed {seed}: to 95 % "
            + ", ".join(f"{k} {v[-1]['to95']}" for k, v in rows.items())
            + "; NRMSE "
            + ", ".join(f"{k} {v[-1]['nrmse']:.3f}" for k, v in rows.items())
            + f"; floor {floor[-1]:.3f}",
            flush=True,
        )
    if not args.timing_only:
        table(rows, args.budget, floor)
    _, _, cands, truth = scene(0)
    models = {"GPModel": lambda: GPModel(seed=0)}
    if args.dkl:
        from stemedge.steer.dkl import DKLModel

        models["DKLModel"] = lambda: DKLModel(seed=0)
    print(f"\ndecision time per step (fit, predict {len(cands)} candidates, UCB), steps around")
    print("n measured points, median (max) of 21 steps:")
    runs = [(name, factory, "ucb") for name, factory in models.items()]
    if args.botorch:
        runs.append(("GPModel + qLogNEI", models["GPModel"], "qlognei"))
    for name, factory, acq in runs:
        t = step_times(cands, truth, factory, acq)
        print(
            f"  {name}: "
            + ", ".join(f"{n}: {v[0] * 1e3:.0f} ({v[1] * 1e3:.0f}) ms" for n, v in t.items())
            + f"   target ≤ 200 ms at 200: {'met' if t[200][0] <= 0.2 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
