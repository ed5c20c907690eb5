"""``aeraki-ctl``: the control plane's command line.

    aeraki-ctl translate DIR [--listen-address 127.0.0.1] [--port-offset 0] [--format yaml|json]
    aeraki-ctl validate DIR

``translate`` prints the proxy configuration made from the resources in DIR as a bootstrap that
``metaprotocol proxy -c`` runs; problems go to stderr. ``validate`` lists every problem and exits
1 when any object was skipped. ``serve`` (xDS over gRPC) is not built yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from aeraki_ctl.resources import load_directory
from aeraki_ctl.translate import Options, translate
from metaprotocol import __version__
from metaprotocol.config.dump import to_bootstrap_tree

EXIT_INVALID = 1
EXIT_NOT_YET = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aeraki-ctl`` console script."""
    parser = argparse.ArgumentParser(prog="aeraki-ctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"aeraki-ctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("translate", help="print the proxy configuration for a directory of resources")
    t.add_argument("directory")
    t.add_argument("--listen-address", default="127.0.0.1")
    t.add_argument("--port-offset", type=int, default=0)
    t.add_argument("--format", choices=["yaml", "json"], default="yaml")
    v = sub.add_parser("validate", help="report every problem in a directory of resources")
    v.add_argument("directory")
    s = sub.add_parser("serve", help="serve configuration over xDS (not available yet)")
    s.add_argument("--config-dir")
    s.add_argument("--xds-address")
    s.add_argument("--zookeeper")
    args = parser.parse_args(argv)
    if args.command == "serve":
        print("aeraki-ctl serve: the xDS server is not available yet in this version; use translate", file=sys.stderr)
        return EXIT_NOT_YET
    resources = load_directory(args.directory)
    if args.command == "validate":
        result = translate(resources)
        for p in result.problems:
            print(f"{'error' if p.fatal else 'warning'}: {p}")
        if result.errors:
            return EXIT_INVALID
        print(f"ok: {len(resources.resources)} resource(s), {len(result.bootstrap.listeners)} listener(s), {len(result.bootstrap.clusters)} cluster(s)")
        return 0
    result = translate(resources, Options(args.listen_address, args.port_offset))
    for p in result.problems:
        print(f"{'error' if p.fatal else 'warning'}: {p}", file=sys.stderr)
    tree = to_bootstrap_tree(result.bootstrap)
    if args.format == "json":
        print(json.dumps(tree, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(tree, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
