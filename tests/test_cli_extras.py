"""A command whose optional extra is not installed says which extra to install (exit 2, one
line), instead of a traceback. The missing package is hidden in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from _helpers import subprocess_env

RUN = textwrap.dedent(
    """
    import sys
    sys.modules[sys.argv[1]] = None  # as if not installed
    from stemedge.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    "hidden, argv, extra",
    [
        ("Pyro5", ["serve", "--certs", "nowhere"], "stemedge[control]"),
        ("sklearn", ["steer", "--budget", "3", "--quiet"], "stemedge[steer]"),
        ("distributed", ["process", "FILE", "--cluster", "local", "--quiet"], "stemedge[dask]"),
    ],
)
def test_missing_extras_are_named(hidden, argv, extra, tmp_path):
    if "FILE" in argv:
        import numpy as np

        np.save(tmp_path / "x.npy", np.zeros((2, 2, 4, 4), np.uint16))
        argv = [str(tmp_path / "x.npy") if a == "FILE" else a for a in argv]
    if argv[0] == "steer":
        argv = [*argv, "--out", str(tmp_path / "steer")]
    run = subprocess.run(
        [sys.executable, "-c", RUN, hidden, *argv],
        capture_output=True,
        text=True,
        env=subprocess_env(STEMEDGE_TOKEN="t" * 20),
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert extra in run.stderr and "Traceback" not in run.stderr, run.stderr
