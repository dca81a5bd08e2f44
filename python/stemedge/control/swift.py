"""SwiftMicroscope: the Microscope interface on Nion Swift's instrumentation (issue 7).

It drives the hardware sources that nionswift-instrumentation registers: the STEM controller,
the scan device (HAADF and MAADF channels) and the ronchigram camera. This works inside Swift
(the plugin) and headless, e.g. on the nionswift-usim simulator; see :func:`start_usim`.

Positions are (y, x) Å in the field of view of the last survey. Swift's probe positions are
fractions of that field. Frames are taken at the camera's current binning unless ``binning``
is given.
"""

from __future__ import annotations

import math
import pathlib
import queue
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from stemedge.calibration import Calibration
from stemedge.control.microscope import (
    DETECTORS,
    Microscope,
    MicroscopeError,
    MicroscopeState,
    SurveyImage,
    check_display,
    check_positions,
    check_positive,
    check_shape,
)
from stemedge.geometry import ScanGeometry
from stemedge.sources.base import Chunk, Source

__all__ = ["SwiftMicroscope", "start_usim"]


def start_usim() -> tuple[Any, Any]:
    """Bring up nionswift-usim's simulated instrument headless; returns ``(configuration,
    stop)`` where ``stop()`` shuts it down. (Inside Swift the plugin finds the real devices.)"""
    from nion.instrumentation import HardwareSource, camera_base, scan_base
    from nion.usim_device import DeviceConfiguration

    settings = pathlib.Path(tempfile.mkdtemp(prefix="stemedge_usim_"))
    HardwareSource.run()
    camera_base.run(settings)
    scan_base.run(settings)
    cfg = DeviceConfiguration.AcquisitionContextConfiguration(set_configuration_location=False)
    cfg.run()

    def stop() -> None:
        cfg.stop()
        scan_base.stop()
        camera_base.stop()
        HardwareSource.stop()

    return cfg, stop


def _to_mrad(cal) -> float:
    """An angular Swift calibration's scale in mrad (NaN unless its units are rad or mrad)."""
    scale = {"rad": 1e3, "mrad": 1.0}.get(str(getattr(cal, "units", "")), math.nan)
    return float(cal.scale) * scale


class SwiftMicroscope(Microscope):
    """A Microscope on Swift's STEM controller, scan device and ronchigram camera.

    Parameters
    ----------
    instrument : STEM controller
        nionswift-instrumentation's ``stem_controller`` (e.g. ``start_usim()[0].instrument``).
    scan, camera, eels : hardware sources
        The scan device, the ronchigram camera and the EELS camera (optional: only spectrum
        images need it); default: found by their usim ids.
    binning : int
        Camera binning for frames and 4D scans.
    section_rows : int
        Scan rows per synchronized section: 4D frames reach the data plane a section at a time
        while the scan runs (1 row: first frames after 0.8 s instead of 2.9 s for an 8×8 scan on
        usim, same total time).
    display : callable, optional
        ``display(title, array, pixel_A)`` puts a result in Swift's document; the plugin gives
        one that goes through Swift's task queue. Without it :meth:`show` refuses.
    """

    def __init__(
        self,
        instrument: Any,
        scan: Any = None,
        camera: Any = None,
        eels: Any = None,
        *,
        binning: int = 8,
        section_rows: int = 1,
        display: Callable[[str, np.ndarray, tuple[float, float] | None], None] | None = None,
    ) -> None:
        from nion.instrumentation import HardwareSource

        hsm = HardwareSource.HardwareSourceManager()
        self._instrument = instrument
        self._scan = scan or hsm.get_hardware_source_for_hardware_source_id("usim_scan_device")
        self._camera = camera or hsm.get_hardware_source_for_hardware_source_id(
            "usim_ronchigram_camera"
        )
        self._eels = eels or hsm.get_hardware_source_for_hardware_source_id("usim_eels_camera")
        if self._scan is None or self._camera is None:
            raise MicroscopeError("no scan device or ronchigram camera is registered")
        self._binning = int(binning)
        self._display = display
        if not 1 <= int(section_rows) <= 1024:
            raise ValueError(f"section_rows must be in [1, 1024], got {section_rows!r}")
        self.section_rows = int(section_rows)
        self._fov_A = (500.0, 500.0)
        self._lock = threading.Lock()
        self._aborted = threading.Event()

    # --- helpers ---------------------------------------------------------------------------------

    def _channel(self, detector: str) -> int:
        for i in range(self._scan.channel_count):
            if self._scan.get_channel_state(i).name.upper() == detector:
                return i
        raise MicroscopeError(f"the scan device has no {detector} channel")

    def _camera_params(self, exposure_ms: float):
        cfp = self._camera.get_current_frame_parameters()
        cfp.exposure_ms = exposure_ms
        cfp.binning = self._binning
        cfp.processing = None
        return cfp

    def _eels_params(self, exposure_ms: float):
        """EELS frame parameters for spectra (``sum_project``); MicroscopeError without EELS."""
        if self._eels is None:
            raise MicroscopeError("no EELS camera is registered")
        efp = self._eels.get_current_frame_parameters()
        efp.exposure_ms = exposure_ms
        efp.processing = "sum_project"
        return efp

    def _scan_params(self, ny: int, nx: int):
        """Scan frame parameters for a new synchronized ny × nx scan over our field of view."""
        from nion.utils import Geometry

        sfp = self._scan.get_current_frame_parameters()
        sfp.scan_id = uuid.uuid4()
        sfp.pixel_size = Geometry.IntSize(ny, nx)
        sfp.fov_nm = min(self._fov_A) / 10.0
        return sfp

    def _mrad_per_px(self) -> float:
        """The camera's angular calibration at our binning (NaN if it gives none in rad)."""
        try:
            cal = self._camera.get_camera_calibrations(self._camera_params(1.0))[-1]
        except Exception:
            return math.nan
        return _to_mrad(cal)

    def _optics(self) -> tuple[float, float]:
        """(high voltage [kV], convergence semi-angle [mrad]); NaN for what Swift does not say."""
        inst = self._instrument
        voltage = float(getattr(inst, "voltage", math.nan))
        conv = getattr(inst, "GetVal", lambda *_: math.nan)("ConvergenceAngle")
        return voltage / 1e3, float(conv) * 1e3 if conv == conv else math.nan

    def _fraction(self, pos: np.ndarray):
        from nion.utils import Geometry

        return Geometry.FloatPoint(
            y=float(pos[0] / self._fov_A[0]), x=float(pos[1] / self._fov_A[1])
        )

    # --- the interface ---------------------------------------------------------------------------

    def state(self) -> MicroscopeState:
        inst = self._instrument
        voltage_kV, convergence_mrad = self._optics()
        stage = getattr(inst, "stage_position_m", None)
        stage_nm = (
            (float(stage.y) * 1e9, float(stage.x) * 1e9, 0.0)
            if stage is not None
            else (0.0, 0.0, 0.0)
        )
        probe = getattr(inst, "probe_position", None)
        probe_A = (
            (float(probe.y) * self._fov_A[0], float(probe.x) * self._fov_A[1])
            if probe is not None
            else (math.nan, math.nan)
        )
        try:
            shape = tuple(int(s) for s in self._camera.get_expected_dimensions(self._binning))
        except Exception:
            shape = (0, 0)
        return MicroscopeState(
            instrument=f"Nion Swift: {type(inst).__module__}",
            voltage_kV=voltage_kV,
            convergence_mrad=convergence_mrad,
            defocus_A=float(getattr(inst, "defocus_m", math.nan)) * 1e10,
            probe_A=probe_A,
            fov_A=self._fov_A,
            camera_shape=shape,
            camera_mrad_per_px=self._mrad_per_px(),
            stage_nm=stage_nm,
            extra={
                "camera": self._camera.hardware_source_id,
                "scan": self._scan.hardware_source_id,
            },
        )

    def survey(self, size=(256, 256), *, fov_A=None, dwell_us=2.0, detector="HAADF") -> SurveyImage:
        ny, nx = check_shape(size, "size", 4096)
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        dwell = check_positive(dwell_us, "dwell_us", 1e6)
        fov = min(self._fov_A) if fov_A is None else check_positive(fov_A, "fov_A", 1e5)
        from nion.utils import Geometry

        with self._lock:
            self._aborted.clear()
            fp = self._scan.get_current_frame_parameters()
            fp.pixel_size = Geometry.IntSize(ny, nx)
            fp.fov_nm = fov / 10.0
            fp.pixel_time_us = dwell
            self._scan.set_enabled_channels([self._channel(detector)])
            xdata = self._scan.record_immediate(fp)[0]
            if self._aborted.is_set() or xdata is None:
                raise MicroscopeError("survey aborted")
            self._fov_A = (fov, fov)
            return SurveyImage(
                np.asarray(xdata.data, np.float32), (fov / ny, fov / nx), detector, dwell
            )

    def move_probe(self, position_A: Any) -> None:
        pos = check_positions(position_A, self._fov_A, 1)
        self._instrument.probe_position = self._fraction(pos[0])

    def frames_at(self, positions_A: Any, *, exposure_ms: float = 1.0) -> np.ndarray:
        pos = check_positions(positions_A, self._fov_A, 4096)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        with self._lock:
            self._aborted.clear()
            self._camera.set_current_frame_parameters(self._camera_params(exposure))
            frames = []
            try:
                for p in pos:
                    if self._aborted.is_set():
                        raise MicroscopeError("acquisition aborted")
                    self._instrument.probe_position = self._fraction(p)
                    frames.append(
                        np.asarray(self._camera.grab_next_to_finish()[0].data, np.float32)
                    )
            finally:
                self._camera.stop_playing(sync_timeout=3.0)
            return np.stack(frames)

    def spectra_at(
        self, positions_A: Any, *, exposure_ms: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        pos = check_positions(positions_A, self._fov_A, 4096)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        efp = self._eels_params(exposure)
        with self._lock:
            self._aborted.clear()
            self._eels.set_current_frame_parameters(efp)
            spectra = []
            try:
                for p in pos:
                    if self._aborted.is_set():
                        raise MicroscopeError("acquisition aborted")
                    self._instrument.probe_position = self._fraction(p)
                    xdata = self._eels.grab_next_to_finish()[0]
                    spectra.append(np.asarray(xdata.data, np.float32).reshape(-1))
            finally:
                self._eels.stop_playing(sync_timeout=3.0)
        return np.stack(spectra), _energy_axis(xdata.dimensional_calibrations[-1], spectra[0].size)

    def scan_4d(self, size, *, exposure_ms: float = 1.0) -> Source:
        """A synchronized 4D scan that streams while Swift acquires: frames reach the data
        plane as the camera delivers them, not when the scan ends."""
        ny, nx = check_shape(size, "size", 1024)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        sfp = self._scan_params(ny, nx)
        cfp = self._camera_params(exposure)
        info = self._scan.grab_synchronized_get_info(
            scan_frame_parameters=sfp, camera=self._camera, camera_frame_parameters=cfp
        )
        cal = info.data_calibrations[-1]
        step = min(self._fov_A) / max(ny, nx)
        voltage_kV, convergence_mrad = self._optics()
        mrad_per_px = _to_mrad(cal)
        calibration = Calibration(
            scan_step_A=(step, step),
            det_mrad_per_px=mrad_per_px if mrad_per_px > 0 else 1.0,  # 1.0: the camera did not say
            voltage_kV=voltage_kV,
            convergence_mrad=convergence_mrad if convergence_mrad > 0 else 20.0,
        )
        frame_shape = tuple(int(v) for v in info.camera_readout_size_squeezed)
        geometry = ScanGeometry((ny, nx), frame_shape, np.dtype(np.float32), calibration)
        return _SwiftScan(self, sfp, cfp, geometry)

    def scan_spectra(self, size, *, exposure_ms: float = 1.0) -> Source:
        """A synchronized EELS scan (``sum_project``) streamed while Swift acquires; frames are
        spectra (1, channels), ``source.energy_eV`` from the camera's calibration."""
        ny, nx = check_shape(size, "size", 1024)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        efp = self._eels_params(exposure)
        sfp = self._scan_params(ny, nx)
        info = self._scan.grab_synchronized_get_info(
            scan_frame_parameters=sfp, camera=self._eels, camera_frame_parameters=efp
        )
        channels = int(info.camera_readout_size_squeezed[-1])
        cal = info.data_calibrations[-1]
        geometry = ScanGeometry((ny, nx), (1, channels), np.dtype(np.float32), None)
        source = _SwiftScan(self, sfp, efp, geometry, camera=self._eels, kind="scan_spectra")
        source.energy_eV = _energy_axis(cal, channels)
        return source

    def spectrum_image(self, size, *, exposure_ms: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = check_shape(size, "size", 1024)
        exposure = check_positive(exposure_ms, "exposure_ms", 1e4)
        efp = self._eels_params(exposure)
        with self._lock:
            self._aborted.clear()
            self._instrument.probe_position = None
            sfp = self._scan_params(ny, nx)
            result = self._scan.grab_synchronized(
                scan_frame_parameters=sfp, camera=self._eels, camera_frame_parameters=efp
            )
            if self._aborted.is_set() or result is None:
                raise MicroscopeError("spectrum image aborted")
            xdata = result[1][0]
        cube = np.ascontiguousarray(np.asarray(xdata.data, np.float32))
        return cube, _energy_axis(xdata.dimensional_calibrations[-1], cube.shape[-1])

    def show(self, title: str, data: Any, *, pixel_A: tuple[float, float] | None = None) -> None:
        title, a = check_display(title, data)
        if self._display is None:
            raise MicroscopeError("no Swift document to show results in (headless instrument)")
        self._display(title, a, pixel_A)

    def abort(self) -> None:
        self._aborted.set()
        try:
            self._scan.grab_synchronized_abort()
        except Exception:
            pass


class _SwiftScan(Source):
    """A synchronized scan run on a thread; the camera's partial data is cut into whole frames
    as it arrives (a Swift data channel) and handed to :meth:`chunks` through a queue."""

    def __init__(
        self,
        scope: SwiftMicroscope,
        sfp: Any,
        cfp: Any,
        geometry: ScanGeometry,
        camera: Any = None,
        kind: str = "scan_4d",
    ):
        self._scope, self._sfp, self._cfp = scope, sfp, cfp
        self._camera = camera if camera is not None else scope._camera
        self._kind = kind
        self.geometry = geometry
        self._section_height = scope.section_rows

    def describe(self) -> dict[str, Any]:
        return {
            "kind": f"SwiftMicroscope.{self._kind}",
            "scan_shape": list(self.geometry.scan_shape),
            "exposure_ms": float(self._cfp.exposure_ms),
            "camera": self._camera.hardware_source_id,
        }

    def _channel(self, out: queue.Queue):
        from nion.instrumentation import Acquisition

        camera_id = self._camera.hardware_source_id
        frame_elems = math.prod(self.geometry.frame_shape)

        class StreamingChannel(Acquisition.DataAndMetadataDataChannel):
            sent = 0  # frames handed on so far

            def update_data(self, channel, source_data, source_slice, dest_slice, data_metadata):
                super().update_data(channel, source_data, source_slice, dest_slice, data_metadata)
                if channel.segments[0] != camera_id:
                    return
                done = int(dest_slice.stop) // frame_elems
                if done > self.sent:
                    flat = np.asarray(self.get_data(channel).data).reshape(-1)
                    frames = flat[self.sent * frame_elems : done * frame_elems]
                    out.put(
                        (
                            np.array(frames, np.float32).reshape(-1, *self_shape),
                            np.arange(self.sent, done, dtype=np.int64),
                        )
                    )
                    self.sent = done

        self_shape = self.geometry.frame_shape
        return StreamingChannel()

    def chunks(self, max_frames: int) -> Iterator[Chunk]:
        scope = self._scope
        out: queue.Queue = queue.Queue()
        failure: list[BaseException] = []
        n = self.geometry.n_positions

        def acquire() -> None:
            try:
                with scope._lock:
                    scope._aborted.clear()
                    scope._instrument.probe_position = None
                    result = scope._scan.grab_synchronized(
                        data_channel=self._channel(out),
                        scan_frame_parameters=self._sfp,
                        camera=self._camera,
                        camera_frame_parameters=self._cfp,
                        section_height=self._section_height,
                    )
                    if scope._aborted.is_set() or result is None:
                        raise MicroscopeError(f"{self._kind} aborted")
            except BaseException as e:
                failure.append(e)
            finally:
                out.put(None)

        thread = threading.Thread(target=acquire, name="stemedge-swift-4d", daemon=True)
        thread.start()
        delivered = 0
        try:
            while (item := out.get()) is not None:
                frames, indices = item
                for i in range(0, len(indices), max_frames):
                    yield Chunk(frames[i : i + max_frames], indices[i : i + max_frames])
                delivered += len(indices)
            if failure:
                raise failure[0]
            if delivered != n:
                raise MicroscopeError(f"the camera delivered {delivered} of {n} frames")
        finally:
            if thread.is_alive():  # the consumer stopped early: stop the instrument too
                scope.abort()
            thread.join(timeout=30.0)


def _energy_axis(cal, n: int) -> np.ndarray:
    """Energy (eV) of each of ``n`` channels from Swift's calibration of the spectral axis."""
    return (cal.offset + cal.scale * np.arange(n)).astype(np.float32)
