"""``stemedge demo``: a simulated microscope streams a scan through the live pipeline; the
results are checked against the truth.

The demo is the whole live data plane on data whose answer is known:

1. simulate a doped square lattice with vacancies (thin phase object, 80 kV, α = 25 mrad) on a
   periodic grid, optionally with Poisson noise and with the detector rotated/flipped;
2. stream it like a detector (at ``rate`` frames/s) through the native frame ring into worker
   threads running, live, one fused native pass per stack (centre of mass over the whole frame
   plus a virtual bright-field disk and an annular dark-field ring) and the mean pattern, while
   the raw frames go into an EMD file; progress and rates go to the status channel if asked;
3. recover the scan rotation and handedness from the CoM field alone (curl-free condition);
4. DPC in physical units: deflection field [mrad], divergence, curl, iDPC phase [rad];
5. compare the iDPC phase with the simulated ground truth;
6. measure the memory read bandwidth on the same data (the physical limit of the analysis);
7. write the results into the EMD file (with calibration and provenance), the maps (``.npy``),
   ``summary.json`` and a ``summary.png`` figure.

Everything is in one function, :func:`run_demo`; the command line (``stemedge demo``) only parses
arguments and prints :meth:`DemoResult.report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from stemedge import dpc as _dpc
from stemedge._build import build_info
from stemedge.analysis import CenterOfMassAnalysis, MeanPattern
from stemedge.calibration import Calibration, wavelength_A
from stemedge.io.emd import EMDWriter
from stemedge.kernels import read_pass
from stemedge.masks import annulus, disk
from stemedge.pipeline import Pipeline, PipelineResult
from stemedge.ptycho import ssb as _ssb
from stemedge.sim import SimulatedScan, lattice, simulate_4dstem
from stemedge.sources.sim import SimSource

__all__ = ["ARRAY_FILES", "DemoResult", "field_rgb", "pearson", "run_demo"]

# Fixed physics of the demo (the brief of a first-version demo: a typical low-kV DPC setup).
SCAN_STEP_A = 0.26
VOLTAGE_KV = 80.0
CONVERGENCE_MRAD = 25.0
ADF_INNER_FACTOR = 1.2  # ADF starts at 1.2·r_α: clear of the BF disk edge
LATTICE_A = 3.0  # Å: small enough that a 64² scan (16.6 Å) shows 6×6 cells
DOPANT_FRACTION = 0.1
VACANCY_FRACTION = 0.06

# find_rotation needs interior derivatives (≥ 3 positions); 8 still finds noise-free rotations,
# but with noise the search wants several atoms in view (≥ 24 positions, ~2×2 cells).
MIN_SCAN = 8
MIN_DET = 16  # r_α ≈ 0.16·D px here: smaller detectors leave no room for an ADF ring
MAX_DATA_BYTES = 2 * 2**30  # the simulated scan lives in memory; a demo needs far less

#: Array files written by :func:`run_demo` (key → file name); all float32.
ARRAY_FILES = {
    "virtual_bf": "virtual_bf.npy",
    "virtual_adf": "virtual_adf.npy",
    "com_shifts_px": "com_shifts_px.npy",
    "field_mrad": "field_mrad.npy",
    "idpc_phase_rad": "idpc_phase_rad.npy",
    "ssb_phase_rad": "ssb_phase_rad.npy",
    "ground_truth_phase_rad": "ground_truth_phase_rad.npy",
}
EMD_FILE = "stemedge_demo.emd"
# SSB: flat (phase in rad) with a minimum half-trotter size; at the demo's dose, cutoff 20 px
# lifts the correlation with the band-limited truth from 0.75 (cutoff 1) to 0.93 (PHYSICS.md §4.5).
SSB_CUTOFF = 20
DEFAULT_RATE = 20_000.0  # frames/s: a fast counting detector (Merlin ~12 k/s, 4D Camera 87 k/s)
_STEPS = ("simulate", "stream", "rotation", "DPC", "SSB", "compare", "bandwidth", "write", "plot")


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` wrote and measured.

    Attributes
    ----------
    out_dir : pathlib.Path
        The output folder (absolute).
    files : dict of str to pathlib.Path
        Every file written: the keys of :data:`ARRAY_FILES` plus ``"emd"``, ``"summary_json"``
        and ``"summary_png"``.
    scan, det : int
        Scan positions and detector pixels per side.
    dose : float or None
        Electrons per frame, or None for noise-free data.
    data_dtype : str
        Dtype of the simulated frames (``float32`` noise-free, ``uint16``/``uint32`` counts).
    calibration : Calibration
        The calibration with the *recovered* rotation and flip.
    true_rotation_deg, true_flip_y : float, bool
        Detector orientation used by the simulator.
    found_rotation_deg, found_flip_y : float, bool
        Orientation recovered by :func:`stemedge.dpc.find_rotation`.
    rotation_error_deg : float
        ``found − true`` wrapped to [−180, 180) [deg].
    curl_to_div : float
        RMS curl / RMS divergence of the field at the recovered orientation (≪ 1 when right).
    correlation : float
        Pearson correlation of the iDPC phase with the ground-truth phase (means removed).
    correlation_probe_limited : float
        The same against the ground truth blurred by the probe intensity, which is what iDPC
        can at best recover (PHYSICS.md §2.6): ≈ 1 for noise-free data.
    ssb_correlation : float
        Pearson correlation of the SSB phase (:func:`stemedge.ssb`, with the recovered
        calibration) with the ground truth band-limited to the frequencies SSB transfers
        (``0 < |Q| < 2k_α``): ≈ 1 for noise-free data.
    ssb_time_s : float
        Wall time of the SSB reconstruction (weights included) [s].
    rate_requested : float or None
        Frames/s the simulated detector was asked to deliver (None: as fast as possible).
    stream : dict
        The live run's :meth:`stemedge.pipeline.PipelineResult.summary`: frames in, processed,
        dropped, rejected, achieved frames/s, worker capacity, latency.
    frames_per_s : float
        Frames/s the pipeline processed the scan at (the stream rate).
    capacity_frames_per_s, capacity_gb_per_s : float
        What the workers could take had they never waited for frames (busy-time based).
    analysis_gb_per_s : float
        The same without the time spent writing the EMD file: the analyses alone.
    read_gb_per_s : float
        One native read of the same frames: the memory-bandwidth limit, measured in this run.
    timings_s : dict of str to float
        Wall time of each step and ``"total"`` [s].
    simd_active : str
        SIMD level the native kernels ran with.
    """

    out_dir: Path
    files: dict[str, Path]
    scan: int
    det: int
    dose: float | None
    data_dtype: str
    calibration: Calibration
    true_rotation_deg: float
    true_flip_y: bool
    found_rotation_deg: float
    found_flip_y: bool
    rotation_error_deg: float
    curl_to_div: float
    correlation: float
    correlation_probe_limited: float
    ssb_correlation: float
    ssb_time_s: float
    rate_requested: float | None
    stream: dict[str, Any]
    frames_per_s: float
    capacity_frames_per_s: float
    capacity_gb_per_s: float
    analysis_gb_per_s: float
    read_gb_per_s: float
    timings_s: dict[str, float]
    simd_active: str

    def report(self) -> str:
        """A short human-readable summary (a few lines) for the terminal."""
        t = self.timings_s
        steps = ", ".join(f"{k} {_fmt_s(v)}" for k, v in t.items() if k != "total")
        dose = "noise-free" if self.dose is None else f"{self.dose:g} e⁻/frame"
        arrays = ", ".join(self.files[k].name for k in ARRAY_FILES)
        return "\n".join(
            [
                f"stemedge demo: {self.scan}×{self.scan} scan × {self.det}×{self.det} detector "
                f"({self.data_dtype}, {dose}), {VOLTAGE_KV:g} kV, α = {CONVERGENCE_MRAD:g} mrad",
                f"  rotation  true {_orientation(self.true_rotation_deg, self.true_flip_y)}"
                f" → found {_orientation(self.found_rotation_deg, self.found_flip_y)}"
                f"  (error {self.rotation_error_deg:+.2f}°, curl/div {self.curl_to_div:.3f})",
                f"  iDPC      correlation with the ground-truth phase {self.correlation:.3f} "
                f"({self.correlation_probe_limited:.4f} with the probe-limited truth)",
                f"  SSB       correlation with the band-limited ground truth "
                f"{self.ssb_correlation:.3f}, reconstructed in {_fmt_s(self.ssb_time_s)}",
                f"  stream    {self.stream['frames_processed']} frames live at "
                f"{self.frames_per_s:,.0f} frames/s (asked {_rate(self.rate_requested)}): "
                f"{self.stream['frames_in']} in = {self.stream['frames_processed']} processed, "
                f"{self.stream['frames_dropped']} dropped, {self.stream['frames_rejected']} "
                f"rejected; latency p99 {_fmt_s(self.stream['latency_p99_s'])}"
                + ("; CoM + virtual on the GPU" if self.stream.get("gpu") else ""),
                f"  capacity  CoM + BF + ADF + mean pattern: {self.analysis_gb_per_s:.2f} GB/s = "
                f"{self.analysis_gb_per_s / self.read_gb_per_s:.2f}× the memory read bandwidth "
                f"({self.read_gb_per_s:.1f} GB/s, {self.simd_active}); with the EMD write "
                f"{self.capacity_frames_per_s:,.0f} frames/s = {self.capacity_gb_per_s:.2f} GB/s",
                f"  time      {_fmt_s(t['total'])} in all ({steps})",
                f"  wrote     {self.out_dir}/: {self.files['emd'].name} (frames, results, "
                f"provenance), {arrays}, summary.json",
                f"  figure    {self.files['summary_png']}",
            ]
        )


# --- small helpers ----------------------------------------------------------------------------


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _rate(rate: float | None) -> str:
    return "as fast as possible" if rate is None else f"{rate:,.0f}"


def _orientation(rotation_deg: float, flip_y: bool) -> str:
    return f"{rotation_deg:.2f}°{' + flip' if flip_y else ''}"


def _wrap180(angle_deg: float) -> float:
    """Angle in [−180, 180) [deg]."""
    return (angle_deg + 180.0) % 360.0 - 180.0


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps after removing their means (NaN if either is flat)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denom = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def _json_number(x: float) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    return float(x) if math.isfinite(x) else None


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _check_args(scan, det, dose, seed, rotation_deg) -> tuple[int, int, float | None, int, float]:
    """Validate run_demo's arguments up front, before any expensive work."""
    scan = _check_int(scan, "scan", MIN_SCAN)
    det = _check_int(det, "det", MIN_DET)
    seed = _check_int(seed, "seed", 0)
    dose_f = float(dose) if dose is not None else 0.0
    if not (math.isfinite(dose_f) and dose_f >= 0):
        raise ValueError(f"dose must be ≥ 0 electrons per frame (0 = noise-free), got {dose!r}")
    rot = float(rotation_deg)
    if not math.isfinite(rot):
        raise ValueError(f"rotation_deg must be a finite angle in degrees, got {rotation_deg!r}")
    nbytes = scan**2 * det**2 * (2 if dose_f else 4)
    if nbytes > MAX_DATA_BYTES:
        raise ValueError(
            f"a {scan}² scan of {det}² frames needs {nbytes / 2**30:.1f} GiB in memory "
            f"(limit {MAX_DATA_BYTES / 2**30:.0f} GiB); use a smaller --scan or --det"
        )
    return scan, det, (dose_f or None), seed, rot


def _check_rate(rate) -> float | None:
    if rate is None or rate == 0:
        return None
    r = float(rate)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(
            f"rate must be positive frames/s, or 0/None for as fast as possible, got {rate!r}"
        )
    return r


def _prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and prove it is writable now, not after the simulation has run."""
    out = Path(out_dir).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise OSError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    return out


class _Steps:
    """Times the demo's steps and advances an (optional) tqdm bar."""

    def __init__(self, progress: bool):
        from tqdm import tqdm  # imported here: `stemedge info` should not pay for it

        self.timings: dict[str, float] = {}
        self._bar = tqdm(
            total=len(_STEPS), desc="stemedge demo", unit="step", disable=not progress, leave=False
        )

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._bar.set_postfix_str(name)
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


# --- the pipeline steps -----------------------------------------------------------------------


def _simulate(scan, det, dose, seed, rotation_deg, flip_y) -> SimulatedScan:
    """A doped lattice with vacancies, scanned once per object pixel (oversample 1)."""
    sample = lattice(
        (scan, scan),
        SCAN_STEP_A,
        a_A=LATTICE_A,
        dopant_fraction=DOPANT_FRACTION,
        vacancy_fraction=VACANCY_FRACTION,
        seed=seed,
    )
    return simulate_4dstem(
        sample.phase,
        scan_step_A=SCAN_STEP_A,
        det_shape=(det, det),
        voltage_kV=VOLTAGE_KV,
        convergence_mrad=CONVERGENCE_MRAD,
        dose=dose,
        dtype=_count_dtype(det, dose),
        rotation_deg=rotation_deg,
        flip_y=flip_y,
        seed=seed,
    )


def _count_dtype(det: int, dose: float | None) -> type:
    """float32 for noise-free intensities; uint16 counts unless the BF disk could overflow them.

    The BF disk holds nearly the whole dose spread over π·r_α² pixels (r_α ≈ 0.16·D here);
    strong scattering concentrates it by a small factor, hence the margin of 8.
    """
    if dose is None:
        return np.float32
    # r_α = α / Δθ with Δθ = λ / (D·step) (simulate_4dstem's detector sampling).
    r_px = CONVERGENCE_MRAD * 1e-3 * det * SCAN_STEP_A / wavelength_A(VOLTAGE_KV)
    peak = 8.0 * dose / (math.pi * max(r_px, 1.0) ** 2)
    return np.uint16 if peak < np.iinfo(np.uint16).max else np.uint32


@dataclasses.dataclass(frozen=True)
class _Detectors:
    bf: np.ndarray
    adf: np.ndarray
    origin: tuple[float, float]
    bf_radius_px: float
    adf_inner_px: float
    adf_outer_px: float


def _detectors(cal: Calibration, det: int) -> _Detectors:
    """BF disk of radius r_α and an ADF ring from 1.2·r_α to the largest circle on the chip."""
    origin = cal.origin_for((det, det))
    r_bf = cal.bf_radius_px
    # The largest ring that still fits: the frame edge nearest to the origin (no clipped corners,
    # so the ADF is rotationally symmetric).
    outer = float(min(origin[0], origin[1], det - 1 - origin[0], det - 1 - origin[1]))
    inner = ADF_INNER_FACTOR * r_bf
    if not inner < outer:
        raise ValueError(
            f"the detector ({det} px) leaves no room for an ADF ring outside the BF disk "
            f"(r_α = {r_bf:.1f} px); use a larger det"
        )
    return _Detectors(
        bf=disk((det, det), r_bf, origin),
        adf=annulus((det, det), inner, outer, origin),
        origin=origin,
        bf_radius_px=r_bf,
        adf_inner_px=inner,
        adf_outer_px=outer,
    )


def _probe_limited_truth(sim: SimulatedScan) -> np.ndarray:
    """Ground-truth phase cross-correlated with the probe intensity |P|² (periodic).

    For any-strength thin objects ⟨k⟩(R) = (1/2π) ∫|P(r − R)|² ∇φ(r) dr (PHYSICS.md §2.2), so
    an exact integration of the CoM field returns |P|² ⋆ φ, not φ: this is the best iDPC can do.
    Valid because the demo object is periodic and scanned at its own pixel (oversample 1).
    """
    phase = sim.phase
    psf = np.abs(sim.probe) ** 2
    d = psf.shape[0]
    kernel = np.zeros(phase.shape)
    iy = (np.arange(d) - d // 2) % phase.shape[0]
    ix = (np.arange(d) - d // 2) % phase.shape[1]
    np.add.at(kernel, (iy[:, None], ix[None, :]), psf)  # wrap the D×D patch onto the box
    return np.real(np.fft.ifft2(np.fft.fft2(phase) * np.conj(np.fft.fft2(kernel))))


def _band_limited_truth(phase: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Ground-truth phase keeping only the frequencies SSB transfers (and the mean)."""
    keep = transfer > 0
    keep[0, 0] = True
    return np.real(np.fft.ifft2(np.fft.fft2(phase) * keep))


# --- outputs ----------------------------------------------------------------------------------


def _write_arrays(out: Path, maps: dict[str, np.ndarray]) -> dict[str, Path]:
    files = {}
    for key, name in ARRAY_FILES.items():
        files[key] = out / name
        np.save(files[key], np.ascontiguousarray(maps[key], dtype=np.float32))
    return files


def _summary_dict(
    res: DemoResult, det: _Detectors, rot: _dpc.RotationResult, ssb_parameters: dict[str, Any]
) -> dict[str, Any]:
    import stemedge

    cal = res.calibration
    mrad = cal.det_mrad_per_px
    return {
        "stemedge_version": stemedge.__version__,
        "parameters": {
            "scan": res.scan,
            "det": res.det,
            "dose_e_per_frame": res.dose,
            "data_dtype": res.data_dtype,
            "scan_step_A": SCAN_STEP_A,
            "voltage_kV": VOLTAGE_KV,
            "convergence_mrad": CONVERGENCE_MRAD,
            "sample": {
                "kind": "square lattice",
                "a_A": LATTICE_A,
                "dopant_fraction": DOPANT_FRACTION,
                "vacancy_fraction": VACANCY_FRACTION,
            },
        },
        "calibration": cal.to_dict(),
        "detectors": {
            "bf_radius_px": det.bf_radius_px,
            "bf_radius_mrad": det.bf_radius_px * mrad,
            "adf_inner_px": det.adf_inner_px,
            "adf_outer_px": det.adf_outer_px,
            "adf_inner_mrad": det.adf_inner_px * mrad,
            "adf_outer_mrad": det.adf_outer_px * mrad,
            "com": "whole frame",
        },
        "rotation": {
            "true_deg": res.true_rotation_deg,
            "true_flip_y": res.true_flip_y,
            "found_deg": res.found_rotation_deg,
            "found_flip_y": res.found_flip_y,
            "error_deg": res.rotation_error_deg,
            "rms_curl": rot.rms_curl,
            "rms_div": rot.rms_div,
            "resolved_by": rot.resolved_by,
        },
        "correlation": {
            "idpc_vs_ground_truth": _json_number(res.correlation),
            "idpc_vs_probe_limited_truth": _json_number(res.correlation_probe_limited),
            "ssb_vs_band_limited_truth": _json_number(res.ssb_correlation),
        },
        "ssb": {**ssb_parameters, "time_s": res.ssb_time_s},
        "timings_s": res.timings_s,
        "stream": {
            **res.stream,
            "rate_requested_frames_per_s": res.rate_requested,
            "capacity_gb_per_s": res.capacity_gb_per_s,
            "read_gb_per_s": res.read_gb_per_s,
            "capacity_to_read_bandwidth": res.capacity_gb_per_s / res.read_gb_per_s,
            "analysis_gb_per_s": res.analysis_gb_per_s,
            "analysis_to_read_bandwidth": res.analysis_gb_per_s / res.read_gb_per_s,
        },
        "simd_active": res.simd_active,
        "files": {key: path.name for key, path in res.files.items()},
    }


# --- the figure -------------------------------------------------------------------------------


def _scan_extent(shape: tuple[int, ...], step_A: tuple[float, float]) -> list[float]:
    """imshow extent [Å] that puts pixel (i, j) at (i·Δy, j·Δx), y pointing down."""
    (ny, nx), (dy, dx) = shape[:2], step_A
    return [-0.5 * dx, (nx - 0.5) * dx, (ny - 0.5) * dy, -0.5 * dy]


def field_rgb(field: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Colour-wheel image of a (y, x) vector field: hue = direction, value = magnitude.

    Parameters
    ----------
    field : ndarray (..., 2)
        Vectors (y, x), y pointing down as displayed.
    vmax : float, optional
        Magnitude shown at full brightness; default the 99.5th percentile (a few hot pixels
        must not darken the whole map).

    Returns
    -------
    ndarray (..., 3)
        RGB in [0, 1]. Red points along +x (right), hues turn clockwise on screen with y down.
    """
    from matplotlib.colors import hsv_to_rgb

    mag = np.hypot(field[..., 0], field[..., 1])
    if vmax is None:
        vmax = float(np.percentile(mag, 99.5))
    vmax = vmax if vmax > 0 else 1.0
    hue = (np.arctan2(field[..., 0], field[..., 1]) / (2 * np.pi)) % 1.0
    hsv = np.stack([hue, np.ones_like(hue), np.clip(mag / vmax, 0.0, 1.0)], axis=-1)
    return hsv_to_rgb(hsv)


def _draw_wheel(ax, vmax_mrad: float) -> None:
    """The colour-wheel legend, drawn with field_rgb itself so that it cannot disagree."""
    n = 129
    yy, xx = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    rgba = np.ones((n, n, 4))
    rgba[..., :3] = field_rgb(np.stack([yy, xx], axis=-1), vmax=1.0)
    rgba[..., 3] = np.hypot(yy, xx) <= 1.0  # transparent outside the disk
    ax.imshow(rgba, extent=[-1, 1, 1, -1], interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("direction", fontsize=9)
    # Black = no deflection, full brightness = vmax (brighter pixels are clipped).
    ax.set_xlabel(f"+y ↓\n\n|θ|: 0 (black)\nto {vmax_mrad:.2g} mrad", fontsize=9)
    ax.annotate(
        "+x →", (1.0, 0.0), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8
    )


def _image_panel(fig, ax, image, extent, title, cmap, label, symmetric=False) -> None:
    """A scan-space map with Å axes and a labelled colourbar."""
    kw = {}
    if symmetric:
        lim = float(np.max(np.abs(image))) or 1.0
        kw = {"vmin": -lim, "vmax": lim}
    im = ax.imshow(image, extent=extent, cmap=cmap, interpolation="nearest", **kw)
    ax.set_title(title)
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    fig.colorbar(im, ax=ax, shrink=0.85, label=label)


def _diffraction_panel(fig, ax, mean_pattern, dets: _Detectors, mrad: float, unit: str) -> None:
    """Mean pattern on a log scale, axes in mrad, with the virtual detectors outlined."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Circle

    d_y, d_x = mean_pattern.shape
    oy, ox = dets.origin
    extent = [
        (-0.5 - ox) * mrad,
        (d_x - 0.5 - ox) * mrad,
        (d_y - 0.5 - oy) * mrad,
        (-0.5 - oy) * mrad,
    ]
    top = float(mean_pattern.max()) or 1.0
    # Five decades show the BF disk, its scattered halo and the ADF tails; below that the
    # (noise-free) pattern only holds aperture ringing.
    norm = LogNorm(vmin=top * 1e-5, vmax=top, clip=True)
    im = ax.imshow(
        np.maximum(mean_pattern, top * 1e-5),
        extent=extent,
        cmap="magma",
        norm=norm,
        interpolation="nearest",
    )
    rings = [
        (dets.bf_radius_px, "#4dd2ff", "-", "BF"),
        (dets.adf_inner_px, "#7CFC00", "--", "ADF"),
        (dets.adf_outer_px, "#7CFC00", "--", None),
    ]
    for r, colour, style, name in rings:
        ax.add_patch(Circle((0, 0), r * mrad, fill=False, ec=colour, ls=style, lw=1.2, label=name))
    ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    ax.set_title("mean diffraction pattern (log)")
    ax.set_xlabel(r"$\theta_x$ (mrad)")
    ax.set_ylabel(r"$\theta_y$ (mrad)")
    fig.colorbar(im, ax=ax, shrink=0.85, label=f"mean {unit} per px")


def _transfer_panel(fig, ax, transfer: np.ndarray, cal: Calibration) -> None:
    """Which scan frequencies the SSB reconstruction transfers (fftshifted, Å⁻¹ axes)."""
    ny, nx = transfer.shape
    qy = np.fft.fftshift(np.fft.fftfreq(ny, cal.scan_step_A[0]))
    qx = np.fft.fftshift(np.fft.fftfreq(nx, cal.scan_step_A[1]))
    im = ax.imshow(
        np.fft.fftshift(transfer),
        extent=[qx[0], qx[-1], qy[-1], qy[0]],
        cmap="viridis",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    theta = np.linspace(0, 2 * np.pi, 200)
    ka2 = 2 * cal.k_alpha
    ax.plot(ka2 * np.cos(theta), ka2 * np.sin(theta), "w--", lw=0.8, label="|Q| = 2k_α")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("SSB transfer (weak phase)")
    ax.set_xlabel("Q_x (Å⁻¹)")
    ax.set_ylabel("Q_y (Å⁻¹)")
    fig.colorbar(im, ax=ax, shrink=0.85, label="transfer")


def _title(res: DemoResult) -> str:
    cal = res.calibration
    dose = "noise-free" if res.dose is None else f"{res.dose:g} e⁻/frame"
    return (
        f"stemedge demo · {res.scan}×{res.scan} scan, {SCAN_STEP_A:g} Å step · "
        f"{res.det}×{res.det} detector, {cal.det_mrad_per_px:.2f} mrad/px · "
        f"{VOLTAGE_KV:g} kV, α = {CONVERGENCE_MRAD:g} mrad · {dose}\n"
        f"rotation true {_orientation(res.true_rotation_deg, res.true_flip_y)} → found "
        f"{_orientation(res.found_rotation_deg, res.found_flip_y)} · iDPC vs truth "
        f"r = {res.correlation:.3f} (probe-limited {res.correlation_probe_limited:.3f}) · "
        f"SSB vs band-limited truth r = {res.ssb_correlation:.3f}\n"
        f"live {res.frames_per_s / 1e3:,.1f} k frames/s, analyses "
        f"{res.analysis_gb_per_s / res.read_gb_per_s:.2f}× memory bandwidth ({res.simd_active})"
    )


def _plot_summary(
    path: Path,
    res: DemoResult,
    maps: dict[str, np.ndarray],
    mean_pattern: np.ndarray,
    dets: _Detectors,
    ssb_transfer: np.ndarray,
) -> None:
    """Write the 2×4 summary figure (Agg canvas only: no GUI, no global pyplot state)."""
    from matplotlib.figure import Figure

    cal = res.calibration
    extent = _scan_extent(maps["virtual_bf"].shape, cal.scan_step_A)
    counts = "e⁻" if res.dose is not None else "fraction of beam"
    mrad = cal.det_mrad_per_px

    fig = Figure(figsize=(20, 9.6), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, 4)
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
    field_grid = grid[0, 2].subgridspec(1, 2, width_ratios=[1.0, 0.36])
    ax_field, ax_wheel = fig.add_subplot(field_grid[0]), fig.add_subplot(field_grid[1])
    axes += [fig.add_subplot(grid[0, 3])] + [fig.add_subplot(grid[1, i]) for i in range(4)]
    ax_bf, ax_adf, ax_diff, ax_phase, ax_ssb, ax_truth, ax_transfer = axes

    r_bf = dets.bf_radius_px * mrad
    _image_panel(
        fig, ax_bf, maps["virtual_bf"], extent, f"virtual BF (0–{r_bf:.0f} mrad)", "gray", counts
    )
    adf_range = f"{dets.adf_inner_px * mrad:.0f}–{dets.adf_outer_px * mrad:.0f} mrad"
    _image_panel(
        fig, ax_adf, maps["virtual_adf"], extent, f"virtual ADF ({adf_range})", "gray", counts
    )

    field = maps["field_mrad"]
    vmax = float(np.percentile(np.hypot(field[..., 0], field[..., 1]), 99.5))
    ax_field.imshow(field_rgb(field, vmax), extent=extent, interpolation="nearest")
    ax_field.set_title("CoM deflection (scan frame)")
    ax_field.set_xlabel("x (Å)")
    ax_field.set_ylabel("y (Å)")
    _draw_wheel(ax_wheel, vmax)

    _image_panel(
        fig,
        ax_phase,
        maps["idpc_phase_rad"],
        extent,
        "iDPC phase",
        "RdBu_r",
        "phase (rad)",
        symmetric=True,
    )
    ssb_phase = maps["ssb_phase_rad"]
    _image_panel(
        fig,
        ax_ssb,
        ssb_phase - ssb_phase.mean(),
        extent,
        "SSB phase − mean",
        "RdBu_r",
        "phase (rad)",
        symmetric=True,
    )
    truth = maps["ground_truth_phase_rad"]
    _image_panel(
        fig,
        ax_truth,
        truth - truth.mean(),
        extent,
        "ground-truth phase − mean",
        "RdBu_r",
        "phase (rad)",
        symmetric=True,
    )
    _diffraction_panel(
        fig, ax_diff, mean_pattern, dets, mrad, "e⁻" if res.dose is not None else "intensity"
    )

    _transfer_panel(fig, ax_transfer, ssb_transfer, cal)

    fig.suptitle(_title(res), fontsize=11)
    fig.savefig(path, dpi=100)


def _stream(
    sim: SimulatedScan,
    cal0: Calibration,
    dets: _Detectors,
    emd: EMDWriter,
    rate,
    workers,
    status,
    gpu=False,
) -> PipelineResult:
    """Stream the scan through the live pipeline: fused CoM + BF + ADF, mean pattern, raw frames
    to the EMD file. One native thread per worker: the workers are the parallelism."""
    analyses = [
        CenterOfMassAnalysis(
            origin=dets.origin, virtual={"bf": dets.bf, "adf": dets.adf}, idpc=False, nthreads=1
        ),
        MeanPattern(),
    ]
    source = SimSource(sim, calibration=cal0, frame_rate=rate)
    pipe = Pipeline(source, analyses, sinks=[emd], workers=workers, status=status, gpu=gpu)
    return pipe.run()


def _read_bandwidth(data: np.ndarray, repeats: int = 7) -> float:
    """Median bytes/s of one native read of ``data``: the limit any analysis of it runs at."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_pass(data)
        times.append(time.perf_counter() - t0)
    return data.nbytes / float(np.median(times))


def run_demo(
    out_dir: str | Path,
    *,
    scan: int = 64,
    det: int = 64,
    dose: float | None = 2e4,
    seed: int = 0,
    rotation_deg: float = 0.0,
    flip_y: bool = False,
    rate: float | None = DEFAULT_RATE,
    workers: int = 2,
    gpu: bool | str = False,
    status=None,
    progress: bool = True,
) -> DemoResult:
    """Simulate, stream, analyse live and report a 4D-STEM DPC scan of a known sample.

    Parameters
    ----------
    out_dir : str or path
        Output folder, created if needed.
    scan : int
        Scan positions per side (≥ 8); the object grid is scan×scan at 0.26 Å.
    det : int
        Detector pixels per side (≥ 16); it samples ``1000·λ/(det·0.26 Å)`` mrad/px.
    dose : float or None
        Mean electrons per frame (Poisson noise, integer frames); 0 or None: noise-free float32.
    seed : int
        Seed of the sample's dopant/vacancy sites and of the noise.
    rotation_deg, flip_y : float, bool
        Detector orientation given to the simulator, to be recovered by the analysis.
    rate : float or None
        Frames/s the simulated detector delivers; None or 0: as fast as the pipeline takes them.
    workers : int
        Pipeline worker threads.
    gpu : bool or 'auto'
        Run the live CoM and virtual detectors on the GPU (:class:`stemedge.pipeline.Pipeline`
        ``gpu=``; the mean pattern and the EMD write stay on the host).
    status : str or StatusPublisher, optional
        Publish started/progress/finished events there (e.g. ``tcp://127.0.0.1:5556``).
    progress : bool
        Show tqdm progress bars (on stderr).

    Returns
    -------
    DemoResult
        Paths written and the key numbers; ``result.report()`` is the terminal summary.

    Raises
    ------
    ValueError
        Bad arguments (checked before anything runs).
    OSError
        If ``out_dir`` cannot be created or written.
    """
    scan, det, dose, seed, rotation_deg = _check_args(scan, det, dose, seed, rotation_deg)
    rate = _check_rate(rate)
    workers = _check_int(workers, "workers", 1)
    flip_y = bool(flip_y)
    out = _prepare_out_dir(out_dir)
    info = build_info()
    steps = _Steps(progress)
    from stemedge.status import open_publisher

    publisher, own_publisher = open_publisher(status, job="demo")
    t_start = time.perf_counter()
    files = {"emd": out / EMD_FILE}
    try:
        with steps.step("simulate"):
            sim = _simulate(scan, det, dose, seed, rotation_deg, flip_y)
            # The analysis must not peek at the true orientation: start from an unrotated one.
            cal0 = sim.calibration.replace(rotation_deg=0.0, flip_y=False)
            dets = _detectors(cal0, det)
            geometry = SimSource(sim, calibration=cal0).geometry

        emd = EMDWriter(files["emd"], geometry, overwrite=True)
        with emd:
            with steps.step("stream"):
                live = _stream(sim, cal0, dets, emd, rate, workers, publisher, gpu)
            com = live.results["com"]

            with steps.step("rotation"):
                # A constant descan offset would not bias the search, but remove the mean anyway
                # so the shifts saved and integrated are those of the specimen alone.
                shifts = _dpc.descan_correct(com["shifts_px"], method="mean")
                rot = _dpc.find_rotation(shifts, step_A=cal0.scan_step_A)
                cal = rot.apply_to(cal0)

            with steps.step("DPC"):
                result = _dpc.dpc(shifts, cal)

            with steps.step("SSB"):
                # Offline SSB with the recovered orientation: the weights need the rotation,
                # which the live CoM has just measured.
                t_ssb = time.perf_counter()
                ssb_result = _ssb(sim.data, cal, cutoff=SSB_CUTOFF)
                ssb_time = time.perf_counter() - t_ssb

            with steps.step("compare"):
                truth = sim.phase
                corr = pearson(result.phase, truth)
                corr_limited = pearson(result.phase, _probe_limited_truth(sim))
                corr_ssb = pearson(
                    ssb_result.phase, _band_limited_truth(truth, ssb_result.transfer)
                )

            with steps.step("bandwidth"):
                read_bps = _read_bandwidth(sim.data)

            maps = {
                "virtual_bf": com["bf"],
                "virtual_adf": com["adf"],
                "com_shifts_px": com["shifts_px"],
                "field_mrad": result.field_mrad,
                "idpc_phase_rad": result.phase,
                "ssb_phase_rad": ssb_result.phase,
                "ground_truth_phase_rad": truth,
            }
            with steps.step("write"):
                files.update(_write_arrays(out, maps))
                emd.write_results(
                    "dpc",
                    {k: np.asarray(v, np.float32) for k, v in maps.items()},
                    {
                        "com_shifts_px": "px",
                        "field_mrad": "mrad",
                        "idpc_phase_rad": "rad",
                        "ssb_phase_rad": "rad",
                        "ground_truth_phase_rad": "rad",
                    },
                )
                emd.write_results("patterns", {"mean": live.results["mean_pattern"]["mean"]})
                emd.provenance.update(
                    {
                        "job": "stemedge demo",
                        "source": live.source,
                        "ring": live.ring,
                        "stream": live.summary(),
                        "parameters": {
                            "scan": scan,
                            "det": det,
                            "dose": dose,
                            "seed": seed,
                            "rotation_deg": rotation_deg,
                            "flip_y": flip_y,
                            "rate": rate,
                            "workers": workers,
                            "gpu": live.gpu is not None,
                        },
                        "calibration_found": cal.to_dict(),
                    }
                )
        files["summary_png"] = out / "summary.png"
        files["summary_json"] = out / "summary.json"

        capacity = live.capacity_frames_per_s
        res = DemoResult(
            out_dir=out,
            files=files,
            scan=scan,
            det=det,
            dose=dose,
            data_dtype=sim.data.dtype.name,
            calibration=cal,
            true_rotation_deg=rotation_deg,
            true_flip_y=flip_y,
            found_rotation_deg=rot.rotation_deg,
            found_flip_y=rot.flip_y,
            rotation_error_deg=_wrap180(rot.rotation_deg - rotation_deg),
            curl_to_div=rot.rms_curl / rot.rms_div if rot.rms_div > 0 else float("nan"),
            correlation=corr,
            correlation_probe_limited=corr_limited,
            ssb_correlation=corr_ssb,
            ssb_time_s=ssb_time,
            rate_requested=rate,
            stream=live.summary(),
            frames_per_s=live.frames_per_s,
            capacity_frames_per_s=capacity,
            capacity_gb_per_s=capacity * geometry.frame_nbytes / 1e9,
            analysis_gb_per_s=live.analysis_capacity_frames_per_s * geometry.frame_nbytes / 1e9,
            read_gb_per_s=read_bps / 1e9,
            timings_s=steps.timings,
            simd_active=str(info.get("simd_active", "unknown")),
        )
        with steps.step("plot"):
            mean_pattern = live.results["mean_pattern"]["mean"]
            _plot_summary(files["summary_png"], res, maps, mean_pattern, dets, ssb_result.transfer)
    finally:
        steps.close()
        if own_publisher:
            publisher.close()

    # res.timings_s is this same dict: the total appears in the result as well as in the JSON.
    steps.timings["total"] = time.perf_counter() - t_start
    summary = _summary_dict(res, dets, rot, ssb_result.plan.parameters())
    files["summary_json"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return res
