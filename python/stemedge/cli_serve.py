"""``stemedge serve``: a Microscope over authenticated Pyro5 (issue 7)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the main parser's subcommands."""
    p = subparsers.add_parser(
        "serve",
        help="serve a microscope over Pyro5 with mutual TLS and a token",
        description=(
            "Serve a Microscope to remote clients (stemedge.control.RemoteMicroscope). The token "
            "comes from $STEMEDGE_TOKEN (at least 16 characters). Prints the URI, then serves "
            "until interrupted."
        ),
    )
    p.add_argument(
        "--backend",
        choices=("sim", "swift", "usim"),
        default="sim",
        help="sim: stemedge's simulator; swift (or usim): Nion Swift's instrumentation headless "
        "on its simulated instrument (pip install 'stemedge[swift]'). On the microscope PC, the "
        "Swift plugin serves the real instrument from inside Swift instead.",
    )
    p.add_argument("--certs", required=True, metavar="DIR", help="ca.pem, server.pem, server.key")
    p.add_argument(
        "--make-certs", action="store_true", help="create DIR's CA, server and client certificates"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    p.add_argument(
        "--sim-dose",
        type=float,
        default=2e4,
        metavar="E_PER_MS",
        help="simulator: electrons per frame per ms (0: noise-free)",
    )
    p.add_argument("--seed", type=int, default=0, help="simulator seed")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        import cryptography  # noqa: F401
        import Pyro5  # noqa: F401
    except ImportError:
        raise ValueError(
            "serving needs Pyro5 and cryptography: pip install 'stemedge[control]'"
        ) from None
    from stemedge.control.certs import CertificatePaths, make_certificates
    from stemedge.control.server import serve
    from stemedge.control.simulated import SimulatedMicroscope

    token = os.environ.get("STEMEDGE_TOKEN", "")
    if len(token) < 16:
        raise ValueError("set STEMEDGE_TOKEN to a secret of at least 16 characters")
    certs = (
        make_certificates(args.certs, hosts=[args.host, "localhost"])
        if args.make_certs
        else CertificatePaths(args.certs)
    )
    for path in (certs.ca, certs.server_cert, certs.server_key):
        if not path.is_file():
            raise ValueError(f"{path} is missing; create the certificates with --make-certs")
    stop = None
    if args.backend in ("swift", "usim"):
        try:
            import nion.instrumentation  # noqa: F401
        except ImportError:
            raise ValueError(
                "--backend swift needs Nion Swift's instrumentation and simulator: "
                "pip install 'stemedge[swift]' (Python >= 3.11)"
            ) from None
        from stemedge.control.swift import SwiftMicroscope, start_usim

        cfg, stop = start_usim()
        scope = SwiftMicroscope(cfg.instrument)
    else:
        scope = SimulatedMicroscope(
            dose_per_ms=args.sim_dose if args.sim_dose > 0 else None, seed=args.seed
        )

    def ready(uri: str) -> None:
        print(f"stemedge serve: {uri}", flush=True)

    try:
        serve(scope, certs, token, host=args.host, port=args.port, ready=ready)
    finally:
        if stop is not None:
            stop()
    print("stemedge serve: stopped", file=sys.stderr)
    return 0
