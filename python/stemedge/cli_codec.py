"""``stemedge compress`` and ``stemedge decompress``: files to and from stemedge-compressed EMD.

``compress IN OUT.emd`` reads any file ``stemedge process`` reads (EMD/HDF5, .npy, raw, Merlin
.mib) and writes an EMD file whose datacube goes through the stemedge codec (HDF5 filter 421),
with the input's calibration; ``decompress IN.emd OUT`` writes the frames back uncompressed, as
EMD (results, calibration and log kept) or .npy.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stemedge.cli_types import (
    add_file_input_arguments,
    float_at_least,
    int_at_least,
    open_file_input,
)

__all__ = ["register", "run_compress", "run_decompress"]

_EMD_SUFFIXES = (".emd", ".h5", ".hdf5")
_READ_BYTES = 128 << 20  # frames read at a time (whole scan rows where they fit)
_positive_int = int_at_least(1)


def _default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def register(sub: Any) -> None:
    """Add ``compress`` and ``decompress`` to the main parser's subcommands."""
    c = sub.add_parser(
        "compress",
        help="write a file's frames as EMD compressed by the stemedge codec",
        description=(
            "Read frames (EMD/HDF5, .npy, raw, Merlin .mib) and write them to an EMD file whose "
            "datacube is compressed by the stemedge codec (HDF5 filter 421: readable by h5py "
            "once stemedge is imported, or anywhere with HDF5_PLUGIN_PATH set to "
            "stemedge.codec.hdf5.plugin_dir())."
        ),
    )
    c.add_argument("input", metavar="IN", help="frames: .emd/.h5/.hdf5, .npy, .raw/.bin, .mib")
    c.add_argument("output", metavar="OUT.emd", help="EMD file to write (replaced if it exists)")
    c.add_argument(
        "--mode",
        choices=("auto", "dense", "events", "bytes"),
        default="auto",
        help="codec mode (default auto: chosen per chunk from the data)",
    )
    c.add_argument(
        "--max-abs-error",
        type=float_at_least(0),
        default=0.0,
        metavar="E",
        help="0 (default): lossless; > 0: every value within E of the original",
    )
    c.add_argument(
        "--threshold",
        type=int_at_least(0),
        default=0,
        metavar="T",
        help="counted data: store values below T as 0 (default 0: off)",
    )
    c.add_argument(
        "--chunk-frames",
        type=_positive_int,
        metavar="N",
        help="frames per HDF5 chunk along the scan rows (default: ~1 MiB of frames)",
    )
    add_file_input_arguments(c)
    c.add_argument(
        "--workers",
        type=_positive_int,
        default=_default_workers(),
        metavar="N",
        help="compression threads (default: CPUs available, at most 8)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar, no summary")

    d = sub.add_parser(
        "decompress",
        help="write the frames of an EMD file uncompressed (EMD or .npy)",
        description=(
            "Read an EMD file (compressed by stemedge or not) and write its frames uncompressed: "
            "OUT.emd keeps calibration, results and log; OUT.npy is the 4D array."
        ),
    )
    d.add_argument("input", metavar="IN.emd", help="EMD/HDF5 file")
    d.add_argument("output", metavar="OUT", help=".emd/.h5/.hdf5 or .npy (replaced if it exists)")
    d.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


# --- helpers ----------------------------------------------------------------------------------


def _check_paths(inp: Path, out: Path, suffixes: tuple[str, ...]) -> None:
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"{out}: the output must end in {', '.join(suffixes)}")
    if out.exists() and inp.exists() and out.resolve() == inp.resolve():
        raise ValueError(f"{out}: the output would overwrite the input")


def _read_frames(geometry, chunk_frames: int = 1, limit_bytes: int = _READ_BYTES) -> int:
    """Frames per read: whole scan rows when a row fits in ``limit_bytes`` (so that every HDF5
    chunk arrives whole), else a multiple of ``chunk_frames``."""
    row = geometry.scan_shape[1]
    rows = limit_bytes // (row * geometry.frame_nbytes)
    if rows >= 1:
        return row * rows
    return chunk_frames * max(1, limit_bytes // (chunk_frames * geometry.frame_nbytes))


def _split(chunk, scan_x: int, step: int):
    """Consecutive pieces of a chunk cut at scan-row boundaries and every ``step`` frames of a
    row: units of work for the compression threads (pieces never share an HDF5 chunk when step
    is a multiple of the chunk length)."""
    frames, idx = chunk
    start, i = int(idx[0]), 0
    n = idx.size
    while i < n:
        x = (start + i) % scan_x
        m = min(n - i, scan_x - x, step - x % step)
        yield frames[i : i + m], idx[i : i + m]
        i += m


def _progress(total: int, quiet: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, disable=quiet, leave=False)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --- commands ---------------------------------------------------------------------------------


def run_compress(args: argparse.Namespace) -> int:
    import h5py

    from stemedge.io.emd import EMDWriter

    inp, out = Path(args.input), Path(args.output)
    _check_paths(inp, out, _EMD_SUFFIXES)
    source = open_file_input(inp, args)
    options = {
        "mode": args.mode,
        "max_abs_error": args.max_abs_error,
        "threshold": args.threshold,
    }
    try:
        geo = source.geometry
        provenance = {
            "command": "stemedge compress",
            "source": source.describe(),
            "parameters": dict(options, chunk_frames=args.chunk_frames),
        }
        with (
            EMDWriter(
                out,
                geo,
                provenance=provenance,
                compression="stemedge",
                compression_opts=options,
                chunk_frames=args.chunk_frames,
                overwrite=True,
            ) as writer,
            ThreadPoolExecutor(args.workers) as pool,
            _progress(geo.n_positions, args.quiet, "compress") as bar,
        ):
            k = writer.chunk_shape[1]
            # Units of work: whole HDF5 chunks, ~4 MiB of them, so threads never share a chunk.
            step = k * max(1, (4 << 20) // (k * geo.frame_nbytes))

            def write(piece) -> int:
                writer.write_frames(*piece)
                return piece[1].size

            for chunk in source.chunks(_read_frames(geo, k)):
                for n in pool.map(write, _split(chunk, geo.scan_shape[1], step)):
                    bar.update(n)
            emd = getattr(source, "emd", None)
            if emd is not None:  # an EMD input: keep its results and log
                for group, arrays in emd.results.items():
                    writer.write_results(group, arrays)
                for event in emd.log:
                    writer.log(event)
        raw = geo.n_positions * geo.frame_nbytes
        with h5py.File(out, "r") as f:
            stored = f["stemedge_root/datacube/data"].id.get_storage_size()
    finally:
        source.close()
    if not args.quiet:
        print(
            f"{inp} → {out}: {geo.n_positions} frames {geo.frame_shape} {geo.dtype}\n"
            f"raw {raw:,} bytes ({_mib(raw)}), compressed {stored:,} bytes ({_mib(stored)}), "
            f"ratio {raw / max(stored, 1):.2f}; file {out.stat().st_size:,} bytes"
        )
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    import numpy as np

    from stemedge.io.emd import EMDWriter
    from stemedge.sources.files import EMDSource

    inp, out = Path(args.input), Path(args.output)
    _check_paths(inp, out, (*_EMD_SUFFIXES, ".npy"))
    if inp.suffix.lower() not in _EMD_SUFFIXES:
        raise ValueError(f"{inp}: the input must be an EMD/HDF5 file ({', '.join(_EMD_SUFFIXES)})")
    source = EMDSource(inp)
    try:
        geo = source.geometry
        emd = source.emd
        with _progress(source.n_frames, args.quiet, "decompress") as bar:
            if out.suffix.lower() == ".npy":
                shape = (*geo.scan_shape, *geo.frame_shape)
                array = np.lib.format.open_memmap(out, mode="w+", dtype=geo.dtype, shape=shape)
                flat = array.reshape(geo.n_positions, *geo.frame_shape)
                for frames, idx in source.chunks(_read_frames(geo)):
                    flat[idx] = frames
                    bar.update(idx.size)
                array.flush()
                del flat, array
            else:
                provenance = {
                    "command": "stemedge decompress",
                    "source": source.describe(),
                    "source_provenance": emd.provenance,
                }
                with EMDWriter(out, geo, provenance=provenance, overwrite=True) as writer:
                    for frames, idx in source.chunks(_read_frames(geo)):
                        writer.write_frames(frames, idx)
                        bar.update(idx.size)
                    for group, arrays in emd.results.items():
                        writer.write_results(group, arrays)
                    for event in emd.log:
                        writer.log(event)
    finally:
        source.close()
    if not args.quiet:
        raw = source.n_frames * geo.frame_nbytes
        print(f"{inp} → {out}: {source.n_frames} frames, {raw:,} bytes ({_mib(raw)})")
    return 0
