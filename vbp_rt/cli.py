"""The `vbp` command: thin dispatch to the subcommands of each package."""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, ...) each exposing add_parser(subparsers); a subcommand is listed only when it works.
SUBCOMMAND_MODULES = [
    "vbp_rt.explain_cmd",
    "vbp_rt.export_cmd",
    "data.cli",
    "vbp_rt.eval_cmd",
    "trainer.cli",
    "viewer.cli",
    "bench.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vbp",
        description="vbp-rt: see which pixels a driving CNN looks at (VisualBackProp, LRP and friends).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:
        print(f"vbp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vbp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
