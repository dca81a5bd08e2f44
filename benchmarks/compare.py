"""Full-size comparison: native kernels against one read of the data, and against numpy.

    PYTHONPATH=python python benchmarks/compare.py [--scan 256] [--det 128] [--repeats 7]
        [--dtypes uint16 float32] [--numpy-frames 4096] [--json out.json] [--markdown out.md]

For each dtype it builds a (scan, scan, det, det) shifted-disk dataset in place (2 GiB for uint16
at 256²×128², 4 GiB for float32; one at a time), checks native against the numpy one-liners on
the first --numpy-frames frames, then times every operation with ``time.perf_counter``: one
warm-up round, then --repeats rounds in which all operations run once each (in rotated order, so
drift from other load hits all alike); the table quotes medians. ``×read`` is the op's median over
the median of ``read_pass`` (one native read of every byte: the practical memory limit) measured
in the same rounds. The numpy one-liners run on the first --numpy-frames frames only, in the same
rounds, and their time is extrapolated per frame to the full dataset.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _workloads import OPS, Geometry, check_agreement, geometry, make_frames, native_ops, numpy_ops
from _workloads import stemedge as se
from stemedge import _native

TARGET_OP = 1.25  # every op ≤ 1.25 × read-once time
TARGET_FUSED = 1.5  # fused CoM+BF+DF ≤ 1.5 × read-once time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scan", type=int, default=256, help="scan positions per side (default 256)")
    p.add_argument("--det", type=int, default=128, help="detector pixels per side (default 128)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds after one warm-up")
    p.add_argument("--dtypes", nargs="+", default=["uint16", "float32"], help="frame dtypes")
    p.add_argument(
        "--numpy-frames", type=int, default=4096, help="frames for the numpy one-liners and checks"
    )
    p.add_argument("--backend", default="auto", help="kernel backend (default: auto)")
    p.add_argument("--json", type=Path, help="write all timings and metadata as JSON")
    p.add_argument("--markdown", type=Path, help="write the tables as markdown")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.scan < 1 or args.det < 8 or args.numpy_frames < 1:
        p.error("--repeats, --scan, --numpy-frames must be >= 1 and --det >= 8")
    return args


def _git_commit() -> str:
    """The checkout's short commit (read-only), or '?'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info() -> dict:
    """build_info essentials (SIMD active, threads, compiler) plus CPU, numpy and commit."""
    bi = se.build_info()
    return {
        "simd_active": _native.active_backend(),
        "simd_available": bi["simd_available"],
        "threads": bi["threads"],
        "cpus_available": bi["cpus_available"],
        "compiler": bi["compiler"],
        "stemedge": bi["version"],
        "commit": _git_commit(),
        "cpu": _cpu_model(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def build_dataset(scan: int, det: int, dtype: str):
    """Allocate (scan, scan, det, det) and fill it in place (every page touched before timing)."""
    frames = np.empty((scan, scan, det, det), np.dtype(dtype))
    disks = make_frames((scan, scan), (det, det), dtype, out=frames, seed=0)
    return frames, disks.shifts_px


def time_rounds(calls: dict[str, tuple[Callable, object]], repeats: int) -> dict[str, list[float]]:
    """Time ``fn(arg)`` for every call: one warm-up round, then ``repeats`` interleaved rounds.

    Each round runs every call once, starting one later than the previous round, with the garbage
    collector off, so slow drift (other load, frequency) hits all calls alike.
    """
    names = list(calls)
    for fn, arg in calls.values():
        fn(arg)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                fn, arg = calls[name]
                t0 = time.perf_counter()
                fn(arg)
                times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times


def run_dtype(args: argparse.Namespace, dtype: str, geom: Geometry) -> dict:
    """Build, verify and time one dtype; returns medians, raw timings and derived ratios."""
    t0 = time.perf_counter()
    frames, truth = build_dataset(args.scan, args.det, dtype)
    built = time.perf_counter() - t0
    stack = frames.reshape(-1, args.det, args.det)
    n_total, n_np = stack.shape[0], min(args.numpy_frames, stack.shape[0])
    subset = stack[:n_np]
    log(f"[{dtype}] built {frames.nbytes / 2**30:.2f} GiB in {built:.1f} s; checking {n_np} frames")
    deviation = check_agreement(subset, geom, truth.reshape(-1, 2)[:n_np])
    log(f"[{dtype}] native == numpy on {n_np} frames (max rel. dev. {max(deviation.values()):.1e})")

    nat, ref = native_ops(geom, frames.shape[:2]), numpy_ops(geom)
    calls = {name: (fn, frames) for name, fn in nat.items()}
    calls.update({f"numpy:{op}": (ref[op], subset) for op in OPS})
    log(f"[{dtype}] timing {len(calls)} calls: 1 warm-up + {args.repeats} rounds")
    load_before = os.getloadavg()
    times = time_rounds(calls, args.repeats)
    load_after = os.getloadavg()
    del frames, stack, subset, calls, nat
    gc.collect()
    return summarize(dtype, times, geom, args, n_total, n_np, deviation, load_before, load_after)


def summarize(dtype, times, geom, args, n_total, n_np, deviation, load_before, load_after) -> dict:
    """Medians, ×read, GB/s and extrapolated numpy times for one dtype.

    The JSON also keeps min/max and ``x_read_paired``, the median of per-round ratios to
    read_pass (a cross-check of ×read that is less sensitive to drift between rounds).
    """
    nbytes = n_total * args.det * args.det * np.dtype(dtype).itemsize
    med = {name: statistics.median(ts) for name, ts in times.items()}
    read = med["read_pass"]
    rows = []
    for op in ("read_pass", *OPS):
        np_full = med[f"numpy:{op}"] * n_total / n_np if op != "read_pass" else None
        rows.append(
            {
                "op": op,
                "label": geom.labels()[op],
                "native_s": med[op],
                "x_read": med[op] / read,
                "gb_per_s": nbytes / med[op] / 1e9,
                "numpy_s_extrapolated": np_full,
                "speedup_vs_numpy": np_full / med[op] if np_full else None,
                "native_min_s": min(times[op]),
                "native_max_s": max(times[op]),
                "x_read_paired": statistics.median(
                    t / r for t, r in zip(times[op], times["read_pass"], strict=True)
                ),
            }
        )
    return {
        "dtype": dtype,
        "shape": [args.scan, args.scan, args.det, args.det],
        "bytes": nbytes,
        "frames": n_total,
        "numpy_frames": n_np,
        "repeats": args.repeats,
        "rows": rows,
        "times_s": times,
        "max_rel_deviation_vs_numpy": deviation,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


def _fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}" if x < 10 else f"{x:.1f}"


def _fmt_x(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def target_misses(res: dict) -> list[str]:
    """Ops over their target (×read ≤ 1.25; fused ≤ 1.5), as 'op ×ratio > target'."""
    misses = []
    for row in res["rows"]:
        target = TARGET_FUSED if row["op"] == "fused" else TARGET_OP
        if row["op"] != "read_pass" and row["x_read"] > target:
            misses.append(f"{row['label']} {row['x_read']:.2f}× > {target}×")
    return misses


def table_cells(res: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one dtype's table."""
    head = [
        "op",
        "native s",
        "×read",
        "GB/s",
        f"numpy s (extrap. from {res['numpy_frames']} fr.)",
        "native speed-up vs numpy",
    ]
    rows = [
        [
            r["label"],
            _fmt_s(r["native_s"]),
            _fmt_x(r["x_read"]),
            f"{r['gb_per_s']:.1f}",
            _fmt_s(r["numpy_s_extrapolated"]),
            _fmt_x(r["speedup_vs_numpy"]) + ("×" if r["speedup_vs_numpy"] else ""),
        ]
        for r in res["rows"]
    ]
    return head, rows


def _title(res: dict) -> str:
    sy, sx, dy, dx = res["shape"]
    return (
        f"{res['dtype']}: {sy}×{sx} scan × {dy}×{dx} det = {res['bytes'] / 2**30:.2f} GiB, "
        f"medians of {res['repeats']} interleaved rounds"
    )


def _footer(res: dict) -> list[str]:
    read = res["rows"][0]
    misses = target_misses(res)
    verdict = "all met" if not misses else "missed: " + "; ".join(misses)
    lb, la = res["loadavg_before"][0], res["loadavg_after"][0]
    return [
        f"read-once (read_pass): {read['native_s']:.4f} s = {read['gb_per_s']:.1f} GB/s",
        f"targets (×read ≤ {TARGET_OP}, fused ≤ {TARGET_FUSED}): {verdict}",
        f"load average (1 min) before/after timing: {lb:.2f} / {la:.2f}",
    ]


def text_table(res: dict) -> str:
    """One dtype's table as aligned plain text."""
    head, rows = table_cells(res)
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]

    def line(cells):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return " | ".join([first, *rest])

    sep = "-+-".join("-" * w for w in widths)
    return "\n".join([_title(res), line(head), sep, *map(line, rows), *_footer(res)])


def markdown_table(res: dict) -> str:
    """One dtype's table as GitHub markdown."""
    head, rows = table_cells(res)
    align = ["---"] + ["---:"] * (len(head) - 1)
    out = [
        f"**{_title(res)}**",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([*out, "", *(f"- {line}" for line in _footer(res))])


def machine_line(info: dict) -> str:
    """One line describing where the numbers come from."""
    return (
        f"stemedge {info['stemedge']} ({info['commit']}), SIMD {info['simd_active']} "
        f"(available {', '.join(info['simd_available'])}), {info['threads']} threads, "
        f"{info['cpu']}, {info['compiler']}, numpy {info['numpy']}, {info['date']}"
    )


NOTES = (
    "×read = op median ÷ read_pass median (one native read-only pass over the same array, "
    "same rounds). GB/s = dataset bytes ÷ median. numpy times are measured on the first frames "
    "only and scaled per frame to the full dataset; numpy runs its reductions single-threaded "
    "(tensordot uses BLAS threads). Fused = whole-frame CoM + BF + DF from one read."
)


def write_markdown(path: Path, info: dict, results: list[dict]) -> None:
    """The tables for docs/performance.md, with the machine line and notes."""
    parts = [f"Measured with `{command_line()}` — {machine_line(info)}.", ""]
    for res in results:
        parts += [markdown_table(res), ""]
    parts.append(NOTES)
    path.write_text("\n".join(parts) + "\n")


def command_line() -> str:
    """The command as run (for the record)."""
    return " ".join(["python", *sys.argv])


def log(msg: str) -> None:
    """Progress to stderr, so stdout ends with the tables."""
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison for every dtype, then print all tables."""
    args = parse_args(argv)
    if args.backend != "auto":
        _native.set_backend(args.backend)
    info = machine_info()
    log(machine_line(info))
    geom = geometry((args.det, args.det))
    results = [run_dtype(args, dtype, geom) for dtype in args.dtypes]
    if args.json:
        doc = {"command": command_line(), "machine": info, "notes": NOTES, "results": results}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        write_markdown(args.markdown, info, results)
    print(machine_line(info))
    for res in results:
        print()
        print(text_table(res))
    print()
    print(NOTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
