"""``python -m kzbridge`` and the ``kzbridge`` console script.

The command line's modules are imported inside ``run`` so that a Ctrl-C arriving while they
load (the first tens of milliseconds) ends as one line and exit 130, not a traceback.
"""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from .cli import main

        main()
    except KeyboardInterrupt as exc:  # before the command's own handler exists
        said = "terminated" if type(exc).__name__ == "Terminated" else "interrupted"
        sys.stderr.write(f"kzbridge: {said}\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
