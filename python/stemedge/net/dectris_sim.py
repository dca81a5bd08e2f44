"""DECTRIS SIMPLON stream (API v1) simulator: a PUSH socket that streams series like a detector.

For tests, benchmarks and users without a detector. Frames are compressed once (bitshuffle-LZ4
framed as the detector does, plain LZ4, or raw) with their md5 hashes, then sent repeatedly,
cycling through them, as fast as the receiver takes them or at a chosen rate. Run it in another
process::

    python -m stemedge.net.dectris_sim --port 9999 --frames 100000 --shape 512 \\
        --dtype uint16 --counts 0.1 --rate 10000

It prints ``READY <endpoint>`` once bound and a JSON summary (images sent, seconds, rate) at the
end. The message format is the one :mod:`stemedge.net.dectris` documents; the low-level
``send_*`` methods let tests send malformed or out-of-order messages over a real socket.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from stemedge import _native
from stemedge.net.dectris import (
    HTYPE_END,
    HTYPE_HEADER,
    HTYPE_IMAGE_D,
)

__all__ = ["DectrisSimulator", "SendStats", "main", "make_frames"]

_DTYPES = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16, np.dtype(np.uint32): 32}


def make_frames(
    n: int,
    shape: int | tuple[int, int],
    dtype=np.uint16,
    *,
    counts: float = 0.1,
    disk_counts: float = 0.0,
    disk_radius: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """``n`` Poisson frames with ``counts`` electrons/px on average, plus an optional bright disk
    (``disk_counts`` per px within ``disk_radius`` of a centre that moves a little per frame)."""
    sy, sx = (shape, shape) if np.isscalar(shape) else (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    frames = np.empty((n, sy, sx), dtype=dtype)
    yy, xx = np.ogrid[:sy, :sx]
    for i in range(n):
        lam = np.full((sy, sx), counts, dtype=np.float64)
        if disk_counts > 0 and disk_radius > 0:
            cy = sy / 2 + 2.0 * np.sin(0.7 * i)
            cx = sx / 2 + 2.0 * np.cos(0.5 * i)
            lam[(yy - cy) ** 2 + (xx - cx) ** 2 <= disk_radius**2] += disk_counts
        frames[i] = np.minimum(rng.poisson(lam), info.max)
    return frames


@dataclasses.dataclass
class SendStats:
    """What one series sent."""

    series: int
    images: int
    elapsed_s: float
    payload_bytes: int

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["images_per_s"] = self.images_per_s
        return d


class DectrisSimulator:
    """Stream series of images in the DECTRIS SIMPLON stream v1 format.

    Parameters
    ----------
    frames : ndarray (k, y, x) or (y, x)
        uint8/uint16/uint32 frames; image ``i`` of a series is ``frames[i % k]``.
    endpoint : str
        Where the PUSH socket binds (``tcp://127.0.0.1:0`` picks a free port; see
        :attr:`endpoint` after construction).
    encoding : {'bslz4', 'lz4', 'raw'}
        ``bs<bits>-lz4<`` (needs the ``bitshuffle`` package), ``lz4<`` or ``<``.
    header_detail : {'basic', 'all', 'none'}
    header_appendix, image_appendix : bytes or str, optional
        Extra last parts of the header / of every image message.
    config : dict, optional
        Detector config entries to add or override.
    sndhwm : int
        ZeroMQ send high-water mark (messages).
    """

    def __init__(
        self,
        frames: np.ndarray,
        *,
        endpoint: str = "tcp://127.0.0.1:9999",
        encoding: str = "bslz4",
        header_detail: str = "basic",
        header_appendix: bytes | str | None = None,
        image_appendix: bytes | str | None = None,
        config: dict[str, Any] | None = None,
        sndhwm: int = 1000,
    ) -> None:
        a = np.asarray(frames)
        if a.ndim == 2:
            a = a[np.newaxis]
        if a.ndim != 3 or len(a) == 0:
            raise ValueError(f"frames must be (k, y, x) or (y, x), got shape {a.shape}")
        if a.dtype not in _DTYPES:
            raise TypeError(f"frames must be uint8, uint16 or uint32, got {a.dtype}")
        if encoding not in ("bslz4", "lz4", "raw"):
            raise ValueError(f"encoding must be 'bslz4', 'lz4' or 'raw', got {encoding!r}")
        if header_detail not in ("basic", "all", "none"):
            raise ValueError(
                f"header_detail must be 'basic', 'all' or 'none', got {header_detail!r}"
            )
        self.frames = np.ascontiguousarray(a)
        self.dtype = a.dtype
        self.frame_shape = (int(a.shape[1]), int(a.shape[2]))
        self.encoding = encoding
        self.header_detail = header_detail
        self.header_appendix = _as_bytes(header_appendix)
        self.image_appendix = _as_bytes(image_appendix)
        self.extra_config = dict(config or {})
        bits = _DTYPES[a.dtype]
        self.encoding_name = {"bslz4": f"bs{bits}-lz4<", "lz4": "lz4<", "raw": "<"}[encoding]
        self.blobs = [_encode(f, encoding) for f in self.frames]
        self.hashes = [hashlib.md5(b).hexdigest() for b in self.blobs]
        y, x = self.frame_shape
        self._dimage_d = [
            json.dumps(
                {
                    "htype": HTYPE_IMAGE_D,
                    "shape": [x, y],
                    "type": self.dtype.name,
                    "encoding": self.encoding_name,
                    "size": len(b),
                }
            ).encode()
            for b in self.blobs
        ]
        self.images_sent = 0
        self._ctx = zmq.Context(io_threads=1)
        try:
            self._sock = self._ctx.socket(zmq.PUSH)
            self._sock.setsockopt(zmq.LINGER, 2000)
            self._sock.setsockopt(zmq.SNDHWM, int(sndhwm))
            self._sock.setsockopt(zmq.SNDBUF, 4 << 20)
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            raise ValueError(f"cannot bind {endpoint!r}: {exc}") from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._closed = False

    # -- messages ---------------------------------------------------------------------------------
    def detector_config(self, n_images: int) -> dict[str, Any]:
        """The detector configuration part of the header (a representative SIMPLON subset)."""
        y, x = self.frame_shape
        cfg: dict[str, Any] = {
            "auto_summation": True,
            "beam_center_x": x / 2,
            "beam_center_y": y / 2,
            "bit_depth_image": _DTYPES[self.dtype],
            "bit_depth_readout": _DTYPES[self.dtype],
            "compression": {"bslz4": "bslz4", "lz4": "lz4", "raw": "none"}[self.encoding],
            "count_time": 9.9e-5,
            "countrate_correction_applied": True,
            "description": "stemedge DECTRIS simulator",
            "detector_number": "SIM-0001",
            "flatfield_correction_applied": True,
            "frame_time": 1e-4,
            "nimages": int(n_images),
            "ntrigger": 1,
            "pixel_mask_applied": True,
            "sensor_material": "Si",
            "sensor_thickness": 4.5e-4,
            "software_version": "stemedge-sim",
            "trigger_mode": "ints",
            "x_pixel_size": 7.5e-5,
            "x_pixels_in_detector": x,
            "y_pixel_size": 7.5e-5,
            "y_pixels_in_detector": y,
        }
        cfg.update(self.extra_config)
        return cfg

    def header_parts(self, series: int, n_images: int) -> list[bytes]:
        y, x = self.frame_shape
        parts = [
            json.dumps(
                {"htype": HTYPE_HEADER, "series": series, "header_detail": self.header_detail}
            ).encode()
        ]
        if self.header_detail in ("basic", "all"):
            parts.append(json.dumps(self.detector_config(n_images)).encode())
        if self.header_detail == "all":
            flat = np.ones((y, x), np.float32)
            mask = np.zeros((y, x), np.uint32)
            mask[0, 0] = 1  # one dead pixel, so tests can see the mask travel
            table = np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
            for htype, arr in (
                ("dflatfield-1.0", flat),
                ("dpixelmask-1.0", mask),
                ("dcountrate_table-1.0", table),
            ):
                parts.append(
                    json.dumps(
                        {
                            "htype": htype,
                            "shape": [arr.shape[1], arr.shape[0]],
                            "type": arr.dtype.name,
                        }
                    ).encode()
                )
                parts.append(arr.tobytes())
        if self.header_appendix is not None:
            parts.append(self.header_appendix)
        return parts

    def image_parts(self, frame: int, series: int, *, blob: int | None = None) -> list[bytes]:
        b = frame % len(self.blobs) if blob is None else blob
        t = frame * 100_000  # ns, a 10 kHz detector
        parts = [
            b'{"htype":"dimage-1.0","series":%d,"frame":%d,"hash":"%s"}'
            % (series, frame, self.hashes[b].encode()),
            self._dimage_d[b],
            self.blobs[b],
            b'{"htype":"dconfig-1.0","start_time":%d,"stop_time":%d,"real_time":%d}'
            % (t, t + 99_000, 99_000),
        ]
        if self.image_appendix is not None:
            parts.append(self.image_appendix)
        return parts

    @staticmethod
    def end_parts(series: int) -> list[bytes]:
        return [json.dumps({"htype": HTYPE_END, "series": series}).encode()]

    # -- sending ----------------------------------------------------------------------------------
    def send_parts(self, parts: Sequence[bytes], timeout_s: float | None = None) -> None:
        """Send one multipart message (blocks while no receiver takes it; TimeoutError after
        ``timeout_s``)."""
        self._sock.setsockopt(zmq.SNDTIMEO, -1 if timeout_s is None else int(timeout_s * 1000))
        try:
            self._sock.send_multipart(list(parts))
        except zmq.Again:
            raise TimeoutError(f"no receiver took the message within {timeout_s} s") from None

    def send_header(self, series: int, n_images: int, timeout_s: float | None = None) -> None:
        self.send_parts(self.header_parts(series, n_images), timeout_s)

    def send_image(self, frame: int, series: int, timeout_s: float | None = None) -> None:
        self.send_parts(self.image_parts(frame, series), timeout_s)
        self.images_sent += 1

    def send_end(self, series: int, timeout_s: float | None = None) -> None:
        self.send_parts(self.end_parts(series), timeout_s)

    def send_series(
        self,
        n_images: int,
        *,
        series: int = 1,
        rate_hz: float | None = None,
        timeout_s: float | None = None,
    ) -> SendStats:
        """Header, ``n_images`` images (cycling through the frames), end of series.

        ``rate_hz`` paces the images like a detector's frame rate (None: as fast as the
        receiver takes them). ``timeout_s`` bounds each wait for the receiver.
        """
        if int(n_images) < 0:
            raise ValueError(f"n_images must be >= 0, got {n_images!r}")
        if rate_hz is not None and not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive or None, got {rate_hz!r}")
        sock = self._sock
        sock.setsockopt(zmq.SNDTIMEO, -1 if timeout_s is None else int(timeout_s * 1000))
        send = sock.send_multipart
        self.send_parts(self.header_parts(series, n_images), timeout_s)
        n_blobs = len(self.blobs)
        heads = [
            b'{"htype":"dimage-1.0","series":%d,"frame":%%d,"hash":"%s"}' % (series, h.encode())
            for h in self.hashes
        ]
        appendix = self.image_appendix
        payload = 0
        t0 = time.perf_counter()
        try:
            for i in range(int(n_images)):
                if rate_hz is not None:
                    ahead = t0 + i / rate_hz - time.perf_counter()
                    if ahead > 0.002:
                        time.sleep(ahead)
                b = i % n_blobs
                t = i * 100_000
                parts = [
                    heads[b] % i,
                    self._dimage_d[b],
                    self.blobs[b],
                    b'{"htype":"dconfig-1.0","start_time":%d,"stop_time":%d,"real_time":%d}'
                    % (t, t + 99_000, 99_000),
                ]
                if appendix is not None:
                    parts.append(appendix)
                send(parts)
                self.images_sent += 1
                payload += len(self.blobs[b])
        except zmq.Again:
            raise TimeoutError(
                f"the receiver stopped taking images after {self.images_sent} ({timeout_s} s)"
            ) from None
        elapsed = time.perf_counter() - t0
        self.send_parts(self.end_parts(series), timeout_s)
        return SendStats(
            series=series, images=int(n_images), elapsed_s=elapsed, payload_bytes=payload
        )

    def close(self, linger_s: float = 2.0) -> None:
        """Close the socket (waiting up to ``linger_s`` for queued messages) and the context."""
        if self._closed:
            return
        self._closed = True
        self._sock.close(linger=int(linger_s * 1000))
        self._ctx.term()

    def __enter__(self) -> DectrisSimulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_bytes(v: bytes | str | None) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    return str(v).encode()


def _encode(frame: np.ndarray, encoding: str) -> bytes:
    if encoding == "raw":
        return frame.tobytes()
    if encoding == "lz4":
        return _lz4_block(frame.tobytes())
    from stemedge.codecs import bslz4_encode

    return bslz4_encode(frame)


def _lz4_block(data: bytes) -> bytes:
    """A plain LZ4 block (no size prefix), as DECTRIS 'lz4<' images are."""
    return _native.lz4_compress(data)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stemedge.net.dectris_sim",
        description="Stream simulated DECTRIS SIMPLON v1 series (bitshuffle-LZ4 images) over "
        "ZeroMQ.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9999, help="port (0: pick a free one)")
    p.add_argument("--frames", type=int, default=1024, help="images per series")
    p.add_argument("--distinct", type=int, default=16, help="distinct frames to cycle through")
    p.add_argument("--shape", type=int, nargs="+", default=[512], help="frame size: N or Y X")
    p.add_argument("--dtype", default="uint16", choices=["uint8", "uint16", "uint32"])
    p.add_argument("--counts", type=float, default=0.1, help="mean electrons per pixel")
    p.add_argument("--disk-counts", type=float, default=0.0, help="extra counts/px in a disk")
    p.add_argument("--disk-radius", type=float, default=0.0, help="disk radius (px)")
    p.add_argument("--encoding", default="bslz4", choices=["bslz4", "lz4", "raw"])
    p.add_argument("--header-detail", default="basic", choices=["basic", "all", "none"])
    p.add_argument("--rate", type=float, default=None, help="images/s (default: as fast as taken)")
    p.add_argument("--series", type=int, default=1, help="id of the first series")
    p.add_argument("--repeat", type=int, default=1, help="series to send, one after the other")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after s without receiver")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shape = tuple(args.shape) if len(args.shape) == 2 else (args.shape[0], args.shape[0])
    frames = make_frames(
        args.distinct,
        shape,
        np.dtype(args.dtype),
        counts=args.counts,
        disk_counts=args.disk_counts,
        disk_radius=args.disk_radius,
        seed=args.seed,
    )
    with DectrisSimulator(
        frames,
        endpoint=f"tcp://{args.host}:{args.port}",
        encoding=args.encoding,
        header_detail=args.header_detail,
    ) as sim:
        print(f"READY {sim.endpoint}", flush=True)
        stats = []
        try:
            for r in range(args.repeat):
                s = sim.send_series(
                    args.frames, series=args.series + r, rate_hz=args.rate, timeout_s=args.timeout
                )
                stats.append(s.to_dict())
        except TimeoutError as exc:
            print(json.dumps({"error": str(exc), "images_sent": sim.images_sent}), flush=True)
            return 1
        mean_payload = float(np.mean([len(b) for b in sim.blobs]))
        print(
            json.dumps(
                {
                    "series": stats,
                    "images_sent": sim.images_sent,
                    "mean_payload_bytes": mean_payload,
                    "encoding": sim.encoding_name,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
