"""``stemedge process FILE`` and ``stemedge stream``: the live pipeline on a file or a socket.

Both build the same analyses from the command line (centre of mass, virtual BF/ADF, mean and
max patterns), run them through :class:`stemedge.pipeline.Pipeline`, write an EMD file with the
results and provenance (and, for streams, the frames), and print a summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stemedge.cli_types import (
    add_file_input_arguments,
    float_at_least,
    int_at_least,
    open_file_input,
)

__all__ = ["register", "run_process", "run_stream"]


_positive_float = float_at_least(0, above=True)
_positive_int = int_at_least(1)


def _analysis_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analyses (all in one pass over each stack)")
    g.add_argument(
        "--com-radius",
        type=_positive_float,
        metavar="PX",
        help="centre of mass inside this disk (default: whole frame)",
    )
    g.add_argument(
        "--bf",
        type=_positive_float,
        metavar="PX",
        help="virtual bright-field disk radius (default: the calibration's r_α)",
    )
    g.add_argument(
        "--adf",
        type=_positive_float,
        nargs=2,
        metavar=("INNER", "OUTER"),
        help="virtual annular dark-field ring radii in px",
    )
    g.add_argument("--no-patterns", action="store_true", help="skip the mean and max patterns")
    g.add_argument(
        "--ssb",
        action="store_true",
        help="single-sideband ptychography phase (needs a calibrated source, e.g. stemedge EMD)",
    )
    g.add_argument(
        "--ssb-cutoff",
        type=_positive_int,
        default=1,
        metavar="PX",
        help="SSB: minimum pixels per half trotter (default 1; 10–30 lowers noise at low dose)",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--workers", type=_positive_int, default=2, metavar="N", help="worker threads (default 2)"
    )
    run.add_argument(
        "--status",
        metavar="ENDPOINT",
        help="publish status events there (e.g. tcp://127.0.0.1:5556)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def register(sub: Any) -> None:
    """Add ``process`` and ``stream`` to the main parser's subcommands."""
    p = sub.add_parser(
        "process",
        help="run the analyses on a file (EMD/HDF5, py4DSTEM EMD, .npy, raw, Merlin .mib)",
        description="Stream a file through the live pipeline and write the results as EMD.",
    )
    p.add_argument("file", help="frames: .emd/.h5/.hdf5, .npy, .raw/.bin, .mib")
    add_file_input_arguments(p)
    p.add_argument(
        "--out", metavar="FILE.emd", help="results file (default: FILE with suffix .results.emd)"
    )
    c = p.add_argument_group("cluster (Dask; pip install 'stemedge[dask]')")
    c.add_argument(
        "--cluster",
        metavar="WHERE",
        help="run on Dask, partitioned by scan rows: 'local' (a LocalCluster of "
        "--cluster-workers processes), a scheduler address tcp://host:8786, or 'slurm'",
    )
    c.add_argument(
        "--cluster-workers", type=_positive_int, default=2, metavar="N", help="default 2"
    )
    c.add_argument(
        "--partition-rows",
        type=_positive_int,
        metavar="R",
        help="scan rows per partition (default: about 4 partitions per worker)",
    )
    _analysis_arguments(p)

    s = sub.add_parser(
        "stream",
        help="receive frames from the network into the live analyses (and an EMD file)",
        description=(
            "Receive one scan — stemedge's own ZeroMQ frame protocol (--listen) or a DECTRIS "
            "SIMPLON v1 stream (--dectris) — analyse it live, and write frames and results."
        ),
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--listen", metavar="ENDPOINT", help="bind a stemedge frame receiver, e.g. tcp://*:6000"
    )
    src.add_argument(
        "--dectris",
        metavar="ENDPOINT",
        help="connect to a DECTRIS detector's stream, e.g. tcp://detector:9999",
    )
    s.add_argument(
        "--scan-shape",
        type=_positive_int,
        nargs=2,
        metavar=("Y", "X"),
        help="scan shape (DECTRIS streams do not know it; default: one row)",
    )
    s.add_argument("--out", metavar="FILE.emd", help="write frames and results there")
    s.add_argument("--no-frames", action="store_true", help="write only results to --out")
    s.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="give up when no scan starts, or the stream stalls, this long (default 60)",
    )
    _analysis_arguments(s)


def _analyses(args: argparse.Namespace, geometry) -> list:
    from stemedge.analysis import CenterOfMassAnalysis, MaxPattern, MeanPattern, SSBAnalysis
    from stemedge.masks import annulus, disk

    cal = geometry.calibration
    shape = geometry.frame_shape
    origin = cal.origin_for(shape) if cal is not None else None
    masks = {}
    bf = args.bf if args.bf is not None else (cal.bf_radius_px if cal is not None else None)
    if bf is not None:
        masks["bf"] = disk(shape, bf, origin)
    if args.adf is not None:
        inner, outer = args.adf
        if not inner < outer:
            raise ValueError(f"--adf: INNER ({inner}) must be smaller than OUTER ({outer})")
        masks["adf"] = annulus(shape, inner, outer, origin)
    analyses = [CenterOfMassAnalysis(radius=args.com_radius, virtual=masks or None, nthreads=1)]
    if not args.no_patterns:
        analyses += [MeanPattern(), MaxPattern()]
    if args.ssb:
        if cal is None:
            raise ValueError(
                "--ssb needs a calibration (voltage, convergence, detector sampling, scan step): "
                "this source has none; write the scan as a stemedge EMD file with a Calibration"
            )
        analyses.append(SSBAnalysis(cutoff=args.ssb_cutoff))
    return analyses


def _write_results(writer, result) -> None:
    for name, arrays in result.results.items():
        writer.write_results(name, arrays)
    writer.provenance.update(
        {"source": result.source, "ring": result.ring, "stream": result.summary()}
    )


def _report(result, out: Path | None) -> str:
    s = result.summary()
    lines = [
        f"{s['frames_processed']} frames processed in {s['elapsed_s']:.2f} s: "
        f"{s['frames_per_s']:,.0f} frames/s, {s['bytes_per_s'] / 1e9:.2f} GB/s "
        f"(workers could take {s['capacity_frames_per_s']:,.0f} frames/s)",
        f"frames in {s['frames_in']} = processed {s['frames_processed']} + discarded "
        f"{s['frames_discarded']}; dropped {s['frames_dropped']}, rejected "
        f"{s['frames_rejected']}; positions {s['positions_covered']}/{s['positions']}",
    ]
    for name, arrays in result.results.items():
        lines.append(f"  {name}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    if out is not None:
        lines.append(f"wrote {out}")
    return "\n".join(lines)


def _run(args, source, out: Path | None, frames_to_file: bool) -> int:
    from stemedge.io.emd import EMDWriter
    from stemedge.pipeline import Pipeline, PipelineError

    geometry = source.geometry
    analyses = _analyses(args, geometry)
    from stemedge.status import open_publisher

    status, _ = open_publisher(args.status, job=f"stemedge {args.command}")
    writer = None
    try:
        if out is not None:
            writer = EMDWriter(
                out, geometry, overwrite=True, provenance={"command": f"stemedge {args.command}"}
            )
        sinks = [writer] if writer is not None and frames_to_file else []
        pipe = Pipeline(
            source,
            analyses,
            sinks=sinks,
            workers=args.workers,
            status=status,
            progress=not args.quiet,
        )
        try:
            result = pipe.run()
            failed = None
        except PipelineError as exc:  # keep what was processed: write it, then report
            result, failed = exc.result, exc
        if writer is not None:
            _write_results(writer, result)
            writer.close("closed" if failed is None else f"failed: {failed}")
        if not args.quiet:
            print(_report(result, out))
        if failed is not None:
            raise ValueError(str(failed))
        return 0
    finally:
        if writer is not None:
            writer.close()
        if status is not None:
            status.close()
        source.close()


def run_process(args: argparse.Namespace) -> int:
    source = open_file_input(args.file, args)
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".results.emd")
    if args.cluster:
        return _run_cluster(args, source, out)
    return _run(args, source, out, frames_to_file=False)


def _run_cluster(args, source, out: Path) -> int:
    """``stemedge process --cluster``: the same analyses on Dask, results into the EMD file."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ValueError("--cluster needs Dask: pip install 'stemedge[dask]'") from None
    from stemedge.cluster import run_on_cluster
    from stemedge.io.emd import EMDWriter

    geometry = source.geometry
    source.close()
    analyses = _analyses(args, geometry)
    opts = {
        "scan_shape": args.scan_shape,
        "frame_shape": args.frame_shape,
        "dtype": args.dtype,
    }
    from stemedge.cluster import ClusterError

    try:
        run = run_on_cluster(
            args.file,
            analyses,
            cluster=args.cluster,
            n_workers=args.cluster_workers,
            rows=args.partition_rows,
            open_kwargs={k: v for k, v in opts.items() if v is not None},
            progress=not args.quiet,
        )
    except ClusterError as e:  # a partition failed for good: say which, no traceback
        raise ValueError(str(e)) from e
    provenance = {
        "command": "stemedge process --cluster",
        "cluster": {
            "where": args.cluster,
            "workers": run.workers,
            "partitions": [list(p) for p in run.partitions],
            "elapsed_s": run.elapsed_s,
        },
    }
    with EMDWriter(out, geometry, overwrite=True, provenance=provenance) as writer:
        for name, arrays in run.results.items():
            writer.write_results(name, arrays)
    if not args.quiet:
        n = geometry.n_positions
        print(
            f"{n} frames in {len(run.partitions)} partitions on {run.workers} Dask workers "
            f"in {run.elapsed_s:.2f} s ({n / run.elapsed_s:,.0f} frames/s)"
        )
        for name, arrays in run.results.items():
            print(f"  {name}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
        print(f"wrote {out}")
    return 0


def run_stream(args: argparse.Namespace) -> int:
    if args.listen is not None:
        from stemedge.net.frame_receiver import FrameReceiver

        source = FrameReceiver(
            args.listen, begin_timeout_s=args.timeout, stall_timeout_s=args.timeout
        )
    else:
        from stemedge.net.dectris import DectrisReceiver

        source = DectrisReceiver(
            args.dectris,
            scan_shape=args.scan_shape,
            begin_timeout_s=args.timeout,
            stall_timeout_s=args.timeout,
        )
    out = Path(args.out) if args.out else None
    return _run(args, source, out, frames_to_file=not args.no_frames)
