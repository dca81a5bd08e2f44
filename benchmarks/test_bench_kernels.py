"""pytest-benchmark benchmarks of the native kernels (see README.md for the rules).

Every group holds a ``read_pass`` over the same array: one native read of every byte, the
practical memory limit. Read a kernel's speed as its median over that group's read_pass median.
Sizes keep rounds well under 200 ms; the full-size table comes from ``compare.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from _workloads import DTYPES, OPS, native_ops, numpy_ops
from stemedge import _native

MAIN_SCAN = (64, 64)  # 4096 frames of 128²: 128 MiB uint16, 256 MiB float32 (beyond the L3)
NUMPY_SCAN = (24, 32)  # 768 frames: the numpy one-liners are ~10× slower, keep rounds short
BACKEND_SCAN = (32, 64)  # 2048 frames: the scalar 'ref' backend is ~15× slower than avx512
TINY_SCAN = (4, 4)  # 16 frames: per-call overhead (argument checks, plan, result arrays)
BACKENDS = ("avx512", "avx2", "sse2", "ref")


def _label(benchmark, group: str, op: str, frames: np.ndarray, impl: str) -> None:
    """Set the benchmark group and the extra_info used by the ratio summary in conftest.py."""
    benchmark.group = group
    benchmark.extra_info.update(
        op=op,
        impl=impl,
        dtype=frames.dtype.name,
        frames=int(np.prod(frames.shape[:-2])),
        bytes=int(frames.nbytes),
    )


@pytest.fixture
def backend(request):
    """Select a kernel backend for one benchmark (skip if this CPU lacks it); restore 'auto'.

    ``read_pass`` is the group's baseline and leaves the backend alone.
    """
    name = request.param
    if name == "read_pass":
        yield name
        return
    if name not in _native.available_backends():
        pytest.skip(f"backend {name!r} not available here ({_native.available_backends()})")
    _native.set_backend(name)
    yield name
    _native.set_backend("auto")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["read_pass", "native"])
@pytest.mark.parametrize("op", OPS)
def test_op(benchmark, get_frames, geom, op, impl, dtype):
    """Native kernel ``op`` on 64×64 frames of 128² (all threads, outputs preallocated), and
    in the same group the read_pass over that array: the cost is the memory traffic of one pass
    plus the per-pixel arithmetic the kernel cannot hide behind it."""
    frames = get_frames(MAIN_SCAN, dtype)
    name = "read_pass" if impl == "read_pass" else op
    fn = native_ops(geom, MAIN_SCAN)[name]
    _label(benchmark, f"{op}[{dtype}]", name, frames, impl)
    benchmark(fn, frames)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["native", "numpy"])
@pytest.mark.parametrize("op", OPS)
def test_op_vs_numpy(benchmark, get_frames, geom, op, impl, dtype):
    """The numpy one-liner for ``op`` (see _workloads.numpy_ops) against the native kernel on the
    same 768-frame stack: numpy's temporaries and dtype conversions against one native pass."""
    frames = get_frames(NUMPY_SCAN, dtype)
    stack = frames.reshape(-1, *frames.shape[-2:])
    fn = (native_ops(geom, stack.shape[:1]) if impl == "native" else numpy_ops(geom))[op]
    _label(benchmark, f"numpy-{op}[{dtype}]", op, frames, impl)
    benchmark(fn, stack)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["read_pass", *BACKENDS], indirect=True)
def test_com_backend(benchmark, get_frames, geom, backend, dtype):
    """Whole-frame CoM per SIMD backend (avx512/avx2/sse2/scalar ref), 2048 frames: what each
    instruction set costs; read_pass (run under 'auto') is the group's memory baseline."""
    frames = get_frames(BACKEND_SCAN, dtype)
    op = "read_pass" if backend == "read_pass" else "com_whole"
    fn = native_ops(geom, BACKEND_SCAN)[op]
    _label(benchmark, f"backends-com_whole[{dtype}]", op, frames, backend)
    benchmark(fn, frames)


@pytest.mark.parametrize("impl", ["read_pass", *OPS, "numpy-com_whole"])
def test_tiny_stack(benchmark, get_frames, geom, impl):
    """A 16-frame uint16 stack (512 KiB, cache-resident): the fixed per-call cost (argument
    checks, thread hand-off, result assembly) that dominates live, frame-by-frame use."""
    frames = get_frames(TINY_SCAN, "uint16")
    if impl == "numpy-com_whole":
        op, fn, arg = "com_whole", numpy_ops(geom)["com_whole"], frames.reshape(-1, *geom.det_shape)
    else:
        op, fn, arg = impl, native_ops(geom, TINY_SCAN)[impl], frames
    _label(benchmark, "tiny-16-frames[uint16]", op, frames, impl)
    benchmark(fn, arg)
