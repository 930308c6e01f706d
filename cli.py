"""``python cli.py COMMAND``: the same command line as the ``melanoma`` console script (:mod:`melanoma_cli.app`).

Kept so the commands people already type keep working; ``import cli`` gives the app module itself.
"""

from __future__ import annotations

import sys

from melanoma_cli import app as _app

if __name__ == "__main__":
    sys.exit(_app.main())
else:
    sys.modules[__name__] = _app
