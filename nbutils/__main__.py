"""``python -m nbutils``: see :mod:`nbutils.cli`."""
from nbutils.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
