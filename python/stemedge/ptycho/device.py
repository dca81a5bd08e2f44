"""Offline SSB on an NVIDIA GPU: :func:`stemedge.ssb` dispatches here for cupy data.

The same four steps as the CPU route (``ptycho/offline.py``), on the device, asynchronously on
one stream:

1. gather the bright-field pixels into a float32 cube (CUDA kernel ``_cuda.ssb_gather``),
   centred on each pixel's mean (float64 sums);
2. ``rfft2`` over the scan axes (cuFFT, through cupy);
3. the weighted sums over every candidate frequency with the weights **generated in the kernel**
   (``_cuda.ssb_sums``, the functions of ``cuda/ssb_weights.cuh``, held bit-identical to the
   CPU's ``SsbTrotters`` on the host): nothing but the pixel and frequency lists is uploaded, and
   the host never builds the weight matrix;
4. mirror, ``ifft2`` (cuFFT), normalise by the mean bright-field intensity.

Memory on the device: the data, the float32 cube (4·N_R·P bytes) and its half-plane FFT
(complex64, about as large); the cube is freed before step 3.
"""

from __future__ import annotations

import time

import numpy as np

from stemedge import gpu
from stemedge.ptycho.plan import SSBPlan, mirror_columns, object_wave, transfer_plane

__all__ = ["gather_device", "reconstruct_cube", "ssb_device"]


def _device_lists(plan: SSBPlan) -> dict:
    """The plan's pixel and frequency lists on the current device (uploaded once per device)."""
    return gpu._per_device(plan, "_device_lists", lambda: _upload_lists(plan, gpu._cupy()))


def _upload_lists(plan: SSBPlan, cp) -> dict:
    ptr, pix = plan.pixel_lists
    nxh = plan.scan_shape[1] // 2 + 1
    cand_iy, cand_ix = plan.cand_iy, plan.cand_ix
    dc = np.nonzero((cand_iy == 0) & (cand_ix == 0))[0]
    return {
        "ptr": cp.asarray(ptr.astype(np.uint32)),
        "pix": cp.asarray(pix.astype(np.uint32)),
        "ky": cp.asarray(np.ascontiguousarray(plan.k[:, 0])),
        "kx": cp.asarray(np.ascontiguousarray(plan.k[:, 1])),
        "qy": cp.asarray(plan.cand_qy),
        "qx": cp.asarray(plan.cand_qx),
        "iy": cp.asarray(cand_iy),
        "ix": cp.asarray(cand_ix),
        "cells": cp.asarray(cand_iy.astype(np.int64) * nxh + cand_ix),
        "mirror": cp.asarray(mirror_columns(cand_ix, plan.scan_shape[1])),
        "dc": int(dc[0]),
    }


def gather_device(frames, plan: SSBPlan, out, stream: int) -> None:
    """The bright-field pixels (summed over each binned pixel) of ``frames`` (cupy, (k, det_y,
    det_x), a kernel dtype) into ``out`` (cupy float32, (k, n_pixels)), on ``stream``."""
    cuda = gpu._cuda()
    d = _device_lists(plan)
    dy, dx = plan.det_shape
    cuda.ssb_gather(
        frames.data.ptr, str(frames.dtype), int(frames.shape[0]), dy, dx, d["ptr"].data.ptr,
        d["pix"].data.ptr, plan.n_pixels, out.data.ptr, stream,
    )  # fmt: skip


def reconstruct_cube(cube, plan: SSBPlan, n_frames: int, stream: int, *, consume: bool = False):
    """Steps 2–4 from a bright-field cube (cupy float32, (n_positions, n_pixels), not centred):
    ``(wave, transfer_candidates)`` on the device. ``n_frames`` normalises the wave (the frames
    summed into the cube); ``consume=True`` lets the cube be centred in place and freed."""
    cp, cuda = gpu._cupy(), gpu._cuda()
    ny, nx = plan.scan_shape
    n, p = ny * nx, plan.n_pixels
    d = _device_lists(plan)
    mean = cube.sum(axis=0, dtype=cp.float64) / n
    centred = cube if consume else cube.copy()
    centred -= mean.astype(cp.float32)
    g = cp.fft.rfft2(centred.reshape(ny, nx, p), axes=(0, 1))
    del centred, cube
    g = cp.ascontiguousarray(g, dtype=cp.complex64)
    g[0, 0, :] = n * mean  # the DC term, taken out before the FFT, restored exactly
    n_cand = len(plan.cand_qy)
    F = cp.empty(n_cand, cp.complex128)
    kept = cp.empty(n_cand, cp.uint8)
    transfer = cp.empty(n_cand, cp.float64)
    cal = plan.calibration
    cuda.ssb_sums(
        g.data.ptr, p, d["cells"].data.ptr, d["qy"].data.ptr, d["qx"].data.ptr,
        d["ky"].data.ptr, d["kx"].data.ptr, n_cand, cal.k_alpha, cal.wavelength_A,
        plan.aberration_values, plan.cutoff, plan.normalization, F.data.ptr,
        kept.data.ptr, transfer.data.ptr, stream,
    )  # fmt: skip
    del g
    # Candidates left out have F = 0: filling every candidate is filling the kept ones.
    wave = object_wave(F, d["iy"], d["ix"], d["mirror"], d["dc"], n_frames, (ny, nx), xp=cp)
    return wave, transfer


def ssb_device(data, plan: SSBPlan, *, stream=None):
    """SSB of a 4D scan on the GPU with ``plan``'s geometry and options.

    Returns ``(wave, phase, amplitude, transfer, timings)``: cupy arrays on the data's device
    (as :class:`stemedge.SSBResult` holds them) and the host seconds spent issuing each step
    (the work itself is asynchronous on ``stream``; synchronise it to time it).
    """
    cp = gpu._cupy()
    t0 = time.perf_counter()
    frames, _, _ = gpu._frames(data)  # dtype and layout checked as for every GPU kernel
    ny, nx = plan.scan_shape
    n = ny * nx
    sptr = gpu._stream(data, stream)
    with cp.cuda.ExternalStream(sptr):
        d = _device_lists(plan)
        cube = cp.empty((n, plan.n_pixels), cp.float32)
        gather_device(frames, plan, cube, sptr)
        t1 = time.perf_counter()
        wave, transfer = reconstruct_cube(cube, plan, n, sptr, consume=True)
        del cube
        t2 = time.perf_counter()
        phase = cp.angle(wave).astype(cp.float32)
        amplitude = cp.abs(wave).astype(cp.float32)
        plane = transfer_plane(d["iy"], d["ix"], d["mirror"], transfer, (ny, nx), xp=cp)
        t3 = time.perf_counter()
    timings = {"gather": t1 - t0, "fft_and_sums": t2 - t1, "finish": t3 - t2}
    return wave, phase, amplitude, plane, timings
