"""``python -m stemedge``: the same command line as the ``stemedge`` console script."""

from stemedge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
