"""``stemedge steer``: active-learning steering on the simulated or a remote microscope."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from stemedge.cli_types import float_at_least, int_at_least

__all__ = ["register", "run"]


def _acquisition(text: str) -> str:
    from stemedge.steer.loop import check_acquisition

    try:
        return check_acquisition(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``steer`` to the main parser's subcommands."""
    p = subparsers.add_parser(
        "steer",
        help="choose probe positions by active learning (GP on survey patches) and map a property",
        description=(
            "Take a survey, then measure where a surrogate model (a GP on PCA features of survey "
            "patches) expects the property to be highest, or, with --sparse, where the map is "
            "least certain. Writes OUT/steer.emd (every step; --resume continues it), "
            "OUT/steer.png and OUT/summary.json. Default microscope: the simulator with a "
            "dopant-cluster specimen whose plasmon energy is the hidden property."
        ),
    )
    p.add_argument("--out", default="stemedge_steer", help="output folder (default stemedge_steer)")
    p.add_argument("--remote", metavar="URI", help="a `stemedge serve` microscope (PYRO:...)")
    p.add_argument("--certs", metavar="DIR", help="client certificates for --remote")
    p.add_argument(
        "--property",
        choices=("plasmon", "com"),
        default="plasmon",
        help="plasmon: EELS peak energy 8-35 eV; com: CoM shift (mrad) of the frames",
    )
    p.add_argument("--budget", type=int_at_least(2), default=40, help="measurements (default 40)")
    p.add_argument("--init", type=int_at_least(1), default=5, help="random first measurements")
    p.add_argument(
        "--acquisition",
        type=_acquisition,
        default=None,
        help=(
            "ucb, ei, maxvar, ivr, thompson, or BoTorch's qucb, qlogei, qlognei (extra dkl); "
            "several joined by '+' take turns (ucb+ivr); phases joined by '>' follow each "
            "other once --patience steps found no better value (ucb>ivr: find the maximum, "
            "then map). Default ucb (maxvar with --sparse)"
        ),
    )
    p.add_argument(
        "--patience",
        type=int_at_least(1),
        default=3,
        help="steps without a better value that end an acquisition phase (default 3)",
    )
    p.add_argument("--q", type=int_at_least(1), default=1, help="points per step (default 1)")
    p.add_argument(
        "--exclusion", type=float_at_least(0, unit=" Å"), default=0.0, help="Å between a step's"
    )
    p.add_argument("--goal", choices=("max", "min"), default="max")
    p.add_argument(
        "--sparse",
        type=int_at_least(2),
        metavar="N",
        help="sparse-scan variant: an N×N grid, GP over (y, x)",
    )
    p.add_argument("--survey", type=int_at_least(16), default=128, help="survey size (px)")
    p.add_argument(
        "--exposure", type=float_at_least(0, above=True, unit=" ms"), default=1.0, help="ms"
    )
    p.add_argument("--seed", type=int, default=0, help="specimen and loop seed")
    p.add_argument("--resume", action="store_true", help="continue OUT/steer.emd")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _microscope(args: argparse.Namespace):
    if args.remote:
        from stemedge.control.remote import RemoteMicroscope

        if not args.certs:
            raise ValueError("--remote needs --certs DIR (the client certificate and the CA)")
        token = os.environ.get("STEMEDGE_TOKEN", "")
        if len(token) < 16:
            raise ValueError("set STEMEDGE_TOKEN to the server's token (at least 16 characters)")
        return RemoteMicroscope(args.remote, args.certs, token=token)
    from stemedge.control.simulated import SimulatedMicroscope
    from stemedge.sim import clustered_lattice

    sample = clustered_lattice((768, 768), 0.26, seed=args.seed)
    return SimulatedMicroscope(sample, dose_per_ms=2e4, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ValueError("steering needs scikit-learn: pip install 'stemedge[steer]'") from None
    from stemedge.steer import ComShift, PeakEnergy, SteeringLoop

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scope = _microscope(args)
    scalarizer = PeakEnergy() if args.property == "plasmon" else ComShift()
    acquisition = args.acquisition or ("maxvar" if args.sparse else "ucb")
    if args.init > args.budget:
        raise ValueError(f"--init {args.init} is more than --budget {args.budget}")
    loop = SteeringLoop(
        scope,
        scalarizer,
        acquisition=acquisition,
        patience=args.patience,
        q=args.q,
        exclusion_A=args.exclusion,
        n_init=args.init,
        budget=args.budget,
        goal=args.goal,
        survey_size=(args.survey, args.survey),
        sparse_grid=None if args.sparse is None else (args.sparse, args.sparse),
        exposure_ms=args.exposure,
        record=out / "steer.emd",
        seed=args.seed,
    )
    try:
        res = loop.run(resume=args.resume, progress=not args.quiet)
    finally:
        if hasattr(scope, "close"):
            scope.close()
    res.plot(out / "steer.png", title=f"stemedge steer: {scalarizer.name}, {acquisition}")
    position, value = res.best()
    times = res.step_times()
    summary: dict[str, Any] = {
        "measurements": len(res.measured.values),
        "stop_reason": res.stop_reason,
        "best_position_A": [float(v) for v in position],
        "best_value": value,
        "units": scalarizer.units,
        "median_decide_s": statistics.median(times) if len(times) else None,
        "record": str(out / "steer.emd"),
        "figure": str(out / "steer.png"),
    }
    if not args.remote and args.property == "plasmon":  # the simulator knows the truth
        truth = scope.plasmon_eV(res.candidates.positions_A)
        found = truth[res.measured.candidate]
        level = truth.min() + 0.95 * np.ptp(truth)
        hits = np.nonzero(found >= level)[0]
        summary["truth_max"] = float(truth.max())
        summary["first_within_95pc"] = int(hits[0]) + 1 if len(hits) else None
        summary["map_nrmse"] = float(
            np.sqrt(np.mean((res.prediction.ravel() - truth) ** 2)) / np.ptp(truth)
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    unit = f" {scalarizer.units}" if scalarizer.units else ""
    print(
        f"stemedge steer: {summary['measurements']} measurements ({res.stop_reason}); best "
        f"{value:.3f}{unit} at ({position[0]:.1f}, {position[1]:.1f}) Å"
    )
    if "truth_max" in summary:
        print(
            f"  truth: max {summary['truth_max']:.3f}{unit}; within 95 % of it after "
            f"{summary['first_within_95pc']} measurements; map NRMSE {summary['map_nrmse']:.3f}"
        )
    if summary["median_decide_s"] is not None:
        print(f"  median decision time per step: {summary['median_decide_s'] * 1e3:.0f} ms")
    print(f"  wrote {out / 'steer.emd'}, {out / 'steer.png'}, {out / 'summary.json'}")
    return 0
