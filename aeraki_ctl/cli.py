"""``aeraki-ctl``: the control plane's command line.

The translation and the xDS server are not built yet (tracked in issue 6); until then every
subcommand says so and exits non-zero rather than pretending to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metaprotocol import __version__

NOT_YET = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aeraki-ctl`` console script."""
    parser = argparse.ArgumentParser(prog="aeraki-ctl")
    parser.add_argument("--version", action="version", version=f"aeraki-ctl {__version__}")
    parser.add_argument("command", choices=["serve", "translate", "validate"])
    args, _ = parser.parse_known_args(argv)
    print(f"aeraki-ctl {args.command}: not available yet in this version", file=sys.stderr)
    return NOT_YET


if __name__ == "__main__":
    sys.exit(main())
