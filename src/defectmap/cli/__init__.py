"""The ``defectmap`` command line: thin wrappers that parse flags, call the library, print.

Each command group lives in its own module and registers itself on :data:`app`.
"""

from __future__ import annotations

import sys

# Importing the command modules registers their commands on ``app``.
from defectmap.cli import data as _data  # noqa: F401,E402
from defectmap.cli import export as _export  # noqa: F401,E402
from defectmap.cli import maps as _maps  # noqa: F401,E402
from defectmap.cli import model as _model  # noqa: F401,E402
from defectmap.cli import registry as _registry  # noqa: F401,E402
from defectmap.cli import serve as _serve  # noqa: F401,E402
from defectmap.cli._common import app, run_app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_app(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
