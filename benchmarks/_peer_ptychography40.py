"""Run ptychography40's SSB (LiberTEM UDF, inline executor) on a saved dataset and time it.

Runs in the peer's own environment (``pip install ptychography40 libertem``: it pins its own
numpy/numba stack), called by ``bench_ssb.py --peer-python PATH``:

    PEER_PYTHON _peer_ptychography40.py DATA.npy PARAMS.json OUT.npy

PARAMS: wavelength_A, scan_step_A (y, x), convergence_mrad, bf_radius_px, origin (y, x),
transform (2×2, detector→scan), repeats. Prints one JSON line: median seconds of the whole UDF
run (masks generated inside, as users run it) and of a run with precomputed masks.
"""

import json
import statistics
import sys
import time

import numpy as np
from libertem.api import Context
from libertem.common.container import MaskContainer
from ptychography40.reconstruction.ssb import SSB_UDF, generate_masks


def main() -> None:
    data = np.load(sys.argv[1], mmap_mode="r")
    p = json.load(open(sys.argv[2]))
    data = np.ascontiguousarray(data)
    ctx = Context.make_with("inline")
    ds = ctx.load("memory", data=data, sig_dims=2)
    kw = dict(
        lamb=p["wavelength_A"] * 1e-10,
        dpix=[s * 1e-10 for s in p["scan_step_A"]],
        semiconv=p["convergence_mrad"] * 1e-3,
        semiconv_pix=p["bf_radius_px"],
        dtype=np.float32,
        cy=p["origin"][0],
        cx=p["origin"][1],
        transformation=np.array(p["transform"]),
        cutoff=1,
        method="subpix",
    )
    total, udf_only = [], []
    phase = None
    for _ in range(p["repeats"]):
        t0 = time.perf_counter()
        res = ctx.run_udf(dataset=ds, udf=SSB_UDF(**kw))
        total.append(time.perf_counter() - t0)
        phase = res["phase"].data
    masks = generate_masks(
        reconstruct_shape=data.shape[:2],
        mask_shape=data.shape[2:],
        dtype=np.float32,
        lamb=kw["lamb"],
        dpix=kw["dpix"],
        semiconv=kw["semiconv"],
        semiconv_pix=kw["semiconv_pix"],
        transformation=kw["transformation"],
        cy=kw["cy"],
        cx=kw["cx"],
        cutoff=1,
        method="subpix",
    )
    container = MaskContainer(
        mask_factories=lambda: masks,
        dtype=masks.dtype,
        use_sparse="scipy.sparse.csc",
        count=masks.shape[0],
    )
    for _ in range(p["repeats"]):
        t0 = time.perf_counter()
        ctx.run_udf(dataset=ds, udf=SSB_UDF(mask_container=container, **kw))
        udf_only.append(time.perf_counter() - t0)
    np.save(sys.argv[3], phase)
    print(json.dumps({"total_s": statistics.median(total), "udf_s": statistics.median(udf_only)}))


if __name__ == "__main__":
    main()
